"""What a fit trains on (`load_fit_inputs` -> `FitInputs`): the training cache and any --test-cache,
checked; the protocol's splits, planned and checked; the selected features, opened once (in memory when
they fit the budget, else streamed; `training.source.open_features`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from diffvqa_cache.cache.folder import FeatureCache
from diffvqa_cache.errors import CacheError
from diffvqa_cache.progress import err
from diffvqa_cache.training.protocols import Split, check_plan, plan_splits, test_set_names
from diffvqa_cache.training.rules import LoadSpec
from diffvqa_cache.training.settings import FitConfig
from diffvqa_cache.training.source import FeatureSource, open_features


@dataclass
class FitInputs:
    cache: FeatureCache
    test_caches: list[FeatureCache]
    protocol: str
    splits: list[Split]
    spec: LoadSpec  # what was taken from the caches
    table: FeatureSource
    test_tables: dict[str, FeatureSource]  # test-set name -> the features of a --test-cache
    data: dict  # the data path chosen, for the run's record


def load_fit_inputs(cache_path: Path, cfg: FitConfig, test_cache_paths: list[Path] = (),
                    progress: bool = False, device=None) -> FitInputs:
    """Open and check the caches, plan the protocol's splits, and open the selected features: loaded
    once into memory when they fit the budget (`cfg.data`, `cfg.memory_gb`), else streamed."""
    cache = FeatureCache(cache_path)
    cache.check_complete(cfg.verify)
    if cache.config.stale_note():
        err.print(f"[yellow]{cache.path}: {cache.config.stale_note()}; `predict` will refuse this run: "
                  "re-extract the cache with this version[/]")
    test_caches = [FeatureCache(p) for p in test_cache_paths]
    for test_cache in test_caches:
        test_cache.check_complete(cfg.verify)
        if test_cache.fingerprint != cache.fingerprint:
            versions = ("" if test_cache.config.extractor == cache.config.extractor else
                        f" (extractor versions {test_cache.config.extractor} and {cache.config.extractor})")
            raise CacheError(f"--test-cache {test_cache.path} has fingerprint {test_cache.fingerprint}, the training "
                             f"cache {cache.fingerprint}{versions}: extract both with the same settings")
    protocol, splits = plan_splits(cfg.protocol, cache, test_caches, cfg.splits, cfg.test_fraction, cfg.seed,
                                   cfg.cross_train)
    names = test_set_names(test_caches, ("test", "test1080p"))
    spec = cfg.load_spec(cache.config.pixel_size)
    features = open_features([cache, *test_caches], spec, cfg.data, cfg.budget_gb(), device, progress)
    table, test_tables = features.sources[0], dict(zip(names, features.sources[1:]))
    # the features' own checks (NaN/Inf, where loaded into memory) first, then the plan: all before any training
    check_plan(protocol, splits, cache.path, cfg.test_fraction, cfg.train.val_fraction,
               {name: str(c.path) for name, c in zip(names, test_caches)})
    return FitInputs(cache, test_caches, protocol, splits, spec, table, test_tables, features.record())
