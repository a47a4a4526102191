"""Terminal styling for the ``spanproof`` command line: colour and a progress bar.

Colour is used only when the output stream is a terminal, unless the environment
says otherwise: ``NO_COLOR`` (any non-empty value, https://no-color.org) turns it
off and wins; ``FORCE_COLOR`` (non-empty, not ``0``) turns it on even when piped.
``TERM=dumb`` counts as no colour.  The progress bar is drawn on standard error,
only when that is a terminal; it never touches standard output, so pipelines that
parse ``spanproof verify`` lines see exactly the same bytes.

Text from a bundle, and file names, are passed through :func:`printable` before they
are styled or printed, so the only escape sequences written are the ones added here:
a bundle or a file name handed over by someone else cannot move the cursor, erase a
``FAIL`` or retitle the terminal.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TextIO

from ._visible import escape_char, visible

__all__ = ["PROGRESS_THRESHOLD", "Progress", "Style", "colour_enabled", "printable"]

#: ``spanproof verify`` shows a progress bar when checking more bundles than this.
PROGRESS_THRESHOLD = 20


def printable(text: str) -> str:
    """*text* with every character a reader cannot see for what it is (controls,
    escape, line and paragraph separators, characters that render as nothing, and
    the combining marks of text not in NFC: :func:`~spanproof.verifier._visible.visible`)
    written as its escape, and each undecodable file name byte (``os.fsdecode``'s
    U+DC80-U+DCFF) as the byte's (``\\xff``)."""
    return visible(text, _escape)


def _escape(ch: str) -> str:
    if "\udc80" <= ch <= "\udcff":
        return f"\\x{ord(ch) - 0xDC00:02x}"
    return escape_char(ch)


_RESET = "\x1b[0m"
_CODES = {
    "name": "\x1b[1m",  # bold
    "ok": "\x1b[32m",  # green
    "error": "\x1b[31m",  # red
    "note": "\x1b[33m",  # yellow
    "dim": "\x1b[2m",
    "OK": "\x1b[1;32m",
    "FAIL": "\x1b[1;31m",
    "INCOMPLETE": "\x1b[1;33m",
    "UNVERIFIED": "\x1b[1;33m",
    "PASS": "\x1b[32m",
    "SKIPPED": "\x1b[2m",
}


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a closed or unusual stream
        return False


def colour_enabled(stream: TextIO, environ: Mapping[str, str] | None = None) -> bool:
    """Whether text written to *stream* should be coloured (see the module notes)."""
    env = os.environ if environ is None else environ
    if env.get("NO_COLOR", ""):
        return False
    force = env.get("FORCE_COLOR", "")
    if force and force != "0":
        return True
    if env.get("TERM", "") == "dumb":
        return False
    return _isatty(stream)


class Style:
    """Paints text for a terminal, or leaves it unchanged when colour is off."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled

    @classmethod
    def for_stream(cls, stream: TextIO, environ: Mapping[str, str] | None = None) -> Style:
        """The style for output written to *stream*."""
        return cls(colour_enabled(stream, environ))

    def paint(self, role: str, text: str) -> str:
        """*text* in the colour of *role* (``"ok"``, ``"error"``, ``"FAIL"``, ...);
        unchanged when colour is off, the role is unknown, or *text* is empty."""
        code = _CODES.get(role)
        if not self.enabled or code is None or not text:
            return text
        return f"{code}{text}{_RESET}"


class Progress:
    """A one-line progress bar on a terminal stream (``[#####.....] 12/40 bundles``).

    Disabled (every method does nothing) unless *enabled*, *stream* is a terminal
    and *total* exceeds *threshold*.  :meth:`close` erases the line, so what is
    printed afterwards starts on a clean line.
    """

    def __init__(
        self,
        total: int,
        stream: TextIO,
        *,
        enabled: bool = True,
        threshold: int = PROGRESS_THRESHOLD,
        label: str = "bundles",
        width: int = 30,
    ) -> None:
        self.total = total
        self.stream = stream
        self.active = enabled and total > threshold and _isatty(stream)
        self.done = 0
        self._label = label
        self._width = width
        self._drawn = -1

    def advance(self, n: int = 1) -> None:
        """Count *n* more items done and redraw when the bar visibly moved."""
        self.done = min(self.total, self.done + n)
        if not self.active:
            return
        filled = self.done * self._width // self.total
        percent = self.done * 100 // self.total
        if percent == self._drawn and self.done != self.total:
            return
        self._drawn = percent
        bar = "#" * filled + "." * (self._width - filled)
        self.stream.write(f"\r[{bar}] {self.done}/{self.total} {self._label} checked")
        self.stream.flush()

    def close(self) -> None:
        """Erase the bar (nothing happens when it was never shown)."""
        if self.active and self._drawn >= 0:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
        self.active = False

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
