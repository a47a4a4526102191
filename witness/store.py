"""The witness's durable log: SQLite in WAL mode (SPEC §12.8).

Two append-only tables: ``leaves`` (one row per log entry, with the leaf's bytes,
what was checked and the submitted envelope) and ``checkpoints`` (one signed
checkpoint per tree size).  New entries (one, or a batch's) and the checkpoint
that covers them are written in one transaction, committed (``synchronous=FULL``:
fsynced) before the witness answers.  Triggers refuse ``UPDATE`` and ``DELETE`` on
both tables, and ``checkpoints.size`` is the primary key, so the database itself
refuses a second checkpoint for a size.

Access is serialized by the caller (the witness holds one lock); the connection
is shared across the server's worker threads.  One process serves a database: it
holds ``<db>.lock`` locked (``flock``; beside the database file, symbolic links
followed) while the store is open, since each process
keeps its own tree in memory, and a second one appending to the same file fell
behind the first, serving an older checkpoint than the log had signed.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import urllib.parse
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from spanproof.verifier.errors import TransportError
from spanproof.verifier.receipt import WitnessLeaf

from ._lock import Held, NotLocked, lock_beside

__all__ = ["LEAVES_PAGE", "SCHEMA_VERSION", "Entry", "Store", "StoredCheckpoint"]

SCHEMA_VERSION = "1"
#: The entries :meth:`Store.leaves` reads from the database at a time.
LEAVES_PAGE = 4096

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS leaves (
    idx               INTEGER PRIMARY KEY CHECK (idx >= 0),
    leaf_hash         BLOB NOT NULL UNIQUE,
    leaf              BLOB NOT NULL,
    statement_digest  TEXT NOT NULL,
    trace_id          TEXT NOT NULL,
    segment           TEXT NOT NULL,      -- decimal: may exceed SQLite's int64
    producer_instance TEXT NOT NULL,
    signer_keyid      TEXT NOT NULL,
    producer_key      TEXT NOT NULL CHECK (producer_key IN ('pinned', 'unverified-producer')),
    checked           TEXT NOT NULL CHECK (checked IN ('bundle', 'envelope')),
    submitted_at      TEXT NOT NULL,
    envelope          BLOB NOT NULL,
    report            TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS leaves_trace ON leaves (trace_id);
CREATE INDEX IF NOT EXISTS leaves_digest ON leaves (statement_digest);
-- A trace segment's statements, by digest: whether another statement than an entry's
-- was logged for its segment is two index probes (see Store.in_conflict).
CREATE INDEX IF NOT EXISTS leaves_identity_digest
    ON leaves (trace_id, segment, producer_instance, statement_digest);
DROP INDEX IF EXISTS leaves_identity;
CREATE TABLE IF NOT EXISTS checkpoints (
    size      INTEGER PRIMARY KEY CHECK (size >= 0),
    root      BLOB NOT NULL,
    note      BLOB NOT NULL,
    signed_at TEXT NOT NULL
);
CREATE TRIGGER IF NOT EXISTS leaves_append_only_u BEFORE UPDATE ON leaves
    BEGIN SELECT RAISE(ABORT, 'the witness log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS leaves_append_only_d BEFORE DELETE ON leaves
    BEGIN SELECT RAISE(ABORT, 'the witness log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS checkpoints_append_only_u BEFORE UPDATE ON checkpoints
    BEGIN SELECT RAISE(ABORT, 'signed checkpoints are append-only'); END;
CREATE TRIGGER IF NOT EXISTS checkpoints_append_only_d BEFORE DELETE ON checkpoints
    BEGIN SELECT RAISE(ABORT, 'signed checkpoints are append-only'); END;
"""

_ENTRY_COLUMNS = (
    "idx, leaf_hash, leaf, statement_digest, trace_id, segment, producer_instance, "
    "signer_keyid, producer_key, checked, submitted_at, envelope, report"
)
# What reading an entry takes of them: not the envelope, which nothing reads back,
# and of the report only its checks (a look-up answers them), as its statement's
# notes may be megabytes: a look-up of a trace with a few such entries took their
# whole size, many times over in Python objects, to answer a few kilobytes.
_READ_COLUMNS = (
    "idx, leaf_hash, leaf, statement_digest, trace_id, segment, producer_instance, "
    "signer_keyid, producer_key, checked, submitted_at, x'', {report}"
)
_CHECKS_OF_REPORT = "json_object('checks', json(coalesce(json_extract(report, '$.checks'), '[]')))"


@dataclass(frozen=True)
class Entry:
    """One log entry: its position, leaf, and what the witness checked on submission.

    ``producer_key`` is ``"pinned"`` (the signature verified under a producer key the
    witness was configured with) or ``"unverified-producer"`` (under a key the
    submitter supplied); ``checked`` is ``"bundle"`` (signature, chain and head) or
    ``"envelope"`` (signature and statement only: records were not submitted).
    """

    index: int
    leaf_hash: bytes
    leaf: WitnessLeaf
    leaf_bytes: bytes
    producer_key: str
    checked: str
    submitted_at: str
    envelope: bytes
    report: str

    def to_json(self, conflict: bool) -> dict[str, Any]:
        """The entry as look-ups show it (*conflict*: another statement was logged for
        the same trace, segment and producer instance)."""
        return {
            "index": str(self.index),
            "leafHash": self.leaf_hash.hex(),
            "leaf": self.leaf.to_json(),
            "statementDigest": self.leaf.statement_digest,
            "traceId": self.leaf.trace_id,
            "segment": str(self.leaf.segment),
            "producerInstance": self.leaf.producer_instance,
            "signerKeyid": self.leaf.signer_keyid,
            "producerKey": self.producer_key,
            "checked": self.checked,
            "submittedAt": self.submitted_at,
            "conflict": conflict,
        }


@dataclass(frozen=True)
class StoredCheckpoint:
    """A checkpoint as stored: size, root and the exact signed note."""

    size: int
    root: bytes
    note: bytes
    signed_at: str


def _entry(row: tuple[Any, ...]) -> Entry:
    leaf = WitnessLeaf(
        statement_digest=row[3],
        trace_id=row[4],
        segment=int(row[5]),
        producer_instance=row[6],
        signer_keyid=row[7],
    )
    return Entry(
        index=int(row[0]),
        leaf_hash=bytes(row[1]),
        leaf=leaf,
        leaf_bytes=bytes(row[2]),
        producer_key=row[8],
        checked=row[9],
        submitted_at=row[10],
        envelope=bytes(row[11]),
        report=row[12],
    )


class Store:
    """The SQLite file behind one witness log.

    Raises:
        TransportError: (from every method) the database cannot be read or written.
    """

    def __init__(self, path: str) -> None:
        if not path:
            # SQLite opens a temporary database for an empty name, deleted on close:
            # a log served from it was lost, every receipt with it, when it stopped.
            raise TransportError("no witness database file named (an empty name)")
        self.path = path
        self._lock = threading.RLock()
        self._held = _hold(path)
        try:
            self._db = sqlite3.connect(_file_uri(path), uri=True, isolation_level=None,
                                       check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA busy_timeout=5000")
            self._db.executescript(_SCHEMA)
            try:  # SQLite's JSON functions are built in since 3.38, optional before
                self._db.execute(f"SELECT {_CHECKS_OF_REPORT} FROM (SELECT '{{}}' AS report)")  # noqa: S608
                self._read_columns = _READ_COLUMNS.format(report=_CHECKS_OF_REPORT)
            except sqlite3.OperationalError:
                self._read_columns = _READ_COLUMNS.format(report="report")
            version = self.get_meta("schema")
            if version is None:
                self.set_meta("schema", SCHEMA_VERSION)
            elif version != SCHEMA_VERSION:
                raise TransportError(f"{path}: unknown witness schema version {version!r}")
        except sqlite3.Error as e:
            self._release()
            raise TransportError(f"{path}: cannot open the witness database: {e}") from e
        try:
            self._check_writable()
        except sqlite3.Error as e:
            self.close()
            raise TransportError(f"{path}: cannot write the witness database: {e}") from e

    def _check_writable(self) -> None:
        # SQLite opens a database it can only read (a file or directory without write
        # permission) without a word: the witness served it, and answered every
        # submission 503, "retry later", for as long as it ran.  A write, rolled back.
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._db.execute("INSERT INTO meta (key, value) VALUES ('write check', '')")
        finally:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")

    def close(self) -> None:
        """Close the database (idempotent) and let another process open it."""
        with self._lock:
            try:
                self._db.close()
            except sqlite3.Error:  # pragma: no cover - closing is best effort
                pass
            self._release()

    def _release(self) -> None:
        held, self._held = self._held, -1
        if held >= 0:
            os.close(held)

    def _query(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            try:
                return self._db.execute(sql, args).fetchall()
            except sqlite3.Error as e:
                raise TransportError(f"witness database read failed: {e}") from e

    def get_meta(self, key: str) -> str | None:
        """A value of the ``meta`` table, or None."""
        rows = self._query("SELECT value FROM meta WHERE key = ?", (key,))
        return str(rows[0][0]) if rows else None

    def set_meta(self, key: str, value: str) -> None:
        """Set a value of the ``meta`` table (only for values never rewritten)."""
        with self._lock:
            try:
                self._db.execute("INSERT INTO meta (key, value) VALUES (?, ?)", (key, value))
            except sqlite3.Error as e:
                raise TransportError(f"witness database write failed: {e}") from e

    def leaves(self) -> Iterator[tuple[int, bytes, bytes]]:
        """Yield ``(index, leaf hash, leaf bytes)`` of every entry in index order,
        read `LEAVES_PAGE` rows at a time."""
        # Read whole, the rows took ~550 bytes an entry at once (5.5 GB for ten
        # million), besides the 64 bytes an entry the rebuilt tree keeps.
        after = -1
        while True:
            rows = self._query(
                "SELECT idx, leaf_hash, leaf FROM leaves WHERE idx > ? ORDER BY idx LIMIT ?",
                (after, LEAVES_PAGE),
            )
            for idx, h, leaf in rows:
                yield int(idx), bytes(h), bytes(leaf)
            if len(rows) < LEAVES_PAGE:
                return
            after = int(rows[-1][0])

    def entry_rows(
        self, where: str, args: tuple[Any, ...], *, after: int = -1, limit: int = -1
    ) -> list[Entry]:
        """Entries matching an SQL condition over the ``leaves`` columns, by index:
        the first *limit* (all when negative) of those after index *after*."""
        rows = self._query(
            f"SELECT {self._read_columns} FROM leaves WHERE ({where}) AND idx > ? "  # noqa: S608
            "ORDER BY idx LIMIT ?",
            (*args, after, limit),
        )
        return [_entry(r) for r in rows]

    def entry(self, index: int) -> Entry | None:
        """The entry at *index*, or None."""
        found = self.entry_rows("idx = ?", (index,))
        return found[0] if found else None

    def by_leaf_hash(self, leaf_hash: bytes) -> Entry | None:
        """The entry with this leaf hash, or None."""
        found = self.entry_rows("leaf_hash = ?", (leaf_hash,))
        return found[0] if found else None

    def by_trace(self, trace_id: str, *, after: int = -1, limit: int = -1) -> list[Entry]:
        """The entries of a trace, by index: the first *limit* (all when negative)
        after index *after*."""
        return self.entry_rows("trace_id = ?", (trace_id,), after=after, limit=limit)

    def by_digest(self, digest: str, *, after: int = -1, limit: int = -1) -> list[Entry]:
        """The entries of a statement digest, by index: the first *limit* (all when
        negative) after index *after*."""
        return self.entry_rows("statement_digest = ?", (digest,), after=after, limit=limit)

    def in_conflict(self, entry: Entry) -> bool:
        """True when another statement was logged for the entry's trace, segment and
        producer instance."""
        # Two probes of the identity index, for a digest below the entry's and one
        # above it.  Counting the segment's other statements made each look-up and
        # append cost as much as the segment's entries, and a look-up of k of them
        # k²; so did skipping, one by one, the rows of the entry's own digest, which
        # anyone may give a segment many of in a log open to any producer key (the
        # same statement signed by many keys, each its own entry).
        identity = "trace_id = ? AND segment = ? AND producer_instance = ?"
        rows = self._query(
            f"SELECT EXISTS (SELECT 1 FROM leaves WHERE {identity} AND statement_digest < ?) "  # noqa: S608
            f"OR EXISTS (SELECT 1 FROM leaves WHERE {identity} AND statement_digest > ?)",
            (entry.leaf.trace_id, str(entry.leaf.segment), entry.leaf.producer_instance,
             entry.leaf.statement_digest) * 2,
        )
        return bool(rows[0][0])

    def checkpoints(self) -> list[StoredCheckpoint]:
        """Every stored checkpoint, by size."""
        rows = self._query("SELECT size, root, note, signed_at FROM checkpoints ORDER BY size")
        return [StoredCheckpoint(int(s), bytes(r), bytes(n), str(t)) for s, r, n, t in rows]

    def checkpoint(self, size: int | None = None) -> StoredCheckpoint | None:
        """The checkpoint of tree size *size* (default: the latest), or None."""
        if size is None:
            rows = self._query(
                "SELECT size, root, note, signed_at FROM checkpoints ORDER BY size DESC LIMIT 1"
            )
        else:
            rows = self._query(
                "SELECT size, root, note, signed_at FROM checkpoints WHERE size = ?", (size,)
            )
        if not rows:
            return None
        s, r, n, t = rows[0]
        return StoredCheckpoint(int(s), bytes(r), bytes(n), str(t))

    def add(self, entries: Sequence[Entry], checkpoint: StoredCheckpoint) -> None:
        """Persist *entries* (possibly none) and the checkpoint covering them in one
        durable transaction.

        Raises:
            TransportError: the write failed; nothing was stored.
        """
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    for entry in entries:
                        self._db.execute(
                            f"INSERT INTO leaves ({_ENTRY_COLUMNS}) "  # noqa: S608
                            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                            (
                                entry.index, entry.leaf_hash, entry.leaf_bytes,
                                entry.leaf.statement_digest, entry.leaf.trace_id,
                                str(entry.leaf.segment), entry.leaf.producer_instance,
                                entry.leaf.signer_keyid, entry.producer_key, entry.checked,
                                entry.submitted_at, entry.envelope, entry.report,
                            ),
                        )
                    self._db.execute(
                        "INSERT INTO checkpoints (size, root, note, signed_at) VALUES (?, ?, ?, ?)",
                        (checkpoint.size, checkpoint.root, checkpoint.note, checkpoint.signed_at),
                    )
                    self._db.execute("COMMIT")
                except BaseException:
                    if self._db.in_transaction:
                        try:
                            self._db.execute("ROLLBACK")
                        except sqlite3.Error:  # pragma: no cover - the original error matters
                            pass
                    raise
            except sqlite3.Error as e:
                raise TransportError(f"witness database write failed: {e}") from e


def _file_uri(path: str) -> str:
    """The SQLite URI of the file named *path*, taken literally.

    Given to SQLite as it was, a name beginning ``file:`` was read as a URI (SQLite
    takes URIs whatever the caller asks), so ``--db file:log.db`` opened ``log.db``
    while no lock was held for it, and a second process served the same log.  So
    was ``:memory:``, SQLite's name for a database in memory: a log served from it
    was lost when the witness stopped, and its key, which had signed that log's
    size, refused every start after.  It is a file of that name.
    """
    return "file:" + urllib.parse.quote(os.path.abspath(path))


def _hold(path: str) -> int:
    """Lock ``<path>.lock`` for this process, beside the file *path* names, symbolic
    links followed; its descriptor.

    Raises:
        TransportError: another process holds it, or it cannot be opened.
    """
    try:
        fd, _ = lock_beside(path)
    except Held as e:
        raise TransportError(
            f"{path} is served by another process ({e.lock} is locked): one witness "
            "process serves a log, or each would sign from its own view of it"
        ) from None
    except NotLocked as e:
        raise TransportError(f"{e.filename}: cannot lock the witness database "
                             f"({e.strerror})") from None
    except OSError as e:
        raise TransportError(f"{e.filename}: cannot open the witness database's lock "
                             f"({e.strerror})") from None
    return fd
