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
