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

More test cases from the same extractions (`--partitions all`): the 10 ways of splitting the 6 contents
into two groups of 3, each trained and tested both ways (20 cases per seed). The caches of a split are
assembled from groups a and b's shards (one shard = one content's 16 clips; a clip's features do not
depend on the folder it is extracted from: crops and noise are seeded by the clip's pixels or name and the
seed), so each tree extracts once per seed. With two or more trees, the first is compared case by case
with each other one (same seed, split and direction, so same fit seed): the mean paired difference, its
standard error over cases and over seeds (cases of one seed share its caches and contents), and how many
cases it wins. Which crop places a seed draws moves the SRCC more than the split does (the sign of a
difference held across a seed's splits in 2026-12 runs), so more seeds inform more than more splits.
`--tree-args LABEL=ARGS` adds extract options for one tree (e.g. to pin today's chain to
an old tree's: `--tree-args "today=--timestep-spacing trailing --latent chain"`).

    python benchmarks/content_disjoint.py --tree today=. --tree c6a38e2=../old --partitions all --seeds 0 1
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import shlex
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


def partitions(all_splits: bool) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """Content splits (X, Y), each used X->Y and Y->X: the a/b split only, or all 10 splits of 6 into 3+3."""
    if not all_splits:
        return [((0, 2, 4), (1, 3, 5))]
    return [(x, tuple(c for c in range(6) if c not in x)) for x in itertools.combinations(range(6), 3) if 0 in x]


def content_of(key: str) -> int:
    """The content index of a clip key ('c3_blur_035' -> 3)."""
    return int(key.split("_", 1)[0][1:])


def regroup(sources: list[Path], contents: tuple[int, ...], out: Path) -> Path:
    """A cache of the clips of `contents`, assembled from the shards of the caches `sources` (hard links).

    Every shard must hold one content's clips (shard size 16 = clips per content, labels listed content by
    content). Config, labels and manifest are copied and filtered as JSON/CSV, so caches written by old
    trees regroup as they were written; the shards are renumbered in the manifest and their records (the
    shard id inside an HDF5 file is not read back). Kept when already there."""
    if (out / "manifest.json").is_file():
        return out
    dirs = [p.parent for src in sources for p in sorted(src.rglob("manifest.json"))]
    if len(dirs) != len(sources):
        sys.exit(f"regroup: expected one cache in each of {sources}, found {dirs}")
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "shards").mkdir(parents=True)
    manifests = [json.loads((d / "manifest.json").read_text()) for d in dirs]
    shards, labels = [], {}
    for d, m in zip(dirs, manifests):
        rows = (d / "labels.csv").read_text().splitlines()
        header = rows[0]
        labels.update({r.split(",", 1)[0]: r for r in rows[1:]})
        for entry in m["shards"]:
            owners = {content_of(k) for k in entry["videos"]}
            if len(owners) != 1:
                sys.exit(f"regroup: {d}/shards/{entry['file']} mixes contents {sorted(owners)}")
            if owners.pop() in contents:
                shards.append((d, entry))
    shards.sort(key=lambda s: content_of(s[1]["videos"][0]))
    new_entries = []
    for i, (d, entry) in enumerate(shards):
        name = f"shard-{i:05d}"
        os.link(d / "shards" / entry["file"], tmp / "shards" / f"{name}.h5")
        record = json.loads((d / "shards" / entry["file"]).with_suffix(".json").read_text())
        record.update(shard=i, file=f"{name}.h5")
        (tmp / "shards" / f"{name}.json").write_text(json.dumps(record, indent=1))
        new_entries.append({**entry, "shard": i, "file": f"{name}.h5"})
    keys = [k for e in new_entries for k in e["videos"]]
    if {content_of(k) for k in keys} != set(contents) or any(m["failed"] for m in manifests):
        sys.exit(f"regroup: contents {contents} not all found (or failed videos) in {sources}")
    shutil.copy2(dirs[0] / "config.json", tmp / "config.json")
    (tmp / "labels.csv").write_text("\n".join([header, *(labels[k] for k in keys)]) + "\n")
    manifest = {**manifests[0], "shards": new_entries, "n_shards_planned": len(new_entries), "videos": len(keys),
                "failed": [], "missing_on_disk": [], "not_extracted": [], "complete": True}
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
    tmp.rename(out)
    return out


def paired(results: dict, first: str, other: str, seeds: list[int]) -> list:
    """[other, n cases, mean difference first - other, SE over cases, SE over seeds' means, first higher in
    cases, first higher in seeds' means]."""
    by_seed = {s: [a - b for a, b in zip(results[(first, s)], results[(other, s)])] for s in seeds}
    diffs = [d for s in seeds for d in by_seed[s]]
    se = lambda xs: statistics.stdev(xs) / math.sqrt(len(xs)) if len(xs) > 1 else float("nan")  # noqa: E731
    return [other, len(diffs), statistics.mean(diffs), se(diffs), se([statistics.mean(by_seed[s]) for s in seeds]),
            f"{sum(d > 0 for d in diffs)}/{len(diffs)}",
            f"{sum(statistics.mean(by_seed[s]) > 0 for s in seeds)}/{len(seeds)}"]


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
    ap.add_argument("--tree-args", action="append", default=[],
                    help="LABEL=ARGS: further extract options for that tree only (repeatable)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--partitions", choices=("ab", "all"), default="ab",
                    help="ab: contents 0,2,4 vs 1,3,5 only; all: the 10 splits of the 6 contents into 3+3")
    ap.add_argument("--source", choices=("real", "sample"), default="real")
    ap.add_argument("--videos", type=Path, default=Path("/work/shared/realdata/videos"))
    ap.add_argument("--work", type=Path, default=None, help="working folder (default: a temp folder, removed)")
    ap.add_argument("--fit-set", nargs="*", default=[], help="further fit --set overrides")
    ap.add_argument("--no-append", action="store_true")
    ap.add_argument("--report-only", action="store_true",
                    help="extract and fit nothing: report the cases every tree has finished (a run cut short)")
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
    tree_args = {t.split("=", 1)[0]: shlex.split(t.split("=", 1)[1]) for t in args.tree_args}
    splits = partitions(args.partitions == "all")
    name = lambda cs: "c" + "".join(map(str, cs))  # noqa: E731
    labels = [label for label, _ in trees]
    fit_tag = "".join(f"-{kv}" for kv in args.fit_set).replace("/", "_")
    cases = [(train, test) for x, y in splits for train, test in ((x, y), (y, x))]
    rows, results = [], {}
    for seed in args.seeds:  # case by case, trees side by side: a run cut short still has paired cases
        runs = {(label, case): work / f"runs{fit_tag}" / label / f"seed{seed}" / f"{name(case[0])}_to_{name(case[1])}"
                for label, _ in trees for case in cases}
        caches = {label: [work / "caches" / label / f"seed{seed}" / g.name for g in groups] for label, _ in trees}
        if args.report_only:
            done = [case for case in cases if all((runs[(label, case)] / "metrics.json").is_file() for label in labels)]
        for label, tree in trees:
            if not args.report_only and not all((runs[(label, case)] / "metrics.json").is_file() for case in cases):
                for g, out in zip(groups, caches[label]):  # a complete cache is found and kept by extract itself
                    cli(tree, ["extract", "--dataset", "csv", "--root", str(g), "--out", str(out), *EXTRACT,
                               "--seed", str(seed), *tree_args.get(label, [])], log)
        for case in (done if args.report_only else cases):
            srcc = []
            for label, _ in trees:
                run = runs[(label, case)]
                if not (run / "metrics.json").is_file():
                    parts = caches[label][0].parent / "parts"
                    train_cache, test_cache = (regroup(caches[label], cs, parts / name(cs)) for cs in case)
                    shutil.rmtree(run, ignore_errors=True)
                    sets = [s for kv in ["pixel_size=64", *args.fit_set] for s in ("--set", kv)]
                    cli(ROOT, ["fit", "--cache", str(train_cache), "--test-cache", str(test_cache), "--out",
                               str(run), "--protocol", "cross", "--seed", str(seed), *sets], log)
                srcc.append(test_srcc(run))
                results.setdefault((label, seed), []).append(srcc[-1])
            rows.append([seed, f"{name(case[0])}->{name(case[1])}", *srcc])
            print(table(["seed", "train->test", *labels], rows[-1:]), flush=True)
    seeds = [s for s in args.seeds if (labels[0], s) in results]
    summary = [[label, " ".join(f"{statistics.mean(results[(label, s)]):.3f} ({len(results[(label, s)])})" for s in seeds),
                statistics.mean(statistics.mean(results[(label, s)]) for s in seeds),
                statistics.mean(x for s in seeds for x in results[(label, s)])] for label in labels]
    body = (f"Content-disjoint check ({args.source} contents: 6 contents x 16 conditions, {len(splits)} split(s) into "
            f"two groups of 3, each trained on one group and tested on the other; extract `{' '.join(EXTRACT)} "
            f"--seed S` by each tree"
            + "".join(f" (+ `{' '.join(a)}` for {t})" for t, a in tree_args.items())
            + f"; today's fit, protocol cross, TCAB on, `--set {' '.join(['pixel_size=64', *args.fit_set])}`, "
            f"fit seed = S). Test SRCC per case (48 test clips each)"
            + (", the cases every tree finished" if args.report_only else "") + ":\n\n"
            + table(["seed", "train->test", *labels], rows) + "\n\n"
            + table(["extraction", "mean SRCC per seed (cases)", "mean over seeds", "mean over cases"], summary) + "\n")
    if len(trees) > 1:
        body += ("\nPaired, case by case (same seed, split and direction): difference "
                 f"{trees[0][0]} - other\n\n"
                 + table(["other", "cases", "mean difference", "SE over cases", "SE over seeds",
                                f"{labels[0]} higher (cases)", f"{labels[0]} higher (seeds)"],
                         [paired(results, labels[0], label, seeds) for label in labels[1:]]) + "\n")
    print(body)
    if not args.no_append:
        append_section("Content-disjoint check of stage one", body, info)
        update_current(f"content-disjoint check of stage one ({args.source} contents): test SRCC, mean over seeds",
                       ", ".join(f"{label} {mean:.3f}" for label, _, mean in summary), info=info)
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
