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


def pool_mean_std(x: torch.Tensor, grid: int | None) -> torch.Tensor:
    """(..., C, H, W) maps -> (..., 2C, h, w): the cell means of `pool_to_grid` (bit for bit), then each
    cell's standard deviation over its pixels (0 where a map is kept as it is)."""
    mean = pool_to_grid(x, grid)
    h, w = mean.shape[-2:]
    if (h, w) == tuple(x.shape[-2:]):
        return torch.cat([mean, torch.zeros_like(mean)], dim=-3)
    xf = x.float()
    if x.shape[-2] % h == 0 and x.shape[-1] % w == 0:  # equal cells: the exact two-pass deviation
        cells = xf.reshape(*x.shape[:-2], h, x.shape[-2] // h, w, x.shape[-1] // w)
        std = cells.std(dim=(-3, -1), unbiased=False)
    else:
        std = (pool_to_grid(xf * xf, grid) - pool_to_grid(xf, grid) ** 2).clamp_min(0).sqrt()
    return torch.cat([mean, std.to(mean.dtype)], dim=-3)


def pool_moments(x: torch.Tensor, grid: int | None) -> torch.Tensor:
    """A mean+std map (..., 2C, H, W) of `pool_mean_std` brought to a coarser `grid`: the means averaged,
    each coarse cell's deviation from its cells' means and deviations (exact when the grids divide)."""
    c = x.shape[-3] // 2
    if grid is None or (x.shape[-1] <= grid and x.shape[-2] <= grid):
        return x
    mean, std = x[..., :c, :, :].float(), x[..., c:, :, :].float()
    coarse = pool_to_grid(mean, grid)
    second = pool_to_grid(mean * mean + std * std, grid)
    return torch.cat([coarse, (second - coarse * coarse).clamp_min(0).sqrt()], dim=-3).to(x.dtype)
