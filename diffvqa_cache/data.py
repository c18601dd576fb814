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

from .branches import BRANCHES, N_LEVELS, BranchFeatures, map_branches
from .cache import FeatureCache, VideoFeatures
from .config import Config
from .errors import CacheError, UserInputError
from .pooling import pool_to_grid, pooled_side


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

    def __post_init__(self):
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


def video_tensors(video: VideoFeatures, spec: LoadSpec, grid: int, num_frames: int) -> dict[str, BranchFeatures]:
    """One video's cached arrays -> tensors (T, K, ...) per branch: frames picked, maps pooled to `grid`,
    pixels resized to `spec.pixel_size`; parts not in `spec` left out."""
    rows = pick_frames(len(video.frame_index), num_frames)
    wanted = spec.parts()
    out = {}
    for b in spec.branches:
        cached = video.branches[b]
        chosen = BranchFeatures(latent=cached.latent if wanted.latent else None,
                                pixels=cached.pixels if wanted.pixels else None,
                                ms=tuple(m if w else None for m, w in zip(cached.ms, wanted.ms)))
        view = chosen.map(lambda a: torch.from_numpy(a[rows]))
        view.latent = None if view.latent is None else pool_to_grid(view.latent, grid)
        view.ms = tuple(None if m is None else pool_to_grid(m, grid) for m in view.ms)
        view.pixels = None if view.pixels is None else resize_pixels(view.pixels, spec.pixel_size)
        out[b] = view
    return out


class VideoTable:
    """Feature tensors of many videos stacked on a leading video axis: (N, T, K, ...) per branch and part.

    A subset shares the tensors (`rows` maps its videos to their rows), so splits cost no copy."""

    def __init__(self, keys: list[str], mos: np.ndarray, splits: list[str], branches: dict[str, BranchFeatures],
                 rows: np.ndarray | None = None):
        self.keys, self.mos, self.splits, self.branches = keys, mos.astype(np.float32), splits, branches
        self.rows = np.arange(len(keys)) if rows is None else rows

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
                          self.rows[idx])

    @property
    def device(self) -> torch.device:
        return next(next(iter(self.branches.values())).parts()).device

    def to(self, device: torch.device) -> "VideoTable":
        """The table with its tensors on `device` (a GPU-resident table: batches need no host copy)."""
        return VideoTable(self.keys, self.mos, self.splits, map_branches(self.branches, lambda t: t.to(device)),
                          self.rows)

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
        return {"ms_channels": [0 if m is None else int(m.shape[3]) for m in v.ms], "latent_channels": 4,
                "grid": max(int(m.shape[-1]) for m in maps),
                "pixel_size": int(v.pixels.shape[-1]) if v.pixels is not None else 0, "num_frames": int(maps[0].shape[1])}


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
    for file in cache.shard_files():
        shard = cache.read_shard(file, spec.parts(), spec.branches)
        shard.check_finite()
        for i in range(len(shard.keys)):
            video = video_tensors(shard.video(i), spec, grid, num_frames)
            for b, view in video.items():
                if b not in tables:
                    tables[b] = view.map(lambda t: t.new_empty((len(order), *t.shape)))
                for table, part in zip(tables[b].parts(), view.parts()):
                    table[row_of[shard.keys[i]]] = part
        if progress is not None:
            progress()
    return VideoTable(order, mos, splits, tables)


def table_labels(cache: FeatureCache) -> tuple[list[str], np.ndarray, list[str]]:
    """(keys in cache order, MOS, split) of every video of `cache`; refuses videos without a label."""
    order = list(cache.keys)
    missing_labels = [k for k in order if k not in cache.labels]
    if missing_labels:
        raise CacheError(f"{cache.path}/labels.csv has no MOS for {missing_labels[:3]}; rerun extract to rewrite it")
    return (order, np.array([cache.labels[k]["mos"] for k in order], dtype=np.float32),
            [cache.labels[k]["split"] for k in order])


def _selected_rows(cache: FeatureCache, spec: LoadSpec) -> list[tuple[tuple, int, bool]]:
    """(cached shape of one frame's part (K, C, H, W), bytes per value, pixels?) of each part `spec`
    selects, over its branches."""
    shapes, wanted = cache.part_shapes(), spec.parts()
    out = []
    for b in spec.branches:
        s = shapes[b]
        out += [(s.latent, 2, False)] if wanted.latent else []
        out += [(level, 2, False) for level, want in zip(s.ms, wanted.ms) if want]
        out += [(s.pixels, 1, True)] if wanted.pixels else []
    return out


def estimate_bytes(cache: FeatureCache, spec: LoadSpec) -> int:
    """Bytes `load_table` allocates for `spec`, from the cached shapes and the same pooling rule."""
    grid, frames = resolve_grid_and_frames(cache, spec)
    per_video = sum(k * 3 * spec.pixel_size ** 2 if pixels  # resized to the load spec's pixel size
                    else k * c * pooled_side(h, grid) * pooled_side(w, grid) * size
                    for (k, c, h, w), size, pixels in _selected_rows(cache, spec))
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
        from .stream import StreamedTable  # stream builds on this module's per-video rules

        return StreamedTable(cache, spec, budget_bytes)
    table = load_table(cache, spec, progress)
    if device is not None and torch.device(device).type == "cuda":
        free, _ = torch.cuda.mem_get_info(torch.device(device))
        if table.nbytes() <= DEVICE_SHARE * free:
            table = table.to(device)
    return table
