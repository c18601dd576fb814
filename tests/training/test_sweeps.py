"""Sweep tasks and their tables without fitting: which results count as done, a lost worker's record,
and the summary tables (results.csv, summary.csv / .md) and the per-split values the chart shows."""

from __future__ import annotations

import csv
import json
import math
from types import SimpleNamespace

from diffvqa_cache.training.protocols import Split
from diffvqa_cache.training.sweep_results import SweepResult, format_summary, split_metrics, write_tables
from diffvqa_cache.training.sweeps import SweepTask, lost_result, task_done, task_results, write_task_result

SPLIT = Split("split-00", ["a", "b", "c"], {"test": ["d", "e"]})


def _task(config="full", overrides=None, split=SPLIT):
    return SweepTask(config, overrides or {}, {"train.epochs": 2}, split, 0, "0ed72453e0b18d61")


def test_a_task_is_done_only_with_an_error_free_result_for_its_settings(tmp_path):
    task = _task()
    assert not task_done(tmp_path, task)
    write_task_result(tmp_path, task, {"task_id": task.task_id, "error": None, "metrics": {}})
    assert task_done(tmp_path, task)
    write_task_result(tmp_path, task, {"task_id": task.task_id, "error": "ValueError: bad", "metrics": {}})
    assert not task_done(tmp_path, task)  # failed tasks are retried
    other = _task(overrides={"regressor.use_tdm": False})
    write_task_result(tmp_path, other, {"task_id": task.task_id, "error": None})  # another setting's id
    assert not task_done(tmp_path, other)


def test_a_lost_worker_is_recorded_as_a_failure_and_missing_results_are_failures(tmp_path):
    lost, missing = _task(), _task(config="no_tdm", overrides={"regressor.use_tdm": False})
    written = lost_result(tmp_path, lost, "worker lost")
    assert json.loads((tmp_path / "tasks" / lost.file).read_text()) == written
    assert written["error"] == "worker lost" and written["task_id"] == lost.task_id and written["metrics"] == {}
    results = task_results(tmp_path, [lost, missing])
    assert results[0] == written
    assert results[1] == {"config": "no_tdm", "split": "split-00", "overrides": {"regressor.use_tdm": False},
                          "error": "no result written", "metrics": {}}


def test_tables_rank_configurations_by_median_srcc(tmp_path):
    def ok(config, split, srcc):
        return {"config": config, "split": split, "overrides": {}, "n_train": 3, "seconds": 1.0, "error": None,
                "metrics": {"test": {"srcc": srcc, "plcc": srcc / 2}}}

    results = [ok("a", "s0", 0.5), ok("a", "s1", 0.7), ok("b", "s0", 0.9), ok("b", "s1", 0.8), ok("b", "s2", 0.1),
               {"config": "c", "split": "s0", "overrides": {}, "error": "boom", "metrics": {}}]
    cache = SimpleNamespace(config=SimpleNamespace(dataset="kvd"), fingerprint="f00")
    summary = write_tables(tmp_path, results, ["a", "b", "c"], "random", cache)
    assert [s["config"] for s in summary] == ["b", "a", "c"]
    assert summary[0]["srcc_median"] == 0.8 and math.isclose(summary[1]["srcc_median"], 0.6)
    assert summary[2]["n_failed"] == 1 and math.isnan(summary[2]["srcc_median"]) and summary[2]["error"] == "boom"
    with open(tmp_path / "results.csv") as f:
        assert [r["status"] for r in csv.DictReader(f)] == ["ok"] * 5 + ["failed"]
    md = (tmp_path / "summary.md").read_text()
    assert "| b | 0.8000 | 0.4000 | 3 | 0 |" in md and "- c: boom" in md
    assert split_metrics(results, summary)["a"] == {"srcc": [0.5, 0.7], "plcc": [0.25, 0.35]}
    text = format_summary(SweepResult(tmp_path, "random", 5, 1, [results[-1]], summary, 2.0))
    assert text.startswith("3 configs, protocol random: 5 tasks run, 1 already done, 1 failed")
