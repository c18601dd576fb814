"""Job scripts for SLURM and PBS as rendered from one job description (JobScript = ClusterJobs plus what
runs), and the SLURM submission of an array with its finishing job. The scripts also run on a real
one-node SLURM in tests/pipelines/test_slurm_jobs.py; PBS is rendering only (no server in Debian)."""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

import pytest

from diffvqa_cache.cluster.jobs import ClusterJobs
from diffvqa_cache.cluster.scripts import JobScript, job_script, render, render_finish, submit_line, write_scripts
from diffvqa_cache.cluster.submit import submit_array
from diffvqa_cache.errors import UserInputError

EXTRACT = ["--dataset", "sample", "--out", "cache dir"]


def script(kind: str, mode: str = "array", **batch) -> JobScript:
    return JobScript(ClusterJobs(cluster=kind, **{"jobs": 4, **batch}), mode, extract_args=EXTRACT, workdir="/proj")


def test_slurm_array_asks_for_what_the_jobs_say():
    text = render(script("slurm", queue="gpu", account="vqa", mem="16GB", walltime="2:00:00", cpus_per_job=4))
    for line in ("#SBATCH --job-name=diffvqa-extract", "#SBATCH --array=0-3", "#SBATCH --cpus-per-task=4",
                 "#SBATCH --mem=16G", "#SBATCH --time=2:00:00", "#SBATCH --chdir=/proj",
                 "#SBATCH --output=/proj/logs/%x-%A_%a.out", "#SBATCH --gres=gpu:1", "#SBATCH --partition=gpu",
                 "#SBATCH --account=vqa", "export OMP_NUM_THREADS=4", f"source {sys.prefix}/bin/activate"):
        assert f"\n{line}\n" in text, line
    assert text.rstrip().endswith("diffvqa-cache extract --dataset sample --out 'cache dir' --num-parts 4 "
                                  "--part $SLURM_ARRAY_TASK_ID")
    cpu = render(script("slurm", gpus_per_job=0))
    assert "--gres" not in cpu and "--partition" not in cpu and "--account" not in cpu


def test_pbs_array_and_its_finishing_job():
    spec = script("pbs", queue="workq", account="vqa", gpus_per_job=0, logs=Path("/scratch/logs"))
    text = render(spec)
    for line in ("#PBS -N diffvqa-extract", "#PBS -J 0-3", "#PBS -l select=1:ncpus=8:mem=32gb",
                 "#PBS -l walltime=24:00:00", "#PBS -o /scratch/logs/", "#PBS -q workq", "#PBS -A vqa", "cd /proj"):
        assert f"\n{line}\n" in text, line
    assert "--part $PBS_ARRAY_INDEX" in text and "qsub -W depend=afterany" in text
    finish = render_finish(spec)
    assert "#PBS -N diffvqa-finish" in finish and "#PBS -J" not in finish
    assert finish.rstrip().endswith("diffvqa-cache extract --dataset sample --out 'cache dir'")


@pytest.mark.parametrize("kind, expected", [
    ("slurm", ["#SBATCH --array=0-3", "#SBATCH --gres=gpu:2", "--nworkers 2", "--resources GPU=1",
               "--name diffvqa-${SLURM_ARRAY_TASK_ID}", "#SBATCH -t 24:00:00", "#SBATCH --mem=30G"]),
    ("pbs", ["#PBS -J 0-3", "select=1:ncpus=8:ngpus=2:mem=32gb", "--nworkers 2", "\ncd /proj\n"]),
])
def test_dask_worker_jobs_render_from_the_same_description(kind, expected):
    text = render(script(kind, "dask", gpus_per_job=2))
    assert all(e in text for e in expected), text
    assert "tcp://SCHEDULER_HOST:8786" in text and "/proj/logs" in text and f"source {sys.prefix}/bin/activate" in text


def test_written_scripts_and_the_lines_that_submit_them(tmp_path):
    path = tmp_path / "x.sh"
    assert write_scripts(script("slurm"), path) == [path, tmp_path / "x.finish.sh"]
    assert submit_line(script("slurm"), path) == (f"id=$(sbatch --parsable {path}) && sbatch "
                                                  f"--dependency=afterany:$id {tmp_path}/x.finish.sh")
    assert submit_line(script("pbs"), path) == f"id=$(qsub {path}) && qsub -W depend=afterany:$id {tmp_path}/x.finish.sh"
    assert write_scripts(script("pbs", "dask"), tmp_path / "w.sh") == [tmp_path / "w.sh"]
    assert submit_line(script("pbs", "dask"), tmp_path / "w.sh") == f"qsub {tmp_path}/w.sh"


def test_bad_scripts_are_user_errors():
    with pytest.raises(UserInputError, match="batch system must be one of"):
        job_script("lsf", "array", {"jobs": 2})
    with pytest.raises(UserInputError, match="--mode one of"):
        job_script("slurm", "workers", {"jobs": 2})
    with pytest.raises(UserInputError, match="one GPU"):
        job_script("slurm", "array", {"jobs": 2, "gpus_per_job": 2})
    with pytest.raises(UserInputError, match="needs --jobs"):
        job_script("slurm", "array", {})


@pytest.fixture
def sbatch_log(tmp_path, monkeypatch):
    """An `sbatch` on PATH that records its arguments and answers job ids 100, 101, ... as --parsable does."""
    bin_dir, log = tmp_path / "bin", tmp_path / "sbatch.log"
    bin_dir.mkdir()
    exe = bin_dir / "sbatch"
    exe.write_text(f'#!/bin/sh\necho "$@" >> {log}\necho $((100 + $(wc -l < {log}) - 1))";local"\n')
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return log


def test_submit_sends_the_missing_parts_then_the_finishing_job(sbatch_log, tmp_path):
    spec, path = script("slurm"), tmp_path / "x.sh"
    write_scripts(spec, path)
    sub = submit_array(spec, path, [1, 3])
    assert (sub.array_id, sub.finish_id) == ("100", "101")
    assert sbatch_log.read_text().splitlines() == [f"--parsable --array=1,3 {path}",
                                                   f"--parsable --dependency=afterany:100 {tmp_path}/x.finish.sh"]
    assert "parts 1,3 of 4" in sub.describe() and "/proj/logs/diffvqa-extract-100_<part>.out" in sub.describe()
    all_parts = submit_array(spec, path, [0, 1, 2, 3])  # all of them: the array as written
    assert sbatch_log.read_text().splitlines()[2] == f"--parsable {path}" and all_parts.array_id == "102"
    alone = submit_array(spec, path, [])
    assert alone.array_id is None and sbatch_log.read_text().splitlines()[-1] == f"--parsable {tmp_path}/x.finish.sh"
    assert alone.describe().startswith("nothing is missing")


def test_submit_without_sbatch_is_a_user_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(UserInputError, match="sbatch not found"):
        submit_array(script("slurm"), tmp_path / "x.sh", [0])
