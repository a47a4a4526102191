"""Checking many bundles side by side in worker processes (``--jobs``).

A bundle's checks are independent of every other bundle's and run in Python, so one
process checks one bundle at a time on one core.  An output directory holds one
bundle per trace segment, often hundreds of thousands of small ones; spreading them
over one process per core divides the time by about the number of cores.

The results come back in the order of the paths, and are exactly what checking them
one by one gives; only the time differs.  If the pool fails (a worker killed, for
one), the bundles not yet answered are checked in this process.
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from multiprocessing.context import BaseContext
from typing import TypeVar

from ._gc import collecting_rarely

__all__ = ["MAX_JOBS", "map_in_order", "usable_cpus", "workers_for"]

_T = TypeVar("_T")

#: With the default job count, fewer bundles than this are checked in this process:
#: starting workers would cost more than it saves.  Forked workers start in a few
#: milliseconds; spawned ones import the verifier first (~0.2 s).
AUTO_MIN_BUNDLES_FORK = 64
AUTO_MIN_BUNDLES_SPAWN = 1024

# Bundles a worker takes at a time: at most this many, and at least eight turns per
# worker, so that the last ones do not leave the other workers idle.
_MAX_CHUNK = 64
_TURNS_PER_WORKER = 8


#: The most worker processes ``--jobs`` asks for: checking is CPU-bound, so more
#: processes than CPUs only cost starting them (3,000 made 40,000 bundles take 14
#: times as long on 2 CPUs).
MAX_JOBS = 256


def usable_cpus() -> int:
    """How many CPUs this process may run on (its affinity where the platform tells)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _context() -> BaseContext:
    """Fork where it is safe and cheap (Linux, and this process runs one thread),
    else spawn."""
    if sys.platform.startswith("linux") and threading.active_count() == 1:
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context("spawn")


def workers_for(requested: int | None, count: int) -> tuple[int, BaseContext | None]:
    """How many worker processes check *count* bundles, and how they start.

    *requested* is ``--jobs``: ``None`` picks one per usable CPU, and checks in this
    process (0 workers) when there are too few bundles for workers to pay off; an
    explicit number is used as given (``1`` checks in this process).  Never more
    workers than bundles.
    """
    if count < 2:
        return 0, None
    context = _context()
    if requested is None:
        least = (AUTO_MIN_BUNDLES_FORK if context.get_start_method() == "fork"
                 else AUTO_MIN_BUNDLES_SPAWN)
        if count < least:
            return 0, None
        requested = usable_cpus()
    workers = min(requested, count)
    return (workers, context) if workers > 1 else (0, None)


def map_in_order(
    check: Callable[[str], _T],
    paths: Sequence[str],
    jobs: int | None,
    *,
    warn: Callable[[str], None],
) -> Iterator[_T]:
    """``check(path)`` for each of *paths*, in order, in worker processes as
    :func:`workers_for` decides.  *check* must be picklable (a module-level function
    or a picklable callable object) and must not raise.

    A pool that fails is reported through *warn*, and the paths it had not answered
    are checked here.
    """
    workers, context = workers_for(jobs, len(paths))
    done = 0
    if workers:
        try:
            # Here, not in the pool: a task the pool cannot pickle can leave its
            # shutdown waiting forever.
            pickle.dumps(check)
        except Exception as e:
            warn(f"cannot hand the checks to other processes ({type(e).__name__}: {e}); "
                 "checking every bundle in this process")
            workers = 0
    if workers:
        chunk = max(1, min(_MAX_CHUNK, len(paths) // (workers * _TURNS_PER_WORKER)))
        pool = ProcessPoolExecutor(workers, mp_context=context)
        try:
            # This process only collects results, many small objects kept to the end.
            with collecting_rarely():
                for result in pool.map(check, paths, chunksize=chunk):
                    done += 1
                    yield result
            return
        except Exception as e:  # BrokenProcessPool, or a result that did not pickle
            warn(f"checking in {workers} processes failed ({type(e).__name__}: {e}); "
                 f"checking the remaining {len(paths) - done} bundle(s) in this process")
        finally:  # also when the caller stops early: nothing left running
            pool.shutdown(wait=True, cancel_futures=True)
    for path in paths[done:]:
        yield check(path)
