"""Stage 1 on the CPU with the tiny model: pipeline overhead and decoder throughput.

1. Pipeline overhead = end-to-end `run_extract` time / time of the bare model passes
   (`FeatureExtractor.__call__` on the same number of views, same batch size, inputs already in memory).
   Also timed alone, single-threaded, for orientation: decode + view making (`decode_views`) and `write_shard`.
2. Decoding: `video.read_frames(path, indices, backend=...)` for decord vs PyAV on a 540p clip
   (8 uniformly sampled frames, as extraction does, and 32 consecutive frames).

    python benchmarks/stage1_cpu.py                       # threads 1 and 2, 16 sample videos, 10 steps
    python benchmarks/stage1_cpu.py --videos 78 --steps 50 --threads 2
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import append_section, loadavg, machine_info, set_threads, table, update_current  # noqa: E402

REAL_540P = Path("/work/shared/realdata/videos/KoNViD-1k_3339962845__VSFA_test.mp4")


def extract_overhead(n_videos: int, steps: int, batch: int, repeats: int, threads: int, workdir: Path) -> dict:
    from diffvqa_cache.cache.folder import write_shard
    from diffvqa_cache.cache.settings import ExtractConfig
    from diffvqa_cache.datasets import load_dataset
    from diffvqa_cache.extraction.backbone import load_backbone
    from diffvqa_cache.extraction.features import FeatureExtractor
    from diffvqa_cache.extraction.per_video import decode_views
    from pipelines.extract import run_extract

    set_threads(threads)
    index = load_dataset("sample", None, limit=n_videos)
    # strength 0.5: without an adapted Controller a chain from pure noise ignores the input (refused since 0.2);
    # trailing spacing: the few-step chains this benchmark times (a 1-step linspace chain from noise is refused)
    cheap = dict(model="tiny", device="cpu", strength=0.5, timestep_spacing="trailing")
    cfg = ExtractConfig(**cheap, steps=steps, batch_size=batch, frames=8, crops=1)
    n_views = len(index.records) * cfg.frames * (1 + cfg.crops)
    size = 128

    # warm-up, untimed in the ratio: the first run in a process pays the imports (diffusers) and first model build
    t0 = time.perf_counter()
    run_extract(load_dataset("sample", None, limit=1), ExtractConfig(**cheap, steps=1, frames=2, crops=1),
                workdir / f"warm-{threads}", progress=False)
    cold = time.perf_counter() - t0
    shutil.rmtree(workdir / f"warm-{threads}", ignore_errors=True)
    # time spent inside the model calls during run_extract (same run: robust to the machine's load)
    in_model = [0.0]
    orig_call = FeatureExtractor.__call__

    def timed_call(self, *a, **k):
        t0 = time.perf_counter()
        try:
            return orig_call(self, *a, **k)
        finally:
            in_model[0] += time.perf_counter() - t0

    e2e, bare, dec, wr, inside = [], [], [], [], []
    for r in range(repeats):
        # end to end (fresh cache dir, so nothing is skipped)
        out = workdir / f"e2e-{threads}-{r}"
        in_model[0] = 0.0
        FeatureExtractor.__call__ = timed_call
        try:
            t0 = time.perf_counter()
            res = run_extract(index, cfg, out, progress=False)
            e2e.append(time.perf_counter() - t0)
        finally:
            FeatureExtractor.__call__ = orig_call
        inside.append(in_model[0])
        assert res.videos == len(index.records), res.summary()
        # bare model passes on the same number of views, same batch size, inputs in memory
        bb = load_backbone("tiny")
        fx = FeatureExtractor(bb, steps=steps, sampler=cfg.sampler, grid=cfg.grid, dtype="fp32", device="cpu",
                              timestep_spacing=cfg.timestep_spacing, strength=cfg.strength, latent=cfg.latent)
        rng = np.random.default_rng(r)
        views = torch.from_numpy(rng.integers(0, 256, (n_views, size, size, 3), dtype=np.uint8))
        t0 = time.perf_counter()
        for s in range(0, n_views, batch):
            fx(views[s:s + batch], list(range(s, min(s + batch, n_views))))
        bare.append(time.perf_counter() - t0)
        # decode + views alone, one thread, sequential
        t0 = time.perf_counter()
        [decode_views(rec, size, cfg.crops, cfg.seed, cfg.frames, cfg.fps, cfg.backend) for rec in index.records]
        dec.append(time.perf_counter() - t0)
        # one shard write (features from the run above are re-read and written again)
        from diffvqa_cache.cache.folder import FeatureCache
        fc = FeatureCache(res.cache_dir)
        vids = list(fc.iter_videos())
        t0 = time.perf_counter()
        write_shard(workdir / f"w-{threads}-{r}" / "shard-00000.h5", 0, "x", vids, [], [v.key for v in vids])
        wr.append(time.perf_counter() - t0)
        shutil.rmtree(out, ignore_errors=True)
        shutil.rmtree(workdir / f"w-{threads}-{r}", ignore_errors=True)
        print(f"  threads {threads} run {r}: e2e {e2e[-1]:.2f} s, bare {bare[-1]:.2f} s, ratio {e2e[-1] / bare[-1]:.2f}, in-run ratio {e2e[-1] / inside[-1]:.2f}, "
              f"decode+views {dec[-1]:.2f} s, write {wr[-1]:.3f} s, load {loadavg()}", flush=True)
    med = statistics.median
    ratios = [a / b for a, b in zip(e2e, bare)]
    in_run = [a / b for a, b in zip(e2e, inside)]
    return {"cold": cold, "threads": threads, "videos": len(index.records), "views": n_views, "e2e": med(e2e), "bare": med(bare),
            "ratio": med(ratios), "ratios": ratios, "in_run": med(in_run), "in_model": med(inside), "decode": med(dec), "write": med(wr)}


def decode_bench(path: Path, repeats: int) -> list[list]:
    from diffvqa_cache.extraction.video import probe, read_frames, sample_indices

    info = probe(path)
    patterns = {"8 sampled (extract)": sample_indices(info.n_frames, 8),
                "32 consecutive": np.arange(min(32, info.n_frames))}
    rows = []
    for pname, idx in patterns.items():
        for backend in ("decord", "pyav"):
            ts = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                frames, used = read_frames(path, idx, backend=backend)
                ts.append(time.perf_counter() - t0)
            assert used == backend, (used, backend)
            m = statistics.median(ts)
            rows.append([pname, backend, f"{frames.shape[2]}x{frames.shape[1]}", len(idx), m, len(idx) / m])
            print("  ", rows[-1], flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--videos", type=int, default=16, help="sample videos (of 78)")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--decode-repeats", type=int, default=5)
    ap.add_argument("--no-append", action="store_true")
    args = ap.parse_args()
    info = machine_info()
    work = Path(tempfile.mkdtemp(prefix="stage1cpu-"))
    try:
        res = [extract_overhead(args.videos, args.steps, args.batch_size, args.repeats, th, work) for th in args.threads]
        clip = REAL_540P
        if not clip.exists():
            from diffvqa_cache.clip_writer import write_clip
            rng = np.random.default_rng(0)
            clip = write_clip(work / "clip540.mp4", rng.integers(0, 256, (240, 540, 960, 3), dtype=np.uint8), fps=30)
        set_threads(max(args.threads))
        drows = decode_bench(clip, args.decode_repeats)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    t1 = table(["torch threads", "videos", "views", "run_extract s", "of which in FeatureExtractor calls s",
                "e2e / in-model (same run)", "bare model s (separate run)", "e2e / bare (median)", "e2e / bare, each run", "decode+views alone s (1 thread)", "write_shard s", "first run in process (1 video, 1 step) s"],
               [[r["threads"], r["videos"], r["views"], r["e2e"], r["in_model"], r["in_run"], r["bare"], r["ratio"],
                 " ".join(f"{x:.2f}" for x in r["ratios"]), r["decode"], r["write"], r["cold"]] for r in res])
    t2 = table(["indices", "backend", "frame", "frames", "median s", "frames/s"], drows)
    print(t1, "", t2, sep="\n")
    body = (f"Tiny model, embedded sample dataset (first {res[0]['videos']} clips, 160x120, 8 frames, 1 crop -> "
            f"{res[0]['views']} views), {args.steps} DDIM steps, batch {args.batch_size}, fp32, "
            f"{args.repeats} runs each (medians). `run_extract` includes building the tiny model, decoding "
            f"(2 decode threads), views, HDF5 writes and the manifest; a warm-up run (imports, first build) precedes the timed runs and is reported in the last column. The model time is also measured inside the same `run_extract` (FeatureExtractor.__call__ wrapped with a timer): e2e / in-model is the overhead ratio that the machine's load cannot skew; e2e / bare compares against the bare passes run separately right after.\n\n" + t1 +
            f"\n\nDecoding `{clip.name if clip == REAL_540P else 'synthetic 960x540 H.264'}` with "
            f"`video.read_frames` (median of {args.decode_repeats}; decord with its default threads, PyAV "
            f"thread_type AUTO):\n\n" + t2)
    if not args.no_append:
        append_section("Stage 1 on CPU: pipeline overhead (tiny model) and decoding", body, info)
        update_current("stage 1, CPU, tiny model: end-to-end extract / model time in the same run",
                       ", ".join(f"{r['in_run']:.2f} ({r['threads']} torch thread(s))" for r in res), info=info)
        rate = {(r[0], r[1]): r[5] for r in drows}
        update_current("decode 8 sampled frames of a 960x540 H.264 clip",
                       f"PyAV {rate[('8 sampled (extract)', 'pyav')]:.0f} frames/s, decord "
                       f"{rate[('8 sampled (extract)', 'decord')]:.0f} frames/s", info=info)


if __name__ == "__main__":
    main()
