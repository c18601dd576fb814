"""Stage two's in-memory data path: cached arrays -> model batches, with load-time pooling and selection.

The training loop never touches raw videos or diffusers. `load_table` reads every shard once (one big
read each) and keeps the selected parts, pooled by the shared load rules (`rules`), in one preallocated
`VideoTable` per part; `estimate_bytes` and `shard_read_bytes` say what that costs, so that
`source.open_features` can choose between this table and the streamed one (`stream.StreamedTable`).
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch

from diffvqa_cache.cache.branches import BranchFeatures, map_branches
from diffvqa_cache.cache.folder import FeatureCache
from diffvqa_cache.cache.pooling import pooled_side
from diffvqa_cache.training.rules import (
    FeatureSpec,
    LoadSpec,
    feature_spec,
    has_moments,
    resolve_grid_and_frames,
    table_labels,
    to_device,
    video_tensors,
)


class VideoTable:
    """Feature tensors of many videos stacked on a leading video axis: (N, T, K, ...) per branch and part.

    A subset shares the tensors (`rows` maps its videos to their rows), so splits cost no copy."""

    def __init__(self, keys: list[str], mos: np.ndarray, splits: list[str], branches: dict[str, BranchFeatures],
                 rows: np.ndarray | None = None, features: FeatureSpec | None = None):
        self.keys, self.mos, self.splits, self.branches = keys, mos.astype(np.float32), splits, branches
        self.rows = np.arange(len(keys)) if rows is None else rows
        self.features = features  # what the regressor is built for (None: a table not loaded from a cache)

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def n_crops(self) -> dict[str, int]:
        return {b: next(v.parts()).shape[2] for b, v in self.branches.items()}

    def nbytes(self) -> int:
        """Bytes of the tensors (shared with every subset)."""
        return sum(t.numel() * t.element_size() for v in self.branches.values() for t in v.parts())

    def subset(self, idx: np.ndarray) -> "VideoTable":
        return VideoTable([self.keys[i] for i in idx], self.mos[idx], [self.splits[i] for i in idx], self.branches,
                          self.rows[idx], self.features)

    @property
    def device(self) -> torch.device:
        return next(next(iter(self.branches.values())).parts()).device

    def to(self, device: torch.device) -> "VideoTable":
        """The table with its tensors on `device` (a GPU-resident table: batches need no host copy)."""
        return VideoTable(self.keys, self.mos, self.splits, map_branches(self.branches, lambda t: t.to(device)),
                          self.rows, self.features)

    def batch(self, idx: np.ndarray, crop: int | np.ndarray, device: torch.device) -> dict[str, BranchFeatures]:
        """Model input for videos `idx`; `crop` picks one crop per (video, frame) (an int or (B, T) array).
        Features become float32 on `device`, pixels stay uint8."""
        rows = self.rows[idx]

        def take(t: torch.Tensor) -> torch.Tensor:
            x = t[torch.as_tensor(rows, dtype=torch.long, device=t.device)]  # (B, T, K, ...)
            if x.shape[2] == 1:
                return x[:, :, 0]
            c = torch.as_tensor(np.broadcast_to(crop, x.shape[:2]) % x.shape[2], dtype=torch.long, device=t.device)
            return torch.gather(x, 2, c.view(*c.shape, 1, *([1] * (x.dim() - 3))).expand(
                *x.shape[:2], 1, *x.shape[3:])).squeeze(2)

        return to_device(map_branches(self.branches, take), device)

    def batches(self, plan, device) -> Iterator[dict[str, BranchFeatures]]:
        """`batch(idx, crop, device)` for each (idx, crop) of `plan`, in order."""
        for idx, crop in plan:
            yield self.batch(idx, crop, device)

    def feature_spec(self) -> FeatureSpec:
        """What the regressor is built for (`rules.feature_spec`, described when the table was loaded)."""
        if self.features is None:
            raise ValueError("this table was not loaded from a cache: it has no feature spec")
        return self.features


def load_table(cache: FeatureCache, spec: LoadSpec, progress=None) -> VideoTable:
    """Read every shard (one big read each), keep the chosen parts, pool them, stack them in memory.

    Tables are preallocated and filled video by video: peak memory ~ the table + one shard."""
    grid, num_frames = resolve_grid_and_frames(cache, spec)
    order, mos, splits = table_labels(cache)
    row_of = {k: i for i, k in enumerate(order)}
    tables: dict[str, BranchFeatures] = {}
    moments = has_moments(cache)
    for file in cache.shard_files():
        shard = cache.read_shard(file, spec.parts(), spec.branches)
        shard.check_finite()
        for i in range(len(shard.keys)):
            video = video_tensors(shard.video(i), spec, grid, num_frames, moments)
            for b, view in video.items():
                if b not in tables:
                    tables[b] = view.map(lambda t: t.new_empty((len(order), *t.shape)))
                for table, part in zip(tables[b].parts(), view.parts()):
                    table[row_of[shard.keys[i]]] = part
        if progress is not None:
            progress()
    return VideoTable(order, mos, splits, tables, features=feature_spec(cache, spec))


def _selected_rows(cache: FeatureCache, spec: LoadSpec) -> list[tuple[tuple, int, str]]:
    """(cached shape of one frame's part (K, C, H, W), bytes per value, "latent" / "ms" / "pixels") of each
    part `spec` selects, over its branches."""
    shapes, wanted = cache.part_shapes(), spec.parts()
    out = []
    for b in spec.branches:
        s = shapes[b]
        out += [(s.latent, 2, "latent")] if wanted.latent else []
        out += [(level, 2, "ms") for level, want in zip(s.ms, wanted.ms) if want]
        out += [(s.pixels, 1, "pixels")] if wanted.pixels else []
    return out


def estimate_bytes(cache: FeatureCache, spec: LoadSpec) -> int:
    """Bytes `load_table` allocates for `spec`, from the cached shapes and the same pooling rules."""
    grid, frames = resolve_grid_and_frames(cache, spec)
    halve = has_moments(cache) and not spec.ms_std  # the stds of a mean+std cache are left out

    def loaded(k, c, h, w, size, kind):
        if kind == "pixels":  # resized to the load spec's pixel size
            return k * 3 * spec.pixel_size ** 2
        g = spec.latent_grid or grid if kind == "latent" else grid
        return k * (c // 2 if kind == "ms" and halve else c) * pooled_side(h, g) * pooled_side(w, g) * size

    per_video = sum(loaded(*shape, size, kind) for shape, size, kind in _selected_rows(cache, spec))
    return per_video * frames * len(cache)


def shard_read_bytes(cache: FeatureCache, spec: LoadSpec) -> int:
    """Bytes of the selected parts of the cache's largest shard, which `load_table` holds while it fills
    the table from that shard (its peak is the table plus this)."""
    per_row = sum(int(np.prod(shape)) * size for shape, size, _ in _selected_rows(cache, spec))
    rows = max((sum(s["n_frames"]) for s in cache.manifest["shards"]), default=0)
    return per_row * rows
