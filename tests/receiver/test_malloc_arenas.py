"""``spanproof receiver`` runs with one glibc malloc arena (see
:func:`spanproof.exporter._malloc.limit_malloc_arenas`)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

from spanproof.exporter import _cli

glibc_only = pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
    reason="glibc's malloc",
)

# Threads that each allocate while all are alive, then glibc's own account of its
# heaps (malloc_info): one <heap> element per arena.
HEAPS = r"""
import ctypes, sys, tempfile, threading
from spanproof.exporter._malloc import limit_malloc_arenas

limited = limit_malloc_arenas() if sys.argv[1] == "limit" else None
barrier = threading.Barrier(6)
def allocate():
    kept = [bytearray(4096) for _ in range(50)]  # above pymalloc's 512 bytes: malloc
    barrier.wait()
threads = [threading.Thread(target=allocate) for _ in range(6)]
for t in threads:
    t.start()
for t in threads:
    t.join()
libc = ctypes.CDLL(None)
libc.fopen.restype = ctypes.c_void_p
libc.fopen.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
libc.fclose.argtypes = [ctypes.c_void_p]
with tempfile.NamedTemporaryFile("r") as f:
    fp = libc.fopen(f.name.encode(), b"w")
    libc.malloc_info(0, fp)
    libc.fclose(fp)
    print(limited, f.read().count("<heap nr="))
"""


def heaps(mode: str, **env: str) -> tuple[str, int]:
    environ = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"} | env
    out = subprocess.run([sys.executable, "-c", HEAPS, mode], env=environ, check=True,
                         capture_output=True, text=True, timeout=60).stdout.split()
    return out[0], int(out[1])


@glibc_only
def test_one_arena_serves_every_thread():
    assert heaps("default")[1] > 1  # glibc's default: an arena per allocating thread
    assert heaps("limit") == ("True", 1)


@glibc_only
def test_malloc_arena_max_in_the_environment_decides():
    limited, count = heaps("limit", MALLOC_ARENA_MAX="3")
    assert limited == "False"
    assert count == 3


def test_the_receiver_command_limits_the_arenas_before_it_starts(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(_cli, "limit_malloc_arenas", lambda: calls.append("limited") or True)
    with pytest.raises(_cli.UsageError):  # refused before anything listens
        _cli.receiver(out=str(tmp_path), key=str(tmp_path / "no-such-key.pem"))
    assert calls == ["limited"]
