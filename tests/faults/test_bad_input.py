"""Fault injection: bad labels and arguments give one clear line, exit code 2, and write nothing."""

from __future__ import annotations

import shutil

import pytest
from typer.testing import CliRunner

from cli import app

runner = CliRunner()


@pytest.fixture
def root(tmp_path, sample_root):
    root = tmp_path / "ds"
    (root / "videos").mkdir(parents=True)
    for name in ("sample_000.mp4", "sample_001.mp4"):
        shutil.copy(sample_root / "videos" / name, root / "videos" / name)
    return root


def extract(root, out, *extra, strength: str | None = "0.5"):
    """The CLI's extract on `root`; --strength 0.5 unless `strength` is None (a chain from pure noise)."""
    return runner.invoke(app, ["extract", "--dataset", "csv", "--root", str(root), "--out", str(out),
                               "--steps", "1", "--frames", "2", "--crops", "1", *(["--strength", strength] if strength else []), *extra])


@pytest.mark.parametrize("labels, expected", [
    ("clip,rating\nvideos/sample_000.mp4,3\n", "column"),                                   # missing columns
    ("video,mos\nvideos/sample_000.mp4,3.1\nvideos/sample_001.mp4,good\n", "good"),       # non-numeric MOS
    ("video,mos\nvideos/sample_000.mp4,3.1\nvideos/sample_000.mp4,3.3\n", "sample_000"),  # duplicated id
])
def test_bad_label_files(root, tmp_path, labels, expected):
    (root / "labels.csv").write_text(labels)
    result = extract(root, tmp_path / "out")
    assert result.exit_code == 2, result.output
    assert result.stderr.count("\n") == 1 and expected in result.stderr, result.stderr
    assert not (tmp_path / "out").exists()


def test_problems_can_be_skipped_explicitly(root, tmp_path):
    (root / "labels.csv").write_text("video,mos\nvideos/sample_000.mp4,3.1\nvideos/sample_001.mp4,n/a\n")
    result = extract(root, tmp_path / "out", "--allow-problems", "--limit", "1")
    assert result.exit_code == 0, result.output


def test_label_file_of_another_dataset(root, tmp_path):
    mat = next((__import__("pathlib").Path(__file__).parents[1] / "fixtures" / "labels").glob("*.mat"))
    result = runner.invoke(app, ["extract", "--dataset", "kvd", "--root", str(root), "--labels", str(mat), "--strength", "0.5",
                                 "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and result.stderr.count("\n") == 1, result.output
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("args, expected", [
    (["--steps", "0"], "steps"),
    (["--sampler", "nope"], "sampler"),
    (["--num-parts", "2", "--part", "5"], "--part 5"),
    (["--num-shards", "2", "--shard-index", "5"], "--part 5"),  # the names of earlier versions still work
    (["--workers", "2", "--dask-scheduler", "tcp://x:1"], "not both"),
])
def test_bad_arguments(root, tmp_path, args, expected):
    (root / "labels.csv").write_text("video,mos\nvideos/sample_000.mp4,3.1\n")
    result = extract(root, tmp_path / "out", *args)
    assert result.exit_code == 2 and expected in result.stderr and result.stderr.count("\n") == 1, result.output
    assert not (tmp_path / "out").exists()


def test_features_that_cannot_follow_the_input_are_refused(root, tmp_path):
    """No Controller and a chain from pure noise: every video would get the same features."""
    (root / "labels.csv").write_text("video,mos\nvideos/sample_000.mp4,3.1\nvideos/sample_001.mp4,2.0\n")
    result = extract(root, tmp_path / "out", strength=None)
    assert result.exit_code == 2 and result.stderr.count("\n") == 1, result.output
    assert "same diffusion features" in result.stderr and "adapt" in result.stderr and "--strength < 1" in result.stderr
    assert not (tmp_path / "out").exists()


def test_second_dataset_never_replaces_the_cache_in_the_same_out(tmp_path, sample_root):
    """`extract --root A --out O` then `--root B --out O`: B is refused (exit 2, one line saying what to
    do) and A's cache keeps its videos; A with one more video listed still extends its own cache."""
    import json

    def dataset(name, videos):
        root = tmp_path / name
        (root / "videos").mkdir(parents=True)
        for v in videos:
            shutil.copy(sample_root / "videos" / f"sample_00{v}.mp4", root / "videos" / f"sample_00{v}.mp4")
        (root / "labels.csv").write_text("video,mos\n" + "".join(f"videos/sample_00{v}.mp4,{2 + v / 4}\n"
                                                                  for v in videos))
        return root

    def videos_cached():
        info = runner.invoke(app, ["cache", "info", str(tmp_path / "out"), "--json"])
        return json.loads(info.stdout)["videos"]

    a, b = dataset("A", [0, 1, 2, 3]), dataset("B", [4])
    assert extract(a, tmp_path / "out").exit_code == 0 and videos_cached() == 4
    second = extract(b, tmp_path / "out")
    assert second.exit_code == 2, second.output
    last = second.stderr.strip().splitlines()[-1]
    assert "another video list" in last and "--out" in last and "sample_000" in last, second.stderr
    assert videos_cached() == 4
    # the same dataset with a video more: extends the cache
    shutil.copy(sample_root / "videos" / "sample_004.mp4", a / "videos" / "sample_004.mp4")
    (a / "labels.csv").write_text((a / "labels.csv").read_text() + "videos/sample_004.mp4,3.0\n")
    assert extract(a, tmp_path / "out").exit_code == 0 and videos_cached() == 5
    # B into its own --out, as the message says
    assert extract(b, tmp_path / "out-B").exit_code == 0


def test_odd_names_and_suspect_rows_extract_with_readable_ids_and_warnings(tmp_path, sample_root):
    """`ü.mp4` and `é.mp4` were both `_` (refused as a collision); a negative MOS and a video outside --root
    were taken silently: now kept under readable ids, and warned about by row."""
    import json

    root = tmp_path / "ds"
    root.mkdir()
    for name in ("ü.mp4", "é.mp4"):
        shutil.copy(sample_root / "videos" / "sample_000.mp4", root / name)
    shutil.copy(sample_root / "videos" / "sample_001.mp4", tmp_path / "outside.mp4")
    (root / "labels.csv").write_text("video,mos\nü.mp4,3.1\né.mp4,-1\n../outside.mp4,2.0\n", encoding="utf-8")
    result = extract(root, tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert "row 3: MOS -1 of é.mp4 is negative" in result.stderr
    assert "row 4: ../outside.mp4 is outside --root" in result.stderr and "2 warnings" in result.stderr
    info = json.loads(runner.invoke(app, ["cache", "info", str(tmp_path / "out"), "--json"]).stdout)
    assert info["videos"] == 3
    from diffvqa_cache.cache.folder import FeatureCache

    assert sorted(FeatureCache(tmp_path / "out").keys) == sorted(["ü", "é", "_.__outside"])
