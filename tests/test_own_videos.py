"""A user's own folder of clips and a `filename,score` CSV: which label file and columns are read, scores
checked against labels (predict --labels, metrics --labels, metrics per split), a finished predict rerun,
and the README's "Using it on your own videos" commands run as written."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from diffvqa_cache.datasets import load_dataset
from diffvqa_cache.errors import DatasetError


def _folder(root: Path, names=("clip01.mp4", "clip02.mp4", "clip03.mp4"), csv_name="my scores.csv") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for n in names:
        (root / n).touch()
    (root / csv_name).write_text("filename,score\n" + "".join(f"{n},{1.5 + i}\n" for i, n in enumerate(names)))
    return root


def test_any_one_label_table_is_found_and_what_was_read_is_said(tmp_path, capsys):
    from diffvqa_cache.cli_options import load_checked_dataset

    root = _folder(tmp_path / "clips")
    load_checked_dataset("csv", root, None, None)
    said = capsys.readouterr().err
    assert f"labels: {root / 'my scores.csv'}" in said
    assert "video column 'filename', MOS column 'score'" in said and "MOS 1.5-3.5 over 3 videos" in said
    # --labels FILE alone: its folder is the root
    data = load_dataset("csv", None, labels=root / "my scores.csv")
    assert data.root == root and len(data.records) == 3
    with pytest.raises(DatasetError, match="--dataset csv --labels"):  # extract's default dataset is sample
        load_dataset("sample", None, labels=root / "my scores.csv")


def test_no_or_several_label_files_say_what_is_accepted(tmp_path):
    root = tmp_path / "clips"
    root.mkdir()
    (root / "a.mp4").touch()
    with pytest.raises(DatasetError) as exc:
        load_dataset("csv", root)
    text = str(exc.value)
    assert "tried labels.csv" not in text and "any one CSV/TSV/XLSX" in text and "--labels FILE" in text
    (root / "one.csv").write_text("video,mos\na.mp4,1\n")
    (root / "two.xlsx").write_bytes(b"")
    with pytest.raises(DatasetError) as exc:
        load_dataset("csv", root)
    assert "2 possible label files" in str(exc.value) and "one.csv, two.xlsx" in str(exc.value)


def test_label_names_match_with_or_without_extension_and_folders(tmp_path):
    from diffvqa_cache.datasets import read_labels

    (tmp_path / "l.csv").write_text("filename,score\nclip01.mp4,3.5\nvideos/clip02.mkv,2\na/x.mp4,1\nb/x.mp4,4\n")
    t = read_labels(tmp_path / "l.csv")
    assert t.columns == ("filename", "score") and t.rows == 4
    assert t.match("clip01") == 3.5 and t.match("/data/my_clips/clip01.mp4") == 3.5
    assert t.match("clip02") == 2 and t.match("other/videos/clip02.mp4") == 2
    assert t.match("/d/b/x.mp4") == 4 and t.match("x") is None  # two x: the folder decides, else unmatched
    assert t.match("clip03.mp4") is None


# ---------------------------------------------------------------- the README walk, run as written

README = Path(__file__).resolve().parents[1] / "README.md"
TINY = {"SD": "--model tiny --strength 0.5 --steps 1 --timestep-spacing trailing --frames 2 --crops 1 --grid 4 "
              "--pixel-size 32 --shard-size 4 --decode-workers 1 --device cpu",
        "FIT": "--splits 2 --epochs 1 --device cpu --set regressor.use_tcab=false --set train.batch_size=4 "
               "--set test_fraction=0.25"}  # 12 clips: 3 test videos per split, as the README says


def readme_commands(**values) -> list[list[str]]:
    """The `diffvqa-cache` lines of the README's "Using it on your own videos" block, with its variables
    (SD=..., FIT=...) set to `values`, as argument lists."""
    import re
    import shlex

    text = README.read_text()
    section = text[text.index("## Using it on your own videos"):]
    block = section[section.index("```bash") + 7:]
    block = block[:block.index("```")].replace("\\\n", " ")
    names, commands = {}, []
    for line in block.splitlines():
        line = line.split("  #")[0].strip()
        if m := re.fullmatch(r'([A-Z_]+)="([^"]*)"', line):
            names[m.group(1)] = values[m.group(1)]
        elif line.startswith("diffvqa-cache "):
            line = re.sub(r"\$([A-Z_]+)", lambda m: names[m.group(1)], line)
            commands.append(shlex.split(line)[1:])
    assert set(names) == set(values) and len(commands) == 5
    return commands


@pytest.fixture(scope="module")
def walk(tmp_path_factory, sample_root):
    """A user's folder of 12 clips (from the sample) with `filename,score` in scores.csv, and the README's
    commands run in its parent folder: {command name: CliRunner result}, plus the folder."""
    import csv
    import os

    from typer.testing import CliRunner

    import cli

    home = tmp_path_factory.mktemp("user")
    clips = home / "my_clips"
    clips.mkdir()
    with open(sample_root / "labels.csv", newline="") as fh:
        sample = list(csv.DictReader(fh))[:12]
    lines = ["filename,score"]
    for i, row in enumerate(sample, start=1):
        shutil.copy(sample_root / row["video"], clips / f"clip{i:02d}.mp4")
        lines.append(f"clip{i:02d}.mp4,{row['mos']}")
    (clips / "scores.csv").write_text("\n".join(lines) + "\n")
    old = os.getcwd()
    os.chdir(home)
    results = {}
    try:
        for args in readme_commands(**TINY):
            res = CliRunner().invoke(cli.app, args)
            assert res.exit_code == 0, (args, res.output)
            results.setdefault(args[0], []).append(res)
        # the same predict again: everything is in my_scores.csv already
        predict = next(a for a in readme_commands(**TINY) if a[0] == "predict")
        results["rerun"] = CliRunner().invoke(cli.app, predict)
    finally:
        os.chdir(old)
    return home, results


def test_readme_walk_extract_says_which_labels_it_read(walk):
    home, results = walk
    said = results["extract"][0].stderr
    assert f"labels: {home / 'my_clips' / 'scores.csv'} (video column 'filename', MOS column 'score')" in said
    assert "over 12 videos" in said


def test_predict_checks_scores_against_the_labels(walk):
    import pandas as pd

    home, results = walk
    out = results["predict"][0].stdout
    assert "MOS" in out.splitlines()[0] and "clip01" in out
    assert "checked against" in out and "12 videos matched" in out
    for key in ("SRCC=", "PLCC=", "KRCC=", "RMSE="):
        assert key in out
    table = pd.read_csv(home / "my_scores.csv")
    labels = pd.read_csv(home / "my_clips" / "scores.csv")
    assert dict(zip(table.video, table.mos)) == {f.removesuffix(".mp4"): s for f, s in zip(labels.filename, labels.score)}
    # metrics SCORES --labels gives the same numbers as predict printed
    same = results["metrics"][1].stdout
    assert same.splitlines()[1] == out.splitlines()[-1]


def test_metrics_on_a_run_reports_per_split_and_the_median_like_fit(walk):
    import json

    home, results = walk
    out = results["metrics"][0].stdout
    assert "per split, as fit reports it (not pooled)" in out and "split-00" in out and "split-01" in out
    fit = json.loads((home / "runs" / "mine" / "metrics.json").read_text())
    test = next(iter(fit["summary"]))
    median = fit["summary"][test]["srcc"]["median"]
    srcc_row = next(line for line in out.splitlines() if line.startswith("SRCC"))
    assert float(srcc_row.split()[1]) == pytest.approx(median, abs=1e-4)


def test_a_finished_predict_rerun_prints_the_table_from_the_file(walk):
    _, results = walk
    rerun, first = results["rerun"], results["predict"][0]
    assert rerun.exit_code == 0, rerun.output
    assert "no videos scored" not in rerun.stdout and "0/0" not in rerun.output
    assert "12 of 12 videos already scored" in rerun.stderr and "12 read from my_scores.csv" in rerun.stderr
    assert rerun.stdout == first.stdout  # the same table and check, read back from my_scores.csv
    assert "--model tiny" in first.stderr and "--model tiny" not in rerun.stderr  # no model loaded for it


def test_metrics_of_a_runs_predictions_are_per_split_not_pooled(tmp_path):
    from typer.testing import CliRunner

    import cli

    # each split ranks its test videos perfectly, but split-01's model is offset: pooling mixes the two
    rows = ["video,mos,pred,split,test_set"]
    rows += [f"a{i},{m},{m / 10},split-00,test" for i, m in enumerate([1, 2, 3, 4, 5])]
    rows += [f"b{i},{m},{m / 10 + 1},split-01,test" for i, m in enumerate([1.5, 2.5, 3.5, 4.5, 5])]
    path = tmp_path / "predictions.csv"
    path.write_text("\n".join(rows) + "\n")
    res = CliRunner().invoke(cli.app, ["metrics", str(path)])
    assert res.exit_code == 0, res.output
    assert "per split, as fit reports it (not pooled): test set test" in res.stdout
    srcc = next(line for line in res.stdout.splitlines() if line.startswith("SRCC"))
    assert srcc.split()[1] == "1.0000" and "(2 splits" in res.stdout
    pooled = CliRunner().invoke(cli.app, ["metrics", str(path), "--pooled"])
    assert pooled.exit_code == 0 and "SRCC=0.6079" in pooled.stdout  # what metrics printed before


def test_a_label_file_without_recognisable_columns_says_which_to_name(tmp_path):
    from diffvqa_cache.datasets import read_labels

    (tmp_path / "l.csv").write_text("flickr_id,rating\n1,3\n")
    with pytest.raises(DatasetError) as exc:
        read_labels(tmp_path / "l.csv")
    text = str(exc.value)
    assert "has no video and MOS columns" in text and "found flickr_id, rating" in text and "--video-column" in text
    assert read_labels(tmp_path / "l.csv", "flickr_id", "rating").match("videos/1.mp4") == 3


# ---------------------------------------------------------------- issue 23: scale, percentile, time you can plan

def test_readme_walk_fit_prints_its_plan_scale_and_estimate(walk):
    import re

    home, results = walk
    said = results["fit"][0].stderr
    plan = re.search(r"plan: 2 split\(s\) x 1 epochs over (\d+) training videos \(9 per split\), TCAB off, device cpu",
                     said)
    assert plan, said
    assert "scale: MOS 1-5 (--scale)" in said
    assert re.search(r"first epoch: \d+ s; the whole fit \(2 split\(s\) x 1 epochs\) needs about \d+ s more", said)
    from diffvqa_cache.run.folder import RunConfig

    run = RunConfig.read(home / "runs" / "mine")
    assert run.scale == (1.0, 5.0) and len(run.train_mos) == int(plan.group(1))  # every video some model trained on
    out = results["predict"][0]
    assert "score: MOS 1-5 of csv; 0-1: normalised on that range; better than: the share of the" in out.stdout
    assert "training videos of run mine (csv) scored lower" in out.stdout
    header = out.stdout.splitlines()[0]
    assert "better than" in header and "0-1" in header
    assert "features as the run's cache: 1 ddim step(s)" in out.stderr and "expect about" in out.stderr


def test_fit_without_scale_says_it_uses_the_observed_range(walk, tmp_path, capsys):
    from diffvqa_cache.run.folder import RunConfig
    from diffvqa_cache.training.settings import FitConfig
    from pipelines.fit import run_fit

    home, _ = walk
    cfg = FitConfig().with_overrides({"regressor.use_tcab": False, "train.epochs": 1, "splits": 1,
                                      "train.batch_size": 4, "test_fraction": 0.25})
    run_fit(home / "cache" / "csv", tmp_path / "run", cfg, progress=True)
    run = RunConfig.read(tmp_path / "run")
    low, high = min(run.train_mos), max(run.train_mos)
    said = capsys.readouterr().err
    assert run.scale == (run.cache.mos_range[0], run.cache.mos_range[1]) and run.scale[0] <= low <= high <= run.scale[1]
    assert (f"scale: MOS {run.scale[0]:g}-{run.scale[1]:g} (the observed range of the training labels; pass --scale "
            "LOW HIGH for your scale's limits)") in said
