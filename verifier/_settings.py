"""How every spanproof component reads a setting's value: numbers written in ASCII
digits, and lists that are lists.

Private, shared by the producer's configuration (``spanproof.exporter.config``), the
command lines and the verifier's key loaders.
"""

from __future__ import annotations

import re

__all__ = ["parse_decimal", "parse_seconds", "refuse_string"]

# [0-9], not \d: \d also matches the digits of every other script.
_DECIMAL = re.compile(r"[0-9]+")
_DECIMAL_FRACTION = re.compile(r"[0-9]+(?:\.[0-9]*)?|\.[0-9]+")


def parse_decimal(text: str) -> int:
    """The whole number >= 0 that *text* spells in the ASCII digits ``0``-``9``.

    ``int()`` also takes a sign, ``_`` between digits, white space around them and
    the digits of any script (``int("٣")`` is 3), so a typo or pasted text would pass
    as a number no one meant.

    Raises:
        ValueError: anything else, or more digits than ``int()`` converts.
    """
    if not _DECIMAL.fullmatch(text):
        raise ValueError(f"not a whole number in the digits 0-9: {text!r}")
    return int(text)


def parse_seconds(text: str) -> float:
    """The number >= 0 that *text* spells in ASCII digits with an optional decimal
    point (``2``, ``0.5``, ``.5``): not ``1e3``, ``inf``, ``nan``, ``1_0`` or other
    scripts' digits, which ``float()`` takes.

    Raises:
        ValueError: anything else.
    """
    if not _DECIMAL_FRACTION.fullmatch(text):
        raise ValueError(f"not a number in the digits 0-9: {text!r}")
    return float(text)


def refuse_string(value: object, setting: str, argument: str, items: str) -> None:
    """Refuse a ``str`` (or ``bytes``) given where a list of strings is expected:
    iterated, it would be read one character at a time (``"llm.call"`` as the keys
    ``l``, ``l``, ``m``, ...).

    Args:
        value: what was given.
        setting: the setting's name as an error message gives it.
        argument: the argument's name, for the example of how to write it.
        items: what the list holds (``"attribute keys"``).

    Raises:
        TypeError: *value* is a ``str``, ``bytes`` or ``bytearray``; the message shows
            the list it was probably meant to be.
    """
    if not isinstance(value, (str, bytes, bytearray)):
        return
    text = value if isinstance(value, str) else bytes(value).decode("utf-8", "replace")
    meant = [part.strip() for part in text.split(",") if part.strip()]
    raise TypeError(
        f"{setting} must be a list of {items}, not a {type(value).__name__} (which would "
        f"be read one character at a time): write {argument}={meant!r}"
    )
