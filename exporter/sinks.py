"""Where sealed bundles go: the :class:`BundleSink` protocol and a directory sink.

:class:`DirectorySink` writes each bundle atomically and durably: a temporary file
in the same directory, written and fsynced, then linked to its final name (which
fails rather than replace an existing file), then the directory is fsynced.  A
reader never sees a partial bundle, and once :meth:`DirectorySink.write` returns the
bundle survives a crash.

A bundle with committed attributes (SPEC §2.5) carries their disclosures; the
directory sink writes them to ``<name>.disclosures.json`` beside
``<name>.spanproof.json``, mode 0600, fsynced before the bundle is published and
renamed into place right after it.
"""

from __future__ import annotations

import errno
import logging
import os
import secrets
from typing import Protocol, runtime_checkable

from spanproof.verifier.bundle import BUNDLE_SUFFIX

from .sealing import SealedBundle

__all__ = ["BundleSink", "DirectorySink"]

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
    path.
    """

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self._dir = os.fspath(directory)

    @property
    def directory(self) -> str:
        """The directory bundles are written to."""
        return self._dir

    def write(self, bundle: SealedBundle) -> str:
        """Write *bundle* atomically under its file name and return the path.

        Should the name already exist (a producer instance only reuses a name after
        it forgot a sealed trace and restarted its chain), the bundle is stored as
        ``<trace>-<segment>-<instance>.<n>.spanproof.json`` with a warning; the
        existing file is never touched.

        Raises:
            OSError: the directory cannot be created or written, or the disk is full.
        """
        os.makedirs(self._dir, exist_ok=True)
        name = bundle.file_name
        # Disclosures first: once the bundle is visible its values must not be lost.
        secret = None
        if bundle.disclosures:
            secret = self._write_temp(name, bundle.disclosures_data(), 0o600)
        try:
            tmp = self._write_temp(name, bundle.data, 0o644)
            try:
                path = self._publish(tmp, name)
            finally:
                _unlink_quietly(tmp)
        except BaseException:
            if secret is not None:
                _unlink_quietly(secret)
            raise
        if secret is not None:
            target = os.path.join(
                self._dir, SealedBundle.disclosures_file_name(os.path.basename(path))
            )
            try:
                os.replace(secret, target)
            except OSError as e:
                # The bundle is already published: keep the values where they are
                # rather than lose them (raising would make the caller write the
                # bundle a second time).
                _logger.error("spanproof: cannot name the disclosures of %s %s (%s); "
                              "they are kept in %s", path, target, e, secret)
        self._fsync_dir()
        return path

    def _write_temp(self, name: str, data: bytes, mode: int) -> str:
        """A fsynced temporary file in the directory holding *data*, with *mode*."""
        tmp = os.path.join(self._dir, f".{name}.{secrets.token_hex(4)}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
        try:
            try:
                if mode == 0o600:
                    os.fchmod(fd, 0o600)
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            finally:
                os.close(fd)
        except BaseException:
            _unlink_quietly(tmp)
            raise
        return tmp

    def _publish(self, tmp: str, name: str) -> str:
        stem = name.removesuffix(BUNDLE_SUFFIX)
        for attempt in range(_MAX_ALTERNATIVES):
            candidate = name if attempt == 0 else f"{stem}.{attempt}{BUNDLE_SUFFIX}"
            path = os.path.join(self._dir, candidate)
            try:
                _link_no_replace(tmp, path)
            except FileExistsError:
                continue
            if attempt:
                _logger.warning(
                    "bundle file %s already exists; wrote this bundle as %s "
                    "(a late span of a trace no longer remembered restarted its chain)",
                    name, candidate,
                )
            return path
        raise FileExistsError(errno.EEXIST, "no free file name for bundle", name)

    def _fsync_dir(self) -> None:
        fd = os.open(self._dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def __repr__(self) -> str:
        return f"DirectorySink({self._dir!r})"


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _link_no_replace(src: str, dst: str) -> None:
    """Give *src*'s file the name *dst*, failing with FileExistsError if it exists."""
    try:
        os.link(src, dst)
    except FileExistsError:
        raise
    except OSError as e:
        if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
            raise
        # No hard links on this filesystem: claim the name exclusively, then move
        # the complete file over the (empty, ours) placeholder.
        os.close(os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644))
        os.replace(src, dst)
