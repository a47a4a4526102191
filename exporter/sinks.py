"""Where sealed bundles go: the :class:`BundleSink` protocol and a directory sink.

:class:`DirectorySink` writes each bundle atomically and durably: a temporary file
in the same directory, written and made durable, then linked to its final name
(which fails rather than replace an existing file), then the directory is fsynced.
A reader never sees a partial bundle, and once :meth:`DirectorySink.write` returns
the bundle survives a crash.

:meth:`DirectorySink.write_many` writes a group of bundles with one durability
barrier for all of them (group commit): every temporary file is written, then one
``syncfs(2)`` makes them all durable (Linux 5.8 and newer, where ``syncfs`` reports
writeback errors; elsewhere, or with ``sync="file"``, each file is fsynced), then
they are linked into place and the directory is fsynced once.  On a disk where a
flush costs a few hundred microseconds, that turns two flushes per bundle into two
per group.

A bundle with committed attributes (SPEC §2.5) carries their disclosures; the
directory sink writes them to ``<name>.disclosures.json`` beside
``<name>.spanproof.json``, mode 0600, fsynced before the bundle is published and
linked into place right after it, never over another file.
"""

from __future__ import annotations

import ctypes
import dataclasses
import errno
import filecmp
import logging
import os
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Literal, Protocol, get_args, runtime_checkable

from spanproof.verifier._files import (
    fsync_directory,
    link_no_replace,
    make_directories,
    unlink_quietly,
    write_temp,
)
from spanproof.verifier.bundle import BUNDLE_SUFFIX
from spanproof.verifier.disclosure import MAX_DISCLOSURE_FILE_BYTES

from .sealing import SealedBundle

__all__ = ["BundleSink", "DirectorySink", "SyncMode", "syncfs_available", "write_together"]

#: How :meth:`DirectorySink.write_many` makes a group's files durable: ``"auto"``
#: (``"filesystem"`` where ``syncfs`` reports errors, else ``"file"``), ``"filesystem"``
#: (one ``syncfs`` per group; raises ``ValueError`` where unavailable) or ``"file"``
#: (one fsync per file).
SyncMode = Literal["auto", "filesystem", "file"]

_logger = logging.getLogger(__name__)

# Alternative names tried when a bundle's name is taken (see DirectorySink.write).
_MAX_ALTERNATIVES = 1000


@runtime_checkable
class BundleSink(Protocol):
    """Stores sealed bundles durably.  Called from one sealing thread at a time."""

    def write(self, bundle: SealedBundle) -> str:
        """Store *bundle* (and its ``disclosures``, which are not in its bytes);
        return where it went.  Raises ``OSError`` on failure."""
        ...


class DirectorySink:
    """Writes bundles as files in one directory, never overwriting a file.

    File names come from :attr:`SealedBundle.file_name`: the trace id, segment
    index and producer instance, all validated hex, so no span value can steer a
    path.  Safe to call from several threads.  :meth:`write` is :meth:`write_many`
    of one bundle, so a subclass that changes how bundles are written overrides
    :meth:`write_many`.

    *sync* chooses how a group's files are made durable (see :data:`SyncMode`).
    ``syncfs`` flushes everything dirty on the output directory's filesystem, so a
    process writing much else to the same filesystem makes each group wait for that
    too; ``"file"`` avoids it at the cost of one flush per bundle.
    """

    def __init__(self, directory: str | os.PathLike[str], *, sync: SyncMode = "auto") -> None:
        if sync not in get_args(SyncMode):
            raise ValueError(f"sync must be one of {', '.join(get_args(SyncMode))}, "
                             f"not {sync!r}")
        if sync == "filesystem" and _SYNCFS is None:
            raise ValueError("sync='filesystem' needs syncfs(2) that reports errors "
                             "(Linux 5.8 or newer)")
        self._dir = os.fspath(directory)
        self._syncfs = _SYNCFS if sync != "file" else None

    @property
    def sync(self) -> str:
        """``"filesystem"`` or ``"file"``: how this sink makes a group durable."""
        return "file" if self._syncfs is None else "filesystem"

    @property
    def directory(self) -> str:
        """The directory bundles are written to."""
        return self._dir

    def write(self, bundle: SealedBundle) -> str:
        """Write *bundle* atomically under its file name and return the path.

        Writing a bundle again that is already stored byte for byte (a retry after
        a failed directory fsync) returns the existing path.  Should the name hold
        another bundle (a producer instance only reuses a name when it restarted a
        trace's chain because the earlier bundle under that name could not be
        continued, e.g. it was not signed by the current key, or was moved away), the
        bundle is stored as ``<trace>-<segment>-<instance>.<n>.spanproof.json`` with a
        warning; the existing file is never touched.  For a bundle with disclosures,
        a name whose ``<name>.disclosures.json`` is there is taken too (the earlier
        bundle archived or shipped, its salts kept): a disclosure file is never
        written over.

        Raises:
            OSError: the directory cannot be created or written, or the disk is full.
        """
        (outcome,) = self.write_many([bundle])
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    def write_many(self, bundles: Sequence[SealedBundle]) -> list[str | OSError]:
        """Write *bundles* as :meth:`write` does, with one durability barrier and one
        directory fsync for the group; return each bundle's path, or the ``OSError``
        that kept it from being written (the others are still written).  Once this
        returns, every bundle given a path survives a crash."""
        try:
            make_directories(self._dir)
        except OSError as e:
            return [e] * len(bundles)
        group_sync = self._syncfs is not None and len(bundles) > 1
        outcomes: dict[int, str | OSError] = {}
        staged: list[tuple[int, _Staged]] = []
        try:
            for i, bundle in enumerate(bundles):
                try:
                    staged.append((i, self._stage(bundle, fsync=not group_sync)))
                except OSError as e:
                    outcomes[i] = e
            if group_sync and staged:
                try:
                    self._sync_filesystem()
                except OSError as e:
                    outcomes.update((i, e) for i, _ in staged)
            for i, item in staged:
                if i not in outcomes:
                    try:
                        outcomes[i] = self._publish_staged(item)
                    except OSError as e:
                        outcomes[i] = e
            published = [i for i, outcome in outcomes.items() if isinstance(outcome, str)]
            if published:
                try:
                    self._fsync_dir()
                except OSError as e:
                    outcomes.update((i, e) for i in published)
            return [outcomes[i] for i in range(len(bundles))]
        finally:
            for _, item in staged:  # linked temporaries, and what was not published
                unlink_quietly(item.temp)
                if item.secret is not None:
                    unlink_quietly(item.secret)

    def _stage(self, bundle: SealedBundle, *, fsync: bool) -> _Staged:
        """Write *bundle* (and its disclosures first) to temporary files."""
        name = bundle.file_name
        secret = None
        if bundle.disclosures:
            data = bundle.disclosures_data()
            if len(data) > MAX_DISCLOSURE_FILE_BYTES:
                _logger.error(
                    "%s: its disclosure file takes %d bytes, over the %d a verifier reads; "
                    "'spanproof disclose' still extracts a reviewer's share of it. Commit "
                    "fewer or smaller values, or seal fewer records per bundle "
                    "(MAX_RECORDS)", name, len(data), MAX_DISCLOSURE_FILE_BYTES)
            secret = self._write_temp(name, data, 0o600, fsync=fsync)
        try:
            temp = self._write_temp(name, bundle.data, 0o644, fsync=fsync)
        except BaseException:
            if secret is not None:
                unlink_quietly(secret)
            raise
        return _Staged(name, temp, secret)

    def _publish_staged(self, item: _Staged) -> str:
        """Link a durable temporary file into place (and name its disclosures,
        never over another file: a disclosure file left there holds the only copy
        of another bundle's salts)."""
        path = self._publish(item.temp, item.name, disclosures=item.secret is not None)
        if item.secret is not None:
            secret, item.secret = item.secret, None  # from now on, never deleted
            target = os.path.join(self._dir, _disclosures_name(os.path.basename(path)))
            try:
                link_no_replace(secret, target)
            except FileExistsError as e:
                if _holds_the_same(target, secret):
                    # This very bundle written again (a retry), or another producer
                    # starting in this directory gave them their name in the moment
                    # since the link (finish_interrupted_writes).
                    unlink_quietly(secret)
                    return path
                self._keep_disclosures(path, target, secret, e)
                return path
            except OSError as e:
                if isinstance(e, FileNotFoundError) and os.path.exists(target):
                    # Another producer starting in this directory named them and
                    # removed the temporary name since the link.
                    return path
                self._keep_disclosures(path, target, secret, e)
                return path
            unlink_quietly(secret)  # linked: the temporary name goes
        return path

    @staticmethod
    def _keep_disclosures(path: str, target: str, secret: str, error: OSError) -> None:
        # The bundle is already published: keep the values where they are rather
        # than lose them (raising would make the caller write the bundle a second
        # time).
        _logger.error("spanproof: cannot name the disclosures of %s %s (%s); "
                      "they are kept in %s", path, target, error, secret)

    def _sync_filesystem(self) -> None:
        assert self._syncfs is not None
        _syncfs_directory(self._syncfs, self._dir)

    def _write_temp(self, name: str, data: bytes, mode: int, *, fsync: bool = True) -> str:
        """A temporary file in the directory holding *data*, with *mode* (fsynced
        unless *fsync* is false: the caller then makes it durable)."""
        return write_temp(self._dir, name, data, mode=mode, fsync=fsync)

    def _publish(self, tmp: str, name: str, *, disclosures: bool = False) -> str:
        for attempt, candidate in enumerate(bundle_names(name)):
            path = os.path.join(self._dir, candidate)
            if disclosures and os.path.lexists(
                    os.path.join(self._dir, _disclosures_name(candidate))):
                # The name's disclosure file is there (its bundle archived or shipped
                # elsewhere, the salts kept): the name is taken.
                if _holds_the_same(path, tmp):
                    return path  # this very bundle, written again
                continue
            try:
                link_no_replace(tmp, path)
            except FileExistsError:
                if filecmp.cmp(tmp, path, shallow=False):
                    # This very bundle is already there: a retry of a write whose
                    # directory fsync failed.  A second copy under another name
                    # would be a second bundle for one segment.
                    return path
                continue
            if attempt:
                _logger.warning(
                    "bundle file %s (or its disclosure file) already exists; wrote this "
                    "bundle as %s (the trace's chain restarted: its earlier bundle could "
                    "not be continued, or was moved away)",
                    name, candidate,
                )
            return path
        raise FileExistsError(errno.EEXIST, "no free file name for bundle", name)

    def _fsync_dir(self) -> None:
        fsync_directory(self._dir)

    def __repr__(self) -> str:
        return f"DirectorySink({self._dir!r})"


@dataclasses.dataclass
class _Staged:
    """A bundle written to a temporary file, not yet published."""

    name: str
    temp: str
    secret: str | None  # its disclosures' temporary file, until renamed


def _load_syncfs() -> Callable[[int], None] | None:
    """``syncfs(2)`` where it reports writeback errors (Linux 5.8+), else None."""
    if not sys.platform.startswith("linux"):
        return None
    match = re.match(r"(\d+)\.(\d+)", os.uname().release)
    if match is None or (int(match[1]), int(match[2])) < (5, 8):
        return None
    try:
        function = ctypes.CDLL(None, use_errno=True).syncfs
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int]
    function.restype = ctypes.c_int

    def syncfs(fd: int) -> None:
        if function(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))

    return syncfs


_SYNCFS = _load_syncfs()


def _syncfs_directory(syncfs: Callable[[int], None], directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        syncfs(fd)
    finally:
        os.close(fd)


def sync_filesystem(directory: str) -> bool:
    """Make everything written on *directory*'s filesystem durable with one
    ``syncfs(2)``.  Returns False, having done nothing, where ``syncfs`` is not
    available (see :func:`syncfs_available`): the caller fsyncs each file instead.

    Raises:
        OSError: the filesystem reported a writeback error.
    """
    if _SYNCFS is None:
        return False
    _syncfs_directory(_SYNCFS, directory)
    return True


def syncfs_available() -> bool:
    """True when ``DirectorySink(sync="auto")`` makes groups durable with ``syncfs``."""
    return _SYNCFS is not None


def write_together(files: Sequence[tuple[str, bytes]]) -> list[OSError | None]:
    """Write each ``(path, data)`` atomically, all made durable together as
    :class:`DirectorySink` does its groups: each under a temporary name beside its
    path (fsynced itself unless ``syncfs`` serves a group of several), one
    ``syncfs`` per directory, then renamed over its path, and each directory
    fsynced once.  Returns, per file, None once it is in place and durable, or the
    error that kept it from being so (a failing ``syncfs`` or directory fsync fails
    every file it covers)."""
    errors: list[OSError | None] = [None] * len(files)
    grouped = len(files) > 1 and syncfs_available()
    staged: list[tuple[int, str, str]] = []  # position, path, temporary file
    for i, (path, data) in enumerate(files):
        directory, name = os.path.split(path)
        try:
            staged.append((i, path, write_temp(directory or ".", name, data,
                                               fsync=not grouped)))
        except OSError as e:
            errors[i] = e
    if grouped:
        try:
            for directory in sorted({os.path.dirname(path) or "." for _, path, _ in staged}):
                sync_filesystem(directory)
        except OSError as e:
            for i, _, tmp in staged:
                unlink_quietly(tmp)
                errors[i] = e
            return errors
    placed: dict[str, list[int]] = {}  # directory -> positions renamed into it
    for i, path, tmp in staged:
        try:
            os.replace(tmp, path)
        except OSError as e:
            unlink_quietly(tmp)
            errors[i] = e
            continue
        placed.setdefault(os.path.dirname(path) or ".", []).append(i)
    for directory, positions in sorted(placed.items()):
        try:
            fsync_directory(directory)
        except OSError as e:
            for i in positions:
                errors[i] = e
    return errors


def _disclosures_name(bundle_name: str) -> str:
    return SealedBundle.disclosures_file_name(bundle_name)


def _holds_the_same(path: str, other: str) -> bool:
    """Whether the regular file at *path* holds the bytes of the file at *other*."""
    try:
        return os.path.isfile(path) and filecmp.cmp(path, other, shallow=False)
    except OSError:
        return False


def bundle_names(name: str) -> Iterator[str]:
    """The names :class:`DirectorySink` gives the bundle named *name*, in the order it
    tries them: *name*, then ``<stem>.1.spanproof.json``, ``<stem>.2...`` (see
    :meth:`DirectorySink.write`)."""
    yield name
    stem = name.removesuffix(BUNDLE_SUFFIX)
    for attempt in range(1, _MAX_ALTERNATIVES):
        yield f"{stem}.{attempt}{BUNDLE_SUFFIX}"
