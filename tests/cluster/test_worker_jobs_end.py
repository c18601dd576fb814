"""Worker jobs never outlive their command on a real one-node SLURM (tests/slurm.py): even a driver killed
with SIGKILL, which cannot cancel them, leaves no job behind (its workers lose their scheduler and exit),
so the long default --walltime only bounds a job that is never cancelled."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slurm

DRIVER = """
import sys, time
from diffvqa_cache.cluster.dask_client import dask_client
from diffvqa_cache.cluster.jobs import ClusterJobs

jobs = ClusterJobs(cluster="slurm", jobs=1, cpus_per_job=1, gpus_per_job=0, mem="1GB", logs=sys.argv[1])
with dask_client(cluster_jobs=jobs) as client:
    print("ready", flush=True)
    time.sleep(600)
"""


def test_worker_jobs_end_when_their_driver_is_killed(slurm, tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", DRIVER, str(tmp_path / "logs")], stdout=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    try:
        assert proc.stdout.readline().strip() == "ready"  # a worker of the job is connected
        assert len(slurm.queued()) == 1
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        slurm.wait(timeout=60)  # its walltime is the default 24 h: the job ended by itself
    finally:
        if proc.poll() is None:
            proc.kill()
        for job in slurm.queued():
            slurm.run("scancel", job, check=False)
