"""The ``spanproof`` command line (private: :func:`main` is the console script).

Read-only commands (``verify``, ``show``, ``report``) use the verifier alone.  Producer commands
(``keygen``, ``demo``) live in ``spanproof.exporter._cli`` and are imported only when
run, so verifying never imports OpenTelemetry, gRPC or the exporter.

Exit status: 0 when everything verified, 1 when anything failed (a malformed or
truncated bundle is a failure, reported as one), 2 for usage errors (bad flags, a
missing path, an unusable key or trust-root file).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import errno
import importlib
import json
import logging
import os
import re
import stat
import sys
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from typing import IO, Any, NoReturn, cast

from ._files import open_regular
from ._jobs import AUTO_MIN_BUNDLES_FORK, AUTO_MIN_BUNDLES_SPAWN, MAX_JOBS, map_in_order
from ._settings import parse_decimal
from ._stdout import StdoutError, writing_stdout
from ._stored import StoredRecords
from ._term import Progress, Style, printable
from .bundle import BUNDLE_SUFFIX, LARGE_RECORD_BYTES, BundleReader
from .canonical import loads_canonical
from .checkpoint import WitnessKey, load_witness_keys, refuse_producer_key_as_witness_key
from .disclosure import (
    MAX_DISCLOSURE_FILE_BYTES,
    MAX_PRODUCER_DISCLOSURE_FILE_BYTES,
    AttributeMatcher,
    CommittedAttribute,
    Disclosure,
    DisclosureFile,
    DisclosureNeeds,
    DisclosureResult,
    check_disclosures,
    check_disclosures_in_records,
    committed_attributes,
    disclosure_view,
    disclosures_path,
    format_disclosure_result,
    load_disclosures,
    write_private_file,
)
from .errors import InvalidKey, SpanproofError
from .keys import TrustedKey, TrustRoot, format_time, raw_public_bytes
from .receipt import (
    RECEIPT_CHECK,
    RECEIPT_CHECK_STEP,
    REMEMBERED_CHECKPOINTS,
    ReceiptVerifier,
    attach_receipt_check,
    check_receipt_for_bundle,
    receipt_path,
)
from .records import validate_record
from .report import (
    ReportItem,
    records_verified,
    render_html,
    steps_shown_of,
    summarize_checks,
)
from .statement import Statement
from .tree import Paint
from .values import is_committed_value
from .verify import (
    UNVERIFIED_BYTES_KEPT,
    UNVERIFIED_RECORDS_KEPT,
    BundleReport,
    Check,
    RecordObserver,
    Status,
    TraceLink,
    Verdict,
    check_bundle,
    cut_message,
    find_bundles,
    link_segments,
    unverified_shown,
)

__all__ = ["main"]

_logger = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_PIPE_CLOSED = 141

_PROG = "spanproof"


class UsageError(Exception):
    """A mistake in how the command was called (exit status 2)."""

    def __init__(self, message: str, usage: str = "") -> None:
        super().__init__(message)
        self.usage = usage


class _Parser(argparse.ArgumentParser):
    """An argument parser that raises :class:`UsageError` instead of exiting."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message, self.format_usage())


def _error(message: str) -> None:
    print(f"{_PROG}: error: {printable(message)}", file=sys.stderr)


def _warn(message: str) -> None:
    print(f"{_PROG}: warning: {printable(message)}", file=sys.stderr)


def _version() -> str:
    try:
        return metadata.version("spanproof")
    except metadata.PackageNotFoundError:  # run from a source tree, not installed
        return "unknown"


# --------------------------------------------------------------------------- trust


def load_trust(key_files: Sequence[str], trust_root_files: Sequence[str]) -> TrustRoot | None:
    """Build the trust root from ``--key`` PEM files and ``--trust-root`` documents.

    Returns ``None`` when neither was given.  All the files together form one trust
    root, so one key given twice (two ``--key`` files, a ``--key`` file and a trust-root
    entry, or two trust-root files) is refused as in a single file (SPEC §6.2).

    Raises:
        UsageError: a file cannot be read or holds no usable key, or a key is given twice.
    """
    keys: list[TrustedKey] = []
    try:
        if key_files:
            keys.extend(TrustRoot.from_pem_files(list(key_files)).keys)
        for path in trust_root_files:
            keys.extend(TrustRoot.from_json_file(path).keys)
        return TrustRoot.from_keys(keys) if keys else None
    except InvalidKey as e:
        raise UsageError(str(e)) from e


# ------------------------------------------------------------------ per-bundle results


@dataclass(frozen=True)
class BundleResult:
    """One bundle's report, or the text of an unexpected error while checking it."""

    path: str
    report: BundleReport | None
    crash: str | None = None

    @property
    def verdict(self) -> Verdict:
        """The report's verdict; FAIL when the check itself broke."""
        return self.report.verdict if self.report is not None else Verdict.FAIL

    @property
    def reason(self) -> str:
        """Why it did not verify (``""`` when it did)."""
        if self.report is None:
            return self.crash or "verifier error"
        return self.report.reason

    def to_json(self) -> dict[str, Any]:
        """This result in the ``spanproof verify --json`` shape."""
        if self.report is not None:
            return self.report.to_json()
        return {
            "path": self.path,
            "verdict": Verdict.FAIL.value,
            "reason": self.reason,
            "traceId": None,
            "segment": None,
            "records": None,
            "head": None,
            "statementDigest": None,
            "signerKeyid": None,
            "sealReason": None,
            "completeness": None,
            "remarks": [],
            "checks": [],
        }


def check_path(
    path: str,
    trust: TrustRoot,
    *,
    allow_incomplete: bool = False,
    keep_records: bool = False,
    select_records: Callable[[Mapping[str, Any]], bool] | None = None,
    stream: IO[bytes] | None = None,
    on_record: RecordObserver | None = None,
    shape_records: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
) -> BundleResult:
    """Run :func:`check_bundle` on *path*, or on *stream* (*path* open) when given;
    never raises.

    ``check_bundle`` reports every defect of the input as a failed check.  Should
    it raise anyway (a bug), the bundle is reported as failed with the error's
    text instead of a traceback.
    """
    try:
        report = check_bundle(
            path if stream is None else stream, trust, allow_incomplete=allow_incomplete,
            keep_records=keep_records, select_records=select_records, on_record=on_record,
            shape_records=shape_records,
        )
        if stream is not None:
            report = dataclasses.replace(report, source=path)
    except Exception as e:  # last resort: a bug must not reach the user as a traceback
        _logger.debug("checking %s raised", path, exc_info=True)
        return BundleResult(path, None, f"verifier error: {type(e).__name__}: {e}")
    return BundleResult(path, report)


def _loss_note(stmt: Statement) -> str:
    comp = stmt.completeness
    parts = [
        f"{n} {what}"
        for n, what in (
            (comp.dropped_spans, "dropped"),
            (comp.rejected_spans, "rejected"),
            (comp.unsampled_spans, "unsampled"),
        )
        if n
    ]
    return ", ".join(parts)


#: How much of a verified bundle's conflicts and notes ``verify`` prints under its
#: verdict line: a bundle may carry any number of them, of any length (``--json``,
#: ``show`` and ``report`` give them all).
CONFLICTS_SHOWN = 16
NOTES_SHOWN = 10
NOTE_CHARS_SHOWN = 300


def _declared_lines(stmt: Statement) -> list[str]:
    """The conflicting span ids and the notes a verified statement declares (SPEC
    §5.3, §8 step 9), bounded, for the lines under its verdict."""
    comp = stmt.completeness
    lines = []
    if comp.conflicts:
        more = len(comp.conflicts) - CONFLICTS_SHOWN
        lines.append(f"  conflicting span ids: {', '.join(comp.conflicts[:CONFLICTS_SHOWN])}"
                     + (f" (and {more} more)" if more > 0 else ""))
    for note in comp.notes[:NOTES_SHOWN]:
        cut = len(note) - NOTE_CHARS_SHOWN
        lines.append(f"  note: {note[:NOTE_CHARS_SHOWN]}"
                     + (f"... ({cut} more characters)" if cut > 0 else ""))
    if len(comp.notes) > NOTES_SHOWN:
        lines.append(f"  ... and {len(comp.notes) - NOTES_SHOWN} more notes")
    return lines


def format_result(result: BundleResult, *, receipts: bool = False) -> str:
    """The one-line verdict of ``spanproof verify`` for one bundle (how many notes
    and conflicts it declares: :func:`format_declared` lists them); with *receipts*
    (a witness key was pinned), whether its receipt verified or it has none."""
    report = result.report
    stmt = report.statement if report is not None else None
    if report is None or stmt is None or result.verdict is Verdict.FAIL:
        return printable(f"FAIL {result.path}: {result.reason}")
    where = f"trace={stmt.trace_id} segment={stmt.segment_index}"
    comp = stmt.completeness
    counts = [f"{name}={len(items)}" for name, items in
              (("conflicts", comp.conflicts), ("notes", comp.notes)) if items]
    if result.verdict is Verdict.INCOMPLETE:
        reason = result.reason.removeprefix("incomplete: ")
        return printable(
            f"INCOMPLETE {result.path}: {reason} ({'; '.join([where, *counts])}; signature "
            "and chain verified; --allow-incomplete accepts declared losses)"
        )
    line = (
        f"OK {result.path} {where} records={stmt.record_count} seal={stmt.seal_reason} "
        f"key={(report.signer_keyid or '')[:16]}"
    )
    if comp.lost:
        line += f" incomplete=({_loss_note(stmt)}; allowed)"
    if counts:
        line += " " + " ".join(counts)
    receipt = next((c for c in report.checks if c.name == RECEIPT_CHECK), None)
    if receipts and receipt is not None and receipt.status is Status.PASS:
        line += " receipt=verified"
    elif receipts and receipt is not None and receipt.message.startswith("no receipt"):
        # With a witness key pinned, a bundle without a receipt verified in words no
        # different from one whose receipt did (without --require-receipt).
        line += " receipt=none"
    return printable(line)


def format_remarks(result: BundleResult) -> list[str]:
    """The ``  remark:`` lines under a bundle that verified: what a reader should
    know that does not change its verdict (a reused salt, SPEC §2.5.2; records holding
    what their producer's SDK dropped)."""
    if result.report is None or result.verdict is Verdict.FAIL:
        return []
    return [printable(f"  remark: {remark}") for remark in result.report.remarks]


def format_declared(result: BundleResult) -> list[str]:
    """The ``--verbose`` lines of what a bundle that verified (OK or INCOMPLETE)
    declares: its conflicting span ids and its notes (bounded: see `NOTES_SHOWN`),
    each line escaped on its own, so a line feed in a note cannot start a line."""
    report = result.report
    stmt = report.statement if report is not None else None
    if stmt is None or result.verdict is Verdict.FAIL:
        return []
    return [printable(text) for text in _declared_lines(stmt)]


def format_checks(result: BundleResult) -> list[str]:
    """The ``--verbose`` lines for one bundle: every check, PASS / FAIL / SKIPPED."""
    if result.report is None:
        return [printable(f"  {Status.FAIL.value}  {result.reason}")]
    return [
        printable(f"  {c.status.value}  step {c.step} {c.name}: {c.message}")
        for c in result.report.checks
    ]


def link_results(results: Sequence[BundleResult]) -> list[TraceLink]:
    """Check that the segments of each trace form one chain (``link_segments``)."""
    return link_segments([r.report for r in results if r.report is not None])


def format_link(link: TraceLink) -> str:
    """The one-line result of checking one trace's segments (from one producer
    instance) together."""
    return printable(f"{'OK' if link.ok else 'FAIL'} trace {link.trace_id} instance "
                     f"{link.producer_instance}: {link.message}")


# --------------------------------------------------------------------------- verify


_NO_BUNDLES = "no bundles (*.spanproof.json) found"


def _must_exist(path: str) -> None:
    """Refuse *path* when it cannot be looked up, with why: not only a missing
    file, also a loop of symbolic links or a directory on the way that cannot be
    searched (``os.path.exists`` says False to all of them).

    Raises:
        UsageError: ``stat`` fails.
    """
    try:
        os.stat(path)
    except OSError as e:
        if e.errno == errno.ENOENT:
            raise UsageError(f"{path}: no such file or directory") from None
        raise UsageError(f"{path}: cannot look it up ({e.strerror or e})") from None
    except ValueError:  # a NUL in the name
        raise UsageError(f"{path}: no such file or directory") from None


@dataclass(frozen=True)
class _Collected:
    """The bundle files under the ``PATH`` arguments, each once, in order, and what
    could not be checked, with why.  To look again: what ``find_bundles`` gave for
    each ``PATH``, the positions of the ``PATH`` arguments that are directories, and
    for each bundle found by walking one of them, that position (a bundle file named
    on the command line has none)."""

    bundles: list[str]
    problems: list[tuple[str, str]]
    found: tuple[tuple[str, ...], ...]
    directories: frozenset[int]
    walked: Mapping[str, int]

    def adding(self, late: Mapping[int, Sequence[str]]) -> _Collected:
        """These bundles and the files *late* gives for the ``PATH`` at each position,
        in the order the first listing would have given them in."""
        found = tuple(
            tuple(sorted({*files, *late[i]})) if i in late else files
            for i, files in enumerate(self.found)
        )
        bundles, walked = _unique(found, self.directories)
        return _Collected(bundles, self.problems, found, self.directories, walked)


def _collect(paths: Sequence[str]) -> _Collected:
    """Bundle files under *paths* (each once), and what could not be checked, with
    why: a path that holds no bundle, a directory that cannot be listed."""
    problems: list[tuple[str, str]] = []
    found: list[tuple[str, ...]] = []
    directories: set[int] = set()

    def cannot_list(error: OSError) -> None:
        where = os.fspath(error.filename) if error.filename is not None else "?"
        problems.append((where, f"cannot list the directory ({error.strerror or error}); "
                                "the bundles in it were not checked"))

    for position, path in enumerate(paths):
        _must_exist(path)
        known = len(problems)
        if os.path.isdir(path):
            directories.add(position)
        found.append(tuple(find_bundles([path], onerror=cannot_list)))
        if not found[-1] and len(problems) == known:
            problems.append((path, _NO_BUNDLES))
    bundles, walked = _unique(found, directories)
    return _Collected(bundles, problems, tuple(found), frozenset(directories), walked)


def _unique(
    found: Sequence[Sequence[str]], directories: Collection[int]
) -> tuple[list[str], dict[str, int]]:
    """Each bundle of *found* (what each ``PATH`` gave) once, by the file it really
    is, in order; and the ``PATH`` position of each found below one of *directories*."""
    bundles: list[str] = []
    walked: dict[str, int] = {}
    seen: set[str] = set()
    real_dirs: dict[str, str] = {}  # a directory's real path, resolved once
    for position, files in enumerate(found):
        for bundle in files:
            if os.path.islink(bundle):
                real = os.path.realpath(bundle)
            else:
                head, tail = os.path.split(bundle)
                real_dir = real_dirs.get(head)
                if real_dir is None:
                    real_dir = real_dirs[head] = os.path.realpath(head)
                real = os.path.join(real_dir, tail)
            if real not in seen:
                seen.add(real)
                bundles.append(bundle)
                if position in directories:
                    walked[bundle] = position
    return bundles, walked


# A producer names segment N of trace T, from its instance I, T-NNNN-I.spanproof.json
# (SPEC §7.4); its directory sink, when that name is taken, T-NNNN-I.<n>.spanproof.json.
_SEGMENT_NAME = re.compile(
    r"([0-9a-f]{32})-([0-9]{4,20})-([0-9a-f]{1,64})(?:\.[0-9]+)?" + re.escape(BUNDLE_SUFFIX))


def _late_segments(
    collected: _Collected, results: Sequence[BundleResult]
) -> dict[int, list[str]]:
    """The bundle files, by ``PATH`` position, that a trace's segments found by
    walking a directory lack, listed again where they were found.

    A directory listing taken while a producer links bundles into it is no snapshot
    (on ext4 it runs in hash order): a segment published before a later one of its
    trace can be missed while the later one is seen.  A trace (of one producer
    instance) without a segment below its highest verified one is such a gap, and the
    directories where its segments were found are listed once more, for the missing
    segments' names (SPEC §7.4): each was published before the later segment was
    seen, so it is in that listing.  What is found is verified like every bundle,
    the name deciding nothing; a gap that remains fails the trace (SPEC §8 step 11).
    """
    present: dict[tuple[str, str], set[int]] = {}
    where: dict[tuple[str, str], set[tuple[int, str]]] = {}
    for path, result in zip(collected.bundles, results, strict=True):
        report = result.report
        stmt = report.statement if report is not None else None
        if stmt is None or result.verdict is Verdict.FAIL:
            continue  # as link_segments: a failed segment is a missing one
        group = (stmt.trace_id, stmt.producer.instance)
        present.setdefault(group, set()).add(stmt.segment_index)
        position = collected.walked.get(path)
        if position is not None:
            # The directory as the walk named it, so that a file found in it is named alike.
            where.setdefault(group, set()).add((position, path[:-len(os.path.basename(path))]))
    lacking: dict[tuple[int, str], dict[tuple[str, str], set[int]]] = {}
    for group, indexes in present.items():
        if len(indexes) <= max(indexes):  # a gap below the highest segment
            for place in where.get(group, ()):
                lacking.setdefault(place, {})[group] = indexes
    known = set(collected.bundles)
    late: dict[int, list[str]] = {}
    for (position, directory), groups in sorted(lacking.items()):
        try:
            with os.scandir(directory) as listing:
                names = [entry.name for entry in listing
                         if _fills_gap(entry.name, groups) and not entry.is_dir()]
        except OSError:
            continue  # gone since it was listed: the gap stands, and fails the trace
        for name in names:
            path = directory + name
            if path not in known:
                known.add(path)
                late.setdefault(position, []).append(path)
    return late


def _fills_gap(name: str, groups: Mapping[tuple[str, str], set[int]]) -> bool:
    """Whether *name* is a file name of a segment that one of *groups* (each with the
    segments present) lacks below its highest one."""
    match = _SEGMENT_NAME.fullmatch(name)
    if match is None:
        return False
    indexes = groups.get((match[1], match[3]))
    if indexes is None:
        return False
    index = int(match[2])
    return index not in indexes and index < max(indexes)


def _load_witness_keys(specs: Sequence[str]) -> tuple[WitnessKey, ...]:
    try:
        return load_witness_keys(specs)
    except SpanproofError as e:
        raise UsageError(str(e)) from e


def _with_receipt(
    result: BundleResult,
    witness_keys: Sequence[WitnessKey],
    *,
    required: bool,
    origin: str | None,
) -> BundleResult:
    """*result* with the receipt check (SPEC §8 step 10) of the receipt beside it."""
    if result.report is None:
        return result
    check = check_receipt_for_bundle(
        result.path, result.report, witness_keys, required=required, origin=origin,
        verifier=_receipt_verifier(witness_keys, origin),
    )
    return BundleResult(result.path, attach_receipt_check(result.report, check))


def _refuse_producer_key_as_witness_key(
    trust: TrustRoot, witness_keys: Sequence[WitnessKey]
) -> None:
    """:func:`refuse_producer_key_as_witness_key`, a usage error here.

    Raises:
        UsageError: a witness key is one of *trust*'s keys.
    """
    try:
        refuse_producer_key_as_witness_key(trust, witness_keys)
    except ValueError as e:
        raise UsageError(str(e)) from e


def _refuse_receipt_options_without_key(
    args: argparse.Namespace, witness_keys: Sequence[WitnessKey]
) -> None:
    """Refuse ``--require-receipt`` and ``--witness-origin`` without ``--witness-key``:
    without a pinned witness key no receipt is checked (SPEC §8 step 10), so either
    would be ignored and the bundles pass without the receipt the user asked for.

    Raises:
        UsageError: either is given without a witness key.
    """
    if witness_keys:
        return
    if args.require_receipt:
        raise UsageError("--require-receipt needs --witness-key (the pinned witness key)")
    if args.witness_origin is not None:
        raise UsageError("--witness-origin needs --witness-key (the pinned witness key): "
                         "without one no receipt is checked")


# The receipts of one witness batch share a checkpoint, so this process (each
# --jobs worker too) keeps one receipt verifier per set of pinned keys and origin,
# remembering the checkpoints it verified: a checkpoint's signature is checked once.
_RECEIPT_VERIFIERS: dict[Any, ReceiptVerifier] = {}


def _receipt_verifier(keys: Sequence[WitnessKey], origin: str | None) -> ReceiptVerifier | None:
    if not keys:
        return None
    pinned = (tuple((raw_public_bytes(k.public_key), k.name) for k in keys), origin)
    verifier = _RECEIPT_VERIFIERS.get(pinned)
    if verifier is None:
        verifier = _RECEIPT_VERIFIERS[pinned] = ReceiptVerifier(
            keys, origin=origin, remember=REMEMBERED_CHECKPOINTS)
    return verifier


# SPEC §8 step 10 without a pinned witness key: listed, never run, no verdict changed.
_NO_WITNESS_KEY = Check(RECEIPT_CHECK, RECEIPT_CHECK_STEP, Status.SKIPPED,
                        "no witness key was given (--witness-key)")


class _FirstRecords:
    """What ``report`` keeps of one bundle, as its ``select_records``: its first
    *count* records (``check_bundle`` asks of each record in chain order), and any
    other that *also* selects (the records disclosures need)."""

    def __init__(self, count: int, also: Callable[[Mapping[str, Any]], bool] | None) -> None:
        self._left = count
        self._also = also

    def __call__(self, record: Mapping[str, Any]) -> bool:
        if self._left > 0:
            self._left -= 1
            return True
        return self._also is not None and self._also(record)


@dataclass(frozen=True)
class _BundleCheck:
    """What ``verify`` and ``report`` do to one bundle: :func:`check_path`, then the
    receipt check with the pinned witness keys *receipts*, or with None, the receipt
    check SKIPPED as no witness key was given.  With *first_records*, only a bundle's
    first records are kept, and those *select_records* needs.  Picklable, so that
    ``--jobs`` workers can run it."""

    trust: TrustRoot
    allow_incomplete: bool
    keep_records: bool
    receipts: tuple[WitnessKey, ...] | None = None
    require_receipt: bool = False
    witness_origin: str | None = None
    select_records: DisclosureNeeds | None = None
    first_records: int | None = None

    def __call__(self, path: str) -> BundleResult:
        keep = self.keep_records
        select: Callable[[Mapping[str, Any]], bool] | None = self.select_records
        shape = None
        if self.first_records is not None:
            # Of each bundle, its first records and those *select_records* needs.
            keep, select = False, _FirstRecords(self.first_records, self.select_records)
        elif select is not None and not keep:
            # Only for disclosures: of their records, what checking them reads.
            shape = disclosure_view
        result = check_path(path, self.trust, allow_incomplete=self.allow_incomplete,
                            keep_records=keep, select_records=select, shape_records=shape)
        if self.receipts is None:
            if result.report is None:
                return result
            return BundleResult(path, attach_receipt_check(result.report, _NO_WITNESS_KEY))
        return _with_receipt(result, self.receipts, required=self.require_receipt,
                             origin=self.witness_origin)


def _check_all(
    paths: Sequence[str], check: _BundleCheck, args: argparse.Namespace
) -> list[BundleResult]:
    """*check* on every path, in ``--jobs`` processes, with a progress bar on a
    terminal's stderr when there are many (never with ``--json``; stdout is
    untouched)."""
    results: list[BundleResult] = []
    show_bar = not getattr(args, "json", False)
    with Progress(len(paths), sys.stderr, enabled=show_bar) as progress:
        for result in map_in_order(check, paths, args.jobs, warn=_warn):
            results.append(result)
            progress.advance()
    return results


def _check_collected(
    collected: _Collected, check: _BundleCheck, args: argparse.Namespace
) -> tuple[list[BundleResult], list[TraceLink], list[str]]:
    """*check* on every collected bundle, and the segments of each trace linked
    (SPEC §8 step 11), once what a trace's segments lack below its highest one has
    been looked for again (:func:`_late_segments`): the results and links, in the
    order of :func:`_collect`, and the bundle files found on that second look."""
    results = _check_all(collected.bundles, check, args)
    late = _late_segments(collected, results)
    if not late:
        return results, link_results(results), []
    more = collected.adding(late)
    checked = dict(zip(collected.bundles, results, strict=True))
    new = [path for path in more.bundles if path not in checked]
    if check.first_records is not None:
        # A report's page: its share of steps is of every bundle, the late ones too.
        check = dataclasses.replace(check, first_records=steps_shown_of(len(more.bundles)))
    checked.update(zip(new, _check_all(new, check, args), strict=True))
    results = [checked[path] for path in more.bundles]
    return results, link_results(results), new


def _cmd_verify(args: argparse.Namespace) -> int:
    trust = load_trust(args.key, args.trust_root)
    if trust is None:
        raise UsageError("no trusted key: give --key PUB.pem or --trust-root FILE")
    witness_keys = _load_witness_keys(args.witness_key)
    _refuse_receipt_options_without_key(args, witness_keys)
    _refuse_producer_key_as_witness_key(trust, witness_keys)
    collected = _collect(args.paths)
    problems = list(collected.problems)
    # Read first, so that each bundle keeps only the records these disclosures need.
    loaded = _load_disclosure_files(args.disclosures)
    problems += loaded.problems
    check = _BundleCheck(
        trust, args.allow_incomplete, keep_records=False,
        receipts=tuple(witness_keys) if witness_keys else None,
        require_receipt=args.require_receipt, witness_origin=args.witness_origin,
        select_records=DisclosureNeeds.of(loaded.disclosures) if args.disclosures else None,
    )
    results, links, _ = _check_collected(collected, check, args)
    # SPEC §2.5.5: each disclosed value against its commitment in a verified bundle.
    disclosed = _check_disclosed(loaded.disclosures, results)
    problems += _nothing_disclosed(loaded.read, disclosed)
    ok = (
        not problems
        and all(r.verdict is Verdict.OK for r in results)
        and all(link.ok for link in links)
        and all(d.ok for d in disclosed)
    )
    if args.json:
        doc = {
            "bundles": [r.to_json() for r in results],
            "traces": [
                {
                    "traceId": link.trace_id,
                    "producerInstance": link.producer_instance,
                    "segments": list(link.segments),
                    "ok": link.ok,
                    "message": link.message,
                    "remarks": list(link.remarks),
                }
                for link in links
            ],
            "errors": [{"path": path, "reason": reason} for path, reason in problems],
            "ok": ok,
        }
        if args.disclosures:
            doc["disclosures"] = [d.to_json() for d in disclosed]
        # ASCII, with every other character escaped: a file name that is not UTF-8
        # (a lone surrogate here) stays valid JSON, and never fails to print.
        print(json.dumps(doc, indent=2))
        return EXIT_OK if ok else EXIT_FAILED
    for path, reason in problems:
        print(printable(f"FAIL {path}: {reason}"))
    for result in results:
        print(format_result(result, receipts=bool(witness_keys)))
        for line in format_remarks(result):
            print(line)
        if args.verbose:
            for line in (*format_declared(result), *format_checks(result)):
                print(line)
    for link in links:
        if link.worth_reporting:
            print(format_link(link))
    for d in disclosed:
        for line in _disclosure_lines(d):
            print(line)
    return EXIT_OK if ok else EXIT_FAILED


# --------------------------------------------------------------------------- report


@dataclass(frozen=True)
class _DisclosureFiles:
    """What ``--disclosures`` files gave: every disclosure in them, in order; each file
    that could not be used, with why; and the files that were read."""

    disclosures: list[Disclosure]
    problems: list[tuple[str, str]]
    read: list[str]


def _load_disclosure_files(files: Sequence[str]) -> _DisclosureFiles:
    """Every disclosure in *files*, in order.

    A disclosure file is evidence handed over with the bundles, not the command's
    own setting: one that is no regular file, cannot be read, is too long or is
    malformed (SPEC §2.5.4) fails as a malformed bundle does (a ``FAIL`` line, exit
    status 1, the bundles still verified and ``--json`` still printed).  A path that
    cannot be looked up is a mistake in the command, as a missing ``PATH`` is.

    Raises:
        UsageError: a path cannot be looked up.
    """
    loaded = _DisclosureFiles([], [], [])
    for path in files:
        try:
            os.stat(path)
        except OSError as e:
            raise UsageError(f"{path}: cannot read disclosure file ({e.strerror or e})") from e
        except ValueError as e:  # a NUL in the name
            raise UsageError(f"{path}: cannot read disclosure file ({e})") from e
        try:
            opened = load_disclosures(path)
        except OSError as e:
            loaded.problems.append((path, f"cannot read disclosure file ({e.strerror or e})"))
            continue
        except SpanproofError as e:
            reason = str(e)
            loaded.problems.append((path, reason.removeprefix(f"{path}: ")))
            continue
        loaded.disclosures.extend(opened.disclosures)
        loaded.read.append(path)
    return loaded


def _check_disclosed(
    disclosures: Sequence[Disclosure], results: Sequence[BundleResult]
) -> tuple[DisclosureResult, ...]:
    """Check *disclosures* against the bundles that verified."""
    if not disclosures:
        return ()
    return check_disclosures(disclosures, [r.report for r in results if r.report is not None])


def _disclosure_lines(result: DisclosureResult) -> list[str]:
    """The line of one checked disclosure, then a ``  remark:`` line for each thing
    a reader must know of it (its commitment in bundles of several signers)."""
    return [printable(format_disclosure_result(result)),
            *(printable(f"  remark: {remark}") for remark in result.remarks)]


def _nothing_disclosed(
    files: Sequence[str], disclosed: Sequence[DisclosureResult]
) -> list[tuple[str, str]]:
    """A failure for each of *files* when none of them held a disclosure: asked to
    check disclosures, the command must not pass having checked none."""
    if not files or disclosed:
        return []
    return [(path, "holds no disclosures (nothing was checked)") for path in files]


def _evidence_files(bundle: str) -> list[str]:
    """*bundle* and the receipt and disclosure files beside it."""
    if not bundle.endswith(BUNDLE_SUFFIX):
        return [bundle]
    return [bundle, receipt_path(bundle), disclosures_path(bundle)]


def _refuse_overwriting(flag: str, out: str, inputs: Sequence[str]) -> None:
    """Refuse to write *out* when it is one of the *inputs* (the same file, by any
    name): the command would replace evidence it was given, a producer's disclosure
    file most of all (without its salts, commitments can never be opened).

    Raises:
        UsageError: *out* is one of *inputs*.
    """
    try:
        target = os.stat(out)
    except (OSError, ValueError):
        return  # a new file (or one that cannot be written: said when writing it)
    for path in inputs:
        try:
            same = os.path.samestat(target, os.stat(path))
        except (OSError, ValueError):
            continue
        if same:
            raise UsageError(f"{flag} {out}: is {path}, an input of this command; "
                             "not writing over it (choose another file)")


def _through_link(flag: str, out: str) -> str:
    """Where writing *out* puts the file: *out*, or, when it is a symbolic link, the
    file it leads to, so that the link stays and what it names is replaced (as a
    shell's ``>`` writes through a link, a shared folder's report say).

    A link that leads to no file (missing, a loop of links, a directory that cannot
    be searched) is refused, as a dangling ``signing.key`` is: it is someone's choice
    of where the file lives, gone for now, and nothing is written through it.  So is
    a link owned by another user.

    Raises:
        UsageError: *out* is a symbolic link that leads to no file, or that another
            user owns.
    """
    try:
        link = os.lstat(out)
    except (OSError, ValueError):
        return out  # a new file (or one that cannot be written: said when writing it)
    if not stat.S_ISLNK(link.st_mode):
        return out
    if link.st_uid != os.geteuid():
        # Planted in a shared folder by someone else, it would choose which of this
        # user's files is replaced (a private key, say): as the kernel's
        # protected_symlinks does in world-writable folders, only one's own is followed.
        raise UsageError(
            f"{flag} {out}: is a symbolic link owned by another user (uid {link.st_uid}); "
            "nothing is written through it (name the file it leads to, or remove the link)")
    try:
        os.stat(out)
    except OSError as e:
        raise UsageError(
            f"{flag} {out}: is a symbolic link to {os.readlink(out)}, which does not exist "
            f"or cannot be reached ({e.strerror or e}); nothing is written through it "
            "(make the file it names available, or remove the link)") from None
    return os.path.realpath(out)


def _cmd_report(args: argparse.Namespace) -> int:
    trust = load_trust(args.key, args.trust_root)
    if trust is None:
        raise UsageError("no trusted key: give --key PUB.pem or --trust-root FILE")
    witness_keys = _load_witness_keys(args.witness_key)
    _refuse_receipt_options_without_key(args, witness_keys)
    _refuse_producer_key_as_witness_key(trust, witness_keys)
    out: str = args.html
    if os.path.isdir(out):
        raise UsageError(f"{out}: is a directory; --html takes the report file to write")
    target = _through_link("--html", out)
    collected = _collect(args.paths)
    problems = list(collected.problems)
    _refuse_overwriting("--html", out, [
        *(f for path in collected.bundles for f in _evidence_files(path)),
        *args.disclosures, *args.key, *args.trust_root, *args.witness_key,
    ])
    loaded = _load_disclosure_files(args.disclosures)
    problems += loaded.problems
    # Always look for a receipt: without --witness-key the report says one is there
    # but unchecked (a SKIPPED check never changes a verdict).  Every record is
    # verified; of each bundle only the steps the page shows are kept, and the
    # records the disclosures need, wherever they are.
    # A page of many bundles shows fewer steps of each, the page's as a whole bounded.
    steps_shown = steps_shown_of(len(collected.bundles))
    check = _BundleCheck(
        trust, args.allow_incomplete, keep_records=False, receipts=tuple(witness_keys),
        require_receipt=args.require_receipt, witness_origin=args.witness_origin,
        select_records=DisclosureNeeds.of(loaded.disclosures) if args.disclosures else None,
        first_records=steps_shown,
    )
    results, links, late = _check_collected(collected, check, args)
    steps_shown = steps_shown_of(len(results))  # bundles a second look found count too
    _refuse_overwriting("--html", out, [f for path in late for f in _evidence_files(path)])
    disclosed = _check_disclosed(loaded.disclosures, results)
    problems += _nothing_disclosed(loaded.read, disclosed)
    document = render_html(
        [ReportItem(r.path, r.report, r.crash or "") for r in results],
        links=links,
        problems=problems,
        trusted={key.keyid: key.source for key in trust.keys},
        disclosures=disclosed,
        steps_shown=steps_shown,
    )
    # Atomically, readable by its owner only: it shows what the bundles hold and any
    # disclosed values (as ``disclose`` writes them), until its owner shares it.  A
    # symbolic link stays: the file it names is replaced, in that file's directory.
    try:
        write_private_file(target, document.encode("utf-8"))
    except OSError as e:
        raise UsageError(f"{out}: cannot write the report ({e.strerror or e})") from e
    ok = (
        not problems
        and all(r.verdict is Verdict.OK for r in results)
        and all(link.ok for link in links)
        and all(d.ok for d in disclosed)
    )
    for path, reason in problems:
        print(printable(f"FAIL {path}: {reason}"))
    for result in results:
        print(format_result(result, receipts=bool(witness_keys)))
        for line in format_remarks(result):
            print(line)
    for link in links:
        if link.worth_reporting:
            print(format_link(link))
    for d in disclosed:
        for line in _disclosure_lines(d):
            print(line)
    print(printable(f"report written to {out}"))
    return EXIT_OK if ok else EXIT_FAILED


# ----------------------------------------------------------------------------- show


@dataclass
class _Unverified:
    statement: Statement | None
    count: int
    problem: str | None


def _read_unverified(stream: IO[bytes], on_record: RecordObserver, *,
                     bounded: bool = False) -> _Unverified:
    """Parse a bundle for display without checking its signature or chain, passing
    each record to *on_record* as it is read: how many were read, and the problem
    that stopped the reading, if any.

    *bounded* (a bundle nobody vouched for): a statement or record line over
    `LARGE_RECORD_BYTES` is not parsed (one of tiny JSON values takes ~30 times its
    size in memory: a 60 MB line took `show` 1.9 GB), as `verify` parses one only
    once it chains to a signed head."""
    statement: Statement | None = None
    count = 0
    try:
        reader = BundleReader(stream)
        envelope, _header = reader.read_header()
        if bounded and len(envelope.payload) > LARGE_RECORD_BYTES:
            return _Unverified(None, count, _NOT_PARSED.format(
                "its statement", len(envelope.payload), LARGE_RECORD_BYTES))
        try:
            statement = Statement.from_payload(envelope.payload)
        except SpanproofError as e:
            return _Unverified(None, count, cut_message(str(e)))
        for position, raw in reader.records():
            if bounded and len(raw) > LARGE_RECORD_BYTES:
                return _Unverified(statement, count, _NOT_PARSED.format(
                    f"record {position}", len(raw), LARGE_RECORD_BYTES))
            record = loads_canonical(raw, f"record {position}")
            validate_record(record, f"record {position}")
            on_record(record, raw, reader.record_offset)
            count += 1
    except OSError as e:
        return _Unverified(statement, count, f"cannot read: {e.strerror or e}")
    except SpanproofError as e:
        # Cut as a failed check's message is: it may quote a line of 64 MiB.
        return _Unverified(statement, count, cut_message(str(e)))
    return _Unverified(statement, count, None)


_NOT_PARSED = ("{}: its {} bytes, over {}, are not parsed unless the bundle verifies "
               "(give --key or --trust-root)")


def _open_bundle(path: str) -> tuple[IO[bytes] | None, str]:
    """*path* opened, or ``None`` and why it cannot be."""
    try:
        return open_regular(path), ""
    except OSError as e:
        return None, f"cannot read: {e.strerror or e}"


def _print_tree(stored: StoredRecords, paint: Paint, empty: str, count: int | None = None) -> str:
    """Print the tree of the first *count* stored records (all by default), or
    *empty* when there are none; return why it could not be printed whole, or ``""``.
    Each record is read again as its line comes, so none is kept."""
    printed = False
    try:
        for line in stored.tree_lines(paint, count):
            print(line)
            printed = True
    except OSError as e:
        return f"cannot read: {e.strerror or e}"
    except SpanproofError as e:
        return cut_message(str(e))
    if not printed:
        print(empty)
    return ""


def format_header(path: str, statement: Statement | None, *,
                  unverified: bool = False) -> list[str]:
    """The lines above a bundle's tree: what the statement says about the bundle
    (non-printable characters escaped: the path and the statement are not ours),
    each marked ``(unverified)`` when *unverified* (a bundle that failed before its
    statement and records were bound to a key trusted at its sealing time)."""
    lines = [f"bundle    {path}"]
    if statement is None:
        return [printable(line) for line in lines]
    s = statement
    comp = s.completeness
    mark = "(unverified) " if unverified else ""
    claims = [
        ("trace", f"{s.trace_id}  segment {s.segment_index}  records {s.record_count}"),
        ("sealed", f"{s.seal_reason} at {format_time(s.sealed_at)} by {s.producer.name} "
                   f"{s.producer.version} (instance {s.producer.instance})"),
        ("complete", (f"no: {_loss_note(s)}" if comp.lost else "yes, no declared losses")
         + (f"; conflicting span ids: {', '.join(comp.conflicts)}" if comp.conflicts else "")),
        *(("note", note) for note in comp.notes),
    ]
    lines += [f"{label:<10}{mark}{text}" for label, text in claims]
    return [printable(line) for line in lines]


def _source_of(trust: TrustRoot, keyid: str | None) -> str:
    for key in trust.keys:
        if key.keyid == keyid:
            return key.source
    return "?"


def _cmd_show(args: argparse.Namespace) -> int:
    path: str = args.bundle
    _must_exist(path)
    if os.path.isdir(path):
        raise UsageError(f"{path}: is a directory; show takes one bundle file")
    trust = load_trust(args.key, args.trust_root)
    paint = Style.for_stream(sys.stdout).paint
    stream, cannot_open = _open_bundle(path)
    with stream if stream is not None else contextlib.nullcontext():
        if trust is None:
            return _show_unverified(path, stream, cannot_open, paint)
        return _show_verified(path, stream, trust, args.allow_incomplete, paint)


def _show_unverified(
    path: str, stream: IO[bytes] | None, cannot_open: str, paint: Paint
) -> int:
    if stream is None:
        print(f"{paint('FAIL', 'FAIL')} {printable(f'{path}: {cannot_open}')}")
        return EXIT_FAILED
    stored = StoredRecords(stream)
    data = _read_unverified(stream, stored.add, bounded=True)
    if data.statement is None and not data.count:
        print(f"{paint('FAIL', 'FAIL')} {printable(f'{path}: {data.problem}')}")
        return EXIT_FAILED
    for line in format_header(path, data.statement, unverified=True):
        print(line)
    print(f"verdict   {paint('UNVERIFIED', 'UNVERIFIED')} (no --key given): signature and "
          "chain NOT checked; do not rely on this content")
    if data.problem:
        print(f"problem   {paint('error', printable(data.problem))}")
    print()
    failed = _print_tree(stored, paint, "(no records)")
    if failed:
        print(f"problem   {paint('error', printable(failed))}")
    return EXIT_FAILED if data.problem or failed else EXIT_OK


def _show_verified(
    path: str, stream: IO[bytes] | None, trust: TrustRoot, allow_incomplete: bool,
    paint: Paint,
) -> int:
    # The records are noted as they are verified, and read again for the tree.  A
    # file that cannot be opened is reported by check_path, as verify reports it.
    stored = StoredRecords(stream) if stream is not None else None
    result = check_path(path, trust, allow_incomplete=allow_incomplete, stream=stream,
                        on_record=stored.add if stored is not None else None)
    report = result.report
    # Signed, but by a key not valid at its sealing time, or not bound to its records:
    # what the statement claims is marked, as the HTML report marks it.
    unverified = result.verdict is Verdict.FAIL and not records_verified(report)
    for line in format_header(path, report.statement if report else None,
                              unverified=unverified):
        print(line)
    shown = 0
    if report is not None and stored is not None:
        failed = result.verdict is Verdict.FAIL
        shown = unverified_shown(stored.sizes) if failed else len(stored)
    word = paint(result.verdict.value, result.verdict.value)
    if result.verdict is Verdict.OK:
        assert report is not None
        keyid = report.signer_keyid
        print(f"verdict   {word}: verified by key {(keyid or '')[:16]} "
              f"({printable(_source_of(trust, keyid))})")
    elif result.verdict is Verdict.INCOMPLETE:
        print(f"verdict   {word}: {printable(result.reason)} (signature and chain verified)")
    else:
        print(f"verdict   {word}: {paint('error', printable(result.reason))}")
        if shown:
            print(f"          the {shown} record(s) below were read before the failure "
                  f"and are NOT verified (at most the first {UNVERIFIED_RECORDS_KEPT:,} and "
                  f"{UNVERIFIED_BYTES_KEPT >> 20} MiB are shown)")
    if report is not None:
        print(f"checks    {summarize_checks(report.checks)} (SPEC §8; "
              "spanproof verify --verbose lists each)")
        if result.verdict is not Verdict.FAIL:
            for remark in report.remarks:
                print(printable(f"remark    {remark}"))
    print()
    if stored is None or not shown:
        print("(no records to show)")
        return EXIT_OK if result.verdict is Verdict.OK else EXIT_FAILED
    failed_reading = _print_tree(stored, paint, "(no records to show)", shown)
    if failed_reading:
        print(f"problem   {paint('error', printable(failed_reading))}")
        return EXIT_FAILED
    return EXIT_OK if result.verdict is Verdict.OK else EXIT_FAILED


# ------------------------------------------------------------------------- disclose


def _cmd_disclose(args: argparse.Namespace) -> int:
    """Extract the disclosures of some attributes for one reviewer (SPEC §2.5.4)."""
    bundle: str = args.bundle
    # "No such bundle file" for a directory or a named pipe sent the user looking
    # for a typo in a path that exists: say what it is instead.
    _must_exist(bundle)
    if os.path.isdir(bundle):
        raise UsageError(f"{bundle}: is a directory; disclose takes one bundle file")
    try:
        open_regular(bundle).close()  # refused unread when it is not a regular file
    except OSError as e:
        raise UsageError(f"{bundle}: cannot read: {e.strerror or e}") from None
    if not args.attr and not args.attr_exact:
        raise UsageError("name the attributes to disclose: --attr or --attr-exact")
    try:
        source = args.disclosures_file or disclosures_path(bundle)
        wanted = AttributeMatcher(tuple(args.attr), tuple(args.attr_exact))
    except ValueError as e:
        raise UsageError(str(e)) from e
    bad_spans = [s for s in args.span if len(s) != 16 or s.strip("0123456789abcdef")]
    if bad_spans:
        raise UsageError(f"--span {bad_spans[0]}: a span id is 16 lowercase hex digits")
    target = _through_link("--out", args.out)
    _refuse_overwriting("--out", args.out, [*_evidence_files(bundle), source])
    try:
        available = load_disclosures(source, MAX_PRODUCER_DISCLOSURE_FILE_BYTES)
    except OSError as e:
        raise UsageError(f"{source}: cannot read disclosure file ({e.strerror or e})") from e
    except SpanproofError as e:
        raise UsageError(str(e)) from e
    chosen = available.select(wanted, args.span).disclosures
    names: list[tuple[str, Callable[[str], bool]]] = [
        *((a, AttributeMatcher((a,)).matches) for a in args.attr),
        *((a, a.__eq__) for a in args.attr_exact),
    ]
    unmatched = [(a, match) for a, match in names if not any(match(d.key) for d in chosen)]
    # Hand out only disclosures that open this bundle's commitments (not verified
    # here: the reviewer verifies with the producer's key).  Of the records, only
    # those the chosen disclosures need are kept (SPEC §2.5.5 looks at no other).
    needs = DisclosureNeeds.of(chosen)
    needed: list[Mapping[str, Any]] = []
    # Whether the records hold each name no disclosure matched in clear or
    # committed (by its place in *unmatched*): a value in clear has no disclosure.
    in_clear: set[int] = set()
    committed: set[int] = set()

    def keep_needed(record: Mapping[str, Any], raw: bytes, offset: int) -> None:
        if needs(record):
            needed.append(record)
        span = record["span"]
        if not unmatched or (args.span and span["spanId"] not in args.span):
            return
        for key, typed in span["attributes"].items():
            for i, (_, match) in enumerate(unmatched):
                if match(key):
                    (committed if is_committed_value(typed) else in_clear).add(i)

    stream, problem = _open_bundle(bundle)
    if stream is not None:
        with stream:
            problem = _read_unverified(stream, keep_needed).problem or ""
    on_spans = " on the given span(s)" if args.span else ""
    for i, (attr, _) in enumerate(unmatched):
        if i in in_clear and i not in committed:
            print(printable(f"FAIL {bundle}: attribute {attr!r} is in clear in the bundle"
                            f"{on_spans} (not committed): there is nothing to disclose"))
        else:
            print(printable(f"FAIL {bundle}: no disclosure of attribute {attr!r}{on_spans} "
                            f"in {source}"))
    if problem:
        print(printable(f"FAIL {bundle}: {problem}"))
        return EXIT_FAILED
    checked = check_disclosures_in_records(chosen, needed, bundle)
    for result in checked:
        if not result.ok:
            print(format_disclosure_result(result))
    if unmatched or not all(r.ok for r in checked):
        return EXIT_FAILED
    shared = _salts_shared_beyond(chosen, needed)
    if shared:
        for line in _shared_salt_lines(bundle, shared):
            print(printable(line))
        return EXIT_FAILED
    out = DisclosureFile(chosen).to_bytes()
    if len(out) > MAX_DISCLOSURE_FILE_BYTES:
        print(printable(f"FAIL {bundle}: the chosen disclosures take {len(out)} bytes, over the "
                        f"{MAX_DISCLOSURE_FILE_BYTES} a reviewer's verifier reads; choose "
                        "fewer (--attr, --span)"))
        return EXIT_FAILED
    try:
        write_private_file(target, out)  # a symbolic link stays: what it names is replaced
    except OSError as e:
        raise UsageError(f"{args.out}: cannot write ({e.strerror or e})") from e
    spans = len({d.span_id for d in chosen})
    # Each attribute handed out, so that a pattern that matched more than meant shows.
    for d in chosen:
        print(printable(f"disclosed span={d.span_id} {d.key!r}"))
    print(printable(f"wrote {len(chosen)} disclosure(s) on {spans} span(s) to {args.out} "
                    "(mode 0600)"))
    return EXIT_OK


def _salts_shared_beyond(
    chosen: Sequence[Disclosure], records: Sequence[Any]
) -> list[tuple[Disclosure, CommittedAttribute]]:
    """Each commitment of *records* that has the salt of a *chosen* disclosure and is
    not opened by one of them, with that disclosure: a salt reused (SPEC §2.5.2), which
    the chosen file would hand out with the value the other commitment hides."""
    by_salt: dict[str, Disclosure] = {}
    opened: set[tuple[str, str, str, str]] = set()
    for d in chosen:
        by_salt.setdefault(d.salt_digest, d)
        opened.add((d.trace_id, d.span_id, d.key, d.digest))
    return [
        (by_salt[c.salt_digest], c) for c in committed_attributes(records)
        if c.salt_digest in by_salt and (c.trace_id, c.span_id, c.key, c.digest) not in opened
    ]


def _shared_salt_lines(
    bundle: str, shared: Sequence[tuple[Disclosure, CommittedAttribute]]
) -> list[str]:
    d, c = shared[0]
    lines = [
        f"FAIL {bundle}: the salt of {d.key!r} on span {d.span_id} is also the salt of "
        f"{c.key!r} on span {c.span_id} (record {c.seq}), which is not chosen: whoever "
        "gets the file could test guesses of that value (a reused salt, SPEC §2.5.2); "
        "nothing written. Choose both (--attr-exact, --span), or neither"
    ]
    if len(shared) > 1:
        lines.append(f"FAIL {bundle}: {len(shared) - 1} more commitment(s) not chosen "
                     "share a chosen salt")
    return lines


# ------------------------------------------------------------------ producer commands


def _producer(name: str) -> Callable[..., int]:
    """The producer command *name* from ``spanproof.exporter._cli``, imported now."""
    try:
        module = importlib.import_module("spanproof.exporter._cli")
    except ImportError as e:
        raise UsageError(f"'{_PROG} {name}' cannot run: {e}") from e
    return cast(Callable[..., int], getattr(module, name))


def _cmd_keygen(args: argparse.Namespace) -> int:
    return _producer("keygen")(args.out, force=args.force)


def _cmd_demo(args: argparse.Namespace) -> int:
    return _producer("demo")(args.out)


def _cmd_receiver(args: argparse.Namespace) -> int:
    return _producer("receiver")(
        grpc=args.grpc, http=None if args.no_http else args.http, out=args.out, key=args.key,
        select_attributes=args.select_attributes, select_all=args.select_all,
        seal_grace_ms=args.seal_grace_ms, idle_timeout_ms=args.idle_timeout_ms,
        max_records=args.max_records, max_pending_traces=args.max_pending_traces,
        max_message_bytes=args.max_message_bytes, max_backlog_spans=args.max_backlog_spans,
        witness_url=args.witness_url, witness_key=args.witness_key,
        redact_attributes=args.redact_attributes, max_value_bytes=args.max_value_bytes,
        journal_dir=args.journal_dir, sealing_processes=args.sealing_processes,
        tls_cert=args.tls_cert, tls_key=args.tls_key, tls_client_ca=args.tls_client_ca,
    )


# ------------------------------------------------------------------------- parsing


def _add_trust_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--key", action="append", default=[], metavar="PUB.pem",
        help="trust this Ed25519 public key (PEM); repeat for several",
    )
    parser.add_argument(
        "--trust-root", action="append", default=[], metavar="FILE",
        help="trust the keys listed in this trust-root file (with validity windows); repeat "
        "for several",
    )
    parser.add_argument(
        "--allow-incomplete", action="store_true",
        help="accept bundles that declare spans they did not certify",
    )


def _whole_number(text: str) -> int:
    """An integer flag's value, in the ASCII digits 0-9 alone (``int()`` also takes
    ``1_000``, ``+3`` and other scripts' digits)."""
    try:
        return parse_decimal(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be a whole number in the digits 0-9, not {text!r}") from None


def _job_count(text: str) -> int:
    try:
        value = parse_decimal(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1, not {text!r}")
    if value > MAX_JOBS:  # each is a process: thousands would only slow the run down
        raise argparse.ArgumentTypeError(f"must be at most {MAX_JOBS} (worker processes), "
                                         f"not {text!r}")
    return value


def _add_jobs_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--jobs", "-j", type=_job_count, metavar="N",
        help="check bundles in N processes side by side; the output is the same "
             "(default: a run of at least "
             f"{AUTO_MIN_BUNDLES_FORK:,} bundles uses one worker per usable CPU on Linux "
             f"({AUTO_MIN_BUNDLES_SPAWN:,} bundles elsewhere), and a smaller run is "
             f"checked in one process; 1: always one process; at most {MAX_JOBS})",
    )


def build_parser() -> argparse.ArgumentParser:
    """The ``spanproof`` argument parser."""
    parser = _Parser(
        prog=_PROG,
        description="Verify and inspect spanproof evidence bundles: signed, hash-chained "
        "records of OpenTelemetry spans.  Verification is offline and trusts only the keys "
        "you give it.",
        epilog="Exit status: 0 everything verified, 1 something failed, 2 usage error; "
        "'witness' and 'monitor' also exit 3 when the witness cannot be reached (try "
        "again later).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    verify = sub.add_parser(
        "verify", help="verify bundles offline against trusted keys",
        description="Verify bundles (files, or every *.spanproof.json below a directory) "
        "against the trusted keys.  Prints one line per bundle, OK / FAIL / INCOMPLETE, and "
        "a line per trace whose segments were checked together.",
        epilog="Exit status: 0 every bundle verified, 1 any FAIL or INCOMPLETE (malformed "
        "files included), 2 usage error (bad flag, missing path, unusable key file).",
    )
    _add_trust_options(verify)
    _add_jobs_option(verify)
    verify.add_argument(
        "--witness-key", action="append", default=[], metavar="PUB.pem|VKEY",
        help="check each bundle's witness receipt (<name>.receipt.json) against this pinned "
        "witness key (PEM file or verifier key string); repeat for several",
    )
    verify.add_argument("--witness-origin", metavar="NAME",
                        help="fail bundles whose receipt is from a log with another "
                        "origin (needs --witness-key)")
    verify.add_argument("--require-receipt", action="store_true",
                        help="fail bundles without a valid receipt (needs --witness-key)")
    verify.add_argument("--verbose", "-v", action="store_true",
                        help="list every check (PASS / FAIL / SKIPPED) under each bundle")
    verify.add_argument("--json", action="store_true",
                        help="print one machine-readable JSON report instead")
    verify.add_argument("paths", nargs="+", metavar="PATH", help="bundle file or directory")
    verify.add_argument(
        "--disclosures", action="append", default=[], metavar="FILE",
        help="check each disclosed value in FILE (from 'spanproof disclose') against its "
        "commitment in the verified bundles and show it; any mismatch fails; repeat for "
        "several",
    )
    verify.set_defaults(handler=_cmd_verify, subparser=verify)

    disclose = sub.add_parser(
        "disclose", help="extract disclosed attribute values for one reviewer",
        description="Copy the disclosures (values and salts) of the named committed "
        "attributes from the bundle's disclosure file (<name>.disclosures.json beside "
        "<name>.spanproof.json) into FILE, mode 0600, for one reviewer, who checks them "
        "with 'spanproof verify --disclosures FILE'.",
        epilog="Exit status: 0 written, 1 an attribute has no disclosure, a disclosure "
        "does not match the bundle, or a chosen salt also opens a commitment not chosen "
        "(nothing written), 2 usage error.",
    )
    disclose.add_argument("bundle", metavar="BUNDLE", help="bundle file")
    disclose.add_argument("--attr", action="extend", nargs="+", default=[], metavar="NAME",
                          help="attribute keys or glob patterns (customer.*: * any "
                          "characters, ? one)")
    disclose.add_argument("--attr-exact", action="extend", nargs="+", default=[],
                          metavar="KEY", help="attribute keys taken exactly, * and ? included")
    disclose.add_argument("--span", action="extend", nargs="+", default=[], metavar="SPANID",
                          help="only these spans (16 hex digits each)")
    disclose.add_argument("--out", required=True, metavar="FILE",
                          help="the disclosure file to write for the reviewer")
    disclose.add_argument("--disclosures-file", metavar="FILE",
                          help="read the disclosures from FILE instead of the one beside "
                          "the bundle")
    disclose.set_defaults(handler=_cmd_disclose, subparser=disclose)

    show = sub.add_parser(
        "show", help="print a bundle's execution path as a tree",
        description="Print a bundle's spans as a tree (parent/child, kind, status, "
        "duration, GenAI attributes) under a header with the verification verdict.  "
        "Without --key/--trust-root the content is shown UNVERIFIED and the exit status "
        "only says whether it could be read.",
    )
    _add_trust_options(show)
    show.add_argument("bundle", metavar="BUNDLE", help="bundle file")
    show.set_defaults(handler=_cmd_show, subparser=show)

    report = sub.add_parser(
        "report", help="write a self-contained HTML report for reviewers",
        description="Verify bundles exactly as 'verify' does and write one self-contained "
        "HTML file (no scripts, no network) showing, per trace, the verdict with every "
        "check, what ran as a tree and a timeline, completeness and witness receipts.  "
        "Prints the verify lines too.",
        epilog="Exit status: 0 every bundle verified, 1 any FAIL or INCOMPLETE (the report "
        "is still written), 2 usage error.",
    )
    _add_trust_options(report)
    _add_jobs_option(report)
    report.add_argument(
        "--witness-key", action="append", default=[], metavar="PUB.pem|VKEY",
        help="check each bundle's witness receipt against this pinned witness key (PEM "
        "file or verifier key string); repeat for several",
    )
    report.add_argument("--witness-origin", metavar="NAME",
                        help="fail bundles whose receipt is from a log with another "
                        "origin (needs --witness-key)")
    report.add_argument("--require-receipt", action="store_true",
                        help="fail bundles without a valid receipt (needs --witness-key)")
    report.add_argument(
        "--disclosures", action="append", default=[], metavar="FILE",
        help="show the disclosed values in FILE (from 'spanproof disclose') where they "
        "match their commitments; a value that does not match fails the report; repeat "
        "for several",
    )
    report.add_argument("--html", required=True, metavar="OUT.html",
                        help="the HTML file to write")
    report.add_argument("paths", nargs="+", metavar="PATH", help="bundle file or directory")
    report.set_defaults(handler=_cmd_report, subparser=report)

    keygen = sub.add_parser(
        "keygen", help="create an Ed25519 signing key pair for a producer",
        description="Write DIR/signing.key (PKCS#8 PEM, mode 0600) and DIR/signing.pub, "
        "and print the key id.",
    )
    keygen.add_argument("--out", required=True, metavar="DIR", help="directory for the keys")
    keygen.add_argument("--force", action="store_true", help="replace an existing key")
    keygen.set_defaults(handler=_cmd_keygen, subparser=keygen)

    demo = sub.add_parser(
        "demo", help="trace, certify and verify an example support-case agent",
        description="Run the example support-case agent for a few cases under OpenTelemetry "
        "with the spanproof exporter, then verify every bundle written and show each "
        "trace's tree.  The exporter runs on its defaults: the OTEL_EXPORTER_SPANPROOF_* "
        "variables are ignored.",
        epilog="Exit status: 0 every bundle written verified, 1 one did not or the demo "
        "could not run, 2 usage error (an --out it cannot use).",
    )
    demo.add_argument("--out", default="spanproof-demo", metavar="DIR",
                      help="output directory (default: ./spanproof-demo)")
    demo.set_defaults(handler=_cmd_demo, subparser=demo)
    _add_receiver_command(sub)
    _add_witness_commands(sub)
    return parser


def _add_receiver_command(sub: Any) -> None:
    """Register ``receiver``: the OTLP receiver a Collector exports to."""
    env = "OTEL_EXPORTER_SPANPROOF_"
    receiver = sub.add_parser(
        "receiver", help="receive OTLP traces (e.g. from a Collector) and certify them",
        description="Serve OTLP/gRPC and OTLP/HTTP, certify the evidence spans that arrive "
        "into signed bundles, and journal every acknowledged span so a crash loses nothing. "
        f"Flags override the {env}* variables.  SIGTERM/SIGINT seal everything pending.",
        epilog="Exit status: 0 stopped with everything sealed, 1 runtime failure, 2 usage "
        "error.",
    )
    receiver.add_argument("--grpc", default="127.0.0.1:4317", metavar="HOST:PORT",
                          help="OTLP/gRPC address (default 127.0.0.1:4317; port 0: any free)")
    receiver.add_argument("--http", default="127.0.0.1:4318", metavar="HOST:PORT",
                          help="OTLP/HTTP address (default 127.0.0.1:4318; port 0: any free)")
    receiver.add_argument("--no-http", action="store_true", help="serve OTLP/gRPC only")
    receiver.add_argument("--out", metavar="DIR", help=f"bundle directory ({env}OUTPUT_DIR)")
    receiver.add_argument("--key", metavar="KEYFILE",
                          help=f"Ed25519 private key, PKCS#8 PEM ({env}KEY_FILE)")
    receiver.add_argument("--select-attributes", metavar="KEY,...",
                          help=f"attribute keys (and * ? patterns) that make a span "
                          f"evidence, at least one ({env}SELECT_ATTRIBUTES)")
    receiver.add_argument("--select-all", action=argparse.BooleanOptionalAction,
                          help=f"certify every span, or (--no-select-all) only the evidence "
                          f"spans ({env}SELECT_ALL)")
    for flag, var, what in (
        ("--seal-grace-ms", "SEAL_GRACE_MS", "quiet period after a trace's local root arrived"),
        ("--idle-timeout-ms", "IDLE_TIMEOUT_MS", "seal a trace idle this long"),
        ("--max-records", "MAX_RECORDS", "records per bundle"),
        ("--max-pending-traces", "MAX_PENDING_TRACES", "open traces held in memory"),
    ):
        receiver.add_argument(flag, type=_whole_number, metavar="N",
                              help=f"{what} ({env}{var})")
    receiver.add_argument("--max-value-bytes", type=_whole_number, metavar="N",
                          help="largest attribute value certified; a span with a larger one "
                          f"is declared rejected ({env}MAX_VALUE_BYTES)")
    receiver.add_argument("--max-message-bytes", type=_whole_number, metavar="N",
                          help="largest request accepted (default 64 MiB; 1024 bytes to 2 GiB - 1)")
    receiver.add_argument("--max-backlog-spans", type=_whole_number, metavar="N",
                          help="unsealed spans beyond which requests get UNAVAILABLE "
                          "(default 200000)")
    receiver.add_argument("--witness-url", metavar="URL",
                          help=f"submit each bundle to this witness ({env}WITNESS_URL)")
    receiver.add_argument("--witness-key", metavar="PUB.pem|VKEY",
                          help=f"pinned witness key for receipts, a PEM file or verifier key "
                          f"string ({env}WITNESS_KEY)")
    receiver.add_argument("--redact-attributes", metavar="KEY,...",
                          help="commit these span attribute values (names and * ? patterns) "
                          f"instead of storing them, at least one ({env}REDACT_ATTRIBUTES)")
    receiver.add_argument("--journal-dir", metavar="DIR",
                          help="journal directory (default DIR/journal under --out)")
    receiver.add_argument("--sealing-processes", type=_whole_number, default=0, metavar="N",
                          help="worker processes that seal and write bundles while the "
                          "receiver ingests (default 0: all in the receiver's process; at most 64)")
    receiver.add_argument("--tls-cert", metavar="CERT.pem",
                          help="serve TLS on both ports with this certificate chain (PEM; "
                          "with --tls-key)")
    receiver.add_argument("--tls-key", metavar="KEY.pem",
                          help="the TLS certificate's private key (PEM)")
    receiver.add_argument("--tls-client-ca", metavar="CA.pem",
                          help="require client certificates issued by these CAs (mutual "
                          "TLS): only senders holding one can have spans signed")
    receiver.set_defaults(handler=_cmd_receiver, subparser=receiver)


def _add_witness_commands(sub: Any) -> None:
    """Register ``witness ...`` and ``monitor`` from ``spanproof.witness._cli``.

    That module imports only the verifier and ``cryptography`` (the web stack loads
    when ``serve`` runs), so importing it here costs little.  Should it fail to
    import, those commands are left out rather than breaking ``verify``.
    """
    try:
        module = importlib.import_module("spanproof.witness._cli")
        add_commands = cast(Callable[[Any], None], module.add_commands)
    except Exception:  # a broken witness install must not take verify down with it
        _logger.debug("witness commands unavailable", exc_info=True)
        return
    add_commands(sub)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``spanproof`` command line; return the exit status."""
    parser = build_parser()
    try:
        args, extra = parser.parse_known_args(argv)
        if extra:  # name the subcommand in the usage line, not just "spanproof"
            owner = getattr(args, "subparser", None) or parser
            owner.error(f"unrecognized arguments: {' '.join(extra)}")
    except UsageError as e:
        sys.stderr.write(e.usage)
        _error(str(e))
        return EXIT_USAGE
    except SystemExit as e:  # --help and --version
        return e.code if isinstance(e.code, int) else EXIT_OK
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    handler = cast(Callable[[argparse.Namespace], int], args.handler)
    if args.command in ("witness", "monitor"):  # long-running services: show their logs
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        with writing_stdout():
            return handler(args)
    except UsageError as e:
        _error(str(e))
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`| head`): not every result was shown, so not 0;
        # 141 as a shell reports a command a closed pipe stopped (128 + SIGPIPE),
        # not 1, which says a bundle failed.
        return EXIT_PIPE_CLOSED
    except StdoutError as e:
        _error(f"cannot write to standard output: {e}")
        return EXIT_FAILED
    except Exception as e:  # a bug: report it in one line, never a traceback
        _logger.debug("%s %s failed", _PROG, args.command, exc_info=True)
        _error(f"unexpected {type(e).__name__}: {e}")
        return EXIT_FAILED

