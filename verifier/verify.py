"""The verification algorithm (SPEC §8), as a per-check report and as a raising call.

:func:`check_bundle` never raises for bad input: it returns a :class:`BundleReport`
listing every check as PASS, FAIL or SKIPPED.  :func:`verify_bundle` runs the same
code and raises the error of the first failed check, or returns what was proven.
"""

from __future__ import annotations

import enum
import errno
import itertools
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import IO, Any, Protocol

import orjson

from ._files import open_regular, walk_files
from .bundle import BUNDLE_SUFFIX, LARGE_RECORD_BYTES, BundleReader
from .canonical import loads_canonical
from .errors import (
    ChainError,
    IncompleteBundle,
    InvalidBundle,
    SpanproofError,
    TrustError,
    VerificationError,
)
from .keys import TrustedKey, TrustRoot, format_time
from .records import CER_COMMITTED_MEDIA_TYPE, ChainState, digest_hex, validate_record
from .statement import Statement
from .values import COMMITTED_VALUE, is_committed_value

__all__ = [
    "CHECKS",
    "MAX_MESSAGE_CHARS",
    "UNVERIFIED_BYTES_KEPT",
    "UNVERIFIED_RECORDS_KEPT",
    "BundleReport",
    "Check",
    "RecordObserver",
    "Status",
    "TraceLink",
    "Verdict",
    "VerifiedBundle",
    "check_bundle",
    "cut_message",
    "find_bundles",
    "link_segments",
    "unverified_shown",
    "verify_bundle",
]

# Check names in SPEC §8 step order.
CHECKS = (
    "format",
    "envelope",
    "signature",
    "statement",
    "key-validity",
    "records",
    "chain",
    "head",
    "completeness",
)


class Status(str, enum.Enum):
    """Outcome of one check."""

    PASS = "PASS"  # noqa: S105 - a check outcome, not a password
    FAIL = "FAIL"
    SKIPPED = "SKIPPED"


class Verdict(str, enum.Enum):
    """Outcome of a whole bundle: ``INCOMPLETE`` verified but declares losses."""

    OK = "OK"
    FAIL = "FAIL"
    INCOMPLETE = "INCOMPLETE"


@dataclass(frozen=True)
class Check:
    """One named check (SPEC §8 step ``step``) and its outcome."""

    name: str
    step: int
    status: Status
    message: str


@dataclass(frozen=True)
class BundleReport:
    """Every check run on one bundle, and what was learned on the way.

    ``statement`` is set once the signature verified and the statement parsed;
    ``records`` holds the parsed records only when asked for (``keep_records``); of
    a failed bundle, only the first of those read (`UNVERIFIED_RECORDS_KEPT`).
    ``remarks`` are what a reader should know of a bundle that verified without
    changing its verdict: committed values sharing a salt (SPEC §2.5.2), and records
    holding what their producer's SDK dropped (SPEC §8, steps 6-7).
    ``signer_valid_until`` is the end of the signing key's validity window in the
    trust root (None when it has none, or no trusted key verified the signature):
    step 11 holds a continuation to it.
    """

    source: str
    checks: tuple[Check, ...]
    verdict: Verdict
    statement: Statement | None = None
    statement_digest: str | None = None
    signer_keyid: str | None = None
    records: tuple[dict[str, Any], ...] | None = None
    error: SpanproofError | None = field(default=None, compare=False)
    remarks: tuple[str, ...] = ()
    signer_valid_until: datetime | None = None

    @property
    def ok(self) -> bool:
        """True when the verdict is OK."""
        return self.verdict is Verdict.OK

    @property
    def reason(self) -> str:
        """The message of the check that decided the verdict, or ``""``: the first
        failed check's; of a FAIL bundle, the first failed check other than
        ``completeness``, whose failure alone makes a bundle INCOMPLETE, never FAIL (a
        bundle declaring losses fails only by a later check: its witness receipt,
        SPEC §8 step 10)."""
        failed = [check for check in self.checks if check.status is Status.FAIL]
        if self.verdict is Verdict.FAIL:
            for check in failed:
                if check.name != "completeness":
                    return check.message
        return failed[0].message if failed else ""

    def to_json(self) -> dict[str, Any]:
        """Machine-readable form for ``spanproof verify --json``."""
        stmt = self.statement
        return {
            "path": self.source,
            "verdict": self.verdict.value,
            "reason": self.reason,
            "traceId": stmt.trace_id if stmt else None,
            "segment": stmt.segment_index if stmt else None,
            "records": stmt.record_count if stmt else None,
            "head": stmt.head if stmt else None,
            "statementDigest": self.statement_digest,
            "signerKeyid": self.signer_keyid,
            "sealReason": stmt.seal_reason if stmt else None,
            "completeness": stmt.completeness.to_json() if stmt else None,
            "remarks": list(self.remarks),
            "checks": [
                {"name": c.name, "step": c.step, "status": c.status.value, "message": c.message}
                for c in self.checks
            ],
        }


@dataclass(frozen=True)
class VerifiedBundle:
    """What :func:`verify_bundle` proved: this statement, signed by this trusted key,
    covers exactly these records."""

    statement: Statement
    statement_digest: str
    signer_keyid: str
    records: tuple[dict[str, Any], ...] | None


#: The most characters of a failed check's message that are kept.  A message quotes
#: what it found, and a hostile line can make that its whole 64 MiB (150 million
#: characters once escaped): a longer message keeps its start, which says where, and
#: its end, which often says what, and how much was left out between them.
MAX_MESSAGE_CHARS = 1000
_MESSAGE_HEAD = 600


def cut_message(text: str) -> str:
    """*text*, or when it is longer than `MAX_MESSAGE_CHARS`, its start and its end
    with how many characters were left out between them (as many characters at most)."""
    if len(text) <= MAX_MESSAGE_CHARS:
        return text
    # The marker's length depends on the count it names, which depends on it.
    marker = f" ... ({len(text)} characters left out) ... "
    tail = MAX_MESSAGE_CHARS - _MESSAGE_HEAD - len(marker)
    left_out = len(text) - _MESSAGE_HEAD - tail
    return f"{text[:_MESSAGE_HEAD]} ... ({left_out} characters left out) ... {text[-tail:]}"


class _Run:
    """Collects check outcomes in order; later checks are SKIPPED after a failure."""

    def __init__(self) -> None:
        self.done: dict[str, Check] = {}
        self.error: SpanproofError | None = None

    def passed(self, name: str, message: str) -> None:
        self.done[name] = Check(name, CHECKS.index(name) + 1, Status.PASS, message)

    def failed(self, name: str, error: SpanproofError) -> None:
        text = str(error)
        message = cut_message(text)
        if message is not text:  # the error raised by verify_bundle says the same
            error.args = (message,)
        self.done[name] = Check(name, CHECKS.index(name) + 1, Status.FAIL, message)
        self.error = error.detached()

    def skipped(self, name: str, message: str) -> None:
        self.done[name] = Check(name, CHECKS.index(name) + 1, Status.SKIPPED, message)

    def checks(self) -> tuple[Check, ...]:
        out = []
        for i, name in enumerate(CHECKS):
            check = self.done.get(name)
            if check is None:
                check = Check(name, i + 1, Status.SKIPPED, "not run: an earlier check failed")
            out.append(check)
        return tuple(out)


#: How many of a failed bundle's records a report keeps, to show as read before the
#: failure, and how many of their bytes at most.  Its records may be anyone's, of any
#: size: until the check of the signed head they are kept as the bytes read (parsed,
#: a record of tiny values takes ~25 times its size), and once it failed only these
#: are parsed.
UNVERIFIED_RECORDS_KEPT = 1000
UNVERIFIED_BYTES_KEPT = 4 * 1024 * 1024


def _window(key: TrustedKey) -> str:
    """*key*'s validity window as its trust root states it (``validFrom <= sealedAt
    < validUntil``)."""
    sides = []
    if key.valid_from is not None:
        sides.append(f"from {format_time(key.valid_from)}")
    if key.valid_until is not None:
        sides.append(f"until before {format_time(key.valid_until)}")
    return "valid " + ", ".join(sides)


def unverified_shown(sizes: Iterable[int]) -> int:
    """How many of a failed bundle's first records, whose canonical bytes have these
    *sizes* in chain order, a report keeps: at most `UNVERIFIED_RECORDS_KEPT`, and
    `UNVERIFIED_BYTES_KEPT` bytes."""
    count, total = 0, 0
    for size in itertools.islice(sizes, UNVERIFIED_RECORDS_KEPT):
        total += size
        if total > UNVERIFIED_BYTES_KEPT:
            break
        count += 1
    return count


class RecordObserver(Protocol):
    """What :func:`check_bundle` calls with each record as it is read (``on_record``)."""

    def __call__(self, record: Mapping[str, Any], raw: bytes, offset: int) -> None:
        """Note *record* (accepted by ``validate_record``), its canonical bytes *raw*,
        and *offset*, where its line starts in the stream read."""


def _open(source: str | os.PathLike[str] | IO[bytes]) -> tuple[str, IO[bytes], bool]:
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source), open_regular(source), True
    return getattr(source, "name", "<stream>"), source, False


def check_bundle(
    source: str | os.PathLike[str] | IO[bytes],
    trust: TrustRoot,
    *,
    allow_incomplete: bool = False,
    keep_records: bool = False,
    select_records: Callable[[Mapping[str, Any]], bool] | None = None,
    on_record: RecordObserver | None = None,
    shape_records: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
) -> BundleReport:
    """Run every SPEC §8 check on one bundle and report each outcome; never raises
    for bad input (an unreadable file is a failed ``format`` check).

    Args:
        source: a path or a binary stream positioned at the bundle's first byte.
        trust: the only keys that may have signed it.
        allow_incomplete: treat declared losses as OK instead of INCOMPLETE.
        keep_records: keep the parsed records in the report (for display); of a
            failed bundle, the first of those read before the failure, at most
            `UNVERIFIED_RECORDS_KEPT` records and `UNVERIFIED_BYTES_KEPT` bytes.
        select_records: keep in the report only the records (well formed, as read)
            for which this returns True, and no other; implies *keep_records*.  What
            checking disclosures needs of a bundle is a few of its records
            (:class:`~spanproof.verifier.disclosure.DisclosureNeeds`).
        on_record: called with each record a report made with *keep_records* would
            keep, as it is read (its parsed value, its canonical bytes and where its
            line starts in *source*), to keep what the caller needs of the records
            instead of them all; the report says whether they verified.
        shape_records: what of each kept record the report holds: applied to each
            as it is parsed, once the bundle is read (kept as their bytes until
            then), so that only one whole record is parsed at a time.
    """
    run = _Run()
    name = str(source) if isinstance(source, (str, os.PathLike)) else "<stream>"
    statement: Statement | None = None
    digest: str | None = None
    signer: TrustedKey | None = None
    kept: list[bytes] | None = [] if keep_records or select_records is not None else None
    salts = _SaltReuse()
    drops = _SdkDrops()
    try:
        name, stream, owned = _open(source)
    except OSError as e:
        run.failed("format", InvalidBundle(f"cannot read: {e.strerror}"))
        return BundleReport(name, run.checks(), Verdict.FAIL, error=run.error)
    try:
        statement, digest, signer = _run_checks(stream, trust, run, kept, allow_incomplete,
                                                select_records, salts, on_record, drops)
    except OSError as e:
        run.failed("format", InvalidBundle(f"read error: {e.strerror or e}"))
    finally:
        if owned:
            stream.close()
    if run.error is None:
        verdict = Verdict.OK
    elif isinstance(run.error, IncompleteBundle):
        verdict = Verdict.INCOMPLETE
    else:
        verdict = Verdict.FAIL
    records = None
    if kept is not None:
        if verdict is Verdict.FAIL:
            kept = kept[:unverified_shown(len(raw) for raw in kept)]
        # Each passed loads_canonical: a plain parse finds the same value.
        if shape_records is None:
            records = tuple(orjson.loads(raw) for raw in kept)
        else:
            records = tuple(shape_records(orjson.loads(raw)) for raw in kept)
    return BundleReport(
        source=name,
        checks=run.checks(),
        verdict=verdict,
        statement=statement,
        statement_digest=digest,
        signer_keyid=None if signer is None else signer.keyid,
        records=records,
        error=run.error,
        remarks=salts.remarks() + drops.remarks() if verdict is not Verdict.FAIL else (),
        signer_valid_until=None if signer is None else signer.valid_until,
    )


class _SdkDrops:
    """What the records of one bundle say their producer's SDK dropped before
    certification (``droppedAttributesCount`` of a span, its events and links;
    ``droppedEventsCount``; ``droppedLinksCount``; and of their resource and scope).
    The statement's completeness counts whole spans (SPEC §5); these are parts of
    certified spans, which no
    record can show: worth a remark, not a failed check (silence about a loss is a
    defect)."""

    __slots__ = ("attributes", "events", "links", "records", "resource", "scope", "shared")

    def __init__(self) -> None:
        self.records = 0
        self.attributes = 0
        self.events = 0
        self.links = 0
        # A resource's or scope's count is repeated by each record of it: the records
        # naming one that lost attributes, and the most each lost.
        self.shared = 0
        self.resource = 0
        self.scope = 0

    def add(self, record: Mapping[str, Any]) -> None:
        """Note the dropped counts of *record* (a valid record: uint64 strings)."""
        span = record["span"]
        attributes = int(span["droppedAttributesCount"])
        for part in span["events"]:
            attributes += int(part["droppedAttributesCount"])
        for part in span["links"]:
            attributes += int(part["droppedAttributesCount"])
        events = int(span["droppedEventsCount"])
        links = int(span["droppedLinksCount"])
        if attributes or events or links:
            self.records += 1
            self.attributes += attributes
            self.events += events
            self.links += links
        resource = int(record["resource"]["droppedAttributesCount"])
        scope = int(record["scope"]["droppedAttributesCount"])
        if resource or scope:
            self.shared += 1
            self.resource = max(self.resource, resource)
            self.scope = max(self.scope, scope)

    def remarks(self) -> tuple[str, ...]:
        """The remarks for the bundle's report, or none."""
        found: list[str] = []
        if self.records:
            found.append(
                f"{self.records} record(s) hold what their producer's SDK dropped: "
                f"{self.attributes} attribute(s), {self.events} event(s), {self.links} "
                "link(s) (droppedAttributesCount, droppedEventsCount, droppedLinksCount); "
                "they certify their spans as kept, not what was dropped")
        if self.shared:
            found.append(
                f"{self.shared} record(s) name a resource or instrumentation scope that "
                f"lost attributes before certification (up to {self.resource} of a "
                f"resource's, {self.scope} of a scope's: their droppedAttributesCount)")
        return tuple(found)


#: How many distinct salt digests of one bundle are compared for reuse (~130 bytes
#: each while the bundle is verified).
SALTS_CHECKED = 1 << 19


class _SaltReuse:
    """Committed values of one bundle whose salt digest repeats an earlier one's: equal
    salt digests are equal salts, which SPEC §2.5.2 has the producer draw fresh for
    every value.  A reused salt does not make a commitment open to another value, but
    whoever holds the disclosure of one holds the salt of the other and can test
    guesses of its value: worth a remark, not a failed check."""

    __slots__ = ("first", "repeats", "seen", "unchecked")

    def __init__(self) -> None:
        #: salt digest (as an integer: ~60 bytes where its hex string took ~110) ->
        #: the position of the first record committing with it.  At most
        #: SALTS_CHECKED of them: the records are not yet proven signed while they
        #: stream, and a forged bundle of committed values took 800 MB.
        self.seen: dict[int, int] = {}
        self.repeats = 0
        #: Committed values past SALTS_CHECKED, not looked at.
        self.unchecked = 0
        #: The first repeat: (its key, its record's position, the earlier position).
        self.first: tuple[str, int, int] | None = None

    def add(self, record: Mapping[str, Any], position: int) -> None:
        """Note the salt digests of *record* (a valid record) at *position*."""
        for key, typed in record["span"]["attributes"].items():
            if not is_committed_value(typed):
                continue
            salt = int(typed[COMMITTED_VALUE]["saltDigest"], 16)
            earlier = self.seen.get(salt)
            if earlier is None:
                if len(self.seen) < SALTS_CHECKED:
                    self.seen[salt] = position
                else:
                    self.unchecked += 1
                continue
            self.repeats += 1
            if self.first is None:
                self.first = (key, position, earlier)

    def remarks(self) -> tuple[str, ...]:
        """The remarks for the bundle's report: a reused salt, and committed values
        whose salt was not compared (past SALTS_CHECKED)."""
        unchecked = () if not self.unchecked else (
            f"salt reuse not checked for {self.unchecked} committed values: only the "
            f"first {SALTS_CHECKED} distinct salt digests of a bundle are compared",)
        if self.first is None:
            return unchecked
        key, position, earlier = self.first
        where = "the same record" if earlier == position else f"record {earlier}"
        more = (f" ({self.repeats} committed values reuse an earlier one's salt)"
                if self.repeats > 1 else "")
        shown = key if len(key) <= 200 else key[:200] + f"... ({len(key) - 200} more characters)"
        return (
            f"salt reused: the commitment of {shown!r} in record {position} has the salt "
            f"digest of a commitment in {where}{more}; the producer reused a salt "
            "(SPEC §2.5.2), so whoever is handed the disclosure of one can test guesses "
            "of the other's value",
            *unchecked,
        )


def _run_checks(
    stream: IO[bytes],
    trust: TrustRoot,
    run: _Run,
    kept: list[bytes] | None,
    allow_incomplete: bool,
    select: Callable[[Mapping[str, Any]], bool] | None = None,
    salts: _SaltReuse | None = None,
    on_record: RecordObserver | None = None,
    drops: _SdkDrops | None = None,
) -> tuple[Statement | None, str | None, TrustedKey | None]:
    reader = BundleReader(stream)
    # Steps 1-2: framing, header, media type, envelope shape.
    try:
        envelope, _header = reader.read_header()
    except InvalidBundle as e:
        target = "envelope" if str(e).startswith("envelope") else "format"
        if target == "envelope":
            run.passed("format", "bundle header is canonical v1")
        run.failed(target, e)
        return None, None, None
    run.passed("format", "bundle header is canonical v1")
    run.passed("envelope", f"DSSE envelope, payloadType {envelope.payload_type}")

    # Step 3: signature over PAE(payloadType, payload), before the payload is parsed.
    try:
        signer = envelope.verify(trust)
    except VerificationError as e:
        run.failed("signature", e)
        return None, None, None
    run.passed("signature", f"Ed25519 signature by trusted key {signer.keyid[:16]}")

    # Step 4: parse the verified payload bytes (never re-parsed).
    digest = digest_hex(envelope.payload)
    try:
        statement = Statement.from_payload(envelope.payload)
    except InvalidBundle as e:
        run.failed("statement", e)
        return None, digest, signer
    run.passed(
        "statement",
        f"trace {statement.trace_id} segment {statement.segment_index}, "
        f"{statement.record_count} records",
    )

    # Step 5: the signer's validity window covers the signed sealing time.
    if not signer.valid_at(statement.sealed_at):
        run.failed(
            "key-validity",
            TrustError(
                f"key {signer.keyid[:16]} is not valid at sealedAt "
                f"{format_time(statement.sealed_at)} (outside its trust-root window, "
                f"{_window(signer)})"
            ),
        )
        return statement, digest, signer
    run.passed("key-validity", "sealing time within the signer's validity window")

    # Steps 6-7: every record well formed and in the chain.
    chain = ChainState(statement.trace_id, statement.first_seq, statement.start)
    span_ids: dict[int, int] = {}
    duplicates: list[str] = []
    # Whether the record lines from here on are known to chain to the signed head.
    covered = False
    try:
        for position, raw in reader.records():
            if len(raw) > LARGE_RECORD_BYTES and not covered and stream.seekable():
                why = reader.unchained(raw, chain.count + 1, statement.record_count,
                                       statement.head)
                if why is not None:
                    raise InvalidBundle(
                        f"record {position}: its {len(raw)} bytes, over "
                        f"{LARGE_RECORD_BYTES}, are not parsed: the lines from it to the "
                        f"end do not chain to the signed head by their bytes ({why})")
                covered = True
            record = loads_canonical(raw, f"record {position}")
            validate_record(record, f"record {position}")
            chain.append(record, raw, position)
            if chain.count > statement.record_count:
                # SPEC §8 steps 6-7 item 9: a record the signed count does not cover can
                # never verify, so nothing after it is read (or kept): appended
                # records cost the verifier no more than the signed count allows.
                run.skipped("records", f"stopped at record {position}, which the signed "
                                       "statement does not cover")
                run.skipped("chain", f"stopped at record {position}, which the signed "
                                     "statement does not cover")
                run.failed("head", ChainError(
                    f"bundle has more than the {statement.record_count} records the signed "
                    f"statement covers (record {position} and any after it appended)"))
                return statement, digest, signer
            sid = int(record["span"]["spanId"], 16)
            if sid in span_ids:
                duplicates.append(record["span"]["spanId"])
            span_ids[sid] = position
            if salts is not None and record["mediaType"] == CER_COMMITTED_MEDIA_TYPE:
                salts.add(record, position)
            if drops is not None:
                drops.add(record)
            if kept is not None and (select is None or select(record)):
                kept.append(raw)
            if on_record is not None:
                on_record(record, raw, reader.record_offset)
    except ChainError as e:
        run.skipped("records", f"stopped at the chain failure after {chain.count} records")
        run.failed("chain", e)
        return statement, digest, signer
    except InvalidBundle as e:
        run.failed("records", e)
        return statement, digest, signer
    run.passed("records", f"{chain.count} records, each strict canonical v1 CER")
    undeclared = sorted(set(duplicates) - set(statement.completeness.conflicts))
    if undeclared:
        run.failed(
            "chain",
            ChainError(f"span id {undeclared[0]} appears in more than one record "
                       "but is not declared a conflict"),
        )
        return statement, digest, signer
    run.passed("chain", f"seq {statement.first_seq}..{chain.next_seq - 1} linked by prev hashes"
               if chain.count else "no records: the head is the segment's start")

    # Step 8: the chain ends exactly at the signed head.
    if chain.count != statement.record_count:
        run.failed(
            "head",
            ChainError(
                f"bundle has {chain.count} records but the signed statement covers "
                f"{statement.record_count} (records truncated or appended)"
            ),
        )
        return statement, digest, signer
    if chain.head != statement.head:
        run.failed(
            "head",
            ChainError(
                f"chain head {chain.head} does not match the signed head {statement.head} "
                "(last record altered)"
            ),
        )
        return statement, digest, signer
    run.passed("head", f"chain head {statement.head[:23]}... is the signed head")

    # Step 9: completeness.  Declared losses make the bundle INCOMPLETE.
    comp = statement.completeness
    sealed = f"sealed: {statement.seal_reason}"
    if comp.lost and not allow_incomplete:
        run.failed("completeness", IncompleteBundle(f"{_loss_text(statement)}; {sealed}"))
    else:
        note = _loss_text(statement) if comp.lost else "no declared losses"
        run.passed("completeness", f"{note}; {sealed}")
    return statement, digest, signer


def _loss_text(statement: Statement) -> str:
    comp = statement.completeness
    parts = [
        f"{n} {what}"
        for n, what in (
            (comp.dropped_spans, "evidence spans dropped before certification"),
            (comp.rejected_spans, "spans rejected: not certifiable"),
            (comp.unsampled_spans, "evidence spans removed by sampling"),
        )
        if n
    ]
    return "incomplete: " + ", ".join(parts) if parts else "complete"


def verify_bundle(
    source: str | os.PathLike[str] | IO[bytes],
    trust: TrustRoot,
    *,
    allow_incomplete: bool = False,
    keep_records: bool = True,
) -> VerifiedBundle:
    """Verify one bundle (SPEC §8) and return what it proves.

    Raises:
        InvalidBundle: the file is not a well-formed v1 bundle.
        SignatureError: no trusted key signed it.
        TrustError: the signer was not valid at the sealing time.
        ChainError: the records are not exactly the signed chain.
        IncompleteBundle: it verified but declares losses (unless *allow_incomplete*).
    """
    report = check_bundle(
        source, trust, allow_incomplete=allow_incomplete, keep_records=keep_records
    )
    if report.error is not None:
        raise report.error
    assert report.statement is not None and report.statement_digest is not None
    assert report.signer_keyid is not None
    return VerifiedBundle(
        report.statement, report.statement_digest, report.signer_keyid, report.records
    )


def find_bundles(
    paths: Sequence[str], onerror: Callable[[OSError], None] | None = None
) -> Iterator[str]:
    """Yield bundle paths: each file as given, and every ``*.spanproof.json`` below
    each directory, in sorted order.

    Symbolic links to directories are followed, as links to files are: the bundles
    below them are below the directory too.  Each directory is searched once, under
    the first path found for it, so a link back to a directory above ends there.
    A directory that cannot be listed is never skipped silently: its error goes to
    *onerror*, which may record it and let the search go on, or is raised.

    Raises:
        FileNotFoundError: a path does not exist.
        OSError: a directory cannot be listed, and no *onerror* is given.
    """

    def cannot_list(error: OSError) -> None:
        if onerror is None:
            raise error
        onerror(error)

    for path in paths:
        if os.path.isdir(path):
            yield from sorted(walk_files(path, _is_bundle_name, cannot_list))
        elif os.path.exists(path):
            yield path
        else:
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), path)


def _is_bundle_name(name: str) -> bool:
    return name.endswith(BUNDLE_SUFFIX)


@dataclass(frozen=True)
class TraceLink:
    """Whether the verified segments of one trace (from one producer) form one chain.

    *remarks* are what a reviewer who needs the whole trace should know of a group
    that forms one chain (SPEC §4.4): segments before the lowest one not present,
    the highest one sealed at the size limit (so later ones may exist), a segment
    stating a sealing time before the one it continues, or the segments signed by
    more than one key.  *message* ends with them.
    """

    trace_id: str
    producer_instance: str
    segments: tuple[int, ...]
    ok: bool
    message: str
    remarks: tuple[str, ...] = ()

    @property
    def worth_reporting(self) -> bool:
        """Whether the check says more than the bundles' own verdicts: a lone
        segment 0 that leaves nothing open does not."""
        return len(self.segments) > 1 or not self.ok or bool(self.remarks)


# The seal reason of a segment cut at the producer's size limit (SPEC §5.3).
_SIZE_LIMIT = "size_limit"


def link_segments(reports: Iterable[BundleReport]) -> list[TraceLink]:
    """Check that verified segments of the same trace and producer continue each
    other (SPEC §4.4, §8 step 11): no gap, each ``start`` is the previous head, each
    ``previousStatement`` is the previous statement's digest."""
    groups: dict[tuple[str, str], list[BundleReport]] = {}
    for report in reports:
        stmt = report.statement
        if report.verdict is Verdict.FAIL or stmt is None:
            continue
        groups.setdefault((stmt.trace_id, stmt.producer.instance), []).append(report)
    links = []
    for (trace_id, instance), group in sorted(groups.items()):
        group.sort(key=lambda r: r.statement.segment_index if r.statement else 0)
        copies = _copies(group)
        dropped = {id(c) for c, _ in copies}
        group = [r for r in group if id(r) not in dropped]
        indexes = tuple(r.statement.segment_index for r in group if r.statement)
        problem = _link_problem(group)
        if problem is not None:
            links.append(TraceLink(trace_id, instance, indexes, False, problem))
            continue
        remarks = tuple(
            f"segment {c.statement.segment_index} given twice, the same signed statement "
            f"({first.source}, {c.source})"
            for c, first in copies if c.statement is not None
        ) + _link_remarks(group)
        if len(indexes) == 1:
            message = f"segment {indexes[0]} forms one chain"
        else:
            message = f"segments {', '.join(map(str, indexes))} form one chain"
        if remarks:
            message += f" ({'; '.join(remarks)})"
        links.append(TraceLink(trace_id, instance, indexes, True, message, remarks))
    return links


def _copies(group: list[BundleReport]) -> list[tuple[BundleReport, BundleReport]]:
    """Each bundle of *group* (sorted by segment) whose statement digest is that of the
    bundle before it, with the first of them: the same signed segment given twice (a
    copy, a hard link), not two versions of it (SPEC §8 step 11)."""
    copies = []
    first = None
    for report in group:
        if (first is not None and report.statement_digest is not None
                and report.statement_digest == first.statement_digest):
            copies.append((report, first))
        else:
            first = report
    return copies


def _link_remarks(group: list[BundleReport]) -> tuple[str, ...]:
    """What a group that forms one chain leaves open (see :class:`TraceLink`)."""
    # Verifying later segments alone is legitimate, and a verifier cannot know of
    # segments it was not given (SPEC §4.4): it says what it did not see.
    first, last = group[0].statement, group[-1].statement
    assert first is not None and last is not None
    remarks = []
    if first.segment_index == 1:
        remarks.append("segment 0 not present")
    elif first.segment_index > 1:
        remarks.append(f"segments 0-{first.segment_index - 1} not present")
    if last.seal_reason == _SIZE_LIMIT:
        remarks.append(f"segment {last.segment_index} was sealed at the producer's size "
                       "limit, so later segments may exist")
    for prev, cur in itertools.pairwise(group):
        a, b = prev.statement, cur.statement
        assert a is not None and b is not None
        if b.sealed_at < a.sealed_at:
            remarks.append(
                f"segment {b.segment_index} states it was sealed at "
                f"{format_time(b.sealed_at)}, before segment {a.segment_index} "
                f"({format_time(a.sealed_at)}), which it continues: a producer's clock "
                "set back, or a sealing time that is not true")
    # Whole key ids are compared: two keys may share any prefix.
    keys = sorted({r.signer_keyid for r in group if r.signer_keyid})
    if len(keys) > 1:
        remarks.append(f"signed by {len(keys)} keys: {', '.join(_short_keyids(keys))}")
    return tuple(remarks)


def _short_keyids(keyids: list[str]) -> list[str]:
    """*keyids* cut to 16 hex digits, or to as many more as tell them apart."""
    length = 16
    while len({k[:length] for k in keyids}) < len(keyids) and length < 64:
        length += 8
    return [k[:length] for k in keyids]


def _link_problem(group: list[BundleReport]) -> str | None:
    for prev, cur in itertools.pairwise(group):
        a, b = prev.statement, cur.statement
        assert a is not None and b is not None
        if b.segment_index == a.segment_index:
            return f"segment {b.segment_index} appears twice ({prev.source}, {cur.source})"
        if b.segment_index != a.segment_index + 1:
            return f"segment {a.segment_index + 1} is missing"
        if (
            b.start != a.head
            or b.first_seq != a.first_seq + a.record_count
            or b.previous_statement != prev.statement_digest
        ):
            return (
                f"segment {b.segment_index} does not continue segment {a.segment_index} "
                "(start, firstSeq or previousStatement mismatch)"
            )
        until = cur.signer_valid_until
        if until is not None and a.sealed_at >= until:
            # b signs a's statement digest, so b was signed after a's statement was
            # made, which a's signer dates after b's key was retired (SPEC §8 step 11).
            return (
                f"segment {b.segment_index} is signed by key {(cur.signer_keyid or '')[:16]}, "
                f"valid until before {format_time(until)}, but continues segment "
                f"{a.segment_index}, sealed at {format_time(a.sealed_at)}"
            )
    return None
