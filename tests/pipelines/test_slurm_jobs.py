"""Job arrays on a real one-node SLURM (tests/slurm.py): the first submit works from any folder and gives the
local cache bit for bit; `--submit` adds the finishing job, and after a cancelled part resubmits only it."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli import app
from diffvqa_cache.cache.folder import file_sha256

pytestmark = pytest.mark.slurm
runner = CliRunner()
TINY = ["--dataset", "sample", "--steps", "1", "--strength", "0.5", "--frames", "2", "--crops", "1", "--grid", "4",
        "--pixel-size", "32"]
JOBS = ["--jobs", "2", "--gpus-per-job", "0", "--cpus-per-job", "1", "--mem", "1GB", "--walltime", "0:10:00"]


def cli(*args: str) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.stdout


def job_id(pattern: str, text: str) -> str:
    found = re.search(pattern + r" (\d+)", text)
    assert found, text
    return found.group(1)


def shard_hashes(cache_dir: Path) -> dict[str, str]:
    return {p.name: file_sha256(p) for p in sorted((cache_dir / "shards").glob("*.h5"))}


def complete_shards(cache_dir: Path) -> set[int]:
    return {int(p.stem.split("-")[1]) for p in (cache_dir / "shards").glob("shard-*.json")}


def test_rendered_array_submitted_from_elsewhere_equals_local_extract(slurm, sample_root, tmp_path, monkeypatch):
    here, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    here.mkdir(), elsewhere.mkdir()
    monkeypatch.chdir(here)
    work = [*TINY, "--shard-size", "2", "--limit", "6"]
    cli("cluster", "slurm", *JOBS, "--out", "cache", *work, "--output", "job.sh")
    assert (here / "logs").is_dir() and (here / "job.finish.sh").is_file()
    monkeypatch.chdir(elsewhere)  # relative --out and logs still mean the project folder
    array = slurm.run("sbatch", "--parsable", str(here / "job.sh")).strip()
    local = Path(cli("extract", *work, "--out", str(tmp_path / "local")).strip())  # meanwhile, in this process
    slurm.wait(array, timeout=240)
    assert slurm.states(array) == ["COMPLETED", "COMPLETED"], [p.read_text()[-400:] for p in (here / "logs").iterdir()]
    assert sorted(p.name for p in (here / "logs").iterdir()) == [f"diffvqa-extract-{array}_{i}.out" for i in (0, 1)]
    assert not list(elsewhere.iterdir())

    # nothing left to extract: --submit sends only the finishing job, which writes the complete manifest
    monkeypatch.chdir(here)
    out = cli("cluster", "slurm", *JOBS, "--out", "cache", *work, "--output", "job.sh", "--submit")
    assert "nothing is missing" in out and "job array" not in out
    finish = job_id("finishing job", out)
    slurm.wait(finish, timeout=120)
    assert slurm.states(finish) == ["COMPLETED"]
    cache_dir = here / "cache" / "sample" / local.name
    manifest = json.loads((cache_dir / "manifest.json").read_text())
    assert manifest["complete"] and manifest["videos"] == 6
    assert shard_hashes(cache_dir) == shard_hashes(local) and len(shard_hashes(local)) == 3


def test_cancelled_part_is_resubmitted_alone_and_completes(slurm, sample_root, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    submit = ["cluster", "slurm", *JOBS, "--out", "cache", *TINY, "--shard-size", "1", "--limit", "16",
              "--output", "job.sh", "--submit"]
    out = cli(*submit)
    assert "parts 0,1 of 2" in out
    array, finish = job_id("job array", out), job_id("finishing job", out)
    slurm.run("scancel", finish)  # keep the finishing job from completing the cancelled part's shards
    first_shard, end = tmp_path / "cache" / "sample", time.monotonic() + 180
    while not list(first_shard.glob("*/shards/shard-00000.json")):  # part 0 is mid-run: 1 of its 8 shards
        assert time.monotonic() < end and slurm.queued(array), "part 0 wrote no shard"
        time.sleep(0.05)
    slurm.run("scancel", f"{array}_0")
    slurm.wait(array, timeout=180)
    assert slurm.states(f"{array}_0") == ["CANCELLED"] and slurm.states(f"{array}_1") == ["COMPLETED"]
    cache_dir = next(first_shard.iterdir())
    done = complete_shards(cache_dir)
    assert set(range(1, 16, 2)) <= done and 0 in done and not set(range(0, 16, 2)) <= done, done
    assert not list(cache_dir.glob("shards/*.lock"))  # the cancelled part released its claims (SIGTERM)

    out = cli(*submit)
    assert "parts 0 of 2" in out, out
    array, finish = job_id("job array", out), job_id("finishing job", out)
    slurm.wait(array, finish, timeout=240)
    assert slurm.states(array) == ["COMPLETED"] and slurm.states(finish) == ["COMPLETED"]
    manifest = json.loads((cache_dir / "manifest.json").read_text())
    assert manifest["complete"] and manifest["videos"] == 16 and len(manifest["shards"]) == 16
    assert cli("cache", "verify", str(cache_dir)).startswith("ok: 16 shards")
