"""Stage one through dask and as job-array parts: the same fingerprint and the same bytes as one process."""

from __future__ import annotations

import pytest

from diffvqa_cache.cache import FeatureCache, merge_caches, verify_cache
from diffvqa_cache.config import ExtractConfig
from diffvqa_cache.datasets import load_dataset
from diffvqa_cache.errors import CacheError
from pipelines.extract import run_extract


@pytest.fixture(scope="module")
def sample6(sample_root):
    return load_dataset("sample", None, limit=6)


@pytest.fixture(scope="module")
def single(tmp_path_factory, sample6, tiny_extract_config):
    return run_extract(sample6, tiny_extract_config, tmp_path_factory.mktemp("single"), progress=False)


def shard_sums(manifest):
    return {s["file"]: s["sha256"] for s in manifest["shards"]}


def test_local_cluster_extraction_is_bit_identical(single, sample6, tiny_extract_config, tmp_path, dask_client):
    result = run_extract(sample6, tiny_extract_config, tmp_path, progress=False, client=dask_client)
    assert result.fingerprint == single.fingerprint and result.shards_done == 3 and result.videos == 6
    assert result.manifest["complete"] and shard_sums(result.manifest) == shard_sums(single.manifest)
    assert verify_cache(result.cache_dir)[0] == []


def test_job_array_parts_merge_into_one_cache(single, sample6, tiny_extract_config, tmp_path):
    parts = []
    for k in range(2):
        part = run_extract(sample6, tiny_extract_config, tmp_path / f"part{k}", num_shards=2, shard_index=k,
                           progress=False)
        assert not part.manifest["complete"]
        parts.append(part.cache_dir)
    target, manifest = merge_caches(parts, tmp_path / "merged")
    assert target.name == single.fingerprint and manifest["complete"]
    assert shard_sums(manifest) == shard_sums(single.manifest)
    assert verify_cache(target)[0] == [] and len(FeatureCache(target)) == 6
    # merging again (or with the merged cache among the parts) changes nothing
    _, again = merge_caches([target, *parts], tmp_path / "merged")
    assert shard_sums(again) == shard_sums(single.manifest)


def test_merge_refuses_mixed_fingerprints(single, sample6, tmp_path):
    other_cfg = ExtractConfig(model="tiny", steps=1, frames=2, crops=2, grid=4, pixel_size=32, shard_size=2,
                              batch_size=6, decode_workers=1, seed=1)
    other = run_extract(load_dataset("sample", None, limit=2), other_cfg, tmp_path / "other", progress=False)
    with pytest.raises(CacheError, match="different fingerprints"):
        merge_caches([single.cache_dir, other.cache_dir], tmp_path / "merged")
    assert not (tmp_path / "merged").exists()


def test_cli_merge_error_is_one_line(single, tmp_path):
    from typer.testing import CliRunner

    from cli import app

    other_cfg = ExtractConfig(model="tiny", steps=1, frames=2, crops=2, grid=4, pixel_size=32, shard_size=2,
                              batch_size=6, decode_workers=1, seed=2)
    other = run_extract(load_dataset("sample", None, limit=2), other_cfg, tmp_path / "other", progress=False)
    result = CliRunner().invoke(app, ["cache", "merge", str(single.cache_dir), str(other.cache_dir),
                                      "--out", str(tmp_path / "m")])
    assert result.exit_code == 1 and result.output.count("\n") == 1
    assert result.output.startswith("error: parts have different fingerprints")
    ok = CliRunner().invoke(app, ["cache", "merge", str(single.cache_dir), "--out", str(tmp_path / "m")])
    assert ok.exit_code == 0 and ok.stdout.strip().endswith(single.fingerprint)
