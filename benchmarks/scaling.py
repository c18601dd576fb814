"""Scaling of the dask paths on this machine: extraction and an ablation sweep with 1 and 2 worker processes.

    OMP_NUM_THREADS=1 python benchmarks/scaling.py [--videos 40] [--epochs 10] [--workers 1 2]

Extraction: the embedded sample, tiny model (the test settings); the in-process run is the baseline.
Sweep: 4 configurations x 2 random splits over that cache. Workers are started and warmed (imports)
before timing, so the numbers are the work itself. Prints a table and appends a dated section to
BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GRID = """base: {regressor.use_tcab: false, train.batch_size: 8}
configs:
  - name: full
  - name: no_tdm
    regressor.use_tdm: false
  - name: no_latent
    regressor.use_latent: false
  - name: S_only
    regressor.branches: S
"""


def _warm():
    import diffusers  # noqa: F401  (stage one's import cost, paid once per worker)

    import pipelines.extract  # noqa: F401
    import pipelines.fit  # noqa: F401


def _cluster(n: int):
    from distributed import Client, LocalCluster

    cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=":0")
    client = Client(cluster)
    client.run(_warm)
    return cluster, client


def _burn(n: int = 10_000_000) -> None:
    s = 0
    for i in range(n):
        s += i


def cpu_control() -> tuple[float, float]:
    """Wall time of a fixed pure-Python loop in 1 process, and of the same loop in each of 2 at once:
    on an idle 2-core machine they are equal; on a shared or busy one the second is larger."""
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(2) as pool:
        list(pool.map(_burn, [1000, 1000]))  # start both processes
        t = time.perf_counter()
        pool.submit(_burn).result()
        one = time.perf_counter() - t
        t = time.perf_counter()
        list(pool.map(_burn, [10_000_000] * 2))
        two = time.perf_counter() - t
    return one, two


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--videos", type=int, default=40, help="sample videos to extract (of 78)")
    ap.add_argument("--epochs", type=int, default=10, help="training epochs per sweep task")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--no-write", action="store_true", help="print only, do not append to BENCHMARKS.md")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(1)
    from diffvqa_cache.cache.settings import ExtractConfig
    from diffvqa_cache.datasets import load_dataset
    from diffvqa_cache.datasets.sample import ensure_sample
    from pipelines.extract import run_extract
    from pipelines.sweep import run_sweep

    ensure_sample()
    cfg = ExtractConfig(model="tiny", steps=1, strength=0.5, frames=2, crops=2, grid=4, pixel_size=32, shard_size=2,
                        batch_size=6, decode_workers=1)
    index = load_dataset("sample", None, limit=args.videos)
    work = Path(tempfile.mkdtemp(prefix="diffvqa-scaling-"))
    rows = []
    load0 = os.getloadavg()[0]
    one, two = cpu_control()
    rows += [("control: CPU loop", "1 loop", "1 process", one), ("control: CPU loop", "2 loops", "2 processes", two)]
    try:
        _warm()
        t = time.perf_counter()
        base = run_extract(index, cfg, work / "single", progress=False)
        rows.append(("extract", f"{len(index.records)} videos", "in-process", time.perf_counter() - t))
        grid = work / "grid.yaml"
        grid.write_text(GRID)
        n_tasks = 8
        t = time.perf_counter()
        run_sweep(base.cache_dir, grid, work / "sweep-serial", serial=True,
                  overrides={"splits": 2, "train.epochs": args.epochs}, progress=False)
        rows.append(("sweep", f"{n_tasks} tasks", "serial", time.perf_counter() - t))
        for n in args.workers:
            cluster, client = _cluster(n)
            try:
                t = time.perf_counter()
                res = run_extract(index, cfg, work / f"dask{n}", progress=False, client=client)
                rows.append(("extract", f"{len(index.records)} videos", f"{n} worker(s)", time.perf_counter() - t))
                same = {s["sha256"] for s in res.manifest["shards"]} == {s["sha256"] for s in base.manifest["shards"]}
                assert same, "distributed shards differ from the in-process ones"
                t = time.perf_counter()
                run_sweep(base.cache_dir, grid, work / f"sweep{n}", scheduler_address=client.scheduler.address,
                          overrides={"splits": 2, "train.epochs": args.epochs}, progress=False)
                rows.append(("sweep", f"{n_tasks} tasks", f"{n} worker(s)", time.perf_counter() - t))
            finally:
                client.close()
                cluster.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    ref = {stage: s for stage, _, how, s in rows if how in ("in-process", "serial", "1 process")}
    work = {"2 processes": 2}  # the control does twice the work in its second row
    table = ["| stage | work | run | wall s | speed-up (throughput) |", "| --- | --- | --- | --- | --- |"]
    table += [f"| {stage} | {what} | {how} | {s:.1f} | {work.get(how, 1) * ref[stage] / s:.2f}x |"
              for stage, what, how, s in rows]
    print("\n".join(table))
    if not args.no_write:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from _common import append_section, machine_info, update_current

        info = machine_info()
        body = "\n".join([
            f"- CPU: {_cpu_name()}, {platform.system()} {platform.release()}; torch threads 1 (OMP_NUM_THREADS=1)",
            f"- extraction: tiny model, steps 1, 2 frames, 2 crops, shard_size 2; sweep: 4 configs x 2 splits, "
            f"{args.epochs} epochs, TCAB off; workers warmed (imports) before timing; shards checked bit-identical",
            f"- load average before the run: {load0:.1f} (other processes share these cores; the "
            "control rows show the parallel capacity that was actually available: 2.00x on an idle 2-core machine)",
            "", *table])
        append_section("Scaling of the dask paths", body, info)
        wall = {(stage, how): s for stage, _, how, s in rows}
        if ("sweep", "2 worker(s)") in wall and ("sweep", "1 worker(s)") in wall:
            speed = {st: wall[(st, "1 worker(s)")] / wall[(st, "2 worker(s)")] for st in ("extract", "sweep")}
            update_current("2 vs 1 dask workers (control: the CPU loop in the same run)",
                           f"sweep {speed['sweep']:.2f}x, extraction {speed['extract']:.2f}x (control loop "
                           f"{2 * one / two:.2f}x), {len(index.records)} videos", info=info)

if __name__ == "__main__":
    main()
