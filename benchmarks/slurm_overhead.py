"""What the SLURM paths cost on this machine: one local process vs 1- and 2-part arrays and dask-jobqueue workers.

    python benchmarks/slurm_overhead.py [--videos 24] [--parts 1 2] [--dask-jobs 2] [--repeats 3] [--no-write]

Starts its own one-node SLURM (tests/slurm.py; root, Debian's slurm-wlm and munge) unless SLURM_CONF
points at a running one. Each route extracts the same sample videos (tiny model, test settings, one
video per shard, 1 CPU per part or worker job) into a fresh folder: `diffvqa-cache extract` as one local
process (OMP_NUM_THREADS=1, like a 1-CPU job; dask workers run torch on one thread too), then
`cluster slurm --jobs N --submit` (the array and its finishing job), then `extract --cluster slurm --jobs N`
(dask-jobqueue worker jobs submitted, used and cancelled by the command). Times run from the start of
the command; "first video" is the first complete shard.
Routes are interleaved (local, arrays, local, ...) `--repeats` times and the median of each column is
reported, so a change in the machine's load hits all routes alike. Checks that every route wrote the
same shard bytes. Prints a table and appends it to BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import ROOT, append_section, machine_info, table, update_current

sys.path.insert(0, str(ROOT / "tests"))
from slurm import LocalSlurm  # noqa: E402

BIN = Path(sys.executable).parent / "diffvqa-cache"
SETTINGS = ["--dataset", "sample", "--steps", "1", "--strength", "0.5", "--frames", "2", "--crops", "1",
            "--grid", "4", "--pixel-size", "32", "--shard-size", "1"]
JOB = ["--gpus-per-job", "0", "--cpus-per-job", "1", "--mem", "1GB", "--walltime", "0:30:00"]
DASK_JOB = ["--gpus-per-job", "0", "--cpus-per-job", "1", "--mem", "2GB", "--walltime", "0:30:00"]


def first_shard(out: Path) -> bool:
    return any(out.glob("sample/*/shards/shard-*.json"))


def shard_sums(out: Path) -> dict[str, str]:
    manifest = json.loads(next(out.glob("sample/*/manifest.json")).read_text())
    return {s["file"]: s["sha256"] for s in manifest["shards"]}


def run_local(work: Path, videos: int) -> dict:
    out = work / "local"
    shutil.rmtree(out, ignore_errors=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    t0 = time.perf_counter()
    proc = subprocess.Popen([str(BIN), "extract", *SETTINGS, "--limit", str(videos), "--out", str(out)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = None
    while proc.poll() is None:
        if first is None and first_shard(out):
            first = time.perf_counter() - t0
        time.sleep(0.02)
    assert proc.returncode == 0, "local extract failed"
    total = time.perf_counter() - t0
    return {"route": "local process", "submit": float("nan"), "start": float("nan"),
            "first": first if first is not None else total, "parts": total, "total": total, "out": out}


def run_array(work: Path, videos: int, parts: int, slurm: LocalSlurm) -> dict:
    """`cluster slurm --submit`, polled from its start: a task running, first shard, array and finishing job done.

    The cluster is this script's alone while a route runs, so any job in the queue is this route's."""
    folder = work / f"array{parts}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    out = folder / "cache"
    cmd = [str(BIN), "cluster", "slurm", "--jobs", str(parts), *JOB, *SETTINGS, "--limit", str(videos),
           "--out", str(out), "--submit"]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=folder, env=slurm.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    times: dict[str, float] = {}
    while True:
        now = time.perf_counter() - t0
        if "submit" not in times and proc.poll() is not None:
            times["submit"] = now
        queue = [line.split() for line in slurm.run("squeue", "-h", "-o", "%j %t", check=False).splitlines()]
        if "start" not in times and any(name.endswith("-extract") and st == "R" for name, st in queue):
            times["start"] = now
        if "first" not in times and first_shard(out):
            times["first"] = now
        if "submit" in times and "parts" not in times and not any(n.endswith("-extract") for n, _ in queue):
            times["parts"] = now
        if "submit" in times and not queue:
            break
        time.sleep(0.02)
    times["total"] = time.perf_counter() - t0
    stdout, stderr = proc.communicate()
    assert proc.returncode == 0, stderr
    ids = [re.search(pattern + r" (\d+)", stdout).group(1) for pattern in ("job array", "finishing job")]
    bad = [s for j in ids for s in slurm.states(j) if s != "COMPLETED"]
    assert not bad, f"jobs ended {bad}; see {folder / 'logs'}"
    return {"route": f"array of {parts}", **times, "out": out}


def run_dask(work: Path, videos: int, jobs: int, slurm: LocalSlurm) -> dict:
    """`extract --cluster slurm --jobs N`, polled from its start: a worker job running, first shard, the command's
    end (it writes the manifest itself), then its jobs gone from the queue."""
    folder = work / f"dask{jobs}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    out = folder / "cache"
    cmd = [str(BIN), "extract", *SETTINGS, "--limit", str(videos), "--out", str(out), "--cluster", "slurm",
           "--jobs", str(jobs), *DASK_JOB]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=folder, env=slurm.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    times: dict[str, float] = {}
    while proc.poll() is None:
        now = time.perf_counter() - t0
        if "start" not in times and "R" in slurm.run("squeue", "-h", "-o", "%t", check=False).split():
            times["start"] = now
        if "first" not in times and first_shard(out):
            times["first"] = now
        time.sleep(0.02)
    times["parts"] = times["total"] = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stderr.read()
    slurm.wait(timeout=60)  # the command cancelled its worker jobs
    return {"route": f"{jobs} dask-jobqueue workers", "submit": float("nan"), **times, "out": out}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--videos", type=int, default=24, help="sample videos (one per shard)")
    ap.add_argument("--parts", type=int, nargs="+", default=[1, 2], help="array sizes to time")
    ap.add_argument("--dask-jobs", type=int, nargs="*", default=[2], help="dask-jobqueue worker job counts to time")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved rounds; medians are reported")
    ap.add_argument("--no-write", action="store_true", help="print only, do not append to BENCHMARKS.md")
    args = ap.parse_args()

    info = machine_info()
    work = Path(tempfile.mkdtemp(prefix="diffvqa-slurm-bench-"))
    os.environ.setdefault("DIFFVQA_CACHE_HOME", str(work / "home"))  # jobs inherit it (sbatch exports all)
    from diffvqa_cache.datasets.sample import ensure_sample

    ensure_sample()
    own = None if os.environ.get("SLURM_CONF") else LocalSlurm(work / "slurm").start()
    slurm = own or LocalSlurm(Path(os.environ["SLURM_CONF"]).parent)
    runs: dict[str, list[dict]] = {}
    try:
        for _ in range(args.repeats):
            for r in [run_local(work, args.videos)] + [run_array(work, args.videos, n, slurm) for n in args.parts] \
                    + [run_dask(work, args.videos, n, slurm) for n in args.dask_jobs]:
                runs.setdefault(r["route"], []).append({**r, "sums": shard_sums(r["out"])})
    finally:
        if own is not None:
            own.stop()
        shutil.rmtree(work, ignore_errors=True)
    sums = [r["sums"] for rs in runs.values() for r in rs]
    assert all(s == sums[0] for s in sums) and len(sums[0]) == args.videos, "routes wrote different shards"
    cols = ("submit", "start", "first", "parts", "total")
    rows = [{"route": route, **{c: statistics.median(r.get(c, float("nan")) for r in rs) for c in cols}}
            for route, rs in runs.items()]
    local = rows[0]["total"]
    body = table(["route", "submit cmd s", "to running s", "to first video s", "parts done s",
                  "with finishing job s", "videos/s", "wall vs local"],
                 [[r["route"], r["submit"], r["start"], r["first"], r["parts"], r["total"],
                   args.videos / r["parts"], r["total"] / local] for r in rows])
    print(body)
    if not args.no_write:
        note = (f"Median of {args.repeats} interleaved rounds. {args.videos} sample videos, tiny model (steps 1, "
                "2 frames, 1 crop, grid 4), one video per shard; "
                "1 CPU per part (OMP_NUM_THREADS=1), the local process likewise; all routes wrote the same shard "
                "bytes. Times from the start of the command (`extract`, or `cluster slurm --jobs N --submit`); "
                "'to running': first task RUNNING in squeue; 'first video': first complete shard; 'parts done': "
                "the array left the queue; then the finishing job (a second process start, nothing left to "
                "extract) writes the manifest. dask-jobqueue workers: `extract --cluster slurm --jobs N` (1 CPU, "
                "2GB per job, one worker of one thread each): 'to running': a worker job RUNNING; 'parts done' and "
                "'with finishing job': the command's end (it writes the manifest itself, then cancels its jobs). "
                "SLURM: the tests' one-node conf (tests/slurm.py, batch_sched_delay=0). This machine is shared "
                "(see the load averages).\n\n")
        append_section("SLURM overhead: job arrays and dask-jobqueue workers vs one local process", note + body, info)
        update_current("SLURM routes vs one local process, wall time",
                       ", ".join(f"{r['route']} {r['total'] / local:.2f}x" for r in rows[1:])
                       + f" ({args.videos} videos, tiny model)", info=info)


if __name__ == "__main__":
    main()
