"""Garbage-collector settings for spanproof's own long-running processes."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["collecting_rarely"]

# Allocations between young-generation collections (the default is 700, and 2,000
# from Python 3.13).
_RARE_THRESHOLD = (100_000, 50, 100)


@contextmanager
def collecting_rarely() -> Iterator[None]:
    """Run the cyclic garbage collector rarely while the block runs.

    For spanproof's own processes only (the sealing process, ``spanproof receiver``,
    ``spanproof verify`` while its workers check bundles), never an application's:
    their pending record bodies (or the verifier's reports) are many small objects
    that live until the end, and the default thresholds rescan them every 700
    allocations (2,000 from Python 3.13), which halved the rate at which spans were
    admitted.  They hold no reference cycles, so collecting rarely costs little
    memory; the objects alive at the start are frozen out of collections.  The
    previous thresholds are restored at the end.
    """
    previous = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(*_RARE_THRESHOLD)
    try:
        yield
    finally:
        gc.set_threshold(*previous)
        gc.unfreeze()
