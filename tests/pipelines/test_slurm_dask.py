"""dask-jobqueue worker jobs started by the command itself (`--cluster slurm --jobs N`) on a real one-node SLURM
(tests/slurm.py): the jobs really go through sbatch, give the local results, survive a cancelled worker job,
and are cancelled when the command ends or is interrupted. Argument errors are checked without SLURM."""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli import app

runner = CliRunner()
BIN = Path(sys.executable).parent / "diffvqa-cache"
# the settings of conftest's tiny_extract_config, so the session's sample_cache is the local reference
TINY = ["--dataset", "sample", "--steps", "1", "--strength", "0.5", "--frames", "2", "--crops", "2", "--grid", "4",
        "--pixel-size", "32", "--shard-size", "2", "--batch-size", "6", "--decode-workers", "1"]
# dask workers run torch on one thread (the nanny sets OMP_NUM_THREADS=1), like this test process (conftest)
JOBS = ["--cluster", "slurm", "--jobs", "2", "--cpus-per-job", "1", "--mem", "2GB", "--walltime", "0:10:00"]
GRID = "base: {regressor.use_tcab: false, train.epochs: 2, train.batch_size: 8}\nconfigs:\n  - name: full\n" \
       "  - name: no_tdm\n    regressor.use_tdm: false\n"


def one_line_error(args: list[str], code: int = 2, progress_lines: int = 0) -> str:
    """The error of a failing command: one line, after `progress_lines` lines of progress on stderr."""
    result = runner.invoke(app, args)
    lines = result.stderr.splitlines()
    assert result.exit_code == code and len(lines) == progress_lines + 1, result.output
    assert lines[-1].startswith("error: "), result.output
    return lines[-1]


@pytest.mark.parametrize("args, message", [
    (["--cluster", "slurm", "--jobs", "2", "--workers", "2"], "not both --workers and --cluster"),
    (["--cluster", "slurm", "--jobs", "2", "--dask-scheduler", "tcp://h:8786"], "not both --dask-scheduler and --cluster"),
    (["--jobs", "2"], "--jobs needs --cluster"),
    (["--cluster", "slurm"], "needs --jobs N"),
    (["--cluster", "lsf", "--jobs", "2"], "--cluster must be one of slurm, pbs"),
])
def test_cluster_argument_errors_are_one_line(args, message, tmp_path):
    for command in (["extract", *TINY, "--out", str(tmp_path)],
                    ["sweep", "--cache", str(tmp_path), "--grid", str(tmp_path / "g.yaml"), "--out", str(tmp_path)]):
        assert message in one_line_error(command + args)
    assert not list(tmp_path.iterdir())


def test_cluster_conflicts_with_serial_and_cpu_jobs_with_cuda(tmp_path):
    assert "leave out --cluster" in one_line_error(["sweep", "--cache", str(tmp_path), "--grid", "g.yaml", "--out",
                                                    str(tmp_path), "--serial", "--cluster", "slurm", "--jobs", "1"])
    assert "needs GPU worker jobs" in one_line_error(["extract", *TINY, "--device", "cuda", "--gpus-per-job", "0",
                                                      "--cluster", "slurm", "--jobs", "1"])


@pytest.mark.parametrize("kind, gpus, expected", [
    ("slurm", 2, ["#SBATCH --cpus-per-task=8", "#SBATCH --gres=gpu:2", "#SBATCH --chdir=/work/project",
                  "--nthreads 1", "--nworkers 2", "--resources GPU=1", "#SBATCH -t 2:00:00"]),
    ("pbs", 0, ["#PBS -l select=1:ncpus=8:mem=16gb", "\ncd /work/project\n", "--nthreads 1", "--nworkers 8"]),
])
def test_worker_job_script(kind, gpus, expected, tmp_path):
    """The job `--cluster` submits, as dask-jobqueue renders it: one single-threaded worker per GPU or core."""
    from diffvqa_cache.cluster.dask_client import ClusterJobs, job_kwargs, jobqueue_cluster_class

    spec = ClusterJobs(cluster=kind, jobs=2, cpus_per_job=8, gpus_per_job=gpus, mem="16GB", walltime="2:00:00",
                       logs=tmp_path / "logs")
    job = jobqueue_cluster_class(kind).job_cls(scheduler="tcp://login1:8786", name="w",
                                               **job_kwargs(kind, spec, "/work/project"))
    script = job.job_script()
    assert all(e in script for e in expected), script
    assert f"source {sys.prefix}/bin/activate" in script and f"{tmp_path}/logs/" in script
    assert (kind == "slurm") == ("--resources GPU=1" in script)


def test_importing_dask_jobqueue_keeps_ctrl_c():
    """dask_jobqueue.runner, on import, makes Ctrl-C a sys.exit() (exit code 0); a fresh process shows it."""
    code = ("import signal; before = signal.getsignal(signal.SIGINT); "
            "from diffvqa_cache.cluster.dask_client import jobqueue_cluster_class; jobqueue_cluster_class('slurm'); "
            "assert signal.getsignal(signal.SIGINT) is before")
    subprocess.run([sys.executable, "-c", code], check=True)


def shard_sums(manifest: dict) -> dict[str, str]:
    return {s["file"]: s["sha256"] for s in manifest["shards"]}


def rows_without_time(results_csv: Path) -> list[dict]:
    with open(results_csv) as f:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(f)]


def job_ids(stderr: str) -> list[str]:
    line = next(ln for ln in stderr.splitlines() if "worker job(s)" in ln)
    return line.split("worker job(s) ")[1].split(";")[0].split(",")


@pytest.mark.slurm
def test_extract_on_slurm_worker_jobs_equals_local(slurm, sample_cache, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["extract", *TINY, "--limit", "6", "--out", "cache", *JOBS, "--gpus-per-job", "0"])
    assert result.exit_code == 0, result.output
    ids = job_ids(result.stderr)
    assert len(ids) == 2 and sorted(p.name for p in (tmp_path / "logs").glob("*.err")) == [
        f"diffvqa-dask-{i}.err" for i in sorted(ids)]
    slurm.wait(timeout=30)  # cancelled at the end: nothing left in the queue
    local = sample_cache(limit=6)
    cache_dir = Path(result.stdout.strip())
    manifest = json.loads((cache_dir / "manifest.json").read_text())
    assert cache_dir.name == local.fingerprint and manifest["complete"] and manifest["videos"] == 6
    assert shard_sums(manifest) == shard_sums(local.manifest) and len(manifest["shards"]) == 3


@pytest.mark.slurm
@pytest.mark.filterwarnings("ignore:4-parameter logistic fit failed")
def test_sweep_on_slurm_worker_jobs_survives_a_cancelled_job_and_equals_serial(slurm, sample_cache, tmp_path):
    from pipelines.sweep import run_sweep

    cache, grid = sample_cache(limit=16).cache_dir, tmp_path / "grid.yaml"
    grid.write_text(GRID)
    serial = run_sweep(cache, grid, tmp_path / "serial", serial=True, overrides={"splits": 2}, progress=False)
    out = tmp_path / "sweep"
    proc = subprocess.Popen([str(BIN), "sweep", "--cache", str(cache), "--grid", str(grid), "--out", str(out),
                             "--splits", "2", *JOBS], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        end = time.monotonic() + 300
        while not list(out.glob("tasks/*.json")):  # the first result: its worker goes straight on to the next task
            assert proc.poll() is None and time.monotonic() < end, "no task finished"
            time.sleep(0.05)
        first = json.loads(next(out.glob("tasks/*.json")).read_text())
        pid = int(first["worker"].rsplit(":", 1)[1])
        job = dict(v.split("=", 1) for v in Path(f"/proc/{pid}/environ").read_text().split("\0") if "=" in v)
        cancelled = job["SLURM_JOB_ID"]
        slurm.run("scancel", cancelled)
        stdout, stderr = proc.communicate(timeout=400)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    assert cancelled in job_ids(stderr) and slurm.states(cancelled) == ["CANCELLED"]
    assert "4 tasks run, 0 already done, 0 failed" in stdout
    tasks = [json.loads(p.read_text()) for p in (out / "tasks").glob("*.json")]
    assert len(tasks) == 4 and not any(t["error"] for t in tasks)
    assert {t["worker"] for t in tasks} - {first["worker"]}  # the other worker (or a replacement) took over
    assert rows_without_time(out / "results.csv") == rows_without_time(serial.out / "results.csv")
    slurm.wait(timeout=30)  # the remaining job and any replacement are cancelled at the end


@pytest.mark.slurm
def test_ctrl_c_cancels_the_worker_jobs(slurm, sample_cache, tmp_path):
    grid = tmp_path / "grid.yaml"
    grid.write_text(GRID)
    proc = subprocess.Popen([str(BIN), "sweep", "--cache", str(sample_cache(limit=16).cache_dir), "--grid", str(grid),
                             "--out", str(tmp_path / "sweep"), "--splits", "2", *JOBS], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # if we run in background
    try:
        end = time.monotonic() + 120
        while "R" not in slurm.run("squeue", "-h", "-o", "%t", check=False).split():
            assert proc.poll() is None and time.monotonic() < end, proc.stderr.read() if proc.poll() else "no job ran"
            time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0
    slurm.wait(timeout=30)


@pytest.mark.slurm
def test_worker_jobs_that_cannot_start_are_one_line_errors(slurm, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    extract = ["extract", *TINY, "--limit", "2", "--out", "cache", *JOBS, "--gpus-per-job", "0"]
    # after the dataset's summary and the labels line (file, columns, MOS range)
    refused = one_line_error(extract + ["--queue", "nope"], progress_lines=2)
    assert "sbatch refused the worker job" in refused and "partition" in refused.lower()
    # this SLURM has no GPUs (no GresTypes): extract's default of one GPU per job is refused, with the fix
    gpus = one_line_error(extract[:-2] + ["--gpus-per-job", "1"], progress_lines=2)
    assert "Invalid generic resource (gres) specification" in gpus and "pass --gpus-per-job 0" in gpus
    ended = one_line_error(extract + ["--setup", "exit 3"], code=1, progress_lines=3)  # and the jobs submitted
    assert "no dask worker connected" in ended and "ended" in ended and str(tmp_path / "logs") in ended
    slurm.wait(timeout=30)
