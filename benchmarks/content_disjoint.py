"""Content-disjoint check of stage one: does an extraction let a fit generalise to contents it never saw?

Clips of 6 contents, each under the embedded sample's conditions (pristine; blur, noise, compression,
downscale, dark/low contrast at 3 strengths; the sample's synthetic MOS): 16 clips per content, split
into two groups of 3 contents that share no content. Each extraction under test (a source tree: today's,
or an old commit's worktree) extracts both groups with the tiny model, `--steps 2 --strength 0.5
--frames 4 --crops 1 --grid 4 --pixel-size 64` and a seed; today's `fit` (TCAB on, `--set
pixel_size=64`, protocol cross) then trains on one group and tests on the other, both ways. The table
gives the test SRCC per seed (mean of the two directions), so extractions differ only in their caches.

Contents: `--source real` (default) cuts 16 frames of each real clip in /work/shared/realdata/videos
(or --videos DIR), scaled to a 180 px short side, so the tiny model's 128 px crops see part of a frame;
`--source sample` takes the embedded sample's 96 clips (6 synthetic scenes, 160x120).

    python benchmarks/content_disjoint.py                                   # today's tree, seeds 0 1 2
    python benchmarks/content_disjoint.py --tree today=. --tree c6a38e2=/work/wt/x-old-c6a38e2 --seeds 0 1 2
    python benchmarks/content_disjoint.py --compare WORK/caches/A/seed0/group_a WORK/caches/B/seed0/group_a
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, append_section, machine_info, table, update_current  # noqa: E402

EXTRACT = ["--model", "tiny", "--steps", "2", "--strength", "0.5", "--frames", "4", "--crops", "1", "--grid", "4",
           "--pixel-size", "64", "--batch-size", "16", "--shard-size", "16"]
SHORT_SIDE = 180
N_FRAMES = 16


def cli(tree: Path, args: list[str], log: Path) -> None:
    """Run `diffvqa-cache ARGS` from source tree `tree` on one torch thread (cwd = the tree, so its
    modules are the ones imported)."""
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    with open(log, "a") as f:
        f.write(f"$ {' '.join(args)}\n")
        f.flush()
        rc = subprocess.run([sys.executable, "-c", "import torch; torch.set_num_threads(1); from cli import main; main()",
                             *args], cwd=tree, env=env, stdout=f, stderr=subprocess.STDOUT).returncode
    if rc:
        sys.exit(f"{tree}: `{' '.join(args[:1])}` failed (exit {rc}); see {log}")


def make_real_groups(videos: Path, out: Path) -> list[Path]:
    """Two folders of distorted clips (labels.csv video,mos), 3 real contents each."""
    import numpy as np

    from diffvqa_cache.datasets import sample
    from diffvqa_cache.clip_writer import write_clip
    from diffvqa_cache.extraction.video import load_video_frames
    from diffvqa_cache.extraction.views import _resize

    clips = sorted(videos.glob("*.mp4"))
    if len(clips) < 6:
        sys.exit(f"--videos {videos}: needs 6 clips (.mp4), found {len(clips)}")
    groups = [out / "group_a", out / "group_b"]
    for g in groups:
        g.mkdir(parents=True, exist_ok=True)
    rows = {g: [] for g in groups}
    for c, path in enumerate(clips[:6]):
        frames, *_ = load_video_frames(path, n_frames=N_FRAMES)
        h, w = frames.shape[1:3]
        scale = SHORT_SIDE / min(h, w)
        frames = _resize(frames, round(h * scale) // 2 * 2, round(w * scale) // 2 * 2).astype(np.float32)
        group = groups[c % 2]  # a: contents 0, 2, 4; b: 1, 3, 5
        for k, (distortion, strength) in enumerate(sample.CONDITIONS):
            crf = sample.BASE_CRF + round(sample.CRF_RANGE * strength) if distortion == "compression" else sample.BASE_CRF
            pixels = sample._distort(frames, distortion, strength, np.random.default_rng([c, k]))
            name = f"c{c}_{distortion}_{int(strength * 100):03d}.mp4"
            write_clip(group / name, pixels, fps=sample.FPS, codec="libx264", crf=crf, codec_options=sample.X264_OPTIONS)
            rows[group].append(f"{name},{sample.mos_for(distortion, strength):.3f}\n")
    for g in groups:
        (g / "labels.csv").write_text("video,mos\n" + "".join(rows[g]))
    return groups


def make_sample_groups(out: Path) -> list[Path]:
    """The embedded sample split by content: scenes 0, 2, 4 and 1, 3, 5 (48 clips each)."""
    import csv

    from diffvqa_cache.datasets.sample import ensure_sample

    root = ensure_sample()
    groups = [out / "group_a", out / "group_b"]
    rows = {g: [] for g in groups}
    for g in groups:
        g.mkdir(parents=True, exist_ok=True)
    with open(root / "distortions.csv") as f:
        for r in csv.DictReader(f):
            g = groups[int(r["content"].rsplit("_", 1)[1]) % 2]
            name = Path(r["video"]).name
            shutil.copy(root / r["video"], g / name)
            rows[g].append(f"{name},{r['mos']}\n")
    for g in groups:
        (g / "labels.csv").write_text("video,mos\n" + "".join(rows[g]))
    return groups


def test_srcc(run: Path) -> float:
    """The SRCC on the further test cache of a cross run (metrics.json's summary, under its dataset name)."""
    summary = json.loads((run / "metrics.json").read_text())["summary"]
    found = [v["srcc"]["mean"] for k, v in summary.items() if k not in ("train", "val") and "srcc" in v]
    if len(found) != 1:
        sys.exit(f"{run}/metrics.json: expected one test set in its summary, found {sorted(summary)}")
    return float(found[0])


def cache_arrays(root: Path) -> dict:
    """{video key: {dataset name: rows}} of every shard under `root` (h5py only, so caches written by older
    versions read too)."""
    import h5py

    out = {}
    for file in sorted(Path(root).rglob("shards/*.h5")):
        with h5py.File(file) as h:
            names = []
            h.visititems(lambda n, d: names.append(n) if isinstance(d, h5py.Dataset) and d.shape
                         and n not in ("keys", "row_start", "n_frames") else None)
            for key, start, n in zip(h["keys"][:], h["row_start"][:], h["n_frames"][:]):
                key = key.decode() if isinstance(key, bytes) else str(key)
                out[key] = {name: h[name][start:start + n] for name in names}
    return out


def compare(a: Path, b: Path) -> str:
    """'identical', or the datasets whose arrays differ between two caches of the same videos (a bisection
    step: a commit whose caches equal an endpoint's bit for bit fits as that endpoint does)."""
    import numpy as np

    x, y = cache_arrays(a), cache_arrays(b)
    if x.keys() != y.keys():
        return f"different videos ({len(x)} and {len(y)})"
    diff = {n for k in x for n in set(x[k]) | set(y[k])
            if n not in x[k] or n not in y[k] or not np.array_equal(x[k][n], y[k][n])}
    return "identical" if not diff else "differ: " + ", ".join(sorted(diff))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tree", action="append", default=None,
                    help="LABEL=PATH of a source tree whose `extract` is checked (repeatable; default today=the repo)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--source", choices=("real", "sample"), default="real")
    ap.add_argument("--videos", type=Path, default=Path("/work/shared/realdata/videos"))
    ap.add_argument("--work", type=Path, default=None, help="working folder (default: a temp folder, removed)")
    ap.add_argument("--fit-set", nargs="*", default=[], help="further fit --set overrides")
    ap.add_argument("--no-append", action="store_true")
    ap.add_argument("--compare", type=Path, nargs=2, metavar=("CACHE_A", "CACHE_B"),
                    help="only compare two caches' arrays bit for bit (bisection steps) and exit")
    args = ap.parse_args()
    if args.compare:
        print(compare(*args.compare))
        return
    trees = [(t.split("=", 1)[0], Path(t.split("=", 1)[1]).resolve()) for t in (args.tree or [f"today={ROOT}"])]
    info = machine_info()
    import tempfile

    work = args.work or Path(tempfile.mkdtemp(prefix="content-disjoint-"))
    work.mkdir(parents=True, exist_ok=True)
    log = work / "log.txt"
    data = work / f"data-{args.source}"
    if not (data / "group_b" / "labels.csv").is_file():
        shutil.rmtree(data, ignore_errors=True)
        groups = make_real_groups(args.videos, data) if args.source == "real" else make_sample_groups(data)
    else:
        groups = [data / "group_a", data / "group_b"]
    rows, results = [], {}
    fit_tag = "".join(f"-{kv}" for kv in args.fit_set).replace("/", "_")
    for label, tree in trees:
        for seed in args.seeds:
            runs = {(a, b): work / f"runs{fit_tag}" / label / f"seed{seed}" / f"{groups[a].name}_to_{groups[b].name}"
                    for a, b in ((0, 1), (1, 0))}
            caches = [work / "caches" / label / f"seed{seed}" / g.name for g in groups]
            if not all((run / "metrics.json").is_file() for run in runs.values()):
                for g, out in zip(groups, caches):  # a complete cache is found and kept by extract itself
                    cli(tree, ["extract", "--dataset", "csv", "--root", str(g), "--out", str(out), *EXTRACT,
                               "--seed", str(seed)], log)
            srcc = []
            for (train, test), run in runs.items():
                if not (run / "metrics.json").is_file():
                    shutil.rmtree(run, ignore_errors=True)
                    sets = [s for kv in ["pixel_size=64", *args.fit_set] for s in ("--set", kv)]
                    cli(ROOT, ["fit", "--cache", str(caches[train]), "--test-cache", str(caches[test]), "--out",
                               str(run), "--protocol", "cross", "--seed", str(seed), *sets], log)
                srcc.append(test_srcc(run))
            results[(label, seed)] = srcc
            rows.append([label, seed, srcc[0], srcc[1], statistics.mean(srcc)])
            print(table(["extraction", "seed", "SRCC a->b", "SRCC b->a", "mean"], rows[-1:]), flush=True)
    summary = [[label, " ".join(f"{statistics.mean(results[(label, s)]):.3f}" for s in args.seeds),
                statistics.mean(statistics.mean(results[(label, s)]) for s in args.seeds)] for label, _ in trees]
    body = (f"Content-disjoint check ({args.source} contents: 2 groups of 3 contents x 16 conditions; extract "
            f"`{' '.join(EXTRACT)} --seed S` by each tree; today's fit, protocol cross, TCAB on, `--set "
            f"{' '.join(['pixel_size=64', *args.fit_set])}`, trained on one group, tested on the other). Test SRCC:\n\n"
            + table(["extraction", "seed", "SRCC a->b", "SRCC b->a", "mean"], rows) + "\n\n"
            + table(["extraction", "mean SRCC per seed", "mean over seeds"], summary) + "\n")
    print(body)
    if not args.no_append:
        append_section("Content-disjoint check of stage one", body, info)
        update_current(f"content-disjoint check of stage one ({args.source} contents): test SRCC, mean over seeds",
                       ", ".join(f"{label} {mean:.3f}" for label, _, mean in summary), info=info)
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
