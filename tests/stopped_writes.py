"""Writers stopped part-way: a process running the command line that ends, without
any cleanup, at a chosen step, and what it leaves behind."""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from spanproof.verifier._files import temp_target

#: Run with ``python -c CRASHING_MAIN N ARGS...``: runs ``spanproof ARGS...`` and ends
#: the process, without any cleanup, just before the N-th step that makes a file's
#: bytes or name durable (an fsync, replace, rename or link; at a write, after half
#: its bytes, exit status 137).  Exits 0 when the command finished before that step,
#: 100 + its status when it failed.
CRASHING_MAIN = """
import os, sys
from spanproof.verifier._cli import main

crash_at, steps = int(sys.argv[1]), 0

def stopping(real, partial=False):
    def step(*args, **kwargs):
        global steps
        steps += 1
        if steps == crash_at:
            if partial:
                real(args[0], bytes(args[1])[: len(args[1]) // 2])
            os._exit(137)
        return real(*args, **kwargs)
    return step

for name in ("fsync", "replace", "rename", "link"):
    setattr(os, name, stopping(getattr(os, name)))
os.write = stopping(os.write, partial=True)
status = main(sys.argv[2:])
sys.stdout.flush()
os._exit(0 if status == 0 else 100 + status)
"""


def temporaries(directory: Path) -> list[str]:
    """The names in *directory* of temporary files written for a file there."""
    return sorted(name for name in os.listdir(directory) if temp_target(name) is not None)


def holds_private_key(directory: Path) -> bool:
    """Whether a temporary file in *directory* holds a private key."""
    return any(b"PRIVATE KEY" in (directory / name).read_bytes()
               for name in temporaries(directory))


def locked_by_another(directory: str) -> bool:
    """Whether another open file holds :func:`locked_directory`'s lock on *directory*."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def record_temporary_writes(monkeypatch: pytest.MonkeyPatch,
                            *writers: ModuleType) -> list[tuple[str, bool]]:
    """Record each temporary file :func:`write_temp` writes, through the modules
    *writers* (which import it) or the atomic writes: the name it is written for,
    and whether the directory's lock was held meanwhile."""
    from spanproof.verifier import _files

    real_write_temp, written = _files.write_temp, []

    def write_temp(directory: str, name: str, data: bytes, **kwargs: Any) -> str:
        written.append((name, locked_by_another(directory)))
        return real_write_temp(directory, name, data, **kwargs)

    for module in (_files, *writers):
        monkeypatch.setattr(module, "write_temp", write_temp)
    return written


def without_directory_locks(monkeypatch: pytest.MonkeyPatch, *writers: ModuleType) -> None:
    """As on a filesystem that locks no directories (some network filesystems): the
    modules *writers* get a ``locked_directory`` that takes no lock and says so."""

    @contextlib.contextmanager
    def unlocked(directory: str) -> Iterator[bool]:
        yield False

    for module in writers:
        monkeypatch.setattr(module, "locked_directory", unlocked)
