"""Stage 2 speed on a KoNViD-size synthetic cache: load time, epoch time vs the bare model, peak memory,
and a whole 10-split protocol, with TCAB off and on.

The cache (default 1200 videos x 8 frames, S + D, grid 8 with SD channel counts, latent 4x64x64, pixels
224) is written with `cache.write_shard` + labels.csv + config.json + `CacheDir.write_manifest`, exactly as
extraction does, so `run_fit` / `load_table` read it as a real cache; features carry a learnable signal
(an offset proportional to MOS). It is deleted at the end unless --keep.

Epoch ratio = (seconds of one `training.train` epoch) / (the same number of forward + loss + backward +
clip + AdamW steps on batches already built in memory, as float32 on the device): the data path's cost.

    python benchmarks/fit_speed.py                         # ~12 GB on disk while it runs
    python benchmarks/fit_speed.py --videos 300 --threads 1 --protocol-budget 120
"""

from __future__ import annotations

import argparse
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from _common import append_section, loadavg, machine_info, maxrss_mb, set_threads, table, update_current  # noqa: E402


def mem_available_gb() -> float:
    for line in open("/proc/meminfo"):
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 2**20
    return float("nan")


def bare_epoch_seconds(model, table, tcfg, n_steps: int, n_distinct: int = 4) -> float:
    """`n_steps` optimiser steps on `n_distinct` batches prebuilt in memory (same shapes as train's)."""
    from diffvqa_cache.training.losses import quality_loss

    device = torch.device("cpu")
    rng = np.random.default_rng(0)
    batches = []
    for _ in range(n_distinct):
        idx = rng.choice(len(table), tcfg.batch_size, replace=False)
        batches.append((table.batch(idx, 0, device), torch.from_numpy(table.mos[idx]).float()))
    opt = torch.optim.AdamW(model.parameters(), lr=tcfg.lr, weight_decay=tcfg.weight_decay)
    model.train()
    t0 = time.perf_counter()
    for s in range(n_steps):
        batch, y = batches[s % n_distinct]
        pred = model(batch)["score"].float()
        loss = quality_loss(tcfg.loss, pred, (y - y.mean()) / (y.std() + 1e-8), tcfg.rank_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), tcfg.grad_clip)
        opt.step()
    return time.perf_counter() - t0


def epoch_vs_bare(table, split, tcab: bool, epochs: int, tcfg_kw: dict) -> dict:
    from diffvqa_cache.training.loop import train
    from diffvqa_cache.training.regressor import DiffVQARegressor, RegressorConfig
    from diffvqa_cache.training.settings import TrainConfig

    row_of = {k: i for i, k in enumerate(table.keys)}
    train_t = table.subset(np.array([row_of[k] for k in split.train]))
    tcfg = TrainConfig(epochs=epochs, device="cpu", **tcfg_kw)
    torch.manual_seed(0)
    reg = RegressorConfig(use_tcab=tcab)
    model = DiffVQARegressor(reg, table.feature_spec())
    t0 = time.perf_counter()
    res = train(model, train_t, tcfg, seed=0)
    total = time.perf_counter() - t0
    ep = [h["seconds"] for h in res.history]
    steps = math.ceil(len(train_t) / tcfg.batch_size)
    torch.manual_seed(0)
    bare = bare_epoch_seconds(DiffVQARegressor(reg, table.feature_spec()), train_t, tcfg, steps)
    epoch = float(np.median(ep))
    return {"tcab": tcab, "n_train": len(train_t), "steps": steps, "epoch": epoch, "epochs": ep, "bare": bare,
            "ratio": epoch / bare, "train_call": total, "after_epochs": total - sum(ep),
            "params": sum(p.numel() for p in model.parameters())}


class _Done(Exception):
    pass


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--videos", type=int, default=1200)
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="torch threads for the epoch timing")
    ap.add_argument("--epochs", type=int, default=2, help="epochs of the epoch-time measurement (TCAB off)")
    ap.add_argument("--protocol-budget", type=float, default=480.0,
                    help="seconds the TCAB-off 10-split protocol may take; epochs per split are chosen to fit")
    ap.add_argument("--splits", type=int, default=10)
    ap.add_argument("--skip-tcab", action="store_true")
    ap.add_argument("--skip-protocol", action="store_true")
    ap.add_argument("--keep", type=Path, default=None, help="write the cache here and keep it")
    ap.add_argument("--no-append", action="store_true")
    args = ap.parse_args()
    info = machine_info()

    from diffvqa_cache.cache.folder import FeatureCache
    from diffvqa_cache.training.data import estimate_bytes
    from diffvqa_cache.training.protocols import random_splits
    from diffvqa_cache.training.regressor import RegressorConfig
    from diffvqa_cache.training.rules import LoadSpec
    from diffvqa_cache.training.settings import FitConfig, TrainConfig
    from diffvqa_cache.training.inputs import load_fit_inputs
    from pipelines.fit import run_fit

    root = args.keep or Path(tempfile.mkdtemp(prefix="fitspeed-"))
    rows = []
    try:
        # 1. the cache
        t0 = time.perf_counter()
        from diffvqa_cache.synthetic import write_synthetic_cache

        made = write_synthetic_cache(root, args.videos, frames=args.frames,
                                     on_shard=lambda i, n: print(f"  shard {i + 1}/{n}", end="\r", flush=True))
        cache_dir, write_s, nbytes = made.cache_dir, made.write_seconds, made.nbytes
        gen_s = time.perf_counter() - t0
        print(f"\ncache {cache_dir}: {nbytes / 1e9:.2f} GB in {gen_s:.0f} s (write_shard {write_s:.0f} s)")
        cache = FeatureCache(cache_dir)
        est = estimate_bytes(cache, LoadSpec())
        avail = mem_available_gb()
        print(f"table estimate {est / 1e9:.2f} GB (TCAB on, pixels 64), MemAvailable {avail:.1f} GiB")
        if 2.2 * est / 2**30 > avail - 1.5:
            raise SystemExit(f"loading needs about 2x {est / 1e9:.1f} GB (load_table stacks a copy) but only "
                             f"{avail:.1f} GiB are available; use fewer --videos")

        # 2. load (open, check, plan splits, load_table), TCAB inputs included
        set_threads(max(args.threads))
        rss0 = maxrss_mb()
        t0 = time.perf_counter()
        cfg_on = FitConfig(regressor=RegressorConfig(use_tcab=True), splits=args.splits,
                           train=TrainConfig(device="cpu"), memory_gb=20)
        inputs = load_fit_inputs(cache_dir, cfg_on)
        load_s = time.perf_counter() - t0
        table_on = inputs.table
        rss_load = maxrss_mb()
        rows.append(["load_fit_inputs (TCAB inputs too)", load_s, f"{nbytes / 1e9 / load_s:.2f} GB/s of shard bytes",
                     f"table {table_on.nbytes() / 1e9:.2f} GB; peak RSS {rss_load / 1e3:.1f} GB "
                     f"(+{(rss_load - rss0) / 1e3:.1f} GB, {(rss_load - rss0) * 1e6 / table_on.nbytes():.2f}x the table)"])
        print(rows[-1], f"load {loadavg()}", flush=True)
        split0 = random_splits(list(table_on.keys), 1, 0.2, 0)[0]

        # 3. epoch vs bare, TCAB off, threads 1 and 2 (the TCAB-off model ignores the pixels)
        ep_rows, best = [], None
        for th in args.threads:
            set_threads(th)
            r = epoch_vs_bare(table_on, split0, False, args.epochs, {})
            r["threads"] = th
            ep_rows.append(r)
            print({k: v for k, v in r.items()}, f"load {loadavg()}", flush=True)
            best = r if best is None or r["epoch"] < best["epoch"] else best
        set_threads(best["threads"])
        if not args.skip_tcab:
            r = epoch_vs_bare(table_on, split0, True, 1, {})
            r["threads"] = best["threads"]
            ep_rows.append(r)
            print(r, f"load {loadavg()}", flush=True)

        # 4. whole protocol, TCAB off, epochs chosen to fit the budget (run_fit loads the cache again)
        if args.skip_protocol:
            rows.append(["peak RSS of the whole benchmark", maxrss_mb() / 1e3, "GB", ""])
            raise _Done
        per_split_fixed = best["after_epochs"] * 1.3 + 1.0  # predict on train (+ test) and checkpoint
        epochs = max(1, int(((args.protocol_budget - load_s) / args.splits - per_split_fixed) // max(best["epoch"], 1e-3)))
        epochs = int(min(epochs, 30))
        del inputs, table_on
        cfg_off = FitConfig(regressor=RegressorConfig(use_tcab=False), splits=args.splits,
                            train=TrainConfig(device="cpu", epochs=epochs), memory_gb=20)
        t0 = time.perf_counter()
        result = run_fit(cache_dir, root / "run-off", cfg_off, progress=False)
        prot_s = time.perf_counter() - t0
        srcc = result["summary"]["test"]["srcc"]["median"]
        rows.append([f"run_fit, {args.splits} splits x {epochs} epochs, TCAB off ({best['threads']} threads)", prot_s,
                     f"{prot_s / args.splits:.1f} s per split", f"median test SRCC {srcc:.3f} (signal is learnable)"])
        print(rows[-1], f"load {loadavg()}", flush=True)
        if not args.skip_tcab:
            tc = ep_rows[-1]
            ext = load_s + args.splits * (epochs * tc["epoch"] + tc["after_epochs"] * 1.3)
            ext30 = load_s + args.splits * (30 * tc["epoch"] + tc["after_epochs"] * 1.3)
            rows.append([f"run_fit, {args.splits} splits x {epochs} epochs, TCAB on: EXTRAPOLATED", ext,
                         f"{ext / args.splits:.0f} s per split",
                         f"from one measured epoch ({tc['epoch']:.0f} s) + predict; 30 epochs (default): {ext30 / 3600:.1f} h"])
        rows.append(["peak RSS of the whole benchmark", maxrss_mb() / 1e3, "GB", ""])
    except _Done:
        pass
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)
    t_ep = table(["TCAB", "torch threads", "train videos", "steps/epoch", "epoch s (train)", "bare fwd+bwd s",
                  "epoch / bare", "epochs measured", "train() after the epochs s (predict on train)", "params"],
                 [["on" if r["tcab"] else "off", r["threads"], r["n_train"], r["steps"], r["epoch"], r["bare"], r["ratio"],
                   " ".join(f"{x:.1f}" for x in r["epochs"]), r["after_epochs"], r["params"]] for r in ep_rows])
    t_all = table(["what", "seconds", "rate", "notes"], rows)
    print(t_ep, "", t_all, sep="\n")
    body = (f"Synthetic cache of {args.videos} videos (KoNViD-1k: 1200) x {args.frames} frames, S + D (1 crop), grid 8 with SD "
            f"channels (1280/1280/640/320), latent 4x64x64, pixels 224 (resized to 64 at load), "
            f"{nbytes / 1e9:.1f} GB on disk, written in {gen_s:.0f} s (write_shard {write_s:.0f} s). Default "
            f"regressor and TrainConfig (batch 16, AdamW, plcc+rank) on the CPU; random split 0 (80/20) for the "
            f"epoch timing. Bare = the same number of optimiser steps on batches already in memory.\n\n"
            + t_ep + "\n\n" + t_all)
    if not args.no_append:
        append_section("Stage 2 fit speed (KoNViD-size synthetic cache)", body, info)
        off = [r for r in ep_rows if not r["tcab"]]
        if off:
            update_current("fit epoch / bare forward+backward on tensors in memory",
                           ", ".join(f"{r['ratio']:.2f} ({r['threads']} torch thread(s))" for r in off)
                           + f" ({args.videos} SD-size synthetic videos, TCAB off)", info=info)


if __name__ == "__main__":
    main()
