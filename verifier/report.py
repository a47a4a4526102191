"""A self-contained HTML report of verified bundles, for reviewers who are not engineers
(``spanproof report --html``).

Pure: :func:`render_html` takes verification reports (from
:func:`~spanproof.verifier.verify.check_bundle` keeping at least a bundle's first
`STEPS_SHOWN` records, plus the receipt check of SPEC §8 step 10 when one was run)
and returns one HTML document.
It verifies nothing itself and reads no file, clock or network.

The document loads nothing: no scripts, no external styles, fonts or images.  Its
one ``<style>`` block is allowed by hash in a ``Content-Security-Policy`` that
forbids every other resource, so the file can be opened, mailed and archived as is.
Every value taken from a bundle is escaped (bundles are attacker-controlled input):
it can only ever appear as text.

Per trace the report shows the verdict in words, then for each bundle (segment):
whether it was changed, who sealed it, whether anything is missing, the witness
receipt, what ran (the tree of :func:`~spanproof.verifier.tree.tree_rows`), when each
step ran (a timeline), every attribute of every step, and every check with its
SPEC §8 step.  Of a bundle of more than `STEPS_SHOWN` records, the first
`STEPS_SHOWN` steps are shown, and the page says so.  A bundle that failed shows FAIL
and the reason first; records read before a failure of steps 1-8 are marked as not
verified (a bundle that failed only a later step, its witness receipt, shows its
records as the signed ones).  A report that fails names the traces that failed at
the top; a trace that did not fail says, under its own verdict, that the report as a
whole fails.

A committed attribute (SPEC §2.5) is shown as "committed (not disclosed)" with its
digest, or, when a disclosure for it was checked (``check_disclosures``), as the
disclosed value marked verified, or the disclosure marked rejected with the reason.
"""

from __future__ import annotations

import base64
import hashlib
import html
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ._visible import key_text, name_text, visible
from .disclosure import DisclosureResult, format_value
from .keys import format_time
from .statement import Statement
from .tree import (
    duration_text,
    genai_attributes,
    status_text,
    tag_text,
    tree_rows,
    value_text,
)
from .values import COMMITTED_VALUE, is_committed_value
from .verify import (
    UNVERIFIED_BYTES_KEPT,
    UNVERIFIED_RECORDS_KEPT,
    BundleReport,
    Check,
    Status,
    TraceLink,
    Verdict,
)

__all__ = [
    "COMMITTED_NOT_DISCLOSED",
    "STEPS_SHOWN",
    "STEPS_SHOWN_ON_A_PAGE",
    "ReportItem",
    "records_verified",
    "render_html",
    "steps_shown_of",
    "summarize_checks",
]

#: How an attribute whose value is a commitment (not a typed value) is shown.
COMMITTED_NOT_DISCLOSED = "committed (not disclosed)"

#: How many steps of one bundle the report shows in detail (tree, timeline, attribute
#: tables): the first ones, in chain order.  A step takes ~1.4-1.7 KB of HTML with a
#: few GenAI attributes and ~9 KB with 120 short ones, so a bundle's section stays
#: within ~3-18 MB, which a browser opens; every record is still verified, and
#: ``spanproof show`` lists them all.
STEPS_SHOWN = 2000
#: How many steps the whole page shows in detail: of many bundles (a long trace cut
#: into segments, a directory), each shows an equal share, at most
#: :data:`STEPS_SHOWN` (:func:`steps_shown_of`).  The records a page shows are kept
#: in memory until it is written: 50 segments of 2,000 took 1.2 GiB and a 111 MB page.
STEPS_SHOWN_ON_A_PAGE = 20_000


def steps_shown_of(bundles: int) -> int:
    """How many steps of each of *bundles* bundles a page shows in detail."""
    return min(STEPS_SHOWN, STEPS_SHOWN_ON_A_PAGE // max(1, bundles))

_MAX_NAME = 200
# How many failed traces the report's banner names (each linked to its section).
_FAILED_TRACES_NAMED = 20
# How the tree marks a top-level span whose parent is not among its records, and how
# the report says it when only the first steps are shown.
_NOT_CERTIFIED = "(parent not certified)"
_PARENT_NOT_SHOWN = "(parent not among the steps shown)"
_MAX_VALUE = 2000
_TIMELINE_UNITS = 1000
# Checks that answer "was it changed?" (SPEC §8 steps 1-8), in step order.
_INTEGRITY = ("format", "envelope", "signature", "statement", "key-validity", "records",
              "chain", "head")
_TYPE_NAMES = {
    "stringValue": "text",
    "boolValue": "true/false",
    "intValue": "integer",
    "doubleValue": "number",
    "bytesValue": "bytes",
    "arrayValue": "list",
    "kvlistValue": "map",
}


@dataclass(frozen=True)
class ReportItem:
    """One bundle file to show: its path and its verification report.

    ``report`` is ``None`` when checking the file broke unexpectedly; ``problem``
    then says why.  Keep the records in the report (``keep_records=True``) to show
    what ran.
    """

    path: str
    report: BundleReport | None
    problem: str = ""

    @property
    def verdict(self) -> Verdict:
        """The report's verdict; FAIL when there is no report."""
        return self.report.verdict if self.report is not None else Verdict.FAIL

    @property
    def reason(self) -> str:
        """Why it did not verify (``""`` when it did)."""
        if self.report is None:
            return self.problem or "verifier error"
        return self.report.reason


def summarize_checks(checks: Sequence[Check]) -> str:
    """One line counting the checks: ``"9 of 9 checks passed"``, or with failures
    ``"6 passed, 1 FAILED (step 7 chain), 2 skipped"``."""
    passed = sum(c.status is Status.PASS for c in checks)
    failed = [c for c in checks if c.status is Status.FAIL]
    skipped = sum(c.status is Status.SKIPPED for c in checks)
    if not failed and not skipped:
        return f"{passed} of {len(checks)} checks passed"
    parts = [f"{passed} passed"]
    if failed:
        names = ", ".join(f"step {c.step} {c.name}" for c in failed)
        parts.append(f"{len(failed)} FAILED ({names})")
    if skipped:
        parts.append(f"{skipped} skipped")
    return ", ".join(parts)


# Disclosure results by where they apply: (bundle path, record seq, key) for a
# verified disclosure, (trace id, span id, key) for a rejected one.
_Opened = Mapping[tuple[str, str, str], DisclosureResult]


def _index_disclosures(
    results: Sequence[DisclosureResult],
) -> tuple[dict[tuple[str, str, str], DisclosureResult],
           dict[tuple[str, str, str], DisclosureResult]]:
    opened: dict[tuple[str, str, str], DisclosureResult] = {}
    rejected: dict[tuple[str, str, str], DisclosureResult] = {}
    for r in results:
        if r.ok:
            for opening in r.openings:  # every bundle holding the commitment shows it
                opened[(opening.source, str(opening.seq), r.key)] = r
        else:
            rejected.setdefault((r.trace_id, r.span_id, r.key), r)
    return opened, rejected


@dataclass(frozen=True)
class _Disclosed:
    """The disclosure results that apply to one bundle's records."""

    source: str
    opened: _Opened
    rejected: _Opened

    def for_attribute(
        self, record: Mapping[str, Any], key: str
    ) -> DisclosureResult | None:
        span = record["span"]
        return self.opened.get((self.source, str(record["seq"]), key)) or self.rejected.get(
            (span["traceId"], span["spanId"], key)
        )


# ------------------------------------------------------------------------- helpers


def _esc(text: object, limit: int = 0) -> str:
    """Escape *text* for HTML; what a reader cannot see for what it is (characters
    that are not printable or render as nothing, combining marks of text not in NFC:
    :func:`._visible.visible`) is shown as its escape."""
    out = visible(str(text))
    if limit and len(out) > limit:
        out = out[: limit - 1] + f"… ({len(out) - limit + 1} more characters)"
    return html.escape(out, quote=True)


def _verdict_class(verdict: Verdict) -> str:
    return {Verdict.OK: "ok", Verdict.FAIL: "fail", Verdict.INCOMPLETE: "incomplete"}[verdict]


def _badge(verdict: Verdict) -> str:
    cls = _verdict_class(verdict)
    return f'<span class="verdict {cls}" data-verdict="{verdict.value}">{verdict.value}</span>'


def _check(report: BundleReport | None, name: str) -> Check | None:
    if report is None:
        return None
    return next((c for c in report.checks if c.name == name), None)


def records_verified(report: BundleReport | None) -> bool:
    """Whether SPEC §8 steps 1-8 all passed: the statement is signed by a trusted key
    and every record is bound to its signed head, whatever a later step found."""
    return all(
        (c := _check(report, name)) is not None and c.status is Status.PASS
        for name in _INTEGRITY
    )


def _loss_words(statement: Statement) -> str:
    comp = statement.completeness
    parts = [
        f"{n} {what}"
        for n, what in (
            (comp.dropped_spans, "step(s) dropped before they could be certified"),
            (comp.rejected_spans, "step(s) rejected: not certifiable"),
            (comp.unsampled_spans, "step(s) removed by sampling"),
        )
        if n
    ]
    return ", ".join(parts)


def _file_name(path: str) -> str:
    return path.replace("\\", "/").rsplit("/", 1)[-1]


# --------------------------------------------------------------------------- style

_CSS = "\n".join(
    [
        ":root{color-scheme:light;--ok:#0a7a33;--fail:#b00020;--warn:#9a6700;"
        "--line:#d0d7de;--soft:#f6f8fa;--text:#1f2328;--muted:#59636e}",
        "body{font:15px/1.5 system-ui,-apple-system,'Segoe UI',sans-serif;color:var(--text);"
        "margin:0 auto;max-width:1100px;padding:24px}",
        "h1{font-size:26px;margin:0 0 4px}h2{font-size:21px;margin:32px 0 8px}"
        "h3{font-size:17px;margin:20px 0 6px}h4{font-size:15px;margin:18px 0 4px}",
        "code,.mono,.lead{font-family:ui-monospace,'SFMono-Regular',Menlo,Consolas,monospace;"
        "font-size:13px}",
        ".muted{color:var(--muted)}",
        ".verdict{display:inline-block;font-weight:700;padding:1px 10px;border-radius:4px;"
        "color:#fff;letter-spacing:.04em}",
        ".verdict.ok{background:var(--ok)}.verdict.fail{background:var(--fail)}"
        ".verdict.incomplete{background:var(--warn)}",
        ".banner{border:2px solid var(--line);border-radius:8px;padding:12px 16px;margin:10px 0;"
        "font-size:16px}",
        ".banner.ok{border-color:var(--ok);background:#eefbf1}"
        ".banner.fail{border-color:var(--fail);background:#fff0f1}"
        ".banner.incomplete{border-color:var(--warn);background:#fff8e5}",
        ".banner .verdict{font-size:20px;margin-right:10px}",
        ".reason{font-weight:600}",
        "section.trace{border-top:3px solid var(--line);margin-top:28px}",
        "article.bundle{border:1px solid var(--line);border-radius:8px;padding:4px 18px 14px;"
        "margin:16px 0}",
        ".unverified{border:2px dashed var(--fail);padding:6px 12px;border-radius:6px;"
        "color:var(--fail);font-weight:600}",
        "ul.tree{list-style:none;padding:0;margin:6px 0}",
        "ul.tree li{white-space:pre-wrap;padding:1px 0}",
        ".step-name{font-weight:600}",
        ".tag{display:inline-block;border:1px solid var(--line);border-radius:10px;"
        "padding:0 7px;margin-left:4px;font-size:12px;background:var(--soft)}",
        ".tag.error{border-color:var(--fail);color:var(--fail)}",
        ".tag.ok{border-color:var(--ok);color:var(--ok)}",
        ".tag.warn{border-color:var(--warn);color:var(--warn)}",
        ".genai{color:#3b4a9e}",
        ".note{color:var(--warn);font-style:italic}",
        ".event{color:var(--muted)}",
        "table{border-collapse:collapse;width:100%;margin:6px 0}",
        "th,td{border-bottom:1px solid var(--line);padding:4px 8px;text-align:left;"
        "vertical-align:top}",
        "th{background:var(--soft);font-weight:600}",
        # Keys and names as they are: "a  b" and "a b" must not read alike.
        "th,code,h4{white-space:pre-wrap}",
        "td.value,td.disclosed{white-space:pre-wrap;overflow-wrap:anywhere}",
        "td.status-PASS{color:var(--ok);font-weight:700}"
        "td.status-FAIL{color:var(--fail);font-weight:700}"
        "td.status-SKIPPED{color:var(--muted)}",
        "tr.check-FAIL{background:#fff0f1}",
        "td.bar{width:45%}svg.bar{width:100%;height:14px;display:block;background:var(--soft)}",
        "rect.s-ok{fill:#2da44e}rect.s-error{fill:var(--fail)}rect.s-unset{fill:#8c959f}",
        ".committed{color:var(--warn);font-style:italic}",
        "details{margin:8px 0}summary{cursor:pointer;font-weight:600}",
        "dl.facts{display:grid;grid-template-columns:max-content 1fr;gap:2px 14px;margin:4px 0}",
        "dl.facts dt{color:var(--muted)}dl.facts dd{margin:0}",
        "@media print{details{display:block}article.bundle{break-inside:avoid-page}}",
    ]
)
_CSS_HASH = base64.b64encode(hashlib.sha256(_CSS.encode("utf-8")).digest()).decode("ascii")
# Nothing may load: no script, image, font, frame, connection or form target.  The
# one inline style block is allowed by its hash (CSP level 2), not by 'unsafe-inline'.
_CSP = (
    "default-src 'none'; "
    f"style-src 'sha256-{_CSS_HASH}'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


# ------------------------------------------------------------------------ sections


def _trace_verdict(
    items: Sequence[ReportItem], link: TraceLink | None, refused: Sequence[DisclosureResult]
) -> Verdict:
    """FAIL when a bundle failed, the segments do not link (SPEC §8 step 11) or a
    disclosure for the trace was rejected (SPEC §2.5.5): each fails the report."""
    verdicts = {item.verdict for item in items}
    if Verdict.FAIL in verdicts or (link is not None and not link.ok) or refused:
        return Verdict.FAIL
    if Verdict.INCOMPLETE in verdicts:
        return Verdict.INCOMPLETE
    return Verdict.OK


def _verdict_sentence(item: ReportItem) -> str:
    report = item.report
    stmt = report.statement if report is not None else None
    if item.verdict is Verdict.OK and report is not None and stmt is not None:
        return (
            f"Verified. These {stmt.record_count} records are exactly what the holder of "
            f"the trusted key <code>{_esc((report.signer_keyid or '')[:16])}</code> sealed: "
            "nothing was edited, removed, added or reordered since."
        )
    if item.verdict is Verdict.INCOMPLETE and stmt is not None:
        return (
            "Verified but INCOMPLETE. The signature and the chain are intact, but the "
            f"producer declared that {_esc(_loss_words(stmt))}. "
            "(<code>--allow-incomplete</code> accepts declared losses.)"
        )
    return (
        f'Verification FAILED: <span class="reason">{_esc(item.reason)}</span>. '
        "Do not rely on this bundle."
    )


def _changed_answer(item: ReportItem) -> str:
    report = item.report
    if report is None:
        return f"Could not be checked: {_esc(item.reason)}."
    for name in _INTEGRITY:
        check = _check(report, name)
        if check is None or check.status is not Status.FAIL:
            continue
        msg = _esc(check.message)
        if name in ("format", "envelope"):
            return f"<strong>Cannot tell:</strong> the file is not a readable bundle ({msg})."
        if name in ("signature", "key-validity"):
            return (
                "<strong>Cannot tell:</strong> the bundle is not signed by a key you "
                f"trust ({msg}), so its content could have been written by anyone."
            )
        if name == "statement":
            return f"<strong>Cannot tell:</strong> the signed statement is malformed ({msg})."
        return (
            "<strong>Yes.</strong> The records do not match what was signed: "
            f"{msg}."
        )
    if all(
        (c := _check(report, name)) is not None and c.status is Status.PASS for name in _INTEGRITY
    ):
        return (
            "<strong>No.</strong> A trusted key signed the hash of the last record, and every "
            "record carries the hash of the one before it, so any edit, removal, insertion "
            "or reordering would have been detected."
        )
    return "Not fully checked: see every check below."


def _sealed_facts(item: ReportItem, trusted: Mapping[str, str]) -> str:
    report = item.report
    stmt = report.statement if report is not None else None
    if report is None or stmt is None:
        return '<p class="muted">Unknown: the signed statement could not be read.</p>'
    keyid = report.signer_keyid or ""
    source = trusted.get(keyid, "")
    rows = [
        ("Signed by key", f"<code>{_esc(keyid[:16])}</code>"
         + (f' <span class="muted">({_esc(source)})</span>' if source else "")),
        ("Sealed at", f"{_esc(format_time(stmt.sealed_at))} "
         '<span class="muted">(the producer\'s own clock)</span>'),
        ("Why sealed", _esc(stmt.seal_reason)),
        ("Producer", f"{_esc(stmt.producer.name)} {_esc(stmt.producer.version)} "
         f'<span class="muted">instance {_esc(stmt.producer.instance)}</span>'),
        ("Segment", f"{stmt.segment_index} (records {stmt.first_seq}"
         f"..{stmt.first_seq + stmt.record_count - 1})" if stmt.record_count
         else f"{stmt.segment_index} (no records)"),
        ("Statement digest", f"<code>{_esc(report.statement_digest or '')}</code>"),
    ]
    body = "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in rows)
    return f'<dl class="facts">{body}</dl>'


def _completeness(item: ReportItem) -> str:
    report = item.report
    stmt = report.statement if report is not None else None
    if stmt is None:
        return '<p class="muted">Unknown: the signed statement could not be read.</p>'
    comp = stmt.completeness
    unverified = item.verdict is Verdict.FAIL and not records_verified(report)
    prefix = "The (unverified) statement says: " if unverified else ""
    lines = []
    if comp.lost:
        lines.append(
            f'<p class="completeness lost">{prefix}<strong>Yes.</strong> The producer '
            f"declared that {_esc(_loss_words(stmt))}.</p>"
        )
    else:
        lines.append(
            f'<p class="completeness">{prefix}<strong>Nothing declared missing.</strong> '
            "The producer declared no dropped, rejected or sampled-out steps. (Steps that "
            "were never traced cannot be declared; see what this report does not prove.)</p>"
        )
    if comp.conflicts:
        ids = ", ".join(f"<code>{_esc(c)}</code>" for c in comp.conflicts)
        lines.append(
            "<p>Conflicting versions: the same step id arrived twice with different "
            f"content, and each version is a separate record: {ids}.</p>"
        )
    if comp.notes:
        # Whole, as ``--json`` and ``show`` give them: a note is not cut (README).
        notes = "".join(f"<li>{_esc(n)}</li>" for n in comp.notes)
        lines.append(f"<p>Producer notes:</p><ul>{notes}</ul>")
    return "".join(lines)


def _receipt(item: ReportItem) -> str:
    check = _check(item.report, "receipt")
    if check is None:
        return (
            '<p class="muted">Not checked: no witness key was given '
            "(<code>--witness-key</code>).</p>"
        )
    msg = _esc(check.message)
    if check.status is Status.PASS:
        return (
            '<p class="receipt" data-status="PASS"><strong>Logged by an independent '
            f"witness.</strong> {msg}.</p>"
        )
    if check.status is Status.FAIL:
        return (
            '<p class="receipt" data-status="FAIL"><strong>The witness receipt did NOT '
            f"verify:</strong> {msg}.</p>"
        )
    return f'<p class="receipt muted" data-status="SKIPPED">Not checked: {msg}.</p>'


def _status_class(span: Mapping[str, Any]) -> str:
    code = str(span["status"]["code"])
    return {"STATUS_CODE_OK": "ok", "STATUS_CODE_ERROR": "error"}.get(code, "unset")


def _genai_tags(record: Mapping[str, Any], disclosed: _Disclosed) -> str:
    # A committed value shows its verified disclosure, or says it is committed,
    # never "?".  Tags name no types, so each value is written as show writes it
    # (tag_text): 412 and "412" read the same, and so did a committed value and the
    # string "committed (not disclosed)", which is now quoted (it holds spaces).
    attrs: dict[str, Any] = {}
    for key, value in record["span"]["attributes"].items():
        if is_committed_value(value):
            result = disclosed.for_attribute(record, key)
            if result is not None and result.ok:
                value = result.value
        attrs[key] = value
    return "".join(
        f'<span class="tag genai" data-field="{_esc(label)}">{_esc(label)}: '
        f"{_esc(text, _MAX_NAME)}</span>"
        for label, text in genai_attributes(attrs, _tag_text)
    )


def _tag_text(typed: Mapping[str, Any]) -> str:
    return COMMITTED_NOT_DISCLOSED if is_committed_value(typed) else tag_text(typed)


def _tree(records: Sequence[Mapping[str, Any]], disclosed: _Disclosed, capped: bool) -> str:
    out = ['<ul class="tree">']
    for row in tree_rows(records):
        span = records[row.index]["span"]
        status = _status_class(span)
        kind = str(span["kind"]).removeprefix("SPAN_KIND_")
        marker = row.marker.strip()
        if capped and marker == _NOT_CERTIFIED:
            # Its parent may be a later record of the bundle, verified but not shown.
            marker = _PARENT_NOT_SHOWN
        note = f' <span class="note">{_esc(marker)}</span>' if marker else ""
        out.append(
            f'<li class="step" data-span-id="{_esc(span["spanId"])}">'
            f'<span class="lead">{_esc(row.lead)}</span>'
            f'<span class="step-name">{_esc(span["name"], _MAX_NAME)}</span>'
            f'<span class="tag kind">{_esc(kind)}</span>'
            f'<span class="tag {status}">{_esc(status_text(span), _MAX_NAME)}</span>'
            f'<span class="tag">{_esc(duration_text(span))}</span>'
            f"{_genai_tags(records[row.index], disclosed)}{note}</li>"
        )
        lead = row.cont + ("│ " if row.has_children else "  ")
        for event in span["events"]:
            out.append(
                f'<li class="event"><span class="lead">{_esc(lead)}</span>'
                f"• event {_esc(name_text(event['name']), _MAX_NAME)}</li>"
            )
    out.append("</ul>")
    return "".join(out)


def _timeline(records: Sequence[Mapping[str, Any]]) -> str:
    rows = tree_rows(records)
    spans = [records[row.index]["span"] for row in rows]
    starts = [int(s["startTimeUnixNano"]) for s in spans]
    ends = [int(s["endTimeUnixNano"]) for s in spans]
    t0 = min(starts)
    total = max(max(ends) - t0, 1)
    out = [
        '<table class="timeline"><thead><tr><th>Step</th><th>Started after</th>'
        "<th>Took</th><th>Status</th><th>Time line</th></tr></thead><tbody>"
    ]
    for row, span, start, end in zip(rows, spans, starts, ends, strict=True):
        x = (start - t0) * _TIMELINE_UNITS // total
        width = max((end - start) * _TIMELINE_UNITS // total, 2) if end >= start else 0
        width = min(width, _TIMELINE_UNITS - x) if x < _TIMELINE_UNITS else 0
        status = _status_class(span)
        indent = "· " * min(row.depth, 12)
        out.append(
            f'<tr class="timeline-step"><td><span class="muted">{indent}</span>'
            f"{_esc(span['name'], _MAX_NAME)}</td>"
            f"<td>{(start - t0) / 1e6:.3f} ms</td><td>{_esc(duration_text(span))}</td>"
            f"<td>{_esc(status_text(span), _MAX_NAME)}</td>"
            f'<td class="bar"><svg class="bar" viewBox="0 0 {_TIMELINE_UNITS} 10" '
            'preserveAspectRatio="none" role="img" aria-label="time span">'
            f'<rect class="s-{status}" x="{x}" y="0" width="{width}" height="10"/></svg></td>'
            "</tr>"
        )
    out.append("</tbody></table>")
    return "".join(out)


def _value_cell(value: Any, result: DisclosureResult | None = None) -> str:
    if is_committed_value(value):
        body = value[COMMITTED_VALUE]
        digest = body.get("digest", "") if isinstance(body, dict) else ""
        commitment = f' <code class="muted">commitment {_esc(digest)}</code>' if digest else ""
        if result is not None and result.ok:
            return (
                '<td class="disclosed" data-disclosure="PASS">'
                f"{_esc(format_value(result.value, _MAX_VALUE))}"
                ' <span class="tag ok">disclosed, matches its commitment</span>'
                + "".join(f'<br><span class="tag warn">{_esc(remark, _MAX_VALUE)}</span>'
                          for remark in result.remarks)
                + "</td><td>committed</td>"
            )
        if result is not None:
            return (
                f'<td class="committed" data-disclosure="FAIL">{COMMITTED_NOT_DISCLOSED}'
                '<br><span class="tag error">disclosure REJECTED</span> '
                f"{_esc(result.message, _MAX_VALUE)}{commitment}</td><td>committed</td>"
            )
        return (
            f'<td class="committed">{COMMITTED_NOT_DISCLOSED}{commitment}</td>'
            "<td>committed</td>"
        )
    if not isinstance(value, dict):
        return f'<td class="value">{_esc(value, _MAX_VALUE)}</td><td>?</td>'
    kind = next(iter(value), "")
    type_name = _TYPE_NAMES.get(kind, "empty" if not value else "?")
    # White space as it is (pre-wrap): "a  b" and "a b" must not read alike.
    return f'<td class="value">{_esc(value_text(value), _MAX_VALUE)}</td><td>{type_name}</td>'


def _details(records: Sequence[Mapping[str, Any]], disclosed: _Disclosed) -> str:
    out = []
    for row in tree_rows(records):
        record = records[row.index]
        span = record["span"]
        attrs: Mapping[str, Any] = span["attributes"]
        rows = "".join(
            f"<tr><th>{_esc(key_text(key), _MAX_NAME)}</th>"
            f"{_value_cell(value, disclosed.for_attribute(record, key))}</tr>"
            for key, value in sorted(attrs.items())
        )
        for event in span["events"]:
            for key, value in sorted(event["attributes"].items()):
                # Name and key each quoted where they hold a ":" (name_text,
                # key_text): event "check: decision": x is not event check: "decision: x".
                rows += (
                    f"<tr><th>event {_esc(name_text(event['name']), _MAX_NAME)}: "
                    f"{_esc(key_text(key), _MAX_NAME)}</th>{_value_cell(value)}</tr>"
                )
        if not rows:
            rows = '<tr><td colspan="3" class="muted">no attributes</td></tr>'
        out.append(
            f'<h4 class="mono">{_esc(name_text(span["name"]), _MAX_NAME)} '
            f'<span class="muted">record {_esc(record["seq"])}, step id '
            f"{_esc(span['spanId'])}</span></h4>"
            "<table><thead><tr><th>Attribute</th><th>Value</th><th>Type</th></tr></thead>"
            f"<tbody>{rows}</tbody></table>"
        )
    return "".join(out)


def _checks_table(item: ReportItem) -> str:
    if item.report is None:
        return f'<p class="reason">{_esc(item.reason)}</p>'
    rows = "".join(
        f'<tr class="check check-{c.status.value}" data-check="{_esc(c.name)}">'
        f"<td>{c.step}</td><td>{_esc(c.name)}</td>"
        f'<td class="status-{c.status.value}">{c.status.value}</td>'
        f"<td>{_esc(c.message, _MAX_VALUE)}</td></tr>"
        for c in item.report.checks
    )
    return (
        f"<p>{_esc(summarize_checks(item.report.checks))}.</p>"
        '<table class="checks"><thead><tr><th>SPEC §8 step</th><th>Check</th>'
        f"<th>Result</th><th>Details</th></tr></thead><tbody>{rows}</tbody></table>"
    )


def _shown_note(item: ReportItem, shown: int, total: int) -> str:
    """That only the first *shown* of the bundle's *total* verified steps are shown,
    and how to list them all."""
    stmt = item.report.statement if item.report is not None else None
    first = stmt.first_seq if stmt is not None else 0
    shown_part = (f"Showing the first {shown:,} of {total:,} steps</strong> (records "
                  f"{first}..{first + shown - 1})" if shown else
                  f"None of its {total:,} steps is shown</strong> (the page shows "
                  f"{STEPS_SHOWN_ON_A_PAGE:,} in all, shared among its bundles)")
    return (
        f'<p class="shown" data-shown="{shown}" data-total="{total}"><strong>{shown_part}'
        f": every one of the {total:,} was verified, but a page showing them all would be "
        "too large to open. <code>spanproof show --key PUB.pem "
        f"{_esc(shlex.quote(item.path))}</code> lists them all.</p>"
    )


def _bundle(item: ReportItem, trusted: Mapping[str, str], opened: _Opened,
            rejected: _Opened, steps_shown: int) -> str:
    report = item.report
    stmt = report.statement if report is not None else None
    kept = list(report.records or ()) if report is not None else []
    # The first steps in chain order; a caller may keep later records too (those a
    # disclosure needs), which are not shown.
    records = kept[:steps_shown]
    verified = stmt is not None and report is not None and report.records is not None and (
        records_verified(report))
    total = stmt.record_count if stmt is not None and verified else len(kept)
    capped = len(records) < total
    verdict = item.verdict
    cls = _verdict_class(verdict)
    # Disclosures are checked against verified bundles only; a failed one shows none.
    disclosed = _Disclosed(item.path, opened, rejected) if verdict is not Verdict.FAIL else (
        _Disclosed(item.path, {}, {})
    )
    title = _esc(_file_name(item.path))
    if stmt is not None:
        title += f' <span class="muted">segment {stmt.segment_index}</span>'
    parts = [
        f'<article class="bundle" data-verdict="{verdict.value}" data-path="{_esc(item.path)}">',
        f"<h3>Bundle {title}</h3>",
        f'<p class="muted mono">{_esc(item.path)}</p>',
        f'<div class="banner {cls}">{_badge(verdict)}{_verdict_sentence(item)}</div>',
        *(f'<p class="remark note">{_esc(remark, _MAX_VALUE)}</p>'
          for remark in (item.report.remarks if item.report is not None
                         and verdict is not Verdict.FAIL else ())),
        "<h4>Was it changed?</h4>",
        f'<p class="changed">{_changed_answer(item)}</p>',
        "<h4>Who sealed it, and when?</h4>",
        _sealed_facts(item, trusted),
        "<h4>Is anything missing?</h4>",
        _completeness(item),
        "<h4>Independent witness</h4>",
        _receipt(item),
        "<h4>What ran</h4>",
    ]
    if verdict is Verdict.FAIL and records and records_verified(report):
        # Failed at a later step (the witness receipt, step 10): the records are
        # the signed ones, and are not called unverified.
        parts.append(
            f'<p class="unverified">The {len(records)} record(s) below match what was '
            "signed (SPEC §8 steps 1-8 passed), but the bundle FAILED a later check: "
            f"{_esc(item.reason)}. Do not rely on this bundle.</p>"
        )
    elif verdict is Verdict.FAIL:
        if records:
            kept_too = f", the first of {total:,} kept," if capped else ""
            parts.append(
                f'<p class="unverified">NOT VERIFIED: the {len(records)} record(s) below'
                f"{kept_too} were read before the failure. They are shown as found in the file "
                "and may have been altered (of a failed bundle, at most the first "
                f"{UNVERIFIED_RECORDS_KEPT:,} records read and {UNVERIFIED_BYTES_KEPT >> 20} MiB "
                "of them are shown).</p>"
            )
        else:
            parts.append('<p class="muted">No records can be shown: none could be verified '
                         "before the failure.</p>")
    if capped and verified:
        parts.append(_shown_note(item, len(records), total))
    if records:
        parts += [
            _tree(records, disclosed, capped),
            "<h4>When each step ran</h4>",
            _timeline(records),
            "<details><summary>Every attribute of "
            + (f"the first {len(records):,} steps" if capped else "every step")
            + "</summary>",
            _details(records, disclosed),
            "</details>",
        ]
    elif verdict is not Verdict.FAIL and not capped:
        parts.append('<p class="muted">This bundle holds no records.</p>')
    parts += ["<h4>Every check, step by step</h4>", _checks_table(item), "</article>"]
    return "".join(parts)


def _group(items: Sequence[ReportItem]) -> list[tuple[str | None, list[ReportItem]]]:
    groups: dict[str, list[ReportItem]] = {}
    out: list[tuple[str | None, list[ReportItem]]] = []
    for item in items:
        stmt = item.report.statement if item.report is not None else None
        if stmt is None:
            out.append((None, [item]))
            continue
        if stmt.trace_id not in groups:
            groups[stmt.trace_id] = []
            out.append((stmt.trace_id, groups[stmt.trace_id]))
        groups[stmt.trace_id].append(item)
    for _trace, group in out:
        group.sort(key=lambda i: i.report.statement.segment_index
                   if i.report is not None and i.report.statement is not None else 0)
    return out


def _trace_failure(
    items: Sequence[ReportItem], bad_link: TraceLink | None, refused: Sequence[DisclosureResult]
) -> str:
    """Why a trace FAILED, in words that never read as a pass: a bundle's reason, or
    the segments' link, then any rejected disclosure of the trace (SPEC §2.5.5)."""
    failed = next((i for i in items if i.verdict is Verdict.FAIL), None)
    which = ""
    if refused:
        first = refused[0]
        which = (
            f"<code>{_esc(key_text(first.key), _MAX_NAME)}</code> of step "
            f"<code>{_esc(first.span_id)}</code>: "
            f'<span class="reason">{_esc(first.message, _MAX_VALUE)}</span>'
            + (f" (and {len(refused) - 1} more, listed above)" if len(refused) > 1 else "")
        )
    if failed is not None or bad_link is not None:
        reason = failed.reason if failed is not None else (bad_link.message if bad_link else "")
        sentence = f'FAILED: <span class="reason">{_esc(reason)}</span>'
        if which:
            sentence += f". A disclosed value for this trace was rejected too: {which}"
        return sentence
    bundles = "every bundle of this trace verified" + (
        "" if all(i.verdict is Verdict.OK for i in items)
        else " (some declaring steps they did not certify)"
    )
    return (
        f"FAILED: {bundles}, but a disclosed value handed over with them was REJECTED, "
        f"so the trace fails: {which}."
    )


def _trace_section(
    n: int,
    trace_id: str | None,
    items: Sequence[ReportItem],
    links: Sequence[TraceLink],
    trusted: Mapping[str, str],
    opened: _Opened,
    rejected: _Opened,
    refused: Sequence[DisclosureResult],
    steps_shown: int,
    page_fails: bool,
) -> tuple[str, str, Verdict, str]:
    """The section for one trace, its line in the summary list, its verdict and its
    title.

    *refused* are the rejected disclosures of this trace: each makes it FAIL.  When
    *page_fails* and this trace did not fail, the section says that its verdict is
    not the report's, whose banner names the traces that failed.
    """
    trace_links = [link for link in links if link.trace_id == trace_id]
    bad_link = next((link for link in trace_links if not link.ok), None)
    verdict = _trace_verdict(items, bad_link, refused)
    cls = _verdict_class(verdict)
    title = f"Trace <code>{_esc(trace_id)}</code>" if trace_id else (
        f"File <code>{_esc(_file_name(items[0].path))}</code>"
    )
    ok = sum(i.verdict is Verdict.OK for i in items)
    summary = f"{len(items)} bundle(s), {ok} verified"
    if verdict is Verdict.OK:
        sentence = "Every bundle of this trace verified."
    elif verdict is Verdict.INCOMPLETE:
        sentence = "Verified, but the producer declared steps it did not certify."
    else:
        sentence = _trace_failure(items, bad_link, refused)
    parts = [
        f'<section class="trace" id="t{n}" data-verdict="{verdict.value}">',
        f"<h2>{title}</h2>",
        f'<div class="banner {cls} trace-verdict">{_badge(verdict)}{sentence} '
        f'<span class="muted">({summary})</span></div>',
    ]
    if page_fails and verdict is not Verdict.FAIL:
        # True of this trace, and not the verdict of the page: say so where it is read.
        parts.append(
            '<p class="page-verdict reason">This is the verdict of this trace alone: the '
            'report as a whole FAILS (<a href="#summary">the top of the page</a> says '
            "why: which traces failed, or which inputs could not be checked).</p>"
        )
    for link in trace_links:
        if link.worth_reporting:
            word = "form one chain" if link.ok else "do NOT form one chain"
            parts.append(
                f'<p class="link" data-ok="{str(link.ok).lower()}">Segments of producer '
                f"instance <code>{_esc(link.producer_instance)}</code> {word}: "
                f"{_esc(link.message)}</p>"
            )
    parts += [_bundle(item, trusted, opened, rejected, steps_shown) for item in items]
    parts.append("</section>")
    line = (
        f'<li><a href="#t{n}">{_badge(verdict)} {title}</a> '
        f'<span class="muted">{summary}</span></li>'
    )
    return "".join(parts), line, verdict, title


def _disclosure_summary(
    results: Sequence[DisclosureResult], failed: Sequence[DisclosureResult]
) -> str:
    if not results:
        return ""
    ok = len(results) - len(failed)
    rows = "".join(
        f'<li class="disclosure-failed"><code>{_esc(key_text(r.key), _MAX_NAME)}</code> of step '
        f"<code>{_esc(r.span_id)}</code> in trace <code>{_esc(r.trace_id)}</code>: "
        f'<span class="reason">{_esc(r.message, _MAX_VALUE)}</span></li>'
        for r in failed
    )
    # A PASS whose commitment is in bundles of several signers (SPEC §2.5.5).
    remarks = "".join(
        f'<li class="disclosure-remark"><code>{_esc(key_text(r.key), _MAX_NAME)}</code> of step '
        f"<code>{_esc(r.span_id)}</code>: {_esc(remark, _MAX_VALUE)}</li>"
        for r in results if r.ok for remark in r.remarks
    )
    cls = "fail" if failed else "ok"
    verdict = Verdict.FAIL if failed else Verdict.OK
    return (
        f'<div class="banner {cls} disclosures">{_badge(verdict)}Disclosed values: '
        f"{ok} of {len(results)} match their commitments."
        + (f" Rejected:<ul>{rows}</ul>" if rows else "")
        + (f" Note:<ul>{remarks}</ul>" if remarks else "")
        + "</div>"
    )


def _why_failed(
    failed_bundles: int,
    problems: Sequence[tuple[str, str]],
    links: Sequence[TraceLink],
    failed_disclosures: Sequence[DisclosureResult],
    failed_traces: Sequence[tuple[int, str]] = (),
) -> str:
    """Every cause of an overall FAIL, then the traces that failed (their section's
    number and title, the first `_FAILED_TRACES_NAMED` of them linked), so that
    bundles or traces that verified never read as a pass of a report that failed;
    ``""`` when nothing failed."""
    unlinked = len({link.trace_id for link in links if not link.ok})
    causes = [
        f"{n} {what}"
        for n, what in (
            (failed_bundles, "bundle(s) failed"),
            (unlinked, "trace(s) whose segments do not form one chain"),
            (len(failed_disclosures), "disclosed value(s) rejected"),
            (len(problems), "input(s) could not be checked"),
        )
        if n
    ]
    if not causes:
        return ""
    named = ", ".join(f'<a href="#t{n}">{title}</a>'
                      for n, title in failed_traces[:_FAILED_TRACES_NAMED])
    more = len(failed_traces) - _FAILED_TRACES_NAMED
    which = ""
    if failed_traces:
        which = f" Failed: {named}" + (
            f" and {more} more (see Traces below)." if more > 0 else ".")
    return f" The report FAILS: {', '.join(causes)}.{which}"


def render_html(
    items: Sequence[ReportItem],
    *,
    links: Sequence[TraceLink] = (),
    problems: Sequence[tuple[str, str]] = (),
    trusted: Mapping[str, str] | None = None,
    disclosures: Sequence[DisclosureResult] = (),
    title: str = "Evidence report",
    steps_shown: int = STEPS_SHOWN,
) -> str:
    """Return one self-contained HTML document reporting *items*, grouped by trace.

    Args:
        items: the bundles, each with its report (records kept for display).
        links: the segment-linking results of SPEC §8 step 11 (``link_segments``);
            a link that failed makes its trace FAIL.
        problems: paths whose bundles could not be checked, with why (a path
            holding no bundle, a directory that cannot be listed), each shown as a
            failure as ``spanproof verify`` reports them.
        trusted: key id → where that trusted key came from (shown beside the signer).
        disclosures: the results of ``check_disclosures`` for these bundles: a
            verified one shows its value in place of the commitment, a rejected one
            is listed with its reason and makes its trace and the report FAIL.
        title: the document's title.
        steps_shown: how many steps of each bundle to show in detail (tree,
            timeline, attributes): the first ones, in chain order.  A verified
            bundle of more says how many of its steps are shown, and how to list
            them all; a report may hold only those records (and any a disclosure
            needs), as the command line keeps them.

    Every value from a bundle is HTML-escaped.  The result loads no external
    resource and runs no script.  Raises nothing for bad bundle content: records
    are expected to have passed ``validate_record`` (as ``check_bundle`` ensures).
    """
    keys = dict(trusted or {})
    opened, rejected = _index_disclosures(disclosures)
    failed_disclosures = [r for r in disclosures if not r.ok]
    counts = {v: sum(i.verdict is v for i in items) for v in Verdict}
    no_failure = (
        not problems
        and counts[Verdict.FAIL] == 0
        and all(link.ok for link in links)
        and not failed_disclosures
    )
    sections: list[str] = []
    summary: list[str] = []
    failed_traces: list[tuple[int, str]] = []
    for n, (trace_id, group) in enumerate(_group(items)):
        refused = [r for r in failed_disclosures if trace_id and r.trace_id == trace_id]
        section, line, verdict, trace_title = _trace_section(
            n, trace_id, group, links, keys, opened, rejected, refused, steps_shown,
            page_fails=not no_failure)
        sections.append(section)
        summary.append(line)
        if verdict is Verdict.FAIL:
            failed_traces.append((n, trace_title))
    overall = Verdict.FAIL if not no_failure else (
        Verdict.OK if counts[Verdict.OK] == len(items) else Verdict.INCOMPLETE
    )
    problems_html = "".join(
        f'<p class="banner fail">{_badge(Verdict.FAIL)}<code>{_esc(path)}</code>: '
        f"{_esc(why)}.</p>"
        for path, why in problems
    )
    key_list = "".join(
        f"<li><code>{_esc(k[:16])}</code> <span class=\"muted\">{_esc(src)}</span></li>"
        for k, src in keys.items()
    )
    why = _why_failed(counts[Verdict.FAIL], problems, links, failed_disclosures, failed_traces)
    head = (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">'
        '<meta name="referrer" content="no-referrer">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_esc(title)}</title><style>{_CSS}</style></head>"
    )
    body = [
        f'<body data-verdict="{overall.value}"><header id="summary">',
        f"<h1>{_esc(title)}</h1>",
        f'<div class="banner {_verdict_class(overall)} overall">{_badge(overall)}'
        f"{len(items)} bundle(s) checked: {counts[Verdict.OK]} verified, "
        f"{counts[Verdict.FAIL]} failed, {counts[Verdict.INCOMPLETE]} incomplete."
        f"{why}</div>",
        "<p>Each bundle is a signed, hash-chained record of the steps an automated "
        "workflow ran, taken from its tracing. It was checked offline against the trusted "
        "keys below; nothing was fetched from the operator or the network.</p>",
        "<p class=\"muted\">What a verified bundle proves: these records, in this order, are "
        "exactly what the holder of the signing key sealed for this trace. What it does "
        "<strong>not</strong> prove: that a model's output was correct or fair, that the "
        "inputs a step received were true, or that steps which were never traced did not "
        "run.</p>",
        f"<h4>Trusted keys</h4><ul>{key_list or '<li>none</li>'}</ul>",
        problems_html,
        _disclosure_summary(disclosures, failed_disclosures),
        f'<h4>Traces</h4><ul class="summary">{"".join(summary)}</ul>' if summary else "",
        "</header><main>",
        *sections,
        "</main><footer><p class=\"muted\">Made by the spanproof verifier (SPEC §8). "
        "The checks are the numbered steps of the spanproof evidence format.</p>"
        "</footer></body></html>\n",
    ]
    return head + "".join(body)
