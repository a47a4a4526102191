"""Descriptors holding a ``flock`` that a forked process must not keep.

A lock taken with ``flock`` belongs to the open file description, which a fork
shares: a forked worker that outlives its parent would keep the lock, and with it
what the lock guards (the witness queue's resume, a receiver's remembered spans)
from the next process that starts.  Descriptors registered here are closed in every
forked child; registering and releasing happen under a lock a fork takes, so no
descriptor is between its opening and its registration when the fork copies them.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable

__all__ = ["holding", "release"]

_HELD: set[int] = set()
# Taken by a fork; reentrant, for a fork in a signal handler that interrupted a
# thread holding it.
_LOCK = threading.RLock()


def holding(open_and_lock: Callable[[], int | None]) -> int | None:
    """Run *open_and_lock* (which opens a descriptor and locks it, or returns None)
    under the fork lock, and register the descriptor it returns."""
    with _LOCK:
        fd = open_and_lock()
        if fd is not None:
            _HELD.add(fd)
        return fd


def release(fd: int | None) -> None:
    """Close *fd* and forget it, unless a fork already closed it (in this process,
    when this is the child)."""
    with _LOCK:
        if fd is None or fd not in _HELD:
            return
        _HELD.discard(fd)
        os.close(fd)


def _close_in_child() -> None:
    _LOCK.release()
    for fd in _HELD:
        try:
            os.close(fd)
        except OSError:
            pass
    _HELD.clear()


if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(before=_LOCK.acquire, after_in_parent=_LOCK.release,
                        after_in_child=_close_in_child)
