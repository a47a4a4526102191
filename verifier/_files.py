"""Atomic file writes shared by the command line, the witness tools and the producers,
and the one way files handed over by others are opened for reading."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import secrets
import stat
from collections.abc import Callable, Collection, Iterable, Iterator
from typing import BinaryIO

__all__ = [
    "MAX_NAMED_FILE", "fsync_directory", "link_no_replace", "locked_directory",
    "make_directories", "open_regular", "read_named_file", "remove_stopped_writes",
    "temp_target", "temporaries", "unlink_quietly", "walk_files", "write_atomic", "write_new",
    "write_once", "write_temp",
]

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
            write_all(fd, data)
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


def temporaries(directory: str, written_for: Callable[[str], bool]) -> list[str]:
    """The paths, sorted, of the temporary files of :func:`write_temp` in *directory*
    (regular files, not symbolic links) written for a name *written_for* accepts.
    Which of them a live writer may still be writing, the caller decides.

    Raises:
        OSError: *directory* cannot be listed.
    """
    with os.scandir(directory) as entries:
        return sorted(
            entry.path for entry in entries
            if entry.name.startswith(".") and entry.is_file(follow_symlinks=False)
            and (target := temp_target(entry.name)) is not None and written_for(target)
        )


def remove_stopped_writes(
    folder: str, names: Collection[str], warn: Callable[[str], None]
) -> None:
    """Remove the temporary files in *folder* of the files *names* that a writer
    stopped by a crash or a power cut left (a private key's holds the key, and
    nothing else would ever read or remove it), telling *warn* of each, and of each
    that cannot be removed.  Only for a caller holding :func:`locked_directory` on
    *folder*, under which every writer of *names* writes its temporary files: none
    of them is then a live writer's."""
    for leftover in temporaries(folder, names.__contains__):
        try:
            os.unlink(leftover)
        except FileNotFoundError:
            continue
        except OSError as e:
            warn(f"cannot remove {leftover}, left by a write that stopped "
                 f"({e.strerror or e})")
            continue
        warn(f"removed {leftover}, left by a write that stopped")


def write_all(fd: int, data: bytes) -> None:
    """Write all of *data* to *fd* (``os.write`` may write less than it is given).

    Raises:
        OSError: a write failed; part of *data* may have been written.
    """
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


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
    _place(path, data, mode, os.replace)


def write_new(path: str | os.PathLike[str], data: bytes, *, mode: int = 0o644) -> None:
    """Write *data* to *path*, a name not taken yet, so that readers see no file or the
    whole one; a file (or link) already at *path* is never replaced.

    A temporary file in the same directory is written with *mode* and fsynced, then
    linked as *path* (which fails when the name is taken) and removed, and the
    directory fsynced.  On a filesystem without hard links, *path* is claimed
    exclusively and the file moved over it (:func:`link_no_replace`).

    Raises:
        FileExistsError: *path* exists.
        OSError: the directory cannot be written, or the disk is full.
    """
    _place(path, data, mode, link_no_replace)


def write_once(path: str | os.PathLike[str], data: bytes, *, mode: int = 0o644) -> None:
    """:func:`write_new`, where a regular file already at *path* that holds exactly
    *data* counts as written: for files named for their content, saved again.

    Raises:
        FileExistsError: *path* exists and holds something else (or is no regular
            file, or cannot be read).
        OSError: the directory cannot be written, or the disk is full.
    """
    try:
        write_new(path, data, mode=mode)
    except FileExistsError:
        try:
            with open_regular(path) as f:
                if f.read(len(data) + 1) == data:
                    return
        except OSError:
            pass
        raise


def _place(path: str | os.PathLike[str], data: bytes, mode: int,
           put: Callable[[str, str], None]) -> None:
    """Write *data* to a temporary file beside *path* (with *mode*, fsynced), give it
    the name *path* with *put*, and fsync the directory; the temporary file never
    outlives the call."""
    target = os.path.abspath(os.fspath(path))
    directory = os.path.dirname(target)
    tmp = write_temp(directory, os.path.basename(target), data, mode=mode)
    try:
        put(tmp, target)
    finally:
        unlink_quietly(tmp)
    fsync_directory(directory)


def link_no_replace(src: str, dst: str) -> None:
    """Give *src*'s file the name *dst*, failing with FileExistsError if it exists.

    Without hard links (FAT, some FUSE and network filesystems), the name is claimed
    exclusively and the complete file moved over that (empty, our own) placeholder.

    Raises:
        FileExistsError: *dst* exists.
        OSError: the directory cannot be written.
    """
    try:
        os.link(src, dst)
    except FileExistsError:
        raise
    except OSError as e:
        if e.errno not in _NO_HARD_LINKS:
            raise
        os.close(os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644))
        os.replace(src, dst)


# What os.link() fails with where a filesystem has no hard links, or none more.
_NO_HARD_LINKS = frozenset({errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EXDEV,
                            errno.EMLINK})


def make_directories(path: str | os.PathLike[str], *, mode: int = 0o755) -> None:
    """Create the directory *path* with its missing parents, as
    ``os.makedirs(path, exist_ok=True)`` does, giving each directory this call
    creates *mode* whatever the umask; a directory that exists keeps its own mode.

    A producer's directories (output, journal, witness queue, default key
    directory) are made listable by anyone: under a umask such as 077, ``mkdir``
    alone makes them 0700, and ``spanproof verify`` run by any other account fails
    on each of them, as it must on a directory that may hide bundles.  The files in them keep
    their own modes (a journal file or a private key 0600).

    Raises:
        FileExistsError: *path*, or a parent, exists and is not a directory.
        OSError: a directory cannot be created or its mode set.
    """
    name = os.fspath(path)
    head, tail = os.path.split(name)
    if not tail:
        head, tail = os.path.split(head)
    if head and tail and not os.path.exists(head):
        with contextlib.suppress(FileExistsError):  # created meanwhile by another writer
            make_directories(head, mode=mode)
        if tail == os.curdir:
            return
    try:
        os.mkdir(name, mode)
    except OSError:
        if not os.path.isdir(name):
            raise
        return  # there already: not ours to change
    # Set before any directory is created in it: under a umask that takes the
    # owner's bits, mkdir's mode would keep even this process out.
    os.chmod(name, mode)


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


@contextlib.contextmanager
def locked_directory(directory: str) -> Iterator[bool]:
    """Hold an exclusive ``flock`` on *directory*: writers of a set of files that
    belong together (a key and the files beside it) take turns.  On a filesystem
    that locks no directories (some network filesystems) the body runs unlocked.
    Gives whether the lock is held: only then is a temporary file that these
    writers write under the lock, found by the body, one a stopped writer left.

    Raises:
        OSError: *directory* cannot be opened.
    """
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:
            locked = False  # no directory locks here
        else:
            locked = True
        yield locked
    finally:
        os.close(fd)  # releases the lock


_NOT_REGULAR = (
    (stat.S_ISFIFO, "a named pipe"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISDIR, "a directory"),
)


def _open_checked(
    path: str | os.PathLike[str], check: Callable[[int, str], None]
) -> tuple[BinaryIO, int]:
    """Open *path* for reading without waiting for a named pipe's writer; *check*
    (given its ``st_mode`` and name) raises to refuse it, unread.  Returns the file,
    blocking again, and its ``st_mode``."""
    # O_NONBLOCK: opening a named pipe for reading waits for a writer without it.
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as e:
        if e.errno == errno.ENXIO and _is_socket(path):  # "No such device or address"
            raise OSError(errno.ENXIO, "not a regular file (a socket)", os.fspath(path)) from None
        raise
    try:
        mode = os.fstat(fd).st_mode
        check(mode, os.fspath(path))
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb"), mode
    except BaseException:
        os.close(fd)
        raise


def _is_socket(path: str | os.PathLike[str]) -> bool:
    try:
        return stat.S_ISSOCK(os.stat(path).st_mode)
    except OSError:
        return False


def _only_regular(mode: int, name: str) -> None:
    if not stat.S_ISREG(mode):
        kind = next((what for test, what in _NOT_REGULAR if test(mode)), "a special file")
        raise OSError(errno.EINVAL, f"not a regular file ({kind})", name)


def _not_a_directory(mode: int, name: str) -> None:
    if stat.S_ISDIR(mode):
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), name)


def open_regular(path: str | os.PathLike[str]) -> BinaryIO:
    """Open *path* (a symbolic link is followed) for reading, when it is a regular file.

    Bundles, receipts and disclosure files come from someone else's directory, where
    a named pipe would block the reader forever and a device would feed it without
    end: anything but a regular file is refused without reading a byte.

    Raises:
        OSError: it cannot be opened, or it is not a regular file (``EINVAL``, its
            ``strerror`` saying what it is).
    """
    return _open_checked(path, _only_regular)[0]


#: The most :func:`read_named_file` reads: keys, trust roots and state files are small.
MAX_NAMED_FILE = 1 << 20


def read_named_file(
    path: str | os.PathLike[str], *, limit: int = MAX_NAMED_FILE
) -> tuple[bytes, int]:
    """Read a file the user named (a key, a trust root, a state file) whole; return
    its bytes and its ``st_mode``.

    A regular file, or a pipe such as ``--key <(...)``, read until its writer closes
    it.  A named pipe that no process holds open for writing reads as empty instead
    of blocking the command forever, and a device is read no further than *limit*.

    Raises:
        OSError: it cannot be opened or read, or it holds more than *limit* bytes
            (``EFBIG``).
    """
    # Blocking again once open, a read waits for a pipe's writer to write, and sees
    # the end of input at once when there is no writer.
    f, mode = _open_checked(path, _not_a_directory)
    with f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise OSError(errno.EFBIG, f"larger than {limit} bytes", os.fspath(path))
    return data, mode


def walk_files(
    top: str, wanted: Callable[[str], bool], onerror: Callable[[OSError], None]
) -> Iterator[str]:
    """Yield every file below directory *top* whose name is *wanted*, in sorted
    order within each directory, subdirectories in sorted order.

    Symbolic links to directories are followed, as links to files are: what is
    below them is below *top* too.  Each directory (by its device and inode) is
    searched once, under the first way to it, so a link back up ends there and a second
    link to one directory lists it once.  A link to a directory that holds *top*
    (``/``, or any other above it) is not followed: it would search everything
    around *top*, the whole disk for ``/``; it goes to *onerror* as ``ELOOP``.  A
    directory that cannot be listed goes to *onerror* (which may raise), never
    skipped silently.  Directories are walked without recursion, so no depth of
    them exhausts Python's stack (``os.walk`` recursed once per level before 3.12).
    """
    searched: set[tuple[int, int]] = set()  # each directory's device and inode
    itself = os.path.realpath(top)
    # Where *top* is, and each directory on the path it was given by, where it is:
    # a directory that holds any of them holds *top* (given as a symbolic link too).
    given = os.path.abspath(top)
    held = {itself, *(os.path.realpath(d) for d in _ancestors(given))}
    todo = [top]  # directories still to search, the next one last
    while todo:
        root = todo.pop()
        try:
            found = os.stat(root)
            if (found.st_dev, found.st_ino) in searched:
                continue  # a loop of links, or a second way to one directory
            searched.add((found.st_dev, found.st_ino))
            with os.scandir(root) as listing:
                # Only what is wanted or a directory is kept to be sorted: a
                # directory of a million other names took 266 MB as sorted entries.
                entries = sorted(_wanted_or_directories(listing, wanted),
                                 key=lambda found: found[0].name)
        except OSError as error:
            onerror(error)
            continue
        dirs: list[str] = []
        files: list[str] = []
        for entry, is_dir in entries:
            if not is_dir:
                files.append(entry.name)
            elif not entry.is_symlink():
                dirs.append(entry.name)
            else:
                target = os.path.realpath(entry.path)
                if target != itself and any(os.path.commonpath([target, h]) == target
                                            for h in held):
                    onerror(OSError(errno.ELOOP, f"a symbolic link to {target}, which holds "
                                    f"{top}: not followed", entry.path))
                else:
                    dirs.append(entry.name)
        yield from (os.path.join(root, f) for f in files)
        # Which of two ways to one directory is searched: the first, in sorted order.
        todo.extend(os.path.join(root, d) for d in reversed(dirs))


def _wanted_or_directories(
    listing: Iterable[os.DirEntry[str]], wanted: Callable[[str], bool]
) -> Iterator[tuple[os.DirEntry[str], bool]]:
    """The entries of *listing* that are directories (through a symbolic link too) or
    files whose name is *wanted*, each with whether it is a directory."""
    for entry in listing:
        try:
            is_dir = entry.is_dir()  # through a symbolic link too
        except OSError:
            is_dir = False  # as os.walk: then it is read as a file, and fails so
        if is_dir or wanted(entry.name):
            yield entry, is_dir


def _ancestors(path: str) -> Iterator[str]:
    """The directories above absolute *path*, nearest first, up to the root."""
    parent = os.path.dirname(path)
    while parent != path:
        yield parent
        path, parent = parent, os.path.dirname(parent)
