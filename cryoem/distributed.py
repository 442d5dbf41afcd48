"""Work across processes and machines with Dask (``--dask-scheduler``).

The data-parallel stages (reconstruction's back-projection, refinement's
projection matching) cut the images into chunks and hand each chunk to
:func:`map_chunks`: in-process by default, as tasks on a
``dask.distributed`` cluster when given a client.  Whatever every task needs
(the current reference maps, say) is scattered to the workers once per call,
not once per task; image chunks travel as :class:`cryoem.stacks.ImageStack`
views (a file name and rows) when the images are on disk, so each worker reads
its own.  The results are those of the in-process run: the same tasks, the
same seeds, gathered in order (sums over chunks may differ in the last bits,
their summation order being that of completion).

``--dask-scheduler`` takes

* ``local`` or ``local:N``: a :class:`dask.distributed.LocalCluster` of ``N``
  worker processes (default: one per core) with one thread each, started here
  and closed at the end;
* an address (``tcp://host:8786``): an existing scheduler, e.g. one started by
  ``dask-jobqueue`` on a SLURM cluster (see the README).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from typing import Any, Callable, Iterator, Sequence, TypeVar

from ._progress import progress_bar

__all__ = ["connect", "map_chunks", "reduce_chunks", "share", "describe"]

T = TypeVar("T")
R = TypeVar("R")

#: How long to wait for a scheduler at an address before giving up, seconds.
CONNECT_TIMEOUT = 10


@contextlib.contextmanager
def connect(scheduler: str | None, *, verbose: bool = True) -> Iterator[Any]:
    """A ``dask.distributed.Client`` for ``--dask-scheduler`` (``None``: in-process, yields
    ``None``).  A local cluster started here is closed on exit.

    Raises
    ------
    ConnectionError
        When no scheduler answers at the address.
    ValueError
        When ``scheduler`` is neither ``local[:N]`` nor an address.
    """
    if scheduler is None:
        yield None
        return
    from dask.distributed import Client, LocalCluster

    workers = _local_workers(scheduler)
    if workers is not None:
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                               dashboard_address=":0", silence_logs=logging.ERROR)
        with cluster, Client(cluster) as client:
            _announce(client, f"local cluster of {workers} worker processes", verbose)
            yield client
        return
    try:
        client = Client(scheduler, timeout=f"{CONNECT_TIMEOUT}s")
    except (OSError, TimeoutError) as error:
        raise ConnectionError(f"no Dask scheduler answered at {scheduler} within "
                              f"{CONNECT_TIMEOUT} s ({error})") from None
    with client:
        _announce(client, f"scheduler {scheduler}", verbose)
        yield client


def _local_workers(scheduler: str) -> int | None:
    """``N`` of ``local[:N]`` (default: the number of cores), ``None`` for an address."""
    if scheduler == "local":
        return os.cpu_count() or 1
    if scheduler.startswith("local:"):
        count = scheduler.split(":", 1)[1]
        if not count.isdigit() or int(count) < 1:
            raise ValueError(f"--dask-scheduler {scheduler}: expected local:N with N ≥ 1 workers")
        return int(count)
    if "://" not in scheduler and ":" not in scheduler:
        raise ValueError(f"--dask-scheduler {scheduler}: expected local, local:N or a scheduler "
                         "address such as tcp://host:8786")
    return None


def _announce(client: Any, what: str, verbose: bool) -> None:
    if verbose:
        print(f"Dask: {what}, {describe(client)}; dashboard {client.dashboard_link}",
              file=sys.stderr, flush=True)


def describe(client: Any) -> str:
    """``"N workers, T threads"`` of a client's cluster (``"in-process"`` without one)."""
    if client is None:
        return "in-process"
    workers = client.scheduler_info().get("workers", {})
    threads = sum(w.get("nthreads", 0) for w in workers.values())
    return f"{len(workers)} workers, {threads} threads"


def map_chunks(function: Callable[..., R], chunks: Sequence[T], *, client: Any = None,
               shared: dict[str, Any] | None = None, desc: str = "",
               progress: bool = False) -> list[R]:
    """``[function(chunk, **shared) for chunk in chunks]``, in-process or on a Dask cluster.

    ``shared`` is sent to every worker once (scattered, broadcast) rather than with every
    task.  Results come back in the order of ``chunks``.

    Raises
    ------
    RuntimeError
        When a worker died running a task (Dask retried it on others first), naming the task.
    """
    results: list[Any] = [None] * len(chunks)
    for k, result in _results(function, chunks, client, shared or {}, desc, progress):
        results[k] = result
    return results


def reduce_chunks(function: Callable[..., R], chunks: Sequence[T], *, client: Any = None,
                  shared: dict[str, Any] | None = None, desc: str = "",
                  progress: bool = False) -> R:
    """The sum of ``function(chunk, **shared)`` over chunks, holding one partial result at a
    time here (added in chunk order in-process, in order of completion on a cluster).

    ``function`` returns a NumPy array or a tuple of them; the sum is element-wise.
    """
    total: Any = None
    for _, part in _results(function, chunks, client, shared or {}, desc, progress):
        if total is None:
            total = part
        elif isinstance(part, tuple):
            total = tuple(a + b for a, b in zip(total, part))
        else:
            total = total + part
    return total


def share(client: Any, value: Any) -> Any:
    """``value`` sent to every worker of ``client`` now, for tasks to come (a future to pass in
    ``shared``: sent once rather than once per call)."""
    # Unique keys (hash=False): a later call sharing an equal object must not lose it when
    # an earlier one releases its copy.
    # In a list: scatter would take a dict's items (or a list's elements) as separate data.
    return client.scatter([value], broadcast=True, hash=False)[0]


def _is_future(value: Any) -> bool:
    from distributed import Future

    return isinstance(value, Future)


def _results(function: Callable[..., R], chunks: Sequence[T], client: Any,
             shared: dict[str, Any], desc: str, progress: bool) -> Iterator[tuple[int, R]]:
    """``(k, function(chunks[k], **shared))`` as they finish, with a progress bar."""
    if client is None:
        for k, chunk in enumerate(progress_bar(chunks, total=len(chunks), enable=progress,
                                               desc=desc)):
            yield k, function(chunk, **shared)
        return
    from dask.distributed import as_completed
    from distributed import KilledWorker

    scattered = {key: value if _is_future(value) else share(client, value)
                 for key, value in shared.items()}
    pending = {future.key: future
               for future in client.map(function, chunks, pure=False, **scattered)}
    position = {key: k for k, key in enumerate(pending)}
    try:
        for future in progress_bar(as_completed(list(pending.values())), total=len(pending),
                                   enable=progress, desc=desc):
            key, result = future.key, future.result()
            del pending[key], future  # nothing here holds it: the worker may drop it
            yield position[key], result
    except KilledWorker as error:
        raise RuntimeError(f"{desc or getattr(function, '__name__', 'task')}: a Dask worker "
                           f"died running a task ({error}); rerun to resume from the last "
                           "finished stage") from None
    finally:
        client.cancel(list(pending.values()))
