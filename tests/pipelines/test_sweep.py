"""Ablation sweeps: grid files, dask vs serial equality, resume, failures, summaries."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

import pipelines.sweep as sweep
from diffvqa_cache.errors import UserInputError
from diffvqa_cache.training.settings import FitConfig
from diffvqa_cache.training.sweep_grid import load_grid
from pipelines.sweep import run_sweep

pytestmark = pytest.mark.filterwarnings("ignore:4-parameter logistic fit failed")
GRID = """
base: {regressor.use_tcab: false, train.epochs: 2, train.batch_size: 8}
configs:
  - name: full
  - name: no_tdm
    regressor.use_tdm: false
"""


@pytest.fixture(scope="module")
def cache16(sample_cache):
    return sample_cache(limit=16).cache_dir


@pytest.fixture(scope="module")
def grid_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("grid") / "grid.yaml"
    path.write_text(GRID)
    return path


@pytest.fixture(scope="module")
def serial_run(cache16, grid_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("serial")
    return run_sweep(cache16, grid_file, out, serial=True, overrides={"splits": 2}, progress=False)


def srcc_by_task(out: Path) -> dict:
    with open(out / "results.csv") as f:
        return {(r["config"], r["split"]): float(r["srcc"]) for r in csv.DictReader(f)}


def test_grid_forms(tmp_path):
    path = tmp_path / "g.yaml"
    path.write_text("base: {train.epochs: 3}\nregressor.use_tcab: [true, false]\ngrid: [4, 8]\n")
    base, configs = load_grid(path)
    assert base == {"train.epochs": 3} and len(configs) == 4
    assert configs[0] == ("use_tcab=true,grid=4", {"regressor.use_tcab": True, "grid": 4})
    path.write_text("- name: no tcab\n  regressor.use_tcab: false\n- regressor.ms_levels: [0, 1]\n")
    assert load_grid(path)[1] == [("no-tcab", {"regressor.use_tcab": False}), ("ms_levels=0-1", {"regressor.ms_levels": [0, 1]})]
    path.write_text("- {name: a, splits: 3}\n")
    with pytest.raises(UserInputError, match="under `base:`"):
        load_grid(path)


def test_shipped_ablations_are_valid_fit_settings():
    base, configs = load_grid(Path(sweep.__file__).with_name("ablations.yaml"))
    assert {"full", "S_only", "D_only", "no_TCAB", "no_TDM", "no_DFF_attention", "no_F_Latent", "grid_4",
            "frames_4", "F_Latent_grid_32", "F_MS_mean_std"} <= {n for n, _ in configs}
    for _, overrides in configs:
        FitConfig().with_overrides({**base, **overrides})
    named = dict(configs)
    assert FitConfig().with_overrides(named["F_Latent_grid_32"]).load_spec(224).latent_grid == 32
    assert FitConfig().with_overrides(named["F_MS_mean_std"]).load_spec(224).ms_std is True
    assert FitConfig().load_spec(224).latent_grid is None and not FitConfig().ms_std  # defaults unchanged


def test_serial_sweep_writes_results_and_summaries(serial_run, cache16):
    assert serial_run.executed == 4 and serial_run.skipped == 0 and not serial_run.failed
    out = serial_run.out
    assert sorted(p.name for p in (out / "tasks").glob("*.json")) == [
        "full__split-00.json", "full__split-01.json", "no_tdm__split-00.json", "no_tdm__split-01.json"]
    task = json.loads((out / "tasks" / "no_tdm__split-01.json").read_text())
    assert task["overrides"] == {"regressor.use_tdm": False} and task["n_train"] > 0 and task["error"] is None
    assert set(task["metrics"]["test"]) >= {"srcc", "plcc"}
    assert len(srcc_by_task(out)) == 4
    with open(out / "summary.csv") as f:
        summary = list(csv.DictReader(f))
    assert [int(s["n_splits"]) for s in summary] == [2, 2]
    assert float(summary[0]["srcc_median"]) >= float(summary[1]["srcc_median"])
    assert "| full |" in (out / "summary.md").read_text() and (out / "summary.png").stat().st_size > 0
    assert "<h2 id='chart'>" in (out / "report.html").read_text()  # the sweep report, beside the summaries


def test_dask_sweep_equals_serial_and_rerun_skips(serial_run, cache16, grid_file, tmp_path, dask_client, monkeypatch):
    out = tmp_path / "dask"
    result = run_sweep(cache16, grid_file, out, scheduler_address=dask_client.scheduler.address, overrides={"splits": 2},
                       progress=False)
    assert result.executed == 4 and not result.failed
    workers = {json.loads(p.read_text())["worker"] for p in (out / "tasks").glob("*.json")}
    assert len(workers) == 2  # both worker processes took tasks
    a, b = srcc_by_task(serial_run.out), srcc_by_task(out)
    assert a.keys() == b.keys() and all(abs(a[k] - b[k]) < 1e-6 for k in a)

    def must_not_run(*args, **kwargs):
        raise AssertionError("a rerun must not execute finished tasks")

    monkeypatch.setattr(sweep, "run_task", must_not_run)
    again = run_sweep(cache16, grid_file, out, serial=True, overrides={"splits": 2}, progress=False)
    assert again.executed == 0 and again.skipped == 4 and srcc_by_task(out) == b


def test_failed_task_is_reported_and_others_finish(cache16, tmp_path):
    grid = tmp_path / "bad.yaml"
    grid.write_text(GRID + "  - name: bad\n    regressor.nonsense: 1\n")
    result = run_sweep(cache16, grid, tmp_path / "out", serial=True, overrides={"splits": 2}, progress=False)
    assert result.executed == 6 and len(result.failed) == 2
    assert {f["config"] for f in result.failed} == {"bad"} and "nonsense" in result.failed[0]["error"]
    bad = json.loads((tmp_path / "out" / "tasks" / "bad__split-00.json").read_text())
    assert bad["overrides"] == {"regressor.nonsense": 1} and "UserInputError" in bad["error"]
    rows = {s["config"]: s for s in result.summary}
    assert rows["full"]["n_splits"] == 2 and rows["bad"]["n_failed"] == 2
    assert result.summary[-1]["config"] == "bad"
    assert "bad: UserInputError" in (tmp_path / "out" / "summary.md").read_text()
    # failures are retried on a rerun, successes are not
    again = run_sweep(cache16, grid, tmp_path / "out", serial=True, overrides={"splits": 2}, progress=False)
    assert again.executed == 2 and again.skipped == 4


def test_cli_sweep_reports_and_skips(serial_run, cache16, grid_file):
    from typer.testing import CliRunner

    from cli import app

    result = CliRunner().invoke(app, ["sweep", "--cache", str(cache16), "--grid", str(grid_file), "--out",
                                      str(serial_run.out), "--serial", "--splits", "2"])
    assert result.exit_code == 0, result.output
    assert "0 tasks run, 4 already done" in result.stdout and "full" in result.stdout
