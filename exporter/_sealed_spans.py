"""The spans a receiver sealed, remembered across its restarts.

A Collector retries a request whose answer it did not get: one in flight when the
receiver was killed, or one whose answer timed out.  The receiver recognises an
identical re-delivery by the content fingerprints of the spans it accepted, but kept
them in memory only: a retry that reached the receiver after a restart was certified
a second time, in a chain of the new instance, and nothing declared it.  The
fingerprints of the spans a receiver seals (and of those its start recovers) are
therefore also appended here, and the next start takes them over.

Layout: ``<journal dir>/sealed-spans/sealed-spans-<instance>-<n>.bin``, each file :data:`MAGIC`
then 56-byte records (trace id, span id, SHA-256 fingerprint), appended, never
fsynced: what a killed process wrote is in the page cache, and only a host crash
loses the last seconds of it.  A process holds an exclusive ``flock`` on its own
files (a file is locked before it gets its name), so a starting receiver takes over
only the files of processes that are gone (lock free), and deletes them once their
records are in its own.  A process keeps two files, each of up to half its capacity
of records: when one is full it starts the next and deletes the one before, so it
remembers between half its capacity and all of it.
"""

from __future__ import annotations

import errno
import fcntl
import functools
import logging
import os
import re
import secrets
import stat
import struct
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass

from spanproof.verifier._files import make_directories, unlink_quietly, write_all

from . import _held_locks as held_locks

__all__ = ["MAGIC", "SEALED_SPANS_DIR", "SealedSpanLog"]

_logger = logging.getLogger(__name__)

#: The directory, in the journal directory, of the receivers' files.
SEALED_SPANS_DIR = "sealed-spans"
#: The first bytes of every file, naming its format.
MAGIC = b"spanproof sealed spans v1\n"
_RECORD = struct.Struct(">16s8s32s")
_NAME = re.compile(r"sealed-spans-([0-9a-f]{16})-([0-9]{1,9})\.bin\Z")
_TEMP = re.compile(r"\.sealed-spans-[0-9a-f]{16}-[0-9]{1,9}\.bin\.[0-9a-f]{8}\.new\Z")

#: Seconds after which a temporary file no process holds is a stopped one's.
_TEMP_AGE = 60.0
#: A span a receiver sealed: trace id and span id (hex), content fingerprint.
Span = tuple[str, str, bytes]


@dataclass
class _Orphan:
    path: str
    fd: int
    mtime: float
    instance: str
    number: int


class SealedSpanLog:
    """One receiver's record of the spans it sealed (see the module's text).

    Never raises for its files after :meth:`take_over`: a failure to remember is
    logged once, and a retry after a restart may then be certified again.
    """

    def __init__(self, directory: str, instance: str, capacity: int) -> None:
        self._dir = directory
        self._instance = instance
        self._per_file = max(1, capacity // 2)
        self._capacity = capacity
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._path: str | None = None
        self._older: tuple[int, str] | None = None
        self._number = 0
        self._count = 0
        self._failing = False

    # -- start -------------------------------------------------------------------

    def take_over(self) -> list[Span]:
        """The spans of the files no live process holds, oldest first (at most the
        capacity, the newest kept), which this log now holds: they are written to
        its own file and the files deleted.  When its own file cannot be made (a
        full disk), they are still returned, the files kept for the next start, and
        this log remembers nothing (logged).  Temporary files a stopped process
        left are deleted.

        Raises:
            OSError: the directory cannot be made or listed.
        """
        make_directories(self._dir)
        orphans = self._find_orphans()
        spans: list[Span] = []
        for orphan in orphans:
            spans = (spans + self._read(orphan))[-self._capacity:]
        try:
            self._open_next()
        except OSError as e:
            self._failed(e)
        else:
            self.append(spans)
        for orphan in orphans:
            if self._fd is not None:  # else kept for the next start
                try:
                    os.unlink(orphan.path)
                except OSError as e:
                    if e.errno != errno.ENOENT:
                        _logger.warning("receiver: cannot delete %s (%s)", orphan.path,
                                        e.strerror or e)
            held_locks.release(orphan.fd)
        return spans

    def _find_orphans(self) -> list[_Orphan]:
        """The files of this log's kind that no live process holds, each held locked
        now, oldest first; temporary files a stopped process left are deleted (one
        younger than a minute may be a starting process's, not yet locked)."""
        found: list[_Orphan] = []
        for name in sorted(os.listdir(self._dir)):
            path = os.path.join(self._dir, name)
            temp = _TEMP.match(name)
            match = _NAME.match(name)
            if not (temp or match):
                continue
            fd = held_locks.holding(functools.partial(_open_locked, path))
            if fd is None:
                continue  # a live process's, or not a regular file
            if temp:
                if time.time() - os.fstat(fd).st_mtime > _TEMP_AGE:
                    unlink_quietly(path)
                held_locks.release(fd)
                continue
            assert match is not None
            found.append(_Orphan(path, fd, os.fstat(fd).st_mtime, match[1], int(match[2])))
        found.sort(key=lambda o: (o.mtime, o.instance, o.number))
        return found

    def _read(self, orphan: _Orphan) -> list[Span]:
        try:
            with os.fdopen(os.dup(orphan.fd), "rb") as f:
                data = f.read((self._capacity + 1) * _RECORD.size + len(MAGIC) + 1)
        except OSError as e:
            _logger.warning("receiver: cannot read %s (%s); the spans it names are not "
                            "remembered", orphan.path, e.strerror or e)
            return []
        if not data.startswith(MAGIC):
            _logger.warning("receiver: %s is not a file of sealed spans this version "
                            "writes; its spans are not remembered", orphan.path)
            return []
        body = memoryview(data)[len(MAGIC):]
        whole = len(body) - len(body) % _RECORD.size  # a torn last record is dropped
        return [(trace.hex(), span.hex(), fingerprint)
                for trace, span, fingerprint in _RECORD.iter_unpack(body[:whole])]

    # -- writing -----------------------------------------------------------------

    def append(self, spans: Iterable[Span]) -> None:
        """Remember *spans* (sealed, or recovered and sealed)."""
        with self._lock:
            if self._fd is None:
                return
            packed = []
            for trace_id, span_id, fingerprint in spans:
                try:
                    packed.append(_RECORD.pack(bytes.fromhex(trace_id), bytes.fromhex(span_id),
                                               fingerprint))
                except (ValueError, struct.error):
                    continue  # not a trace id and span id a receiver accepts
            start = 0
            while start < len(packed):
                room = self._per_file - self._count
                if room <= 0:
                    if not self._rotate():
                        return
                    continue
                chunk = packed[start:start + room]
                try:
                    write_all(self._fd, b"".join(chunk))
                except OSError as e:
                    # A short write (a full disk) would misalign every later record:
                    # cut the file back to its last whole one.
                    try:
                        os.ftruncate(self._fd, len(MAGIC) + self._count * _RECORD.size)
                    except OSError:
                        self._count = self._per_file  # unusable: the next write starts a file
                    self._failed(e)
                    return
                self._failing = False
                self._count += len(chunk)
                start += len(chunk)

    def _rotate(self) -> bool:
        try:
            self._open_next()
        except OSError as e:
            self._failed(e)
            return False
        return True

    def _open_next(self) -> None:
        """Create and lock this log's next file, give it its name, and delete the
        one before the current one."""
        number = self._number + 1 if self._fd is not None else self._number
        name = f"sealed-spans-{self._instance}-{number}.bin"
        path = os.path.join(self._dir, name)
        temp = os.path.join(self._dir, f".{name}.{secrets.token_hex(4)}.new")

        def create() -> int:
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND
                         | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                write_all(fd, MAGIC)
                os.rename(temp, path)
            except BaseException:
                os.close(fd)
                unlink_quietly(temp)
                raise
            return fd

        fd = held_locks.holding(create)
        assert fd is not None
        if self._older is not None:
            older_fd, older_path = self._older
            unlink_quietly(older_path)
            held_locks.release(older_fd)
        if self._fd is not None and self._path is not None:
            self._older = (self._fd, self._path)
        self._fd, self._path, self._number, self._count = fd, path, number, 0

    def _failed(self, error: OSError) -> None:
        if not self._failing:
            _logger.error("receiver: cannot remember sealed spans in %s (%s); a Collector's "
                          "retry of them after a restart is certified again",
                          self._path, error.strerror or error)
        self._failing = True

    def close(self) -> None:
        """Release this log's files, keeping them for the next start."""
        with self._lock:
            for fd in (self._fd, self._older[0] if self._older else None):
                held_locks.release(fd)
            self._fd, self._older = None, None


def _open_locked(path: str) -> int | None:
    """*path* opened and locked without waiting, or None: held by a live process,
    gone, or not a regular file."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            return None
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


