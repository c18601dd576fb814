"""Stage 2 over caches larger than memory: the streamed data path against the in-memory table.

Parts (each appends its own section to BENCHMARKS.md):
  big    an LSVQ-layout synthetic cache with SD 2.1-base shapes (default 1200 videos, ~12 GB) and
         `fit --protocol lsvq` at --memory-gb (default 3) in a child process: peak RSS (VmHWM) against the
         budget plus the model (the same fit on a 32-video cache of the same shapes), epoch times
  ratio  streamed over in-memory epoch time on a cache that fits (both warm), the same seed; the two
         trained models are compared bit for bit
  cold   streamed read rate of a full pass from a cold page cache over `dd` of the same shard files
         (pages evicted per file with posix_fadvise(DONTNEED), checked with fincore when present)
  sweep  4 configurations x 2 random splits on 2 local dask workers over the big cache at --memory-gb:
         each worker's peak RSS

    python benchmarks/fit_stream.py --root /work/tmp-11/bench                    # all parts, ~40 min
    python benchmarks/fit_stream.py --root /work/tmp-11/bench --parts ratio --ratio-videos 240
The caches are deleted at the end unless --keep.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from _common import ROOT, append_section, loadavg, machine_info, set_threads, table, update_current  # noqa: E402

TCAB_OFF = {"regressor.use_tcab": False}  # TCAB's Mamba scan on 2 CPU cores would take hours at this size
SHAPES = "8 frames, S + D (1 crop), grid 8 with SD 2.1-base channels (1280/1280/640/320), latent 4x64x64, pixels 224"


def synthetic(root: Path, n: int, splits=None):
    from diffvqa_cache.synthetic import write_synthetic_cache

    t0 = time.perf_counter()
    made = write_synthetic_cache(root, n, splits=splits,
                                 on_shard=lambda i, k: print(f"  shard {i + 1}/{k}", end="\r", flush=True))
    print(f"\n{made.cache_dir}: {made.nbytes / 1e9:.2f} GB in {time.perf_counter() - t0:.0f} s")
    return made.cache_dir, made.nbytes, time.perf_counter() - t0


def shard_files(cache_dir: Path) -> list[Path]:
    return sorted((Path(cache_dir) / "shards").glob("*.h5"))


def evict(files: list[Path]) -> str:
    """Drop the files' pages from the page cache (unprivileged); say how many stayed resident."""
    for f in files:
        fd = os.open(f, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    if not shutil.which("fincore"):
        return "evicted with posix_fadvise (not checked: no fincore)"
    out = subprocess.run(["fincore", "-b", "-n", "-o", "RES", *map(str, files)], capture_output=True, text=True).stdout
    resident = sum(int(x) for x in out.split() if x.isdigit())
    return f"evicted with posix_fadvise; fincore: {resident / 1e6:.1f} MB of the files still resident"


def report(title: str, body: str, args, benchmark: str, figure: str) -> None:
    """Print and append the section; set the benchmark's current figure."""
    print(body)
    if not args.no_append:
        append_section(title, body, args.info)
        update_current(benchmark, figure, info=args.info)


# ---------------------------------------------------------------- big: lsvq fit at a budget, peak RSS
CHILD = """import atexit, json, sys
from diffvqa_cache.training.memory import peak_rss_bytes
report = sys.argv[1]
atexit.register(lambda: open(report, "w").write(json.dumps({"peak": peak_rss_bytes()})))
sys.argv = ["diffvqa-cache"] + sys.argv[2:]
from cli import main
main()
"""


def fit_child(cache_dir: Path, out: Path, sets: dict, protocol: str) -> dict:
    report = out.with_suffix(".rss.json")
    args = [a for k, v in sets.items() for a in ("--set", f"{k}={v}")]
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", CHILD, str(report), "fit", "--cache", str(cache_dir), "--out", str(out),
                           "--protocol", protocol, *args], cwd=ROOT, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"fit failed:\n{proc.stderr[-3000:]}")
    from diffvqa_cache.training.checkpoint import read_meta

    metas = [read_meta(p) for p in sorted((out / "models").glob("*.safetensors"))]
    return {"seconds": time.perf_counter() - t0, "peak": json.loads(report.read_text())["peak"],
            "data": json.loads((out / "config.json").read_text())["data"],
            "metrics": json.loads((out / "metrics.json").read_text())["summary"],
            "epochs": [h["seconds"] for m in metas for h in m["history"]], "load": loadavg()}


def part_big(root: Path, cache_dir: Path, nbytes: int, gen_s: float, args) -> None:
    from diffvqa_cache.cache.folder import FeatureCache
    from diffvqa_cache.synthetic import LSVQ_SPLITS
    from diffvqa_cache.training.data import estimate_bytes, shard_read_bytes
    from diffvqa_cache.training.settings import FitConfig

    sets = {**TCAB_OFF, "train.epochs": args.epochs, "memory_gb": args.memory_gb}
    cache = FeatureCache(cache_dir)
    spec = FitConfig().with_overrides(sets).load_spec(cache.config.pixel_size)
    need = estimate_bytes(cache, spec) + shard_read_bytes(cache, spec)
    # the model's share: the same fit on 100 videos (full training and evaluation batches, data negligible)
    small_dir, _, _ = synthetic(root / "small", 100, LSVQ_SPLITS)
    # a budget of ~0: no read-ahead, so its peak is the runtime, weights, optimizer and one batch's working set
    small = fit_child(small_dir, root / "run-small", {**sets, "data": "stream", "memory_gb": 1e-3}, "lsvq")
    print("model baseline", small, flush=True)
    big = fit_child(cache_dir, root / "run-big", sets, "lsvq")
    print("big", big, flush=True)
    budget = args.memory_gb * 1e9
    rows = [["100-video cache, data=stream, memory_gb=0.001 (the model: runtime, weights, optimizer, one batch)", small["peak"] / 1e9,
             "", f"{small['seconds']:.0f}", small["load"]],
            [f"{len(cache)}-video cache, data=auto -> {big['data']['path']}", big["peak"] / 1e9,
             (big["peak"] - small["peak"]) / 1e9, f"{big['seconds']:.0f}", big["load"]]]
    t = table(["fit --protocol lsvq (child process)", "peak RSS GB", "above the model GB", "wall s", "load avg"], rows)
    ok = big["peak"] <= budget + small["peak"]
    m = big["metrics"]
    body = (f"Synthetic cache with LSVQ's split layout (train / test / test1080p = 72/19/9 %): {len(cache)} videos x "
            f"{SHAPES}, {nbytes / 1e9:.1f} GB on disk in {len(cache.shard_files())} shards ("
            f"{'reused from an earlier run' if gen_s != gen_s else f'written in {gen_s:.0f} s'}). "
            f"`fit --protocol lsvq --set memory_gb={args.memory_gb}` with TCAB off (`regressor.use_tcab=false`, so the "
            f"selection is the F_MS levels and F_Latent of both branches), {args.epochs} epochs, default torch threads. "
            f"The in-memory path would need {need / 1e9:.1f} GB (table + one shard while loading), "
            f"{need / budget:.1f}x the budget; the run chose `{big['data']['path']}`.\n\n{t}\n\n"
            f"- peak RSS {big['peak'] / 1e9:.2f} GB {'<=' if ok else '>'} budget {args.memory_gb} GB + model "
            f"{small['peak'] / 1e9:.2f} GB = {(budget + small['peak']) / 1e9:.2f} GB\n"
            f"- epoch seconds (streamed, {big['data']['path']}): {', '.join(f'{s:.0f}' for s in big['epochs'])} "
            f"for {round(0.72 * len(cache))} training videos; the rest of the wall time is checksumming the shards "
            f"(verify), predicting the training set (MOS scale) and both test sets\n"
            f"- test SRCC {m['test']['srcc']['median']:.3f}, test1080p SRCC {m['test1080p']['srcc']['median']:.3f} "
            f"(the synthetic signal is learnable)")
    report(f"Stage 2 streamed fit: {nbytes / 1e9:.0f} GB LSVQ-layout cache at memory_gb={args.memory_gb}", body, args,
           "streamed fit of an LSVQ-layout cache larger than memory_gb: peak RSS",
           f"{big['peak'] / 1e9:.2f} GB for {nbytes / 1e9:.0f} GB of cache at memory_gb={args.memory_gb} "
           f"({'<=' if ok else '>'} the budget + the model's {small['peak'] / 1e9:.2f} GB)")


# ---------------------------------------------------------------- ratio: streamed vs in-memory epochs
def part_ratio(cache_dir: Path, nbytes: int, args) -> None:
    import torch

    from diffvqa_cache.cache.folder import FeatureCache
    from diffvqa_cache.training.data import load_table
    from diffvqa_cache.training.loop import train
    from diffvqa_cache.training.regressor import DiffVQARegressor
    from diffvqa_cache.training.settings import FitConfig
    from diffvqa_cache.training.stream import StreamedTable

    threads = set_threads(args.threads)
    cfg = FitConfig().with_overrides({**TCAB_OFF, "train.epochs": args.ratio_epochs, "train.device": "cpu"})
    cache = FeatureCache(cache_dir)
    spec = cfg.load_spec(cache.config.pixel_size)
    for f in shard_files(cache_dir):  # warm: both paths read from the page cache
        subprocess.run(["cat", str(f)], stdout=subprocess.DEVNULL, check=True)
    t0 = time.perf_counter()
    sources = {"memory": load_table(cache, spec), "stream": StreamedTable(cache, spec, int(args.memory_gb * 1e9))}
    load_s = time.perf_counter() - t0
    train_idx = np.random.default_rng(0).permutation(len(cache))[: int(0.8 * len(cache))]
    epochs = {"memory": [], "stream": []}
    states, loads = {}, []
    for r in range(args.repeats):
        for path in (("memory", "stream") if r % 2 == 0 else ("stream", "memory")):
            torch.manual_seed(0)
            model = DiffVQARegressor(cfg.regressor, sources[path].feature_spec())
            res = train(model, sources[path].subset(train_idx), cfg.train, seed=0)
            epochs[path] += [h["seconds"] for h in res.history]
            states.setdefault(path, model.state_dict())
            loads.append(loadavg().split()[0])
            print(path, [round(h["seconds"], 1) for h in res.history], f"load {loadavg()}", flush=True)
    same = all(torch.equal(a, b) for a, b in zip(states["memory"].values(), states["stream"].values()))
    med = {p: statistics.median(v) for p, v in epochs.items()}
    rows = [[p, len(train_idx), " ".join(f"{x:.1f}" for x in v), med[p]] for p, v in epochs.items()]
    t = table(["data path", "train videos", "epoch seconds (all)", "median s"], rows)
    body = (f"{len(cache)} videos x {SHAPES}, {nbytes / 1e9:.2f} GB on disk, warm page cache. Default regressor and "
            f"TrainConfig with TCAB off, batch 16, seed 0, torch threads {threads}; {args.repeats} trainings of "
            f"{args.ratio_epochs} epochs per path, alternating which goes first. Streamed read-ahead budget "
            f"{args.memory_gb} GB. The memory table took {load_s:.0f} s to load (not part of an epoch). "
            f"1-min load average after each training: {' '.join(loads)}.\n\n{t}\n\n"
            f"- streamed / in-memory median epoch time: **{med['stream'] / med['memory']:.3f}** (goal <= 1.25)\n"
            f"- the two trained models are {'bit-identical' if same else 'NOT identical'} (same seed, same batches)")
    report("Stage 2 streamed fit: streamed vs in-memory epoch time", body, args,
           "streamed / in-memory epoch time (goal <= 1.25)",
           f"{med['stream'] / med['memory']:.3f}, models {'bit-identical' if same else 'NOT identical'}")


# ---------------------------------------------------------------- cold: streamed read rate vs dd
def part_cold(cache_dir: Path, args) -> None:
    from diffvqa_cache.cache.folder import FeatureCache
    from diffvqa_cache.training.settings import FitConfig
    from diffvqa_cache.training.stream import StreamedTable

    cache, files = FeatureCache(cache_dir), shard_files(cache_dir)
    file_bytes = sum(f.stat().st_size for f in files)
    # what a default fit reads: both branches, all levels, latent, and the pixels at the cache's size
    spec = FitConfig().load_spec(cache.config.pixel_size)
    rows, notes = [], []
    for rep in range(args.repeats):
        notes.append(evict(files))
        src = StreamedTable(cache, spec, int(args.memory_gb * 1e9))
        per_video = sum(p.block_bytes for p in src._src.shapes.values()) * src._src.num_frames
        order = np.random.default_rng(rep).permutation(len(cache))
        plan = [(order[s:s + 16], 0) for s in range(0, len(order), 16)]
        t0 = time.perf_counter()
        for _ in src.batches(plan, "cpu"):
            pass
        stream_s, stream_load = time.perf_counter() - t0, loadavg()
        notes.append(evict(files))
        t0 = time.perf_counter()
        for f in files:
            subprocess.run(["dd", f"if={f}", "of=/dev/null", "bs=16M"], check=True, capture_output=True)
        dd_s = time.perf_counter() - t0
        stream_rate, dd_rate = len(cache) * per_video / stream_s, file_bytes / dd_s
        rows.append([rep + 1, len(cache) * per_video / 1e9, stream_s, stream_rate / 1e9, file_bytes / 1e9, dd_s,
                     dd_rate / 1e9, stream_rate / dd_rate, f"{stream_load} / {loadavg()}"])
        print(rows[-1], flush=True)
    t = table(["rep", "streamed GB", "streamed s", "streamed GB/s", "dd GB", "dd s", "dd GB/s", "ratio",
               "load avg (stream / dd)"], rows)
    ratio = statistics.median(r[7] for r in rows)
    body = (f"{len(cache)} videos x {SHAPES}, {file_bytes / 1e9:.1f} GB in {len(files)} shards. Streamed: one pass "
            f"in random video order, batches of 16, a default fit's selection (every dataset but frame_index and "
            f"crop_origin; TCAB's pixels at the cache's 224 px), latents pooled as for training, no model; GB "
            f"counts the rows read. dd: the same "
            f"files one after the other, bs=16M. Page cache emptied before each pass: {notes[0]}.\n\n{t}\n\n"
            f"- streamed / sequential read rate, median: **{ratio:.2f}** (goal >= 0.7)")
    report("Stage 2 streamed fit: cold-cache read rate vs dd", body, args,
           "streamed / dd read rate, cold page cache (goal >= 0.7)", f"{ratio:.2f} (median of {len(rows)} passes)")


# ---------------------------------------------------------------- sweep: 2 workers share the budget
GRID = """base: {regressor.use_tcab: false, train.epochs: 1, num_frames: 4}
configs:
  - name: full
  - name: no_tdm
    regressor.use_tdm: false
  - name: levels_0_1
    regressor.ms_levels: [0, 1]
  - name: grid_4
    grid: 4
"""


def part_sweep(root: Path, cache_dir: Path, args) -> None:
    from pipelines.sweep import run_sweep

    grid = root / "grid.yaml"
    grid.write_text(GRID)
    shutil.rmtree(root / "sweep", ignore_errors=True)  # a sweep skips tasks done before: start afresh
    t0 = time.perf_counter()
    result = run_sweep(cache_dir, grid, root / "sweep", workers=2, progress=False,
                       overrides={"protocol": "random", "splits": 2, "memory_gb": args.memory_gb})
    wall = time.perf_counter() - t0
    tasks = [json.loads(p.read_text()) for p in sorted((root / "sweep" / "tasks").glob("*.json"))]
    per_worker: dict = {}
    for t in tasks:
        per_worker[t["worker"]] = max(per_worker.get(t["worker"], 0), t.get("peak_rss_gb") or 0)
    rows = [[t["config"], t["split"], t.get("data", {}).get("path"), t.get("data", {}).get("need_gb"),
             t.get("data", {}).get("budget_gb"), t["seconds"], t["worker"].split(":")[-1], t.get("peak_rss_gb"),
             "ok" if not t["error"] else t["error"][:60]] for t in tasks]
    tt = table(["config", "split", "data path", "in-memory need GB", "budget GB", "task s", "worker pid",
                "worker peak RSS GB (so far)", "status"], rows)
    share = args.memory_gb / 2
    body = (f"`run_sweep(workers=2, memory_gb={args.memory_gb})` on the big cache: 4 configurations (TCAB off, 1 epoch, "
            f"4 frames) x 2 random splits, LocalCluster of 2 worker processes sharing the budget "
            f"({share:.2f} GB each); {len(tasks)} tasks, {len(result.failed)} failed, {wall:.0f} s wall; load average "
            f"at the end {loadavg()}.\n\n{tt}\n\n- worker peak RSS (GB): "
            + ", ".join(f"{w.split(':')[-1]}: {p:.2f}" for w, p in per_worker.items())
            + f"; per-worker budget {share:.2f} GB + the model (see the LSVQ section: the fit's model baseline)")
    report("Stage 2 streamed fit: sweep of 4 configs x 2 splits on 2 workers within the budget", body, args,
           "sweep on 2 workers sharing memory_gb: worker peak RSS",
           ", ".join(f"{p:.2f}" for p in per_worker.values()) + f" GB at memory_gb={args.memory_gb} "
           f"({len(result.failed)} of {len(tasks)} tasks failed)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", type=Path, required=True, help="work folder for the caches and runs")
    ap.add_argument("--parts", nargs="+", default=["ratio", "big", "cold", "sweep"])
    ap.add_argument("--videos", type=int, default=1200, help="videos of the big (LSVQ-layout) cache")
    ap.add_argument("--ratio-videos", type=int, default=240, help="videos of the cache that fits (ratio)")
    ap.add_argument("--memory-gb", type=float, default=3.0)
    ap.add_argument("--epochs", type=int, default=2, help="epochs of the big fit")
    ap.add_argument("--ratio-epochs", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the ratio part")
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--no-append", action="store_true")
    args = ap.parse_args()
    args.info = machine_info()
    from diffvqa_cache.synthetic import LSVQ_SPLITS

    args.root.mkdir(parents=True, exist_ok=True)
    try:
        if "ratio" in args.parts:
            cache_dir, nbytes, _ = synthetic(args.root / "fits", args.ratio_videos)
            part_ratio(cache_dir, nbytes, args)
            shutil.rmtree(args.root / "fits", ignore_errors=True)
        if {"big", "cold", "sweep"} & set(args.parts):
            found = sorted((args.root / "big").glob("*/*/config.json"))
            if found:
                cache_dir = found[0].parent
                nbytes, gen_s = sum(f.stat().st_size for f in shard_files(cache_dir)), float("nan")
            else:
                cache_dir, nbytes, gen_s = synthetic(args.root / "big", args.videos, LSVQ_SPLITS)
            if "big" in args.parts:
                part_big(args.root, cache_dir, nbytes, gen_s, args)
            if "cold" in args.parts:
                part_cold(cache_dir, args)
            if "sweep" in args.parts:
                part_sweep(args.root, cache_dir, args)
    finally:
        if not args.keep:
            shutil.rmtree(args.root, ignore_errors=True)


if __name__ == "__main__":
    main()
