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
sequences to the reviewer's terminal, and names and keys are quoted where they could
read as another or as part of the line (a name bringing its own ``[INTERNAL, OK, ...]``,
a key ``amount=5 decision``).

:func:`tree_rows` is the layout alone (which span sits where), shared with the HTML
report (:mod:`spanproof.verifier.report`); an optional *paint* function lets
``spanproof show`` colour the parts of a line without changing its text.
:func:`iter_tree_rows` and :func:`tree_lines` give the same rows and lines one at a
time from :class:`SpanLinks`, a few numbers a span, so that ``show`` lays out a
bundle of any length without keeping its records.
"""

from __future__ import annotations

import json
import re
from array import array
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ._term import printable
from ._visible import is_plain, key_text, name_text, quoted
from .values import decode_value, is_committed_value

__all__ = [
    "Paint",
    "SpanLinks",
    "TreeRow",
    "describe_span",
    "duration_text",
    "genai_attributes",
    "iter_tree_rows",
    "render_tree",
    "status_text",
    "tag_text",
    "tree_lines",
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
    """A typed value (SPEC §2.3) as unsanitized text that no other value has;
    ``"<committed>"`` for a committed value (SPEC §2.5), ``"?"`` for anything else
    that is not a typed value.

    A string is itself, unless a sanitizer would change it (it holds a character that
    is not printable, renders as nothing or, in text not in NFC, combines: see
    :mod:`._visible`), it starts with ``"``, or it starts or ends with white space
    (``"approve "`` looked like ``approve``): then it is its JSON string literal, so
    that an escaped newline and a backslash before an ``n`` read differently.  In an
    array or a map every string and key is a JSON string literal: ``["a","b"]`` and
    ``["a,b"]``, ``[1]`` and ``["1"]`` differ.
    """
    value = _decoded(typed)
    if isinstance(value, _Placeholder):
        return value.text
    if isinstance(value, str):
        plain = is_plain(value) and not value.startswith('"') and value == value.strip()
        return value if plain else _quoted(value)
    return _python_text(value)


def _shown_value(typed: Mapping[str, Any]) -> str:
    """A typed value for ``key=value`` display: a string quoted by :func:`_shown`."""
    value = _decoded(typed)
    if isinstance(value, _Placeholder):
        return value.text
    if isinstance(value, str):
        return _shown(value)
    return _clean(_python_text(value), _MAX_VALUE_CHARS)


@dataclass(frozen=True)
class _Placeholder:
    """What stands for a value that is not shown: committed, or not a typed value."""

    text: str


def _decoded(typed: Mapping[str, Any]) -> Any:
    """*typed*'s value (:func:`~spanproof.verifier.values.decode_value`), or a
    :class:`_Placeholder` for a committed value (SPEC §2.5) or anything else that is
    not a typed value."""
    if is_committed_value(typed):
        return _Placeholder(COMMITTED_TEXT)
    try:
        return decode_value(typed)
    except (ValueError, TypeError, AttributeError):
        return _Placeholder("?")


#: A string that reads as another type's value (:func:`_python_text`): a number,
#: ``true``, ``false``, ``null``, bytes, an array or a map, or a placeholder.
_LOOKS_TYPED = re.compile(r"-?[0-9].*|-?inf|nan|true|false|null|\?|<committed>|0x.*|[\[{].*",
                          re.DOTALL)


def _shown(raw: str) -> str:
    """A string for ``key=value`` display, sanitized: :func:`_unambiguous`, cut."""
    return _clean(_unambiguous(raw), _MAX_VALUE_CHARS)


def _unambiguous(raw: str) -> str:
    """*raw* quoted, its backslashes and quotes escaped, when it is empty, holds white
    space, ``=``, ``"`` or a character a sanitizer would change (:mod:`._visible`), or
    would read as a value of another type; otherwise as it is.  Not sanitized."""
    if (raw == "" or not is_plain(raw) or any(ch.isspace() or ch in '="' for ch in raw)
            or _LOOKS_TYPED.fullmatch(raw)):
        return quoted(raw)
    return raw


def tag_text(typed: Mapping[str, Any]) -> str:
    """A typed value as a label's text (``model: gpt-4``), unsanitized and uncut: as
    ``show`` writes it, so that no two values read the same without naming their
    types: ``412`` and ``"412"``, ``"approve "`` and ``approve``, ``<committed>`` and
    the string ``"<committed>"``."""
    value = _decoded(typed)
    if isinstance(value, _Placeholder):
        return value.text
    if isinstance(value, str):
        return _unambiguous(value)
    return _python_text(value)


def _quoted(text: str) -> str:
    """*text* as a JSON string literal (non-ASCII characters kept)."""
    return json.dumps(text, ensure_ascii=False)


def _python_text(value: Any) -> str:
    """A decoded value other than a top-level string as text; strings inside it
    quoted (:func:`_quoted`)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, bytes):
        return "0x" + value.hex()
    if value is None:
        return "null"
    if isinstance(value, str):
        return _quoted(value)
    if isinstance(value, list):
        return "[" + ",".join(_python_text(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{_quoted(k)}:{_python_text(v)}" for k, v in value.items()) + "}"
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


def genai_attributes(
    attrs: Mapping[str, Any], text: Callable[[Mapping[str, Any]], str] = value_text
) -> list[tuple[str, str]]:
    """The GenAI semantic-convention attributes a reviewer looks for, as ``(label,
    text)`` pairs in display order: operation, agent, tool, model (or request and
    response model when they differ), input and output tokens.  Each value's text is
    *text* of it: by default :func:`value_text`, not sanitized, which the caller
    escapes for its medium."""
    extras: list[tuple[str, str]] = []
    for key, label in _GENAI_FIELDS[:3]:
        if key in attrs:
            extras.append((label, text(attrs[key])))
    request = text(attrs[_REQUEST_MODEL]) if _REQUEST_MODEL in attrs else None
    response = text(attrs[_RESPONSE_MODEL]) if _RESPONSE_MODEL in attrs else None
    if request is not None and response is not None and request != response:
        extras.append(("request_model", request))
        extras.append(("response_model", response))
    elif request is not None or response is not None:
        extras.append(("model", request or response or ""))
    for key, label in _GENAI_FIELDS[3:]:
        if key in attrs:
            extras.append((label, text(attrs[key])))
    return extras


def describe_span(span: Mapping[str, Any], paint: Paint = _plain) -> str:
    """One line describing a CER's ``span`` object (name, kind, status, duration, GenAI).

    Example: ``chat support-classifier-1 [CLIENT, OK, 0.104 ms]  operation=chat
    model=support-classifier-1 input_tokens=52 output_tokens=1``.  The name is
    quoted when it could bring its own status or read as another
    (:func:`~spanproof.verifier._visible.name_text`).  *paint* styles the name and the
    status (colour in a terminal) without changing the text.
    """
    kind = str(span["kind"]).removeprefix("SPAN_KIND_")
    status = _clean(status_text(span), 200)
    role = "error" if status.startswith("ERROR") else "ok" if status == "OK" else "dim"
    line = (
        f"{paint('name', _clean(name_text(span['name']), 200))} "
        f"[{kind}, {paint(role, status)}, {duration_text(span)}]"
    )
    extras = [f"{label}={text}"
              for label, text in genai_attributes(span["attributes"], _shown_value)]
    return line + ("  " + " ".join(extras) if extras else "")


def _describe_event(event: Mapping[str, Any], paint: Paint = _plain) -> str:
    attrs: Mapping[str, Any] = event["attributes"]
    parts = [
        f"{_clean(key_text(key), 60)}={_shown_value(value)}"
        for key, value in list(attrs.items())[:_MAX_EVENT_ATTRIBUTES]
    ]
    if len(attrs) > _MAX_EVENT_ATTRIBUTES:
        parts.append(f"(+{len(attrs) - _MAX_EVENT_ATTRIBUTES} more)")
    head = paint("dim", "• " + _clean(name_text(event["name"]), 120))
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


class SpanLinks:
    """What the tree's layout needs of each span, a few numbers a span, so that a
    bundle of any length can be laid out without keeping its records: the span id,
    the parent span id (0 for none: SPEC §2.1 forbids the all-zero id) and the start
    time, in chain order.  Fill it with :meth:`add`, each span already accepted by
    ``validate_record``.
    """

    __slots__ = ("_parents", "_span_ids", "_starts")

    def __init__(self) -> None:
        self._span_ids = array("Q")
        self._parents = array("Q")
        self._starts = array("Q")

    def add(self, span: Mapping[str, Any]) -> None:
        """Note the next span (a CER's ``span`` object)."""
        parent = span["parentSpanId"]
        self._span_ids.append(int(span["spanId"], 16))
        self._parents.append(int(parent, 16) if parent else 0)
        self._starts.append(int(span["startTimeUnixNano"]))

    def __len__(self) -> int:
        return len(self._span_ids)


def tree_rows(records: Sequence[Mapping[str, Any]]) -> list[TreeRow]:
    """Lay the records' spans out as a tree, in display order (depth first).

    *records* are CERs as parsed from a bundle, in chain order, each already
    accepted by ``validate_record``.  Roots (no parent) and spans whose parent is
    not among the records are top-level trees, in start-time order; children follow
    their parent in start-time order.  Malicious parent cycles cannot loop: each
    record appears exactly once.
    """
    links = SpanLinks()
    for record in records:
        links.add(record["span"])
    return list(iter_tree_rows(links))


def iter_tree_rows(links: SpanLinks, count: int | None = None) -> Iterator[TreeRow]:
    """The rows of :func:`tree_rows` for the first *count* spans of *links* (all of
    them by default), one at a time: what they take beyond *links* is a few numbers
    a span, whatever the records hold."""
    n = len(links) if count is None else min(count, len(links))
    span_ids, parents, starts = links._span_ids, links._parents, links._starts
    first_by_id: dict[int, int] = {}
    for i in range(n):
        first_by_id.setdefault(span_ids[i], i)

    def in_order(spans: Iterable[int]) -> list[int]:
        # By start time, then chain order: *spans* come in chain order, and the
        # sort is stable.
        return sorted(spans, key=starts.__getitem__)

    # Each span's parent as a position (-1: a root, -2: its parent is not certified),
    # then every parent's children as one run of `kids`, from `first_kid[p]` on.
    parent_of = array("q", bytes(8 * n))
    for i in range(n):
        parent_id = parents[i]
        parent_of[i] = -1 if parent_id == 0 else first_by_id.get(parent_id, -2)
    del first_by_id
    tops = array("q", in_order(i for i in range(n) if parent_of[i] < 0))
    not_certified = bytearray(parent_of[i] == -2 for i in tops)
    first_kid = array("q", bytes(8 * (n + 1)))
    for i in range(n):
        if parent_of[i] >= 0:
            first_kid[parent_of[i] + 1] += 1
    for i in range(n):
        first_kid[i + 1] += first_kid[i]
    kids = array("q", bytes(8 * first_kid[n]))
    filled = array("q", first_kid[:n])
    for i in range(n):  # in chain order: each run is in chain order
        p = parent_of[i]
        if p >= 0:
            kids[filled[p]] = i
            filled[p] += 1
    del filled, parent_of
    shown = bytearray(n)

    def walk(top: int, marker: str) -> Iterator[TreeRow]:
        # Iterative depth-first walk: a deep chain of spans must not hit the
        # recursion limit.  Each stack entry: a span's children still to show (in
        # reverse order), the prefix they continue with, and their depth.  Past
        # _MAX_INDENT levels the indentation stops growing (a forged bundle could
        # nest thousands of spans) and each line names its depth instead.
        stack: list[tuple[list[int], str, int]] = [([top], "", 0)]
        while stack:
            pending, cont, depth = stack[-1]
            if not pending:
                stack.pop()
                continue
            i = pending.pop()
            last = not pending
            if shown[i]:
                continue
            shown[i] = 1
            if depth == 0:
                lead, cont_i, mark = "", "", marker
            elif depth <= _MAX_INDENT:
                lead = cont + (_LAST if last else _BRANCH)
                cont_i = cont + (_GAP if last else _PIPE)
                mark = ""
            else:
                lead, cont_i, mark = cont + f"└┄ (depth {depth}) ", cont, ""
            below = in_order(k for k in kids[first_kid[i]:first_kid[i + 1]] if not shown[k])
            below.reverse()
            yield TreeRow(i, depth, lead, cont_i, mark, bool(below))
            if below:
                stack.append((below, cont_i, depth + 1))

    for top, outside in zip(tops, not_certified, strict=True):
        yield from walk(top, _NOT_CERTIFIED if outside else "")
    del tops, not_certified
    # Whatever is left sits on a parent cycle (only a forged bundle does this).
    for i in in_order(i for i in range(n) if not shown[i]):
        if not shown[i]:
            yield from walk(i, _CYCLE)


def render_tree(records: Sequence[Mapping[str, Any]], paint: Paint = _plain) -> str:
    """Return the records' spans as a box-drawn tree, one line per span and event.

    *records* are CERs as parsed from a bundle, in chain order, each already
    accepted by ``validate_record``; the layout is :func:`tree_rows`.  A span whose
    parent is missing is marked ``(parent not certified)``.  *paint* styles parts
    of each line (see :data:`Paint`).  Returns ``""`` for no records.
    """
    spans = [record["span"] for record in records]
    return "\n".join(tree_lines(tree_rows(records), spans.__getitem__, paint))


def tree_lines(
    rows: Iterable[TreeRow], span_at: Callable[[int], Mapping[str, Any]], paint: Paint = _plain
) -> Iterator[str]:
    """The lines of :func:`render_tree`, one at a time, for *rows* (of
    :func:`iter_tree_rows`); ``span_at(index)`` gives the span of the row's record."""
    for row in rows:
        span = span_at(row.index)
        mark = paint("note", row.marker) if row.marker else ""
        yield row.lead + describe_span(span, paint) + mark
        event_lead = row.cont + ("│ " if row.has_children else "  ")
        for ev in span["events"]:
            yield event_lead + _describe_event(ev, paint)
