"""Run many independent parts (trial chunks, cohort patients) in-process or on a Dask
cluster, writing each finished part atomically so an interrupted run resumes.

A *part* k is computed by ``task(k) -> {table name: DataFrame}`` and stored as
``folder/<table>/part-<k>.parquet`` for every table (a Parquet dataset per table: read it
with ``pandas.read_parquet(folder / table)``).  A part is done when all its files exist;
a rerun skips done parts, so a run interrupted at any point and started again ends with
the same files, each part exactly once (files are keyed by part, written to a hidden
temporary name and renamed; readers and pyarrow ignore names starting with ".").

Where the work runs:

* in-process (default): a plain loop, no scheduler, no ports;
* a ``distributed.Client`` (``connect(scheduler=ADDRESS)`` or a ``LocalCluster`` from
  ``connect(workers=N)``): ``client.map`` over the parts, results written by this process
  as they complete.  A worker that dies mid-part loses nothing: the scheduler re-runs its
  unfinished parts elsewhere, and parts are only written once complete.

JAX on workers (`worker_environment`): one XLA CPU thread per worker thread
(``XLA_FLAGS=--xla_cpu_multi_thread_eigen=false``, OMP_NUM_THREADS=1; XLA stops reading
XLA_FLAGS at the first word that is not a ``--`` flag, so nothing else may precede flags
appended to it),
and, on a `LocalCluster` (Linux), each worker process pinned to its own share of the
machine's cores (`twin.worker_pinning.PinWorkerCores`).  The pinning is what keeps N
workers on N cores: even with those flags XLA's CPU runtime keeps helper threads that
spin on a second core (a
"single-threaded" trial chunk used 1.75 cores of CPU time at the speed of one), so two
unpinned workers on two cores ran at 1.1x one worker; pinned, 2.0x.  A persistent
compilation cache shared by all workers (``JAX_COMPILATION_CACHE_DIR``), so the model is
compiled once per machine, not once per worker.  On a remote cluster set the same
variables in the workers' environment and bind each worker to its cores with the
cluster's own means (SLURM's task/cgroup or task/affinity plugin, taskset; see README,
"Cohort scale").
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Mapping, Sequence

import pandas as pd

from imaging.atomic import atomic_file

from .errors import TwinError

PART_PATTERN = "part-{:06d}.parquet"
XLA_SINGLE_THREAD = "--xla_cpu_multi_thread_eigen=false"


@dataclass
class RunStats:
    """What a run did: parts computed now, parts found done on disk, and parts that raised
    (part -> error text; their files are absent, so a rerun retries them)."""

    computed: list[int] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)
    failed: dict[int, str] = field(default_factory=dict)


def part_path(folder: Path, table: str, part: int) -> Path:
    return Path(folder) / table / PART_PATTERN.format(part)


def part_done(folder: Path, tables: Sequence[str], part: int) -> bool:
    return all(part_path(folder, t, part).exists() for t in tables)


def write_part(folder: Path, tables: Sequence[str], part: int, result: Mapping[str, pd.DataFrame]) -> None:
    """Write one part's tables atomically (TwinError if the task returned other tables)."""
    if set(result) != set(tables):
        raise TwinError(f"part {part}: the task returned tables {sorted(result)}; expected {sorted(tables)}")
    for name in tables:
        with atomic_file(part_path(folder, name, part)) as tmp:
            result[name].to_parquet(tmp, index=False)


def prepare_folder(folder, manifest_name: str, manifest: Mapping, *, force: bool = False) -> Path:
    """Create the output folder with its manifest (JSON: what the run computes), or check
    that an existing folder holds the same run (a resume); `force` empties it first.
    TwinError when the folder holds another run or is not a run folder."""
    folder = Path(folder)
    path = folder / manifest_name
    wanted = json.loads(json.dumps(manifest))  # as it reads back (tuples -> lists)
    if folder.exists() and force:
        shutil.rmtree(folder)
    if path.exists():
        try:
            held = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise TwinError(f"{path}: unreadable manifest ({err}); use another folder or --force") from None
        if held != wanted:
            raise TwinError(f"{folder}: holds another run (its {manifest_name} differs from this one); "
                            "use another output folder or --force to replace it")
        return folder
    if folder.exists() and any(folder.iterdir()):
        raise TwinError(f"{folder}: exists and is not a run folder (no {manifest_name}); use another folder or --force")
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(wanted, indent=2), encoding="utf-8")
    return folder


def read_parts(folder, table: str, sort_by: Sequence[str], run: str = "run") -> pd.DataFrame:
    """One table of a run (`folder/table`, a Parquet dataset of parts) as one DataFrame
    sorted by `sort_by` (TwinError naming the path when the run has not written it)."""
    path = Path(folder) / table
    if not path.is_dir():
        raise TwinError(f"{path}: no {run} table here; run the {run} first")
    return pd.read_parquet(path).sort_values(list(sort_by), kind="stable").reset_index(drop=True)


def default_cache_dir() -> Path:
    """Where workers share compiled XLA programs: $JAX_COMPILATION_CACHE_DIR, else a folder
    in the system temporary directory."""
    return Path(os.environ.get("JAX_COMPILATION_CACHE_DIR") or Path(tempfile.gettempdir()) / "rpt-twin-jax-cache")


def worker_environment(cache_dir: str | os.PathLike | None = None) -> dict[str, str]:
    """Environment of a single-threaded JAX worker (see module doc)."""
    return {
        "XLA_FLAGS": XLA_SINGLE_THREAD,
        "OMP_NUM_THREADS": "1",
        "JAX_COMPILATION_CACHE_DIR": str(cache_dir or default_cache_dir()),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
    }


def core_share(cores: Sequence[int], index: int, n_workers: int) -> list[int]:
    """The cores of worker `index` of `n_workers` on the machine's `cores`: consecutive
    equal shares when there are at least as many cores as workers (4 cores, 2 workers:
    [0, 1] and [2, 3]), else one core each, round robin."""
    cores = sorted(cores)
    if n_workers <= len(cores):
        return cores[index * len(cores) // n_workers:(index + 1) * len(cores) // n_workers]
    return [cores[index % len(cores)]]


def pin_process(cores: Sequence[int]) -> bool:
    """Restrict every thread of this process (and the threads they start later) to
    `cores`; False where the platform has no CPU affinity (macOS, Windows)."""
    if not hasattr(os, "sched_setaffinity"):
        return False
    for tid in os.listdir("/proc/self/task"):
        with contextlib.suppress(ProcessLookupError):  # a thread that ended meanwhile
            os.sched_setaffinity(int(tid), set(cores))
    return True


@contextlib.contextmanager
def connect(scheduler=None, workers: int | None = None, cache_dir=None) -> Iterator[object | None]:
    """The client to run on: None (in-process) when neither is given; a Client of the
    scheduler at `scheduler` (an address such as "tcp://host:8786", or a Client, used
    as is); or a LocalCluster of `workers` single-threaded processes with
    `worker_environment`, each pinned to its share of the cores
    (`twin.worker_pinning.PinWorkerCores`).
    Closes what it opened."""
    if scheduler is not None and workers is not None:
        raise TwinError("give either a scheduler address or a number of local workers, not both")
    if scheduler is None and workers is None:
        yield None
        return
    from distributed import Client, LocalCluster

    if scheduler is not None:
        if isinstance(scheduler, Client):
            yield scheduler
            return
        with Client(scheduler) as client:
            yield client
        return
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise TwinError(f"workers = {workers!r}; expected an integer >= 1")
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0",
                      env=worker_environment(cache_dir)) as cluster, Client(cluster) as client:
        from .worker_pinning import PinWorkerCores

        client.register_plugin(PinWorkerCores(workers))
        yield client


def run_parts(task: Callable[[int], Mapping[str, pd.DataFrame]], parts: Sequence[int], folder, tables: Sequence[str],
              *, client=None, name: str = "part", progress: Callable[[int, int], None] | None = None) -> RunStats:
    """Compute and store every part not yet done (see module doc).

    task: part -> {table: DataFrame}; must be picklable (a module-level function or a
      functools.partial of one) when `client` is given.
    progress: called as progress(finished, total) after each part (total counts every
      part, done ones included).
    """
    folder = Path(folder)
    stats = RunStats()
    todo = []
    for k in parts:
        (stats.skipped if part_done(folder, tables, k) else todo).append(k)
    total, finished = len(parts), len(stats.skipped)
    if progress:
        progress(finished, total)

    def store(k, result):
        nonlocal finished
        write_part(folder, tables, k, result)
        stats.computed.append(k)
        finished += 1
        if progress:
            progress(finished, total)

    if client is None:
        for k in todo:
            try:
                result = task(k)
            except Exception as err:  # recorded per part; the other parts go on
                stats.failed[k] = f"{type(err).__name__}: {err}"
                continue
            store(k, result)
        return stats

    from distributed import as_completed

    keys = [f"{name}-{k}" for k in todo]
    futures = client.map(task, todo, key=keys)
    part_of = dict(zip(keys, todo))
    for future in as_completed(futures):
        k = part_of[future.key]
        if future.status != "finished":
            stats.failed[k] = f"{type(future.exception()).__name__}: {future.exception()}"
        else:
            store(k, future.result())
        future.release()
    return stats


def print_progress(label: str, stream=None) -> Callable[[int, int], None]:
    """A `progress` callback printing "label: k/n" lines to stderr."""
    def show(finished: int, total: int) -> None:
        print(f"{label}: {finished}/{total}", file=stream or sys.stderr, flush=True)
    return show
