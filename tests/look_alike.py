"""What a reader sees of rendered text: two texts with the same :func:`reads_as` look
the same on a screen.  Kept apart from the verifier's own rule, which it checks."""

from __future__ import annotations

import unicodedata

# Unicode DerivedCoreProperties.txt, Default_Ignorable_Code_Point: rendered as nothing.
IGNORABLE_RANGES = (
    (0x00AD, 0x00AD), (0x034F, 0x034F), (0x061C, 0x061C), (0x115F, 0x1160),
    (0x17B4, 0x17B5), (0x180B, 0x180F), (0x200B, 0x200F), (0x202A, 0x202E),
    (0x2060, 0x206F), (0x3164, 0x3164), (0xFE00, 0xFE0F), (0xFEFF, 0xFEFF),
    (0xFFA0, 0xFFA0), (0xFFF0, 0xFFF8), (0x1BCA0, 0x1BCA3), (0x1D173, 0x1D17A),
    (0xE0000, 0xE0FFF),
)


def is_default_ignorable(ch: str) -> bool:
    """Whether *ch* renders as nothing (Default_Ignorable_Code_Point)."""
    code = ord(ch)
    return any(low <= code <= high for low, high in IGNORABLE_RANGES)


def reads_as(text: str) -> str:
    """*text* as a reader sees it: without what renders as nothing, in NFC (``café``
    whether its ``é`` is one character or an ``e`` and a combining accent)."""
    return unicodedata.normalize(
        "NFC", "".join(ch for ch in text if not is_default_ignorable(ch)))
