"""Fault injection on the cache: truncated, corrupted, deleted shards, a stale manifest, NaN features."""

from __future__ import annotations

import json
import shutil

import h5py
import numpy as np
import pytest

from diffvqa_cache.cache.folder import verify_cache
from diffvqa_cache.datasets import load_dataset
from diffvqa_cache.errors import CacheError
from diffvqa_cache.files import file_sha256, write_json_atomic
from diffvqa_cache.training.settings import FitConfig
from pipelines.extract import run_extract
from pipelines.fit import run_fit


@pytest.fixture(scope="module")
def pristine(sample_cache):
    result = sample_cache(limit=12)
    return load_dataset("sample", None, limit=12), result.cache_dir.parents[1], result.cache_dir


@pytest.fixture
def fast(fast_fit):
    return {**fast_fit, "train.epochs": 1, "splits": 1}


@pytest.fixture
def damaged(pristine, tmp_path):
    index, out, cache_dir = pristine
    work = tmp_path / "work"
    shutil.copytree(out, work)
    return index, work, work / cache_dir.relative_to(out)


def hashes(cache_dir):
    return {p.name: file_sha256(p) for p in sorted((cache_dir / "shards").glob("*.h5"))}


def flip_byte(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x55
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["truncate", "corrupt", "delete"])
def test_verify_names_it_extract_recomputes_only_it_fit_refuses(damage, pristine, damaged, tiny_extract_config, fast,
                                                                 tmp_path):
    index, work, cache_dir = damaged
    shard = cache_dir / "shards" / "shard-00002.h5"
    {"truncate": lambda: shard.write_bytes(shard.read_bytes()[:-512]), "corrupt": lambda: flip_byte(shard),
     "delete": shard.unlink}[damage]()
    problems, _ = verify_cache(cache_dir)
    assert len(problems) == 1 and problems[0].startswith("shard-00002.h5")
    with pytest.raises(CacheError, match="shard-00002"):
        run_fit(cache_dir, tmp_path / "run", FitConfig().with_overrides(fast), progress=False)
    # a plain rerun catches what changes the size; --verify also catches same-size corruption
    again = run_extract(index, tiny_extract_config, work, progress=False, verify=damage == "corrupt")
    assert again.shards_done == 1 and again.shards_skipped == 5
    assert hashes(cache_dir) == hashes(pristine[2]) and verify_cache(cache_dir)[0] == []


def test_manifest_out_of_step_with_shards_is_named_and_rebuilt(damaged, tiny_extract_config):
    index, work, cache_dir = damaged
    manifest = json.loads((cache_dir / "manifest.json").read_text())
    manifest["shards"][1]["sha256"] = "0" * 64
    write_json_atomic(cache_dir / "manifest.json", manifest)
    problems, _ = verify_cache(cache_dir)
    assert problems == ["shard-00001.h5: manifest and shard record disagree"]
    again = run_extract(index, tiny_extract_config, work, progress=False)
    assert again.shards_done == 0 and verify_cache(cache_dir)[0] == []


def test_nan_features_are_refused_with_the_video_id(damaged, fast, tmp_path):
    _, _, cache_dir = damaged
    shard = cache_dir / "shards" / "shard-00003.h5"
    with h5py.File(shard, "r+") as f:
        key = f["keys"][0].decode()
        f["D/ms1"][0, 0, 0, 0, 0] = np.nan
    # keep the checksums consistent, so only the numbers are wrong
    record = json.loads(shard.with_suffix(".json").read_text())
    record.update(sha256=file_sha256(shard), bytes=shard.stat().st_size)
    write_json_atomic(shard.with_suffix(".json"), record)
    manifest = json.loads((cache_dir / "manifest.json").read_text())
    manifest["shards"][3].update(sha256=record["sha256"], bytes=record["bytes"])
    write_json_atomic(cache_dir / "manifest.json", manifest)
    with pytest.raises(CacheError, match=f"video '{key}' has NaN/Inf features"):
        run_fit(cache_dir, tmp_path / "run", FitConfig().with_overrides(fast), progress=False)


def test_same_size_damage_hint_names_verify_and_following_it_fixes_fit(damaged, tiny_extract_config, fast, tmp_path):
    """The hint for a flipped byte must work as printed: a plain rerun trusts a shard of the recorded size."""
    from typer.testing import CliRunner

    from cli import app

    index, work, cache_dir = damaged
    flip_byte(cache_dir / "shards" / "shard-00001.h5")
    with pytest.raises(CacheError, match="shard-00001.*rerun the same extract command with --verify") as fit_error:
        run_fit(cache_dir, tmp_path / "run", FitConfig().with_overrides(fast), progress=False)
    verify = CliRunner().invoke(app, ["cache", "verify", str(cache_dir)])
    assert verify.exit_code == 1 and "rerun the same extract command with --verify" in verify.output
    assert "--verify" in str(fit_error.value)
    plain = run_extract(index, tiny_extract_config, work, progress=False)
    assert plain.shards_done == 0  # why the hint must name --verify
    again = run_extract(index, tiny_extract_config, work, progress=False, verify=True)
    assert again.shards_done == 1 and verify_cache(cache_dir)[0] == []
    result = run_fit(cache_dir, tmp_path / "run", FitConfig().with_overrides({**fast, "test_fraction": 0.34}),
                     progress=False)
    assert np.isfinite(result["summary"]["test"]["srcc"]["median"])


def test_cache_of_an_older_extractor_version_is_stale_not_reused(pristine, tiny_extract_config, tmp_path, monkeypatch):
    """Version 3 decoded rotated videos wrongly: its caches get a new folder, `cache info` says stale."""
    from typer.testing import CliRunner

    import diffvqa_cache.cache.settings as config_module
    from cli import app
    from diffvqa_cache.cache.folder import FeatureCache

    index = load_dataset("sample", None, limit=4)
    monkeypatch.setattr(config_module, "EXTRACTOR_VERSION", "3")
    old = run_extract(index, tiny_extract_config, tmp_path, progress=False)
    monkeypatch.undo()
    assert FeatureCache(old.cache_dir).config.extractor == "3"
    new = run_extract(index, tiny_extract_config, tmp_path, progress=False)
    assert new.cache_dir != old.cache_dir and new.shards_done == 2 and new.shards_skipped == 0
    assert FeatureCache(new.cache_dir).config.stale_note() is None
    info = CliRunner().invoke(app, ["cache", "info", str(old.cache_dir)])
    assert info.exit_code == 0 and "stale        extracted by extractor version 3" in info.output
