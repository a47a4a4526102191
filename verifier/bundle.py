"""Bundle files (SPEC §7): one signed chain segment of one trace, framed by lines.

A bundle is a single JSON object whose bytes are its RFC 8785 form with a line
feed inserted after ``"records":[``, after each record's separating comma, and
after the last record; it ends with ``]}`` and a line feed::

    {"envelope":{...},"mediaType":"application/vnd.spanproof.bundle.v1+json","records":[
    {...record 0...},
    {...record 1...}
    ]}

Any JSON tool can read it whole; the verifier streams it a line at a time, so
each record's own bytes can be checked for canonical form.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Sequence
from typing import IO, Any

import orjson

from .canonical import canonical_members, canonicalize, loads_canonical
from .dsse import MAX_SIGNATURES, Envelope
from .errors import InvalidBundle
from .records import CER_COMMITTED_MEDIA_TYPE, CER_MEDIA_TYPE, validate_record

__all__ = [
    "BUNDLE_MEDIA_TYPE",
    "BUNDLE_SUFFIX",
    "LARGE_RECORD_BYTES",
    "MAX_LINE_BYTES",
    "MAX_RECORD_BYTES",
    "BundleReader",
    "encode_bundle",
    "iter_bundle_chunks",
]

BUNDLE_MEDIA_TYPE = "application/vnd.spanproof.bundle.v1+json"
BUNDLE_SUFFIX = ".spanproof.json"
_RECORDS_OPEN = b',"records":[\n'
_CLOSE = b"]}\n"
#: The longest line a bundle may hold, its line feed included (SPEC §7.1): a longer
#: one is refused rather than read into memory.
MAX_LINE_BYTES = 64 * 1024 * 1024
#: The longest record a bundle can hold: its line adds a comma and a line feed.
MAX_RECORD_BYTES = MAX_LINE_BYTES - 2
#: A record longer than this is parsed only once it and the lines after it are known
#: to chain, by their bytes alone, to the signed head (SPEC §8 steps 6-7): a line of
#: tiny JSON values takes up to ~30 times its size parsed, so a forged 64 MiB line
#: would cost a verifier ~2 GB before any hash could refuse it.  A producer's records
#: stay under it unless it is configured for larger ones (1 MiB by default).
LARGE_RECORD_BYTES = 1024 * 1024
# A canonical record's first bytes, up to its `prev` digest's: its members are
# sorted, `mediaType` (one of two values) first and `prev` second (SPEC §2.1, §3).
_RECORD_STARTS = tuple(
    b'{"mediaType":"' + media_type.encode() + b'","prev":"'
    for media_type in (CER_MEDIA_TYPE, CER_COMMITTED_MEDIA_TYPE)
)


#: The most JSON values a DSSE envelope can hold and be valid (SPEC §5.1): itself, its
#: payload, payload type and array of signatures, and three for each signature.
_ENVELOPE_VALUES = 4 + 3 * MAX_SIGNATURES
# A large header's other members (but receipts) are parsed, to be quoted in a
# message, when they hold at most this many JSON values.
_SHOWN_VALUES = 64


def _large_header(document: bytes) -> dict[str, Any]:
    """The bundle header *document*, over `LARGE_RECORD_BYTES`, checked canonical as a
    whole without building its values, then its members but ``receipts`` parsed.

    ``receipts`` may hold any JSON value and is covered by no signature (SPEC §7.2),
    so a header of tiny JSON values, which would take ~30 times its size parsed, is
    refused or accepted for a few times its member names.  The envelope is parsed
    only if it holds no more values than a valid one can.
    """
    header: dict[str, Any] = {}
    for name, start, end, values in canonical_members(document, "bundle header"):
        if name == "receipts":
            continue  # checked canonical; it influences nothing (SPEC §7.2)
        if name == "envelope" and values > _ENVELOPE_VALUES:
            # Refused at step 2, after step 1's checks of the other members.
            header[name] = _Unparsed(
                f"envelope: {values} JSON values, more than a DSSE envelope of at most "
                f"{MAX_SIGNATURES} signatures holds ({_ENVELOPE_VALUES})")
        elif name == "envelope" or values <= _SHOWN_VALUES:
            header[name] = orjson.loads(document[start:end])
        else:  # a media type too large to quote, or a member refused by its name
            header[name] = _Unparsed(f"a JSON value of {values} values")
    return header


class _Unparsed:
    """A member of a large bundle header that was not parsed, and why."""

    def __init__(self, why: str) -> None:
        self.why = why

    def __repr__(self) -> str:  # as an unknown media type's message quotes it
        return f"<{self.why}>"


def _header_bytes(envelope: Envelope) -> bytes:
    header = canonicalize({"envelope": envelope.to_json(), "mediaType": BUNDLE_MEDIA_TYPE})
    return header[:-1] + _RECORDS_OPEN


def iter_bundle_chunks(envelope: Envelope, records: Iterable[bytes]) -> Iterator[bytes]:
    """Yield the SPEC §7 bytes of a bundle piece by piece (for streaming writers).

    *records* are the records' canonical bytes, in chain order.
    """
    yield _header_bytes(envelope)
    previous: bytes | None = None
    for record in records:
        if previous is not None:
            yield previous + b",\n"
        previous = record
    if previous is not None:
        yield previous + b"\n"
    yield _CLOSE


def encode_bundle(envelope: Envelope, records: Sequence[bytes]) -> bytes:
    """Return the SPEC §7 bytes of a bundle."""
    return b"".join(iter_bundle_chunks(envelope, records))


class BundleReader:
    """Read a bundle from a binary stream, strictly, one line at a time.

    Call :meth:`read_header` once, then iterate :meth:`records`.
    :attr:`record_offset` is where the line of the record last yielded starts, counted
    from the stream's position when the reader was made: with it a record can be read
    again later instead of kept.
    """

    def __init__(self, stream: IO[bytes]) -> None:
        self._stream = stream
        self._line_no = 0
        self._offset = 0
        self.record_offset = 0

    def _readline(self) -> bytes:
        line = self._stream.readline(MAX_LINE_BYTES + 1)
        self._line_no += 1
        self._offset += len(line)
        if len(line) > MAX_LINE_BYTES:
            raise InvalidBundle(f"line {self._line_no}: longer than {MAX_LINE_BYTES} bytes")
        return line

    def read_header(self) -> tuple[Envelope, dict[str, Any]]:
        """Parse line 1 (SPEC §8 step 1-2): canonical header, media type, envelope.

        Raises:
            InvalidBundle: empty file, bad framing, unknown media type, bad envelope.
        """
        line = self._readline()
        if not line:
            raise InvalidBundle("empty file")
        if not line.endswith(_RECORDS_OPEN):
            raise InvalidBundle(
                "line 1: bundle header must end with '\"records\":[' and a line feed "
                "(not a spanproof v1 bundle, or truncated)"
            )
        document = line[: -len(_RECORDS_OPEN)] + b"}"
        if len(document) > LARGE_RECORD_BYTES:
            header = _large_header(document)
        else:
            header = loads_canonical(document, "bundle header")
        if not isinstance(header, dict):
            raise InvalidBundle("bundle header: must be an object")
        media_type = header.get("mediaType")
        if media_type != BUNDLE_MEDIA_TYPE:
            raise InvalidBundle(
                f"bundle header: unknown mediaType {media_type!r} "
                f"(this verifier knows {BUNDLE_MEDIA_TYPE!r})"
            )
        extra = set(header) - {"envelope", "mediaType", "receipts"}
        if extra:
            raise InvalidBundle(f"bundle header: unknown fields {sorted(extra)}")
        if "envelope" not in header:
            raise InvalidBundle("bundle header: missing envelope")
        if isinstance(header["envelope"], _Unparsed):
            raise InvalidBundle(header["envelope"].why)
        return Envelope.from_json(header["envelope"]), header

    def parsed_records(self) -> Iterator[dict[str, Any]]:
        """Yield each record parsed strictly and checked for form (canonical bytes,
        a well-formed record), without the signature and chain checks of SPEC §8:
        for reading a bundle, not for trusting it.

        Raises:
            InvalidBundle: bad framing, or a record not canonical or malformed.
        """
        for position, raw in self.records():
            record = loads_canonical(raw, f"record {position}")
            validate_record(record, f"record {position}")
            yield record

    def unchained(self, record: bytes, count: int, record_count: int, head: str) -> str | None:
        """Why *record*, the record line last read, the *count*-th of its segment,
        and the record lines after it do not chain to the signed *head* of
        *record_count* records by their bytes alone, or None when they do; none of
        them is parsed (SPEC §8 steps 6-7), and the stream is read ahead and then
        put back where it was.

        Each line after *record* must begin as a canonical record does, with
        ``mediaType`` and then ``prev``, whose digest is the hash of the line before
        it; the last must hash to *head*.  Framing is left to :meth:`records`.

        Raises:
            OSError: the stream cannot be read or seek back (see ``seekable()``).
        """
        back = self._stream.tell()
        try:
            digest = hashlib.sha256(record).hexdigest().encode()
            position = count - 1
            while True:
                if count > record_count:
                    return f"the signed statement covers {record_count} records"
                line = self._stream.readline(MAX_LINE_BYTES + 1)
                if line == _CLOSE or not line.endswith(b"\n") or len(line) > MAX_LINE_BYTES:
                    break
                position += 1
                if not any(line.startswith(start + b"sha256:" + digest + b'"')
                           for start in _RECORD_STARTS):
                    return (f"record {position} does not begin with the hash of the "
                            "line before it as its prev")
                body = line[:-2] if line.endswith(b",\n") else line[:-1]
                digest = hashlib.sha256(body).hexdigest().encode()
                count += 1
            if count < record_count:
                return (f"the lines end after record {position}, of the {record_count} "
                        "records the signed statement covers")
            if b"sha256:" + digest != head.encode():
                return f"the hash of record {position} is not the signed head"
            return None
        finally:
            self._stream.seek(back)

    def records(self) -> Iterator[tuple[int, bytes]]:
        """Yield ``(position, canonical bytes)`` for each record line, checking framing.

        The bytes are not yet parsed; the caller parses and checks them.

        Raises:
            InvalidBundle: bad framing, truncation, or trailing data.
        """
        position = 0
        expect_more = False
        while True:
            start = self._offset
            line = self._readline()
            if not line:
                raise InvalidBundle(
                    f"truncated: file ends after {position} record(s) without the closing ']}}'"
                )
            if line == _CLOSE:
                if expect_more:
                    raise InvalidBundle(f"line {self._line_no}: ']}}' follows a trailing comma")
                if self._stream.read(1):
                    raise InvalidBundle(f"line {self._line_no + 1}: data after the closing ']}}'")
                return
            # A missing line end means the file was cut here (even if what is left
            # looks like the closing ']}'), so say so before judging the framing.
            if not line.endswith(b"\n"):
                raise InvalidBundle(
                    f"truncated: record {position} (line {self._line_no}) has no line end"
                )
            if position and not expect_more:
                raise InvalidBundle(
                    f"line {self._line_no}: record {position} follows a record with no comma"
                )
            if line.endswith(b",\n"):
                body, expect_more = line[:-2], True
            else:
                body, expect_more = line[:-1], False
            self.record_offset = start
            yield position, body
            position += 1
