"""Standard output of the ``spanproof`` command line, and its failure.

A command's results go to standard output.  When that cannot be written (a full
disk, a quota, ``> /dev/full``), the ``OSError`` that ``print`` raises names no file,
so the command could only report "unexpected OSError"; and output still buffered
when the command returns failed as the interpreter exited, where Python reports an
ignored exception and exits 120.  :func:`writing_stdout` runs a command with
``sys.stdout`` wrapped so that such a failure raises :class:`StdoutError`, and
flushes it before the command's status is returned.

Two more cases the command line meets in scripts and on servers: standard output
closed (``spanproof verify ... >&-``, where ``sys.stdout`` is ``None``) is the null
device, so the command runs and its exit status still says what it found (every
command failed "unexpected AttributeError"); and a terminal whose encoding is not
UTF-8 (a Latin-1 locale) gets what it cannot show as backslash escapes, where
``show``'s tree lines stopped the command with a ``UnicodeEncodeError``.
"""

from __future__ import annotations

import codecs
import os
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any, TextIO, cast

__all__ = ["StdoutError", "writing_stdout"]


class StdoutError(Exception):
    """Standard output could not be written; the message is the system's reason."""

    def __init__(self, error: OSError) -> None:
        super().__init__(error.strerror or str(error))
        self.error = error


class _Guarded:
    """A text stream that raises :class:`StdoutError` where *stream* fails to write.

    A closed pipe (``BrokenPipeError``) is left as it is: the reader went away,
    which the command line treats as the end of the output, not an error.
    """

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            raise
        except OSError as e:
            raise StdoutError(e) from e

    def writelines(self, lines: Iterable[str]) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            raise
        except OSError as e:
            raise StdoutError(e) from e

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


@contextmanager
def writing_stdout() -> Iterator[None]:
    """Run the body with writes to ``sys.stdout`` that fail raising
    :class:`StdoutError`, and flush it at the end (so buffered output fails here too).

    After such a failure the stream's file descriptor, if it has one, is pointed at
    the null device, so that the output still buffered is dropped when the
    interpreter flushes it at exit instead of failing a second time.

    Raises:
        StdoutError: standard output could not be written.
        BrokenPipeError: its reader went away (the output still buffered is dropped
            as for a failure).
    """
    stream = sys.stdout
    null = None
    if stream is None:  # closed: the results are dropped, the exit status is not
        stream = null = open(os.devnull, "w", encoding="utf-8")
    else:
        _escape_what_cannot_be_shown(stream)
    guarded = cast(TextIO, _Guarded(stream))
    sys.stdout = guarded
    try:
        yield
        guarded.flush()
    except (StdoutError, BrokenPipeError):
        _drop_buffered(stream)
        raise
    finally:
        if sys.stdout is guarded:
            sys.stdout = None if null is not None else stream
        if null is not None:
            null.close()


def _escape_what_cannot_be_shown(stream: TextIO) -> None:
    """Have *stream* write a character its encoding cannot hold as a backslash escape
    (Python's own choice for standard error) instead of failing."""
    encoding = getattr(stream, "encoding", None)
    try:
        utf8 = encoding is not None and codecs.lookup(encoding).name == "utf-8"
    except LookupError:
        utf8 = False
    reconfigure = getattr(stream, "reconfigure", None)
    if not utf8 and reconfigure is not None:
        try:
            reconfigure(errors="backslashreplace")
        except (OSError, ValueError):  # a stream that cannot change: left as it is
            pass


def _drop_buffered(stream: TextIO) -> None:
    """Point *stream*'s file descriptor at the null device, as Python's documentation
    advises for a closed pipe; a stream without one is left alone."""
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation, closed
        return
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, fd)
    finally:
        os.close(null)
