"""Fault injection: a full disk while writing a shard, and two extract processes on one cache."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from diffvqa_cache.cache import verify_cache
from diffvqa_cache.files import file_sha256
from diffvqa_cache.datasets import load_dataset
from diffvqa_cache.errors import CacheError
from pipelines.extract import run_extract

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def tmpfs(tmp_path):
    """A 512 KiB filesystem, so a shard write really runs out of space (skipped where mount is not allowed)."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_disk_full_gives_a_clear_error_and_keeps_the_rest(sample_root, tiny_extract_config, tmpfs):
    index = load_dataset("sample", None, limit=12)  # ~1.2 MB of shards at this pixel size
    with pytest.raises(CacheError, match="disk full while writing shard-.*rerun the same command"):
        run_extract(index, dataclasses.replace(tiny_extract_config, pixel_size=64), tmpfs, progress=False)
    cache_dir = next((tmpfs / "sample").iterdir())
    assert not list(cache_dir.rglob("*.incomplete"))  # the partial shard was removed
    for rec in (cache_dir / "shards").glob("*.json"):  # what was written before is intact
        r = json.loads(rec.read_text())
        assert file_sha256(cache_dir / "shards" / r["file"]) == r["sha256"]


def test_disk_full_simulated(sample_root, tiny_extract_config, tmp_path, monkeypatch):
    """The same where no tmpfs can be mounted: the HDF5 writer fails with ENOSPC on the third shard."""
    import errno

    import h5py

    real = h5py.Group.create_dataset
    calls = {"n": 0}

    def failing(self, name, *args, **kwargs):
        if name == "S/latent":
            calls["n"] += 1
            if calls["n"] == 3:
                raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, name, *args, **kwargs)

    monkeypatch.setattr(h5py.Group, "create_dataset", failing)
    index = load_dataset("sample", None, limit=12)
    with pytest.raises(CacheError, match="disk full"):
        run_extract(index, tiny_extract_config, tmp_path, progress=False)
    cache_dir = next((tmp_path / "sample").iterdir())
    assert not list(cache_dir.rglob("*.incomplete"))
    assert not (cache_dir / "shards" / "shard-00002.json").exists()  # the third shard is the one lost
    monkeypatch.setattr(h5py.Group, "create_dataset", real)
    again = run_extract(index, tiny_extract_config, tmp_path, progress=False)
    assert again.shards_done == 3 and again.shards_skipped == 3  # only what was lost is recomputed
    assert again.manifest["complete"] and verify_cache(cache_dir)[0] == []


@pytest.mark.slow
def test_two_extract_processes_on_one_cache(sample_root, tiny_extract_config, tmp_path):
    args = ["extract", "--dataset", "sample", "--limit", "12", "--steps", "1", "--strength", "0.5", "--frames", "2",
            "--crops", "2", "--grid", "4", "--pixel-size", "32", "--shard-size", "2", "--batch-size", "6"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", "from cli import main; main()", *args, "--out", str(tmp_path / "shared")],
                              cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    codes = [p.wait(timeout=600) for p in procs]
    assert codes == [0, 0], [p.stderr.read() for p in procs]
    # whichever finished last wrote the manifest; one more run completes it if the other was still busy
    index = load_dataset("sample", None, limit=12)
    final = run_extract(index, tiny_extract_config, tmp_path / "shared", progress=False)
    assert final.shards_done == 0 and final.manifest["complete"]
    alone = run_extract(index, tiny_extract_config, tmp_path / "alone", progress=False)
    shared = {p.name: file_sha256(p) for p in (final.cache_dir / "shards").glob("*.h5")}
    assert shared == {p.name: file_sha256(p) for p in (alone.cache_dir / "shards").glob("*.h5")}
    assert not list((final.cache_dir / "shards").glob("*.lock"))
