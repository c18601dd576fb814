"""Stage one: run the adapted SD once per video and write the sharded, fingerprinted HDF5 cache.

Work is planned as shards of `shard_size` videos in label-file order; a shard is the unit of resume,
of job-array parts (shard i belongs to part i % num_parts) and of dask tasks. Within a shard, views of
several videos are batched together in a fixed order, so recomputing a shard gives the same bytes.
"""

from __future__ import annotations

import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import torch

from diffvqa_cache.cache.folder import CacheDir, labels_conflict, plan_shards, write_labels, write_shard
from diffvqa_cache.cache.settings import CacheConfig, ExtractConfig
from diffvqa_cache.datasets import Dataset
from diffvqa_cache.devices import resolve_device
from diffvqa_cache.errors import DiffVQAError, UserInputError
from diffvqa_cache.extraction.per_video import ViewEncoder, decode_ahead
from diffvqa_cache.progress import bar, err

ARRAY_ID_VARS = ("SLURM_ARRAY_TASK_ID", "PBS_ARRAY_INDEX")


@dataclass
class ExtractResult:
    cache_dir: Path
    fingerprint: str
    shards_done: int  # computed in this run
    shards_skipped: int  # already complete
    videos: int  # extracted in this run
    frames: int
    failed: list[dict] = field(default_factory=list)  # failures in this run: {video, reason}
    manifest: dict = field(default_factory=dict)
    seconds: float = 0.0

    def summary(self) -> str:
        m = self.manifest
        rate = self.videos / self.seconds if self.seconds else 0.0
        return (f"{self.cache_dir}: {m.get('videos', 0)} videos cached, {len(m.get('failed', []))} failed, "
                f"{len(m.get('not_extracted', []))} not yet extracted; this run: {self.shards_done} shards computed, "
                f"{self.shards_skipped} already complete, {self.videos} videos in {self.seconds:.1f} s ({rate:.2f} videos/s)")


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


def extract_shard(records: list, shard_id: int, config: CacheConfig, cache_dir: Path,
                  encoder: ViewEncoder | None = None, decoded=None, on_video=None, on_failed=None,
                  write=write_shard):
    """Compute one shard from its records and write it: the unit of resume, of parts and of dask tasks.

    Alone (a dask task) it decodes with its own threads and uses this process's cached model; run_extract
    passes its model, one prefetching `decoded` stream over all its shards and a background `write`.
    Returns what `write` returns (the shard's record for `write_shard`).
    """
    encoder = encoder or worker_encoder(config)
    failed: list[dict] = []
    with ThreadPoolExecutor(config.extract.decode_workers) as pool:
        stream = decoded if decoded is not None else decode_ahead(pool, records, config)

        def videos():
            for _ in records:
                video = next(stream)
                if video.error is None:
                    yield video
                else:
                    failed.append({"video": video.key, "reason": video.error})
                    err.print(f"[red]failed[/] {video.key}: {video.error}")
                    if on_failed is not None:
                        on_failed()

        feats = encoder.encode_stream(videos(), on_video)
    for bad in [v for v in feats if not v.is_finite()]:
        feats.remove(bad)
        failed.append({"video": bad.key, "reason": f"{bad.key}: NaN/Inf in its features (try --dtype fp32)"})
        err.print(f"[red]failed[/] {failed[-1]['reason']}")
    return write(CacheDir(cache_dir).shard_path(shard_id), shard_id, config.fingerprint, feats, failed,
                 [r.key for r in records])


_ENCODERS: dict[str, ViewEncoder] = {}  # per process (dask worker): the model is loaded once per settings


def worker_encoder(config: CacheConfig) -> ViewEncoder:
    """This process's ViewEncoder for these settings, loaded on first use.

    On a dask worker that sees several GPUs, the worker whose name ends in i (LocalCluster: "i", dask-jobqueue
    with several workers per job: "<job>-i") takes GPU i % n; with one visible GPU there is nothing to pick.
    """
    device = resolve_device(config.extract.device)
    if device.type == "cuda" and device.index is None and torch.cuda.device_count() > 1:
        try:
            from distributed import get_worker

            local = str(get_worker().name).rsplit("-", 1)[-1]
            if local.isdigit():
                device = torch.device(f"cuda:{int(local) % torch.cuda.device_count()}")
        except (ImportError, ValueError):
            pass
    key = json.dumps([config.to_dict(), str(device)], sort_keys=True)
    if key not in _ENCODERS:
        _ENCODERS.clear()  # one model per process at a time
        _ENCODERS[key] = ViewEncoder(config, device)
    return _ENCODERS[key]


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
            _extract_here(shards, config, cache_dir, result, progress, t0)
    finally:
        for i in claimed:
            cdir.release(i)
    result.manifest = cdir.write_manifest(config, plan, [r.key for r in dataset.missing])
    result.seconds = time.perf_counter() - t0
    if errors:
        raise DiffVQAError(f"{len(errors)} shard task(s) failed (the others are written; rerun the same command to "
                           f"retry them): {errors[0]}")
    return result


def _extract_here(shards: list[tuple[int, list]], config: CacheConfig, cache_dir: Path, result: ExtractResult,
                  progress: bool, t0: float) -> None:
    """Compute the shards in this process: one model, one prefetching decode stream, writes in the background."""
    encoder = ViewEncoder(config, resolve_device(config.extract.device))
    n_videos = sum(len(recs) for _, recs in shards)
    with bar("extract", n_videos, progress) as pbar, ThreadPoolExecutor(config.extract.decode_workers) as pool, \
            ThreadPoolExecutor(1) as writer:
        stream = decode_ahead(pool, [r for _, recs in shards for r in recs], config)

        def on_video(n_frames: int) -> None:
            result.videos += 1
            result.frames += n_frames
            el = time.perf_counter() - t0
            pbar.update(advance=1, info=f"{result.videos / el:.2f} videos/s {result.frames / el:.1f} frames/s")

        pending_write = None
        for i, recs in shards:
            # the HDF5 write and its checksum overlap with the next shard's work
            future = extract_shard(recs, i, config, cache_dir, encoder, stream, on_video, lambda: pbar.update(advance=1),
                                   write=lambda *a: writer.submit(write_shard, *a))
            if pending_write is not None:
                result.failed += pending_write.result()["failed"]
            pending_write = future
            result.shards_done += 1
        if pending_write is not None:
            result.failed += pending_write.result()["failed"]


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
