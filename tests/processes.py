"""Process helpers for the tests that start helper processes (Linux ``/proc``)."""

from __future__ import annotations

import importlib.util
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

#: Skips a test on a system without ``/proc``.
needs_proc = pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs /proc")


def _stat_fields(pid: int | str) -> list[str]:
    """The fields of ``/proc/<pid>/stat`` after the command name (state first)."""
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()


def running(pid: int) -> bool:
    """Whether *pid* runs (an exited process nobody reaped yet does not)."""
    try:
        return _stat_fields(pid)[0] != "Z"
    except FileNotFoundError:
        return False


def child_pids(pid: int) -> list[int]:
    """The processes whose parent is *pid*."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                parent = int(_stat_fields(entry)[1])
            except OSError:
                continue
            if parent == pid:
                found.append(int(entry))
    return found


def returns_within(call: Callable[[], object], seconds: float, what: str) -> None:
    """Fail unless *call*, run on a daemon thread, returns within *seconds* (a call
    that hangs is left behind, so the suite does not hang with it)."""
    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"{what} did not return within {seconds} s"


def wait_for(predicate: Callable[[], Any], timeout: float = 30.0, what: str = "condition") -> Any:
    """Poll *predicate* until it returns something truthy; fail after *timeout* seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.05)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rotel_agent() -> str:
    """The ``rotel-agent`` binary the ``rotel`` package (the test extra) ships."""
    spec = importlib.util.find_spec("rotel")
    if spec is None or not spec.submodule_search_locations:
        pytest.fail("the rotel package is not installed (it is in the 'test' extra)")
    path = os.path.join(next(iter(spec.submodule_search_locations)), "rotel-agent")
    assert os.access(path, os.X_OK), path
    return path
