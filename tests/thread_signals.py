"""Sending a signal to one chosen thread of another process (Linux), for tests of
processes that must act on a signal whichever of their threads the kernel gives it to."""

from __future__ import annotations

import ctypes
import os
from typing import Any

import pytest


def _tgkill() -> Any:
    # libc's tgkill (glibc 2.30+), or None.
    return getattr(ctypes.CDLL(None, use_errno=True), "tgkill", None)


def skip_unless_available() -> None:
    """Skip the calling test where one thread of a process cannot be signalled."""
    if _tgkill() is None or not os.path.isdir("/proc/self/task"):
        pytest.skip("needs Linux's tgkill and /proc")


def signal_another_thread(pid: int, sig: int) -> None:
    """Send *sig* to a thread of process *pid* other than its main thread."""
    others = [int(t) for t in os.listdir(f"/proc/{pid}/task") if int(t) != pid]
    assert others, f"process {pid} has only its main thread"
    assert _tgkill()(pid, others[-1], sig) == 0
