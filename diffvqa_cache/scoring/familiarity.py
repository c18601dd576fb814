"""How far a video's features lie from the content a run was trained on (the `unfamiliar` flag).

At fit time every training video is described by a vector of pooled feature statistics: per branch and
part (F_Latent, each selected F_MS level, the TCAB pixels), the per-channel mean and standard deviation
over frames, crops and space, of exactly the tensors the regressor reads. Each block of statistics is
centred and scaled to unit total variance over the training videos (so no part dominates by its channel
count); vectors wider than `DIMS` are projected to `DIMS` dimensions by a fixed Gaussian random matrix
(regenerated from its seed with NumPy's frozen legacy generator), which keeps distances within a few per
cent for every video alike, unlike principal components fitted to the training videos, which would make
those look closer than any new video. At most `MAX_VIDEOS` training videos (a seeded subset) are kept.

A video's distance is its mean Euclidean distance to its k nearest training videos; its percentile is the
share of training videos whose own leave-one-out distance (to their k nearest *other* training videos) is
smaller. A video is `unfamiliar` when its distance exceeds the training distances' `percentile`-th
percentile (default 99: about 1 in 100 videos like the training ones is flagged). The flag says that the
score extrapolates beyond the training content, not that the video is bad.

A run holds one reference per split model, built from that model's own training videos (`RunReference`),
so a video held out from a split's training is compared with what that model saw, never with itself. A
video's novelty is the median over the models of its distance and percentile; it is `unfamiliar` when at
least half of the models flag it. Stored in the run as `familiarity.safetensors` (arrays plus JSON
metadata; no pickle). A file of format 1 (earlier versions: one reference pooling the training videos of every
split, i.e. nearly every video of the cache) still loads, as one reference for all models.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from diffvqa_cache.cache.branches import BranchFeatures
from diffvqa_cache.errors import CacheError
from diffvqa_cache.files import atomic_path
from diffvqa_cache.run.folder import RunFolder

FORMAT = "diffvqa-familiarity-1"  # one reference (FamiliarityReference.save)
RUN_FORMAT = "diffvqa-familiarity-2"  # one reference per split model (RunReference.save)
FILE_NAME = RunFolder.FAMILIARITY  # in a run folder
DEFAULT_PERCENTILE = 99.0
DIMS = 256  # projected width of the statistics
NEIGHBOURS = 3
MAX_VIDEOS = 10_000
SEED = 0


def describe(branches: dict[str, BranchFeatures], chunk: int = 64) -> np.ndarray:
    """(N, D) float64 pooled statistics of a table's tensors {branch: parts (N, T, K, C, h, w)}: per part,
    the per-channel mean and std over (T, K, h, w), in a fixed order (branch, then latent, levels, pixels)."""
    n = len(next(next(iter(branches.values())).parts()))
    blocks = []
    for b in sorted(branches):
        for part in branches[b].parts():
            stats = []
            for s in range(0, n, chunk):
                x = part[s:s + chunk].float()
                x = x / 255.0 if part.dtype == torch.uint8 else x
                x = x.transpose(1, 3).reshape(x.shape[0], x.shape[3], -1)  # (n, C, T*K*h*w)
                stats.append(torch.cat([x.mean(-1), x.std(-1, unbiased=False)], dim=1).double().numpy())
            blocks.append(np.concatenate(stats))
    return np.concatenate(blocks, axis=1)


def block_sizes(branches: dict[str, BranchFeatures]) -> list[int]:
    """Width of each block of `describe`'s vector (2 x channels of each part)."""
    return [2 * int(p.shape[3]) for b in sorted(branches) for p in branches[b].parts()]


@functools.lru_cache(maxsize=2)
def _projection(width: int) -> np.ndarray:
    """(width, DIMS) Gaussian matrix; NumPy's legacy RandomState stream is frozen, so it is the same on
    every NumPy version and machine."""
    return np.random.RandomState(SEED).standard_normal((width, DIMS)) / np.sqrt(DIMS)


@dataclass
class Novelty:
    distance: float
    percentile: float  # 0-100: share of training videos with a smaller leave-one-out distance
    unfamiliar: bool


@dataclass
class FamiliarityReference:
    mean: np.ndarray  # (D,) training mean of the statistics
    scale: np.ndarray  # (D,) per-dimension divisor (one value per block)
    points: np.ndarray  # (N, d) training videos, standardised and projected
    loo: np.ndarray  # (N,) sorted leave-one-out distances of the training videos
    k: int
    meta: dict  # fingerprint, load_spec, n_videos, ...

    @classmethod
    def fit(cls, stats: np.ndarray, blocks: list[int], meta: dict) -> "FamiliarityReference":
        """Build from the training videos' `describe` vectors (and the widths of their blocks)."""
        if len(stats) < 3:
            raise CacheError(f"an unfamiliar-content reference needs at least 3 training videos, got {len(stats)}")
        if len(stats) > MAX_VIDEOS:
            stats = stats[np.sort(np.random.default_rng(SEED).choice(len(stats), MAX_VIDEOS, replace=False))]
        mean = stats.mean(0)
        scale = np.concatenate([np.full(w, np.sqrt(max(float(stats[:, s:s + w].var(0).sum()), 1e-12)))
                                for s, w in zip(np.cumsum([0] + blocks[:-1]), blocks)])
        ref = cls(mean, scale, np.zeros((0, 0)), np.zeros(0), min(NEIGHBOURS, len(stats) - 1), meta)
        ref.points = ref._project(stats)
        ref.loo = np.sort(ref._knn_distance(ref.points, leave_out=True))
        return ref

    def _project(self, stats: np.ndarray) -> np.ndarray:
        z = (np.atleast_2d(stats) - self.mean) / self.scale
        if z.shape[1] <= DIMS:
            return z
        return z @ _projection(z.shape[1])

    def _knn_distance(self, points: np.ndarray, leave_out: bool = False, chunk: int = 1024) -> np.ndarray:
        """Mean distance of each row to its k nearest reference videos (itself excluded with `leave_out`,
        where the rows are the reference videos in order); chunked, so memory stays ~chunk x N."""
        ref_sq = (self.points ** 2).sum(1)
        out = np.empty(len(points))
        for s in range(0, len(points), chunk):
            p = points[s:s + chunk]
            d = np.sqrt(np.maximum((p ** 2).sum(1)[:, None] + ref_sq[None, :] - 2.0 * p @ self.points.T, 0.0))
            if leave_out:
                d[np.arange(len(p)), np.arange(s, s + len(p))] = np.inf
            out[s:s + chunk] = np.partition(d, self.k - 1, axis=1)[:, :self.k].mean(1)
        return out

    def threshold(self, percentile: float = DEFAULT_PERCENTILE) -> float:
        """The distance above which a video is `unfamiliar`."""
        return float(np.percentile(self.loo, percentile))

    def novelty(self, stats: np.ndarray, percentile: float = DEFAULT_PERCENTILE) -> list[Novelty]:
        """Distance, percentile and flag of each row of `describe` vectors."""
        dist = self._knn_distance(self._project(stats))
        limit = self.threshold(percentile)
        return [Novelty(float(d), float(100.0 * np.searchsorted(self.loo, d) / len(self.loo)), bool(d > limit))
                for d in dist]

    def save(self, path: Path) -> None:
        from safetensors.numpy import save_file

        arrays = {name: np.ascontiguousarray(getattr(self, name), dtype=np.float32)
                  for name in ("mean", "scale", "points", "loo")}
        with atomic_path(path) as tmp:
            save_file(arrays, str(tmp), metadata={"diffvqa": json.dumps({"format": FORMAT, "k": self.k, **self.meta},
                                                                        sort_keys=True)})

    @classmethod
    def load(cls, path: Path) -> "FamiliarityReference":
        meta, arrays = _read(path)
        if meta.pop("format", None) != FORMAT:
            raise CacheError(f"{path}: not a {FORMAT} file; refit the run with this version")
        return cls(k=int(meta.pop("k")), meta=meta, **arrays)


def describe_videos(table, rows: np.ndarray, chunk: int = 16) -> tuple[np.ndarray, list[int]]:
    """`describe` vectors of the videos `rows` of a loaded or streamed table (and the widths of their
    blocks), read `chunk` videos at a time through `table.batch` (every crop of a frame), so a cache larger
    than memory is described within about one evaluation batch's memory, and a table on a GPU is read
    back in pieces."""
    stats = []
    n_crops = table.n_crops
    for s in range(0, len(rows), chunk):
        idx = np.asarray(rows[s:s + chunk], dtype=np.int64)
        per_crop = [table.batch(idx, c, "cpu") for c in range(max(n_crops.values()))]
        branches = {b: BranchFeatures.stack([pc[b] for pc in per_crop[:n_crops[b]]],  # one crop: a view, no copy
                                            lambda xs: xs[0].unsqueeze(2) if len(xs) == 1 else torch.stack(xs, 2))
                    for b in n_crops}
        stats.append(describe(branches))
    return np.concatenate(stats), block_sizes(branches)


@dataclass
class RunReference:
    """A run's references, one per split model (named like the model), each of its own training videos."""

    references: dict[str, FamiliarityReference]
    meta: dict  # fingerprint, load_spec, ...

    def novelty(self, stats: np.ndarray, percentile: float = DEFAULT_PERCENTILE) -> list[Novelty]:
        """Per video: the median over the models of the distance and percentile; unfamiliar when at least
        half of the models flag it."""
        per_model = [ref.novelty(stats, percentile) for ref in self.references.values()]
        return [Novelty(float(np.median([n.distance for n in ns])), float(np.median([n.percentile for n in ns])),
                        2 * sum(n.unfamiliar for n in ns) >= len(ns)) for ns in zip(*per_model)]

    def save(self, path: Path) -> None:
        from safetensors.numpy import save_file

        arrays = {f"{name}.{a}": np.ascontiguousarray(getattr(ref, a), dtype=np.float32)
                  for name, ref in self.references.items() for a in ("mean", "scale", "points", "loo")}
        models = {name: {"k": ref.k, **ref.meta} for name, ref in self.references.items()}
        with atomic_path(path) as tmp:
            save_file(arrays, str(tmp), metadata={"diffvqa": json.dumps(
                {"format": RUN_FORMAT, "models": models, **self.meta}, sort_keys=True)})

    @classmethod
    def load(cls, path: Path) -> "RunReference":
        meta, arrays = _read(path)
        if meta.get("format") == FORMAT:  # earlier versions: one reference pooling every split's training videos
            ref = FamiliarityReference.load(path)
            return cls({"all": ref}, {**ref.meta, "pooled": True})
        if meta.pop("format", None) != RUN_FORMAT:
            raise CacheError(f"{path}: not a {RUN_FORMAT} file; refit the run with this version")
        refs = {}
        for name, m in meta.pop("models").items():
            refs[name] = FamiliarityReference(k=int(m.pop("k")), meta=m, **{
                a: arrays[f"{name}.{a}"] for a in ("mean", "scale", "points", "loo")})
        return cls(refs, meta)


def write_reference(path: Path, table, keys_by_model: dict[str, list[str]], meta: dict, chunk: int = 16) -> bool:
    """Describe the training videos of each split model (`keys_by_model`: model name -> keys) of a
    `data.VideoTable` or `stream.StreamedTable`, each video once, and save one reference per model at
    `path`; a model with fewer than 3 training videos gets none, and with none at all nothing is written
    (False)."""
    keys_by_model = {name: keys for name, keys in keys_by_model.items() if len(keys) >= 3}
    if not keys_by_model:
        Path(path).unlink(missing_ok=True)  # never leave an earlier run's reference behind
        return False
    row_of = {k: i for i, k in enumerate(table.keys)}
    union = sorted({k for keys in keys_by_model.values() for k in keys})
    stats, blocks = describe_videos(table, np.array([row_of[k] for k in union], dtype=np.int64), chunk)
    at = {k: i for i, k in enumerate(union)}
    RunReference({name: FamiliarityReference.fit(stats[[at[k] for k in keys]], blocks, {"n_videos": len(keys)})
                  for name, keys in keys_by_model.items()}, meta).save(path)
    return True


def _read(path: Path) -> tuple[dict, dict[str, np.ndarray]]:
    """A familiarity file's metadata and arrays (float64); one-line `CacheError` when it cannot be read."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy") as f:
            meta = json.loads((f.metadata() or {}).get("diffvqa", "{}"))
            arrays = {name: f.get_tensor(name).astype(np.float64) for name in f.keys()}
    except Exception as exc:
        raise CacheError(f"{path}: not a readable familiarity reference ({exc}); refit the run") from None
    return meta, arrays
