"""Selective disclosure (SPEC §2.5): committed attribute values and their disclosures.

A producer may replace a span attribute's typed value with a **committed value**: a
salted, domain-separated SHA-256 over the attribute's binding (trace id, span id,
key) and its canonical typed value.  The value and the 16-byte salt go to a
**disclosure file** the operator keeps; the bundle verifies without it.  Handing a
reviewer a disclosure opens exactly that one commitment:

    digest = SHA-256("spanproof.commitment.v1" || 0x00 || salt ||
                     JCS({"key": K, "spanId": S, "traceId": T, "value": V}))

Pure functions over values and bytes, except :func:`load_disclosures` and
:func:`write_private_file`, which the command line uses.  :func:`check_disclosures`
never raises for bad evidence: it returns one :class:`DisclosureResult` per
disclosure (PASS with the value, or FAIL with a specific reason);
:func:`verify_disclosures` runs the same code and raises the first failure.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ._files import open_regular, write_atomic
from ._visible import key_text, visible
from .bundle import BUNDLE_SUFFIX
from .canonical import canonicalize, parse_strict
from .errors import DisclosureError, InvalidBundle, InvalidDisclosure
from .records import CER_COMMITTED_MEDIA_TYPE, is_span_id, is_trace_id
from .values import (
    COMMITTED_VALUE,
    decode_double,
    decode_value,
    encode_double,
    is_committed_value,
    validate_value,
)
from .verify import BundleReport, Status, Verdict

__all__ = [
    "COMMITMENT_PREFIX",
    "DISCLOSURES_MEDIA_TYPE",
    "DISCLOSURES_SUFFIX",
    "MAX_DISCLOSURE_FILE_BYTES",
    "MAX_PRODUCER_DISCLOSURE_FILE_BYTES",
    "SALT_BYTES",
    "SALT_PREFIX",
    "AttributeMatcher",
    "CommittedAttribute",
    "Disclosure",
    "DisclosureFile",
    "DisclosureNeeds",
    "DisclosureResult",
    "Opening",
    "check_disclosure",
    "check_disclosures",
    "check_disclosures_in_records",
    "commit_value",
    "commitment_digest",
    "commitment_input",
    "committed_attributes",
    "disclosure_view",
    "disclosures_path",
    "format_disclosure_result",
    "format_value",
    "load_disclosures",
    "salt_digest",
    "verify_disclosures",
    "write_private_file",
]

#: Domain-separation prefix of the commitment input (SPEC §2.5.2): 23 ASCII bytes and 0x00.
COMMITMENT_PREFIX = b"spanproof.commitment.v1\x00"
#: Domain-separation prefix of the salt digest (SPEC §2.5.2): 28 ASCII bytes and 0x00.
SALT_PREFIX = b"spanproof.commitment-salt.v1\x00"
#: Salt length in bytes: 128 random bits, fresh for every committed value.
SALT_BYTES = 16
DISCLOSURES_MEDIA_TYPE = "application/vnd.spanproof.disclosures.v1+json"
#: ``<name>.spanproof.json`` keeps its disclosures in ``<name>.disclosures.json`` (SPEC §2.5.4).
DISCLOSURES_SUFFIX = ".disclosures.json"
#: The longest disclosure file a verifier reads (SPEC §2.5.4): 64 MiB, as a bundle line.
MAX_DISCLOSURE_FILE_BYTES = 64 * 1024 * 1024
#: The longest producer's disclosure file ``spanproof disclose`` reads.  The exporter
#: writes one per bundle whatever its size (a control character takes six bytes of
#: JSON, so values under ``MAX_VALUE_BYTES`` can add up past 64 MiB); what
#: ``disclose`` writes for a reviewer must still be at most 64 MiB.
MAX_PRODUCER_DISCLOSURE_FILE_BYTES = 1024 * 1024 * 1024

_SALT_HEX = re.compile(r"[0-9a-f]{32}\Z")
_ENTRY_KEYS = frozenset({"traceId", "spanId", "key", "salt", "value"})
_FILE_KEYS = frozenset({"mediaType", "disclosures"})
_MAX_SHOWN = 200


#: How much of a message from a lower layer (a parse error, a malformed value) is
#: echoed: it may quote a file's text, of any length.
_MAX_MESSAGE = 1000
#: How many unknown member names an error lists.
_NAMES_SHOWN = 10


def _shown(text: str, limit: int = _MAX_SHOWN) -> str:
    """*text* as echoed in an error: at most *limit* characters, then how many were cut
    (a disclosure file is anyone's, and so is every name and value in it)."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text) - limit} more characters)"


def _names_shown(names: list[str]) -> str:
    """Member names for an error: the first few, each cut, then how many more."""
    shown = ", ".join(_shown(name) for name in names[:_NAMES_SHOWN])
    more = len(names) - _NAMES_SHOWN
    return shown + (f" and {more} more" if more > 0 else "")


# ----------------------------------------------------------------------- matching


@dataclass(frozen=True)
class AttributeMatcher:
    """Attribute keys selected by exact names and glob patterns (``customer.*``).

    In a pattern ``*`` matches any run of characters (dots included) and ``?``
    exactly one; every other character, ``[`` included, matches only itself.  A
    pattern without ``*`` or ``?`` is an exact name.  *names* are exact names
    whatever characters they hold: the way to select the key ``pin?`` and not
    ``pin2``.  Matching is case-sensitive, as attribute keys are, and takes time
    linear in the key's length (times the pattern's), whatever the key.

    Raises:
        ValueError: a pattern or name is not a non-empty string.
    """

    patterns: tuple[str, ...]
    names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for what, given in (("patterns", self.patterns), ("names", self.names)):
            if not isinstance(given, tuple) or not all(isinstance(p, str) and p for p in given):
                raise ValueError(f"attribute {what} must be non-empty strings, got {given!r}")
        exact = frozenset(p for p in self.patterns if "*" not in p and "?" not in p)
        exact |= frozenset(self.names)
        # "customer.*", the usual pattern, is one str.startswith, in C.
        heads = frozenset(p for p in self.patterns
                          if p.endswith("*") and "*" not in p[:-1] and "?" not in p)
        prefixes = tuple(p[:-1] for p in heads)
        globs = tuple(_Glob(p) for p in self.patterns
                      if ("*" in p or "?" in p) and p not in heads)
        object.__setattr__(self, "_exact", exact)
        object.__setattr__(self, "_prefixes", prefixes)
        object.__setattr__(self, "_globs", globs)

    @classmethod
    def parse(cls, text: str) -> AttributeMatcher:
        """A matcher from a comma-separated list (the environment variable's form)."""
        return cls(tuple(p.strip() for p in text.split(",") if p.strip()))

    def matches(self, key: str) -> bool:
        """True when *key* equals a name or matches a pattern."""
        if key in self._exact:  # type: ignore[attr-defined]
            return True
        prefixes: tuple[str, ...] = self._prefixes  # type: ignore[attr-defined]
        if prefixes and key.startswith(prefixes):
            return True
        globs: tuple[_Glob, ...] = self._globs  # type: ignore[attr-defined]
        for glob in globs:
            if glob.matches(key):
                return True
        return False

    def __bool__(self) -> bool:
        return bool(self.patterns or self.names)


class _Glob:
    """One pattern, matched in time linear in the key's length.

    A regular expression with ``.*`` for each ``*`` backtracks polynomially on a
    key that repeats the text between the stars. Instead the pattern is split on
    ``*`` into segments of fixed length (``?`` is one character): the first must
    start the key, the last must end it, and each one between is placed at its
    leftmost occurrence after the one before. Leftmost placement leaves the most
    room for the rest, so this finds a match whenever one exists; each segment's
    search moves forward only, so the cost is the key's length times the
    pattern's.
    """

    __slots__ = ("_head", "_middle", "_tail")

    def __init__(self, pattern: str) -> None:
        head, *middle = pattern.split("*")
        tail = middle.pop() if middle else None  # None: no ``*``, the head is the key
        self._head = _Segment(head)
        self._tail = None if tail is None else _Segment(tail)
        self._middle = tuple(_Segment(s) for s in middle if s)

    def matches(self, key: str) -> bool:
        head, tail = self._head, self._tail
        if tail is None:
            return len(key) == head.length and head.at(key, 0)
        pos, end = head.length, len(key) - tail.length
        if end < pos or not head.at(key, 0) or not tail.at(key, end):
            return False
        for segment in self._middle:
            found = segment.find(key, pos, end)
            if found < 0:
                return False
            pos = found + segment.length
        return True


class _Segment:
    """Text between stars: ``?`` is any one character, the rest is literal."""

    __slots__ = ("_literal", "_regex", "length")

    def __init__(self, text: str) -> None:
        self.length = len(text)
        self._literal = None if "?" in text else text
        # No quantifier: a fixed-length match, tried at each start without backtracking.
        self._regex = re.compile(
            "".join("." if ch == "?" else re.escape(ch) for ch in text), re.DOTALL)

    def at(self, key: str, pos: int) -> bool:
        """True when the segment occurs in *key* at *pos*."""
        if self._literal is not None:
            return key.startswith(self._literal, pos)
        return self._regex.match(key, pos) is not None

    def find(self, key: str, start: int, end: int) -> int:
        """Where the segment first occurs within ``key[start:end]``, or -1."""
        if self._literal is not None:
            return key.find(self._literal, start, end)
        found = self._regex.search(key, start, end)
        return -1 if found is None else found.start()


# --------------------------------------------------------------------- commitment


def commitment_input(
    trace_id: str, span_id: str, key: str, value: Mapping[str, Any], salt: bytes
) -> bytes:
    """The exact bytes hashed by a commitment (SPEC §2.5.2).

    ``COMMITMENT_PREFIX || salt || JCS({"key", "spanId", "traceId", "value"})``.

    Raises:
        ValueError: *salt* is not 16 bytes.
        CanonicalizationError: *value* has no canonical JSON form (a lone surrogate).
    """
    if len(salt) != SALT_BYTES:
        raise ValueError(f"salt must be {SALT_BYTES} bytes, got {len(salt)}")
    binding = {"key": key, "spanId": span_id, "traceId": trace_id, "value": value}
    return COMMITMENT_PREFIX + bytes(salt) + canonicalize(binding)


def commitment_digest(
    trace_id: str, span_id: str, key: str, value: Mapping[str, Any], salt: bytes
) -> str:
    """The commitment's ``digest``: lowercase hex SHA-256 of :func:`commitment_input`."""
    return hashlib.sha256(commitment_input(trace_id, span_id, key, value, salt)).hexdigest()


def salt_digest(salt: bytes) -> str:
    """The commitment's ``saltDigest``: lowercase hex SHA-256 of ``SALT_PREFIX || salt``."""
    return hashlib.sha256(SALT_PREFIX + bytes(salt)).hexdigest()


def commit_value(
    trace_id: str, span_id: str, key: str, value: Mapping[str, Any], salt: bytes
) -> dict[str, Any]:
    """The committed value that replaces *value* in a record (SPEC §2.5.1)."""
    return {
        COMMITTED_VALUE: {
            "digest": commitment_digest(trace_id, span_id, key, value, salt),
            "saltDigest": salt_digest(salt),
        }
    }


# ---------------------------------------------------------------------- documents


@dataclass(frozen=True)
class Disclosure:
    """The opening of one commitment: which attribute, its salt and its typed value."""

    trace_id: str
    span_id: str
    key: str
    salt: bytes
    value: Mapping[str, Any]

    @property
    def digest(self) -> str:
        """The commitment digest this disclosure opens (SPEC §2.5.2)."""
        return commitment_digest(self.trace_id, self.span_id, self.key, self.value, self.salt)

    @property
    def salt_digest(self) -> str:
        """The salt digest of this disclosure's salt (SPEC §2.5.2)."""
        return salt_digest(self.salt)

    def to_json(self) -> dict[str, Any]:
        """The disclosure-file entry (SPEC §2.5.4)."""
        return {
            "key": self.key,
            "salt": self.salt.hex(),
            "spanId": self.span_id,
            "traceId": self.trace_id,
            "value": self.value,
        }

    @classmethod
    def from_json(cls, entry: Any, where: str = "disclosure") -> Disclosure:
        """Parse one disclosure-file entry strictly (SPEC §2.5.4).

        Raises:
            InvalidDisclosure: naming the member and the defect.
        """
        if not isinstance(entry, dict):
            raise InvalidDisclosure(f"{where}: must be an object")
        if entry.keys() != _ENTRY_KEYS:
            missing = sorted(_ENTRY_KEYS - entry.keys())
            extra = sorted(entry.keys() - _ENTRY_KEYS)
            raise InvalidDisclosure(
                f"{where}: "
                + "; ".join(
                    part for part in (
                        "missing " + ", ".join(missing) if missing else "",
                        "unknown " + _names_shown(extra) if extra else "",
                    ) if part
                )
            )
        if not is_trace_id(entry["traceId"]):
            raise InvalidDisclosure(f"{where}.traceId: must be 32 lowercase hex digits")
        if not is_span_id(entry["spanId"]):
            raise InvalidDisclosure(f"{where}.spanId: must be 16 lowercase hex digits")
        if not isinstance(entry["key"], str):
            raise InvalidDisclosure(f"{where}.key: must be a string")
        salt = entry["salt"]
        if not isinstance(salt, str) or _SALT_HEX.match(salt) is None:
            raise InvalidDisclosure(
                f"{where}.salt: must be {2 * SALT_BYTES} lowercase hex digits "
                f"({SALT_BYTES} bytes)"
            )
        try:
            validate_value(entry["value"], f"{where}.value")
        except InvalidBundle as e:
            raise InvalidDisclosure(_shown(str(e), _MAX_MESSAGE)) from None
        return cls(entry["traceId"], entry["spanId"], entry["key"], bytes.fromhex(salt),
                   entry["value"])


@dataclass(frozen=True)
class DisclosureFile:
    """A disclosure document: disclosures of one or more bundles (SPEC §2.5.4)."""

    disclosures: tuple[Disclosure, ...]

    def to_bytes(self) -> bytes:
        """The RFC 8785 bytes of the document, then a line feed (what producers write).

        Raises:
            CanonicalizationError: a value has no canonical JSON form.
        """
        return canonicalize({
            "disclosures": [d.to_json() for d in self.disclosures],
            "mediaType": DISCLOSURES_MEDIA_TYPE,
        }) + b"\n"

    @classmethod
    def from_bytes(cls, data: bytes, source: str = "disclosure file") -> DisclosureFile:
        """Parse a disclosure document strictly (it need not be canonical).

        Raises:
            InvalidDisclosure: not strict JSON, unknown media type, malformed entry.
        """
        try:
            doc = parse_strict(data, source)
        except InvalidBundle as e:
            raise InvalidDisclosure(_shown(str(e), _MAX_MESSAGE)) from None
        if not isinstance(doc, dict):
            raise InvalidDisclosure(f"{source}: must be a JSON object")
        if "mediaType" not in doc:
            raise InvalidDisclosure(f"{source}: missing mediaType (this verifier knows "
                                    f"{DISCLOSURES_MEDIA_TYPE!r})")
        if doc["mediaType"] != DISCLOSURES_MEDIA_TYPE:
            raise InvalidDisclosure(
                f"{source}: unknown mediaType {_shown(repr(doc['mediaType']))} "
                f"(this verifier knows {DISCLOSURES_MEDIA_TYPE!r})"
            )
        if doc.keys() != _FILE_KEYS:
            raise InvalidDisclosure(
                f"{source}: must have exactly the members disclosures and mediaType"
            )
        entries = doc["disclosures"]
        if not isinstance(entries, list):
            raise InvalidDisclosure(f"{source}.disclosures: must be an array")
        return cls(tuple(
            Disclosure.from_json(entry, f"{source}: disclosure {i}")
            for i, entry in enumerate(entries)
        ))

    def select(
        self, attributes: AttributeMatcher, span_ids: Iterable[str] = ()
    ) -> DisclosureFile:
        """The disclosures of attributes *attributes* matches, limited to *span_ids*
        when any are given."""
        spans = frozenset(span_ids)
        return DisclosureFile(tuple(
            d for d in self.disclosures
            if attributes.matches(d.key) and (not spans or d.span_id in spans)
        ))


def disclosures_path(bundle_path: str | os.PathLike[str]) -> str:
    """Where the disclosures of *bundle_path* live: ``<name>.disclosures.json`` beside
    ``<name>.spanproof.json`` (SPEC §2.5.4).

    Raises:
        ValueError: *bundle_path* does not end in ``.spanproof.json``.
    """
    path = os.fspath(bundle_path)
    if not path.endswith(BUNDLE_SUFFIX):
        raise ValueError(f"{path}: a bundle file name ends in {BUNDLE_SUFFIX}")
    return path[: -len(BUNDLE_SUFFIX)] + DISCLOSURES_SUFFIX


def load_disclosures(
    path: str | os.PathLike[str], limit: int | None = None
) -> DisclosureFile:
    """Read and parse a disclosure file of at most *limit* bytes
    (:data:`MAX_DISCLOSURE_FILE_BYTES`; :data:`MAX_PRODUCER_DISCLOSURE_FILE_BYTES` for
    the producer's own file, which ``spanproof disclose`` reads).

    A longer file is refused before it is parsed (or read further than the limit):
    parsing JSON takes many times the file's size in memory (SPEC §2.5.4).

    Raises:
        OSError: it cannot be read.
        InvalidDisclosure: it is longer than the limit, or malformed.
    """
    name = os.fspath(path)
    if limit is None:
        limit = MAX_DISCLOSURE_FILE_BYTES
    too_long = InvalidDisclosure(
        f"{name}: longer than {limit} bytes; a disclosure file is at most "
        f"{limit >> 20} MiB (SPEC §2.5.4)"
    )
    with open_regular(path) as f:
        size = os.fstat(f.fileno()).st_size
        if size > limit:
            raise too_long
        # Its size first: read(limit + 1) would take a buffer of the limit whatever the size.
        data = f.read(size + 1)
        if len(data) > size:  # it grew while being read
            data += f.read(limit + 1 - len(data))
    if len(data) > limit:
        raise too_long
    return DisclosureFile.from_bytes(data, name)


def write_private_file(path: str | os.PathLike[str], data: bytes) -> None:
    """Write *data* to *path* atomically with mode 0600 (temporary file in the same
    directory, fsync, rename over *path*, fsync the directory).

    Raises:
        OSError: the directory cannot be written.
    """
    write_atomic(path, data, mode=0o600)


# -------------------------------------------------------------------- commitments


@dataclass(frozen=True)
class CommittedAttribute:
    """A committed span attribute found in a record: what a reviewer sees without a
    disclosure."""

    source: str
    seq: int
    trace_id: str
    span_id: str
    key: str
    digest: str
    salt_digest: str


def committed_attributes(
    records: Iterable[Mapping[str, Any]], source: str = ""
) -> tuple[CommittedAttribute, ...]:
    """Every committed span attribute of *records* (validated records), in record order
    and key order."""
    found = []
    for record in records:
        span = record["span"]
        for key in sorted(span["attributes"]):
            typed = span["attributes"][key]
            if is_committed_value(typed):
                body = typed[COMMITTED_VALUE]
                found.append(CommittedAttribute(
                    source, int(record["seq"]), span["traceId"], span["spanId"], key,
                    body["digest"], body["saltDigest"],
                ))
    return tuple(found)


# ------------------------------------------------------------------- verification


@dataclass(frozen=True)
class Opening:
    """A commitment a disclosure opens: the bundle and record holding it, and the key
    that signed that bundle (``None`` for records checked without verifying them)."""

    source: str
    seq: int
    signer_keyid: str | None = None

    def to_json(self) -> dict[str, Any]:
        """Machine-readable form for ``spanproof verify --json``."""
        return {"bundle": self.source, "seq": str(self.seq), "signerKeyid": self.signer_keyid}

    def describe(self) -> str:
        """``record 0 of <bundle> (key <16 hex>)``, for people."""
        signer = f" (key {self.signer_keyid[:16]})" if self.signer_keyid else ""
        return f"record {self.seq} of {self.source}{signer}"


@dataclass(frozen=True)
class DisclosureResult:
    """The outcome of checking one disclosure (SPEC §2.5.5).

    ``status`` is PASS when the disclosed value opens a commitment; ``openings`` then
    names every commitment it opens (bundle, record and signer), and ``source`` and
    ``seq`` the first of them.  ``remarks`` says what a reader should know of a
    PASS: the commitments it opens are in bundles of different signers.  A FAIL's
    ``message`` says what did not match.  ``value`` is the disclosed typed value
    either way; only a PASS makes it evidence.
    """

    disclosure: Disclosure
    status: Status
    message: str
    source: str | None = None
    seq: int | None = None
    openings: tuple[Opening, ...] = ()
    remarks: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        """True when the disclosed value opens its commitment."""
        return self.status is Status.PASS

    @property
    def trace_id(self) -> str:
        """The disclosure's trace id."""
        return self.disclosure.trace_id

    @property
    def span_id(self) -> str:
        """The disclosure's span id."""
        return self.disclosure.span_id

    @property
    def key(self) -> str:
        """The disclosed attribute's key."""
        return self.disclosure.key

    @property
    def value(self) -> Mapping[str, Any]:
        """The disclosed typed value (SPEC §2.3)."""
        return self.disclosure.value

    def to_json(self) -> dict[str, Any]:
        """Machine-readable form for ``spanproof verify --json``."""
        return {
            "traceId": self.trace_id,
            "spanId": self.span_id,
            "key": self.key,
            "status": self.status.value,
            "message": self.message,
            "value": self.value,
            "bundle": self.source,
            "seq": str(self.seq) if self.seq is not None else None,
            "openings": [o.to_json() for o in self.openings],
            "remarks": list(self.remarks),
        }


@dataclass(frozen=True)
class _Located:
    source: str
    seq: int
    signer: str | None = None


@dataclass
class _Commitments:
    """The commitments of one attribute of one span (several when the span id repeats,
    in one bundle or in several)."""

    by_digest: dict[str, list[_Located]]
    salt_digests: set[str]


class _Index:
    """What checking disclosures asks of the verified records, built one record at a
    time (:meth:`add`) so that each disclosure costs the same however many records
    there are (SPEC §2.5.5), and no record is kept."""

    def __init__(self) -> None:
        #: (traceId, spanId) -> every attribute key the span's records hold.
        self.keys: dict[tuple[str, str], set[str]] = {}
        #: (traceId, spanId, key) -> its commitments; every record holding each digest.
        self.commitments: dict[tuple[str, str, str], _Commitments] = {}
        #: salt digest -> the first two distinct (traceId, spanId, key) committed with it,
        #: in record order (enough to name one other than any given attribute).
        self.salt_holders: dict[str, list[tuple[str, str, str]]] = {}

    def add(self, record: Mapping[str, Any], source: str, signer: str | None = None) -> None:
        """Note the next *record* (validated, verified by the caller), from *source*."""
        span = record["span"]
        trace_id, span_id = span["traceId"], span["spanId"]
        attributes = span["attributes"]
        self.keys.setdefault((trace_id, span_id), set()).update(attributes)
        loc: _Located | None = None
        for key, typed in attributes.items():
            if not is_committed_value(typed):
                continue
            if loc is None:
                loc = _Located(source, int(record["seq"]), signer)
            body: Mapping[str, str] = typed[COMMITTED_VALUE]
            where = (trace_id, span_id, key)
            found = self.commitments.setdefault(where, _Commitments({}, set()))
            found.by_digest.setdefault(body["digest"], []).append(loc)
            found.salt_digests.add(body["saltDigest"])
            holders = self.salt_holders.setdefault(body["saltDigest"], [])
            if len(holders) < 2 and where not in holders:
                holders.append(where)


def disclosure_view(record: dict[str, Any]) -> dict[str, Any]:
    """What checking disclosures reads of a *record* (validated): its media type,
    position, span and trace id, and its attributes' keys, each committed value
    whole and every other one as ``{}``.  A record kept for disclosures holds this,
    not its values in clear, which can be ~25 times their size once parsed."""
    span = record["span"]
    return {
        "mediaType": record["mediaType"],
        "seq": record["seq"],
        "span": {
            "traceId": span["traceId"],
            "spanId": span["spanId"],
            "attributes": {key: typed if is_committed_value(typed) else {}
                           for key, typed in span["attributes"].items()},
        },
    }


@dataclass(frozen=True)
class DisclosureNeeds:
    """Which records checking some disclosures needs (SPEC §2.5.5), to keep while a
    bundle streams through verification instead of all of them: pass it as
    ``check_bundle(select_records=...)``.

    A record is needed when it is a record of a span a disclosure names (its
    attribute keys and commitments are what steps 2-4 look at), or when it holds a
    commitment whose salt digest is that of a disclosed salt (to name the attribute a
    disclosure was moved from).  Picklable, so ``--jobs`` workers can use it.
    """

    spans: frozenset[tuple[str, str]]
    salt_digests: frozenset[str]

    @classmethod
    def of(cls, disclosures: Iterable[Disclosure]) -> DisclosureNeeds:
        """What checking *disclosures* needs of the records."""
        chosen = tuple(disclosures)
        return cls(frozenset((d.trace_id, d.span_id) for d in chosen),
                   frozenset(d.salt_digest for d in chosen))

    def __call__(self, record: Mapping[str, Any]) -> bool:
        """True when *record* (a validated record) is needed."""
        span = record["span"]
        if (span["traceId"], span["spanId"]) in self.spans:
            return True
        if record["mediaType"] == CER_COMMITTED_MEDIA_TYPE and self.salt_digests:
            for typed in span["attributes"].values():
                if (is_committed_value(typed)
                        and typed[COMMITTED_VALUE]["saltDigest"] in self.salt_digests):
                    return True
        return False


def check_disclosures(
    disclosures: Iterable[Disclosure], reports: Iterable[BundleReport]
) -> tuple[DisclosureResult, ...]:
    """Check each disclosure against the bundles that verified (SPEC §2.5.5).

    Only bundles whose verdict is OK or INCOMPLETE are consulted: a commitment in a
    bundle that failed verification proves nothing.  Never raises for bad
    evidence; each failure is a FAIL result with a specific message.

    The reports may hold every record (``keep_records=True``) or only those the
    disclosures need (``select_records=DisclosureNeeds.of(disclosures)``): the
    results are the same.

    Raises:
        ValueError: a verified report was made without its records.
    """
    index = _Index()
    # The traces of the bundles that verified, from their statements: a verified
    # bundle of the trace was given even when none of its records is kept (a bundle
    # of no records, or records selected for other spans), and a disclosure naming
    # a span it does not hold fails SPEC §2.5.5 step 2, not step 1.
    traces: set[str] = set()
    failed_traces: set[str] = set()
    unread = 0  # bundles that failed before their statement (and trace id) could be read
    for report in reports:
        stmt = report.statement
        if report.verdict is Verdict.FAIL or stmt is None:
            if stmt is not None:
                failed_traces.add(stmt.trace_id)
            else:
                unread += 1
            continue
        if report.records is None:
            raise ValueError(f"{report.source}: check disclosures against a report made "
                             "with keep_records=True")
        traces.add(stmt.trace_id)
        for record in report.records:
            index.add(record, report.source, report.signer_keyid)
    out = []
    for disclosure in disclosures:
        if disclosure.trace_id not in traces:
            if disclosure.trace_id in failed_traces:
                why = "its bundle did not verify"
            elif unread:
                why = (f"no bundle of this trace verified; {unread} bundle(s) failed before "
                       "their trace could be read")
            else:
                why = "no bundle of this trace was given"
            out.append(_fail(disclosure, f"cannot be checked: {why}"))
            continue
        out.append(_check(disclosure, index))
    return tuple(out)


def check_disclosure(
    disclosure: Disclosure, records: Iterable[Mapping[str, Any]], source: str = ""
) -> DisclosureResult:
    """Check one disclosure against *records*, which the caller has verified
    (SPEC §8 steps 1-8 passed for the bundle holding them)."""
    (result,) = check_disclosures_in_records([disclosure], records, source)
    return result


def check_disclosures_in_records(
    disclosures: Iterable[Disclosure], records: Iterable[Mapping[str, Any]], source: str = ""
) -> tuple[DisclosureResult, ...]:
    """Check each disclosure against *records*, which the caller has verified (SPEC §8
    steps 1-8 passed for the bundle holding them); the records are read once, and
    none is kept."""
    index = _Index()
    for record in records:
        index.add(record, source)
    return tuple(_check(d, index) for d in disclosures)


def verify_disclosures(
    disclosures: Iterable[Disclosure], reports: Iterable[BundleReport]
) -> tuple[DisclosureResult, ...]:
    """Verify every disclosure (SPEC §2.5.5); return the results, all PASS.

    Raises:
        DisclosureError: the first disclosure that does not open its commitment.
        ValueError: a verified report was made without ``keep_records=True``.
    """
    results = check_disclosures(disclosures, reports)
    for result in results:
        if not result.ok:
            raise DisclosureError(format_disclosure_result(result))
    return results


def _fail(disclosure: Disclosure, message: str) -> DisclosureResult:
    return DisclosureResult(disclosure, Status.FAIL, message)


def _check(disclosure: Disclosure, index: _Index) -> DisclosureResult:
    d = disclosure
    # SPEC §2.5.5 step 2: the records of the named span.
    keys = index.keys.get((d.trace_id, d.span_id))
    if keys is None:
        return _fail(d, f"span {d.span_id} is not in the verified bundle(s) of trace "
                        f"{d.trace_id}")
    # Step 3: the commitments of the named attribute on that span.
    targets = index.commitments.get((d.trace_id, d.span_id, d.key))
    if targets is None:
        if d.key in keys:
            return _fail(d, f"attribute {d.key!r} of span {d.span_id} is not committed: "
                            "its value is in the record in clear, nothing to disclose")
        return _fail(d, f"span {d.span_id} has no attribute {d.key!r}: no commitment to open")
    # Step 4: the recomputed digest must equal a commitment's digest.  Every record
    # holding it is named, with its signer: the same commitment in bundles of two
    # signers is a copy by one of them (SPEC §2.5.5).
    holding = targets.by_digest.get(d.digest)
    if holding:
        openings = tuple(Opening(loc.source, loc.seq, loc.signer) for loc in holding)
        first = openings[0]
        if len(openings) == 1:
            message = f"opens the commitment in {first.describe()}"
        else:
            message = (f"opens {len(openings)} commitments: "
                       + ", ".join(o.describe() for o in openings))
        return DisclosureResult(d, Status.PASS, message, first.source, first.seq,
                                openings, _signer_remarks(openings))
    return _fail(d, _diagnose(d, targets, index))


def _signer_remarks(openings: Sequence[Opening]) -> tuple[str, ...]:
    """What a reader must know when the commitments one disclosure opens are in
    bundles of different signers (SPEC §2.5.5)."""
    signers = sorted({o.signer_keyid for o in openings if o.signer_keyid})
    if len(signers) < 2:
        return ()
    return (
        f"the commitment it opens is in bundles of {len(signers)} different signers "
        f"(keys {', '.join(k[:16] for k in signers)}): a commitment proves that its "
        "signer signed the digest, not that it knew the value, and a copy of another "
        "producer's commitment opens too",
    )


def _diagnose(d: Disclosure, targets: _Commitments, index: _Index) -> str:
    """Why *d* opens none of *targets*, in SPEC §2.5.5's order.  Informative only: the
    verdict is already FAIL.

    A salt that is the salt of one of *targets* says the disclosure was made for this
    attribute, even when another attribute's commitment has it too (a reused salt):
    only a salt foreign to *targets* makes "moved from another attribute" the answer.
    """
    where = f"attribute {d.key!r} of span {d.span_id}"
    salt_hex = d.salt_digest
    if salt_hex not in targets.salt_digests:
        # Was the disclosure made for another commitment (moved to this span/key)?
        for trace_id, span_id, key in index.salt_holders.get(salt_hex, ()):
            if (trace_id, span_id, key) == (d.trace_id, d.span_id, d.key):
                continue
            return (f"disclosure for {where} carries the salt of attribute {key!r} of "
                    f"span {span_id} (moved from another span or attribute); "
                    "the commitment binds the span and key")
        return f"salt does not match the commitment of {where}"
    for alternative in _retyped(d.value):
        other = commitment_digest(d.trace_id, d.span_id, d.key, alternative, d.salt)
        if other in targets.by_digest:
            return (f"type mismatch for {where}: disclosed as {_kind(d.value)} "
                    f"{format_value(d.value)}, committed as {_kind(alternative)}")
    return f"value does not match the commitment of {where}"


def _kind(typed: Mapping[str, Any]) -> str:
    if not typed:
        return "empty"
    return next(iter(typed)).removesuffix("Value")


def _retyped(typed: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The same scalar spelled as other types (``"5"`` vs ``5`` vs ``5.0``), for the
    type-mismatch diagnosis."""
    if len(typed) != 1:
        return []
    ((kind, raw),) = typed.items()
    if kind == "boolValue":
        text = "true" if raw else "false"
    elif kind == "bytesValue":
        try:
            text = base64.b64decode(raw, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            text = raw
    elif isinstance(raw, str):
        text = raw
    else:
        return []
    candidates: list[dict[str, Any]] = [{"stringValue": text}]
    try:
        validate_value({"intValue": text}, "")
        candidates.append({"intValue": text})
        # The same number as a double only when the double holds it exactly: 2^53 + 1
        # is no double, and the double 2^53 is another value, not another type.
        if int(float(int(text))) == int(text):
            candidates.append({"doubleValue": encode_double(float(int(text)))})
    except (InvalidBundle, ValueError, OverflowError):
        pass
    try:
        decode_double(text)
        candidates.append({"doubleValue": text})
        if float(text).is_integer():
            candidates.append({"intValue": str(int(float(text)))})
    except (ValueError, OverflowError):
        pass
    if text in ("true", "false"):
        candidates.append({"boolValue": text == "true"})
    candidates.append({"bytesValue": base64.b64encode(text.encode("utf-8")).decode("ascii")})
    return [c for c in candidates if c != dict(typed)]


# ------------------------------------------------------------------------ display


def _clean(text: str, limit: int = _MAX_SHOWN) -> str:
    """Escape what a reader cannot see for what it is (:func:`._visible.visible`), so
    a disclosed value cannot drive a terminal nor pass for another, and cut the result
    at *limit* characters, saying how many more there were."""
    out = visible(text)
    if len(out) <= limit:
        return out
    return out[: limit - 1] + f"… ({len(out) - limit + 1} more characters)"


def format_value(typed: Mapping[str, Any], limit: int = _MAX_SHOWN) -> str:
    """A typed value for people, with its type: ``"5" (string)``, ``5 (int)``; a
    value longer than *limit* characters is cut there, with how many more it has."""
    if not typed:
        return "(empty)"
    kind = _kind(typed)
    try:
        value = decode_value(typed)
    except ValueError:
        return f"? ({kind})"
    if isinstance(value, str):
        text = '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    elif isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, bytes):
        text = "0x" + value.hex()
    elif isinstance(value, (int, float)) and kind in ("int", "double"):
        text = typed[next(iter(typed))]
    else:
        text = canonicalize(typed[next(iter(typed))]).decode("utf-8")
    return f"{_clean(text, limit)} ({kind})"


def format_disclosure_result(result: DisclosureResult) -> str:
    """One line for a disclosure: ``DISCLOSED …`` with the value, or ``FAIL …`` and why."""
    # The key as no other key reads (key_text): "customer.email\u034f" is not
    # customer.email, and a key cannot bring its own " = value".
    where = f"trace={result.trace_id} span={result.span_id} {_clean(key_text(result.key))}"
    if result.ok:
        return f"DISCLOSED {where} = {format_value(result.value)}: {result.message}"
    # The message's own echoes of the file are cut (_shown); cut at 200 as a whole,
    # it lost its diagnosis (the attribute a salt was moved from, the committed type).
    return f"FAIL disclosure {where}: {_clean(result.message, _MAX_MESSAGE)}"
