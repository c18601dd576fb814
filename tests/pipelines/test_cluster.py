"""Job scripts for SLURM / PBS: job arrays of extraction parts and dask-jobqueue worker jobs, as rendered.

PBS has no server in Debian's packages, so its scripts are tested here only; SLURM scripts also run on a
real local SLURM in test_slurm_jobs.py.
"""

from __future__ import annotations

import sys

import pytest
from typer.testing import CliRunner

from cli import app
from diffvqa_cache.errors import UserInputError
from diffvqa_cache.cluster.jobs import activation_lines
from diffvqa_cache.cluster.scripts import job_script, render, render_finish
from pipelines.submit import missing_parts

runner = CliRunner()
EXTRACT = ["--dataset", "lsvq", "--root", "/data/LSVQ", "--out", "/scratch/cache", "--controller", "/ctrl/lsvq"]


@pytest.fixture(autouse=True)
def in_tmp(tmp_path, monkeypatch):
    """`cluster` creates the log folder where it runs."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_slurm_job_array_script(tmp_path):
    result = runner.invoke(app, ["cluster", "slurm", *EXTRACT, "--jobs", "16", "--gpus-per-job", "1",
                                 "--frames", "8", "--setup", "source .venv/bin/activate", "--print"])
    assert result.exit_code == 0, result.output
    script = result.stdout
    assert script.startswith("#!/bin/bash\n#SBATCH") and "#SBATCH --array=0-15" in script
    assert "#SBATCH --gres=gpu:1" in script and "source .venv/bin/activate" in script
    # the log folder is absolute and exists before SLURM opens it; the job runs where the command ran
    assert f"#SBATCH --output={tmp_path}/logs/%x-%A_%a.out" in script and (tmp_path / "logs").is_dir()
    assert f"#SBATCH --chdir={tmp_path}\n" in script and "mkdir" not in script
    assert "export OMP_NUM_THREADS=8" in script
    assert ("diffvqa-cache extract --dataset lsvq --root /data/LSVQ --out /scratch/cache --controller /ctrl/lsvq --frames 8 "
            "--num-parts 16 --part $SLURM_ARRAY_TASK_ID") in script
    assert "cache merge" in script and "--submit" in script


def test_written_array_has_a_finishing_job(tmp_path):
    result = runner.invoke(app, ["cluster", "slurm", *EXTRACT, "--jobs", "4", "--logs", "out/logs", "-o", "x.sh"])
    assert result.exit_code == 0, result.output
    finish = (tmp_path / "x.finish.sh").read_text()
    assert "#SBATCH --job-name=diffvqa-finish" in finish and "--array" not in finish
    assert f"#SBATCH --output={tmp_path}/out/logs/%x-%j.out" in finish and (tmp_path / "out" / "logs").is_dir()
    assert finish.rstrip().endswith("diffvqa-cache extract --dataset lsvq --root /data/LSVQ --out /scratch/cache --controller /ctrl/lsvq")
    assert f"sbatch --dependency=afterany:$id {tmp_path}/x.finish.sh" in (tmp_path / "x.sh").read_text()
    assert "sbatch --dependency=afterany:$id x.finish.sh" in result.stderr


def test_scripts_activate_the_environment_they_were_written_from(tmp_path):
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "activate").write_text("")
    assert activation_lines(str(venv), "/usr", environ={}) == [f"source {venv}/bin/activate"]
    conda = {"CONDA_PREFIX": "/opt/conda/envs/vqa", "CONDA_EXE": "/opt/conda/bin/conda"}
    assert activation_lines("/opt/conda/envs/vqa", "/opt/conda/envs/vqa", environ=conda) == [
        'eval "$(/opt/conda/bin/conda shell.bash hook)"', "conda activate /opt/conda/envs/vqa"]
    assert activation_lines("/usr", "/usr", environ={}) == []
    # these tests run in a virtualenv: its activation is the default, --setup replaces it
    assert f"source {sys.prefix}/bin/activate" in render(job_script("slurm", "array", {"jobs": 16}, extract_args=EXTRACT))
    script = render(job_script("slurm", "array", {"jobs": 16, "setup": ["module load cuda"]}, extract_args=EXTRACT))
    assert "module load cuda" in script and "bin/activate" not in script
    assert "must be on the job's PATH" in render(job_script("slurm", "array", {"jobs": 16, "setup": []}, extract_args=EXTRACT))


def test_slurm_dask_worker_script(tmp_path):
    path = tmp_path / "workers.sh"
    result = runner.invoke(app, ["cluster", "slurm", "--mode", "dask", *EXTRACT, "--jobs", "4",
                                 "--scheduler-address", "tcp://login1:8786", "--output", str(path)])
    assert result.exit_code == 0, result.output
    script = path.read_text()
    assert "#SBATCH --array=0-3" in script and "#SBATCH --gres=gpu:1" in script and "#SBATCH" in script
    assert "dask_worker tcp://login1:8786" in script and "--resources GPU=1" in script
    assert "--name diffvqa-${SLURM_ARRAY_TASK_ID}" in script
    assert f"#SBATCH --chdir={tmp_path}" in script and f"-o {tmp_path}/logs/" in script
    assert f"source {sys.prefix}/bin/activate" in script
    assert "diffvqa-cache extract --dataset lsvq" in script and "sweep --cache" in script


def test_pbs_scripts_render(tmp_path):
    spec = job_script("pbs", "array", {"jobs": 8}, extract_args=EXTRACT, workdir=str(tmp_path))
    array = render(spec)
    assert "#PBS -J 0-7" in array and "--part $PBS_ARRAY_INDEX" in array and "ngpus=1" in array
    assert f"#PBS -o {tmp_path}/logs/" in array and f"\ncd {tmp_path}\n" in array
    assert f"source {sys.prefix}/bin/activate" in array and "export OMP_NUM_THREADS=8" in array
    finish = render_finish(spec)
    assert "#PBS -J" not in finish and finish.rstrip().endswith("--out /scratch/cache --controller /ctrl/lsvq")
    dask = render(job_script("pbs", "dask", {"jobs": 2, "gpus_per_job": 2}, extract_args=EXTRACT))
    assert "#PBS -J 0-1" in dask and "--nworkers 2" in dask and "--resources GPU=1" in dask
    assert f"cd {tmp_path}" in dask and f"source {sys.prefix}/bin/activate" in dask


def test_bad_job_settings_are_user_errors():
    with pytest.raises(UserInputError):
        job_script("lsf", "array", {"jobs": 16})
    with pytest.raises(UserInputError, match="one GPU"):
        job_script("slurm", "array", {"jobs": 16, "gpus_per_job": 2})
    for kind, extra, message in (("pbs", ["--submit"], "SLURM job arrays"), ("slurm", ["--num-shards", "3"],
                                 "sets --num-parts"), ("slurm", ["--frame", "8"], "No such option: --frame")):
        result = runner.invoke(app, ["cluster", kind, *EXTRACT, *extra])
        assert result.exit_code == 2 and message in result.output, result.output


def test_missing_parts_are_those_owning_an_incomplete_shard(sample_root, tiny_extract_config, tmp_path):
    from diffvqa_cache.datasets import load_dataset
    from pipelines.extract import run_extract

    index = load_dataset("sample", None, limit=6)  # 3 shards of 2: part 0 of 2 owns shards 0 and 2, part 1 shard 1
    assert missing_parts(index, tiny_extract_config, tmp_path, 2) == [0, 1]
    run_extract(index, tiny_extract_config, tmp_path, num_parts=2, part=1, progress=False)
    assert missing_parts(index, tiny_extract_config, tmp_path, 2) == [0]
    assert missing_parts(index, tiny_extract_config, tmp_path, 3) == [0, 2]
