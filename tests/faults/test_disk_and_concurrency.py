"""Fault injection: a full disk while writing a shard, and two extract processes on one cache."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from diffvqa_cache.cache.folder import verify_cache
from diffvqa_cache.datasets import load_dataset
from diffvqa_cache.errors import CacheError
from diffvqa_cache.files import file_sha256
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


# ---------------------------------------------------------------- run, sweep and Controller folders
FIT_SETS = {"regressor.dff_channels": 8, "regressor.fff_dim": 16, "regressor.head_hidden": 16,
            "regressor.use_tcab": False, "train.batch_size": 8}


@pytest.fixture(scope="module")
def small_cache(tmp_path_factory):
    from diffvqa_cache.synthetic import write_synthetic_cache

    return write_synthetic_cache(tmp_path_factory.mktemp("runs"), 24, frames=4, crops=2, grid=4, latent_hw=8,
                                 pixel_size=16, ms_channels=(8, 8, 4, 4), shard_size=8).cache_dir


def _fit_args(cache, out, seed, epochs=3):
    return ["fit", "--cache", str(cache), "--out", str(out), "--seed", str(seed), "--epochs", str(epochs),
            "--splits", "1", *[a for k, v in FIT_SETS.items() for a in ("--set", f"{k}={v}")]]


def _cli(args, **kw):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-c", "from cli import main; main()", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def _snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): file_sha256(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def _one_line(stderr: str) -> str:
    """The error: one line, the last (adapt prints the dataset's summary first)."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0] and "Traceback" not in stderr, stderr
    return errors[0]


def test_two_fits_on_one_run_folder(small_cache, tmp_path):
    """Two seeds started on one --out: the second is refused with one line naming the folder and the first
    fit, and changes nothing (a fit without --resume deletes OUT/state); the first's run is whole."""
    import signal
    import time

    from diffvqa_cache.run.folder import verify_run

    out = tmp_path / "run"
    first = _cli(_fit_args(small_cache, out, seed=0, epochs=6))
    state = out / "state" / "split-00" / "state.json"
    deadline = time.monotonic() + 300
    while not state.is_file() and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    first.send_signal(signal.SIGSTOP)  # mid-training (its state saved), held still while the second starts
    try:
        before = _snapshot(out)
        second = _cli(_fit_args(small_cache, out, seed=1, epochs=1))
        _, stderr = second.communicate(timeout=300)
        after = _snapshot(out)
    finally:
        first.send_signal(signal.SIGCONT)
    assert second.returncode == 2, stderr
    line = _one_line(stderr)
    assert f"{out} is in use by `fit` (pid {first.pid} on host" in line and "another output folder" in line
    assert after == before  # nothing deleted or rewritten, OUT/state included
    assert first.wait(timeout=300) == 0, first.stderr.read()
    assert json.loads((out / "config.json").read_text())["fit"]["seed"] == 0
    verify_run(out)  # the first fit's run, whole and checksummed
    assert not (out / "in-use.lock").exists()


@pytest.fixture
def holder(tmp_path):
    """``hold(folder) -> Popen``: a real process that holds the folder's lock until killed."""
    procs = []

    def hold(folder: Path, command: str = "fit") -> subprocess.Popen:
        code = ("import sys, time; from diffvqa_cache.files import folder_lock\n"
                f"with folder_lock(sys.argv[1], {command!r}):\n    print('held', flush=True); time.sleep(600)")
        p = subprocess.Popen([sys.executable, "-c", code, str(folder)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
        assert p.stdout.readline().strip() == "held"
        procs.append(p)
        return p

    yield hold
    for p in procs:
        p.kill()
        p.wait()


def test_sweep_and_adapt_on_a_folder_in_use_are_refused(small_cache, sample_root, holder, tmp_path):
    from typer.testing import CliRunner

    from cli import app

    grid = tmp_path / "grid.yaml"
    grid.write_text("use_tcab: [false]\n")
    for folder, args in ((tmp_path / "sweep", ["sweep", "--cache", str(small_cache), "--grid", str(grid), "--serial"]),
                         (tmp_path / "ctrl", ["adapt", "--dataset", "sample", "--max-steps", "1"])):
        p = holder(folder, args[0])
        res = CliRunner().invoke(app, [*args, "--out", str(folder)])
        assert res.exit_code == 2, res.output
        assert f"{folder} is in use by `{args[0]}` (pid {p.pid} on host" in _one_line(res.output)
        assert os.listdir(folder) == ["in-use.lock"]  # nothing written


def test_a_lock_left_by_a_killed_fit_is_taken_over(small_cache, holder, tmp_path):
    from diffvqa_cache.run.folder import verify_run
    from diffvqa_cache.training.settings import FitConfig
    from pipelines.fit import run_fit

    out = tmp_path / "run"
    p = holder(out)
    p.kill()  # SIGKILL: the lock file stays, its process is gone
    p.wait()
    assert (out / "in-use.lock").is_file()
    run_fit(small_cache, out, FitConfig().with_overrides({**FIT_SETS, "train.epochs": 1, "splits": 1}), progress=False)
    verify_run(out)
    assert not (out / "in-use.lock").exists()


def test_disk_full_while_fit_saves_its_state(small_cache, tmpfs):
    """A real full disk (a 160 KiB tmpfs: room for the run's first files, not for an epoch's training state):
    one line naming the run folder and the fix; after freeing space, --resume finishes the run."""
    from diffvqa_cache.errors import DiffVQAError
    from diffvqa_cache.run.folder import verify_run
    from diffvqa_cache.training.settings import FitConfig
    from pipelines.fit import run_fit

    subprocess.run(["mount", "-o", "remount,size=160k", str(tmpfs)], check=True)
    out = tmpfs / "run"
    cfg = FitConfig().with_overrides({**FIT_SETS, "train.epochs": 2, "splits": 1})
    with pytest.raises(DiffVQAError) as exc:
        run_fit(small_cache, out, cfg, progress=False)
    msg = str(exc.value)
    assert msg.startswith(f"disk full while writing the run folder {out};") and "--resume" in msg and "\n" not in msg
    assert not list(out.rglob("*.incomplete")) and not (out / "in-use.lock").exists()
    subprocess.run(["mount", "-o", "remount,size=4m", str(tmpfs)], check=True)  # space freed
    run_fit(small_cache, out, cfg, progress=False, resume=True)
    verify_run(out)


def test_disk_full_while_fit_saves_its_state_simulated(small_cache, tmp_path, monkeypatch):
    """The same where no tmpfs can be mounted: safetensors fails as it does on a full disk at epoch 2,
    through the command line."""
    import safetensors.torch
    from safetensors import SafetensorError
    from typer.testing import CliRunner

    from cli import app

    real = safetensors.torch.save_file

    def failing(tensors, filename, metadata=None):
        if (metadata or {}).get("epoch") == "2":
            raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
        return real(tensors, filename, metadata)

    monkeypatch.setattr(safetensors.torch, "save_file", failing)
    out = tmp_path / "run"
    res = CliRunner().invoke(app, _fit_args(small_cache, out, seed=0, epochs=3))
    assert res.exit_code == 1
    assert _one_line(res.output).startswith(f"error: disk full while writing the run folder {out};")
    monkeypatch.setattr(safetensors.torch, "save_file", real)
    res = CliRunner().invoke(app, [*_fit_args(small_cache, out, seed=0, epochs=3), "--resume"])
    assert res.exit_code == 0, res.output
