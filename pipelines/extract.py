"""Stage one: run the adapted SD once per video and write the sharded, fingerprinted HDF5 cache.

Work is planned as shards of `shard_size` videos in label-file order; a shard is the unit of resume,
of job-array parts (`shard % num_shards == shard_index`) and of dask tasks. Within a shard, views of
several videos are batched together in a fixed order, so recomputing a shard gives the same bytes.
"""

from __future__ import annotations

import json
import logging
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from diffvqa_cache import __version__
from diffvqa_cache.cache import CacheDir, VideoFeatures, write_json_atomic, write_labels, write_shard
from diffvqa_cache.config import ExtractConfig, fingerprint, noise_seed
from diffvqa_cache.datasets import DatasetIndex
from diffvqa_cache.devices import resolve_device
from diffvqa_cache.errors import DiffVQAError, UserInputError
from diffvqa_cache.progress import bar, err
from diffvqa_cache.video import load_video_frames
from diffvqa_cache.views import make_views, resize_frames

log = logging.getLogger(__name__)


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



def plan_shards(index: DatasetIndex, shard_size: int) -> list[list[str]]:
    keys = [r.key for r in index.records]
    return [keys[i:i + shard_size] for i in range(0, len(keys), shard_size)]


def prepare_cache(index: DatasetIndex, cfg: ExtractConfig, out: Path) -> tuple[Path, dict]:
    """Fingerprint the settings, create the cache directory, write config.json and labels.csv."""
    from diffvqa_cache.backbone import identify

    model_id, controller_id, native = identify(cfg.model, cfg.controller, cfg.revision)
    view_size = cfg.view_size or native
    fp = fingerprint(cfg, model_id, controller_id, view_size)
    cache_dir = Path(out) / index.name / fp
    (cache_dir / "shards").mkdir(parents=True, exist_ok=True)
    config = {
        "fingerprint": fp, "extract": cfg.to_dict(), "model_id": model_id, "controller_id": controller_id,
        "view_size": view_size, "pixel_size": min(cfg.pixel_size, view_size), "dataset": index.name,
        "mos_range": list(index.mos_range), "package_version": __version__, "tiny_model": cfg.model == "tiny",
    }
    if not (cache_dir / "config.json").is_file():
        write_json_atomic(cache_dir / "config.json", config)
    write_labels(cache_dir / "labels.csv",
                 [(r.key, r.mos, r.split, str(r.path)) for r in index.records + index.missing])
    return cache_dir, config


class ViewEncoder:
    """Model side of a shard: batches views across videos and returns each video's feature arrays."""

    def __init__(self, cfg: ExtractConfig, config: dict, device: torch.device):
        from diffvqa_cache.backbone import load_backbone
        from diffvqa_cache.features import FeatureExtractor

        bb = load_backbone(cfg.model, cfg.controller, cfg.revision)
        if (bb.model_id, bb.controller_id) != (config["model_id"], config["controller_id"]):
            raise DiffVQAError("the model files changed while extracting; rerun extract")
        if bb.is_tiny:
            err.print("[yellow]--model tiny: a small random test model, for plumbing and tests only; "
                      "its features say nothing about quality[/]")
        self.fx = FeatureExtractor(bb, steps=cfg.steps, scheduler=cfg.scheduler, grid=cfg.grid,
                                   dtype=cfg.dtype, device=device, timestep_spacing=cfg.timestep_spacing,
                                   strength=cfg.strength)
        self.cfg, self.pixel_size, self.size = cfg, config["pixel_size"], config["view_size"]

    def encode_stream(self, videos, on_video=None) -> list[VideoFeatures]:
        """Consume (key, frame_index, views) items in shard order; views of consecutive videos share batches.

        Batches never cross the iterable's end (one shard), so a shard recomputed alone gives the same bytes.
        `on_video(n_frames)` is called as each video's features are complete.
        """
        pending: list[tuple] = []  # (video position, branch, frame row, crop, image)
        meta: list[tuple[str, np.ndarray, np.ndarray]] = []
        outs: dict[tuple, dict] = {}
        last_job: list[int] = []  # running job count at which each video is complete
        done = 0

        def run(batch: list[tuple]) -> None:
            imgs = torch.from_numpy(np.stack([j[4] for j in batch]))
            seeds = [noise_seed(self.cfg, meta[v][0], t, b, k) for v, b, t, k, _ in batch]
            feats = self.fx(imgs, seeds)
            pix = resize_frames(imgs.numpy(), self.pixel_size) if self.pixel_size != self.size else imgs.numpy()
            for n, (v, b, t, k, _) in enumerate(batch):
                outs[(v, b, t, k)] = {"latent": feats["latent"][n].numpy(), "pixels": pix[n].transpose(2, 0, 1),
                                      **{f"ms{lv}": m[n].numpy() for lv, m in enumerate(feats["ms"])}}

        n_jobs = 0
        for key, fidx, views in videos:
            # 1. queue every view of this video (S, then its K crops, frame by frame)
            v = len(meta)
            meta.append((key, np.asarray(fidx, dtype=np.int32), views["crop_origin"]))
            for t in range(len(fidx)):
                pending.append((v, "S", t, 0, views["S"][t]))
                pending += [(v, "D", t, k, views["D"][t, k]) for k in range(self.cfg.crops)]
            n_jobs += len(fidx) * (1 + self.cfg.crops)
            last_job.append(n_jobs)
            # 2. run full batches as soon as there are enough views
            while len(pending) >= self.cfg.batch_size:
                run(pending[:self.cfg.batch_size])
                del pending[:self.cfg.batch_size]
                done = self._report(done, last_job, n_jobs - len(pending), meta, on_video)
        if pending:
            run(pending)
            done = self._report(done, last_job, n_jobs, meta, on_video)
        # 3. assemble (T, K, ...) arrays per video
        result = []
        for v, (key, fidx, origins) in enumerate(meta):
            arrays = {}
            for b, n_views in (("S", 1), ("D", self.cfg.crops)):
                for name in outs[(v, b, 0, 0)]:
                    arrays[f"{b}/{name}"] = np.stack([np.stack([outs[(v, b, t, k)][name] for k in range(n_views)])
                                                      for t in range(len(fidx))])
            arrays["D/crop_origin"] = origins
            result.append(VideoFeatures(key=key, frame_index=fidx, arrays=arrays))
        return result

    @staticmethod
    def _report(done: int, last_job: list[int], finished_jobs: int, meta, on_video) -> int:
        while done < len(last_job) and last_job[done] <= finished_jobs:
            if on_video is not None:
                on_video(len(meta[done][1]))
            done += 1
        return done


def decode_views(record, size: int, crops: int, seed: int, frames: int | None = 8, fps: float | None = None,
                 backend: str = "auto"):
    """(key, frame indices, views, None) for one video, or (key, None, None, reason): failures are returned."""
    try:
        pixels, indices, _info, _backend = load_video_frames(record.path, n_frames=frames, fps=fps, backend=backend)
        return record.key, indices, make_views(pixels, indices, record.key, size, crops, seed), None
    except DiffVQAError as exc:
        return record.key, None, None, str(exc)
    except Exception as exc:  # one bad video never stops the others
        return record.key, None, None, f"{record.path}: {type(exc).__name__}: {exc}"


def _decode(record, cfg: ExtractConfig, size: int):
    return decode_views(record, size, cfg.crops, cfg.seed, cfg.frames, cfg.fps, cfg.backend)


def _prefetch(pool: ThreadPoolExecutor, records: list, cfg: ExtractConfig, size: int):
    """Decode results in order, keeping `decode_workers + 2` videos in flight ahead of the consumer."""
    ahead = deque(pool.submit(_decode, r, cfg, size) for r in records[:cfg.decode_workers + 2])
    nxt = len(ahead)
    while ahead:
        item = ahead.popleft().result()
        if nxt < len(records):
            ahead.append(pool.submit(_decode, records[nxt], cfg, size))
            nxt += 1
        yield item


def extract_shard(records: list, shard_id: int, cfg: ExtractConfig, config: dict, cache_dir: Path,
                  encoder: ViewEncoder | None = None, decoded=None, on_video=None, on_failed=None,
                  write=write_shard):
    """Compute one shard from its records and write it: the unit of resume, of parts and of dask tasks.

    Alone (a dask task) it decodes with its own threads and uses this process's cached model; run_extract
    passes its model, one prefetching `decoded` stream over all its shards and a background `write`.
    Returns what `write` returns (the shard's record for `write_shard`).
    """
    encoder = encoder or worker_encoder(cfg, config)
    failed: list[dict] = []
    with ThreadPoolExecutor(cfg.decode_workers) as pool:
        stream = decoded if decoded is not None else _prefetch(pool, records, cfg, config["view_size"])

        def videos():
            for _ in records:
                key, fidx, views, reason = next(stream)
                if reason is None:
                    yield key, fidx, views
                else:
                    failed.append({"video": key, "reason": reason})
                    err.print(f"[red]failed[/] {key}: {reason}")
                    if on_failed is not None:
                        on_failed()

        feats = encoder.encode_stream(videos(), on_video)
    for bad in [v for v in feats if not all(np.isfinite(a).all() for a in v.arrays.values())]:
        feats.remove(bad)
        failed.append({"video": bad.key, "reason": f"{bad.key}: NaN/Inf in its features (try --dtype fp32)"})
        err.print(f"[red]failed[/] {failed[-1]['reason']}")
    return write(CacheDir(cache_dir).shard_path(shard_id), shard_id, config["fingerprint"], feats, failed,
                 [r.key for r in records])


_ENCODERS: dict[str, ViewEncoder] = {}  # per process (dask worker): the model is loaded once per settings


def worker_encoder(cfg: ExtractConfig, config: dict) -> ViewEncoder:
    """This process's ViewEncoder for these settings, loaded on first use.

    On a dask worker that sees several GPUs, the worker whose name ends in i (LocalCluster: "i", dask-jobqueue
    with several workers per job: "<job>-i") takes GPU i % n; with one visible GPU there is nothing to pick.
    """
    device = resolve_device(cfg.device)
    if device.type == "cuda" and device.index is None and torch.cuda.device_count() > 1:
        try:
            from distributed import get_worker

            name = str(get_worker().name)  # LocalCluster: "3"; dask-jobqueue with several per job: "job-7-1"
            local = name.rsplit("-", 1)[-1]
            if local.isdigit():
                device = torch.device(f"cuda:{int(local) % torch.cuda.device_count()}")
        except (ImportError, ValueError):
            pass
    key = json.dumps([cfg.to_dict(), config["model_id"], config["controller_id"], str(device)], sort_keys=True)
    if key not in _ENCODERS:
        _ENCODERS.clear()  # one model per process at a time
        _ENCODERS[key] = ViewEncoder(cfg, config, device)
    return _ENCODERS[key]


def run_extract(index: DatasetIndex, cfg: ExtractConfig, out: Path, num_shards: int = 1, shard_index: int = 0,
                retry_failed: bool = False, progress: bool = True, client=None, verify: bool = False) -> ExtractResult:
    """Extract every shard of this part that is not complete yet, then assemble the manifest.

    With a dask `client` each shard is one task (`extract_shard`) on a worker; the driver plans, collects
    the shard records and writes the manifest. Both paths write bit-identical shards.
    """
    if not 0 <= shard_index < num_shards:
        raise UserInputError(f"--shard-index {shard_index} must be in 0..{num_shards - 1} for --num-shards {num_shards}")
    t0 = time.perf_counter()
    cache_dir, config = prepare_cache(index, cfg, out)
    cdir = CacheDir(cache_dir)
    plan = plan_shards(index, cfg.shard_size)
    mine = [i for i in range(len(plan)) if i % num_shards == shard_index]
    todo = [i for i in mine if not cdir.is_complete(i, plan[i], config["fingerprint"], deep=verify)
            or (retry_failed and cdir.record(i)["failed"])]
    result = ExtractResult(cache_dir, config["fingerprint"], 0, len(mine) - len(todo), 0, 0)
    claimed = [i for i in todo if cdir.claim(i)]  # another process may be extracting some of them right now
    if len(claimed) < len(todo):
        err.print(f"{len(todo) - len(claimed)} shards are being extracted by another process; leaving them to it")
    try:
        errors = _extract_claimed(claimed, index, cfg, config, cdir, plan, len(mine), result, progress, client, t0)
    finally:
        for i in claimed:
            cdir.release(i)
    result.manifest = cdir.write_manifest(config, plan, [r.key for r in index.missing])
    result.seconds = time.perf_counter() - t0
    if errors:
        raise DiffVQAError(f"{len(errors)} shard task(s) failed (the others are written; rerun the same command to "
                           f"retry them): {errors[0]}")
    return result


def _extract_claimed(todo: list[int], index: DatasetIndex, cfg: ExtractConfig, config: dict, cdir: CacheDir,
                     plan: list[list[str]], n_mine: int, result: ExtractResult, progress: bool, client,
                     t0: float) -> list[str]:
    """Compute the shards this process holds, in one process or as dask tasks. Returns failed tasks' errors."""
    cache_dir, by_key = cdir.path, {r.key: r for r in index.records}
    if todo and (len(todo) < n_mine or n_mine < len(plan)):
        err.print(f"Processing {len(todo)}/{len(plan)} shards ({n_mine - len(todo)} of this part already complete)")
    errors: list[str] = []
    if todo and client is not None:
        errors = _extract_on_cluster(client, [(i, [by_key[k] for k in plan[i]]) for i in todo], cfg, config,
                                     cache_dir, result, progress)
    elif todo:
        encoder = ViewEncoder(cfg, config, resolve_device(cfg.device))
        n_videos = sum(len(plan[i]) for i in todo)
        with bar("extract", n_videos, progress) as pbar, ThreadPoolExecutor(cfg.decode_workers) as pool, \
                ThreadPoolExecutor(1) as writer:
            # one prefetching stream of decoded videos over all shards to do, consumed shard by shard
            stream = _prefetch(pool, [by_key[k] for i in todo for k in plan[i]], cfg, config["view_size"])

            def on_video(n_frames: int) -> None:
                result.videos += 1
                result.frames += n_frames
                el = time.perf_counter() - t0
                pbar.update(advance=1, info=f"{result.videos / el:.2f} videos/s {result.frames / el:.1f} frames/s")

            pending_write = None
            for i in todo:
                # the HDF5 write and its checksum overlap with the next shard's work
                future = extract_shard([by_key[k] for k in plan[i]], i, cfg, config, cache_dir, encoder, stream,
                                       on_video, lambda: pbar.update(advance=1),
                                       write=lambda *a: writer.submit(write_shard, *a))
                if pending_write is not None:
                    result.failed += pending_write.result()["failed"]
                pending_write = future
                result.shards_done += 1
            if pending_write is not None:
                result.failed += pending_write.result()["failed"]
    return errors


def _wants_gpu(client, cfg: ExtractConfig) -> bool:
    """Tasks hold a GPU resource when the device is CUDA: named, or auto with workers offering GPUs."""
    if cfg.device.startswith("cuda"):
        return True
    if cfg.device != "auto":
        return False
    workers = client.scheduler_info().get("workers", {}).values()
    return any("GPU" in (w.get("resources") or {}) for w in workers)


def _extract_on_cluster(client, shards: list[tuple[int, list]], cfg: ExtractConfig, config: dict, cache_dir: Path,
                        result: ExtractResult, progress: bool) -> list[str]:
    """One dask task per shard, written by its worker. Returns the errors of tasks that raised."""
    from distributed import as_completed

    resources = {"GPU": 1} if _wants_gpu(client, cfg) else None
    offered = [w.get("resources") or {} for w in client.scheduler_info().get("workers", {}).values()]
    if resources and not any("GPU" in r for r in offered):
        err.print("[yellow]the shard tasks need a GPU resource and no worker offers one yet: they wait for "
                  "workers started with `--resources GPU=1` (see docs/cluster.md)[/]")
    futures = [client.submit(extract_shard, recs, i, cfg, config, cache_dir, pure=False, resources=resources,
                             key=f"extract-{config['fingerprint']}-shard-{i:05d}") for i, recs in shards]
    errors = []
    with bar("extract (shards)", len(futures), progress) as pbar:
        for fut in as_completed(futures):
            try:
                rec = fut.result()
            except Exception as exc:  # reported once the other shards are done
                errors.append(f"{fut.key}: {type(exc).__name__}: {exc}")
            else:
                result.shards_done += 1
                result.videos += len(rec["videos"])
                result.frames += sum(rec["n_frames"])
                result.failed += rec["failed"]
                for f in rec["failed"]:
                    err.print(f"[red]failed[/] {f['video']}: {f['reason']}")
            pbar.update(advance=1)
    return errors
