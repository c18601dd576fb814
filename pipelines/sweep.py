"""Ablation sweeps: many fit configurations x the protocol's splits, one dask task per (config, split).

All configurations read the same cache; branch, level, grid and frame choices are load-time settings
(`LoadSpec`), so nothing is re-extracted. Each task (`training.sweeps.run_task`, features kept open per
worker) writes `out/tasks/<config>__<split>.json` atomically; a rerun skips tasks whose file holds a
result for the same settings (failed tasks are retried). Results: `results.csv` (one row per task),
`summary.csv`, `summary.md`, `summary.png`.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from diffvqa_cache.cache.folder import FeatureCache
from diffvqa_cache.cluster.dask_client import ClusterJobs, check_dask_args, dask_client, default_workers
from diffvqa_cache.errors import UserInputError
from diffvqa_cache.files import folder_lock, remove_leftovers, write_csv_atomic, write_json_atomic, write_text_atomic
from diffvqa_cache.progress import bar, err
from diffvqa_cache.scoring.plots import sweep_summary
from diffvqa_cache.training.metrics import METRIC_KEYS
from diffvqa_cache.training.protocols import Split, check_plan, plan_splits
from diffvqa_cache.training.settings import FitConfig
from diffvqa_cache.training.sweeps import read_task_result, run_task, write_task_result

# Settings that define the splits (declared `splits=True`): the same for every configuration (set them in
# `base:` or on the CLI).
SPLIT_SETTINGS = FitConfig.fields_where(splits=True)


# ---------------------------------------------------------------- the grid file
def _fmt(value) -> str:
    if isinstance(value, (list, tuple)):
        return "-".join(_fmt(v) for v in value) or "none"
    return str(value).lower() if isinstance(value, bool) else str(value)


def config_name(overrides: dict) -> str:
    """A readable file-safe name for an unnamed configuration: 'epochs=5,use_tcab=false'."""
    if not overrides:
        return "base"
    return ",".join(f"{k.rsplit('.', 1)[-1]}={_fmt(v)}" for k, v in overrides.items())


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=,+-]", "-", str(name))


def load_grid(path: Path) -> tuple[dict, list[tuple[str, dict]]]:
    """Read a sweep YAML: (base overrides, [(config name, overrides)]).

    Forms: a list of override mappings (each may have `name:`), or a mapping with an optional `base:`
    mapping, an optional `configs:` list (as before) and grid axes `setting: [values]` (crossed).
    """
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise UserInputError(f"--grid {path}: cannot read it ({str(exc).splitlines()[0]})") from None
    if isinstance(data, list):
        data = {"configs": data}
    if not isinstance(data, dict):
        raise UserInputError(f"--grid {path}: expected a list of configurations or a mapping of settings to lists")
    data = dict(data)
    base = data.pop("base", None) or {}
    listed = data.pop("configs", None) or []
    if not isinstance(base, dict) or not isinstance(listed, list):
        raise UserInputError(f"--grid {path}: `base:` must be a mapping and `configs:` a list")
    configs: list[tuple[str, dict]] = []
    for i, item in enumerate(listed):
        if not isinstance(item, dict):
            raise UserInputError(f"--grid {path}: configuration {i + 1} is not a mapping of settings")
        item = dict(item)
        name = item.pop("name", None)
        configs.append((_safe(name if name is not None else config_name(item)), item))
    if data:  # grid axes
        axes = {k: (v if isinstance(v, list) else [v]) for k, v in data.items()}
        for combo in itertools.product(*axes.values()):
            overrides = dict(zip(axes, combo))
            configs.append((_safe(config_name(overrides)), overrides))
    if not configs:
        raise UserInputError(f"--grid {path}: no configurations in it")
    names = [n for n, _ in configs]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise UserInputError(f"--grid {path}: configuration names must be unique, repeated: {dup}")
    for name, overrides in configs:
        fixed = [k for k in overrides if k in SPLIT_SETTINGS]
        if fixed:
            raise UserInputError(f"--grid {path}: configuration {name!r} sets {fixed}; the splits are shared by all "
                                 "configurations, set these under `base:` or with --splits/--seed")
    return base, configs


# ---------------------------------------------------------------- tasks
@dataclass
class SweepTask:
    config: str  # configuration name
    overrides: dict  # the configuration's own overrides
    base: dict  # overrides applied to every configuration (grid `base:`, CLI)
    split: Split
    seed: int  # as fit: split i trains with seed + i
    fingerprint: str

    @property
    def file(self) -> str:
        return f"{self.config}__{self.split.name}.json"

    @property
    def task_id(self) -> str:
        """Changes whenever anything the result depends on changes (then a rerun recomputes it); settings
        declared `numbers=False` (memory_gb, data, train.device ...) are left out."""
        return self._id(FitConfig.numbers_overrides(self.base), FitConfig.numbers_overrides(self.overrides))

    @property
    def ids(self) -> tuple[str, str]:
        """`task_id`, and the id of earlier versions (which hashed every setting): results and saved states
        tagged with either are this task's."""
        return self.task_id, self._id(self.base, self.overrides)

    def _id(self, base: dict, overrides: dict) -> str:
        blob = json.dumps([base, overrides, self.split.to_dict(), self.seed, self.fingerprint], sort_keys=True,
                          default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def plan_tasks(cache_path: Path, base: dict, configs: list[tuple[str, dict]]) -> tuple[FeatureCache, str, list[SweepTask]]:
    """The cache's protocol and splits (planned as `fit` does, from the base settings) x configurations."""
    cache = FeatureCache(cache_path)
    base_cfg = FitConfig().with_overrides(base)
    cache.check_complete(base_cfg.verify)  # once, in the driver: the tasks then trust the checksummed shards
    protocol, splits = plan_splits(base_cfg.protocol, cache, (), base_cfg.splits, base_cfg.test_fraction,
                                   base_cfg.seed, base_cfg.cross_train)
    check_plan(protocol, splits, cache.path, base_cfg.test_fraction, base_cfg.train.val_fraction)
    tasks = [SweepTask(name, overrides, base, split, base_cfg.seed + i, cache.fingerprint)
             for name, overrides in configs for i, split in enumerate(splits)]
    return cache, protocol, tasks


# ---------------------------------------------------------------- running
@dataclass
class SweepResult:
    out: Path
    protocol: str
    executed: int  # tasks run now
    skipped: int  # results already there
    failed: list[dict] = field(default_factory=list)  # result dicts with an error (all tasks, this run or earlier)
    summary: list[dict] = field(default_factory=list)
    seconds: float = 0.0


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

    def done(t: SweepTask) -> bool:
        r = read_task_result(out, t)
        return r is not None and r.get("task_id") in t.ids and not r.get("error")

    todo = [t for t in tasks if not done(t)]
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
    results = [read_task_result(out, t) or {"config": t.config, "split": t.split.name, "overrides": t.overrides,
                                            "error": "no result written", "metrics": {}} for t in tasks]
    summary = write_results(out, results, [n for n, _ in configs], protocol, cache)
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
        t = tasks[key]
        result = {"config": t.config, "split": t.split.name, "overrides": t.overrides, "base": t.base,
                  "task_id": t.task_id, "metrics": {}, "error": error}
        write_task_result(out, t, result)
        return _report(result)

    with dask_client(workers, scheduler_address, cluster_jobs=cluster_jobs) as client:
        submit_and_gather(client, run_task, {key: (cache_path, t, out, budget_gb) for key, t in tasks.items()},
                          lambda key, result: _report(result), lost, pbar=pbar)


# ---------------------------------------------------------------- results
def _median(values: list[float]) -> float:
    vals = sorted(v for v in values if v is not None and not math.isnan(v))
    if not vals:
        return float("nan")
    m = len(vals) // 2
    return vals[m] if len(vals) % 2 else (vals[m - 1] + vals[m]) / 2


def write_results(out: Path, results: list[dict], order: list[str], protocol: str, cache: FeatureCache) -> list[dict]:
    """results.csv (one row per task), summary.csv / .md / .png (median SRCC, PLCC per config)."""
    tests = list(dict.fromkeys(t for r in results for t in r.get("metrics", {})))
    primary = tests[0] if tests else "test"
    cols = ["config", "split", "status", "n_train", "seconds"] + list(METRIC_KEYS) \
        + [f"{t}_{m}" for t in tests[1:] for m in METRIC_KEYS] + ["overrides", "error"]
    rows = []
    for r in results:
        row = {"config": r["config"], "split": r["split"], "status": "failed" if r.get("error") else "ok",
               "n_train": r.get("n_train"), "seconds": r.get("seconds"), "overrides": json.dumps(r.get("overrides", {})),
               "error": r.get("error") or ""}
        for t, ms in r.get("metrics", {}).items():
            row.update({(m if t == primary else f"{t}_{m}"): ms.get(m) for m in METRIC_KEYS})
        rows.append(row)
    write_csv_atomic(out / "results.csv", cols, rows)
    summary = []
    for name in order:
        mine = [r for r in results if r["config"] == name]
        ok = [r for r in mine if not r.get("error") and primary in r.get("metrics", {})]
        summary.append({
            "config": name, "n_splits": len(ok), "n_failed": len(mine) - len(ok),
            "srcc_median": _median([r["metrics"][primary]["srcc"] for r in ok]),
            "plcc_median": _median([r["metrics"][primary]["plcc"] for r in ok]),
            "overrides": json.dumps(mine[0].get("overrides", {}) if mine else {}),
            "error": next((r["error"] for r in mine if r.get("error")), ""),
        })
    summary.sort(key=lambda s: -s["srcc_median"] if not math.isnan(s["srcc_median"]) else math.inf)
    write_csv_atomic(out / "summary.csv", list(summary[0]) if summary else ["config"], summary)
    lines = [f"# Sweep on {cache.config.dataset} ({cache.fingerprint})", "",
             f"Protocol {protocol}, test set `{primary}`; medians over splits; sorted by median SRCC.", "",
             "| config | median SRCC | median PLCC | splits | failed | overrides |", "| --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {s['config']} | {s['srcc_median']:.4f} | {s['plcc_median']:.4f} | {s['n_splits']} | {s['n_failed']} | "
              f"`{s['overrides']}` |" for s in summary]
    failed = [s for s in summary if s["error"]]
    if failed:
        lines += ["", "Failures (first error per config):", ""] + [f"- {s['config']}: {s['error']}" for s in failed]
    write_text_atomic(out / "summary.md", "\n".join(lines) + "\n")
    per_split = {s["config"]: {m: [r["metrics"][primary][m] for r in results if r["config"] == s["config"]
                                   and not r.get("error") and primary in r.get("metrics", {})] for m in ("srcc", "plcc")}
                 for s in summary}
    sweep_summary(out / "summary.png", summary, f"{cache.config.dataset} {protocol}, test set {primary}", per_split)
    from diffvqa_cache.scoring.report import write_sweep_report

    write_sweep_report(out)
    return summary


def format_summary(result: SweepResult) -> str:
    lines = [f"{len(result.summary)} configs, protocol {result.protocol}: {result.executed} tasks run, "
             f"{result.skipped} already done, {len(result.failed)} failed, {result.seconds:.1f} s; results: {result.out}"]
    for s in result.summary:
        lines.append(f"  {s['config'][:40]:40s} SRCC {s['srcc_median']:.4f}  PLCC {s['plcc_median']:.4f}  "
                     f"({s['n_splits']} splits{', ' + str(s['n_failed']) + ' failed' if s['n_failed'] else ''})")
    return "\n".join(lines)
