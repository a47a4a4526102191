"""One process at a time: an exclusive lock on ``<file>.lock`` beside a file."""

from __future__ import annotations

import errno
import fcntl
import os

__all__ = ["Held", "NotLocked", "lock_beside"]


class Held(Exception):
    """Another process holds the lock; *lock* is the lock file's path."""

    def __init__(self, lock: str) -> None:
        super().__init__(f"{lock} is locked")
        self.lock = lock


class NotLocked(OSError):
    """The lock file opened, but could not be locked (``filename``: its path)."""


def lock_beside(path: str, *, resolve: bool = True) -> tuple[int, str]:
    """Lock ``<path>.lock`` (``flock``, exclusive, without waiting) beside the file
    *path* names, symbolic links followed (unless *resolve* is false: *path* is
    already where the lock goes): a link to the file had a lock of its own, and two
    processes held one file through two names.  The lock's descriptor (close it to
    release the lock) and the lock file's path.

    Raises:
        Held: another process holds the lock.
        NotLocked: the lock file opened but cannot be locked.
        OSError: the lock file cannot be opened (its ``filename`` is the lock
            file's path).
    """
    lock = (os.path.realpath(path) if resolve else path) + ".lock"
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as e:
        e.filename = lock
        raise
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        os.close(fd)
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise Held(lock) from None
        raise NotLocked(e.errno, e.strerror, lock) from None
    return fd, lock
