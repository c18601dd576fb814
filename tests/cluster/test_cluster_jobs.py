"""The one job description (ClusterJobs): its defaults, its checks, the environment its jobs start in,
and the same defaults reaching every command that submits jobs."""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli import app
from diffvqa_cache.cluster.jobs import NO_ENVIRONMENT, ClusterJobs
from diffvqa_cache.errors import UserInputError

runner = CliRunner()


def test_one_set_of_defaults():
    jobs = ClusterJobs(cluster="slurm", jobs=4)
    assert (jobs.cpus_per_job, jobs.gpus_per_job, jobs.mem, jobs.walltime) == (8, 1, "32GB", "24:00:00")
    assert (jobs.queue, jobs.account, jobs.setup, jobs.logs, jobs.start_timeout) == (None, None, None, Path("logs"), 3600.0)
    assert ClusterJobs().cluster is None and ClusterJobs().jobs is None  # no jobs: extract/sweep run elsewhere


def test_the_commands_show_the_same_defaults_but_sweep_asks_for_no_gpu():
    def default(command: list[str], option: str) -> str:
        lines = runner.invoke(app, [*command, "--help"], env={"COLUMNS": "200"}).stdout.splitlines()
        start = next(i for i, ln in enumerate(lines) if f" {option} " in ln)
        entry = " ".join([lines[start]] + list(itertools.takewhile(  # the option's text, wrapped or not
            lambda ln: ln.strip() and not ln.lstrip().startswith("-"), lines[start + 1:])))
        return " ".join(entry.split()).split("[default: ")[1].split("]")[0]

    for command in (["extract"], ["sweep"], ["cluster"]):
        assert [default(command, o) for o in ("--cpus-per-job", "--mem", "--walltime", "--logs")] == [
            "8", "32GB", "24:00:00", "logs"]
    assert default(["extract"], "--gpus-per-job") == default(["cluster"], "--gpus-per-job") == "1"
    assert default(["sweep"], "--gpus-per-job") == "0"
    assert default(["cluster"], "--jobs") == "16"


@pytest.mark.parametrize("kwargs, message", [
    (dict(jobs=2), "--jobs needs --cluster"),
    (dict(cluster="slurm"), "needs --jobs N >= 1"),
    (dict(cluster="slurm", jobs=0), "needs --jobs N >= 1"),
    (dict(cluster="lsf", jobs=2), "--cluster must be one of slurm, pbs, got 'lsf'"),
    (dict(cluster="pbs", jobs=2, cpus_per_job=0), "--cpus-per-job >= 1"),
    (dict(cluster="pbs", jobs=2, gpus_per_job=-1), "--gpus-per-job >= 0"),
])
def test_bad_jobs_are_one_line_user_errors(kwargs, message):
    with pytest.raises(UserInputError, match=message) as info:
        ClusterJobs(**kwargs)
    assert "\n" not in str(info.value)


def test_jobs_start_in_this_environment_unless_setup_says_otherwise(tmp_path):
    assert ClusterJobs().setup_lines() == [f"source {sys.prefix}/bin/activate"]  # the tests run in a virtualenv
    assert ClusterJobs(setup=["module load cuda"]).setup_lines() == ["module load cuda"]
    assert ClusterJobs(setup=[]).setup_lines() == [NO_ENVIRONMENT]


def test_log_folder_is_absolute_and_relative_to_where_the_jobs_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert ClusterJobs().log_dir() == f"{tmp_path}/logs"
    assert ClusterJobs(logs=Path("out/logs")).log_dir("/work/project") == "/work/project/out/logs"
    assert ClusterJobs(logs=Path("/scratch/logs")).log_dir("/work/project") == "/scratch/logs"
