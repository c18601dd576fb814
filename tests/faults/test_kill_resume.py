"""Fault injection: extraction killed with SIGKILL at random points, then resumed, equals one clean run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from diffvqa_cache.files import file_sha256

ROOT = Path(__file__).resolve().parents[2]
ARGS = ["extract", "--dataset", "sample", "--limit", "10", "--steps", "1", "--strength", "0.5", "--frames", "2",
        "--crops", "1", "--grid", "4", "--pixel-size", "32", "--shard-size", "1"]


def extract(out: Path, kill_after: float | None = None) -> int | None:
    """Run the CLI in a child process; SIGKILL it after `kill_after` seconds (None: let it finish)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-c", "from cli import main; main()", *ARGS, "--out", str(out)]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if kill_after is None:
        return proc.wait(timeout=600)
    try:
        return proc.wait(timeout=kill_after)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        return None


def complete_shards_are_intact(cache_dir: Path) -> int:
    """Every shard with a record must match it: nothing half-written is taken as complete."""
    n = 0
    for rec_path in (cache_dir / "shards").glob("shard-*.json"):
        rec = json.loads(rec_path.read_text())
        assert file_sha256(cache_dir / "shards" / rec["file"]) == rec["sha256"], rec["file"]
        n += 1
    return n


@pytest.mark.slow
def test_sigkill_at_random_points_then_resume_is_bit_identical(sample_root, tmp_path):
    clean = tmp_path / "clean"
    assert extract(clean) == 0
    clean_dir = next((clean / "sample").iterdir())
    killed = tmp_path / "killed"
    # kill points from "still importing" to "in the middle of shard writes"
    for delay in np.random.default_rng(7).uniform(1.0, 14.0, size=4):
        extract(killed, kill_after=float(delay))
        for cache_dir in (killed / "sample").glob("*") if (killed / "sample").exists() else []:
            complete_shards_are_intact(cache_dir)
    assert extract(killed) == 0
    cache_dir = next((killed / "sample").iterdir())
    assert cache_dir.name == clean_dir.name
    hashes = {p.name: file_sha256(p) for p in (cache_dir / "shards").glob("*.h5")}
    assert hashes == {p.name: file_sha256(p) for p in (clean_dir / "shards").glob("*.h5")}
    assert json.loads((cache_dir / "manifest.json").read_text())["complete"]
    assert complete_shards_are_intact(cache_dir) == 10
