"""The per-video load rules both feature tables share (`data.VideoTable` in memory, `stream.StreamedTable`
read per batch): what to take from a cache (`LoadSpec`), how a video's cached arrays become the model's
tensors (frames picked, maps pooled, pixels resized), and what the regressor is built for (`FeatureSpec`,
described once from the cache's shapes and these rules). Both tables import this module, neither the other.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from diffvqa_cache.cache.branches import BRANCHES, N_LEVELS, BranchFeatures, map_branches
from diffvqa_cache.cache.folder import FeatureCache, VideoFeatures
from diffvqa_cache.cache.pooling import pool_moments, pool_to_grid, pooled_side
from diffvqa_cache.config import Config
from diffvqa_cache.errors import CacheError, UserInputError


@dataclass(frozen=True)
class LoadSpec(Config):
    """What to take from the cache (choices made at load time, so ablations need no re-extraction)."""

    branches: str = "SD"
    ms_levels: tuple[int, ...] = (0, 1, 2, 3)
    use_latent: bool = True
    use_pixels: bool = True  # TCAB input
    grid: int | None = None  # None: the cache's grid; smaller: average-pooled at load time
    pixel_size: int = 64  # TCAB input side, resized at load time
    num_frames: int | None = None  # None: all cached frames (must be equal across videos)
    # F_Latent's own grid (None: `grid`, as F_MS); finer keeps more of the 4-channel latent (cached at full
    # size), which DFF folds onto the F_MS grid (space to depth)
    latent_grid: int | None = None
    ms_std: bool = False  # also the F_MS cell standard deviations (a cache extracted with --ms-pool mean+std)

    def __post_init__(self):
        if self.latent_grid is not None and self.latent_grid < 1:
            raise UserInputError(f"latent_grid must be >= 1 (or unset: the F_MS grid), got {self.latent_grid}")
        for b in self.branches:
            if b not in BRANCHES:
                raise UserInputError(f"branch {b!r} is not one of {BRANCHES}")
        for lv in self.ms_levels:
            if not 0 <= lv < N_LEVELS:
                raise UserInputError(f"ms level {lv} does not exist: the cache has levels 0..{N_LEVELS - 1}")

    def parts(self) -> BranchFeatures:
        """The parts to read, as a selection (True where wanted)."""
        return BranchFeatures(latent=True if self.use_latent else None, pixels=True if self.use_pixels else None,
                              ms=tuple(True if lv in self.ms_levels else None for lv in range(N_LEVELS)))


@dataclass(frozen=True, eq=False)
class FeatureSpec(Config, Mapping):
    """What the regressor is built for: channels of each F_MS level (0: not loaded), F_Latent's channels,
    DFF's working grid, the TCAB pixel side (0: not loaded), frames per video and, when F_Latent has a grid
    of its own, its side. Saved as a plain mapping (a run's config.json, each checkpoint's metadata), read
    like one (`spec["grid"]`), and equal to the mapping it was saved as."""

    ms_channels: tuple[int, ...]
    latent_channels: int
    grid: int
    pixel_size: int
    num_frames: int
    latent_grid: int | None = None  # F_Latent's side when it has its own grid (None: on `grid`)

    @classmethod
    def describe(cls, ms: list[tuple[int, int] | None], latent_side: int | None, pixel_size: int, num_frames: int,
                 latent_grid: int | None = None) -> "FeatureSpec":
        """From the loaded shapes: (channels, side) of each F_MS level (None: not loaded), F_Latent's side
        (None: not loaded). "grid" is DFF's working grid; with a separate `latent_grid` F_Latent is left out
        of it and its side recorded as "latent_grid"."""
        sides = [side for level in ms if level for side in level[1:]]
        if latent_side is not None and (latent_grid is None or not sides):
            sides.append(latent_side)
        return cls(tuple(level[0] if level else 0 for level in ms), 4, max(sides), pixel_size, num_frames,
                   latent_side if latent_grid is not None and latent_side is not None else None)

    def to_dict(self) -> dict:
        """The saved form (as written since 0.1: "latent_grid" only when F_Latent has a grid of its own)."""
        d = super().to_dict()
        if d["latent_grid"] is None:
            del d["latent_grid"]
        return d

    def __getitem__(self, key: str):
        return self.to_dict()[key]

    def __iter__(self):
        return iter(self.to_dict())

    def __len__(self) -> int:
        return len(self.to_dict())


def feature_spec(cache: FeatureCache, spec: LoadSpec) -> FeatureSpec:
    """The `FeatureSpec` of `spec`'s features on `cache`, from the cached shapes and the load rules (no
    data read): F_MS pooled to the grid (their stds kept only with `ms_std`), F_Latent to `latent_grid`
    (or the grid), pixels resized to `pixel_size`. Both tables describe their features with it."""
    grid, frames = resolve_grid_and_frames(cache, spec)
    shapes, wanted = cache.part_shapes()[spec.branches[0]], spec.parts()
    halve = 2 if has_moments(cache) and not spec.ms_std else 1  # the stds of a mean+std cache are left out
    ms = [(int(s[1]) // halve, pooled_side(s[-1], grid)) if want and s is not None else None
          for s, want in zip(shapes.ms, wanted.ms)]
    latent = (pooled_side(shapes.latent[-1], spec.latent_grid or grid)
              if wanted.latent and shapes.latent is not None else None)
    pixels = spec.pixel_size if wanted.pixels and shapes.pixels is not None else 0
    return FeatureSpec.describe(ms, latent, pixels, frames, spec.latent_grid)


def pick_frames(n_have: int, n_want: int) -> np.ndarray:
    """Uniform subset (or repetition) of n_want rows out of n_have, segment centres as in stage one."""
    return np.minimum(((np.arange(n_want) + 0.5) * n_have / n_want).astype(np.int64), n_have - 1)


def resize_pixels(pix: torch.Tensor, size: int) -> torch.Tensor:
    """(T, K, 3, P, P) uint8 -> (T, K, 3, size, size), in uint8 directly (~4x faster than through float)."""
    if pix.shape[-1] == size:
        return pix
    t, k = pix.shape[:2]
    out = F.interpolate(pix.reshape(t * k, *pix.shape[2:]), size=(size, size), mode="bilinear", antialias=True,
                        align_corners=False)
    return out.reshape(t, k, *out.shape[1:])


def load_ms(m: torch.Tensor, grid: int, moments: bool, want_std: bool) -> torch.Tensor:
    """A cached F_MS level (..., C, h, w) as the model gets it, pooled to `grid`. From a mean+std cache
    (`moments`: the means, then the stds along the channels) the means alone, or with `want_std` both, the
    coarser cells' stds computed from the finer cells' means and stds."""
    if not moments:
        return pool_to_grid(m, grid)
    return pool_moments(m, grid) if want_std else pool_to_grid(m[..., :m.shape[-3] // 2, :, :], grid)


def apply_load_rules(view: BranchFeatures, spec: LoadSpec, grid: int, moments: bool = False) -> BranchFeatures:
    """A branch's parts as read (any leading axes) -> what the model gets: F_MS pooled to `grid` (and their
    stds kept or dropped), F_Latent pooled to `spec.latent_grid` (or `grid`), pixels resized. The one rule
    of the in-memory table, the streamed table and predict."""
    view.latent = None if view.latent is None else pool_to_grid(view.latent, spec.latent_grid or grid)
    view.ms = tuple(None if m is None else load_ms(m, grid, moments, spec.ms_std) for m in view.ms)
    view.pixels = None if view.pixels is None else resize_pixels(view.pixels, spec.pixel_size)
    return view


def video_tensors(video: VideoFeatures, spec: LoadSpec, grid: int, num_frames: int,
                  moments: bool = False) -> dict[str, BranchFeatures]:
    """One video's cached arrays -> tensors (T, K, ...) per branch: frames picked, `apply_load_rules`; parts
    not in `spec` left out. `moments`: the cache holds F_MS means and stds (--ms-pool mean+std)."""
    rows = pick_frames(len(video.frame_index), num_frames)
    wanted = spec.parts()
    out = {}
    for b in spec.branches:
        cached = video.branches[b]
        chosen = BranchFeatures(latent=cached.latent if wanted.latent else None,
                                pixels=cached.pixels if wanted.pixels else None,
                                ms=tuple(m if w else None for m, w in zip(cached.ms, wanted.ms)))
        out[b] = apply_load_rules(chosen.map(lambda a: torch.from_numpy(a[rows])), spec, grid, moments)
    return out


def to_device(batch: dict[str, BranchFeatures], device: torch.device) -> dict[str, BranchFeatures]:
    """A host batch on `device`: features as float32 (converted there), pixels as uint8."""
    def move(x: torch.Tensor) -> torch.Tensor:
        x = x.to(device, non_blocking=True)
        return x.float() if x.is_floating_point() else x

    return map_branches(batch, move)


def resolve_grid_and_frames(cache: FeatureCache, spec: LoadSpec) -> tuple[int, int]:
    """The (grid, frames per video) `spec` gives on this cache; errors for impossible requests."""
    ex = cache.config.extract
    grid = spec.grid or ex.grid
    if grid > ex.grid:
        raise UserInputError(f"grid {grid} is finer than the cache's grid {ex.grid}; re-extract with --grid {grid}")
    if spec.ms_std and ex.ms_pool != "mean+std":
        raise UserInputError(f"ms_std needs the F_MS standard deviations: cache {cache.path} was extracted with "
                             f"--ms-pool {ex.ms_pool}; re-extract it with --ms-pool mean+std (its means are the same)")
    latent_side = cache.config.view_size // 8
    if spec.latent_grid is not None and spec.latent_grid > latent_side:
        raise UserInputError(f"latent_grid {spec.latent_grid} is finer than the cached F_Latent ({latent_side}x"
                             f"{latent_side} at {cache.config.view_size} px views); use at most {latent_side}")
    frames = spec.num_frames or ex.frames
    if not frames:
        raise UserInputError("this cache samples frames at a fixed rate: set num_frames (frames per video) to fit")
    return grid, int(frames)


def has_moments(cache: FeatureCache) -> bool:
    """The cache's F_MS levels hold cell means then stds (extracted with --ms-pool mean+std)."""
    return cache.config.extract.ms_pool == "mean+std"


def table_labels(cache: FeatureCache) -> tuple[list[str], np.ndarray, list[str]]:
    """(keys in cache order, MOS, split) of every video of `cache`; refuses videos without a label."""
    order = list(cache.keys)
    missing_labels = [k for k in order if k not in cache.labels]
    if missing_labels:
        raise CacheError(f"{cache.path}/labels.csv has no MOS for {missing_labels[:3]}; rerun extract to rewrite it")
    return (order, np.array([cache.labels[k]["mos"] for k in order], dtype=np.float32),
            [cache.labels[k]["split"] for k in order])
