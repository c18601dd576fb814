"""Fault injection: messages that say what is true. predict's hint for a video too short for the run, its
count of what scored and what failed, a truncated results file, a --run that is missing or is a cache,
and worker jobs asking a cluster for GPUs it does not have."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

from cli import app

runner = CliRunner()


def one_line_error(args: list[str], code: int = 2) -> str:
    """The error of a failing command: exit `code` and exactly one `error:` line on stderr."""
    result = runner.invoke(app, args)
    errors = [ln for ln in result.stderr.splitlines() if ln.startswith("error: ")]
    assert result.exit_code == code and len(errors) == 1, result.output
    return errors[0]


@pytest.fixture(scope="module")
def clips(tmp_path_factory, sample_root):
    """A sample clip, a one-frame clip and a file that is not a video."""
    from diffvqa_cache.clip_writer import write_clip

    folder = tmp_path_factory.mktemp("clips")
    shutil.copy(sample_root / "videos" / "sample_003.mp4", folder / "good.mp4")
    write_clip(folder / "still.mp4", np.full((1, 48, 64, 3), 90, np.uint8), fps=24)
    (folder / "broken.mp4").write_bytes(b"not a video")
    return folder


def test_predict_says_what_scored_what_failed_and_why_without_options_it_lacks(run16, clips, tmp_path):
    out = tmp_path / "scores.csv"
    result = runner.invoke(app, ["predict", str(clips / "good.mp4"), str(clips / "still.mp4"), str(clips / "broken.mp4"),
                                 "--run", str(run16), "-o", str(out)])
    assert result.exit_code == 1, result.output
    still = next(ln for ln in result.stdout.splitlines() if ln.startswith("still"))
    # the run fixes the sampling (2 frames per video here): predict has no option to change it
    assert "1 frame(s), fewer than the 2 frames per video this run samples" in still and "cannot score it" in still
    assert "--frames" not in result.output and "--fps" not in still
    assert f"wrote {out}: 1 videos scored in this run, 2 failed" in result.stderr
    result = runner.invoke(app, ["predict", str(clips / "broken.mp4"), "--run", str(run16)])  # no -o: said too
    assert result.exit_code == 1 and "0 videos scored in this run, 1 failed" in result.stderr


@pytest.mark.parametrize("suffix", [".csv", ".json"])
def test_a_truncated_results_file_is_called_truncated_with_its_fix_once(run16, clips, tmp_path, suffix):
    out = tmp_path / f"scores{suffix}"
    video = str(clips / "good.mp4")
    assert runner.invoke(app, ["predict", video, "--run", str(run16), "-o", str(out)]).exit_code == 0
    text = out.read_text()
    out.write_text(text[:len(text) - 25])  # cut inside the last row (CSV: inside its run column)
    line = one_line_error(["predict", video, "--run", str(run16), "-o", str(out)])
    assert "truncated or damaged" in line and "another run" not in line
    assert line.count("--output") == 1 and line.count(str(out)) == 2  # the file, and the hint to delete it


def test_a_results_file_of_another_run_says_so_with_its_fix_once(run16, clips, tmp_path):
    out = tmp_path / "scores.json"
    video = str(clips / "good.mp4")
    assert runner.invoke(app, ["predict", video, "--run", str(run16), "-o", str(out)]).exit_code == 0
    data = json.loads(out.read_text())
    out.write_text(json.dumps({**data, "run": "/elsewhere/run"}))
    line = one_line_error(["predict", video, "--run", str(run16), "-o", str(out)])
    assert "holds scores of run /elsewhere/run" in line and line.count("--output") == 1


def test_run_that_is_missing_or_is_a_cache_says_which(run16, cache16, clips, tmp_path):
    video = str(clips / "good.mp4")
    missing = tmp_path / "no-such-run"
    cache_root = cache16.parent.parent  # extract's --out: OUT/<dataset>/<fingerprint>
    for command in (["predict", video, "--run"], ["cache", "score", str(cache16), "--run"]):
        line = one_line_error([*command, str(missing)])
        assert f"--run {missing}: no such folder" in line and "config.json" not in line
        for cache in (cache16, cache_root):
            line = one_line_error([*command, str(cache)])
            assert f"--run {cache} is a feature cache" in line and f"diffvqa-cache fit --cache {cache} --out RUN" in line
    line = one_line_error(["fit", "--cache", str(cache16), "--out", str(tmp_path / "ft"), "--init", str(cache16)])
    assert f"--init {cache16} is a feature cache" in line and not (tmp_path / "ft").exists()


def test_gpu_worker_jobs_refused_by_a_cluster_without_gpus_get_the_fix(tmp_path, monkeypatch):
    """sbatch of a cluster without GPUs (gres) refuses `--gres=gpu:1`: extract's worker jobs ask for one GPU
    each by default, so the hint is --gpus-per-job 0."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    sbatch = bin_dir / "sbatch"  # what slurm's sbatch prints on such a cluster, and its exit code
    sbatch.write_text("#!/bin/sh\necho 'sbatch: error: Batch job submission failed: Invalid generic resource (gres) "
                      "specification' >&2\nexit 1\n")
    sbatch.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{__import__('os').environ['PATH']}")
    monkeypatch.chdir(tmp_path)
    line = one_line_error(["extract", "--dataset", "sample", "--limit", "2", "--steps", "1", "--frames", "2",
                           "--strength", "0.5", "--out", "cache", "--cluster", "slurm", "--jobs", "1"])
    assert "Invalid generic resource (gres) specification" in line and "pass --gpus-per-job 0" in line
    assert not (tmp_path / "cache").exists()
