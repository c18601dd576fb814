"""TDM (Temporal Difference Module): F_TDM^t = concat(F_DFF^t, F_DFF^t - F_DFF^(t-1)).

Paper fixes: the concat of each frame's map with its difference to the previous frame. Our choice: the
first frame is differenced with itself (zeros); the module is switchable: when off it is the identity, so
the channel count out of TDM is 2*C when on and C when off (`out_channels`).
"""

from __future__ import annotations

import torch
import torch.nn as nn


class TDM(nn.Module):
    """(B, T, C, H, W) -> (B, T, 2C, H, W) when enabled, unchanged otherwise. No parameters."""

    def __init__(self, enabled: bool = True):
        super().__init__()
        self.enabled = enabled

    def out_channels(self, in_channels: int) -> int:
        return 2 * in_channels if self.enabled else in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return x
        # 1. previous frame, the first frame being its own predecessor
        previous = torch.cat([x[:, :1], x[:, :-1]], dim=1)
        # 2. concat the frame and its temporal difference
        return torch.cat([x, x - previous], dim=2)
