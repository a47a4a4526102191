"""Whether gevent patched the threading module after spanproof made its locks.

A worker forked from a process that set the SDK up (``gunicorn -k gevent
--preload``, ``opentelemetry-instrument gunicorn -k gevent``) runs spanproof's
at-fork hooks, which make its locks, before it patches: those locks are real ones,
and a thread started after the patch is a greenlet.  Such a greenlet runs only when
the thread that started it waits on gevent's primitives, and it blocks that whole
thread when it waits on a real lock or queue: every background thread's first
start there hung the worker, and lost every span without a word.  The objects that
start threads note whether threading was patched when they were made
(:class:`GreenSince`), and start none once it was patched since; their callers then
do the threads' work themselves (README, "gevent").  Patched before (the worker
imports the application after patching), threads are greenlets and locks gevent's,
and all works as it does without gevent.

gevent is only looked for, never imported: it is no dependency of spanproof.
"""

from __future__ import annotations

import logging
import os
import sys

__all__ = ["GreenSince", "green_threads", "warn_threadless"]

_logger = logging.getLogger(__name__)


def green_threads() -> bool:
    """Whether gevent has patched the threading module, so that a thread started now
    is a greenlet and a lock made now is gevent's.  gevent is only looked for, never
    imported."""
    monkey = sys.modules.get("gevent.monkey")
    if monkey is None:
        return False
    try:
        return bool(monkey.is_module_patched("threading"))
    except Exception:  # a gevent without it: taken as not patched, as before
        return False


class GreenSince:
    """Whether gevent patched the threading module after this object was made (see
    the module documentation)."""

    __slots__ = ("_made_green", "_turned")

    def __init__(self) -> None:
        self._made_green = green_threads()
        self._turned = False

    @property
    def turned(self) -> bool:
        """Whether threading was patched since: no background thread may start."""
        if not self._turned and not self._made_green and green_threads():
            self._turned = True
        return self._turned


# The process that logged the warning that spanproof starts no background thread
# in it (once per process, whichever object found it first).
_threadless_warned_pid: int | None = None


def warn_threadless() -> None:
    """Log once per process that gevent patched threading after spanproof was set up,
    and what spanproof does instead of starting its background threads."""
    global _threadless_warned_pid
    if _threadless_warned_pid == os.getpid():
        return
    _threadless_warned_pid = os.getpid()
    _logger.warning(
        "spanproof: gevent patched the threading module after spanproof was set up in this "
        "process (a worker forked from the process that set the SDK up: gunicorn "
        "--preload, opentelemetry-instrument); spanproof starts no background thread "
        "here: it seals, journals and writes on the threads that export or end spans, "
        "and in force_flush() and shutdown().  Patch before the SDK is set up to keep "
        "its threads (README, \"gevent\")")
