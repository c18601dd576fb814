"""The one rule that brings feature maps to a grid, shared by stage one (storing F_MS), stage two
(loading a coarser grid) and the memory estimate: maps larger than the grid are average-pooled down to
it; maps not larger are kept as they are (upsampling adds bytes, not information). The regressor's DFF
brings every level to its own working grid inside the model."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def pooled_side(side: int, grid: int | None) -> int:
    """Side of a `side` x `side` map after `pool_to_grid` (None: unchanged)."""
    return side if grid is None else min(side, grid)


def pool_to_grid(x: torch.Tensor, grid: int | None) -> torch.Tensor:
    """(..., C, H, W) maps -> (..., C, min(H, grid), min(W, grid)), average-pooled, dtype kept."""
    if grid is None or (x.shape[-1] <= grid and x.shape[-2] <= grid):
        return x
    lead = x.shape[:-3]
    y = F.adaptive_avg_pool2d(x.reshape(-1, *x.shape[-3:]).float(), (min(grid, x.shape[-2]), min(grid, x.shape[-1])))
    return y.reshape(*lead, *y.shape[-3:]).to(x.dtype)
