"""The execution path of a bundle as a text tree, for humans (``spanproof show``).

Pure: :func:`render_tree` takes parsed records (each already accepted by
:func:`~spanproof.verifier.records.validate_record`) and returns text.  It does not
verify anything; the caller says whether the records were verified.

Each span is one line: its name, then ``[KIND, STATUS, duration]``, then the GenAI
semantic-convention attributes a reviewer looks for (operation, model, tool, token
usage).  Children sit under their parent (by ``parentSpanId``) in start-time order;
a span whose parent is not in the bundle is shown at the top level, marked
``(parent not certified)``.  Span events are listed under their span with ``•``.
Text taken from the bundle is sanitized, so a record cannot send control
sequences to the reviewer's terminal.

:func:`tree_rows` is the layout alone (which span sits where), shared with the HTML
report (:mod:`spanproof.verifier.report`); an optional *paint* function lets
``spanproof show`` colour the parts of a line without changing its text.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ._term import printable
from .values import decode_value, is_committed_value

__all__ = [
    "Paint",
    "TreeRow",
    "describe_span",
    "duration_text",
    "genai_attributes",
    "render_tree",
    "status_text",
    "tree_rows",
    "value_text",
]

#: ``paint(role, text)`` returns *text* styled for its role (``"name"``, ``"ok"``,
#: ``"error"``, ``"note"``, ``"dim"``); it must not change what the text says.
Paint = Callable[[str, str], str]


def _plain(role: str, text: str) -> str:
    return text


# GenAI semantic-convention attributes shown on a span's line, with their labels.
_GENAI_FIELDS = (
    ("gen_ai.operation.name", "operation"),
    ("gen_ai.agent.name", "agent"),
    ("gen_ai.tool.name", "tool"),
    ("gen_ai.usage.input_tokens", "input_tokens"),
    ("gen_ai.usage.output_tokens", "output_tokens"),
)
_REQUEST_MODEL = "gen_ai.request.model"
_RESPONSE_MODEL = "gen_ai.response.model"
_MAX_VALUE_CHARS = 80
_MAX_EVENT_ATTRIBUTES = 6
_MAX_INDENT = 32

_BRANCH, _LAST, _PIPE, _GAP = "├── ", "└── ", "│   ", "    "
_NOT_CERTIFIED = "  (parent not certified)"
_CYCLE = "  (parent cycle: shown here)"


def _clean(text: str, limit: int = 0) -> str:
    """Escape non-printable characters; shorten to *limit* characters when set."""
    out = printable(text)
    if limit and len(out) > limit:
        out = out[: limit - 1] + "…"
    return out


#: How ``show`` prints an attribute whose value is committed and not disclosed.
COMMITTED_TEXT = "<committed>"


def value_text(typed: Mapping[str, Any]) -> str:
    """A typed value (SPEC §2.3) as plain, unsanitized text; ``"<committed>"`` for a
    committed value (SPEC §2.5), ``"?"`` for anything else that is not a typed value."""
    if is_committed_value(typed):
        return COMMITTED_TEXT
    try:
        return _python_text(decode_value(typed))
    except (ValueError, TypeError, AttributeError):
        return "?"


def _shown_value(typed: Mapping[str, Any]) -> str:
    """A typed value for ``key=value`` display."""
    return _shown(value_text(typed))


def _shown(raw: str) -> str:
    """Text for ``key=value`` display: quoted when it holds spaces, then sanitized."""
    if raw == "" or any(ch.isspace() or ch in '="' for ch in raw):
        raw = '"' + raw.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return _clean(raw, _MAX_VALUE_CHARS)


def _python_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, bytes):
        return "0x" + value.hex()
    if value is None:
        return "null"
    if isinstance(value, list):
        return "[" + ",".join(_python_text(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}={_python_text(v)}" for k, v in value.items()) + "}"
    return str(value)


def duration_text(span: Mapping[str, Any]) -> str:
    """A span's duration in milliseconds (``"2.500 ms"``)."""
    nanos = int(span["endTimeUnixNano"]) - int(span["startTimeUnixNano"])
    if nanos < 0:
        return "negative duration"
    return f"{nanos / 1e6:.3f} ms"


def status_text(span: Mapping[str, Any]) -> str:
    """A span's status: ``OK``, ``UNSET``, or ``ERROR: <message>`` (unsanitized)."""
    code = str(span["status"]["code"]).removeprefix("STATUS_CODE_")
    message = str(span["status"]["message"])
    return f"{code}: {message}" if message else code


def genai_attributes(attrs: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The GenAI semantic-convention attributes a reviewer looks for, as ``(label,
    raw text)`` pairs in display order: operation, agent, tool, model (or request and
    response model when they differ), input and output tokens.  The text is not
    sanitized; the caller escapes it for its medium."""
    extras: list[tuple[str, str]] = []
    for key, label in _GENAI_FIELDS[:3]:
        if key in attrs:
            extras.append((label, value_text(attrs[key])))
    request = value_text(attrs[_REQUEST_MODEL]) if _REQUEST_MODEL in attrs else None
    response = value_text(attrs[_RESPONSE_MODEL]) if _RESPONSE_MODEL in attrs else None
    if request is not None and response is not None and request != response:
        extras.append(("request_model", request))
        extras.append(("response_model", response))
    elif request is not None or response is not None:
        extras.append(("model", request or response or ""))
    for key, label in _GENAI_FIELDS[3:]:
        if key in attrs:
            extras.append((label, value_text(attrs[key])))
    return extras


def describe_span(span: Mapping[str, Any], paint: Paint = _plain) -> str:
    """One line describing a CER's ``span`` object (name, kind, status, duration, GenAI).

    Example: ``chat support-classifier-1 [CLIENT, OK, 0.104 ms]  operation=chat
    model=support-classifier-1 input_tokens=52 output_tokens=1``.  *paint* styles
    the name and the status (colour in a terminal) without changing the text.
    """
    kind = str(span["kind"]).removeprefix("SPAN_KIND_")
    status = _clean(status_text(span), 200)
    role = "error" if status.startswith("ERROR") else "ok" if status == "OK" else "dim"
    line = (
        f"{paint('name', _clean(span['name'], 200))} "
        f"[{kind}, {paint(role, status)}, {duration_text(span)}]"
    )
    extras = [f"{label}={_shown(text)}" for label, text in genai_attributes(span["attributes"])]
    return line + ("  " + " ".join(extras) if extras else "")


def _describe_event(event: Mapping[str, Any], paint: Paint = _plain) -> str:
    attrs: Mapping[str, Any] = event["attributes"]
    parts = [
        f"{_clean(key, 60)}={_shown_value(value)}"
        for key, value in list(attrs.items())[:_MAX_EVENT_ATTRIBUTES]
    ]
    if len(attrs) > _MAX_EVENT_ATTRIBUTES:
        parts.append(f"(+{len(attrs) - _MAX_EVENT_ATTRIBUTES} more)")
    head = paint("dim", "• " + _clean(event["name"], 120))
    return head + ("  " + " ".join(parts) if parts else "")


@dataclass(frozen=True)
class TreeRow:
    """Where one span sits in the tree: a row of :func:`tree_rows`.

    ``index`` is the record's position in the list given; ``depth`` its nesting
    level (0 for a top-level span); ``lead`` the box-drawing prefix of its line and
    ``cont`` the prefix its events and children continue with; ``marker`` is
    ``""``, ``"  (parent not certified)"`` or ``"  (parent cycle: shown here)"``.
    """

    index: int
    depth: int
    lead: str
    cont: str
    marker: str
    has_children: bool


def tree_rows(records: Sequence[Mapping[str, Any]]) -> list[TreeRow]:
    """Lay the records' spans out as a tree, in display order (depth first).

    *records* are CERs as parsed from a bundle, in chain order, each already
    accepted by ``validate_record``.  Roots (no parent) and spans whose parent is
    not among the records are top-level trees, in start-time order; children follow
    their parent in start-time order.  Malicious parent cycles cannot loop: each
    record appears exactly once.
    """
    spans = [record["span"] for record in records]
    first_by_id: dict[str, int] = {}
    for i, span in enumerate(spans):
        first_by_id.setdefault(span["spanId"], i)

    def order(i: int) -> tuple[int, int]:
        return int(spans[i]["startTimeUnixNano"]), i

    children: dict[int, list[int]] = {}
    tops: list[tuple[int, str]] = []
    for i, span in enumerate(spans):
        parent_id = span["parentSpanId"]
        if parent_id == "":
            tops.append((i, ""))
            continue
        parent = first_by_id.get(parent_id)
        if parent is None:
            tops.append((i, _NOT_CERTIFIED))
        else:
            children.setdefault(parent, []).append(i)

    rows: list[TreeRow] = []
    shown: set[int] = set()

    def walk(top: int, marker: str) -> None:
        # Iterative depth-first walk: a deep chain of spans must not hit the
        # recursion limit.  Each stack entry: record, its line's lead, the prefix
        # its children and events continue with, and a marker for the line.
        # Past _MAX_INDENT levels the indentation stops growing (a forged bundle
        # could nest thousands of spans) and each line names its depth instead.
        stack: list[tuple[int, str, str, str, int]] = [(top, "", "", marker, 0)]
        while stack:
            i, lead, cont, mark, depth = stack.pop()
            if i in shown:
                continue
            shown.add(i)
            kids = sorted((k for k in children.get(i, ()) if k not in shown), key=order)
            rows.append(TreeRow(i, depth, lead, cont, mark, bool(kids)))
            for n in range(len(kids) - 1, -1, -1):
                last = n == len(kids) - 1
                if depth < _MAX_INDENT:
                    lead_n = cont + (_LAST if last else _BRANCH)
                    cont_n = cont + (_GAP if last else _PIPE)
                else:
                    lead_n = cont + f"└┄ (depth {depth + 1}) "
                    cont_n = cont
                stack.append((kids[n], lead_n, cont_n, "", depth + 1))

    for i, marker in sorted(tops, key=lambda t: order(t[0])):
        walk(i, marker)
    # Whatever is left sits on a parent cycle (only a forged bundle does this).
    for i in sorted(set(range(len(spans))) - shown, key=order):
        if i not in shown:
            walk(i, _CYCLE)
    return rows


def render_tree(records: Sequence[Mapping[str, Any]], paint: Paint = _plain) -> str:
    """Return the records' spans as a box-drawn tree, one line per span and event.

    *records* are CERs as parsed from a bundle, in chain order, each already
    accepted by ``validate_record``; the layout is :func:`tree_rows`.  A span whose
    parent is missing is marked ``(parent not certified)``.  *paint* styles parts
    of each line (see :data:`Paint`).  Returns ``""`` for no records.
    """
    lines: list[str] = []
    for row in tree_rows(records):
        span = records[row.index]["span"]
        mark = paint("note", row.marker) if row.marker else ""
        lines.append(row.lead + describe_span(span, paint) + mark)
        event_lead = row.cont + ("│ " if row.has_children else "  ")
        lines.extend(event_lead + _describe_event(ev, paint) for ev in span["events"])
    return "\n".join(lines)
