"""Stage one's shard task: compute the features of one shard of videos and write them, in this process.

A shard (`shard_size` videos in label-file order) is the unit of resume, of job-array parts and of dask
tasks. `extract_shard` is the task; `extract_here` runs a list of shards in this process with one model, one
prefetching decode stream and writes in the background; `worker_encoder` keeps one model per process (dask
worker) across the tasks it runs. Within a shard, views of several videos are batched together in a fixed
order, so recomputing a shard gives the same bytes on either path.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import torch

from diffvqa_cache.cache.folder import CacheDir, write_shard
from diffvqa_cache.cache.settings import CacheConfig
from diffvqa_cache.devices import resolve_device
from diffvqa_cache.extraction.per_video import ViewEncoder, decode_ahead
from diffvqa_cache.progress import bar, err


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


def extract_here(shards: list[tuple[int, list]], config: CacheConfig, cache_dir: Path, result: ExtractResult,
                 progress: bool, t0: float) -> None:
    """Compute the shards in this process: one model, one prefetching decode stream, writes in the background.
    Counts into `result` (shards, videos, frames, failures); `t0` (perf_counter) times the rate shown."""
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
