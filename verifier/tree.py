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
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .values import decode_value

__all__ = ["describe_span", "render_tree"]

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
    out = "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)
    if limit and len(out) > limit:
        out = out[: limit - 1] + "…"
    return out


def _value_text(typed: Mapping[str, Any]) -> str:
    try:
        return _python_text(decode_value(typed))
    except ValueError:
        return "?"


def _shown_value(typed: Mapping[str, Any]) -> str:
    """A typed value for ``key=value`` display."""
    return _shown(_value_text(typed))


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


def _duration(span: Mapping[str, Any]) -> str:
    nanos = int(span["endTimeUnixNano"]) - int(span["startTimeUnixNano"])
    if nanos < 0:
        return "negative duration"
    return f"{nanos / 1e6:.3f} ms"


def _status(span: Mapping[str, Any]) -> str:
    code = str(span["status"]["code"]).removeprefix("STATUS_CODE_")
    message = str(span["status"]["message"])
    return f"{code}: {message}" if message else code


def describe_span(span: Mapping[str, Any]) -> str:
    """One line describing a CER's ``span`` object (name, kind, status, duration, GenAI).

    Example: ``chat support-classifier-1 [CLIENT, OK, 0.104 ms]  operation=chat
    model=support-classifier-1 input_tokens=52 output_tokens=1``.
    """
    kind = str(span["kind"]).removeprefix("SPAN_KIND_")
    line = f"{_clean(span['name'], 200)} [{kind}, {_clean(_status(span), 200)}, {_duration(span)}]"
    attrs: Mapping[str, Any] = span["attributes"]
    extras: list[str] = []
    for key, label in _GENAI_FIELDS[:3]:
        if key in attrs:
            extras.append(f"{label}={_shown_value(attrs[key])}")
    request = _value_text(attrs[_REQUEST_MODEL]) if _REQUEST_MODEL in attrs else None
    response = _value_text(attrs[_RESPONSE_MODEL]) if _RESPONSE_MODEL in attrs else None
    if request is not None and response is not None and request != response:
        extras.append(f"request_model={_shown(request)}")
        extras.append(f"response_model={_shown(response)}")
    elif request is not None or response is not None:
        extras.append(f"model={_shown(request or response or '')}")
    for key, label in _GENAI_FIELDS[3:]:
        if key in attrs:
            extras.append(f"{label}={_shown_value(attrs[key])}")
    return line + ("  " + " ".join(extras) if extras else "")


def _describe_event(event: Mapping[str, Any]) -> str:
    attrs: Mapping[str, Any] = event["attributes"]
    parts = [
        f"{_clean(key, 60)}={_shown_value(value)}"
        for key, value in list(attrs.items())[:_MAX_EVENT_ATTRIBUTES]
    ]
    if len(attrs) > _MAX_EVENT_ATTRIBUTES:
        parts.append(f"(+{len(attrs) - _MAX_EVENT_ATTRIBUTES} more)")
    return "• " + _clean(event["name"], 120) + ("  " + " ".join(parts) if parts else "")


def render_tree(records: Sequence[Mapping[str, Any]]) -> str:
    """Return the records' spans as a box-drawn tree, one line per span and event.

    *records* are CERs as parsed from a bundle, in chain order, each already
    accepted by ``validate_record``.  Roots (no parent) and spans whose parent is
    not among the records are top-level trees, in start-time order; a span whose
    parent is missing is marked ``(parent not certified)``.  Malicious parent
    cycles cannot loop: each record is shown exactly once.  Returns ``""`` for no
    records.
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

    lines: list[str] = []
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
            lines.append(lead + describe_span(spans[i]) + mark)
            event_lead = cont + ("│ " if kids else "  ")
            lines.extend(event_lead + _describe_event(ev) for ev in spans[i]["events"])
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
    return "\n".join(lines)
