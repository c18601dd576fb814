"""Job scripts for SLURM / PBS: job arrays of extraction parts and dask-jobqueue worker jobs."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from cli import app
from diffvqa_cache.errors import UserInputError
from pipelines.cluster import JobSpec, render

runner = CliRunner()
EXTRACT = ["--dataset", "lsvq", "--root", "/data/LSVQ", "--out", "/scratch/cache"]


def test_slurm_job_array_script():
    result = runner.invoke(app, ["cluster", "slurm", *EXTRACT, "--jobs", "16", "--gpus-per-job", "1",
                                 "--frames", "8", "--setup", "source .venv/bin/activate", "--print"])
    assert result.exit_code == 0, result.output
    script = result.stdout
    assert script.startswith("#!/bin/bash\n#SBATCH") and "#SBATCH --array=0-15" in script
    assert "#SBATCH --gres=gpu:1" in script and "source .venv/bin/activate" in script
    assert ("diffvqa-cache extract --dataset lsvq --root /data/LSVQ --out /scratch/cache --frames 8 "
            "--num-shards 16 --shard-index $SLURM_ARRAY_TASK_ID") in script
    assert "cache merge" in script


def test_slurm_dask_worker_script(tmp_path):
    path = tmp_path / "workers.sh"
    result = runner.invoke(app, ["cluster", "slurm", "--mode", "dask", *EXTRACT, "--jobs", "4",
                                 "--scheduler-address", "tcp://login1:8786", "--output", str(path)])
    assert result.exit_code == 0, result.output
    script = path.read_text()
    assert "#SBATCH --array=0-3" in script and "#SBATCH --gres=gpu:1" in script and "#SBATCH" in script
    assert "dask_worker tcp://login1:8786" in script and "--resources GPU=1" in script
    assert "--name diffvqa-${SLURM_ARRAY_TASK_ID}" in script
    assert "diffvqa-cache extract --dataset lsvq" in script and "sweep --cache" in script


def test_pbs_scripts_render():
    array = render(JobSpec(kind="pbs", jobs=8, extract_args=EXTRACT))
    assert "#PBS -J 0-7" in array and "--shard-index $PBS_ARRAY_INDEX" in array and "ngpus=1" in array
    dask = render(JobSpec(kind="pbs", mode="dask", jobs=2, gpus_per_job=2, extract_args=EXTRACT))
    assert "#PBS -J 0-1" in dask and "--nworkers 2" in dask and "--resources GPU=1" in dask


def test_bad_job_settings_are_user_errors():
    with pytest.raises(UserInputError):
        JobSpec(kind="lsf")
    with pytest.raises(UserInputError, match="one GPU"):
        JobSpec(mode="array", gpus_per_job=2)
