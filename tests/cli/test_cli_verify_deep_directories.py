"""A directory nested deeper than Python's recursion limit: on Python before 3.12,
``os.walk`` recursed once per level, so ``verify``, ``report`` and ``monitor
--receipts`` ended with one ``unexpected RecursionError`` line instead of a line
for each bundle (SPEC §8: a verifier never crashes on any input)."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_support import TRACE, Keys, MakeBundle

from spanproof.verifier._cli import main
from spanproof.witness.monitor import find_receipts

#: Levels: beyond the default recursion limit (1000), the path still far below PATH_MAX.
DEPTH = 1100


@pytest.fixture
def top(tmp_path: Path) -> Iterator[Path]:
    """An empty directory, removed with whatever DEPTH levels :func:`_deep` made in
    it: pytest's own clean-up (``shutil.rmtree``) recurses once per level too before
    Python 3.12, and would fail on them at a later run's start."""
    made = tmp_path / "top"
    made.mkdir()
    yield made
    path = made.joinpath(*["d"] * DEPTH)
    while True:  # from the deepest level up, and top itself
        if path.is_dir():
            for entry in os.scandir(path):
                if not entry.is_dir(follow_symlinks=False):
                    os.unlink(entry.path)
            os.rmdir(path)
        if path == made:
            break
        path = path.parent


def _deep(top: Path) -> Path:
    """*top*/d/d/.../d, DEPTH levels below *top*, made without a path that long."""
    here = os.open(top, os.O_RDONLY)
    try:
        for _ in range(DEPTH):
            os.mkdir("d", dir_fd=here)
            below = os.open("d", os.O_RDONLY, dir_fd=here)
            os.close(here)
            here = below
    finally:
        os.close(here)
    return top.joinpath(*["d"] * DEPTH)


def test_verify_and_report_check_bundles_deeper_than_the_recursion_limit(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, top: Path, keys: Keys,
    make_bundle: MakeBundle,
) -> None:
    assert DEPTH > sys.getrecursionlimit()
    near, _ = make_bundle("near", directory=top)
    far, _ = make_bundle("far", directory=_deep(top), trace_id="5bf92f3577b34da6a3ce929d0e0e4737")
    assert main(["verify", "--key", str(keys.pub), str(top)]) == 0
    out = capsys.readouterr().out
    assert f"OK {near} trace={TRACE} " in out and f"OK {far} " in out
    assert main(["report", "--key", str(keys.pub), "--html", str(tmp_path / "r.html"),
                 str(top)]) == 0
    assert "RecursionError" not in capsys.readouterr().err


def test_monitor_finds_receipts_deeper_than_the_recursion_limit(top: Path) -> None:
    receipt = _deep(top) / "x.receipt.json"
    receipt.write_bytes(b"{}")
    assert find_receipts(str(top)) == ([str(receipt)], [])
