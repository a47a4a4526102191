"""The records of an open bundle file, kept as where they are instead of as values.

``spanproof show`` prints a bundle's spans as a tree, whose order is not the chain's:
it cannot print each record as it is read.  Kept parsed, the records of a bundle take
several times its size; :class:`StoredRecords` keeps of each one where its line
starts, its length and its SHA-256, and what laying out the tree needs
(:class:`~spanproof.verifier.tree.SpanLinks`): a few dozen bytes a record, whatever
it holds.  The tree's lines then read each record again, one at a time, and check
that its bytes are still those first read.
"""

from __future__ import annotations

import hashlib
from array import array
from collections.abc import Iterator, Mapping
from typing import IO, Any

import orjson

from .errors import InvalidBundle
from .tree import Paint, SpanLinks, iter_tree_rows, tree_lines

__all__ = ["StoredRecords"]

_DIGEST_BYTES = 32


class StoredRecords:
    """The records of the bundle open as *stream*, noted one at a time by :meth:`add`
    and read back by :meth:`get`.

    Offsets are counted from the stream's position when this is made (that of the
    :class:`~spanproof.verifier.bundle.BundleReader` reading it).  The stream must
    stay open, and is not moved while records are being noted.
    """

    def __init__(self, stream: IO[bytes]) -> None:
        self._stream = stream
        self._base = stream.tell()
        self._offsets = array("Q")
        self._sizes = array("Q")
        self._digests = bytearray()
        self.links = SpanLinks()

    def add(self, record: Mapping[str, Any], raw: bytes, offset: int) -> None:
        """Note the next record: its parsed value (accepted by ``validate_record``),
        its canonical bytes, and where its line starts."""
        self._offsets.append(offset)
        self._sizes.append(len(raw))
        self._digests += hashlib.sha256(raw).digest()
        self.links.add(record["span"])

    def __len__(self) -> int:
        return len(self._offsets)

    @property
    def sizes(self) -> array[int]:
        """The length of each record's canonical bytes, in chain order."""
        return self._sizes

    def get(self, index: int) -> dict[str, Any]:
        """The record noted *index*-th, read again.

        Raises:
            InvalidBundle: its bytes are no longer those first read (the file was
                changed meanwhile).
            OSError: it cannot be read.
        """
        self._stream.seek(self._base + self._offsets[index])
        raw = self._stream.read(self._sizes[index])
        start = index * _DIGEST_BYTES
        if hashlib.sha256(raw).digest() != self._digests[start:start + _DIGEST_BYTES]:
            raise InvalidBundle(f"record {index}: the file changed while it was being read")
        # The same bytes passed loads_canonical and validate_record when first read.
        record: dict[str, Any] = orjson.loads(raw)
        return record

    def tree_lines(self, paint: Paint, count: int | None = None) -> Iterator[str]:
        """The lines of ``render_tree`` for the first *count* records (all by default),
        reading each record again as its turn comes.

        Raises:
            InvalidBundle, OSError: as :meth:`get`, while the lines are iterated.
        """
        rows = iter_tree_rows(self.links, count)
        return tree_lines(rows, lambda i: self.get(i)["span"], paint)
