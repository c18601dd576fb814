"""One task of an ablation sweep, as a worker runs it: fit one (configuration, split) and write its result
file (`run_task`), reusing the features each worker process keeps open for later tasks (`cached_source`).

The task is the sweep pipeline's (`pipelines.sweep.SweepTask`: config, overrides, base, split, seed,
task_id, file); results live in OUT/tasks/<config>__<split>.json, training state in OUT/state/<task>/.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
from collections import OrderedDict
from pathlib import Path

from diffvqa_cache.cache.folder import FeatureCache
from diffvqa_cache.files import write_json_atomic
from diffvqa_cache.training.fitting import FitConfig, fit_split
from diffvqa_cache.training.memory import DEFAULT_SHARE, default_budget_gb, peak_rss_bytes
from diffvqa_cache.training.source import open_source, plan_features

_SOURCES: OrderedDict = OrderedDict()  # per process (dask worker): (cache, LoadSpec, path) -> (source, bytes held)
_MAX_SOURCES = 4


def cached_source(cache_path: str, cfg: FitConfig, budget_gb: float):
    """The cache's features for `cfg`, opened once per process and reused by later tasks. In memory when
    they fit `budget_gb`, else streamed; tables kept for earlier tasks are dropped (oldest first) until
    they and this task's data (its table, or a streamed source's read-ahead, up to the whole budget) fit
    it together. Returns (source, the data path's record)."""
    cache = FeatureCache(cache_path)
    spec = cfg.load_spec(cache.config.pixel_size)
    plan = plan_features([cache], spec, cfg.data, budget_gb)
    memory = plan.path == "memory"
    key, cost = (str(cache_path), spec, plan.path), plan.need_bytes if memory else plan.budget_bytes
    others = [k for k in _SOURCES if k != key]  # oldest first
    while others and (len(_SOURCES) >= _MAX_SOURCES or sum(_SOURCES[k][1] for k in others) + cost > plan.budget_bytes):
        del _SOURCES[others.pop(0)]
    if key not in _SOURCES:
        _SOURCES[key] = (open_source(cache, spec, plan), plan.need_bytes if memory else 0)
    _SOURCES.move_to_end(key)
    return _SOURCES[key][0], plan.record()


def task_budget_gb(budget_gb: float | None, cfg: FitConfig) -> float:
    """A task's feature budget: the driver's share for this worker, else memory_gb, else the dask worker's
    memory limit (a remote cluster), else the default from this machine's available memory."""
    if budget_gb is not None:
        return budget_gb
    if cfg.memory_gb is not None:
        return cfg.memory_gb
    try:
        from distributed import get_worker

        limit = get_worker().memory_manager.memory_limit
        if limit:
            return DEFAULT_SHARE * limit / 1e9
    except (ImportError, ValueError, AttributeError):
        pass
    return default_budget_gb()


def run_task(cache_path: str, task, out: Path, budget_gb: float | None = None) -> dict:
    """Fit one (configuration, split) and write its result file; errors are recorded, never raised.

    The task's training state is kept in out/state/<task>/ after every epoch, so a task whose worker was
    killed continues from its last epoch when the sweep is rerun."""
    t0 = time.perf_counter()
    result = {"config": task.config, "split": task.split.name, "overrides": task.overrides, "base": task.base,
              "seed": task.seed, "task_id": task.task_id, "n_train": None, "best_epoch": None, "metrics": {},
              "error": None, "worker": f"{socket.gethostname()}:{os.getpid()}"}
    state = Path(out) / "state" / Path(task.file).stem
    try:
        cfg = FitConfig().with_overrides({**task.base, **task.overrides})
        source, data = cached_source(cache_path, cfg, task_budget_gb(budget_gb, cfg))
        claim_state(state, task.task_id, task.ids)
        fitted = fit_split(source, task.split, cfg, task.seed, state_dir=state)
        result.update(n_train=fitted.entry["n_train"], best_epoch=fitted.entry["best_epoch"],
                      metrics={t: fitted.entry[t] for t in task.split.test}, data=data,
                      resumed_after=fitted.result.resumed_after)
    except Exception as exc:  # one bad configuration never stops the others
        result["error"] = f"{type(exc).__name__}: {exc}"
    result["seconds"] = round(time.perf_counter() - t0, 3)
    result["peak_rss_gb"] = round(peak_rss_bytes() / 1e9, 3)  # of the worker process, all its tasks so far
    write_task_result(out, task, result)
    if not result["error"]:
        shutil.rmtree(state, ignore_errors=True)
    return result


def claim_state(state: Path, task_id: str, earlier: tuple[str, ...] = ()) -> None:
    """Keep a task's saved training state only when it was saved for the same settings (`task_id`, or one of
    the `earlier` ids of the same task)."""
    marker = state / "task.json"
    try:
        same = json.loads(marker.read_text()).get("task_id") in (task_id, *earlier)
    except (OSError, ValueError):
        same = False
    if not same:
        shutil.rmtree(state, ignore_errors=True)
        state.mkdir(parents=True, exist_ok=True)
        write_json_atomic(marker, {"task_id": task_id})


def write_task_result(out: Path, task, result: dict) -> None:
    (Path(out) / "tasks").mkdir(parents=True, exist_ok=True)
    write_json_atomic(Path(out) / "tasks" / task.file, result)


def read_task_result(out: Path, task) -> dict | None:
    try:
        return json.loads((Path(out) / "tasks" / task.file).read_text())
    except (OSError, ValueError):
        return None
