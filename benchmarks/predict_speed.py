"""Scoring many videos: videos/s of `predict` over videos/s of `extract` on the same clips and settings.

Both run the same stage one (decode ahead with threads, views of several videos batched through the
model, groups of `shard_size` videos); `extract` then writes HDF5 shards, `predict` runs the run's split
models and the unfamiliar-content check per video and writes its CSV as it goes. Each timed call includes
building its model (the tiny model: well under a second). The run is fitted once, untimed, on the
extracted clips with the fit defaults (10 splits, TCAB on) except 2 epochs: a realistic number of models
per video. Runs alternate extract / predict / predict with the split models at 1 thread (`--only-default`
skips it) so that load changes hit all; medians. Each command runs with OpenMP as its command does:
predict with torch's idle threads waiting passively (diffvqa_cache/openmp.py), extract in a process of its own
with torch's default (its timing starts after the imports and a warm-up extract of 2 clips there).

    python benchmarks/predict_speed.py                   # 24 sample clips, 10 steps, 3 repeats
    python benchmarks/predict_speed.py --videos 48 --steps 20 --repeats 5
    python benchmarks/predict_speed.py --videos 16 --run RUN      # reuse a run fitted on those clips
    GOMP_SPINCOUNT=300000 python benchmarks/predict_speed.py      # before: torch's default OpenMP spin
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import append_section, loadavg, machine_info, set_threads, table, update_current  # noqa: E402


def _extract_config(args):
    from diffvqa_cache.cache.settings import ExtractConfig

    return ExtractConfig(model="tiny", steps=args.steps, strength=0.5, frames=args.frames, crops=args.crops,
                         batch_size=args.batch_size, shard_size=args.shard_size, device="cpu")


def extract_child(args) -> None:
    """One timed `run_extract` of the clips in this process (after an untimed one on 2 clips: imports, decoders);
    prints its seconds."""
    from diffvqa_cache.datasets import load_dataset
    from pipelines.extract import run_extract

    set_threads(args.threads)
    out = Path(args.extract_child)
    run_extract(load_dataset("sample", None, limit=2), _extract_config(args), out / "warm", progress=False)
    data = load_dataset("sample", None, limit=args.videos)
    t0 = time.perf_counter()
    res = run_extract(data, _extract_config(args), out / "timed", progress=False)
    seconds = time.perf_counter() - t0
    assert res.videos == len(data.records), res.summary()
    print(f"SECONDS {seconds}", flush=True)


def time_extract_in_child(args, folder: Path, passive: bool) -> float:
    """`extract` timed in a process of its own, with OpenMP as the extract command runs it (torch's default wait,
    or what the environment chose: not the passive wait this process set for predict)."""
    env = {k: v for k, v in os.environ.items() if not (passive and k == "OMP_WAIT_POLICY")}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--extract-child", str(folder)] + [
        str(x) for opt in ("videos", "steps", "frames", "crops", "batch_size", "shard_size", "threads")
        for x in (f"--{opt.replace('_', '-')}", getattr(args, opt))]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    shutil.rmtree(folder, ignore_errors=True)
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("SECONDS ")]
    if proc.returncode or not line:
        raise SystemExit(f"extract child failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return float(line[0].split()[1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--videos", type=int, default=24, help="sample clips (of 96)")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--crops", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--shard-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--run", help="score with this existing run (fitted on these clips' cache with the fit "
                                   "defaults) instead of fitting one first")
    ap.add_argument("--only-default", action="store_true", help="skip predict with the split models at 1 thread "
                                                              "(Scorer(model_threads=1))")
    ap.add_argument("--no-append", action="store_true")
    ap.add_argument("--extract-child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.extract_child:
        extract_child(args)
        return

    from diffvqa_cache.openmp import USER_KNOBS, wait_passively

    passive = wait_passively()  # as the predict command does, before torch loads (extract runs in a child without)
    from diffvqa_cache.datasets import load_dataset
    from diffvqa_cache.scoring.scorer import Scorer
    from diffvqa_cache.training.settings import FitConfig
    from pipelines.extract import run_extract
    from pipelines.fit import run_fit
    from pipelines.predict import run_predict

    info = machine_info()
    load_start = loadavg()
    threads = set_threads(args.threads)
    data = load_dataset("sample", None, limit=args.videos)
    paths = [r.path for r in data.records]
    cfg = _extract_config(args)
    work = Path(tempfile.mkdtemp(prefix="predict-speed-"))
    try:
        # untimed: imports, the run (fit defaults, 2 epochs), one predict to warm the scoring path
        cache = run_extract(data, cfg, work / "cache", progress=False).cache_dir
        run = Path(args.run) if args.run else work / "run"
        if not args.run:
            run_fit(cache, run, FitConfig().with_overrides({"train.epochs": 2}), progress=False)
        n_models = len(list((run / "models").glob("*.safetensors")))
        run_predict(paths[:2], run, device="cpu", batch_size=args.batch_size, progress=False)
        variants = {"predict": None, "predict, split models at 1 thread (model_threads=1)": 1}
        if args.only_default:
            variants.pop("predict, split models at 1 thread (model_threads=1)")
        ext, pred, regress = [], {v: [] for v in variants}, {v: [] for v in variants}
        ratios = {v: [] for v in variants}
        for r in range(args.repeats):
            ext.append(time_extract_in_child(args, work / f"e{r}", passive))
            for name, model_threads in variants.items():
                # time spent after stage one (split models, familiarity), measured inside the same predict
                inside = [0.0]
                plain = Scorer._score_videos

                def timed(self, *a, _plain=plain):
                    t = time.perf_counter()
                    try:
                        return _plain(self, *a)
                    finally:
                        inside[0] += time.perf_counter() - t

                Scorer._score_videos = timed
                try:
                    t0 = time.perf_counter()  # the Scorer is built inside the timed call, as run_predict does
                    scorer = Scorer(run, device="cpu", batch_size=args.batch_size, model_threads=model_threads)
                    out = run_predict(paths, run, device="cpu", batch_size=args.batch_size,
                                      output=work / f"p{r}-{list(variants).index(name)}.csv", progress=False, scorer=scorer)
                    pred[name].append(time.perf_counter() - t0)
                finally:
                    Scorer._score_videos = plain
                assert all(v.error is None for v in out) and len(out) == len(paths)
                regress[name].append(inside[0])
                ratios[name].append(ext[-1] / pred[name][-1])
                print(f"  run {r}: extract {len(paths) / ext[-1]:.2f} videos/s, {name} {len(paths) / pred[name][-1]:.2f} "
                      f"videos/s (of which split models + familiarity {inside[0]:.2f} s), ratio {ratios[name][-1]:.3f}, "
                      f"load {loadavg()}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    med = statistics.median
    n = len(paths)
    rows = [["extract", n / med(ext), med(ext), "-", "-", " ".join(f"{n / t:.2f}" for t in ext)]]
    rows += [[name, n / med(pred[name]), med(pred[name]), med(regress[name]), med(ratios[name]),
              " ".join(f"{n / t:.2f}" for t in pred[name])] for name in variants]
    text = table(["command", "videos/s (median)", "seconds (median)", "of which split models + familiarity s",
                  "predict / extract (median of pairs)", "videos/s, each run"], rows)
    lines, stage_one = [], {}
    for name in variants:
        stage_one[name] = [e / (p - r) for e, p, r in zip(ext, pred[name], regress[name])]
        lines.append(f"{name} / extract videos/s: median of the per-pair ratios {med(ratios[name]):.3f} (each pair: "
                     f"{' '.join(f'{x:.3f}' for x in ratios[name])}); goal >= 0.9. Without the split models' time "
                     f"(stage one and files alone): {med(stage_one[name]):.3f} (each pair: "
                     f"{' '.join(f'{x:.3f}' for x in stage_one[name])})")
    summary = "\n\n".join(lines)
    wait = ("predict waits passively as its command does (OMP_WAIT_POLICY=PASSIVE), extract with torch's default "
            "(its own process)" if passive else "both as this environment sets it: " +
            (", ".join(f"{k}={os.environ[k]}" for k in USER_KNOBS if k in os.environ) or "torch's default"))
    print(text, summary, sep="\n")
    body = (f"Tiny model, the first {n} sample clips (160x120), {args.frames} frames, {args.crops} crop(s), "
            f"{args.steps} DDIM steps, strength 0.5, batch {args.batch_size} views, groups (shards) of "
            f"{args.shard_size} videos, 2 decode threads, torch threads {threads}, {args.repeats} alternating "
            f"rounds (extract, then each predict); the run has {n_models} split models (fit defaults, TCAB on, 2 epochs"
            f"{'; an existing run, ' + args.run if args.run else ''}). `predict` = the default (split models at "
            f"torch's threads); the other row: `Scorer(model_threads=1)`. Each timed call includes "
            f"building its model. OpenMP wait: {wait}. Load average at the start: {load_start}.\n\n" + text +
            "\n\n" + summary)
    if not args.no_append:
        append_section("Scoring many videos: predict vs extract (tiny model, CPU)", body, info)
        default = next(iter(variants))  # `predict` as users run it
        if passive:  # (another OpenMP setting is a comparison, not the current figure)
            update_current("predict / extract videos/s, tiny model, CPU (goal >= 0.9)",
                           f"{med(ratios[default]):.3f} ({n_models} split models; without them "
                           f"{med(stage_one[default]):.3f}), {n} clips, {args.repeats} runs", info=info)


if __name__ == "__main__":
    main()
