"""Stage two's data path: cached arrays -> in-memory tensors, with load-time pooling and selection.

The training loop never touches raw videos or diffusers: it indexes tensors loaded once (or, for a
cache larger than the memory budget, shard groups streamed in big contiguous reads).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .cache import BRANCHES, N_LEVELS, FeatureCache
from .errors import CacheError, UserInputError


@dataclass(frozen=True)
class LoadSpec:
    """What to take from the cache (choices made at load time, so ablations need no re-extraction)."""

    branches: str = "SD"
    ms_levels: tuple[int, ...] = (0, 1, 2, 3)
    use_latent: bool = True
    use_pixels: bool = True  # TCAB input
    grid: int | None = None  # None: the cache's grid; smaller: average-pooled at load time
    pixel_size: int = 64  # TCAB input side, resized at load time
    num_frames: int | None = None  # None: all cached frames (must be equal across videos)


def _pick_frames(n_have: int, n_want: int) -> np.ndarray:
    """Uniform subset (or repetition) of n_want rows out of n_have, segment centres as in stage one."""
    return np.minimum(((np.arange(n_want) + 0.5) * n_have / n_want).astype(np.int64), n_have - 1)


def _pool(x: torch.Tensor, grid: int | None) -> torch.Tensor:
    """(..., C, h, w) -> (..., C, g, g) average-pooled; the grid is always the latent-size-independent g."""
    if grid is None or (x.shape[-1] == grid and x.shape[-2] == grid):
        return x
    lead = x.shape[:-3]
    y = F.adaptive_avg_pool2d(x.reshape(-1, *x.shape[-3:]).float(), grid) if x.shape[-1] >= grid else \
        F.interpolate(x.reshape(-1, *x.shape[-3:]).float(), size=(grid, grid), mode="nearest")
    return y.reshape(*lead, *y.shape[-3:]).to(x.dtype)


def video_tensors(arrays: dict[str, np.ndarray], spec: LoadSpec, grid: int, num_frames: int) -> dict:
    """One video's cached arrays -> {branch: {"latent", "ms", "pixels"}} with shapes (T, K, ...)."""
    rows = _pick_frames(len(arrays["frame_index"]), num_frames)
    out = {}
    for b in spec.branches:
        view = {}
        if spec.use_latent:
            view["latent"] = _pool(torch.from_numpy(arrays[f"{b}/latent"][rows]), grid)
        # all four levels by position (the regressor picks levels by index); unselected ones stay None
        view["ms"] = [_pool(torch.from_numpy(arrays[f"{b}/ms{lv}"][rows]), grid) if lv in spec.ms_levels else None
                      for lv in range(N_LEVELS)]
        if spec.use_pixels:
            pix = torch.from_numpy(arrays[f"{b}/pixels"][rows])
            if pix.shape[-1] != spec.pixel_size:  # resized in uint8 directly: ~4x faster than through float
                t, k = pix.shape[:2]
                pix = F.interpolate(pix.reshape(t * k, *pix.shape[2:]), size=(spec.pixel_size,) * 2,
                                    mode="bilinear", antialias=True, align_corners=False)
                pix = pix.reshape(t, k, *pix.shape[1:])
            view["pixels"] = pix
        out[b] = view
    return out


class VideoTable:
    """Feature tensors of many videos stacked on a leading video axis: (N, T, K, ...) per branch."""

    def __init__(self, keys: list[str], mos: np.ndarray, splits: list[str], views: dict):
        self.keys, self.mos, self.splits, self.views = keys, mos.astype(np.float32), splits, views

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def n_crops(self) -> dict[str, int]:
        return {b: next(iter(self._tensors(v))).shape[2] for b, v in self.views.items()}

    @staticmethod
    def _tensors(view: dict):
        yield from (t for name, t in view.items() if name != "ms")
        yield from (m for m in view["ms"] if m is not None)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for v in self.views.values() for t in self._tensors(v))

    def subset(self, idx: np.ndarray) -> "VideoTable":
        idx_t = torch.as_tensor(idx, dtype=torch.long)
        views = {b: {n: ([None if m is None else m[idx_t] for m in t] if n == "ms" else t[idx_t])
                     for n, t in v.items()} for b, v in self.views.items()}
        return VideoTable([self.keys[i] for i in idx], self.mos[idx], [self.splits[i] for i in idx], views)

    def batch(self, idx: np.ndarray, crop: int | np.ndarray, device: torch.device) -> dict:
        """Model input for videos `idx`; `crop` picks one crop per (video, frame) (an int or (B, T) array)."""
        idx_t = torch.as_tensor(idx, dtype=torch.long)
        out = {}
        for b, v in self.views.items():
            def take(t):
                x = t[idx_t]  # (B, T, K, ...)
                if x.shape[2] == 1:
                    return x[:, :, 0]
                c = torch.as_tensor(np.broadcast_to(crop, x.shape[:2]) % x.shape[2], dtype=torch.long)
                return torch.gather(x, 2, c.view(*c.shape, 1, *([1] * (x.dim() - 3))).expand(
                    *x.shape[:2], 1, *x.shape[3:])).squeeze(2)

            view = {}
            if "latent" in v:
                view["latent"] = take(v["latent"]).to(device, non_blocking=True).float()
            view["ms"] = [None if m is None else take(m).to(device, non_blocking=True).float() for m in v["ms"]]
            if "pixels" in v:
                view["pixels"] = take(v["pixels"]).to(device, non_blocking=True)
            out[b] = view
        return out

    def feature_spec(self) -> dict:
        v = next(iter(self.views.values()))
        ms = v["ms"]
        any_t = next(self._tensors({"ms": ms, **({"latent": v["latent"]} if "latent" in v else {})}))
        return {"ms_channels": [0 if m is None else int(m.shape[3]) for m in ms], "latent_channels": 4,
                "grid": int(any_t.shape[-1]),
                "pixel_size": int(v["pixels"].shape[-1]) if "pixels" in v else 0, "num_frames": int(any_t.shape[1])}


def cache_feature_spec(cache: FeatureCache, spec: LoadSpec) -> tuple[int, int]:
    """The (grid, num_frames) a LoadSpec gives on this cache; errors for impossible requests."""
    ex = cache.config["extract"]
    cache_grid = int(ex["grid"])
    grid = spec.grid or cache_grid
    if grid > cache_grid:
        raise UserInputError(f"grid {grid} is finer than the cache's grid {cache_grid}; re-extract with --grid {grid}")
    frames = spec.num_frames or ex.get("frames")
    if not frames:
        raise UserInputError("this cache samples frames at a fixed rate: set num_frames (frames per video) to fit")
    return grid, int(frames)


def load_table(cache: FeatureCache, spec: LoadSpec, keys: list[str] | None = None,
               shard_files: list[Path] | None = None, progress=None) -> VideoTable:
    """Read shards (one big read each), keep the chosen features, pool them, stack them in memory."""
    grid, num_frames = cache_feature_spec(cache, spec)
    wanted = set(keys) if keys is not None else None
    names = ["frame_index"] + [f"{b}/{n}" for b in spec.branches for n in
                               (["latent"] if spec.use_latent else []) + [f"ms{lv}" for lv in spec.ms_levels]
                               + (["pixels"] if spec.use_pixels else [])]
    for lv in spec.ms_levels:
        if not 0 <= lv < N_LEVELS:
            raise UserInputError(f"ms level {lv} does not exist: the cache has levels 0..{N_LEVELS - 1}")
    files = shard_files or cache.shard_files()
    in_files = {Path(f).name for f in files}
    order = [k for s in cache.manifest["shards"] if s["file"] in in_files for k in s["videos"]
             if wanted is None or k in wanted]
    if keys is not None and len(order) < len(set(keys)):
        lost = sorted(set(keys) - set(order))
        raise CacheError(f"{len(lost)} videos are not in cache {cache.path} (first: {lost[:3]})")
    missing_labels = [k for k in order if k not in cache.labels]
    if missing_labels:
        raise CacheError(f"{cache.path}/labels.csv has no MOS for {missing_labels[:3]}; rerun extract to rewrite it")
    row_of = {k: i for i, k in enumerate(order)}
    views: dict = {}  # preallocated (N, ...) tensors, filled video by video: peak memory ~ the table + one shard
    for file in files:
        shard_keys, starts, arrays = cache.read_shard(file, names)
        _check_finite(file, shard_keys, starts, arrays)
        ends = np.append(starts[1:], len(arrays["frame_index"]))
        for k, s, e in zip(shard_keys, starts, ends):
            if k in row_of:
                video = video_tensors({n: a[s:e] for n, a in arrays.items()}, spec, grid, num_frames)
                _put(views, video, row_of[k], len(order))
        if progress is not None:
            progress()
    if keys is not None:  # the caller's order
        order, idx = list(keys), torch.as_tensor([row_of[k] for k in keys])
        views = {b: {n: ([None if m is None else m[idx] for m in t] if n == "ms" else t[idx]) for n, t in v.items()}
                 for b, v in views.items()}
    mos = np.array([cache.labels[k]["mos"] for k in order], dtype=np.float32)
    return VideoTable(order, mos, [cache.labels[k]["split"] for k in order], views)


def _put(views: dict, video: dict, row: int, n: int) -> None:
    """Copy one video's tensors into row `row` of the (n, ...) tables, allocating them on first use."""
    for b, view in video.items():
        dest = views.setdefault(b, {})
        for name, t in view.items():
            if name == "ms":
                table = dest.setdefault("ms", [None if m is None else m.new_empty((n, *m.shape)) for m in t])
                for m, tab in zip(t, table):
                    if m is not None:
                        tab[row] = m
            else:
                dest.setdefault(name, t.new_empty((n, *t.shape)))[row] = t


def _check_finite(file: Path, keys: list[str], starts: np.ndarray, arrays: dict) -> None:
    """One pass over each float array of a shard; names the first video with a NaN or Inf."""
    for name, a in arrays.items():
        if a.dtype.kind != "f":
            continue
        flat = a.reshape(len(a), -1)
        if a.dtype == np.float16:  # exponent bits all ones = Inf/NaN; ~3x faster than np.isfinite on fp16
            bad = ((flat.view(np.uint16) & 0x7C00) == 0x7C00).any(axis=1)
        else:
            bad = ~np.isfinite(flat).all(axis=1)
        if bad.any():
            k = keys[int(np.searchsorted(starts, int(np.flatnonzero(bad)[0]), side="right")) - 1]
            raise CacheError(f"{file}: video {k!r} has NaN/Inf features ({name}); re-extract it (delete "
                             f"{Path(file).name} and rerun extract) or drop it from the labels")


def estimate_bytes(cache: FeatureCache, spec: LoadSpec) -> int:
    """Bytes a full load would take in memory, from the first shard's shapes."""
    grid, frames = cache_feature_spec(cache, spec)
    shapes = cache.feature_shapes()
    per_video = 0
    for b in spec.branches:
        k = shapes[f"{b}/latent"]["shape"][0]
        if spec.use_latent:
            per_video += frames * k * 4 * grid * grid * 2
        for lv in spec.ms_levels:
            per_video += frames * k * shapes[f"{b}/ms{lv}"]["shape"][1] * min(grid, shapes[f"{b}/ms{lv}"]["shape"][-1]) ** 2 * 2
        if spec.use_pixels:
            per_video += frames * k * 3 * spec.pixel_size ** 2
    return per_video * len(cache)


def check_branches(cache: FeatureCache, branches: str) -> None:
    for b in branches:
        if b not in BRANCHES:
            raise UserInputError(f"branch {b!r} is not one of {BRANCHES}")
