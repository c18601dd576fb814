"""DFF (Diffusion Feature Fusion): per frame, fuse the cached F_MS maps and F_Latent into one map F_DFF.

Paper fixes: F_MS -> dimension adjustment -> concat with F_Latent -> conv -> channel attention -> spatial
attention (a CBAM-style block). Our choice: the dimension adjustment is BatchNorm + a 1x1 conv per selected level to
`dff_channels` (F_Latent gets a BatchNorm too) (plus a bilinear resize if a level is not on the cache grid); an F_Latent
kept at a finer grid than F_MS (`latent_grid`, a multiple of the grid) is folded onto it space-to-depth (4 x f^2
channels for a factor f: no detail averaged away); the fusion conv is
3x3 conv + GroupNorm + GELU; CBAM attention with reduction 8 and a 7x7 spatial kernel; attention can be
switched off for ablations. Frames are processed as one B*T batch.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with up to 8 groups (batch-size independent, fine for small batches)."""
    return nn.GroupNorm(math.gcd(8, channels), channels)


class ChannelAttention(nn.Module):
    """CBAM channel attention: sigmoid(MLP(avgpool) + MLP(maxpool)) * x."""

    def __init__(self, channels: int, reduction: int = 8):
        super().__init__()
        hidden = max(channels // reduction, 4)
        self.mlp = nn.Sequential(nn.Conv2d(channels, hidden, 1), nn.GELU(), nn.Conv2d(hidden, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        avg = self.mlp(x.mean(dim=(2, 3), keepdim=True))
        peak = self.mlp(x.amax(dim=(2, 3), keepdim=True))
        return x * torch.sigmoid(avg + peak)


class SpatialAttention(nn.Module):
    """CBAM spatial attention: sigmoid(conv7x7([mean_c, max_c])) * x."""

    def __init__(self, kernel_size: int = 7):
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        maps = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return x * torch.sigmoid(self.conv(maps))


class DFF(nn.Module):
    """(latent (B,T,C_lat,g,g), [ms level (B,T,C_l,g,g)]) -> F_DFF (B, T, channels, g, g)."""

    def __init__(self, ms_channels: list[int], ms_levels: tuple[int, ...], latent_channels: int,
                 grid: int, channels: int = 64, use_latent: bool = True, use_attention: bool = True,
                 latent_grid: int | None = None):
        super().__init__()
        self.ms_levels = tuple(ms_levels)
        self.use_latent = use_latent
        self.grid = grid
        self.fold = 1  # space-to-depth factor of a finer F_Latent
        if use_latent and latent_grid is not None and latent_grid > grid:
            if latent_grid % grid:
                from diffvqa_cache.errors import UserInputError

                raise UserInputError(f"latent_grid {latent_grid} is not a multiple of the F_MS grid {grid}; use "
                                     f"{grid * max(1, latent_grid // grid)} or unset it")
            self.fold = latent_grid // grid
            latent_channels *= self.fold ** 2
        self.out_channels = channels
        # BatchNorm first: cached features come on very different scales per level and per backbone
        self.adjust = nn.ModuleList([nn.Sequential(nn.BatchNorm2d(ms_channels[level]), nn.Conv2d(ms_channels[level], channels, 1))
                                     for level in self.ms_levels])
        self.latent_norm = nn.BatchNorm2d(latent_channels) if use_latent else None
        in_channels = channels * len(self.ms_levels) + (latent_channels if use_latent else 0)
        self.fuse = nn.Sequential(nn.Conv2d(in_channels, channels, 3, padding=1), group_norm(channels), nn.GELU())
        self.channel_attention = ChannelAttention(channels) if use_attention else nn.Identity()
        self.spatial_attention = SpatialAttention() if use_attention else nn.Identity()

    def forward(self, latent: torch.Tensor | None, ms: list[torch.Tensor]) -> torch.Tensor:
        # 1. dimension adjustment of each selected F_MS level (frames as one B*T batch)
        parts = []
        for adjust, level in zip(self.adjust, self.ms_levels):
            feature = ms[level].flatten(0, 1).float()
            if feature.shape[-2:] != (self.grid, self.grid):
                feature = F.interpolate(feature, size=(self.grid, self.grid), mode="bilinear", align_corners=False)
            parts.append(adjust(feature))
        batch, frames = (latent if self.use_latent else ms[self.ms_levels[0]]).shape[:2]
        # 2. concat with F_Latent and fuse
        if self.use_latent:
            lat = latent.flatten(0, 1).float()
            if self.fold > 1:
                lat = F.pixel_unshuffle(lat, self.fold)
            if lat.shape[-2:] != (self.grid, self.grid):
                lat = F.interpolate(lat, size=(self.grid, self.grid), mode="bilinear", align_corners=False)
            parts.append(self.latent_norm(lat))
        x = self.fuse(torch.cat(parts, dim=1))
        # 3. channel attention, then spatial attention
        x = self.spatial_attention(self.channel_attention(x))
        return x.unflatten(0, (batch, frames))
