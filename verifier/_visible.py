"""What a reader sees of text someone else wrote: the one rule for which characters
are shown as their escape, shared by ``verify``, ``show`` and the HTML report.

A character is written as its escape (``\\x1b``, ``\\u034f``) when it is not
printable (controls, line and paragraph separators, format characters), when it is a
Unicode Default_Ignorable_Code_Point (it renders as nothing: U+034F COMBINING
GRAPHEME JOINER, variation selectors, Hangul fillers) or U+2800 BRAILLE PATTERN BLANK
(drawn as a blank cell), when it is a combining mark
with no letter, number or mark before it (at the start of the text it would sit on
whatever is printed before; after a quote or ``=`` it hides in them), and, in a text
that is not in Unicode Normalization Form C, when it takes part in what NFC would
change (a combining mark, or a character NFC replaces or composes with the one
before), so that ``cafe\\u0301`` and ``café`` read differently while NFC text in any
script is shown as it is.  Pure ASCII text takes a fast path.

:func:`key_text` and :func:`name_text` quote an attribute key or a span or event name
when it would otherwise read as another, or as part of the line around it.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Iterator

__all__ = ["escape_char", "is_plain", "key_text", "name_text", "quoted", "visible"]

# Unicode DerivedCoreProperties.txt, Default_Ignorable_Code_Point (Unicode 15.1), and
# U+2800 BRAILLE PATTERN BLANK: printable, not white space, drawn as a blank cell
# ("customer.email" followed by it read as customer.email).
_IGNORABLE = re.compile(
    "[\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180b-\u180f\u200b-\u200f\u2800"
    "\u202a-\u202e\u2060-\u206f\u3164\ufe00-\ufe0f\ufeff\uffa0\ufff0-\ufff8"
    "\U0001bca0-\U0001bca3\U0001d173-\U0001d17a\U000e0000-\U000e0fff]"
)


def escape_char(ch: str) -> str:
    """*ch* as Python writes it in a string literal (``\\x1b``, ``\\u200b``), or as
    ``\\uXXXX`` (``\\UXXXXXXXX`` past U+FFFF) when Python writes it as itself."""
    text = repr(ch)[1:-1]
    if text != ch:
        return text
    code = ord(ch)
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


def is_plain(text: str) -> bool:
    """Whether :func:`visible` leaves *text* as it is: it is printable, and, unless it
    is ASCII, holds no default-ignorable character and no combining mark without a
    letter, number or mark before it, and is in NFC."""
    if text.isascii():
        return text.isprintable()
    return (text.isprintable() and _IGNORABLE.search(text) is None
            and unicodedata.is_normalized("NFC", text)
            and next(_bare_marks(text), None) is None)


# What may be a mark with no letter or number before it: a character from U+0300 on
# (none before is a mark) that is no letter or number, at the start or after another
# such character (\w less "_" is every letter and number).  In words, marks follow
# letters: few match.
_UNSUPPORTED = re.compile(r"(?<=[\W_])[^\w\x00-\u02ff]|^[^\w\x00-\u02ff]")


def _is_mark(ch: str) -> bool:
    return unicodedata.category(ch)[0] == "M"


def _bare_marks(text: str) -> Iterator[int]:
    """Where *text* has a combining mark with no letter, number or mark before it."""
    for found in _UNSUPPORTED.finditer(text):
        at = found.start()
        if _is_mark(found.group()) and (at == 0 or not _is_mark(text[at - 1])):
            yield at


def visible(text: str, escape: Callable[[str], str] = escape_char) -> str:
    """*text* with every character a reader could not tell apart from another text
    (see the module notes) written as *escape* of it."""
    if is_plain(text):
        return text
    nfc = text.isascii() or unicodedata.is_normalized("NFC", text)
    bare = set() if text.isascii() else set(_bare_marks(text))
    out: list[str] = []
    before, hidden = "", False
    for at, ch in enumerate(text):
        # A mark after an escaped character would sit on the escape: escaped too.
        hidden = (not ch.isprintable() or _IGNORABLE.match(ch) is not None or at in bare
                  or (hidden and _is_mark(ch)) or (not nfc and _unsettled(before, ch)))
        out.append(escape(ch) if hidden else ch)
        before = ch
    return "".join(out)


def _unsettled(before: str, ch: str) -> bool:
    """Whether NFC would move, replace or compose *ch* (after *before*)."""
    return (unicodedata.combining(ch) != 0
            or unicodedata.normalize("NFC", ch) != ch
            or unicodedata.normalize("NFC", before + ch) != before + ch)


def quoted(text: str) -> str:
    """*text* between ``"``, its backslashes and quotes escaped (not sanitized)."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


# What makes a key or a name read as part of the line around it.
_KEY_SEPARATORS = re.compile(r'[\s=":]')
_NAME_SEPARATORS = re.compile(r'^\s|\s$|\s\s|["\[\]=:]')


def key_text(key: str) -> str:
    """An attribute key as it is, or :func:`quoted` when it is empty, holds white
    space, ``=``, ``"``, ``:`` or a character :func:`visible` escapes: so that
    ``amount=5 decision`` and ``customer.email\\u034f`` read as one key, and as no
    other.  Not sanitized."""
    if key and is_plain(key) and _KEY_SEPARATORS.search(key) is None:
        return key
    return quoted(key)


def name_text(name: str) -> str:
    """A span or event name as it is, or :func:`quoted` when it is empty, starts or
    ends with white space, holds a run of white space, ``"``, ``[``, ``]``, ``=``,
    ``:`` or a character :func:`visible` escapes: a name cannot bring its own
    ``[INTERNAL, OK, 1.000 ms]`` or attributes.  Not sanitized."""
    if name and is_plain(name) and _NAME_SEPARATORS.search(name) is None:
        return name
    return quoted(name)
