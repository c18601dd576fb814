"""`cluster`: the job script (a SLURM/PBS array of extract parts, or dask worker jobs), written, and with
--submit the parts of the array still missing sent to SLURM (on a rerun, only those).

Part i of N owns the shards s with s % N == i (the extract planner's rule), so the parts to submit are
those owning a shard that is not complete in the cache. Submitting them: `diffvqa_cache.cluster.submit`.
"""

from __future__ import annotations

from pathlib import Path

from diffvqa_cache.cache.folder import CacheDir, plan_shards
from diffvqa_cache.cache.settings import ExtractConfig
from diffvqa_cache.cluster.scripts import JobScript, job_script, submit_line, write_scripts
from diffvqa_cache.cluster.submit import Submission, submit_array
from diffvqa_cache.datasets import Dataset
from diffvqa_cache.errors import UserInputError


def cluster_script(kind: str, mode: str, batch: dict, extract_args: list[str], scheduler_address: str,
                   submit: bool = False) -> JobScript:
    """The job script `cluster` writes (its log folder made, as the jobs will need it); --submit sends
    SLURM job arrays only."""
    if submit and (kind, mode) != ("slurm", "array"):
        raise UserInputError("--submit sends SLURM job arrays (sbatch); submit other scripts by hand")
    spec = job_script(kind, mode, batch, extract_args=extract_args, scheduler_address=scheduler_address)
    Path(spec.log_dir).mkdir(parents=True, exist_ok=True)
    return spec


def write_cluster_script(spec: JobScript, path: Path) -> str:
    """Write the script (and a job array's finishing script); returns what was written and how to submit it."""
    written = write_scripts(spec, path)
    return (f"wrote {' and '.join(map(str, written))}; submit with: {submit_line(spec, path)}"
            f"{' (or add --submit)' if (spec.kind, spec.mode) == ('slurm', 'array') else ''}")


def submit_missing(spec: JobScript, path: Path, dataset: Dataset, cfg: ExtractConfig, out: Path,
                   retry_failed: bool = False) -> Submission:
    """sbatch the array's parts still missing in the cache and a finishing job after them (`path` written)."""
    gpu = cfg.device.startswith("cuda") or (cfg.device == "auto" and bool(spec.batch.gpus_per_job))  # where parts run
    return submit_array(spec, path, missing_parts(dataset, cfg, out, spec.batch.jobs, retry_failed, gpu))


def missing_parts(dataset: Dataset, cfg: ExtractConfig, out: Path, num_parts: int,
                  retry_failed: bool = False, gpu: bool | None = None) -> list[int]:
    """Parts (0..num_parts-1) that own a shard not complete yet (or, with retry_failed, one with failures).
    `gpu`: whether the parts run on CUDA GPUs (resolves --dtype auto as they will; None: as here)."""
    if not (Path(out) / dataset.name).is_dir():  # nothing extracted yet: no need to fingerprint the model here
        return list(range(num_parts))
    from .extract import prepare_cache  # torch: seconds to import

    cache_dir, config = prepare_cache(dataset, cfg, out, gpu)
    cdir = CacheDir(cache_dir)
    plan = plan_shards([r.key for r in dataset.records], cfg.shard_size)
    return sorted({i % num_parts for i, keys in enumerate(plan)
                   if cdir.needs_work(i, keys, config.fingerprint, retry_failed)})
