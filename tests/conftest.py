"""Shared fixtures: test clips written with PyAV, the tiny stage-one settings, sample caches extracted once
per session, the one fast-fit setting, and a dask cluster."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
from clip_helpers import clip_frames, clip_markers

from diffvqa_cache.clip_writer import write_clip


@pytest.fixture(scope="session")
def clip_tools():
    """Helpers for test clips: ``frames(n, w, h)`` (the source frames) and ``markers(frames)``."""
    return SimpleNamespace(frames=clip_frames, markers=clip_markers)


@pytest.fixture(scope="session")
def clip_factory(tmp_path_factory):
    """Return ``make(name, codec='libx264', n=16, w=64, h=48, fps=24, container='mp4', **kw) -> Path``.

    Clips are cached per session by their arguments; extra keywords go to ``write_clip``.
    """
    root = tmp_path_factory.mktemp("clips")
    made: dict[tuple, Path] = {}

    def make(name, codec="libx264", n=16, w=64, h=48, fps=24, container="mp4", **kw) -> Path:
        key = (name, codec, n, w, h, fps, container, tuple(sorted(kw.items())))
        if key not in made:
            path = root / f"{name}.{container}"
            write_clip(path, clip_frames(n, w, h), fps=fps, codec=codec, **kw)
            made[key] = path
        return made[key]

    return make


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    """The tiny models run fastest, and steadiest on a busy 2-core machine, on one torch thread."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session", autouse=True)
def cache_home(tmp_path_factory):
    """Keep the sample dataset and weight-hash memos of the suite out of the user's ~/.cache."""
    import os

    home = tmp_path_factory.mktemp("cache_home")
    old = os.environ.get("DIFFVQA_CACHE_HOME")
    os.environ["DIFFVQA_CACHE_HOME"] = str(home)
    yield home
    if old is None:
        os.environ.pop("DIFFVQA_CACHE_HOME", None)
    else:
        os.environ["DIFFVQA_CACHE_HOME"] = old


@pytest.fixture(scope="session")
def sample_root(cache_home):
    """The embedded sample dataset, generated once per session."""
    from diffvqa_cache.datasets.sample import ensure_sample

    return ensure_sample()


@pytest.fixture(scope="session")
def tiny_extract_config():
    """The fastest stage-one settings that still exercise every part: 2 frames, 1 step, 2 crops."""
    from diffvqa_cache.cache.settings import ExtractConfig

    return ExtractConfig(model="tiny", steps=1, strength=0.5, frames=2, crops=2, grid=4, pixel_size=32, shard_size=2,
                         batch_size=6, decode_workers=1)


@pytest.fixture(scope="session")
def sample_cache(tmp_path_factory, sample_root, tiny_extract_config):
    """``make(limit=None, **changes) -> ExtractResult``: the sample's first ``limit`` videos extracted with
    ``tiny_extract_config`` changed by ``changes``, once per session per request. Shared: a test that
    damages or relabels a cache works on a copy."""
    from diffvqa_cache.datasets import load_dataset
    from pipelines.extract import run_extract

    made = {}

    def make(limit=None, **changes):
        key = (limit, tuple(sorted(changes.items())))
        if key not in made:
            out = tmp_path_factory.mktemp("sample-cache")
            made[key] = run_extract(load_dataset("sample", None, limit=limit), tiny_extract_config.replace(**changes),
                                    out, progress=False)
        return made[key]

    return make


@pytest.fixture(scope="session")
def fast_fit():
    """The one fast fit setting (overrides of FitConfig): no TCAB, 2 epochs, 2 splits."""
    return {"regressor.use_tcab": False, "train.epochs": 2, "train.batch_size": 8, "splits": 2}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, sample_cache, fast_fit):
    """A tiny fitted run (16 sample videos, 2 splits, 1 epoch, no TCAB), one per test module that asks for it."""
    from diffvqa_cache.training.settings import FitConfig
    from pipelines.fit import run_fit

    out = tmp_path_factory.mktemp("run")
    run_fit(sample_cache(limit=16).cache_dir, out, FitConfig().with_overrides(
        {**fast_fit, "train.epochs": 1, "splits": 2, "train.batch_size": 4}), progress=False)
    return out


@pytest.fixture(scope="session")
def dask_client():
    """One LocalCluster of 2 worker processes (1 thread each) shared by the dask tests (startup is slow)."""
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster, \
            Client(cluster) as client:
        yield client


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    """A real one-node SLURM (tests/slurm.py) for the session; tests using it skip, with the reason, where
    it cannot start (not installed, not root, daemons failing)."""
    from slurm import LocalSlurm, SlurmUnavailable

    cluster = LocalSlurm(tmp_path_factory.mktemp("slurm"))
    try:
        cluster.start()
    except SlurmUnavailable as exc:
        pytest.skip(f"no local SLURM: {exc}")
    yield cluster
    cluster.stop()


@pytest.fixture
def slurm(slurm_cluster, monkeypatch):
    """The session's SLURM, with SLURM_CONF set for the client commands this test runs (sbatch, squeue...)."""
    monkeypatch.setenv("SLURM_CONF", str(slurm_cluster.conf))
    return slurm_cluster
