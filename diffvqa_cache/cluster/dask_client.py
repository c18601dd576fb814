"""One way to get a dask client, for every command that fans work out (extract's shards, sweep's tasks):
a local cluster (`--workers`), a running scheduler (`--dask-scheduler`), or worker jobs that the command
submits itself to SLURM or PBS through dask-jobqueue (`--cluster slurm --jobs N`) and cancels when it ends."""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Iterator

from diffvqa_cache.cluster.jobs import SUBMIT, ClusterJobs, pbs_select
from diffvqa_cache.errors import DiffVQAError, UserInputError


def default_workers(n_tasks: int) -> int:
    """One worker process per core, at most one per task."""
    return max(1, min(n_tasks, os.cpu_count() or 1))


def job_kwargs(kind: str, spec: ClusterJobs, workdir: str, job_name: str = "diffvqa-dask") -> dict:
    """dask-jobqueue's arguments for one worker job of `spec` (SLURMCluster / SLURMJob, PBSCluster / PBSJob):
    it runs in `workdir`, logs to an absolute folder and starts in the command's environment."""
    procs = spec.gpus_per_job or spec.cpus_per_job
    q = shlex.quote
    kw = dict(cores=procs, processes=procs, memory=spec.mem, walltime=spec.walltime, queue=spec.queue,
              account=spec.account, log_directory=os.path.abspath(spec.logs), job_name=job_name,
              job_script_prologue=([] if kind == "slurm" else [f"cd {q(workdir)}"]) + spec.setup_lines(),
              worker_extra_args=["--resources", "GPU=1"] if spec.gpus_per_job else [])
    if kind == "slurm":  # cores=procs gives each worker one thread; job_cpu books the job's cores
        gres = [f"--gres=gpu:{spec.gpus_per_job}"] if spec.gpus_per_job else []
        return kw | dict(job_cpu=spec.cpus_per_job, job_extra_directives=[f"--chdir={q(workdir)}", *gres])
    return kw | dict(resource_spec=pbs_select(spec.cpus_per_job, spec.gpus_per_job, spec.mem))


def check_dask_args(workers: int | None, scheduler_address: str | None, cluster_jobs: ClusterJobs | None = None) -> None:
    """The one check of the flags that choose a cluster."""
    chosen = [flag for flag, value in (("--workers", workers), ("--dask-scheduler", scheduler_address),
                                       ("--cluster", cluster_jobs and cluster_jobs.cluster)) if value is not None]
    if len(chosen) > 1:
        raise UserInputError(f"give one of --workers (a local cluster), --dask-scheduler (a running one) or --cluster "
                             f"(worker jobs started by this command), not {'both' if len(chosen) == 2 else 'all of'} "
                             f"{' and '.join(chosen)}")
    if workers is not None and workers < 1:
        raise UserInputError(f"--workers must be >= 1, got {workers}")


@contextlib.contextmanager
def dask_client(workers: int | None = None, scheduler_address: str | None = None, gpu: bool = False,
                cluster_jobs: ClusterJobs | None = None) -> Iterator:
    """A Client of a LocalCluster of `workers` processes (one thread each; each offering one GPU resource
    with `gpu`), of the running scheduler at `scheduler_address`, or of the worker jobs `cluster_jobs`
    submits (cancelled on exit, Ctrl-C included); None when none is given (the work runs in this process)."""
    check_dask_args(workers, scheduler_address, cluster_jobs)
    if cluster_jobs is not None and cluster_jobs.cluster is not None:
        with _job_cluster(cluster_jobs) as client:
            yield client
        return
    if workers is None and scheduler_address is None:
        yield None
        return
    from distributed import Client, LocalCluster

    if scheduler_address is not None:
        with Client(scheduler_address) as client:
            yield client
        return
    with LocalCluster(n_workers=workers, threads_per_worker=1,
                      processes=True, dashboard_address=":0", resources={"GPU": 1} if gpu else None) as cluster, \
            Client(cluster) as client:
        yield client


def jobqueue_cluster_class(kind: str):
    """dask-jobqueue's SLURMCluster or PBSCluster (its `job_cls`: the job), imported without the SIGINT handler
    that `dask_jobqueue.runner` installs on import: it turns Ctrl-C into sys.exit(), exit code 0, no message."""
    handler = signal.getsignal(signal.SIGINT)
    from dask_jobqueue import PBSCluster, SLURMCluster

    if signal.getsignal(signal.SIGINT) is not handler and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, handler)
    return SLURMCluster if kind == "slurm" else PBSCluster


@contextlib.contextmanager
def _job_cluster(spec: ClusterJobs) -> Iterator:
    """A dask-jobqueue cluster of `spec.jobs` worker jobs (a lost one is resubmitted), its scheduler in this
    process; the jobs are cancelled when the block ends, however it ends (Ctrl-C, SIGTERM included)."""
    import dask
    from distributed import Client
    from distributed.core import Status

    kind, submit = spec.cluster, SUBMIT[spec.cluster]
    if shutil.which(submit) is None:
        raise UserInputError(f"{submit} not found: run --cluster {kind} where {kind.upper()}'s commands are "
                             "(a login node)")
    Path(spec.logs).mkdir(parents=True, exist_ok=True)
    cls = jobqueue_cluster_class(kind)
    refused: list[str] = []

    class Job(cls.job_cls):
        async def start(self):
            """Submit the job. A refused submission would only be logged, as a traceback, by the event loop:
            keep its message for the driver to report, and leave a job without an id (nothing to cancel)."""
            try:
                await super().start()
            except RuntimeError as exc:  # dask-jobqueue: the submit command's exit code and stderr
                refused.append(str(exc))
                self.status = Status.running  # what SpecCluster expects of a started job

    scheduler = {"dashboard_address": ":0", **dask.config.get(f"jobqueue.{kind}.scheduler-options", {})}
    with cls(**job_kwargs(kind, spec, os.getcwd()), job_cls=Job, scheduler_options=scheduler) as cluster, \
            Client(cluster) as client:
        cluster.scale(jobs=spec.jobs)
        cluster.adapt(minimum_jobs=spec.jobs, maximum_jobs=spec.jobs)  # resubmits a job that ends early
        _wait_for_first_worker(client, cluster, spec, refused)
        yield client


def _job_ids(cluster) -> list[str]:
    return sorted((str(job.job_id) for job in list(cluster.workers.values()) if job.job_id), key=lambda i: (len(i), i))


def _slurm_jobs_left(ids: list[str]) -> bool | None:
    """Whether any of the SLURM jobs `ids` is still queued or running (None: squeue could not tell)."""
    proc = subprocess.run(["squeue", "-h", "-o", "%i", "-j", ",".join(ids)], capture_output=True, text=True)
    if proc.returncode and "Invalid job id" not in proc.stderr:
        return None
    return bool(proc.stdout.split())


def _refusal_hint(why: str, spec: ClusterJobs) -> str:
    """What to do about a refused worker job, where the refusal says which option caused it."""
    if spec.gpus_per_job and any(word in why.lower() for word in ("gres", "ngpus", "gpu")):
        return (f"; the jobs ask for {spec.gpus_per_job} GPU(s) each (--gpus-per-job), which this cluster or "
                "--queue does not offer: pass --gpus-per-job 0 for CPU worker jobs, or --queue a GPU partition")
    return ""


def _wait_for_first_worker(client, cluster, spec: ClusterJobs, refused: list[str]) -> None:
    """Return once a worker is connected. Fail when a job was refused, when the jobs ended without a worker
    (SLURM: squeue) or after --start-timeout."""
    from diffvqa_cache.progress import err

    t0, told, logs = time.monotonic(), False, os.path.abspath(spec.logs)
    while True:
        if refused:
            lines = [ln.split("error:", 1)[-1].strip() for ln in refused[0].splitlines() if "error" in ln.lower()]
            why = lines[-1] if lines else refused[0]
            raise UserInputError(f"{SUBMIT[spec.cluster]} refused the worker job: {why}{_refusal_hint(why, spec)}")
        ids = _job_ids(cluster)
        if len(ids) >= spec.jobs and not told:
            err.print(f"submitted {len(ids)} {spec.cluster} worker job(s) {','.join(ids)}; waiting for the first "
                      f"worker (logs: {logs})")
            told = True
        try:
            client.wait_for_workers(1, timeout=1)
        except TimeoutError:
            pass
        else:  # a worker came: name the jobs first (a worker can come before every job has its id)
            if not told and time.monotonic() - t0 > 10:
                err.print(f"submitted {spec.cluster} worker job(s) {','.join(ids)} (logs: {logs})")
            elif not told:
                time.sleep(0.1)
                continue
            return
        ended = told and spec.cluster == "slurm" and _slurm_jobs_left(ids) is False
        if ended or time.monotonic() - t0 > spec.start_timeout:
            why = "ended" if ended else f"started none within --start-timeout {spec.start_timeout:.0f} s"
            raise DiffVQAError(f"no dask worker connected: {spec.cluster} jobs {','.join(ids) or '(none submitted)'} "
                               f"{why}; see their logs in {logs}")
