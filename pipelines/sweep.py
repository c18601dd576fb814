"""Ablation sweeps: many fit configurations x the protocol's splits, one dask task per (config, split).

All configurations read the same cache; branch, level, grid and frame choices are load-time settings
(`LoadSpec`), so nothing is re-extracted. Each task (`training.sweeps.run_task`, features kept open per
worker) writes `out/tasks/<config>__<split>.json` atomically; a rerun skips tasks whose file holds a
result for the same settings (failed tasks are retried). Results: `results.csv` (one row per task),
`summary.csv`, `summary.md`, `summary.png`.
"""

from __future__ import annotations

import time
from pathlib import Path

from diffvqa_cache.cluster.dask_client import ClusterJobs, check_dask_args, dask_client, default_workers
from diffvqa_cache.errors import UserInputError
from diffvqa_cache.files import folder_lock, remove_leftovers, write_json_atomic
from diffvqa_cache.progress import bar, err
from diffvqa_cache.scoring.plots import sweep_summary
from diffvqa_cache.training.settings import FitConfig
from diffvqa_cache.training.sweep_grid import load_grid
from diffvqa_cache.training.sweep_results import SweepResult, primary_test_set, split_metrics, write_tables
from diffvqa_cache.training.sweeps import SweepTask, lost_result, plan_tasks, run_task, task_done, task_results


def run_sweep(cache_path: Path, grid: Path, out: Path, workers: int | None = None, scheduler_address: str | None = None,
              serial: bool = False, overrides: dict | None = None, progress: bool = True,
              cluster_jobs: ClusterJobs | None = None) -> SweepResult:
    """Run every (configuration, split) task not done yet, serially or on a dask cluster (local, running, or
    worker jobs submitted now: `cluster_jobs`); write summaries. OUT is locked for the whole sweep: a
    second sweep on it is refused."""
    with folder_lock(out, "sweep"):
        return _run_sweep(cache_path, grid, out, workers, scheduler_address, serial, overrides, progress, cluster_jobs)


def _run_sweep(cache_path: Path, grid: Path, out: Path, workers: int | None, scheduler_address: str | None,
               serial: bool, overrides: dict | None, progress: bool, cluster_jobs: ClusterJobs | None) -> SweepResult:
    check_dask_args(workers, scheduler_address, cluster_jobs)
    if serial and cluster_jobs is not None and cluster_jobs.cluster:
        raise UserInputError("--serial runs the tasks in this process: leave out --cluster")
    t0 = time.perf_counter()
    out = Path(out)
    base, configs = load_grid(grid)
    base = {**base, **(overrides or {})}
    cache, protocol, tasks = plan_tasks(cache_path, base, configs)
    out.mkdir(parents=True, exist_ok=True)
    remove_leftovers(out)
    todo = [t for t in tasks if not task_done(out, t)]
    if len(todo) < len(tasks):
        err.print(f"{len(tasks) - len(todo)}/{len(tasks)} tasks already done in {out / 'tasks'}, skipped")
    # The workers of this machine share its budget; a remote cluster's tasks size their own (task_budget_gb).
    elsewhere = bool(scheduler_address or (cluster_jobs is not None and cluster_jobs.cluster))
    local = None if elsewhere else (1 if serial or not todo else workers or default_workers(len(todo)))
    budget = None if local is None else FitConfig().with_overrides(base).budget_gb() / local
    write_json_atomic(out / "sweep.json", {
        "cache": str(cache.path), "fingerprint": cache.fingerprint, "grid": str(grid), "protocol": protocol,
        "base": base, "configs": dict(configs), "splits": [t.split.to_dict() for t in tasks[:len(tasks) // len(configs)]],
        "memory_gb_per_worker": budget})
    cache_str, out = str(cache.path.resolve()), out.resolve()  # absolute: workers may run elsewhere
    with bar("sweep", len(todo), progress) as pbar:
        if serial or not todo:
            for t in todo:
                pbar.update(advance=1, info=_report(run_task(cache_str, t, out, budget)))
        else:
            _run_on_cluster(cache_str, todo, out, local, scheduler_address, cluster_jobs, budget, pbar)
    results = task_results(out, tasks)
    # results.csv, summary.csv / .md, summary.png, report.html
    summary = write_tables(out, results, [n for n, _ in configs], protocol, cache)
    sweep_summary(out / "summary.png", summary, f"{cache.config.dataset} {protocol}, test set {primary_test_set(results)}",
                  split_metrics(results, summary))
    from diffvqa_cache.scoring.report import write_sweep_report

    write_sweep_report(out)
    return SweepResult(out, protocol, len(todo), len(tasks) - len(todo), [r for r in results if r.get("error")],
                       summary, time.perf_counter() - t0)


def _report(result: dict) -> str:
    """Print a failed task's error; the progress bar's text for the task."""
    if result.get("error"):
        err.print(f"[red]failed[/] {result['config']} {result['split']}: {result['error']}")
    return f"{result['config']} {result['split']}"


def _run_on_cluster(cache_path: str, todo: list[SweepTask], out: Path, workers: int | None, scheduler_address: str | None,
                    cluster_jobs: ClusterJobs | None, budget_gb: float | None, pbar) -> None:
    """Submit one task per (configuration, split) to a LocalCluster of `workers`, the scheduler at
    `scheduler_address` or worker jobs; each task holds at most `budget_gb` of features (None: the worker
    decides). A task whose worker is lost (a cancelled job) runs again on another worker."""
    from diffvqa_cache.cluster.tasks import submit_and_gather

    tasks = {f"sweep-{t.config}-{t.split.name}-{t.task_id}": t for t in todo}

    def lost(key: str, error: str) -> str:  # the worker died (memory?): record it like any failure
        return _report(lost_result(out, tasks[key], error))

    with dask_client(workers, scheduler_address, cluster_jobs=cluster_jobs) as client:
        submit_and_gather(client, run_task, {key: (cache_path, t, out, budget_gb) for key, t in tasks.items()},
                          lambda key, result: _report(result), lost, pbar=pbar)
