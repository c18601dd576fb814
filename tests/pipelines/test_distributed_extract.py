"""Stage one through dask and as job-array parts: the same fingerprint and the same bytes as one process."""

from __future__ import annotations

import pytest

from diffvqa_cache.cache.folder import FeatureCache, merge_caches, verify_cache
from diffvqa_cache.datasets import load_dataset
from diffvqa_cache.errors import CacheError
from pipelines.extract import run_extract


@pytest.fixture(scope="module")
def sample6(sample_root):
    return load_dataset("sample", None, limit=6)


@pytest.fixture(scope="module")
def single(sample_cache):
    return sample_cache(limit=6)


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
        part = run_extract(sample6, tiny_extract_config, tmp_path / f"part{k}", num_parts=2, part=k,
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


def test_merge_refuses_mixed_fingerprints(single, sample_cache, tmp_path):
    other = sample_cache(limit=2, seed=1)
    with pytest.raises(CacheError, match="different fingerprints"):
        merge_caches([single.cache_dir, other.cache_dir], tmp_path / "merged")
    assert not (tmp_path / "merged").exists()


def test_cli_merge_error_is_one_line(single, sample_cache, tmp_path):
    from typer.testing import CliRunner

    from cli import app

    other = sample_cache(limit=2, seed=1)
    result = CliRunner().invoke(app, ["cache", "merge", str(single.cache_dir), str(other.cache_dir),
                                      "--out", str(tmp_path / "m")])
    assert result.exit_code == 1 and result.output.count("\n") == 1
    assert result.output.startswith("error: parts have different fingerprints")
    ok = CliRunner().invoke(app, ["cache", "merge", str(single.cache_dir), "--out", str(tmp_path / "m")])
    assert ok.exit_code == 0 and ok.stdout.strip().endswith(single.fingerprint)
