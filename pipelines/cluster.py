"""Job scripts for HPC schedulers (SLURM, PBS): a job array of extraction parts, or dask workers.

`array`: task i of the array runs `diffvqa-cache extract ... --num-shards N --shard-index i`; all parts
write into the same --out (a shared filesystem) and a final rerun of the same command (no work left)
writes the complete manifest; parts written to separate folders are joined with `cache merge`.
`dask`: a dask-jobqueue worker job script (one worker per GPU, `--resources GPU=1`), rendered by
dask-jobqueue itself (the job class behind `SLURMCluster(...).job_script()`; no scheduler needed).
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field

from diffvqa_cache.errors import UserInputError

KINDS = ("slurm", "pbs")
MODES = ("array", "dask")


@dataclass
class JobSpec:
    kind: str = "slurm"
    mode: str = "array"
    jobs: int = 16  # array tasks (extraction parts) or dask worker jobs
    gpus_per_job: int = 1
    cpus_per_job: int = 8
    memory: str = "32GB"
    walltime: str = "24:00:00"
    queue: str | None = None  # SLURM partition / PBS queue
    account: str | None = None
    setup: list[str] = field(default_factory=list)  # shell lines run first (module load, venv activate)
    job_name: str = "diffvqa"
    extract_args: list[str] = field(default_factory=list)  # everything after `diffvqa-cache extract`
    scheduler_address: str = "tcp://SCHEDULER_HOST:8786"

    def __post_init__(self):
        if self.kind not in KINDS or self.mode not in MODES:
            raise UserInputError(f"scheduler must be one of {KINDS} and --mode one of {MODES}, got {self.kind}, {self.mode}")
        if self.jobs < 1 or self.gpus_per_job < 0 or self.cpus_per_job < 1:
            raise UserInputError("need --jobs >= 1, --gpus-per-job >= 0 and --cpus-per-job >= 1")
        if self.mode == "array" and self.gpus_per_job > 1:
            raise UserInputError("an extraction part uses one GPU: use --gpus-per-job 1 (and more --jobs) for arrays")


def _extract_cmd(spec: JobSpec, index_var: str | None) -> str:
    args = list(spec.extract_args)
    if index_var:
        args += ["--num-shards", str(spec.jobs)]
    cmd = "diffvqa-cache extract " + " ".join(shlex.quote(a) for a in args)
    return cmd + (f" --shard-index ${index_var}" if index_var else "")


def render(spec: JobSpec) -> str:
    return render_array(spec) if spec.mode == "array" else render_dask(spec)


def render_array(spec: JobSpec) -> str:
    """A job array: one extraction part per array task, one GPU each."""
    mem = spec.memory.upper().replace("GB", "G")
    if spec.kind == "slurm":
        head = [f"#SBATCH --job-name={spec.job_name}-extract", f"#SBATCH --array=0-{spec.jobs - 1}",
                "#SBATCH --ntasks=1", f"#SBATCH --cpus-per-task={spec.cpus_per_job}", f"#SBATCH --mem={mem}",
                f"#SBATCH --time={spec.walltime}", "#SBATCH --output=logs/%x-%A_%a.out"]
        head += [f"#SBATCH --gres=gpu:{spec.gpus_per_job}"] if spec.gpus_per_job else []
        head += [f"#SBATCH --partition={spec.queue}"] if spec.queue else []
        head += [f"#SBATCH --account={spec.account}"] if spec.account else []
        var, submit, dep = "SLURM_ARRAY_TASK_ID", "sbatch", "sbatch --dependency=afterany:<JOBID> --wrap"
    else:
        gpu = f":ngpus={spec.gpus_per_job}" if spec.gpus_per_job else ""
        head = [f"#PBS -N {spec.job_name}-extract", f"#PBS -J 0-{spec.jobs - 1}",
                f"#PBS -l select=1:ncpus={spec.cpus_per_job}{gpu}:mem={spec.memory.lower()}",
                f"#PBS -l walltime={spec.walltime}", "#PBS -j oe"]
        head += [f"#PBS -q {spec.queue}"] if spec.queue else []
        head += [f"#PBS -A {spec.account}"] if spec.account else []
        var, submit, dep = "PBS_ARRAY_INDEX", "qsub", "qsub -W depend=afterany:<JOBID> --"
    final = _extract_cmd(spec, None)
    lines = ["#!/bin/bash", *head, "",
             f"# diffvqa-cache extraction as a job array of {spec.jobs} parts (shard i % {spec.jobs} == task id).",
             f"# Submit: {submit} <this file>. Parts resume: resubmitting skips complete shards.",
             "# All parts write into the same --out; when every task has finished, the same command without",
             "# --num-shards does no work and writes the complete manifest:",
             f"#   {dep} {shlex.quote(final)}" if spec.kind == "slurm" else f"#   {dep} {final}",
             "# Parts written to different --out folders are joined instead with:",
             "#   diffvqa-cache cache merge PART_DIR... --out cache",
             "set -euo pipefail", "mkdir -p logs" if spec.kind == "slurm" else "cd \"${PBS_O_WORKDIR:-.}\"",
             *spec.setup, _extract_cmd(spec, var), ""]
    return "\n".join(lines)


def render_dask(spec: JobSpec) -> str:
    """A dask worker job (an array of `jobs` of them), one worker process per GPU."""
    from dask_jobqueue.pbs import PBSJob
    from dask_jobqueue.slurm import SLURMJob

    procs = max(1, spec.gpus_per_job)
    res = ["--resources", "GPU=1"] if spec.gpus_per_job else []
    common = dict(scheduler=spec.scheduler_address, cores=spec.cpus_per_job, memory=spec.memory, processes=procs,
                  walltime=spec.walltime, queue=spec.queue, account=spec.account, job_script_prologue=spec.setup,
                  worker_extra_args=res, python="python", job_name=f"{spec.job_name}-dask")
    if spec.kind == "slurm":
        var = "SLURM_ARRAY_TASK_ID"
        job = SLURMJob(name=f"{spec.job_name}-${{{var}}}", job_extra_directives=[f"--array=0-{spec.jobs - 1}"]
                       + ([f"--gres=gpu:{spec.gpus_per_job}"] if spec.gpus_per_job else []), **common)
        submit = "sbatch"
    else:
        var = "PBS_ARRAY_INDEX"
        gpu = f":ngpus={spec.gpus_per_job}" if spec.gpus_per_job else ""
        job = PBSJob(name=f"{spec.job_name}-${{{var}}}", job_extra_directives=[f"-J 0-{spec.jobs - 1}"],
                     resource_spec=f"select=1:ncpus={spec.cpus_per_job}{gpu}:mem={spec.memory.lower()}", **common)
        submit = "qsub"
    script = job.job_script()
    shebang, _, rest = script.partition("\n")
    addr = spec.scheduler_address
    usage = [
        f"# dask workers for diffvqa-cache: {spec.jobs} jobs x {procs} worker(s), one GPU each (--resources GPU=1).",
        "# 1. start a scheduler where the compute nodes can reach it (login node or its own job):",
        "#      dask scheduler --port 8786        # then put its address into this script (tcp://HOST:8786)",
        f"# 2. {submit} <this file>",
        "# 3. run the work against it (caches and --out must be on a shared filesystem):",
        f"#      diffvqa-cache extract {' '.join(shlex.quote(a) for a in spec.extract_args)} --dask-scheduler {addr}",
        f"#      diffvqa-cache sweep --cache CACHE_DIR --grid ablations.yaml --out sweeps/NAME --scheduler {addr}",
    ]
    return "\n".join([shebang, *usage, rest.lstrip("\n")])
