"""The one description of batch jobs on SLURM or PBS, whatever they run: the parts of an extraction job array
(`cluster slurm|pbs`) or the dask worker jobs a command submits itself (`extract/sweep --cluster slurm`).

Defaults (one set for both; a command line overrides each): 8 CPU cores, 1 GPU, 32GB and 24 hours per job,
logs in ./logs. An extraction part or worker decodes with the cores and runs the model on the GPU; a job
of a job array does 1/N of a whole extraction, hence the day. `sweep --cluster` asks for no GPU (its
fits run on CPU workers, one per core: 8 per job, 4GB each). A dask worker job ends with the command
that submitted it (cancelled at its end; a killed one's workers lose their scheduler and exit), so the
long walltime only bounds a job that is never cancelled.
"""

from __future__ import annotations

import os
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

from diffvqa_cache.errors import UserInputError

KINDS = ("slurm", "pbs")
SUBMIT = {"slurm": "sbatch", "pbs": "qsub"}


def activation_lines(prefix: str = sys.prefix, base_prefix: str = sys.base_prefix,
                     environ: dict | None = None) -> list[str]:
    """Shell lines that activate the Python environment at `prefix` (this one): conda env or virtualenv."""
    environ = os.environ if environ is None else environ
    conda = environ.get("CONDA_PREFIX")
    if conda and os.path.realpath(conda) == os.path.realpath(prefix):
        exe = environ.get("CONDA_EXE")
        if exe:
            return [f'eval "$({shlex.quote(exe)} shell.bash hook)"', f"conda activate {shlex.quote(conda)}"]
        return [f"export PATH={shlex.quote(os.path.join(conda, 'bin'))}:\"$PATH\""]
    activate = Path(prefix) / "bin" / "activate"
    if prefix != base_prefix and activate.is_file():
        return [f"source {shlex.quote(str(activate))}"]
    return []


def pbs_select(cpus: int, gpus: int, mem: str) -> str:
    """PBS's resource request of one job on one node (`-l select=...`)."""
    return f"select=1:ncpus={cpus}{f':ngpus={gpus}' if gpus else ''}:mem={mem.lower()}"


def _opt(default, help: str):
    return field(default=default, metadata={"help": help})


NO_ENVIRONMENT = "# no virtualenv or conda env was active: diffvqa-cache must be on the job's PATH (or use --setup)"


@dataclass
class ClusterJobs:
    """`jobs` batch jobs on `cluster` (slurm or pbs), each on one node with these resources, run in this
    command's Python environment (or after `setup`), logging to `logs`. The field names are the command
    line's options (`--cpus-per-job`, `--mem`, ...). `cluster=None`: no jobs (extract and sweep then use a
    local cluster or a running scheduler). Settings not given here for dask worker jobs come from
    dask-jobqueue's own config (~/.config/dask/jobqueue.yaml: interface, local-directory, ...)."""

    cluster: str | None = _opt(None, "Start dask worker jobs on this batch system (slurm or pbs) from this "
                                     "command, and cancel them at its end.")
    jobs: int | None = _opt(None, "How many jobs: dask worker jobs (a lost one is replaced), or array tasks "
                                  "(= extraction parts) of `cluster`.")
    cpus_per_job: int = _opt(8, "CPU cores per job (decoding; without GPUs one dask worker per core).")
    gpus_per_job: int = _opt(1, "GPUs per job (dask: one worker per GPU).")
    mem: str = _opt("32GB", "Memory per job.")
    walltime: str = _opt("24:00:00", "Time limit per job; a dask worker job that reaches it is replaced.")
    queue: str | None = _opt(None, "Partition (SLURM) or queue (PBS).")
    account: str | None = _opt(None, "Account / project to charge.")
    setup: list[str] | None = _opt(None, "Shell line run first in each job (repeatable), e.g. 'module "
                                         "load cuda'; replaces activating this command's venv/conda env.")
    logs: Path = _opt(Path("logs"), "Folder of the jobs' logs (created before any job opens it).")
    start_timeout: float = _opt(3600.0, "Seconds to wait (queue included) for the first dask worker.")

    def __post_init__(self):
        if self.cluster is None:
            if self.jobs is not None:
                raise UserInputError("--jobs needs --cluster slurm or --cluster pbs")
            return
        if self.cluster not in KINDS:
            raise UserInputError(f"--cluster must be one of {', '.join(KINDS)}, got {self.cluster!r} (for a local "
                                 "cluster use --workers N)")
        if self.jobs is None or self.jobs < 1:
            raise UserInputError(f"--cluster {self.cluster} needs --jobs N >= 1 (the number of worker jobs)")
        if self.cpus_per_job < 1 or self.gpus_per_job < 0:
            raise UserInputError("need --cpus-per-job >= 1 and --gpus-per-job >= 0")

    def setup_lines(self) -> list[str]:
        """The job's first shell lines: `setup`, else the activation of this command's environment, else a
        comment saying that diffvqa-cache must be on the job's PATH."""
        lines = activation_lines() if self.setup is None else list(self.setup)
        return lines or [NO_ENVIRONMENT]

    def log_dir(self, workdir: str | None = None) -> str:
        """The absolute log folder (`logs` taken relative to `workdir`, default this folder)."""
        return os.path.join(os.path.abspath(workdir or os.getcwd()), self.logs)
