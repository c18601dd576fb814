"""Job scripts for HPC schedulers (SLURM, PBS): a job array of extraction parts, or dask workers.

`array`: task i of the array runs `diffvqa-cache extract ... --num-parts N --part i`; all parts
write into the same --out (a shared filesystem); a finishing job, the same command without --num-parts,
finds no work left (or does what a failed part left) and writes the complete manifest. Parts written to
separate folders are joined with `cache merge`.
`dask`: a dask-jobqueue worker job script (one worker per GPU, `--resources GPU=1`, or per core without
GPUs), rendered by dask-jobqueue itself from the arguments `extract/sweep --cluster` use
(`dask_client.job_kwargs`); for a scheduler started by hand.

Every script runs where the command was run (`--chdir` / `cd`), logs to an absolute folder that exists
before the job starts (SLURM opens the log before the script runs), and activates the Python environment
the command ran in (virtualenv or conda) unless `setup` lines are given instead.
"""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass, field, replace
from pathlib import Path

from diffvqa_cache.cluster.dask_client import job_kwargs, jobqueue_cluster_class
from diffvqa_cache.cluster.jobs import KINDS, SUBMIT, ClusterJobs, pbs_select
from diffvqa_cache.errors import UserInputError

MODES = ("array", "dask")


@dataclass
class JobScript:
    """A job script to write: the jobs `batch` (one per array task, or dask worker jobs) running
    `diffvqa-cache extract EXTRACT_ARGS` parts (`array`) or dask workers of `scheduler_address` (`dask`)."""

    batch: ClusterJobs
    mode: str = "array"
    extract_args: list[str] = field(default_factory=list)  # everything after `diffvqa-cache extract`
    scheduler_address: str = "tcp://SCHEDULER_HOST:8786"
    workdir: str = field(default_factory=os.getcwd)  # jobs run here, so relative paths mean what they meant
    job_name: str = "diffvqa"

    def __post_init__(self):
        if self.batch.cluster is None or self.mode not in MODES:
            raise UserInputError(f"the batch system must be one of {KINDS} and --mode one of {MODES}, got "
                                 f"{self.batch.cluster}, {self.mode}")
        if self.mode == "array" and self.batch.gpus_per_job > 1:
            raise UserInputError("an extraction part uses one GPU: use --gpus-per-job 1 (and more --jobs) for arrays")
        self.workdir = os.path.abspath(self.workdir)

    @property
    def kind(self) -> str:
        return self.batch.cluster

    @property
    def log_dir(self) -> str:
        """Absolute: `batch.logs` relative to the folder the jobs run in."""
        return self.batch.log_dir(self.workdir)


def job_script(kind: str, mode: str, batch_options: dict, **script) -> JobScript:
    """The script of `cluster KIND --mode MODE`: the batch system and mode checked first, then the jobs
    (`batch_options`: ClusterJobs's fields but `cluster`)."""
    if kind not in KINDS or mode not in MODES:
        raise UserInputError(f"the batch system must be one of {KINDS} and --mode one of {MODES}, got {kind}, {mode}")
    return JobScript(ClusterJobs(cluster=kind, **batch_options), mode, **script)


def extract_command(spec: JobScript, index_var: str | None = None) -> str:
    """The extract command of array task `$index_var`, or (None) of the finishing step: no --num-parts."""
    args = list(spec.extract_args)
    if index_var:
        args += ["--num-parts", str(spec.batch.jobs)]
    cmd = "diffvqa-cache extract " + " ".join(shlex.quote(a) for a in args)
    return cmd + (f" --part ${index_var}" if index_var else "")


def render(spec: JobScript, script: Path | None = None) -> str:
    """The job script; `script`: where it will be written (named in its comments)."""
    return render_array(spec, script) if spec.mode == "array" else render_dask(spec)


def _directives(spec: JobScript, name: str, array: bool) -> list[str]:
    """Scheduler header of an array part (array=True) or of the finishing job: one GPU each."""
    q, b = shlex.quote, spec.batch
    if spec.kind == "slurm":
        log = "%x-%A_%a.out" if array else "%x-%j.out"
        head = [f"#SBATCH --job-name={name}", *([f"#SBATCH --array=0-{b.jobs - 1}"] if array else []),
                "#SBATCH --ntasks=1", f"#SBATCH --cpus-per-task={b.cpus_per_job}",
                f"#SBATCH --mem={b.mem.upper().replace('GB', 'G')}", f"#SBATCH --time={b.walltime}",
                f"#SBATCH --chdir={q(spec.workdir)}", f"#SBATCH --output={q(os.path.join(spec.log_dir, log))}"]
        head += [f"#SBATCH --gres=gpu:{b.gpus_per_job}"] if b.gpus_per_job else []
        head += [f"#SBATCH --partition={b.queue}"] if b.queue else []
        return head + ([f"#SBATCH --account={b.account}"] if b.account else [])
    head = [f"#PBS -N {name}", *([f"#PBS -J 0-{b.jobs - 1}"] if array else []),
            f"#PBS -l {pbs_select(b.cpus_per_job, b.gpus_per_job, b.mem)}",
            f"#PBS -l walltime={b.walltime}", "#PBS -j oe", f"#PBS -o {q(spec.log_dir + os.sep)}"]
    head += [f"#PBS -q {b.queue}"] if b.queue else []
    return head + ([f"#PBS -A {b.account}"] if b.account else [])


def _body(spec: JobScript, command: str) -> list[str]:
    cd = [] if spec.kind == "slurm" else [f"cd {shlex.quote(spec.workdir)}"]  # SLURM: #SBATCH --chdir
    # torch on the CPU uses the cores the job asked for (and its numbers depend on that count: see docs/cluster.md)
    threads = f"export OMP_NUM_THREADS={spec.batch.cpus_per_job}"
    return ["set -eo pipefail", *cd, threads, *spec.batch.setup_lines(), command, ""]


def render_array(spec: JobScript, script: Path | None = None) -> str:
    """A job array: one extraction part per array task, one GPU each."""
    submit = submit_line(spec, Path(script).resolve() if script else Path("NAME.sh"))
    n = spec.batch.jobs
    lines = ["#!/bin/bash", *_directives(spec, f"{spec.job_name}-extract", array=True), "",
             f"# diffvqa-cache extraction as a job array of {n} parts (shard i % {n} == task id),",
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


def render_finish(spec: JobScript) -> str:
    """The finishing job: the extraction without --num-parts, after the array (writes the manifest)."""
    lines = ["#!/bin/bash", *_directives(spec, f"{spec.job_name}-finish", array=False), "",
             "# Finishing step of a diffvqa-cache job array: run after every part has ended (afterany), it",
             "# extracts whatever a failed part left (usually nothing) and writes the complete manifest.",
             *_body(spec, extract_command(spec))]
    return "\n".join(lines)


def finish_path(script: Path) -> Path:
    """Where the finishing job's script goes, beside the array script: NAME.sh -> NAME.finish.sh."""
    return script.with_name(script.name.removesuffix(".sh") + ".finish.sh")


def write_scripts(spec: JobScript, path: Path) -> list[Path]:
    """Write the job script (for an array also its finishing job, beside it); the files written."""
    path.write_text(render(spec, path))
    if spec.mode != "array":
        return [path]
    finish_path(path).write_text(render_finish(spec))
    return [path, finish_path(path)]


def submit_line(spec: JobScript, script: Path) -> str:
    """The shell line that submits `script` (an array: with its finishing job after it)."""
    sub = SUBMIT[spec.kind]
    if spec.mode == "dask":
        return f"{sub} {script}"
    if spec.kind == "slurm":
        return f"id=$(sbatch --parsable {script}) && sbatch --dependency=afterany:$id {finish_path(script)}"
    return f"id=$(qsub {script}) && qsub -W depend=afterany:$id {finish_path(script)}"


def render_dask(spec: JobScript) -> str:
    """A dask worker job (an array of `jobs` of them): the jobs `extract/sweep --cluster` submit, for a
    scheduler started by hand."""
    n = spec.batch.jobs
    batch = replace(spec.batch, logs=Path(spec.log_dir))
    kw = job_kwargs(spec.kind, batch, spec.workdir, f"{spec.job_name}-dask") | dict(
        scheduler=spec.scheduler_address, python="python")
    procs, submit = kw["processes"], SUBMIT[spec.kind]
    if spec.kind == "slurm":
        var = "SLURM_ARRAY_TASK_ID"
        kw["job_extra_directives"] = [f"--array=0-{n - 1}", *kw["job_extra_directives"]]
    else:
        var = "PBS_ARRAY_INDEX"
        kw["job_extra_directives"] = [f"-J 0-{n - 1}"]
    job = jobqueue_cluster_class(spec.kind).job_cls(name=f"{spec.job_name}-${{{var}}}", **kw)
    script = job.job_script()
    shebang, _, rest = script.partition("\n")
    addr = spec.scheduler_address
    usage = [
        f"# dask workers for diffvqa-cache: {n} jobs x {procs} worker(s) of one thread, "
        + ("one GPU each (--resources GPU=1)." if spec.batch.gpus_per_job else "one core each."),
        "# 1. start a scheduler where the compute nodes can reach it (login node or its own job):",
        "#      dask scheduler --port 8786        # then put its address into this script (tcp://HOST:8786)",
        f"# 2. {submit} <this file>",
        "# 3. run the work against it (caches and --out must be on a shared filesystem):",
        f"#      diffvqa-cache extract {' '.join(shlex.quote(a) for a in spec.extract_args)} --dask-scheduler {addr}",
        f"#      diffvqa-cache sweep --cache CACHE_DIR --grid ablations.yaml --out sweeps/NAME --scheduler {addr}",
    ]
    return "\n".join([shebang, *usage, rest.lstrip("\n")])
