"""The shard task on its own (as a dask worker runs it) and the per-process model cache."""

from __future__ import annotations

import dataclasses
import shutil

import pytest

from diffvqa_cache.cache.folder import FeatureCache
from diffvqa_cache.datasets import load_dataset
from diffvqa_cache.extraction import shards
from diffvqa_cache.extraction.shards import ExtractResult, extract_here, extract_shard, worker_encoder
from diffvqa_cache.files import file_sha256


@pytest.fixture(scope="module")
def cached(sample_cache):
    """A 4-video cache of 2 shards (extracted by run_extract) and its records in label-file order."""
    result = sample_cache(limit=4)
    return FeatureCache(result.cache_dir), load_dataset("sample", None, limit=4).records


def copy_without_shards(cache: FeatureCache, tmp_path):
    work = tmp_path / "cache"
    shutil.copytree(cache.path, work, ignore=shutil.ignore_patterns("*.h5"))
    return work


def test_a_shard_task_alone_writes_the_same_bytes(cached, tmp_path):
    cache, records = cached
    work = copy_without_shards(cache, tmp_path)
    rec = extract_shard(records[2:4], 1, cache.config, work)  # its own decode threads and this process's model
    assert rec["videos"] == [r.key for r in records[2:4]] and rec["failed"] == []
    name = "shards/shard-00001.h5"
    assert file_sha256(work / name) == file_sha256(cache.path / name)


def test_a_failed_video_is_recorded_not_raised(cached, tmp_path):
    cache, records = cached
    work = copy_without_shards(cache, tmp_path)
    broken = dataclasses.replace(records[0], path=tmp_path / "gone.mp4")
    seen = []
    rec = extract_shard([broken, records[1]], 0, cache.config, work, on_failed=lambda: seen.append(1))
    assert rec["videos"] == [records[1].key] and [f["video"] for f in rec["failed"]] == [broken.key] and seen == [1]


def test_the_model_is_loaded_once_per_process_and_settings(cached, monkeypatch):
    cache, _ = cached
    monkeypatch.setattr(shards, "_ENCODERS", {})
    first = worker_encoder(cache.config)
    assert worker_encoder(cache.config) is first and len(shards._ENCODERS) == 1
    other = cache.config.replace(extract=cache.config.extract.replace(steps=2))
    assert worker_encoder(other) is not first and len(shards._ENCODERS) == 1  # one model per process at a time


def test_extract_here_counts_into_the_result(cached, tmp_path):
    cache, records = cached
    work = copy_without_shards(cache, tmp_path)
    result = ExtractResult(work, cache.fingerprint, 0, 0, 0, 0)
    extract_here([(0, records[:2]), (1, records[2:4])], cache.config, work, result, progress=False, t0=0.0)
    assert (result.shards_done, result.videos, result.frames, result.failed) == (2, 4, 8, [])
    for name in ("shard-00000.h5", "shard-00001.h5"):
        assert file_sha256(work / "shards" / name) == file_sha256(cache.path / "shards" / name)
