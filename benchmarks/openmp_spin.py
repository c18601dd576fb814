"""OpenMP spin: fit epochs (TCAB off / on, 224 px, CPU) under three ways torch's idle OpenMP threads wait.

torch's GNU OpenMP threads spin 300,000 times after each parallel op by default. The compiled Mamba kernels run
in threads of their own, which share the cores with those spinning threads; a shorter spin or none frees them, but
costs a wake-up at every parallel op of plain torch work. This measures both on fits, to decide which setting fits
and `predict` run with (diffvqa_cache/openmp.py). Each fit runs in its own process (the runtime reads the setting
when torch loads) with `benchmarks/tcab_cpu.py --child` on one synthetic SD-size cache; policies and models
alternate in `--repeats` rounds so that load changes hit all; medians of all epochs.

    python benchmarks/openmp_spin.py                       # 16 videos, 4 epochs, 4 rounds
    python benchmarks/openmp_spin.py --videos 32 --repeats 6
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from _common import append_section, loadavg, machine_info, table, update_current  # noqa: E402
from tcab_cpu import fit_in_child  # noqa: E402

POLICIES = {  # name: environment
    "torch's default (300,000 spins)": {},
    "GOMP_SPINCOUNT=10000 (a short spin)": {"GOMP_SPINCOUNT": "10000"},
    "OMP_WAIT_POLICY=PASSIVE (no spin)": {"OMP_WAIT_POLICY": "PASSIVE"},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--videos", type=int, default=16)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-append", action="store_true")
    ap.set_defaults(splits=1)  # (fit_in_child's fits: one split)
    args = ap.parse_args()
    from diffvqa_cache.openmp import USER_KNOBS
    from diffvqa_cache.synthetic import write_synthetic_cache

    info = machine_info()
    load_start = loadavg()
    here = Path(__file__).resolve().parent.parent  # this checkout
    base_env = {k: v for k, v in os.environ.items() if k not in USER_KNOBS}
    work = Path(tempfile.mkdtemp(prefix="openmp-spin-"))
    epochs = {(model, policy): [] for model in ("TCAB off", "TCAB on") for policy in POLICIES}
    try:
        cache = write_synthetic_cache(work / "cache", args.videos, frames=8, pixel_size=224).cache_dir
        for r in range(args.repeats):
            for model, policy in epochs:
                epochs[model, policy] += fit_in_child(f"{model}, {policy}", here, model, cache, work / "run", args,
                                                      {**base_env, **POLICIES[policy]})["epochs"]
                print(r, model, policy, epochs[model, policy][-args.epochs:], loadavg(), flush=True)
                shutil.rmtree(work / "run", ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    med = {key: statistics.median(v) for key, v in epochs.items()}
    default = next(iter(POLICIES))
    rows = [[policy, med["TCAB off", policy], med["TCAB on", policy], med["TCAB on", policy] / med["TCAB off", policy],
             med["TCAB off", policy] / med["TCAB off", default], med["TCAB on", policy] / med["TCAB on", default]]
            for policy in POLICIES]
    text = table(["OpenMP wait", "TCAB off epoch s", "TCAB on epoch s", "on / off", "off vs default",
                  "on vs default"], rows)
    print(text)
    body = (f"Fits on a synthetic SD-size cache of {args.videos} videos x 8 frames (224 px), the fit defaults except 1 "
            f"split x {args.epochs} epochs, torch threads {args.threads}, each fit in its own process, {args.repeats} "
            f"alternating rounds; medians of the {args.epochs * args.repeats} epochs of each row. Load average at the "
            f"start: {load_start}.\n\n{text}")
    if not args.no_append:
        append_section("OpenMP spin: how torch's idle threads wait, fit epochs on the CPU", body, info)
        update_current("fit epochs at 224 px under torch's default OpenMP spin / GOMP_SPINCOUNT=10000 / PASSIVE",
                       "; ".join(f"{r[0].split(' (')[0]}: TCAB off {r[4]:.2f}x, on {r[5]:.2f}x, on / off {r[3]:.2f}"
                                 for r in rows), info=info)


if __name__ == "__main__":
    main()
