"""Dask worker plugin pinning each LocalCluster worker to its own cores (see
`twin.runner`'s module doc for why); its own module because it subclasses
`distributed.WorkerPlugin`, and `twin.runner` imports distributed only when a cluster is
used."""

from __future__ import annotations

import os

from distributed import WorkerPlugin

from .runner import core_share, pin_process


class PinWorkerCores(WorkerPlugin):
    """Dask worker plugin (`Client.register_plugin`): pins each worker of a LocalCluster
    of `n_workers` (named 0..n-1, as LocalCluster names them) to its `core_share` of the
    cores the worker may use; a worker restarted after a crash is pinned again."""

    name = "rpt-twin-pin-cores"

    def __init__(self, n_workers: int):
        self.n_workers = n_workers

    def setup(self, worker) -> None:
        try:
            index = int(worker.name)
        except (TypeError, ValueError):
            return  # not a LocalCluster worker of ours: leave it alone
        if hasattr(os, "sched_getaffinity"):
            # the nanny's (parent's) cores: this process may be pinned already (a second setup)
            try:
                cores = os.sched_getaffinity(os.getppid())
            except OSError:
                cores = os.sched_getaffinity(0)
            pin_process(core_share(cores, index % self.n_workers, self.n_workers))
