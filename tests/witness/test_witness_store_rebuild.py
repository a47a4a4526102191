"""Rebuilding the tree on start reads the stored leaves a page at a time."""

from __future__ import annotations

import hashlib
import sqlite3
import tracemalloc
from pathlib import Path

from spanproof.witness.store import LEAVES_PAGE, Store

_LEAF = b'{"mediaType":"application/vnd.spanproof.witness-leaf.v1+json","x":"' + b"a" * 250


def _fill(db: Path, n: int) -> None:
    Store(str(db)).close()
    with sqlite3.connect(db) as conn:
        conn.executemany(
            "INSERT INTO leaves VALUES (?, ?, ?, '', '', '0', '', '', 'pinned', 'bundle', '',"
            " x'', '{}')",
            ((i, hashlib.sha256(b"%d" % i).digest(), _LEAF + b"%d" % i) for i in range(n)),
        )
    conn.close()


def test_leaves_are_not_read_into_memory_all_at_once(tmp_path: Path) -> None:
    # Read whole, every row of the log was in memory at once while the witness
    # started: ~550 bytes an entry, gigabytes for a log of millions.
    n = 16 * LEAVES_PAGE + 7
    db = tmp_path / "w.db"
    _fill(db, n)
    store = Store(str(db))
    try:
        tracemalloc.start()
        try:
            expected = 0
            for index, _, _ in store.leaves():
                assert index == expected
                expected += 1
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    finally:
        store.close()
    assert expected == n
    # A page of rows is ~4 MB as traced here (~1 KB a row); read whole, the log's
    # rows were ~34 MB at once.
    assert peak < 3 * LEAVES_PAGE * 1000, peak
