"""One way to get a dask client, for every command that fans work out (extract's shards, sweep's tasks)."""

from __future__ import annotations

import contextlib
import os
from typing import Iterator

from .errors import UserInputError


def default_workers(n_tasks: int) -> int:
    """One worker process per core, at most one per task."""
    return max(1, min(n_tasks, os.cpu_count() or 1))


def check_dask_args(workers: int | None, scheduler_address: str | None) -> None:
    """The one check of the flags that choose a cluster."""
    if workers is not None and scheduler_address is not None:
        raise UserInputError("give --workers (a local cluster) or --dask-scheduler (an existing one), not both")
    if workers is not None and workers < 1:
        raise UserInputError(f"--workers must be >= 1, got {workers}")


@contextlib.contextmanager
def dask_client(workers: int | None = None, scheduler_address: str | None = None, gpu: bool = False) -> Iterator:
    """A Client of a LocalCluster of `workers` processes (one thread each; each offering one GPU resource
    with `gpu`), or of the running scheduler at `scheduler_address`, or None when neither is given (the
    work runs in this process); closed (and the cluster stopped) on exit."""
    check_dask_args(workers, scheduler_address)
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
