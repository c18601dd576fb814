"""Which parts of an extraction job array to (re)submit: on a rerun, only the parts still missing.

Part i of N owns the shards s with s % N == i (the extract planner's rule), so the parts to submit are
those owning a shard that is not complete in the cache. Submitting them: `diffvqa_cache.cluster.submit`.
"""

from __future__ import annotations

from pathlib import Path

from diffvqa_cache.cache.folder import CacheDir, plan_shards
from diffvqa_cache.cache.settings import ExtractConfig
from diffvqa_cache.datasets import Dataset


def missing_parts(dataset: Dataset, cfg: ExtractConfig, out: Path, num_parts: int,
                  retry_failed: bool = False, gpu: bool | None = None) -> list[int]:
    """Parts (0..num_parts-1) that own a shard not complete yet (or, with retry_failed, one with failures).
    `gpu`: whether the parts run on CUDA GPUs (resolves --dtype auto as they will; None: as here)."""
    if not (Path(out) / dataset.name).is_dir():  # nothing extracted yet: no need to fingerprint the model here
        return list(range(num_parts))
    from .extract import prepare_cache  # torch: seconds to import

    cache_dir, config = prepare_cache(dataset, cfg, out, gpu)
    cdir = CacheDir(cache_dir)
    plan = plan_shards([r.key for r in dataset.records], cfg.shard_size)
    return sorted({i % num_parts for i, keys in enumerate(plan)
                   if cdir.needs_work(i, keys, config.fingerprint, retry_failed)})
