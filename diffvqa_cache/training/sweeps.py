"""The tasks of an ablation sweep: one per (configuration, split) (`SweepTask`, planned by `plan_tasks`),
and one task as a worker runs it: fit one (configuration, split) and write its result file (`run_task`),
reusing the features each worker process keeps open for later tasks (`cached_source`).

Results live in OUT/tasks/<config>__<split>.json, training state in OUT/state/<task>/.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from diffvqa_cache.cache.folder import FeatureCache
from diffvqa_cache.files import write_json_atomic
from diffvqa_cache.training.fitting import FitConfig, fit_split
from diffvqa_cache.training.memory import DEFAULT_SHARE, default_budget_gb, peak_rss_bytes
from diffvqa_cache.training.protocols import Split, check_plan, plan_splits
from diffvqa_cache.training.source import open_source, plan_features


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


def run_task(cache_path: str, task: SweepTask, out: Path, budget_gb: float | None = None) -> dict:
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


def lost_result(out: Path, task: SweepTask, error: str) -> dict:
    """Record a task whose worker died (memory?) like any failure; the result written."""
    result = {"config": task.config, "split": task.split.name, "overrides": task.overrides, "base": task.base,
              "task_id": task.task_id, "metrics": {}, "error": error}
    write_task_result(out, task, result)
    return result


def write_task_result(out: Path, task: SweepTask, result: dict) -> None:
    (Path(out) / "tasks").mkdir(parents=True, exist_ok=True)
    write_json_atomic(Path(out) / "tasks" / task.file, result)


def read_task_result(out: Path, task: SweepTask) -> dict | None:
    try:
        return json.loads((Path(out) / "tasks" / task.file).read_text())
    except (OSError, ValueError):
        return None


def task_done(out: Path, task: SweepTask) -> bool:
    """Whether OUT holds a result of `task` for the same settings without an error (a rerun skips it)."""
    r = read_task_result(out, task)
    return r is not None and r.get("task_id") in task.ids and not r.get("error")


def task_results(out: Path, tasks: list[SweepTask]) -> list[dict]:
    """Every task's result, a task without one recorded as failed ("no result written")."""
    return [read_task_result(out, t) or {"config": t.config, "split": t.split.name, "overrides": t.overrides,
                                         "error": "no result written", "metrics": {}} for t in tasks]
