"""Submit an extraction job array and its finishing job to SLURM (`cluster slurm --submit`).

The finishing job (the same extraction without --num-parts) waits for the array (`afterany`: it also runs
after failed parts, and does what they left) and writes the complete manifest; with no part to submit it
is submitted alone. Which parts are missing is the cache's business (`pipelines/submit.missing_parts`).
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from diffvqa_cache.cluster.scripts import JobScript, finish_path
from diffvqa_cache.errors import DiffVQAError, UserInputError


def sbatch(*args: str) -> str:
    """Run `sbatch --parsable ARGS`; the job id."""
    exe = shutil.which("sbatch")
    if exe is None:
        raise UserInputError("sbatch not found: --submit needs SLURM's commands here (or submit the written "
                             "scripts by hand)")
    proc = subprocess.run([exe, "--parsable", *args], capture_output=True, text=True)
    if proc.returncode:
        raise DiffVQAError(f"sbatch {' '.join(args)} failed: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc.stdout.strip().split(";")[0]


@dataclass
class Submission:
    spec: JobScript
    script: Path
    parts: list[int]  # array tasks submitted (empty: nothing was missing)
    array_id: str | None
    finish_id: str

    def describe(self) -> str:
        s, logs = self.spec, self.spec.log_dir
        finish_log = f"{logs}/{s.job_name}-finish-{self.finish_id}.out"
        if self.array_id is None:
            return (f"nothing is missing: every part's shards are complete; submitted only the finishing job "
                    f"{self.finish_id} (writes the complete manifest; {finish_path(self.script)})\n"
                    f"follow it: squeue -j {self.finish_id}\nlog: {finish_log}")
        which = ",".join(map(str, self.parts))
        return (f"submitted job array {self.array_id}: parts {which} of {s.batch.jobs} ({self.script})\n"
                f"submitted finishing job {self.finish_id}, after it (writes the complete manifest; "
                f"{finish_path(self.script)})\n"
                f"follow them: squeue -j {self.array_id},{self.finish_id}\n"
                f"logs: {logs}/{s.job_name}-extract-{self.array_id}_<part>.out, {finish_log}\n"
                "a rerun of this command submits only the parts still missing")


def submit_array(spec: JobScript, script: Path, parts: list[int]) -> Submission:
    """sbatch the array script for `parts` (all of them: as written) and the finishing job after it."""
    script, finish = Path(script).resolve(), finish_path(Path(script)).resolve()
    array_id = None
    if parts:
        select = [] if parts == list(range(spec.batch.jobs)) else [f"--array={','.join(map(str, parts))}"]
        array_id = sbatch(*select, str(script))
    finish_id = sbatch(*([f"--dependency=afterany:{array_id}"] if array_id else []), str(finish))
    return Submission(spec, script, parts, array_id, finish_id)
