"""Stage one: run the adapted SD once per video and write the sharded, fingerprinted HDF5 cache.

Work is planned as shards of `shard_size` videos in label-file order; a shard is the unit of resume,
of job-array parts (shard i belongs to part i % num_parts) and of dask tasks. The shard task itself and
the per-process model live in diffvqa_cache.extraction.shards; this file plans, claims and assembles.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch

from diffvqa_cache.cache.folder import CacheDir, labels_conflict, plan_shards, write_labels
from diffvqa_cache.cache.settings import CacheConfig, ExtractConfig
from diffvqa_cache.datasets import Dataset
from diffvqa_cache.errors import DiffVQAError, UserInputError
from diffvqa_cache.extraction.shards import ExtractResult, extract_here, extract_shard
from diffvqa_cache.progress import bar, err

__all__ = ["ExtractResult", "extract_shard", "prepare_cache", "resolve_part", "run_extract", "runs_on_gpu"]

ARRAY_ID_VARS = ("SLURM_ARRAY_TASK_ID", "PBS_ARRAY_INDEX")


def resolve_part(num_parts: int, part: int | None) -> int:
    """Which part of the shards this process runs: `part`, else the job array's task id, else 0."""
    if num_parts < 1:
        raise UserInputError(f"--num-parts must be >= 1, got {num_parts}")
    if part is None:
        array_id = next((os.environ[v] for v in ARRAY_ID_VARS if v in os.environ), "0")
        part = int(array_id) if num_parts > 1 else 0
    if not 0 <= part < num_parts:
        raise UserInputError(f"--part {part} must be in 0..{num_parts - 1} for --num-parts {num_parts}")
    return part


def runs_on_gpu(cfg: ExtractConfig, client=None) -> bool:
    """Whether the views run on a CUDA GPU (what --dtype auto resolves by): --device cuda..., or auto with a
    GPU here (with a dask `client`: workers offering GPUs)."""
    if cfg.device != "auto":
        return cfg.device.startswith("cuda")
    return _wants_gpu(client, cfg) if client is not None else torch.cuda.is_available()


def prepare_cache(dataset: Dataset, cfg: ExtractConfig, out: Path, gpu: bool | None = None) -> tuple[Path, CacheConfig]:
    """Identify the weights, create the cache directory, write config.json (once) and labels.csv. `gpu`:
    whether the views run on a CUDA GPU (resolves --dtype auto; None: `runs_on_gpu` here)."""
    from diffvqa_cache.extraction.backbone import identify, read_noise_schedule
    from diffvqa_cache.extraction.features import chain_timesteps

    timesteps = chain_timesteps(cfg.sampler, read_noise_schedule(cfg.model, cfg.revision), cfg.steps,
                                cfg.timestep_spacing, cfg.strength)
    config = CacheConfig.create(cfg, identify(cfg.model, cfg.controller, cfg.revision), dataset.name,
                                dataset.mos_range, timesteps, gpu=runs_on_gpu(cfg) if gpu is None else gpu)
    cache_dir = Path(out) / dataset.name / config.fingerprint
    rows = [(r.key, r.mos, r.split, str(r.path)) for r in dataset.records + dataset.missing]
    conflict = labels_conflict(cache_dir / "labels.csv", rows)
    if conflict:  # another video list of the same dataset kind and settings: never replace or shrink it
        raise UserInputError(f"{cache_dir} {conflict}: it is the cache of another video list; extract this one into "
                             f"another --out (e.g. --out {Path(out) / dataset.root.name}), or delete that folder to "
                             "replace it (if the same videos only moved, delete its labels.csv to adopt the new paths)")
    (cache_dir / "shards").mkdir(parents=True, exist_ok=True)
    if not (cache_dir / "config.json").is_file():
        config.save(cache_dir / "config.json")
    write_labels(cache_dir / "labels.csv", rows)
    return cache_dir, config


def run_extract(dataset: Dataset, cfg: ExtractConfig, out: Path, num_parts: int = 1, part: int | None = None,
                retry_failed: bool = False, progress: bool = True, client=None, verify: bool = False) -> ExtractResult:
    """Extract every shard of this part that is not complete yet, then assemble the manifest.

    With a dask `client` each shard is one task (`extract_shard`) on a worker; the driver plans, collects
    the shard records and writes the manifest. Both paths write bit-identical shards.
    """
    part = resolve_part(num_parts, part)
    cfg.check_features_follow_input()
    t0 = time.perf_counter()
    cache_dir, config = prepare_cache(dataset, cfg, out, runs_on_gpu(cfg, client))
    cdir = CacheDir(cache_dir)
    cdir.remove_leftovers()
    plan = plan_shards([r.key for r in dataset.records], cfg.shard_size)
    mine = [i for i in range(len(plan)) if i % num_parts == part]
    todo = [i for i in mine if cdir.needs_work(i, plan[i], config.fingerprint, retry_failed, deep=verify)]
    result = ExtractResult(cache_dir, config.fingerprint, 0, len(mine) - len(todo), 0, 0)
    claimed = [i for i in todo if cdir.claim(i)]  # another process may be extracting some of them right now
    if len(claimed) < len(todo):
        err.print(f"{len(todo) - len(claimed)} shards are being extracted by another process; leaving them to it")
    if claimed and (len(claimed) < len(mine) or len(mine) < len(plan)):
        err.print(f"Processing {len(claimed)}/{len(plan)} shards ({len(mine) - len(todo)} of this part already complete)")
    by_key = {r.key: r for r in dataset.records}
    shards = [(i, [by_key[k] for k in plan[i]]) for i in claimed]
    errors: list[str] = []
    try:
        if shards and client is not None:
            errors = _extract_on_cluster(client, shards, config, cache_dir, result, progress)
        elif shards:
            extract_here(shards, config, cache_dir, result, progress, t0)
    finally:
        for i in claimed:
            cdir.release(i)
    result.manifest = cdir.write_manifest(config, plan, [r.key for r in dataset.missing])
    result.seconds = time.perf_counter() - t0
    if errors:
        raise DiffVQAError(f"{len(errors)} shard task(s) failed (the others are written; rerun the same command to "
                           f"retry them): {errors[0]}")
    return result


def _wants_gpu(client, cfg: ExtractConfig) -> bool:
    """Tasks hold a GPU resource when the device is CUDA: named, or auto with workers offering GPUs."""
    if cfg.device.startswith("cuda"):
        return True
    if cfg.device != "auto":
        return False
    workers = client.scheduler_info().get("workers", {}).values()
    return any("GPU" in (w.get("resources") or {}) for w in workers)


def _extract_on_cluster(client, shards: list[tuple[int, list]], config: CacheConfig, cache_dir: Path,
                        result: ExtractResult, progress: bool) -> list[str]:
    """One dask task per shard, written by its worker. Returns the errors of tasks that raised."""
    from diffvqa_cache.cluster.tasks import submit_and_gather

    resources = {"GPU": 1} if _wants_gpu(client, config.extract) else None
    offered = [w.get("resources") or {} for w in client.scheduler_info().get("workers", {}).values()]
    if resources and not any("GPU" in r for r in offered):
        err.print("[yellow]the shard tasks need a GPU resource and no worker offers one yet: they wait for "
                  "workers started with `--resources GPU=1` (see docs/cluster.md)[/]")

    def written(key: str, rec: dict) -> None:
        result.shards_done += 1
        result.videos += len(rec["videos"])
        result.frames += sum(rec["n_frames"])
        result.failed += rec["failed"]
        for f in rec["failed"]:
            err.print(f"[red]failed[/] {f['video']}: {f['reason']}")

    calls = {f"extract-{config.fingerprint}-shard-{i:05d}": (recs, i, config, cache_dir) for i, recs in shards}
    with bar("extract (shards)", len(calls), progress) as pbar:
        return submit_and_gather(client, extract_shard, calls, written, resources=resources, pbar=pbar)
