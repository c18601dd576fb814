"""TCAB on the CPU at 224 px: the Mamba selective scan alone, and whole fits with TCAB off / on, on the
pure-PyTorch path (DIFFVQA_MAMBA_SCAN=torch) and on the compiled kernels (regressor/scan_cpu.py, mamba_cpu.py),
optionally beside an older checkout's fits (--baseline-tree).

1. Scan: one selective scan at TCAB's shapes (L = 196 tokens x 8 frames = 1568, d_inner 192, d_state 16),
   forward + backward and inference, each path; peak memory of the step measured as the growth of this
   process's peak RSS is unreliable in one process, so the scan table reports time only.
2. Fits: a synthetic SD-size cache (`write_synthetic_cache`, pixels 224, 8 frames), `run_fit` with the fit
   defaults except `--splits` and `--epochs`, each configuration in its own process (so that peak RSS is
   that fit's); epoch seconds from the training history (median), peak RSS of the process.
   Configurations alternate in `--repeats` rounds, so load changes hit all of them.

    python benchmarks/tcab_cpu.py                                   # 32 videos, 1 split, 2 epochs
    python benchmarks/tcab_cpu.py --videos 96 --repeats 2 --threads 1
    python benchmarks/tcab_cpu.py --baseline-tree /tmp/old --no-torch-scan   # vs an older checkout, same run
    python benchmarks/tcab_cpu.py --videos 16 --epochs 3 --repeats 3 --scan-batch 2 --no-torch-scan --baseline-tree /tmp/old
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from _common import append_section, loadavg, machine_info, maxrss_mb, set_threads, table, update_current  # noqa: E402

CONFIGS = {  # name: (use_tcab, DIFFVQA_MAMBA_SCAN)
    "TCAB off": (False, "auto"),
    "TCAB on, pure-PyTorch path": (True, "torch"),
    "TCAB on, compiled kernels": (True, "compiled"),
}


def _commit(tree: str) -> str:
    """The short commit a checkout is at (for the record, instead of its path)."""
    out = subprocess.run(["git", "-C", tree, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return out.stdout.strip() or "an unknown commit"


def child(args) -> None:
    """One fit in this process; prints a JSON line with epoch seconds, fit seconds and peak RSS."""
    set_threads(args.threads)
    from diffvqa_cache.training.settings import FitConfig
    from pipelines.fit import run_fit

    use_tcab = not args.child.startswith("TCAB off")
    cfg = FitConfig().with_overrides({"splits": args.splits, "train.epochs": args.epochs, "train.device": "cpu",
                                      "regressor.use_tcab": use_tcab})
    out = Path(args.run_dir)
    t0 = time.perf_counter()
    res = run_fit(Path(args.cache_dir), out, cfg, progress=False)
    fit_s = time.perf_counter() - t0
    epochs = []
    for split in res["splits"]:
        meta = json.loads((out / "state" / f"{split['split']}.json").read_text()) if (out / "state").is_dir() else None
        if meta:
            epochs += [h["seconds"] for h in meta["history"]]
    print("RESULT " + json.dumps({"epochs": epochs, "fit": fit_s, "rss_mb": maxrss_mb()}), flush=True)


def fit_in_child(label: str, tree: Path, child_name: str, cache_dir: Path, run_dir: Path, args, env: dict) -> dict:
    """One `child` fit (`args.splits`, `args.epochs`, `args.threads`) by `tree`'s copy of this script in a process
    of its own with `env`: {"epochs": [s, ...], "fit": s, "rss_mb": MB}."""
    cmd = [sys.executable, str(tree / "benchmarks" / "tcab_cpu.py"), "--child", child_name, "--cache-dir",
           str(cache_dir), "--run-dir", str(run_dir), "--splits", str(args.splits), "--epochs", str(args.epochs),
           "--threads", str(args.threads)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode or not line:
        raise SystemExit(f"{label} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(line[0][len("RESULT "):])


def scan_table(threads: int, batch: int, repeats: int) -> list[list]:
    import torch

    from diffvqa_cache.training.regressor import scan_cpu
    from diffvqa_cache.training.regressor.mamba import selective_scan_inference, selective_scan_parallel

    set_threads(threads)
    d, n, length = 192, 16, 1568
    g = torch.Generator().manual_seed(0)
    x = dict(u=torch.randn(batch, d, length, generator=g), delta=torch.randn(batch, d, length, generator=g) - 3,
             A=-torch.arange(1, n + 1).float().repeat(d, 1), B=torch.randn(batch, n, length, generator=g),
             C=torch.randn(batch, n, length, generator=g), D=torch.ones(d), z=torch.randn(batch, d, length, generator=g))
    for t in x.values():
        t.requires_grad_(True)

    def train_step(fn):
        fn(**x).sum().backward()

    def infer(fn):
        with torch.no_grad():
            fn(**x)

    paths = [("train (fwd+bwd)", "before: mambapy pscan under autograd", train_step, selective_scan_parallel),
             ("train (fwd+bwd)", "after: compiled, hand-written backward", train_step, scan_cpu.selective_scan_compiled),
             ("inference", "before: in-place sequential torch loop", infer, selective_scan_inference),
             ("inference", "after: compiled", infer, scan_cpu.selective_scan_compiled)]
    rows, base = [], {}
    for what, name, run, fn in paths:
        run(fn)  # warm-up (and the kernel build)
        ts = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            run(fn)
            ts.append(time.perf_counter() - t0)
        med = statistics.median(ts)
        base.setdefault(what, med)
        rows.append([what, name, med, base[what] / med])
        print(rows[-1], f"load {loadavg()}", flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--videos", type=int, default=32)
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--splits", type=int, default=1)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=1, help="rounds of the three fits (alternating)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--scan-batch", type=int, default=4, help="batch of the scan timing (0: skip it)")
    ap.add_argument("--baseline-tree", help="also fit TCAB off / on (compiled) with the code of this checkout "
                                            "(e.g. `git archive REV | tar -x -C DIR`): before/after in one run")
    ap.add_argument("--no-torch-scan", action="store_true", help="skip the (slow) pure-PyTorch scan fit")
    ap.add_argument("--no-append", action="store_true")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--cache-dir", help=argparse.SUPPRESS)
    ap.add_argument("--run-dir", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return
    info = machine_info()
    load_start = loadavg()
    scan_rows = scan_table(args.threads, args.scan_batch, 3) if args.scan_batch else []

    from diffvqa_cache.synthetic import write_synthetic_cache

    work = Path(tempfile.mkdtemp(prefix="tcab-cpu-"))
    here = str(Path(__file__).resolve().parent.parent)
    configs = {name: (scan, here, name) for name, (_, scan) in CONFIGS.items()
               if not (args.no_torch_scan and scan == "torch")}
    if args.baseline_tree:
        base = str(Path(args.baseline_tree).resolve())
        configs = {"TCAB off (baseline tree)": ("auto", base, "TCAB off"),
                   "TCAB on, compiled (baseline tree)": ("compiled", base, "TCAB on, after (compiled scan)"), **configs}
    results = {name: [] for name in configs}
    try:
        made = write_synthetic_cache(work / "cache", args.videos, frames=args.frames, pixel_size=224)
        for r in range(args.repeats):
            for name, (scan, tree, child_name) in configs.items():
                run_dir = work / f"run-{r}-{len(results[name])}-{scan}"
                env = {**os.environ, "DIFFVQA_MAMBA_SCAN": scan,
                       "PYTHONPATH": os.pathsep.join([tree, os.environ.get("PYTHONPATH", "")])}
                res = fit_in_child(name, Path(tree), child_name, made.cache_dir, run_dir, args, env)
                res["load"] = loadavg()
                results[name].append(res)
                print(name, res, flush=True)
                shutil.rmtree(run_dir, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    def med(name, key):
        vals = [statistics.median(r["epochs"]) if key == "epoch" else r[key] for r in results[name]]
        return statistics.median(vals)

    def off(name):  # ratios against this tree's TCAB-off fit; the baseline tree's rows against its own
        return "TCAB off (baseline tree)" if "baseline" in name else "TCAB off"

    fit_rows = [[name, med(name, "epoch"), med(name, "epoch") / med(off(name), "epoch"), med(name, "fit"),
                 med(name, "rss_mb") / 1e3, med(name, "rss_mb") / med(off(name), "rss_mb"),
                 " / ".join(r["load"] for r in results[name])] for name in configs]
    t_scan = table(["work", "scan", "seconds (median of 3)", "speed-up"], scan_rows) if scan_rows else ""
    t_fit = table(["fit", "epoch s (median)", "epoch / TCAB-off epoch", "run_fit s", "peak RSS GB",
                   "peak RSS / TCAB-off", "load average after"], fit_rows)
    print(t_scan, "", t_fit, sep="\n")
    scan_text = (f"Scan: one selective scan at TCAB's 224 px shapes (batch {args.scan_batch}, d_inner 192, d_state "
                 f"16, L = 1568), float32, torch threads {args.threads}.\n\n{t_scan}\n\n" if scan_rows else "")
    baseline = (f" Baseline tree: a checkout of {_commit(args.baseline_tree)} (its rows' ratios are against its own "
                f"TCAB-off fit)." if args.baseline_tree else "")
    body = (scan_text + f"Fits: synthetic SD-size cache of {args.videos} videos x {args.frames} frames (S + D, grid 8, SD "
            f"channels, latent 4x64x64, pixels 224), `run_fit` with the fit defaults (TCAB at the cache's 224 px: "
            f"196 tokens a frame) except {args.splits} split(s) x {args.epochs} epochs, each fit in its own "
            f"process, torch threads {args.threads}, {args.repeats} alternating round(s). Goals: epoch ratio "
            f"<= 3, peak RSS ratio <= 2.{baseline} Load average at the start: {load_start}.\n\n{t_fit}")
    if not args.no_append:
        title = ("TCAB on the CPU: this checkout vs a baseline checkout" if args.baseline_tree
                 else "TCAB on the CPU: compiled Mamba scan vs the pure-PyTorch scan")
        append_section(title, body, info)
        on = [r for r in fit_rows if r[0].startswith("TCAB on")]
        update_current("TCAB on vs off at 224 px on the CPU: epoch time ratio, peak RSS ratio (goals <= 3, <= 2)",
                       "; ".join(f"{r[0]}: epoch {r[2]:.2f}, peak RSS {r[5]:.2f}" for r in on), info=info)
        if scan_rows:
            update_current("selective scan at TCAB's shapes, compiled vs pure PyTorch",
                           ", ".join(f"{r[0]} {r[3]:.1f}x faster" for r in scan_rows if r[1].startswith("after")),
                           info=info)


if __name__ == "__main__":
    main()
