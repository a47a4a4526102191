"""Atomic file writes shared by the command line, the witness tools and the producers."""

from __future__ import annotations

import os
import re
import secrets

__all__ = ["fsync_directory", "temp_target", "unlink_quietly", "write_atomic", "write_temp"]

_TEMP_NAME = re.compile(r"\.(.+)\.[0-9a-f]{8}\.tmp", re.DOTALL)  # see write_temp


def write_temp(
    directory: str, name: str, data: bytes, *, mode: int = 0o644, fsync: bool = True
) -> str:
    """Write *data* to a new, uniquely named temporary file ``.<name>.<hex>.tmp`` in
    *directory*, with *mode* (whatever the umask), and return its path.  It is
    fsynced unless *fsync* is false (the caller then makes it durable); it never
    outlives a failure.

    Raises:
        OSError: the directory cannot be written, or the disk is full.
    """
    tmp = os.path.join(directory, f".{name}.{secrets.token_hex(4)}.tmp")  # _TEMP_NAME
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        try:
            os.fchmod(fd, mode)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            if fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
    except BaseException:
        unlink_quietly(tmp)
        raise
    return tmp


def temp_target(file_name: str) -> str | None:
    """The name a temporary file of :func:`write_temp` was written for, from the
    temporary file's own name; None for any other name."""
    match = _TEMP_NAME.fullmatch(file_name)
    return None if match is None else match[1]


def unlink_quietly(path: str) -> None:
    """Remove *path* if it can be removed (cleanup: an error here must not hide the
    one being handled)."""
    try:
        os.unlink(path)
    except OSError:
        pass


def write_atomic(path: str | os.PathLike[str], data: bytes, *, mode: int = 0o644) -> None:
    """Write *data* to *path* so that readers see the old file or the whole new one.

    A uniquely named temporary file in the same directory is written with *mode*
    (whatever the umask), fsynced, renamed over *path*, and the directory fsynced;
    the temporary file never outlives a failure.

    Raises:
        OSError: the directory cannot be written, or the disk is full.
    """
    target = os.path.abspath(os.fspath(path))
    directory = os.path.dirname(target)
    tmp = write_temp(directory, os.path.basename(target), data, mode=mode)
    try:
        os.replace(tmp, target)
    finally:
        unlink_quietly(tmp)
    fsync_directory(directory)


def fsync_directory(directory: str) -> None:
    """Make the names in *directory* durable (files created, renamed or removed).

    Raises:
        OSError: the directory cannot be opened, or the filesystem reported an error.
    """
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
