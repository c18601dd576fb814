"""Stage two's data path: cached arrays -> model batches, with load-time pooling and selection.

The training loop never touches raw videos or diffusers. Two sources give the same batches: the
in-memory `VideoTable` (`load_table` reads every shard once, one big read each, and keeps the selected
parts, pooled, in one preallocated table per part) and, when that would not fit the memory budget,
`stream.StreamedTable` (shards read batch by batch). `open_table` chooses (`choose_data_path`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

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


def describe_features(ms: list[tuple[int, int] | None], latent_side: int | None, pixel_size: int, num_frames: int,
                      latent_grid: int | None = None) -> dict:
    """The feature_spec the regressor is built for, from the loaded shapes: (channels, side) of each F_MS
    level (None: not loaded), F_Latent's side (None: not loaded). "grid" is DFF's working grid; with a
    separate `latent_grid` F_Latent is left out of it and its side recorded as "latent_grid"."""
    sides = [side for level in ms if level for side in level[1:]]
    if latent_side is not None and (latent_grid is None or not sides):
        sides.append(latent_side)
    spec = {"ms_channels": [level[0] if level else 0 for level in ms], "latent_channels": 4, "grid": max(sides),
            "pixel_size": pixel_size, "num_frames": num_frames}
    if latent_grid is not None and latent_side is not None:
        spec["latent_grid"] = latent_side
    return spec


class VideoTable:
    """Feature tensors of many videos stacked on a leading video axis: (N, T, K, ...) per branch and part.

    A subset shares the tensors (`rows` maps its videos to their rows), so splits cost no copy."""

    def __init__(self, keys: list[str], mos: np.ndarray, splits: list[str], branches: dict[str, BranchFeatures],
                 rows: np.ndarray | None = None, latent_grid: int | None = None):
        self.keys, self.mos, self.splits, self.branches = keys, mos.astype(np.float32), splits, branches
        self.rows = np.arange(len(keys)) if rows is None else rows
        self.latent_grid = latent_grid  # the load spec's own F_Latent grid (None: F_Latent on the F_MS grid)

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
                          self.rows[idx], self.latent_grid)

    @property
    def device(self) -> torch.device:
        return next(next(iter(self.branches.values())).parts()).device

    def to(self, device: torch.device) -> "VideoTable":
        """The table with its tensors on `device` (a GPU-resident table: batches need no host copy)."""
        return VideoTable(self.keys, self.mos, self.splits, map_branches(self.branches, lambda t: t.to(device)),
                          self.rows, self.latent_grid)

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

    def feature_spec(self) -> dict:
        """What the regressor is built for: channels per F_MS level (0: not loaded), grid, pixels, frames."""
        v = next(iter(self.branches.values()))
        maps = [x for x in (v.latent, *v.ms) if x is not None]
        return describe_features([None if m is None else (int(m.shape[3]), int(m.shape[-1])) for m in v.ms],
                                 None if v.latent is None else int(v.latent.shape[-1]),
                                 int(v.pixels.shape[-1]) if v.pixels is not None else 0, int(maps[0].shape[1]),
                                 self.latent_grid)


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
    return VideoTable(order, mos, splits, tables, latent_grid=spec.latent_grid)


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


DATA_PATHS = ("auto", "memory", "stream")


def choose_data_path(caches: list[FeatureCache], spec: LoadSpec, data: str, budget_bytes: int) -> tuple[str, int]:
    """("memory" or "stream", bytes the in-memory path needs) for the feature tables of `caches`: memory
    when `data` is "memory", or "auto" and the tables (plus one shard while loading) fit `budget_bytes`."""
    need = sum(estimate_bytes(c, spec) for c in caches) + max(shard_read_bytes(c, spec) for c in caches)
    if data == "memory" and need > budget_bytes:
        raise UserInputError(f"the selected features need {need / 1e9:.2f} GB in memory, over the budget "
                             f"memory_gb={budget_bytes / 1e9:.2f}; use --set data=auto (streams them) or raise memory_gb")
    if data == "auto":
        data = "memory" if need <= budget_bytes else "stream"
    return data, need


DEVICE_SHARE = 0.5  # of the free GPU memory an in-memory table may take (the model trains in the rest)


def open_table(cache: FeatureCache, spec: LoadSpec, path: str, budget_bytes: int, device=None, progress=None):
    """The cache's features for `spec` as a `VideoTable` ("memory"; moved onto a CUDA `device` when it fits
    there) or a `stream.StreamedTable` ("stream")."""
    if path == "stream":
        from diffvqa_cache.training.stream import StreamedTable  # stream builds on this module's per-video rules

        return StreamedTable(cache, spec, budget_bytes)
    table = load_table(cache, spec, progress)
    if device is not None and torch.device(device).type == "cuda":
        free, _ = torch.cuda.mem_get_info(torch.device(device))
        if table.nbytes() <= DEVICE_SHARE * free:
            table = table.to(device)
    return table
