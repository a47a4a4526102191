"""Memory measured with ``tracemalloc``, for the tests that bound what a command keeps
against what holding a bundle's records would take."""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest


def held_by_records(bundle: Path) -> tuple[int, int]:
    """How many records *bundle* holds, and the memory holding them all parsed takes."""
    lines = bundle.read_bytes().splitlines()[1:-1]
    tracemalloc.start()
    try:
        records = [orjson.loads(line.rstrip(b",")) for line in lines]
        held, _peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return len(records), held


def peak_of(run: Callable[[], int], capsys: pytest.CaptureFixture[str]) -> tuple[int, int]:
    """*run*'s exit status and peak memory, measured on a second run: the first one
    also pays for what is done once (imports, compiled expressions, caches)."""
    run()
    capsys.readouterr()
    tracemalloc.start()
    try:
        code = run()
        _now, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return code, peak
