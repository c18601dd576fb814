"""FFF (Frame Feature Fusion): the F_TDM maps of all frames -> one feature vector per frame, F_FFF.

Paper fixes: "the F_TDM of all frames -> concatenate -> conv -> flatten -> F_FFF". Our choice, keeping a
per-frame dimension so the head can weight frames: each frame's map goes through 3x3 conv + GroupNorm +
GELU, adaptive average pooling to 4x4 and flatten, and a linear layer to `fff_dim`; then the frames are
fused by a temporal 1D conv (kernel 3, padding 1) over the frame axis with a residual connection.
Output (B, T, fff_dim); works for any T >= 1 (zero padding at the sequence ends).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from diffvqa_cache.training.regressor.dff import group_norm


class FFF(nn.Module):
    """(B, T, C_in, g, g) -> (B, T, dim)."""

    pooled = 4  # spatial size after adaptive pooling, before flatten

    def __init__(self, in_channels: int, conv_channels: int = 64, dim: int = 128):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(in_channels, conv_channels, 3, padding=1), group_norm(conv_channels),
                                  nn.GELU(), nn.AdaptiveAvgPool2d(self.pooled), nn.Flatten(1))
        self.project = nn.Sequential(nn.Linear(conv_channels * self.pooled ** 2, dim), nn.GELU())
        self.temporal = nn.Conv1d(dim, dim, kernel_size=3, padding=1)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, frames = x.shape[:2]
        # 1. per-frame conv -> pool -> flatten -> project
        per_frame = self.project(self.conv(x.flatten(0, 1))).unflatten(0, (batch, frames))  # (B, T, dim)
        # 2. fuse neighbouring frames with a temporal conv (residual)
        fused = per_frame + self.temporal(per_frame.transpose(1, 2)).transpose(1, 2)
        # 3. normalise
        return self.norm(fused)
