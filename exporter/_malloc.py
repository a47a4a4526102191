"""The C allocator's settings for ``spanproof receiver``'s own process."""

from __future__ import annotations

import ctypes
import os
import platform
import sys

__all__ = ["limit_malloc_arenas"]

# <malloc.h>: mallopt's parameter for the most arenas glibc's malloc creates.
_M_ARENA_MAX = -8


def limit_malloc_arenas(arenas: int = 1) -> bool:
    """Have glibc's malloc use at most *arenas* arenas in this process, unless the
    environment sets ``MALLOC_ARENA_MAX`` (which then decides).

    By default glibc gives a thread that allocates its own arena, up to eight per
    core.  The receiver's gRPC server runs each request on a thread of a pool, so
    a request's buffers and bodies came from one arena and were freed into it while
    the next request's came from another: each arena's heap grew and was trimmed
    again, and every page it took back was faulted in anew (``mprotect`` and page
    faults were ~20% of the receiver's CPU through rotel).  With one arena, through
    rotel with two seal workers, the receiver's process spent ~0.9x the CPU per
    span (alternating runs here).  The GIL serializes the Python threads anyway.

    Returns True when the limit was set; False on other C libraries and platforms,
    or when ``MALLOC_ARENA_MAX`` is set.
    """
    if (not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc"
            or "MALLOC_ARENA_MAX" in os.environ):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_ARENA_MAX, arenas) == 1)
