"""Fits over caches larger than the memory budget: streamed fits equal in-memory ones, stay within the
budget, survive SIGKILL with --resume, and sweeps and cached scoring use the same bounded path."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import diffvqa_cache.training.sweeps as sweep
from diffvqa_cache.errors import UserInputError
from diffvqa_cache.scoring.cached import score_cached
from diffvqa_cache.synthetic import LSVQ_SPLITS, write_synthetic_cache
from diffvqa_cache.training.settings import FitConfig
from pipelines.fit import run_fit
from pipelines.sweep import run_sweep

ROOT = Path(__file__).resolve().parents[2]
FIT = {"regressor.dff_channels": 8, "regressor.fff_dim": 16, "regressor.head_hidden": 16, "regressor.tcab_d_model": 8,
       "regressor.tcab_depth": 1, "pixel_size": 16, "train.epochs": 3, "train.batch_size": 8, "splits": 2,
       "train.val_fraction": 0.15}
TINY_BUDGET = {"data": "auto", "memory_gb": 1e-4}


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return write_synthetic_cache(tmp_path_factory.mktemp("fs"), 40, frames=4, crops=2, grid=4, latent_hw=8,
                                 pixel_size=16, ms_channels=(8, 8, 4, 4), shard_size=8).cache_dir


def predictions(run: Path) -> dict:
    with open(run / "predictions.csv") as f:
        return {(r["split"], r["video"]): float(r["pred"]) for r in csv.DictReader(f)}


def split_metrics(run: Path) -> list:
    return json.loads((run / "metrics.json").read_text())["splits"]


def assert_same_run(a: Path, b: Path):
    pa, pb = predictions(a), predictions(b)
    assert pa.keys() == pb.keys() and all(abs(pa[k] - pb[k]) < 1e-5 for k in pa), "predictions differ"
    for x, y in zip(split_metrics(a), split_metrics(b)):
        assert x.keys() == y.keys()
        tests = [k for k, v in x.items() if isinstance(v, dict) and "srcc" in v]
        assert tests and all(abs(x[t]["srcc"] - y[t]["srcc"]) < 1e-6 for t in tests)


@pytest.fixture(scope="module")
def memory_run(cache_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("mem")
    run_fit(cache_dir, out, FitConfig().with_overrides({**FIT, "data": "memory"}), progress=False)
    return out


def test_over_budget_fit_streams_and_equals_the_in_memory_fit(cache_dir, memory_run, tmp_path):
    run_fit(cache_dir, tmp_path / "s", FitConfig().with_overrides({**FIT, **TINY_BUDGET}), progress=False)
    assert_same_run(memory_run, tmp_path / "s")
    recorded = json.loads((tmp_path / "s" / "config.json").read_text())
    assert recorded["data"]["path"] == "stream" and recorded["fit"]["data"] == "auto"
    assert recorded["data"]["budget_gb"] == 1e-4 and recorded["data"]["need_gb"] > 1e-4
    assert json.loads((memory_run / "config.json").read_text())["data"]["path"] == "memory"
    with pytest.raises(UserInputError, match="over the budget memory_gb=0.00; use --set data=auto"):
        run_fit(cache_dir, tmp_path / "m", FitConfig().with_overrides({**FIT, **TINY_BUDGET, "data": "memory"}),
                progress=False)


def test_cached_videos_score_as_in_the_run(cache_dir, memory_run):
    """score_cached (the bounded reader for scoring cached videos) reproduces a split model's predictions."""
    run = memory_run
    one = run.parent / "one-model"
    one.mkdir(exist_ok=True)
    (one / "models").mkdir(exist_ok=True)
    (one / "models" / "split-01.safetensors").write_bytes((run / "models" / "split-01.safetensors").read_bytes())
    want = {v: p for (s, v), p in predictions(run).items() if s == "split-01"}
    got = score_cached(one, cache_dir, keys=sorted(want), memory_gb=1e-4)
    assert got.keys() == want.keys() and all(abs(got[k] - want[k]) < 1e-5 for k in want)
    # the same from the command line, as a CSV; an unknown video is named
    from typer.testing import CliRunner

    from cli import app

    out = one / "scores.csv"
    args = ["cache", "score", str(cache_dir), "--run", str(one), "-o", str(out), "--memory-gb", "0.0001"]
    res = CliRunner().invoke(app, [*args, *[a for k in sorted(want) for a in ("--video", k)]])
    assert res.exit_code == 0, res.output
    with open(out) as f:
        rows = {r["video"]: r for r in csv.DictReader(f)}
    assert rows.keys() == want.keys()
    assert all(abs(float(r["score"]) - want[k]) < 1e-5 and r["score_min"] == r["score_max"] for k, r in rows.items())
    res = CliRunner().invoke(app, [*args, "--video", "no-such-video"])
    assert res.exit_code != 0 and "no-such-video" in res.output and "not in cache" in res.output


def test_streamed_fit_writes_the_same_familiarity_reference(cache_dir, memory_run, tmp_path):
    """predict's unfamiliar flag compares with the training videos' statistics: the streamed fit must store
    the same ones as the in-memory fit (they are read in chunks through the streamed reader)."""
    from diffvqa_cache.scoring.familiarity import FILE_NAME, RunReference

    run_fit(cache_dir, tmp_path / "s", FitConfig().with_overrides({**FIT, **TINY_BUDGET, "train.epochs": 1}),
            progress=False)
    a, b = RunReference.load(memory_run / FILE_NAME), RunReference.load(tmp_path / "s" / FILE_NAME)
    assert a.meta == b.meta and a.references.keys() == b.references.keys()
    for name, ref in a.references.items():
        assert ref.meta == b.references[name].meta
        np.testing.assert_allclose(b.references[name].points, ref.points, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(b.references[name].loo, ref.loo, rtol=1e-4, atol=1e-5)


def test_lsvq_with_a_test_cache_cross_and_fine_tuning_stream_as_in_memory(tmp_path):
    """Every protocol that loads features streams the same way: LSVQ's split with a further test cache
    (streamed too), cross-dataset, and fine-tuning from a run (--init)."""
    shapes = dict(frames=4, crops=2, grid=4, latent_hw=8, pixel_size=16, ms_channels=(8, 8, 4, 4), shard_size=8)
    lsvq = write_synthetic_cache(tmp_path / "l", 36, splits=LSVQ_SPLITS, dataset="lsvq", **shapes).cache_dir
    other = write_synthetic_cache(tmp_path / "o", 16, seed=0, dataset="kvd", **shapes).cache_dir
    fit = {**FIT, "train.epochs": 2}
    for data, sets in (("memory", {"data": "memory"}), ("stream", TINY_BUDGET)):
        run_fit(lsvq, tmp_path / f"lsvq-{data}", FitConfig().with_overrides({**fit, **sets}), test_cache_paths=[other],
                progress=False)
        run_fit(lsvq, tmp_path / f"cross-{data}", FitConfig().with_overrides({**fit, **sets, "protocol": "cross"}),
                test_cache_paths=[other], init=tmp_path / "lsvq-memory", progress=False)
    for name in ("lsvq", "cross"):
        assert_same_run(tmp_path / f"{name}-memory", tmp_path / f"{name}-stream")
        assert json.loads((tmp_path / f"{name}-stream" / "config.json").read_text())["data"]["path"] == "stream"
    assert {s for s, _ in predictions(tmp_path / "lsvq-stream")} == {"lsvq"}
    assert set(split_metrics(tmp_path / "lsvq-stream")[0]) >= {"test", "test1080p", "kvd"}


def start_fit(out: Path, cache_dir: Path, sets: dict, resume: bool = False) -> subprocess.Popen:
    args = [a for k, v in sets.items() for a in ("--set", f"{k}={v}")]
    cmd = [sys.executable, "-c", "from cli import main; main()", "fit", "--cache", str(cache_dir), "--out", str(out),
           *args, *(["--resume"] if resume else [])]
    return subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def saved_epoch(state: Path) -> int:
    try:
        return json.loads((state / "state.json").read_text())["epoch"]
    except (OSError, ValueError):
        return -1


@pytest.mark.slow
def test_sigkill_during_an_epoch_then_resume_equals_an_uninterrupted_fit(cache_dir, memory_run, tmp_path):
    """Killed in split-01's second epoch (streamed), resumed with another budget (in memory): the same run as
    the uninterrupted in-memory one."""
    killed = tmp_path / "killed"
    proc = start_fit(killed, cache_dir, {**FIT, **TINY_BUDGET})
    deadline = time.monotonic() + 120
    while saved_epoch(killed / "state" / "split-01") < 0 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the fit ended before it could be killed"
    assert (killed / "state" / "split-00.json").is_file() and not (killed / "metrics.json").exists()
    assert 0 <= saved_epoch(killed / "state" / "split-01") < 2
    first_model = (killed / "models" / "split-00.safetensors").stat().st_mtime_ns
    cfg = FitConfig().with_overrides(FIT)  # data=auto with the default budget: in memory this time
    run_fit(cache_dir, killed, cfg, progress=False, resume=True)
    assert (killed / "models" / "split-00.safetensors").stat().st_mtime_ns == first_model  # finished split kept
    assert len(json.loads((killed / "state" / "split-01.json").read_text())["history"]) == 3
    assert_same_run(memory_run, killed)
    with pytest.raises(UserInputError, match="other settings \\(fit.seed\\)"):
        run_fit(cache_dir, killed, cfg.with_overrides({"seed": 5}), progress=False, resume=True)


PEAK = """
import json, sys
import cli, pipelines.sweep
from diffvqa_cache.training.memory import peak_rss_bytes, reset_peak_rss, rss_bytes
from diffvqa_cache.training.settings import FitConfig
from pipelines.fit import run_fit
import torch
torch.set_num_threads(1)
cfg = FitConfig().with_overrides(json.loads(sys.argv[4]))
run_fit(sys.argv[1], sys.argv[3] + "-warm", cfg, progress=False)  # torch's and malloc's own first-use memory
assert reset_peak_rss()
base = rss_bytes()
run_fit(sys.argv[2], sys.argv[3], cfg, progress=False)
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("diffusers", "transformers"))
print(json.dumps({"base": base, "peak": peak_rss_bytes(), "heavy": heavy}))
"""


@pytest.mark.slow
def test_streamed_fit_peak_memory_stays_far_below_the_table_and_imports_no_diffusers(tmp_path):
    """280 videos of 0.5 MB: the in-memory table would take 150 MB; after a warm-up fit (the same model on
    16 videos, so torch's first-use memory is paid), the streamed fit's peak grows by about one batch.
    The fit side (CLI, fit, sweep) never imports diffusers."""
    from diffvqa_cache.cache.folder import FeatureCache
    from diffvqa_cache.training.data import estimate_bytes

    shapes = dict(frames=4, crops=1, grid=8, latent_hw=16, pixel_size=16, ms_channels=(256, 256, 128, 64), shard_size=40)
    small = write_synthetic_cache(tmp_path / "small", 16, **shapes)
    made = write_synthetic_cache(tmp_path / "big", 280, **shapes)
    sets = {"regressor.use_tcab": False, "regressor.dff_channels": 8, "regressor.fff_dim": 16, "splits": 1,
            "train.epochs": 1, "train.batch_size": 4, "train.eval_batch_size": 8, "data": "auto", "memory_gb": 0.01}
    cache = FeatureCache(made.cache_dir)
    table = estimate_bytes(cache, FitConfig().with_overrides(sets).load_spec(cache.config.pixel_size))
    assert table > 140e6
    out = subprocess.run([sys.executable, "-c", PEAK, str(small.cache_dir), str(made.cache_dir), str(tmp_path / "run"),
                          json.dumps(sets)], cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    rss = json.loads(out.stdout.strip().splitlines()[-1])
    growth = rss["peak"] - rss["base"]
    assert json.loads((tmp_path / "run" / "config.json").read_text())["data"]["path"] == "stream"
    print(f"peak RSS growth {growth / 1e6:.1f} MB")
    assert growth < 0.35 * table, f"peak RSS grew by {growth / 1e6:.0f} MB for a {table / 1e6:.0f} MB table"
    assert rss["heavy"] == []

GRID = """
base: {regressor.use_tcab: false, regressor.dff_channels: 8, regressor.fff_dim: 16, train.epochs: 2, train.batch_size: 8}
configs:
  - name: full
  - name: no_tdm
    regressor.use_tdm: false
"""


def test_sweep_under_a_tiny_budget_streams_and_a_killed_task_resumes(cache_dir, tmp_path, monkeypatch):
    grid = tmp_path / "grid.yaml"
    grid.write_text(GRID)
    result = run_sweep(cache_dir, grid, tmp_path / "sw", serial=True, overrides={"splits": 1, "memory_gb": 1e-4},
                       progress=False)
    assert result.executed == 2 and not result.failed
    task = json.loads((tmp_path / "sw" / "tasks" / "full__split-00.json").read_text())
    assert task["data"]["path"] == "stream" and task["data"]["budget_gb"] == 1e-4 and task["peak_rss_gb"] > 0
    assert not (tmp_path / "sw" / "state" / "full__split-00").exists()  # a finished task leaves no state
    # a task killed after its first epoch continues from it when the sweep runs again
    real = sweep.fit_split

    def killed_after_epoch_0(*args, **kwargs):
        def on_epoch(row):
            raise KeyboardInterrupt  # a BaseException: the task's error handling does not catch it

        return real(*args, **kwargs, on_epoch=on_epoch)

    before = json.loads((tmp_path / "sw" / "tasks" / "no_tdm__split-00.json").read_text())
    (tmp_path / "sw" / "tasks" / "no_tdm__split-00.json").unlink()
    monkeypatch.setattr(sweep, "fit_split", killed_after_epoch_0)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(cache_dir, grid, tmp_path / "sw", serial=True, overrides={"splits": 1, "memory_gb": 1e-4},
                  progress=False)
    monkeypatch.setattr(sweep, "fit_split", real)
    again = run_sweep(cache_dir, grid, tmp_path / "sw", serial=True, overrides={"splits": 1, "memory_gb": 1e-4},
                      progress=False)
    assert again.executed == 1 and not again.failed
    resumed = json.loads((tmp_path / "sw" / "tasks" / "no_tdm__split-00.json").read_text())
    assert resumed["resumed_after"] == 0 and before["resumed_after"] is None
    assert abs(resumed["metrics"]["test"]["srcc"] - before["metrics"]["test"]["srcc"]) < 1e-9

