"""What a witness logged for one trace, against the bundles an auditor was given
(``spanproof witness lookup``, SPEC §12.10).

Offline, a verifier cannot know of segments it was not given (SPEC §4.4): the last
segments of a chain withheld, or a second history of the trace sealed under another
producer instance, verify ``OK``.  The witness log is what knows.  This asks the
witness for every entry of the trace, verifies each entry's receipt with the pinned
witness key (the entry is in the log that key signed), and compares them, by
statement digest, with the bundles given: an entry logged but not given, a given
bundle of the trace not logged, and an entry the witness marks as a conflict each
fail the check.

The look-up proves what it lists is logged, not that it lists everything: a witness
that leaves entries out of its answer is caught only by a monitor that reads the
whole log.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from spanproof.verifier._files import open_regular
from spanproof.verifier.bundle import BundleReader
from spanproof.verifier.checkpoint import WitnessKey
from spanproof.verifier.errors import SpanproofError
from spanproof.verifier.receipt import Receipt, ReceiptVerifier
from spanproof.verifier.records import digest_hex
from spanproof.verifier.statement import Statement

__all__ = ["GivenBundle", "LookupResult", "compare_entries", "read_given"]

#: The entry members that must name what the entry's verified receipt leaf names.
_LEAF_MEMBERS = (
    ("statementDigest", "statementDigest"),
    ("traceId", "traceId"),
    ("segment", "segment"),
    ("producerInstance", "producerInstance"),
    ("signerKeyid", "signerKeyid"),
)


@dataclass(frozen=True)
class GivenBundle:
    """A bundle handed to the auditor, read without its signature checked: only its
    statement digest is compared, which names exactly one signed statement."""

    path: str
    statement_digest: str
    trace_id: str
    producer_instance: str
    segment: int


def read_given(paths: Iterable[str]) -> tuple[list[GivenBundle], list[tuple[str, str]]]:
    """Read the statement of each bundle file in *paths*: the bundles, and the
    files that could not be read, each with why."""
    given: list[GivenBundle] = []
    unreadable: list[tuple[str, str]] = []
    for path in paths:
        try:
            with open_regular(path) as stream:
                envelope, _ = BundleReader(stream).read_header()
            statement = Statement.from_payload(envelope.payload)
        except OSError as e:
            unreadable.append((path, f"cannot read: {e.strerror or e}"))
            continue
        except SpanproofError as e:
            unreadable.append((path, str(e)))
            continue
        given.append(GivenBundle(path, digest_hex(envelope.payload), statement.trace_id,
                                 statement.producer.instance, statement.segment_index))
    return given, unreadable


@dataclass
class LookupResult:
    """What :func:`compare_entries` found: how many entries, of which producer
    instances, how many failed the check and how (each entry's line went to
    ``on_entry``), and the lines of the bundles given that are not logged."""

    entries: int = 0
    instances: set[str] = field(default_factory=set)
    failed: int = 0
    missing: int = 0
    conflicts: int = 0
    not_logged: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """No entry failed, none is missing or in conflict, every given bundle logged."""
        return not (self.failed or self.missing or self.conflicts or self.not_logged)


def _describe(receipt: Receipt) -> str:
    leaf = receipt.leaf
    return (f"entry {receipt.leaf_index}: instance {leaf.producer_instance} segment "
            f"{leaf.segment} statement {leaf.statement_digest} signer {leaf.signer_keyid[:16]}")


def _entry_receipt(entry: Any, trace_id: str, verifier: ReceiptVerifier) -> Receipt:
    """The entry's receipt, verified with the pinned witness keys, whose leaf names
    what the entry names, for *trace_id*.

    Raises:
        SpanproofError: the receipt does not verify, or names something else.
    """
    if not isinstance(entry, Mapping):
        raise SpanproofError("the entry is not a JSON object")
    receipt = Receipt.from_json(entry.get("receipt"))
    verifier.verify_own_leaf(receipt)
    leaf = receipt.leaf.to_json()
    for member, leaf_member in _LEAF_MEMBERS:
        if str(entry.get(member)) != leaf[leaf_member]:
            raise SpanproofError(f"its {member} {_cut(entry.get(member))} is not its "
                                 f"receipt's {_cut(leaf[leaf_member])}")
    if str(entry.get("index")) != str(receipt.leaf_index):
        raise SpanproofError(f"its index {_cut(entry.get('index'))} is not its receipt's "
                             f"leafIndex {receipt.leaf_index}")
    if receipt.leaf.trace_id != trace_id:
        raise SpanproofError(f"it is of trace {receipt.leaf.trace_id}, not {trace_id}")
    return receipt


def _cut(value: Any) -> str:
    """*value* as a message quotes it: its repr, at most 80 characters of it."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def compare_entries(
    entries: Iterable[Any],
    trace_id: str,
    keys: Iterable[WitnessKey],
    *,
    origin: str | None = None,
    given: Iterable[GivenBundle] | None = None,
    on_entry: Callable[[str], None] | None = None,
) -> LookupResult:
    """Check each look-up entry of *trace_id* (:func:`_entry_receipt`; entries come
    by index, each above the one before) and, when *given* is not None, compare the
    entries with those bundles.  Two verified entries of one segment of one producer
    instance with different statements are a conflict whether or not the witness
    marks them.  *on_entry* gets each entry's line as it is checked; entries are not
    kept (a trace may have many), only the first statement of each segment.
    """
    verifier = ReceiptVerifier(list(keys), origin=origin)
    by_digest: dict[str, list[GivenBundle]] = {}
    for bundle in given or ():
        if bundle.trace_id == trace_id:
            by_digest.setdefault(bundle.statement_digest, []).append(bundle)
    found: set[str] = set()
    first: dict[tuple[str, int], tuple[int, str]] = {}  # segment -> (index, statement)
    last_index = -1
    result = LookupResult()

    def say(line: str) -> None:
        if on_entry is not None:
            on_entry(line)

    for entry in entries:
        result.entries += 1
        try:
            receipt = _entry_receipt(entry, trace_id, verifier)
            if receipt.leaf_index <= last_index:
                raise SpanproofError(f"it comes after entry {last_index}: the witness "
                                     "answers entries by index, each once")
        except SpanproofError as e:
            index = entry.get("index") if isinstance(entry, Mapping) else None
            result.failed += 1
            plain = isinstance(index, str) and index.isdecimal() and len(index) <= 20
            say(f"FAIL entry {index if plain else _cut(index)}: {e}")
            continue
        last_index = receipt.leaf_index
        leaf = receipt.leaf
        result.instances.add(leaf.producer_instance)
        text = _describe(receipt)
        if entry.get("producerKey") == "unverified-producer":
            text += " (its producer key not pinned by the witness)"
        earlier = first.setdefault((leaf.producer_instance, leaf.segment),
                                   (receipt.leaf_index, leaf.statement_digest))
        matches = by_digest.get(leaf.statement_digest)
        if earlier[1] != leaf.statement_digest:
            result.conflicts += 1
            line = (f"CONFLICT {text}: entry {earlier[0]} is another statement for this "
                    "segment of this instance")
        elif entry.get("conflict") is True:
            result.conflicts += 1
            line = (f"CONFLICT {text}: the witness marks another statement for this "
                    "segment of this instance as logged")
        elif given is not None and not matches:
            result.missing += 1
            line = f"MISSING {text}: logged, not among the bundles given"
        else:
            line = f"LOGGED {text}"
        if matches:
            found.add(leaf.statement_digest)
            line += " (" + ", ".join(b.path for b in matches) + ")"
        say(line)
    for digest, bundles in sorted(by_digest.items()):
        if digest not in found:
            for b in bundles:
                result.not_logged.append(
                    f"NOT LOGGED {b.path}: instance {b.producer_instance} segment "
                    f"{b.segment} statement {digest}")
    return result
