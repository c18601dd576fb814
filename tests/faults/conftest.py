"""Fixtures shared by the fault tests: a 16-video sample cache and a quick run fitted on it."""

from __future__ import annotations

import pytest

from diffvqa_cache.training.settings import FitConfig
from pipelines.fit import run_fit


@pytest.fixture(scope="module")
def cache16(sample_cache):
    return sample_cache(limit=16).cache_dir


@pytest.fixture(scope="module")
def run16(tmp_path_factory, cache16, fast_fit):
    out = tmp_path_factory.mktemp("run16")
    run_fit(cache16, out, FitConfig().with_overrides({**fast_fit, "train.epochs": 1, "train.batch_size": 4}),
            progress=False)
    return out
