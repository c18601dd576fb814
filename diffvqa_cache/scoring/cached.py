"""Scoring videos already in a cache with a fitted run (`score_cached`, `cache score`): no extraction,
read through the bounded data path, one pass for all split models."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from diffvqa_cache.devices import resolve_device
from diffvqa_cache.errors import UserInputError
from diffvqa_cache.run.folder import RunFolder
from diffvqa_cache.training.loop import predict_raw_many
from diffvqa_cache.training.memory import feature_budget_gb
from diffvqa_cache.training.rules import LoadSpec
from diffvqa_cache.training.settings import TrainConfig
from diffvqa_cache.training.source import open_features


def score_cached(run: Path | str, cache_path: Path | str, keys: list[str] | None = None, device="auto",
                 memory_gb: float | None = None, verify: bool = True) -> dict[str, float]:
    """{video: score on the MOS scale (mean of the run's split models)} for cached videos (all, or `keys`),
    read through the bounded data path (streamed unless the selection fits `memory_gb`), one pass for all
    models. For scoring the videos of a cache without extracting them again. `verify`: re-hash the
    shards read against the cache's manifest first (the run's files are always checked)."""
    keys_out, per_model = score_cached_per_model(run, cache_path, keys, device, memory_gb, verify)
    return dict(zip(keys_out, per_model.mean(0).tolist()))


def score_cached_per_model(run: Path | str, cache_path: Path | str, keys: list[str] | None = None, device="auto",
                           memory_gb: float | None = None, verify: bool = True) -> tuple[list[str], np.ndarray]:
    """The videos scored and their (n_models, n_videos) scores on the MOS scale, one row per split model."""
    from diffvqa_cache.cache.folder import FeatureCache

    budget_gb = feature_budget_gb(memory_gb, "--memory-gb")
    cache, dev = FeatureCache(cache_path), resolve_device(device)
    models = RunFolder.open(run).load_models(cache.fingerprint, dev)
    if verify:
        cache.verify_shards(keys)
    spec = LoadSpec.from_dict(models[0][1].load_spec)
    table = open_features([cache], spec, "stream" if keys is not None else "auto", budget_gb, dev).sources[0]
    if keys is not None:
        row_of = {k: i for i, k in enumerate(table.keys)}
        unknown = [k for k in keys if k not in row_of]
        if unknown:
            raise UserInputError(f"videos {unknown[:3]} are not in cache {cache.path}; `diffvqa-cache cache info` "
                                 "lists what it holds")
        table = table.subset(np.array([row_of[k] for k in keys], dtype=np.int64))
    raw = predict_raw_many([m for m, _ in models], table, TrainConfig(device=str(dev)), dev)
    return list(table.keys), np.stack([r * meta.scale[0] + meta.scale[1] for r, (_, meta) in zip(raw, models)])


CSV_HEADER = ["video", "score", "score_min", "score_max"]


def write_cached_scores(run: Path | str, cache_path: Path | str, output: Path | str | None = None,
                        keys: list[str] | None = None, device="auto", memory_gb: float | None = None,
                        verify: bool = True) -> str | None:
    """`cache score`: the CSV of video, score (the split models' mean) and the split models' min and max,
    written to `output` (atomically; returns what was written, in words) or, without one, to stdout."""
    import csv
    import sys

    from diffvqa_cache.files import write_csv_atomic

    keys, scores = score_cached_per_model(run, cache_path, keys, device, memory_gb, verify)
    rows = [(k, f"{s.mean():.6f}", f"{s.min():.6f}", f"{s.max():.6f}") for k, s in zip(keys, scores.T)]
    if output is None:
        w = csv.writer(sys.stdout)
        w.writerow(CSV_HEADER)
        w.writerows(rows)
        return None
    write_csv_atomic(output, CSV_HEADER, rows)
    return f"wrote {output} ({len(rows)} videos, {len(scores)} split models)"
