"""Job scripts for HPC schedulers (SLURM, PBS): a job array of extraction parts, or dask workers.

`array`: task i of the array runs `diffvqa-cache extract ... --num-parts N --part i`; all parts
write into the same --out (a shared filesystem); a finishing job, the same command without --num-parts,
finds no work left (or does what a failed part left) and writes the complete manifest. Parts written to
separate folders are joined with `cache merge`.
`dask`: a dask-jobqueue worker job script (one worker per GPU, `--resources GPU=1`, or per core without
GPUs), rendered by dask-jobqueue itself from the arguments `extract/sweep --cluster` use
(`dask_cluster.job_kwargs`); for a scheduler started by hand.

Every script runs where the command was run (`--chdir` / `cd`), logs to an absolute folder that exists
before the job starts (SLURM opens the log before the script runs), and activates the Python environment
the command ran in (virtualenv or conda) unless `setup` lines are given instead.
"""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from diffvqa_cache.cluster.dask_client import (
    KINDS,
    SUBMIT,
    ClusterJobs,
    activation_lines,
    job_kwargs,
    jobqueue_cluster_class,
    pbs_select,
)
from diffvqa_cache.errors import UserInputError

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
    setup: list[str] | None = None  # shell lines run first; None: activate this command's environment
    job_name: str = "diffvqa"
    extract_args: list[str] = field(default_factory=list)  # everything after `diffvqa-cache extract`
    scheduler_address: str = "tcp://SCHEDULER_HOST:8786"
    workdir: str = field(default_factory=os.getcwd)  # jobs run here, so relative paths mean what they meant
    log_dir: str | None = None  # absolute; default <workdir>/logs

    def __post_init__(self):
        if self.kind not in KINDS or self.mode not in MODES:
            raise UserInputError(f"the batch system must be one of {KINDS} and --mode one of {MODES}, got {self.kind}, "
                                 f"{self.mode}")
        if self.jobs < 1 or self.gpus_per_job < 0 or self.cpus_per_job < 1:
            raise UserInputError("need --jobs >= 1, --gpus-per-job >= 0 and --cpus-per-job >= 1")
        if self.mode == "array" and self.gpus_per_job > 1:
            raise UserInputError("an extraction part uses one GPU: use --gpus-per-job 1 (and more --jobs) for arrays")
        self.workdir = os.path.abspath(self.workdir)
        self.log_dir = os.path.join(self.workdir, self.log_dir or "logs")
        if self.setup is None:
            self.setup = activation_lines()

    def setup_lines(self) -> list[str]:
        if self.setup:
            return list(self.setup)
        return ["# no virtualenv or conda env was active: diffvqa-cache must be on the job's PATH (or use --setup)"]


def extract_command(spec: JobSpec, index_var: str | None = None) -> str:
    """The extract command of array task `$index_var`, or (None) of the finishing step: no --num-parts."""
    args = list(spec.extract_args)
    if index_var:
        args += ["--num-parts", str(spec.jobs)]
    cmd = "diffvqa-cache extract " + " ".join(shlex.quote(a) for a in args)
    return cmd + (f" --part ${index_var}" if index_var else "")


def render(spec: JobSpec, script: Path | None = None) -> str:
    """The job script; `script`: where it will be written (named in its comments)."""
    return render_array(spec, script) if spec.mode == "array" else render_dask(spec)


def _directives(spec: JobSpec, name: str, array: bool) -> list[str]:
    """Scheduler header of an array part (array=True) or of the finishing job: one GPU each."""
    q = shlex.quote
    if spec.kind == "slurm":
        log = "%x-%A_%a.out" if array else "%x-%j.out"
        head = [f"#SBATCH --job-name={name}", *([f"#SBATCH --array=0-{spec.jobs - 1}"] if array else []),
                "#SBATCH --ntasks=1", f"#SBATCH --cpus-per-task={spec.cpus_per_job}",
                f"#SBATCH --mem={spec.memory.upper().replace('GB', 'G')}", f"#SBATCH --time={spec.walltime}",
                f"#SBATCH --chdir={q(spec.workdir)}", f"#SBATCH --output={q(os.path.join(spec.log_dir, log))}"]
        head += [f"#SBATCH --gres=gpu:{spec.gpus_per_job}"] if spec.gpus_per_job else []
        head += [f"#SBATCH --partition={spec.queue}"] if spec.queue else []
        return head + ([f"#SBATCH --account={spec.account}"] if spec.account else [])
    head = [f"#PBS -N {name}", *([f"#PBS -J 0-{spec.jobs - 1}"] if array else []),
            f"#PBS -l {pbs_select(spec.cpus_per_job, spec.gpus_per_job, spec.memory)}",
            f"#PBS -l walltime={spec.walltime}", "#PBS -j oe", f"#PBS -o {q(spec.log_dir + os.sep)}"]
    head += [f"#PBS -q {spec.queue}"] if spec.queue else []
    return head + ([f"#PBS -A {spec.account}"] if spec.account else [])


def _body(spec: JobSpec, command: str) -> list[str]:
    cd = [] if spec.kind == "slurm" else [f"cd {shlex.quote(spec.workdir)}"]  # SLURM: #SBATCH --chdir
    # torch on the CPU uses the cores the job asked for (and its numbers depend on that count: see docs/cluster.md)
    threads = f"export OMP_NUM_THREADS={spec.cpus_per_job}"
    return ["set -eo pipefail", *cd, threads, *spec.setup_lines(), command, ""]


def render_array(spec: JobSpec, script: Path | None = None) -> str:
    """A job array: one extraction part per array task, one GPU each."""
    submit = submit_line(spec, Path(script).resolve() if script else Path("NAME.sh"))
    lines = ["#!/bin/bash", *_directives(spec, f"{spec.job_name}-extract", array=True), "",
             f"# diffvqa-cache extraction as a job array of {spec.jobs} parts (shard i % {spec.jobs} == task id),",
             "# then a finishing job (the same command without --num-parts) that does what failed parts left",
             "# and writes the complete manifest. Submit both, from any folder:",
             f"#   {submit}",
             *(["# or run `diffvqa-cache cluster slurm ...` with the same options and --submit, which, rerun after",
                "# failures, submits only the parts still missing."] if spec.kind == "slurm" else []),
             "# Resubmitting is safe: complete shards are skipped.",
             f"# Logs: {spec.log_dir}. Parts written to different --out folders are joined instead with:",
             "#   diffvqa-cache cache merge PART_DIR... --out cache",
             *_body(spec, extract_command(spec, "SLURM_ARRAY_TASK_ID" if spec.kind == "slurm" else "PBS_ARRAY_INDEX"))]
    return "\n".join(lines)


def render_finish(spec: JobSpec) -> str:
    """The finishing job: the extraction without --num-parts, after the array (writes the manifest)."""
    lines = ["#!/bin/bash", *_directives(spec, f"{spec.job_name}-finish", array=False), "",
             "# Finishing step of a diffvqa-cache job array: run after every part has ended (afterany), it",
             "# extracts whatever a failed part left (usually nothing) and writes the complete manifest.",
             *_body(spec, extract_command(spec))]
    return "\n".join(lines)


def finish_path(script: Path) -> Path:
    """Where the finishing job's script goes, beside the array script: NAME.sh -> NAME.finish.sh."""
    return script.with_name(script.name.removesuffix(".sh") + ".finish.sh")


def write_scripts(spec: JobSpec, path: Path) -> list[Path]:
    """Write the job script (for an array also its finishing job, beside it); the files written."""
    path.write_text(render(spec, path))
    if spec.mode != "array":
        return [path]
    finish_path(path).write_text(render_finish(spec))
    return [path, finish_path(path)]


def submit_line(spec: JobSpec, script: Path) -> str:
    """The shell line that submits `script` (an array: with its finishing job after it)."""
    sub = SUBMIT[spec.kind]
    if spec.mode == "dask":
        return f"{sub} {script}"
    if spec.kind == "slurm":
        return f"id=$(sbatch --parsable {script}) && sbatch --dependency=afterany:$id {finish_path(script)}"
    return f"id=$(qsub {script}) && qsub -W depend=afterany:$id {finish_path(script)}"


def render_dask(spec: JobSpec) -> str:
    """A dask worker job (an array of `jobs` of them): the jobs `extract/sweep --cluster` submit, for a
    scheduler started by hand."""
    worker_jobs = ClusterJobs(cluster=spec.kind, jobs=spec.jobs, cpus_per_job=spec.cpus_per_job,
                              gpus_per_job=spec.gpus_per_job, mem=spec.memory, walltime=spec.walltime,
                              queue=spec.queue, account=spec.account, setup=spec.setup_lines(), logs=spec.log_dir)
    kw = job_kwargs(spec.kind, worker_jobs, spec.workdir, f"{spec.job_name}-dask") | dict(
        scheduler=spec.scheduler_address, python="python")
    procs, submit = kw["processes"], SUBMIT[spec.kind]
    if spec.kind == "slurm":
        var = "SLURM_ARRAY_TASK_ID"
        kw["job_extra_directives"] = [f"--array=0-{spec.jobs - 1}", *kw["job_extra_directives"]]
    else:
        var = "PBS_ARRAY_INDEX"
        kw["job_extra_directives"] = [f"-J 0-{spec.jobs - 1}"]
    job = jobqueue_cluster_class(spec.kind).job_cls(name=f"{spec.job_name}-${{{var}}}", **kw)
    script = job.job_script()
    shebang, _, rest = script.partition("\n")
    addr = spec.scheduler_address
    usage = [
        f"# dask workers for diffvqa-cache: {spec.jobs} jobs x {procs} worker(s) of one thread, "
        + ("one GPU each (--resources GPU=1)." if spec.gpus_per_job else "one core each."),
        "# 1. start a scheduler where the compute nodes can reach it (login node or its own job):",
        "#      dask scheduler --port 8786        # then put its address into this script (tcp://HOST:8786)",
        f"# 2. {submit} <this file>",
        "# 3. run the work against it (caches and --out must be on a shared filesystem):",
        f"#      diffvqa-cache extract {' '.join(shlex.quote(a) for a in spec.extract_args)} --dask-scheduler {addr}",
        f"#      diffvqa-cache sweep --cache CACHE_DIR --grid ablations.yaml --out sweeps/NAME --scheduler {addr}",
    ]
    return "\n".join([shebang, *usage, rest.lstrip("\n")])
