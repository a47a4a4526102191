"""A crash-safe, append-only journal of accepted span bodies.

Whatever a producer acknowledges is first appended here and fsynced; after a crash
the next start in the same output directory replays the journal and seals what was
never sealed (seal reason ``recovered``).  A ``sealed`` entry, appended after a
bundle is durably written, retires the span entries it covers and remembers where
the trace's chain continues.  Each file starts with a ``key`` entry naming the
public key its instance signs with, so a recovery under a rotated key still knows
the instance's written segments for its own.

Layout: ``<dir>/journal-<instance>-<n>.log``.  Each entry is
``length (4 bytes, big-endian) || CRC-32 (4 bytes) || JSON payload``, every payload
starting ``{"t":"``.  A torn tail (from a crash mid-write) is detected by length/CRC
and ignored: it was never acknowledged.  Bytes that fail the check with valid entries
after them were written whole and then damaged: replay skips to the next entry that
passes it.  A damaged span entry whose key (of the file's own producer instance) and
trace can still be read, and whose trace other entries name, is declared lost in the
trace's recovered bundle unless a later entry retires it; so is an entry that passes
the check but is not of the form this version writes (another version's).  The files
of each producer instance are replayed apart: a trace that several dead processes
journaled is recovered under each one's instance.  Each live journal file is
held under an exclusive ``flock`` by its process, so a starting process can tell a
dead process's journal (lock free) from a live one's, and recovers only the former:
a file is locked before it gets its name (created as ``.journal-…log.new``, then
renamed), and stays locked, once the journal has moved on to a newer file, until
every span in it is retired and it is deleted.
"""

from __future__ import annotations

import base64
import collections
import contextlib
import errno
import fcntl
import json
import logging
import os
import re
import struct
import threading
import time
import zlib
from collections.abc import Container, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from spanproof.verifier._files import make_directories, write_all
from spanproof.verifier.records import is_trace_id

__all__ = ["Journal", "RecoveredTrace", "recover_orphans", "replay", "replay_instances"]

_logger = logging.getLogger(__name__)
_HEADER = struct.Struct(">II")
# The longest entry payload: what the header's length field holds.  Replay reads
# whatever fits (a longer length is a damaged or torn frame); a smaller bound here
# than at writing had replay take an acknowledged span entry for a torn tail.
_MAX_ENTRY = (1 << 32) - 1
ROTATE_BYTES = 64 * 1024 * 1024
#: Traces whose chain position the journal remembers, to write it again beside the
#: trace's next entries once the file holding it may be deleted (as many sealed
#: traces as the assembler remembers by default).
POSITION_MEMORY = 65_536


@dataclass
class RecoveredTrace:
    """A trace's unsealed bodies and its chain position, as replayed from journals.

    ``damaged_spans`` counts span entries that were written but found damaged on
    disk (see the module docstring), apart from the ``dropped_spans`` the journal
    recorded.  ``rejected_spans`` are the spans recorded as rejected, and
    ``conflicts`` the span ids of bodies recorded as conflicting with a version of
    the span accepted before, since the trace's last sealed segment.
    """

    trace_id: str
    instance: str = ""
    bodies: list[dict[str, Any]] = field(default_factory=list)
    next_position: dict[str, Any] | None = None
    dropped_spans: int = 0
    unsampled_spans: int = 0
    damaged_spans: int = 0
    rejected_spans: int = 0
    conflicts: set[str] = field(default_factory=set)
    #: The Ed25519 public key (raw, 32 bytes) the instance's journal names as the one
    #: it signed with, or None (a journal of an earlier version names none).
    public_key: bytes | None = None


_PAYLOAD_START = b'{"t":"'
# In a file's live set, beside span keys: the trace has loss counts in that file.
_COUNTS = "counts:"
_COUNT_KINDS = ("dropped", "rejected", "unsampled")  # _retire_counts takes them in order
# The start of a span entry's payload, as append_spans writes it.
_SPAN_HEAD = re.compile(rb'\{"t":"span","k":"([0-9a-f]+:[0-9]+)","trace":"([0-9a-f]{32})",')


def _entry_at(data: bytes, pos: int) -> tuple[dict[str, Any] | None, int, bool]:
    """The entry framed at *pos*: ``(entry, end, complete)``; entry is None when the
    frame fails its check, and *complete* is False when the frame runs past the end."""
    length, crc = _HEADER.unpack_from(data, pos)
    start = pos + _HEADER.size
    end = start + length
    if length > _MAX_ENTRY or end > len(data):
        return None, end, False
    payload = data[start:end]
    if zlib.crc32(payload) != crc:
        return None, end, True
    try:
        entry = json.loads(payload)
    except ValueError:
        return None, end, True
    if not _well_formed(entry):
        return None, end, True
    return entry, end, True


def _well_formed(entry: Any) -> bool:
    """Whether *entry* has the fields replay reads, of the types this version writes.

    An entry that passes its frame's check and is not (another version's, or
    damaged so as to pass it) is skipped as a damaged one: read as it is, it
    raised out of replay, and no journal in the directory was ever recovered."""
    if isinstance(entry, dict) and entry.get("t") == "key":
        return _public_key_of(entry) is not None
    if not isinstance(entry, dict) or not is_trace_id(entry.get("trace")):
        return False
    kind = entry.get("t")
    if kind == "span":
        return isinstance(entry.get("k"), str) and isinstance(entry.get("body"), dict)
    if kind == "sealed":
        keys, declared = entry.get("keys"), entry.get("declared")
        return (
            isinstance(keys, list) and all(isinstance(key, str) for key in keys)
            and isinstance(entry.get("next"), dict)
            and (declared is None or (isinstance(declared, dict)
                                      and all(_is_count(n) for n in declared.values())))
        )
    return kind in _COUNT_KINDS and _is_count(entry.get("n"))


def _public_key_of(entry: Mapping[str, Any]) -> bytes | None:
    """The raw public key a ``key`` entry names (32 bytes, base64), or None."""
    text = entry.get("key")
    if not isinstance(text, str):
        return None
    try:
        raw = base64.b64decode(text, validate=True)
    except ValueError:
        return None
    return raw if len(raw) == 32 else None


def _is_count(value: Any) -> bool:
    """A count as entries hold it: decimal digits (an int, as read back, too)."""
    if isinstance(value, str):
        return value.isascii() and value.isdigit()
    return type(value) is int and value >= 0


def _next_entry(data: bytes, after: int) -> int | None:
    """Where the first frame after byte *after* that passes its check begins."""
    search = after + _HEADER.size + 1
    while (found := data.find(_PAYLOAD_START, search)) >= 0:
        if _entry_at(data, found - _HEADER.size)[0] is not None:
            return found - _HEADER.size
        search = found + 1
    return None


def _read_entries(path: str) -> list[dict[str, Any]]:
    """The entries of one journal file, in order.  A damaged span entry followed by
    good ones becomes ``{"t": "damaged", "k": key, "trace": trace id}`` when its head
    can still be read."""
    entries = []
    with open(path, "rb") as f:
        data = f.read()
    # journal-<instance>-<n>.log: every span key in the file starts with <instance>.
    instance = _instance_of(path)
    pos = 0
    while pos + _HEADER.size <= len(data):
        entry, end, complete = _entry_at(data, pos)
        if entry is not None:
            entries.append(entry)
            pos = end
            continue
        resume = _next_entry(data, pos)
        if resume is None:
            if complete:  # a whole frame that fails its check, and nothing after it
                _logger.warning("journal %s: corrupt entry at byte %d, the last one; "
                                "ignored", path, pos)
            break  # otherwise a torn tail: never acknowledged
        head = _SPAN_HEAD.match(data, pos + _HEADER.size, resume)
        if head and head[1].decode().rpartition(":")[0] != instance:
            head = None  # its key, damaged, names another producer instance
        _logger.warning(
            "journal %s: bytes %d to %d are damaged and were skipped (%s); the entries "
            "after them are replayed", path, pos, resume - 1,
            f"a span entry of trace {head[2].decode()}" if head else "not readable",
        )
        if head:
            entries.append({"t": "damaged", "k": head[1].decode(), "trace": head[2].decode()})
        pos = resume
    return entries


def _instance_of(path: str) -> str:
    """The producer instance whose journal file *path* (``journal-<instance>-<n>.log``) is."""
    return os.path.basename(path).removeprefix("journal-").rpartition("-")[0]


def replay(paths: Iterable[str]) -> dict[str, RecoveredTrace]:
    """Replay the journal files of one producer instance (oldest first) into the
    traces they leave unsealed, by trace id.

    Raises:
        ValueError: the files are of more than one producer instance (see
            :func:`replay_instances`).
    """
    paths = list(paths)
    if len({_instance_of(path) for path in paths}) > 1:
        raise ValueError("journal files of more than one producer instance: replay them "
                         "with replay_instances()")
    return {trace.trace_id: trace for trace in replay_instances(paths)}


def replay_instances(paths: Iterable[str]) -> list[RecoveredTrace]:
    """Replay journal files (oldest first) into the traces they leave unsealed: one
    :class:`RecoveredTrace` for each trace of each producer instance.

    The files of each instance are replayed apart (SPEC §5.3): a trace's spans
    are recovered under the instance that journaled them, continuing that
    instance's chain of the trace, never another's whose journal holds the same
    trace (a trace that crossed processes, or forked workers of one request).
    """
    replays: dict[str, _Replay] = {}
    named: set[str] = set()  # traces that an entry in good order names
    for path in paths:
        instance = _instance_of(path)
        state = replays.setdefault(instance, _Replay(instance))
        for entry in _read_entries(path):
            if entry["t"] not in ("damaged", "key"):
                named.add(entry["trace"])
            state.take(entry)
    return [trace for state in replays.values() for trace in state.traces(named)]


class _Replay:
    """What the entries of one producer instance's journal files leave unsealed."""

    def __init__(self, instance: str) -> None:
        self.instance = instance
        self.spans: dict[str, dict[str, Any]] = {}  # entry key -> entry
        self.positions: dict[str, dict[str, Any]] = {}
        self.counts: dict[str, dict[str, int]] = {kind: {} for kind in _COUNT_KINDS}
        self.public_key: bytes | None = None

    def take(self, entry: dict[str, Any]) -> None:
        """Replay one entry (in the order the files hold them)."""
        kind = entry["t"]
        if kind == "key":
            self.public_key = _public_key_of(entry)
        elif kind in ("span", "damaged"):
            self.spans[entry["k"]] = entry
        elif kind == "sealed":
            for key in entry["keys"]:
                self.spans.pop(key, None)
            # The chain continues after the highest segment sealed: a segment
            # whose write was retried is retired after the one sealed after it.
            before = self.positions.get(entry["trace"])
            if before is None or _segment_of(entry["next"]) >= _segment_of(before):
                self.positions[entry["trace"]] = entry["next"]
            _retire_counts(entry["trace"], entry.get("declared"), self.counts)
        else:
            by_trace = self.counts[kind]
            by_trace[entry["trace"]] = by_trace.get(entry["trace"], 0) + int(entry["n"])

    def traces(self, named: Container[str]) -> list[RecoveredTrace]:
        """The unsealed traces; a damaged span entry counts only in a trace that an
        entry in good order (of any instance replayed with it) *named*."""
        positions = self.positions
        traces: dict[str, RecoveredTrace] = {}
        for entry in self.spans.values():
            tid = entry["trace"]
            if entry["t"] == "damaged" and tid not in named:
                # Its trace id may be the damaged part: declaring the loss in a trace
                # no other entry names could be declaring it in the wrong one.
                _logger.warning("journal: a damaged span entry names trace %s, which no "
                                "other entry names; its loss is not declared", tid)
                continue
            trace = traces.setdefault(
                tid, RecoveredTrace(tid, self.instance, next_position=positions.get(tid),
                                    public_key=self.public_key)
            )
            if entry["t"] == "damaged":
                trace.damaged_spans += 1
            else:
                trace.bodies.append(entry["body"])
                span = entry["body"].get("span")
                if entry.get("c") and isinstance(span, dict) and isinstance(
                        span.get("spanId"), str):
                    trace.conflicts.add(span["spanId"])
        for kind, by_trace in self.counts.items():
            for tid, n in by_trace.items():
                trace = traces.setdefault(
                    tid, RecoveredTrace(tid, next_position=positions.get(tid)))
                setattr(trace, f"{kind}_spans", n)
        return list(traces.values())


# A remembered chain position: file number, segment index, first seq, start and
# previous statement digests.
_POSITION = struct.Struct(">IQQ32s32s")


def _unpacked(packed: bytes) -> dict[str, Any]:
    """A position packed by ``Journal._remember_position``, as the journal writes
    it, with the number of the file holding it under ``file``."""
    file_no, index, first, start, previous = _POSITION.unpack(packed)
    return {"index": str(index), "firstSeq": str(first), "start": _SHA256 + start.hex(),
            "previousStatement": _SHA256 + previous.hex(), "file": file_no}


_SHA256 = "sha256:"


def _digest(text: str) -> bytes:
    """The bytes of a ``sha256:<hex>`` digest (ValueError when it is not one)."""
    if not text.startswith(_SHA256):
        raise ValueError(f"not a SHA-256 digest: {text!r}")
    return bytes.fromhex(text[len(_SHA256):])


def _segment_of(position: Any) -> int:
    """The segment index a sealed entry's chain position continues at; -1 if none."""
    index = position.get("index") if isinstance(position, dict) else None
    return int(index) if isinstance(index, str) and index.isdigit() else -1


def _retire_counts(
    trace_id: str, declared: Any, counts: Mapping[str, dict[str, int]]
) -> None:
    """Take what a sealed bundle declared (``declared``, kind -> decimal count) off
    the trace's journaled *counts*: each kind from its own count first, then what is
    left of it from the other kinds (a producer may declare a journaled rejection
    as dropped, when it had no room left for the trace).  What remains was journaled
    while the bundle was being written, and belongs to the trace's next one.  An
    entry without ``declared`` was written before bundles' counts were recorded: the
    bundle declared everything journaled."""
    if not isinstance(declared, dict):
        for by_trace in counts.values():
            by_trace.pop(trace_id, None)
        return
    left = 0
    for kind, by_trace in counts.items():
        have, owed = by_trace.get(trace_id, 0), int(declared.get(kind, "0"))
        by_trace[trace_id] = have - min(have, owed)
        left += owed - min(have, owed)
    for by_trace in counts.values():
        taken = min(by_trace[trace_id], left)
        by_trace[trace_id] -= taken
        left -= taken
        if not by_trace[trace_id]:
            del by_trace[trace_id]


class Journal:
    """One process's journal in *directory*; thread-safe.

    Span entries are keyed ``<instance>:<n>`` so a ``sealed`` entry can retire them.
    """

    def __init__(self, directory: str, instance: str, public_key: bytes | None = None) -> None:
        """*public_key*: the raw Ed25519 public key this instance signs its bundles
        with, named at the start of each journal file, so that a recovery under
        another key (the key rotated at the restart) still knows this instance's
        written segments for its own (:func:`replay_instances`)."""
        self._dir = directory
        self._instance = instance
        self._key_entry = b"" if public_key is None else _frame(
            {"t": "key", "key": base64.b64encode(public_key).decode("ascii")})
        self._lock = threading.Lock()
        self._counter = 0
        self._file_no = 0
        self._fd = -1
        self._size = 0
        self._live: dict[int, set[str]] = {}  # file number -> unretired keys in it
        # The descriptors (and so the locks) of older files still in _live.
        self._held: dict[int, int] = {}
        self._key_file: dict[str, int] = {}
        # Loss counts journaled and not yet declared by a sealed bundle: kind ->
        # trace -> count, as replay keeps them.
        self._owed: dict[str, dict[str, int]] = {kind: {} for kind in _COUNT_KINDS}
        # "sealed" entries a failed write left, written first by the next one.
        self._unretired: list[tuple[str, list[str], dict[str, Any], dict[str, str]]] = []
        # Trace -> the file holding its last chain position and that position as an
        # entry retiring nothing, written again with the trace's next span or count
        # entries in a newer file (_write_with_positions): once that file was deleted (its
        # spans all sealed), replay had no position for the trace, and recovery
        # walked its chain from segment 0 on disk, where a segment that declares
        # losses or commits values cannot be told apart from an unrecorded one.
        # Values: _POSITION-packed (file number, segment index, first seq, start,
        # previous statement): ~0.2 KB a trace with the dict's own, its id apart.
        self._positions: collections.OrderedDict[str, bytes] = collections.OrderedDict()
        make_directories(directory)
        self._open_next()

    @property
    def directory(self) -> str:
        """The journal directory."""
        return self._dir

    def _path(self, n: int) -> str:
        return os.path.join(self._dir, f"journal-{self._instance}-{n:06d}.log")

    def _open_next(self) -> None:
        fd = _create_locked(self._path(self._file_no + 1))
        self._file_no += 1  # only once the file is there: a failed open changes nothing
        self._hold(self._file_no - 1)
        self._fd, self._size = fd, 0
        self._live[self._file_no] = set()
        _fsync_dir(self._dir)
        self._collect()

    def _hold(self, n: int) -> None:
        """Keep the current descriptor (file *n*) open, and its file locked, while
        spans in it are unretired: unlocked, another process's recovery would take
        the file for a dead process's, and seal its spans a second time."""
        if self._fd < 0:
            return
        if n in self._live:
            self._held[n] = self._fd
        else:
            os.close(self._fd)
        self._fd = -1

    def append_spans(
        self,
        items: Iterable[tuple[str, Mapping[str, Any] | bytes]],
        *,
        conflicting: Container[int] = (),
        rejected: Mapping[str, int] | None = None,
    ) -> list[str]:
        """Durably append ``(trace id, body)`` items; return their keys.

        A body may be given already serialized, as the UTF-8 bytes of a JSON object
        (a caller that serialized it anyway, e.g. to fingerprint it, saves a second
        encoding).  The items whose positions are in *conflicting* are recorded as
        conflicting with a version of their span accepted before (SPEC §5.3), and
        *rejected* (trace id -> count) as rejected spans, in the same write.

        Returns only after the data is fsynced.

        Raises:
            ValueError: a body cannot be encoded as JSON (a string holding a lone
                surrogate), or its entry is longer than an entry may be; nothing of
                this call was written.
            OSError: the journal cannot be written (the caller must not acknowledge).
        """
        with self._lock:
            keys = []
            chunks: list[bytes] = []
            traces: list[str] = []
            counter = self._counter
            for i, (trace_id, body) in enumerate(items):
                traces.append(trace_id)
                counter += 1
                key = f"{self._instance}:{counter}"
                keys.append(key)
                entry: dict[str, Any] = {"t": "span", "k": key, "trace": trace_id}
                if i in conflicting:
                    entry["c"] = True
                if isinstance(body, bytes):
                    head = _json(entry)
                    chunks.append(_frame_payload(b"".join(
                        (head[:-1], b',"body":', body, b"}"))))
                else:
                    entry["body"] = body
                    chunks.append(_frame(entry))
            for trace_id, n in (rejected or {}).items():
                traces.append(trace_id)
                chunks.append(_frame({"t": "rejected", "trace": trace_id, "n": str(n)}))
            self._counter = counter
            self._write_with_positions(traces, chunks)
            live = self._live[self._file_no]
            for key in keys:
                live.add(key)
                self._key_file[key] = self._file_no
            self._counts_written(rejected or {}, "rejected")
            self._rotate_if_due()
            return keys

    def _counts_written(self, counts: Mapping[str, int], kind: str) -> None:
        # A file holding a trace's loss counts stays until bundles have declared them
        # all, as one holding its spans does until they are sealed: deleted earlier,
        # a crash lost them.  The arithmetic is replay's (_retire_counts).
        live = self._live[self._file_no]
        owed = self._owed[kind]
        for trace_id, n in counts.items():
            live.add(_COUNTS + trace_id)
            owed[trace_id] = owed.get(trace_id, 0) + n

    def append_dropped(self, trace_id: str, n: int) -> None:
        """Durably record that *n* evidence spans of a trace were lost."""
        self._append_count("dropped", trace_id, n)

    def append_rejected(self, trace_id: str, n: int) -> None:
        """Durably record that *n* evidence spans of a trace were rejected (SPEC §5.3)."""
        self._append_count("rejected", trace_id, n)

    def append_unsampled(self, trace_id: str, n: int) -> None:
        """Durably record that sampling removed *n* evidence spans of a trace."""
        self._append_count("unsampled", trace_id, n)

    def _append_count(self, kind: str, trace_id: str, n: int) -> None:
        self.append_counts({kind: {trace_id: n}})

    def append_counts(self, counts: Mapping[str, Mapping[str, int]]) -> None:
        """Durably record loss counts, ``dropped``, ``rejected`` or ``unsampled`` ->
        trace id -> count, of any number of traces with one write and one fsync.

        (A producer losing spans is most often overloaded: one fsync for each trace
        that lost any slowed it most when it could afford it least.)

        Raises:
            ValueError: a kind that is none of those.
            OSError: the journal cannot be written; nothing of this call was.
        """
        traces: list[str] = []
        chunks: list[bytes] = []
        for kind, by_trace in counts.items():
            if kind not in _COUNT_KINDS:
                raise ValueError(f"not a kind of loss count: {kind!r}")
            for trace_id, n in by_trace.items():
                traces.append(trace_id)
                chunks.append(_frame({"t": kind, "trace": trace_id, "n": str(n)}))
        if not chunks:
            return
        with self._lock:
            self._write_with_positions(traces, chunks)
            for kind, by_trace in counts.items():
                self._counts_written(by_trace, kind)
            self._rotate_if_due()

    def append_sealed(
        self,
        trace_id: str,
        keys: Iterable[str],
        next_position: Mapping[str, Any],
        declared: Mapping[str, int] | None = None,
    ) -> None:
        """Record that the spans *keys* are in a durably written bundle, which
        declared *declared* (``dropped``, ``rejected``, ``unsampled`` counts)."""
        self.append_sealed_many([(trace_id, keys, next_position, declared or {})])

    def append_sealed_many(
        self,
        items: Iterable[tuple[str, Iterable[str], Mapping[str, Any], Mapping[str, int]]],
    ) -> None:
        """:meth:`append_sealed` for several ``(trace id, keys, next position,
        declared)`` items, with one write and one fsync.

        Replay subtracts what a bundle declared from the trace's journaled counts,
        rather than forgetting them: a count journaled while the bundle was being
        written belongs to the trace's next one.

        Raises:
            OSError: the journal cannot be written.  The entries are kept and
                written first, in order, by the next call (with no items, a call
                only retries them; see :attr:`retire_pending`).
        """
        new = [(trace_id, list(keys), dict(nxt),
                {k: str(n) for k, n in declared.items() if n})
               for trace_id, keys, nxt, declared in items]
        with self._lock:
            entries, self._unretired = self._unretired + new, []
            if not entries:
                return
            try:
                self._write(b"".join(
                    _frame({"t": "sealed", "trace": trace_id, "keys": keys, "next": nxt,
                            "declared": declared})
                    for trace_id, keys, nxt, declared in entries
                ))
            except OSError:
                self._unretired = entries
                raise
            for trace_id, _, nxt, _ in entries:
                self._remember_position(trace_id, nxt)
            for trace_id, keys, _, declared in entries:
                for key in keys:
                    n = self._key_file.pop(key, None)
                    if n is not None:
                        self._live.get(n, set()).discard(key)
                _retire_counts(trace_id, declared, self._owed)
                if any(trace_id in owed for owed in self._owed.values()):
                    continue  # counts for the trace's next bundle: its files stay
                for live in self._live.values():
                    live.discard(_COUNTS + trace_id)
            self._collect()
            self._rotate_if_due()

    def _remember_position(self, trace_id: str, nxt: Mapping[str, Any]) -> None:
        """Remember *nxt*, just written in the current file, as the trace's chain
        position, unless one further along is remembered (replay keeps the
        furthest: a segment whose write was retried is retired after its successor).
        A position not in the form :func:`position_to_json` writes is not
        remembered (the trace's chain is then walked on disk, as before)."""
        try:
            index, first = int(nxt["index"]), int(nxt["firstSeq"])
            start, previous = _digest(nxt["start"]), _digest(nxt["previousStatement"])
            packed = _POSITION.pack(self._file_no, index, first, start, previous)
        except (KeyError, TypeError, ValueError, struct.error):
            return
        if _unpacked(packed) != dict(nxt, file=self._file_no):
            return
        positions = self._positions
        held = positions.get(trace_id)
        if held is not None and index < _POSITION.unpack(held)[1]:
            return
        positions[trace_id] = packed
        positions.move_to_end(trace_id)
        while len(positions) > POSITION_MEMORY:
            positions.popitem(last=False)

    def _write_with_positions(self, traces: Iterable[str], chunks: list[bytes]) -> None:
        """Write *chunks*, entries of *traces*, after the chain position of each
        trace whose position is remembered in an older file than the one written:
        as a ``sealed`` entry retiring nothing."""
        positions = self._positions
        # _write starts a new file when the last write could not be undone.
        current = self._file_no if self._fd >= 0 else self._file_no + 1
        carried = []
        for trace_id in dict.fromkeys(traces):
            held = positions.get(trace_id)
            if held is not None and _POSITION.unpack(held)[0] != current:
                carried.append(trace_id)
                nxt = _unpacked(held)
                del nxt["file"]
                chunks.insert(0, _frame({"t": "sealed", "trace": trace_id, "keys": [],
                                         "next": nxt, "declared": {}}))
        self._write(b"".join(chunks))
        for trace_id in carried:
            positions[trace_id] = self._file_no.to_bytes(4, "big") + positions[trace_id][4:]
            positions.move_to_end(trace_id)

    @property
    def retire_pending(self) -> bool:
        """Whether "sealed" entries a failed :meth:`append_sealed_many` left are
        waiting to be written (by the next call)."""
        return bool(self._unretired)

    def _write(self, data: bytes) -> None:
        if self._fd < 0:
            self._open_next()  # the last write failed and could not be undone
        if self._size == 0:
            data = self._key_entry + data  # each file names the key (see __init__)
        try:
            write_all(self._fd, data)
            os.fsync(self._fd)
        except OSError:
            # A partial frame (disk full) would hide every later entry from replay:
            # cut it off, or start a new file on the next write.
            try:
                os.ftruncate(self._fd, self._size)
            except OSError:
                self._hold(self._file_no)  # the next write starts a new file
            raise
        self._size += len(data)

    def _rotate_if_due(self) -> None:
        # Called once a write's keys are recorded against the file that holds them:
        # rotating inside _write collected that file as if nothing in it were live,
        # and deleted spans just made durable.
        if self._size >= ROTATE_BYTES:
            try:
                self._open_next()
            except OSError as e:
                # What was just written is durable: the caller's write succeeded.
                # The next write tries the rotation again.
                _logger.warning("journal: cannot start a new file in %s (%s); "
                                "this one grows meanwhile", self._dir, e)

    def forget_after_fork(self) -> None:
        """In a forked child: close the inherited descriptor, touching no file.

        The parent still owns and writes the journal; the child must neither hold
        its lock nor delete its files.
        """
        for fd in (self._fd, *self._held.values()):
            with contextlib.suppress(OSError):
                if fd >= 0:
                    os.close(fd)
        self._fd = -1
        self._held.clear()
        self._live.clear()
        self._key_file.clear()
        for owed in self._owed.values():
            owed.clear()
        self._unretired.clear()
        self._positions.clear()

    def _collect(self) -> None:
        # A file older than the current one whose spans are all sealed is no longer
        # needed -- except for chain positions, which its successor repeats only if
        # the trace is sealed again; positions are also kept in the bundles.
        # Oldest first, and only while each is dead: a newer file deleted before an
        # older one it retired entries of would bring those entries back on replay.
        for n in sorted(self._live):
            if n >= self._file_no or self._live[n]:
                break
            try:
                os.unlink(self._path(n))
            except FileNotFoundError:
                pass
            except OSError as e:
                _logger.warning("journal: cannot delete %s (%s)", self._path(n), e)
                break
            del self._live[n]
            held = self._held.pop(n, -1)
            if held >= 0:
                os.close(held)  # deleted first: no one finds it unlocked

    def close(self) -> None:
        """Release the journal (its files stay for recovery unless all retired)."""
        with self._lock:
            if self._fd < 0 and not self._held:
                return
            if not any(self._live.values()):
                for n in list(self._live):
                    try:
                        os.unlink(self._path(n))
                    except FileNotFoundError:
                        pass
                self._live.clear()
            for fd in (self._fd, *self._held.values()):
                if fd >= 0:
                    os.close(fd)
            self._fd = -1
            self._held.clear()


def recover_orphans(
    directory: str, *, skip_instance: str | None = None
) -> tuple[list[RecoveredTrace], list[str]]:
    """Replay the journals in *directory* that no live process holds (but those of
    producer instance *skip_instance*, when given).

    Returns the unsealed traces (:func:`replay_instances`: one for each trace of each
    instance) and the paths replayed; the caller seals the traces (reason
    ``recovered``), then deletes the paths.  Orphaned files stay locked by this
    process until deleted, so two starting processes never recover the same journal
    twice.  Files a dead process left half created (empty) are deleted.
    """
    if not os.path.isdir(directory):
        return [], []
    claimed: list[tuple[str, int]] = []
    skipped = None if skip_instance is None else f"journal-{skip_instance}-"
    for name in sorted(os.listdir(directory)):
        if name.startswith(".journal-") and name.endswith(_CREATING):
            _remove_if_unlocked(os.path.join(directory, name))
            continue
        if not (name.startswith("journal-") and name.endswith(".log")):
            continue
        if skipped is not None and name.startswith(skipped):
            continue
        path = os.path.join(directory, name)
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            continue  # recovered meanwhile by another process
        except PermissionError as e:
            # Another user's (a process of another service sharing the directory,
            # live or not): not this process's to recover.  Raising here stopped
            # the recovery of every other journal in the directory.
            _logger.warning("journal: cannot open %s (%s); it is left to a process "
                            "that can", path, e)
            continue
        except OSError:
            for _, taken in claimed:  # not left locked until this process exits
                os.close(taken)
            raise
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            # Deleted between the open and the lock, by its live process (every span
            # in it retired) or by a recovery that sealed it: nothing to recover, and
            # replaying it by its name raised, failing the whole recovery.
            deleted = os.fstat(fd).st_nlink == 0
        except BlockingIOError:
            os.close(fd)
            continue  # a live process owns it
        except OSError:
            os.close(fd)
            for _, taken in claimed:
                os.close(taken)
            raise
        if deleted:
            os.close(fd)
            continue
        claimed.append((path, fd))
    paths = [p for p, _ in claimed]
    # Keep the locks until the caller releases the files (release_claimed).
    with _CLAIMED_LOCK:
        _CLAIMED.update(claimed)
    try:
        traces = replay_instances(paths)
    except BaseException:
        release_claimed(paths, delete=False)
        raise
    return traces, paths


# The journal files this process claimed for recovery, with their locked descriptors,
# until released; each recovery releases its own (another may run beside it).
_CLAIMED: dict[str, int] = {}
_CLAIMED_LOCK = threading.Lock()


def _forget_claims_in_child() -> None:
    # A forked child must not hold the parent's claims: the lock would outlive the
    # parent's release of them.
    global _CLAIMED_LOCK
    _CLAIMED_LOCK = threading.Lock()
    for fd in _CLAIMED.values():
        with contextlib.suppress(OSError):
            os.close(fd)
    _CLAIMED.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_claims_in_child)


def _remove_if_unlocked(path: str) -> None:
    """Delete a journal file a process began to create, unless it may still be
    creating it (holding its lock, or about to: made in the last minute)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        if os.fstat(fd).st_mtime > time.time() - _LEFTOVER_SECONDS:
            return
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.unlink(path)
    except OSError:
        pass  # being created: its process renames it
    finally:
        os.close(fd)


def release_claimed(paths: Iterable[str], *, delete: bool = True) -> None:
    """Delete recovered journal files after their traces were sealed and written,
    and let go of them; without *delete*, only let go (a recovery that failed: the
    next one, in this process or another, takes them again)."""
    for path in paths:
        if delete:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        with _CLAIMED_LOCK:
            fd = _CLAIMED.pop(path, -1)
        if fd >= 0:
            os.close(fd)


def _json(entry: Mapping[str, Any]) -> bytes:
    """*entry* as compact UTF-8 JSON (orjson: a 1.5 KB span body in ~1 µs, against
    ~11 µs for the standard library's encoder; ``json.loads`` reads it back equal).

    A ``str`` subclass key (a ``str`` Enum naming an attribute, which the SDK keeps as
    given) is written as its string data, as a bundle's record writes it: orjson
    refuses such keys, and the span was journaled as rejected where its bundle
    certified it.

    Raises:
        ValueError: a value JSON cannot carry (a string holding a lone surrogate), or
            two keys of one object holding the same string (a bundle's record cannot
            hold them either: SPEC §2.4.2).
    """
    try:
        return orjson.dumps(entry)
    except orjson.JSONEncodeError as e:
        error = e
    try:
        return orjson.dumps(_plain_keys(entry))
    except orjson.JSONEncodeError:
        raise ValueError(f"journal entry cannot be encoded as JSON: {error}") from None


def _plain_keys(value: Any) -> Any:
    """*value* with every ``str`` subclass key of its objects as its string data.

    Raises:
        ValueError: two keys of one object hold the same string.
    """
    if isinstance(value, dict):
        plain = {(key if type(key) is str
                  else str.__str__(key) if isinstance(key, str) else key): _plain_keys(item)
                 for key, item in value.items()}
        if len(plain) != len(value):
            raise ValueError("journal entry cannot be encoded as JSON: two keys of one "
                             "object hold the same string")
        return plain
    if isinstance(value, (list, tuple)):
        return [_plain_keys(item) for item in value]
    return value


def _frame(entry: Mapping[str, Any]) -> bytes:
    return _frame_payload(_json(entry))


def _frame_payload(payload: bytes) -> bytes:
    """*payload* framed (see the module docstring).

    Raises:
        ValueError: it is longer than a frame can hold (:data:`_MAX_ENTRY`).
    """
    if len(payload) > _MAX_ENTRY:
        raise ValueError(f"journal entry of {len(payload)} bytes: longer than a journal "
                         f"entry may be ({_MAX_ENTRY})")
    return _HEADER.pack(len(payload), zlib.crc32(payload)) + payload


def _create_locked(path: str) -> int:
    """A new file at *path*, opened for appending and locked before it has that name
    (see the module docstring).

    Raises:
        OSError: it cannot be created or locked, or *path* exists already.
    """
    directory, name = os.path.split(path)
    temporary = os.path.join(directory, f".{name}{_CREATING}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if os.path.lexists(path):
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), path)
        os.rename(temporary, path)
    except OSError:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    return fd


#: The suffix of a journal file being created (a leftover one is empty).
_CREATING = ".new"
#: How old such a file must be before a recovery deletes it.
_LEFTOVER_SECONDS = 60.0


def _fsync_dir(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
