"""Sealing in child processes: the exporter's opt-in ``sealing_process`` mode.

In one Python process every microsecond the exporter spends normalizing, encoding,
hashing, signing and writing is taken from the application's threads by the GIL.
With ``sealing_process`` on, the exporter keeps only selection on the span
processor's thread and hands each selected span, as a compact tuple of its fields
(:func:`span_fields`), to a child Python process that runs an ordinary in-process
:class:`~spanproof.exporter.SpanproofSpanExporter` over the same settings and key.
The child rebuilds a span-shaped object from the tuple (:class:`FieldSpan`) and
normalizes it with the same :func:`~spanproof.exporter.normalize.span_to_body`, so
the records are the ones the in-process exporter writes (a test compares them).
With ``sealing_process=N`` there are N children (:class:`SealingProcesses`), and
each trace goes to the one its id names (the id modulo N).

Protocol (private to the two processes; both run this module's code): frames of a
4-byte big-endian length and a pickle, parent to child on the child's stdin, replies
on the child's stdout (the child moves ``sys.stdout`` to stderr so nothing else can
write there).  Pickle is safe here: only the parent that started the child writes
to its stdin.  Messages:

* ``("start", settings, key_seed, producer_instance, recover, settled_fd)``:
  answered ``("ready",)``, or ``("error", text)`` when the child cannot start its
  exporter; *recover* is true for the first of the parent's sealing processes, the
  one that finishes what an earlier run left in the output directory; *settled_fd*
  is a file the parent passed, where the child keeps the count of spans it has
  settled (see :meth:`SealingProcess.unsettled`);
* ``("spans", resources, scopes, fields, roots)``: new resource and scope
  definitions (by number), selected spans' fields, and the trace ids of local root
  spans that ended, as builtin values only (:class:`_BuiltinsPickler`); not answered;
* ``("bodies", bodies, rejected, roots)``: already normalized bodies, for a batch
  whose fields could not be pickled so; not answered;
* ``("flush", request, timeout_ms)`` and ``("shutdown", request, timeout_ms)``:
  answered ``("done", request, ok)``; the child exits after shutdown (at once,
  skipping the interpreter's teardown, when everything was sealed and written).

A write the child does not take within its allowance (:data:`_STALL_SECONDS`, plus
:data:`_STALL_SECONDS_PER_BYTE` per byte of the frame) finds it stopped or stuck: a
watch thread kills it, the write fails, and the exporter seals here from then on and
declares what the child held (:meth:`SealingProcess.unsettled`).  After
:meth:`SealingProcesses.close` (shutdown) the child is no longer killed: a write
blocked then is left to finish once it reads again.

End of input (the application exited without shutting the provider down, or was
killed) makes the child seal everything pending, as at shutdown, and exit.  The
child ignores SIGINT (a terminal's Ctrl-C reaches the whole process group; the
parent decides), treats SIGTERM as end of input after the bytes its pipe holds when
the handler runs (:meth:`_ChildInput.end_after_what_is_written`: the frames the
parent wrote before are read and sealed, not lost; nothing more is waited for, so a
parent still writing cannot keep it alive), runs at nice +10, and collects cyclic
garbage rarely (its pending bodies hold no cycles).
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import logging
import mmap
import os
import pickle
import re
import secrets
import select
import signal
import struct
import subprocess
import sys
import tempfile
import termios
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanKind, StatusCode

from spanproof.verifier._gc import collecting_rarely

from ._untraced import own_thread
from .config import ENV_PREFIX

__all__ = ["FieldSpan", "RestartSchedule", "SealingProcess", "SealingProcessError",
           "SealingProcessUnreachable", "SealingProcesses", "span_fields"]

_logger = logging.getLogger(__name__)

_HEADER = struct.Struct(">I")
# The count of spans a child has settled, at the start of the file it shares.
_SETTLED = struct.Struct("<Q")
_START_TIMEOUT = 60.0
#: A write to a child that has not completed after this many seconds, plus
#: :data:`_STALL_SECONDS_PER_BYTE` per byte of its frame, finds a child that stopped
#: reading (stopped by a signal or a debugger, stuck): it is killed, and what it
#: held is declared lost (see :meth:`SealingProcess.unsettled`).  The span
#: processor's default export timeout (``OTEL_BSP_EXPORT_TIMEOUT``) is 30 s too.
_STALL_SECONDS = 30.0
#: A child reads and admits ~50 MB of frames a second on a 2-core machine.
_STALL_SECONDS_PER_BYTE = 1e-6
#: How often a watch thread (start_watch()) looks for a deadline that passed.
_WATCH_INTERVAL = 1.0
#: What a child that SIGTERM ends reads at most of its input when the pipe cannot
#: say how many bytes it holds (a pipe's default capacity on Linux).
_DRAIN_FALLBACK_BYTES = 65536
_BOOT = (
    "import json, sys; sys.path[:] = json.loads(sys.argv[1]); "
    "from spanproof.exporter.{} import {} as main; main()"
)
_KINDS = {kind.value: kind for kind in SpanKind}
_CODES = {code.value: code for code in StatusCode}
_NONE = object()  # send_spans: no resource or scope numbered yet


class SealingProcessError(RuntimeError):
    """The sealing process could not be started or stopped answering."""


# -- span fields ----------------------------------------------------------------


def _plain_attributes(attributes: Any) -> tuple[dict[str, Any] | None, int]:
    """An SDK attribute container as a plain dict (or None) and its dropped count."""
    if attributes is None:
        return None, 0
    raw = getattr(attributes, "_dict", attributes)
    dropped = getattr(attributes, "dropped", 0)
    return dict(raw), dropped if isinstance(dropped, int) else 0


def _events_fields(events: Any) -> tuple[Any, ...]:
    return tuple((event.name, event.timestamp, *_plain_attributes(event.attributes))
                 for event in events)


def _links_fields(links: Any) -> tuple[Any, ...]:
    return tuple(
        (link.context.trace_id, link.context.span_id,
         link.context.trace_state.to_header() if link.context.trace_state else "",
         _plain_attributes(link.attributes)[0], link.dropped_attributes)
        for link in links
    )


def span_fields(span: Any, resource_id: int, scope_id: int) -> tuple[Any, ...]:
    """The fields of an ended SDK span that normalizing reads, as plain values.

    *resource_id* and *scope_id* number the span's resource and scope, which travel
    once per sealing process.  :class:`FieldSpan` turns the tuple back into a
    span-shaped object.
    """
    if type(span) is ReadableSpan:
        return _readable_span_fields(span, resource_id, scope_id)
    ctx = span.get_span_context()
    parent = span.parent
    status = span.status
    bounded = getattr(span, "_attributes", None)
    raw = getattr(bounded, "_dict", bounded)
    attributes = raw if type(raw) is dict else _plain_attributes(span.attributes)[0]
    return (
        ctx.trace_id, ctx.span_id,
        ctx.trace_state.to_header() if ctx.trace_state else "",
        None if parent is None else parent.span_id,
        span.name, span.kind.value, span.start_time, span.end_time,
        status.status_code.value, status.description,
        attributes, span.dropped_attributes,
        _events_fields(span.events), span.dropped_events,
        _links_fields(span.links), span.dropped_links,
        resource_id, scope_id,
    )


def _readable_span_fields(span: ReadableSpan, resource_id: int,
                          scope_id: int) -> tuple[Any, ...]:
    # What the SDK's span processors hand to exporters, read from the fields the
    # properties above return (the same values without the properties' copies and
    # locks: this runs on the span processor's thread for every selected span).
    ctx = span._context
    if ctx is None:
        raise ValueError("span has no valid span context")
    parent = span._parent
    status = span._status
    attributes = span._attributes
    raw = getattr(attributes, "_dict", attributes)
    if type(raw) is not dict:
        raw = dict(raw) if raw else {}
    events = span._events
    links = span._links
    trace_state = ctx.trace_state
    return (
        ctx.trace_id, ctx.span_id, trace_state.to_header() if trace_state else "",
        None if parent is None else parent.span_id,
        span._name, span._kind._value_, span._start_time, span._end_time,
        status._status_code._value_, status._description,
        raw, getattr(attributes, "dropped", 0),
        _events_fields(events) if events else (), getattr(events, "dropped", 0),
        _links_fields(links) if links else (), getattr(links, "dropped", 0),
        resource_id, scope_id,
    )


class _Attributes(dict[str, Any]):
    """A plain attribute dict that also carries the dropped count."""

    dropped = 0


def _attributes(values: Mapping[str, Any] | None, dropped: int) -> _Attributes | None:
    if values is None and not dropped:
        return None
    result = _Attributes(values or {})
    result.dropped = dropped
    return result


class _TraceState(str):
    """A trace state as its W3C header (empty: falsy, like an empty TraceState)."""

    def to_header(self) -> str:
        return str(self)


class _Context:
    __slots__ = ("span_id", "trace_id", "trace_state")

    def __init__(self, trace_id: int, span_id: int, trace_state: str) -> None:
        self.trace_id = trace_id
        self.span_id = span_id
        self.trace_state = _TraceState(trace_state)


class _Status:
    __slots__ = ("description", "status_code")

    def __init__(self, code: int, description: str | None) -> None:
        self.status_code = _CODES.get(code, code)
        self.description = description


class _Event:
    __slots__ = ("attributes", "name", "timestamp")

    def __init__(self, name: str, timestamp: int, values: Any, dropped: int) -> None:
        self.name = name
        self.timestamp = timestamp
        self.attributes = _attributes(values, dropped)


class _Link:
    __slots__ = ("attributes", "context", "dropped_attributes")

    def __init__(self, trace_id: int, span_id: int, trace_state: str, values: Any,
                 dropped: int) -> None:
        self.context = _Context(trace_id, span_id, trace_state)
        self.attributes = values
        self.dropped_attributes = dropped


class _Resource:
    __slots__ = ("attributes", "schema_url")

    def __init__(self, attributes: Mapping[str, Any], schema_url: str) -> None:
        self.attributes = attributes
        self.schema_url = schema_url


class _Scope:
    __slots__ = ("attributes", "name", "schema_url", "version")

    def __init__(self, name: str, version: str | None, schema_url: str | None,
                 values: Any, dropped: int) -> None:
        self.name = name
        self.version = version
        self.schema_url = schema_url
        self.attributes = _attributes(values, dropped)


def resource_fields(resource: Any) -> tuple[Any, ...]:
    """A Resource's fields for :class:`FieldSpan` (sent once per resource)."""
    return dict(resource.attributes), resource.schema_url


def scope_fields(scope: Any) -> tuple[Any, ...] | None:
    """An InstrumentationScope's fields for :class:`FieldSpan` (sent once per scope)."""
    if scope is None:
        return None
    return (scope.name, scope.version, scope.schema_url,
            *_plain_attributes(getattr(scope, "attributes", None)))


class FieldSpan:
    """A span rebuilt from :func:`span_fields`: the attributes and methods
    :func:`~spanproof.exporter.normalize.span_to_body` and the exporter read."""

    __slots__ = (
        "_attributes", "_context", "dropped_attributes", "dropped_events",
        "dropped_links", "end_time", "events", "instrumentation_scope", "kind", "links",
        "name", "parent", "resource", "start_time", "status",
    )

    def __init__(self, fields: Sequence[Any], resource: Any, scope: Any) -> None:
        (trace_id, span_id, trace_state, parent_id, self.name, kind, self.start_time,
         self.end_time, code, description, attributes, self.dropped_attributes, events,
         self.dropped_events, links, self.dropped_links, _, _) = fields
        self._context = _Context(trace_id, span_id, trace_state)
        self.parent = None if parent_id is None else _Context(trace_id, parent_id, "")
        self.kind = _KINDS.get(kind, kind)
        self.status = _Status(code, description)
        self._attributes = attributes
        self.events = [_Event(*event) for event in events]
        self.links = [_Link(*link) for link in links]
        self.resource = resource
        self.instrumentation_scope = scope

    def get_span_context(self) -> _Context:
        """The span's own context (trace id, span id, trace state)."""
        return self._context

    @property
    def attributes(self) -> Mapping[str, Any]:
        """The span's attributes."""
        return self._attributes or {}


class _Numbering:
    """Numbers for resources or scopes, each sent to the child once.

    Equal values share a number (an SDK that makes a new scope object per
    ``get_tracer`` call sends its definition once); a bounded cache by identity
    spares computing the value for every span.  Past ``_VALUE_LIMIT`` values (an
    app making a resource or scope per request), numbering starts again at the next
    frame (:meth:`bound`): the child takes a number's latest definition, sent in the
    frame that first uses it again, so neither process holds every value ever seen.
    """

    _ID_CACHE_LIMIT = 256
    _VALUE_LIMIT = 4096

    def __init__(self, fields: Callable[[Any], Any]) -> None:
        self._fields = fields
        self._by_id: dict[int, tuple[Any, int]] = {}
        self._by_value: dict[Any, int] = {}

    def number(self, obj: Any, new: list[tuple[int, Any]]) -> int:
        """*obj*'s number; a number not sent before is appended to *new* with the
        fields that define it."""
        known = self._by_id.get(id(obj))
        if known is not None and known[0] is obj:
            return known[1]
        fields = self._fields(obj)
        key = _value_key(fields)
        number = self._by_value.get(key)
        if number is None:
            number = len(self._by_value) + 1
            self._by_value[key] = number
            new.append((number, fields))
        if len(self._by_id) >= self._ID_CACHE_LIMIT:
            self._by_id.clear()
        self._by_id[id(obj)] = (obj, number)  # holds obj, so its id() is not reused
        return number

    def bound(self) -> None:
        """Start numbering again when more than ``_VALUE_LIMIT`` values are
        numbered.  Call only between frames: the child defines a frame's new
        numbers before it reads the frame's spans."""
        if len(self._by_value) >= self._VALUE_LIMIT:
            self._by_value.clear()
            self._by_id.clear()

    def forget(self, new: list[tuple[int, Any]]) -> None:
        """Forget the numbers in *new* (a batch that was not sent; always the
        newest numbers, so the next ones reuse them)."""
        numbers = {number for number, _ in new}
        self._by_value = {k: n for k, n in self._by_value.items() if n not in numbers}
        self._by_id = {k: v for k, v in self._by_id.items() if v[1] not in numbers}


def _value_key(fields: Any) -> Any:
    """A hashable key for resource or scope fields: the bytes the child is sent for
    them (:class:`_BuiltinsPickler`), so that two definitions share a number only
    when the child would rebuild the same values.  Python's equality would merge
    ``1``, ``True`` and ``1.0``, or ``0.0`` and ``-0.0``, which are different typed
    values (SPEC §2.3): the spans of one resource or scope would be certified with
    the other's.  Fields that cannot be pickled get a key of their own."""
    if fields is None:
        return None
    buffer = io.BytesIO()
    try:
        _BuiltinsPickler(buffer, protocol=pickle.HIGHEST_PROTOCOL).dump(fields)
    except Exception:
        return object()
    return buffer.getvalue()


# -- child processes -------------------------------------------------------------


def spawn_child(module: str, function: str, *, bufsize: int = -1,
                pass_fds: Sequence[int] = ()) -> subprocess.Popen[bytes]:
    """Start ``python -I`` running ``spanproof.exporter.<module>.<function>()`` with
    this process's import path, requests on its stdin and replies on its stdout
    (and *pass_fds* open, under the same numbers)."""
    # The child takes every setting from this process, never from the variables: it
    # would warn again about a malformed or misspelled one.
    env = {name: value for name, value in os.environ.items()
           if not name.upper().startswith(ENV_PREFIX)}
    # The child is not an instrumented application: no SDK set-up from the
    # environment (opentelemetry-instrument), and never a sealing process of its own.
    env["OTEL_SDK_DISABLED"] = "true"
    # What marks the child's log records on its stderr: a stray line there (a
    # crash's traceback quoting a span's text) is never taken for one.
    mark = secrets.token_hex(8)
    env[_LOG_MARK_VAR] = mark
    with _SPAWNING:  # a fork waits: no copy of the pipes escapes unregistered
        process = subprocess.Popen(
            [sys.executable, "-I", "-c", _BOOT.format(module, function), json.dumps(sys.path)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
            close_fds=True, bufsize=bufsize, pass_fds=tuple(pass_fds),
        )
        assert process.stderr is not None
        # The relay reads the bare descriptor: a forked process closes its copy
        # (_abandon_all_in_child), and a buffered reader's lock, held by the relay
        # thread as the fork came, would never be released in the forked process.
        fd = os.dup(process.stderr.fileno())
        process.stderr.close()
        process.stderr = None
        _RELAYED.add(fd)
    try:
        own_thread(relay_child_log, "spanproof-child-log", (fd, mark)).start()
    except RuntimeError:  # no thread to be had: what the child logs is lost
        _close_relayed(fd)
    return process


def child_replies(label: str) -> io.BufferedWriter:
    """In a child :func:`spawn_child` started: the stream its replies go to (the
    original stdout).  Stray prints go to stderr from now on, and log records go
    there one a line, naming *label*, for :func:`relay_child_log`."""
    out = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_OneLine(label, os.environ.get(_LOG_MARK_VAR, "")))
    logging.basicConfig(handlers=[handler])
    return out


#: The variable that hands a child the mark of its log records.
_LOG_MARK_VAR = "SPANPROOF_CHILD_LOG_MARK"


class _OneLine(logging.Formatter):
    """A child's log record as one line: ``<mark> <level> <logger> [<label>]:
    <message>``, its message's (and traceback's) line feeds and backslashes escaped."""

    def __init__(self, label: str, mark: str) -> None:
        super().__init__(f"{mark} %(levelname)s %(name)s [{label}]: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        return super().format(record).replace("\\", "\\\\").replace("\n", "\\n")


_CHILD_LINE = re.compile(
    r"(DEBUG|INFO|WARNING|ERROR|CRITICAL) (spanproof[\w.]*) (\[[^\]]*\]): (.*)")
_CHILD_OUTPUT_LOGGER = "spanproof.exporter.child"
_LEVELS = {"DEBUG": logging.DEBUG, "INFO": logging.INFO, "WARNING": logging.WARNING,
           "ERROR": logging.ERROR, "CRITICAL": logging.CRITICAL}


#: The descriptors of the children's stderr being relayed: a forked process closes
#: its copies, as it does of the children's other pipes.
_RELAYED: set[int] = set()


def _close_relayed(fd: int) -> None:
    # Under _SPAWNING, which a fork takes: a descriptor closed here, and its number
    # reused, is never closed again by a forked process.
    with _SPAWNING:
        _RELAYED.discard(fd)
        os.close(fd)


def relay_child_log(fd: int, mark: str) -> None:
    """Log, through this process's ``logging``, what a child :func:`spawn_child`
    started writes to its stderr (*fd*, closed at its end): each of its log records
    (a line that begins with *mark*) under its own logger and level, prefixed with
    the child's label (an application's handlers, formatters and alerting see what
    its sealing processes say, as they see the in-process exporter's records), and
    any other line (a stray print, the traceback of a crash) as a WARNING of
    ``spanproof.exporter.child``."""
    held = b""
    try:
        while chunk := os.read(fd, 65536):
            *lines, held = (held + chunk).split(b"\n")
            for line in lines:
                _relay_line(line, mark)
        _relay_line(held, mark)
    finally:
        _close_relayed(fd)


def _relay_line(raw: bytes, mark: str) -> None:
    line = raw.decode("utf-8", "backslashreplace")
    if not line:
        return
    marked = line.startswith(mark + " ")
    match = _CHILD_LINE.fullmatch(line[len(mark) + 1:]) if marked else None
    if match is None:
        logging.getLogger(_CHILD_OUTPUT_LOGGER).warning("%s", line)
        return
    level, name, label, message = match.groups()
    logging.getLogger(name).log(_LEVELS[level], "%s %s", label, _unescape(message))


def _unescape(text: str) -> str:
    """Undo :class:`_OneLine`'s escapes, and only those: what the child's stderr
    wrote as a backslash escape (a character UTF-8 cannot hold) stays one."""
    return re.sub(r"\\([\\n])", lambda m: "\n" if m.group(1) == "n" else "\\", text)


def start_watch(check: Callable[[float], None], name: str) -> threading.Event:
    """Start a daemon thread, named *name*, that calls *check* with the monotonic
    time every :data:`_WATCH_INTERVAL` seconds until the returned event is set: the
    watch that kills a child which keeps the parent waiting past a deadline (the
    parent keeps the deadline, *check* compares it)."""
    stop = threading.Event()

    def watch() -> None:
        while not stop.wait(_WATCH_INTERVAL):
            check(time.monotonic())

    own_thread(watch, name).start()
    return stop


class RestartSchedule:
    """When to start child processes again after they were lost or could not start:
    *first* seconds after a failure, twice as long after each failure that follows,
    up to *longest*, and back to *first* after processes that ran *longest* seconds
    (a child that dies soon after each start is not started every minute)."""

    def __init__(self, first: float, longest: float) -> None:
        self._first = first
        self._longest = longest
        self._wait = first
        self._since: float | None = None
        #: When (``time.monotonic()``) to start them again; None while not due.
        self.due: float | None = None

    def started(self) -> None:
        """They started."""
        self._since = time.monotonic()
        self.due = None

    def failed(self) -> float:
        """They were lost, or could not start: set :attr:`due`; the wait (seconds)."""
        now = time.monotonic()
        if self._since is not None and now - self._since >= self._longest:
            self._wait = self._first
        self._since = None
        wait = self._wait
        self.due = now + wait
        self._wait = min(2 * wait, self._longest)
        return wait


# -- framing ---------------------------------------------------------------------


def _frame(message: Any) -> bytes:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return _HEADER.pack(len(data)) + data


_BUILTIN_TYPES = (dict, str, int, float, tuple, bytes)


class _DistinctString(str):
    """How the child receives a ``str`` subclass with its own ``__eq__`` or
    ``__hash__``: its string data, equal only to itself.  As a plain ``str``, such a
    key and a plain key spelling the same string would merge into one when the
    child's dict is rebuilt (the later value silently kept); kept apart, they reach
    the canonical encoder as two, which refuses the record as it does in the
    application's process (the span is declared rejected)."""

    __slots__ = ()

    def __eq__(self, other: object) -> bool:
        return self is other

    def __ne__(self, other: object) -> bool:
        return self is not other

    def __hash__(self) -> int:
        return id(self)


class _BuiltinsPickler(pickle.Pickler):
    """Pickles span fields as builtin values only, so that the child never has to
    import an application's class (pickle names a class by module and name, and a
    class defined in the application's ``__main__`` does not exist in the child).

    The OpenTelemetry SDK keeps a value that is a subclass of ``str``, ``int``,
    ``float`` or ``bytes`` (a ``str`` Enum, say) as it is.  Each is reduced to the
    builtin value :mod:`~spanproof.exporter.normalize` records for it (a ``str``
    subclass to its string data; one with its own equality to a
    :class:`_DistinctString`), mappings and sequences other than ``dict``,
    ``list`` and ``tuple`` to those; anything else refuses to be pickled, and the
    exporter normalizes that batch itself (the span is declared rejected).
    ``reducer_override`` is not called for exact builtins, so plain fields cost
    nothing more.
    """

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, type) and (obj in _BUILTIN_TYPES or obj is _DistinctString):
            return NotImplemented  # the classes the reductions below name
        # In normalize._typed's order.
        if isinstance(obj, Mapping):
            items = {k if isinstance(k, str) else str(k): v for k, v in obj.items()}
            if len(items) != len(obj):
                # 1 and "1": normalize refuses two keys with one string (the span
                # is rejected), which this dict would hide.
                raise pickle.PicklingError("two keys of a mapping name the same string")
            return dict, (items,)
        if isinstance(obj, str):
            kind = type(obj)
            if kind.__eq__ is not str.__eq__ or kind.__hash__ is not str.__hash__:
                return _DistinctString, (str.__str__(obj),)
            return str, (str.__str__(obj),)
        if isinstance(obj, int):
            return int, (int.__int__(obj),)
        if isinstance(obj, float):
            return float, (float.__float__(obj),)
        if isinstance(obj, (list, tuple)):
            return tuple, (tuple(obj),)
        if isinstance(obj, (bytes, bytearray, memoryview)):
            return bytes, (bytes(memoryview(obj)),)  # the data, not a subclass's __bytes__
        raise pickle.PicklingError(
            f"a value of type {type(obj).__name__} is not handed to the sealing process")


def _spans_frame(message: Any) -> bytes:
    """A frame of span fields (:class:`_BuiltinsPickler`).

    Raises:
        pickle.PicklingError: a value that is not a builtin nor reduces to one.
    """
    buffer = io.BytesIO()
    _BuiltinsPickler(buffer, protocol=pickle.HIGHEST_PROTOCOL).dump(message)
    data = buffer.getvalue()
    return _HEADER.pack(len(data)) + data


def _read_exact(stream: Any, n: int) -> bytes | None:
    chunks = []
    while n:
        data = stream.read(n)
        if not data:
            return None  # end of input (a partial frame too: the writer is gone)
        chunks.append(data)
        n -= len(data)
    return b"".join(chunks)


class _ChildInput:
    """The child's stdin for :func:`_read_frame`, read so that a signal wakes it
    whichever thread the kernel delivered the signal to, and so that SIGTERM ends
    the input after what the pipe holds (:meth:`end_after_what_is_written`).

    A signal with a Python handler (SIGTERM here) interrupts a blocked ``read()``
    only when it lands on the main thread, the one that reads.  Delivered to another
    thread (the sealer's, the writer's), Python only notes it, and its handler would
    wait until the main thread runs again: after the next frame, or the parent's
    exit.  :func:`signal.set_wakeup_fd` makes every such signal write a byte to a
    pipe that :meth:`read` waits on too, so the handler runs at once.  Main thread
    only (as ``set_wakeup_fd``).
    """

    def __init__(self, fd: int) -> None:
        self._fd = fd
        # Once the input is ending: how many more bytes to read (None until then).
        self._left: int | None = None
        self._wakeup, write_end = os.pipe()
        os.set_blocking(self._wakeup, False)
        os.set_blocking(write_end, False)
        signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)

    def end_after_what_is_written(self) -> None:
        """End the input after the bytes the pipe holds now (SIGTERM's handler).

        Those are the frames the parent wrote before the signal: reading them and
        then ending, as when the parent closes the input, lets the child seal their
        spans instead of leaving them unsettled (declared lost by the parent).  Only
        what the pipe holds now is read, never waited for: a parent that goes on
        writing cannot keep the child alive.  A frame the bound cuts is left unread
        (the parent's write of it fails, or its spans are declared lost).
        """
        if self._left is not None:
            return
        try:
            held = struct.unpack("i", fcntl.ioctl(self._fd, termios.FIONREAD,
                                                  b"\0\0\0\0"))[0]
        except OSError:
            held = _DRAIN_FALLBACK_BYTES  # no count: what a non-blocking read finds
        os.set_blocking(self._fd, False)
        self._left = held

    def read(self, n: int) -> bytes:
        """Up to *n* bytes of input (b"" at end of input); a pending signal's
        handler runs while waiting (SIGTERM's ends the input after what the pipe
        holds: :meth:`end_after_what_is_written`)."""
        while True:
            if self._left is not None:
                return self._read_held(n)
            ready, _, _ = select.select([self._fd, self._wakeup], [], [])
            if self._wakeup in ready:
                with contextlib.suppress(BlockingIOError):
                    os.read(self._wakeup, 256)
                # Back in Python code: the eval loop runs the pending handler
                # before the loop looks at _left again.
                continue
            if self._fd in ready:
                return os.read(self._fd, n)

    def _read_held(self, n: int) -> bytes:
        assert self._left is not None
        if self._left <= 0:
            return b""
        try:
            data = os.read(self._fd, min(n, self._left))
        except BlockingIOError:
            return b""  # the count was an upper bound (the fallback)
        self._left -= len(data)
        return data


def _read_frame(stream: Any) -> Any:
    """The next message, or None at end of input."""
    header = _read_exact(stream, _HEADER.size)
    if header is None:
        return None
    data = _read_exact(stream, _HEADER.unpack(header)[0])
    if data is None:
        return None
    # Only the process at the other end of this private pipe writes to it: the
    # parent that started the child, or the child the parent started.
    return pickle.loads(data)  # noqa: S301


# -- parent side -----------------------------------------------------------------


class SealingProcess:
    """The parent's handle on one sealing child process.

    ``send_*`` methods raise :class:`SealingProcessError` once the child is gone;
    the exporter then seals in its own process.  The constructor only starts the
    child; :meth:`wait_ready` waits for its answer (so a group starts its children
    side by side).
    """

    def __init__(self, settings: Mapping[str, Any], key_seed: bytes,
                 producer_instance: str, *, recover: bool = True) -> None:
        # The child counts in this file the spans it has settled; what it leaves
        # unsettled when it dies was lost (unsettled()).  Unnamed, so nothing is left
        # behind.
        self._settled = tempfile.TemporaryFile()
        os.ftruncate(self._settled.fileno(), _SETTLED.size)
        # Unbuffered: select() on the reply pipe sees every byte.  A fork meanwhile
        # waits: its process must not keep copies of pipes not yet registered.
        with _SPAWNING:
            self._proc = spawn_child("_sealing_process", "child_main", bufsize=0,
                                     pass_fds=(self._settled.fileno(),))
            assert self._proc.stdin is not None and self._proc.stdout is not None
            self._stdin = self._proc.stdin
            self._stdout = self._proc.stdout
            _STARTED.add(self)
        self._sent = 0
        #: The trace of the last span sent, where a loss is declared (unsettled()).
        self.last_trace: str | None = None
        self._lock = threading.Lock()
        self._requests = 0
        self._resources = _Numbering(resource_fields)
        self._scopes = _Numbering(scope_fields)
        self._dead = False
        # Set once a shutdown request is written (see _ask_locked).
        self._shutting_down = False
        # Set when close_input() found the process held past its wait (most often a
        # write blocked on the child's full pipe): the holder closes the input once
        # it is done (_release).
        self._close_when_written = False
        # While a write is under way: when it began and when it must be done by
        # (see check_stall()).
        self._writing: tuple[float, float] | None = None
        # Why check_stall() killed the child (None while it has not): the error
        # the write under way then raises.
        self._stalled: str | None = None
        try:
            self._write(("start", dict(settings), key_seed, producer_instance, recover,
                         self._settled.fileno()))
        except SealingProcessError:
            self.kill()
            raise

    def wait_ready(self, deadline: float) -> None:
        """Wait until the child has started its exporter.

        Raises:
            SealingProcessError: it exited, failed, or did not answer by *deadline*
                (``time.monotonic()``); it is killed.
        """
        try:
            reply = self._reply(None, deadline)
        except SealingProcessError:
            self.kill()
            raise
        if reply is None or reply[0] != "ready":
            self.kill()
            detail = "no answer" if reply is None else reply[1]
            raise SealingProcessError(f"the sealing process did not start: {detail}")

    @property
    def pid(self) -> int:
        """The child's process id."""
        return self._proc.pid

    def send_spans(self, spans: Sequence[Any], roots: Sequence[str]) -> None:
        """Hand selected *spans* and ended local roots to the child.

        Blocks while the child's input pipe is full (backpressure).

        Raises:
            SealingProcessError: the child is gone.
        """
        with self._held():
            frame, _ = self._spans_frame_locked(spans, roots)
            self._write_locked(frame)
            self._sent_locked(spans)

    def _spans_frame_locked(
        self, spans: Sequence[Any], roots: Sequence[str]
    ) -> tuple[bytes, tuple[list[tuple[int, Any]], list[tuple[int, Any]]]]:
        """The ``spans`` frame for *spans* and *roots*, and the resource and scope
        numbers it defines (for :meth:`_forget_locked` if it is not sent).  Raises
        what reading or pickling a span raised, defining nothing."""
        resources: list[tuple[int, Any]] = []
        scopes: list[tuple[int, Any]] = []
        fields = []
        # A batch's spans mostly share one resource and a few scopes: number an
        # object again only when it differs from the previous span's.
        resource: Any = _NONE
        scope: Any = _NONE
        self._resources.bound()
        self._scopes.bound()
        try:
            for span in spans:
                if span.resource is not resource:
                    resource = span.resource
                    r = self._resources.number(resource, resources)
                if span.instrumentation_scope is not scope:
                    scope = span.instrumentation_scope
                    s = self._scopes.number(scope, scopes)
                fields.append(span_fields(span, r, s))
            frame = _spans_frame(("spans", resources, scopes, fields, list(roots)))
        except Exception:
            # Nothing is sent: the child must not be assumed to know these.
            self._forget_locked((resources, scopes))
            raise
        return frame, (resources, scopes)

    def _forget_locked(
        self, defined: tuple[list[tuple[int, Any]], list[tuple[int, Any]]]
    ) -> None:
        """Forget the resource and scope numbers a frame that was not sent defined."""
        self._resources.forget(defined[0])
        self._scopes.forget(defined[1])

    def send_bodies(self, bodies: Sequence[tuple[str, dict[str, Any]]],
                    rejected: Sequence[str | None], roots: Sequence[str]) -> None:
        """Hand already normalized bodies to the child (spans whose fields cannot
        be pickled), with the traces of rejected spans (None: unreadable).

        Raises:
            SealingProcessError: the child is gone.
        """
        with self._held():
            self._write_locked(_spans_frame(("bodies", list(bodies), list(rejected),
                                             list(roots))))
            self._sent += len(bodies) + len(rejected)
            named = [trace_id for trace_id in rejected if trace_id is not None]
            if bodies or named:
                self.last_trace = bodies[-1][0] if bodies else named[-1]

    def _sent_locked(self, spans: Sequence[Any]) -> None:
        """Count *spans*, just written to the child."""
        if spans:
            self._sent += len(spans)
            trace_id = spans[-1].get_span_context().trace_id
            if 0 < trace_id < 1 << 128:  # a loss is never declared under trace id zero
                self.last_trace = f"{trace_id:032x}"

    def unsettled(self) -> int:
        """How many of the spans sent to the child it has not settled: sealed into a
        bundle it wrote, or declared in one (rejected or dropped).  Once the child
        is gone, those were lost with it (an identical span sent twice is settled
        once, so this may count more than was lost, never less)."""
        settled: int = _SETTLED.unpack(os.pread(self._settled.fileno(), _SETTLED.size, 0))[0]
        return max(0, self._sent - settled)

    @property
    def exit_code(self) -> int | None:
        """The child's exit code, None while it runs."""
        return self._proc.poll()

    def _ask_locked(self, kind: str, timeout: float) -> int:
        """Send a ``flush`` or ``shutdown`` request (the child's budget: *timeout*
        seconds); its number, for :meth:`_reply`."""
        self._requests += 1
        self._write_locked(_frame((kind, self._requests, int(timeout * 1000))))
        if kind == "shutdown":
            # It reads nothing after this: a later write would be lost unsaid.
            self._shutting_down = True
        return self._requests

    def _write(self, message: Any) -> None:
        with self._held():
            self._write_locked(_frame(message))

    def _write_locked(self, frame: bytes) -> None:
        if self._dead:
            raise SealingProcessError(self._stalled or "the sealing process has exited")
        if self._shutting_down:
            raise SealingProcessError("the sealing process was asked to shut down")
        now = time.monotonic()
        self._writing = (now, now + _STALL_SECONDS + len(frame) * _STALL_SECONDS_PER_BYTE)
        try:
            view = memoryview(frame)
            while view:
                view = view[self._stdin.write(view) or 0:]
        except (OSError, ValueError) as e:
            self._dead = True
            raise SealingProcessError(
                self._stalled or f"the sealing process exited (code {self._proc.poll()})"
            ) from e
        finally:
            self._writing = None

    def check_stall(self, now: float) -> None:
        """Kill the child when a write to it has not completed by its deadline: it
        stopped reading (stopped by a signal or a debugger, stuck), and the write
        would hold ``export()``, and the span processor's thread, until it reads
        again, while the span processor drops what it cannot queue meanwhile (the
        SDK counts those; no bundle declares them).  The write then fails (its
        spans are sealed in this process), and the spans the child held are
        declared lost.  Any thread."""
        writing = self._writing
        if writing is None or now < writing[1] or self._stalled is not None:
            return
        self._stalled = (f"the sealing process {self._proc.pid} did not take a write in "
                        f"{now - writing[0]:.1f} s (stopped, or stuck) and was killed")
        try:
            self._proc.kill()
        except OSError:
            pass

    def _reply(self, request: int | None, deadline: float) -> Any:
        """The reply to *request* (None: the start message); None on timeout."""
        fd = self._stdout.fileno()
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            ready, _, _ = select.select([fd], [], [], remaining)
            if not ready:
                return None
            reply = _read_frame(self._stdout)
            if reply is None:
                self._dead = True
                raise SealingProcessError(
                    f"the sealing process exited (code {self._proc.wait()})")
            if request is None or (reply[0] == "done" and reply[1] == request):
                return reply
            # A late answer to an earlier request that timed out: skip it.

    def close_input(self, timeout: float) -> None:
        """Close the child's input: it seals everything it holds and exits.

        Waits up to *timeout* seconds for the thread holding the process (a write
        under way, a request waiting for its answer).  A write can block for as
        long as the child does not read (stopped, or stuck): then nothing more is
        sent, and the holder closes the input once it is done (or this process's
        exit does); see :attr:`input_blocked`.
        """
        if not self._lock.acquire(timeout=max(0.0, timeout)):
            self._close_when_written = True
            self._dead = True
            if not self._lock.acquire(blocking=False):
                return  # the holder closes it (see _release)
        try:
            self._dead = True
            self._close_stdin()
        finally:
            self._lock.release()

    @contextlib.contextmanager
    def _held(self) -> Iterator[None]:
        """Hold the process (its lock) for a write or a request; see :meth:`_release`."""
        self._lock.acquire()
        try:
            yield
        finally:
            self._release()

    def _release(self) -> None:
        """Release the process, closing its input first when :meth:`close_input`
        could not take it and left that to the holder, whatever the holder did
        (wrote, waited for an answer, or failed before writing)."""
        if self._close_when_written:
            self._close_stdin()
        self._lock.release()

    @property
    def input_blocked(self) -> bool:
        """Whether :meth:`close_input` found the process held past its wait (a write
        blocked on a child that does not read, most often) and left the holder to
        close the input."""
        return self._close_when_written

    def _close_stdin(self) -> None:
        try:
            self._stdin.close()
        except OSError:
            pass

    def wait(self, timeout: float) -> int | None:
        """Wait up to *timeout* seconds for the child to exit; its exit code, or
        None when it is still running."""
        try:
            return self._proc.wait(max(0.0, timeout))
        except subprocess.TimeoutExpired:
            return None

    def kill(self) -> None:
        """Stop the child at once (it loses what it holds)."""
        self._dead = True
        try:
            self._proc.kill()
            self._proc.wait(10)
        except (OSError, subprocess.TimeoutExpired):
            pass

    def abandon(self) -> None:
        """Forget the child without signalling it (in a forked process, where the
        child belongs to the parent that started it).  Closes this process's copies
        of the pipes, so the child still sees end of input when the parent exits."""
        self._dead = True
        for stream in (self._stdin, self._stdout):
            try:
                stream.close()
            except OSError:
                pass


#: Every sealing process this process started (weakly held).  A forked process
#: abandons them all, also those of a group still starting in another thread, which
#: no exporter holds yet: its copies of their pipes would keep them from seeing
#: their input close.  A fork waits while a child is being spawned (_SPAWNING), so
#: no pipe exists unregistered when it happens.  (subprocess does not run these
#: handlers: they are os.fork()'s.)
_STARTED: weakref.WeakSet[SealingProcess] = weakref.WeakSet()
_SPAWNING = threading.RLock()  # reentrant: a fork in a signal handler that interrupted a spawn


def _abandon_all_in_child() -> None:
    for fd in _RELAYED:
        try:
            os.close(fd)
        except OSError:
            pass
    _RELAYED.clear()
    _SPAWNING.release()
    for process in list(_STARTED):
        process.abandon()
    _STARTED.clear()


if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(before=_SPAWNING.acquire, after_in_parent=_SPAWNING.release,
                        after_in_child=_abandon_all_in_child)

#: How long :meth:`SealingProcesses.give_up` waits for a write under way to a process
#: before leaving that write to close the process's input.
_GIVE_UP_WAIT = 1.0


def _shard_settings(settings: Mapping[str, Any], count: int) -> dict[str, Any]:
    """One sealing process's settings when *count* share the traces: each holds
    about 1/count of them, so the memory bounds are shared out."""
    shared = dict(settings)
    for name in ("max_pending_traces", "sealed_trace_memory"):
        if name in shared:
            shared[name] = -(-shared[name] // count)  # rounded up: 0 stays 0
    return shared


class SealingProcesses:
    """The parent's handle on its sealing processes: one, or several that share
    the traces by trace id (every span and root of a trace goes to the same one,
    so each trace's chain stays in one process).

    All run under one producer instance (*producer_instance*, the parent's own
    unless it started them again after losing the first ones); as no two hold the
    same trace, each (trace, instance) chain still has one writer (SPEC §4.4).
    With *recover*, the first alone finishes what an earlier run left in the
    output directory.

    Raises:
        SealingProcessError: a process could not start (all are stopped).
    """

    def __init__(self, settings: Mapping[str, Any], key_seed: bytes,
                 producer_instance: str, count: int = 1, *, recover: bool = True) -> None:
        if count < 1:
            raise ValueError("count must be >= 1")
        shard = _shard_settings(settings, count)
        deadline = time.monotonic() + _START_TIMEOUT
        processes: list[SealingProcess] = []
        try:
            for number in range(count):
                processes.append(SealingProcess(shard, key_seed, producer_instance,
                                                recover=recover and number == 0))
            for process in processes:
                process.wait_ready(deadline)
            self.processes = tuple(processes)
            self._watch_stop = start_watch(self._check_stalls, "spanproof-sealing-watch")
        except BaseException as e:  # (no thread for the watch: RuntimeError)
            for process in processes:
                process.kill()
            if isinstance(e, RuntimeError):
                raise SealingProcessError(f"the sealing process did not start: {e}") from e
            raise
        #: The producer instance the processes seal under.
        self.instance = producer_instance

    def _check_stalls(self, now: float) -> None:
        for process in self.processes:
            process.check_stall(now)

    def _shard(self, trace_id: int) -> int:
        return trace_id % len(self.processes)

    def send_spans(self, spans: Sequence[Any], roots: Sequence[str]) -> None:
        """Hand selected *spans* and ended local roots to the processes holding
        their traces.  Nothing is sent when a span cannot be read or pickled, nor
        to a process that would get neither span nor root.

        Raises:
            SealingProcessUnreachable: a process is gone; the spans and roots it
                was to get are in the exception, the others were delivered.
            Exception: what reading or pickling a span raised (nothing was sent).
        """
        if not spans and not roots:
            return  # an export with nothing for any child: no frame, no wake-up
        if len(self.processes) == 1:
            (process,) = self.processes
            try:
                process.send_spans(spans, roots)
            except SealingProcessError as e:
                raise SealingProcessUnreachable(str(e), list(spans), list(roots)) from e
            return
        parts: list[tuple[list[Any], list[str]]] = [([], []) for _ in self.processes]
        for span in spans:
            parts[self._shard(span.get_span_context().trace_id)][0].append(span)
        for root in roots:
            parts[self._shard(int(root, 16))][1].append(root)
        sending = [(process, part) for process, part in zip(self.processes, parts, strict=True)
                   if part[0] or part[1]]
        held: list[SealingProcess] = []
        try:
            for process, _ in sending:
                process._lock.acquire()
                held.append(process)
            frames: list[tuple[SealingProcess, bytes, Any]] = []
            try:
                for process, (part_spans, part_roots) in sending:
                    frame, defined = process._spans_frame_locked(part_spans, part_roots)
                    frames.append((process, frame, defined))
            except Exception:
                for process, _, defined in frames:
                    process._forget_locked(defined)
                raise
            lost = _Undelivered()
            for (process, frame, _), (_, part) in zip(frames, sending, strict=True):
                try:
                    process._write_locked(frame)
                except SealingProcessError as e:
                    lost.add(e, part[0], part[1])
                else:
                    process._sent_locked(part[0])
        finally:
            for process in held:
                process._release()
        lost.raise_if_any()

    def send_bodies(self, bodies: Sequence[tuple[str, dict[str, Any]]],
                    rejected: Sequence[str | None], roots: Sequence[str]) -> None:
        """Hand already normalized bodies (spans whose fields cannot be pickled),
        rejected trace ids (None: unreadable, sent to the first process) and ended
        roots to the processes holding their traces.

        Raises:
            SealingProcessUnreachable: a process is gone (see :meth:`send_spans`;
                its bodies are in ``spans``, its rejected trace ids in
                ``rejected``).
        """
        n = len(self.processes)
        parts: list[tuple[list[Any], list[str | None], list[str]]] = [
            ([], [], []) for _ in range(n)]
        for item in bodies:
            parts[self._shard(int(item[0], 16))][0].append(item)
        for rejected_trace in rejected:
            shard = 0 if rejected_trace is None else self._shard(int(rejected_trace, 16))
            parts[shard][1].append(rejected_trace)
        for root in roots:
            parts[self._shard(int(root, 16))][2].append(root)
        lost = _Undelivered()
        for process, (part_bodies, part_rejected, part_roots) in zip(
                self.processes, parts, strict=True):
            if part_bodies or part_rejected or part_roots:
                try:
                    process.send_bodies(part_bodies, part_rejected, part_roots)
                except SealingProcessError as e:
                    lost.add(e, part_bodies, part_roots, part_rejected)
        lost.raise_if_any()

    def settled(self) -> bool:
        """Whether every span sent to the processes is settled (see
        :meth:`SealingProcess.unsettled`), none is being sent, and every process
        still runs: nothing is left to flush.  A span sent twice keeps this False;
        never True too early.  Never waits: a process held by another thread (an
        export writing to it, a request) makes it False."""
        for process in self.processes:
            # A span is counted once its write returned: one being written (the
            # pipe full) is in no count yet.
            if not process._lock.acquire(blocking=False):
                return False
            try:
                if process.unsettled() or process.exit_code is not None:
                    return False
            finally:
                process._release()
        return True

    def request(self, kind: str, timeout: float) -> bool:
        """Ask every process to ``flush`` or ``shutdown`` (side by side); True when
        all answered that everything is done, False when *timeout* (seconds)
        passes first.

        Raises:
            SealingProcessError: a process is gone.
        """
        deadline = time.monotonic() + timeout
        held: list[SealingProcess] = []
        try:
            for process in self.processes:
                if not process._lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
                    return False
                held.append(process)
            asked = [(process, process._ask_locked(kind, timeout)) for process in held]
            replies = [process._reply(number, deadline) for process, number in asked]
        finally:
            for process in held:
                process._release()
        return all(reply is not None and bool(reply[2]) for reply in replies)

    def close(self, timeout: float) -> int | None:
        """Close every process's input and wait up to *timeout* seconds for all to
        exit; the first nonzero exit code (0 when all exited cleanly), or None
        when one is still running (a process that does not read its input is
        left to finish by itself, see :meth:`SealingProcess.close_input`)."""
        # A write blocked on a stopped process is left to finish once it reads again
        # (see SealingProcess.close_input), not cut short by killing it.
        self._watch_stop.set()
        deadline = time.monotonic() + timeout
        for process in self.processes:
            process.close_input(deadline - time.monotonic())
        codes = [process.wait(deadline - time.monotonic()) for process in self.processes]
        if None in codes:
            return None
        return next((code for code in codes if code), 0)

    def give_up(self) -> list[SealingProcess]:
        """After one process was found gone: stop it, and close the others' input
        without waiting, so they seal what they hold and exit by themselves.
        Returns the processes it found gone (see :meth:`SealingProcess.unsettled`
        for what they lost)."""
        self._watch_stop.set()
        gone = []
        closing = []
        for process in self.processes:
            if process._proc.poll() is None and not process._dead:
                process.close_input(_GIVE_UP_WAIT)
                closing.append(process)
            else:
                process.kill()
                gone.append(process)
        _reap(closing)
        return gone


def _reap(processes: Sequence[SealingProcess]) -> None:
    """Wait for each of *processes*, whose input is closed, on a daemon thread of its
    own, so that none stays a zombie once it has sealed what it held and exited
    (nothing else waits for them: before, up to 63 stayed until the next child
    started), however long another takes."""

    def reap(process: SealingProcess) -> None:
        try:
            process._proc.wait()
        except OSError:
            pass

    for process in processes:
        try:
            own_thread(reap, "spanproof-reaper", (process,)).start()
        except RuntimeError:  # no thread to spare: the next child's start reaps it
            _logger.debug("spanproof: no thread to wait for sealing process %d", process.pid)


class SealingProcessUnreachable(SealingProcessError):
    """A sealing process is gone; ``spans``, ``roots`` and ``rejected`` are what it
    was to get and did not (the caller seals them itself)."""

    def __init__(self, message: str, spans: list[Any], roots: list[str],
                 rejected: list[str | None] | None = None) -> None:
        super().__init__(message)
        self.spans = spans
        self.roots = roots
        self.rejected = rejected or []


class _Undelivered:
    """What a group's sending could not deliver, raised once all were tried."""

    def __init__(self) -> None:
        self._error: SealingProcessError | None = None
        self._spans: list[Any] = []
        self._roots: list[str] = []
        self._rejected: list[str | None] = []

    def add(self, error: SealingProcessError, spans: Sequence[Any], roots: Sequence[str],
            rejected: Sequence[str | None] = ()) -> None:
        self._error = self._error or error
        self._spans.extend(spans)
        self._roots.extend(roots)
        self._rejected.extend(rejected)

    def raise_if_any(self) -> None:
        if self._error is not None:
            raise SealingProcessUnreachable(str(self._error), self._spans, self._roots,
                                            self._rejected) from self._error


# -- child side ------------------------------------------------------------------


def _reply_to(out: io.BufferedWriter, message: Any) -> None:
    out.write(_frame(message))
    out.flush()


def child_main() -> None:
    """The sealing process: read frames from stdin until shutdown or end of input."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Background work: when the cores are contended, the application's threads
    # come first (the pipe holds the spans meanwhile and slows the exporter down).
    os.nice(10)
    inp = _ChildInput(sys.stdin.fileno())
    out = child_replies("sealing process")

    def on_term(signum: int, frame: Any) -> None:
        # Once: a second SIGTERM must not extend the input the first ended.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        inp.end_after_what_is_written()

    signal.signal(signal.SIGTERM, on_term)
    start = _read_frame(inp)
    if start is None or start[0] != "start":
        return
    try:
        exporter = _child_exporter(*start[1:])
    except Exception as e:
        _reply_to(out, ("error", f"{type(e).__name__}: {e}"))
        return
    _reply_to(out, ("ready",))
    try:
        with collecting_rarely():
            finished = _serve(exporter, inp, out)
    finally:
        exporter.shutdown()
    if finished:
        # Everything is sealed, written and answered, and the parent's shutdown() is
        # waiting for this process to exit: skip the interpreter's teardown of the
        # heap (tens of milliseconds), once what was logged is out.
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        out.close()
        os._exit(0)


class _SettledCount:
    """The child's side of :meth:`SealingProcess.unsettled`: adds up the spans each
    written bundle settles, in the file the parent reads."""

    def __init__(self, fd: int) -> None:
        self._map = mmap.mmap(fd, _SETTLED.size)
        self._total = 0
        self._lock = threading.Lock()  # the writer thread and the sealer both add

    def __call__(self, spans: int) -> None:
        with self._lock:
            self._total += spans
            _SETTLED.pack_into(self._map, 0, self._total)


def _child_exporter(settings: Mapping[str, Any], key_seed: bytes,
                    producer_instance: str, recover: bool, settled_fd: int) -> Any:
    from ._exporter import _NonRecoveringExporter, _SealingProcessExporter
    from .keys import SigningKey

    kind = _SealingProcessExporter if recover else _NonRecoveringExporter
    exporter = kind(signing_key=SigningKey.from_seed(key_seed), sealing_process=False,
                    **settings)
    exporter._serve_parent(producer_instance, _SettledCount(settled_fd))
    return exporter


def _serve(exporter: Any, inp: Any, out: io.BufferedWriter) -> bool:
    """Handle the parent's messages until shutdown or end of input.  True when a
    shutdown request was answered with everything sealed and written."""
    resources: dict[int, Any] = {}
    scopes: dict[int, Any] = {}
    while True:
        message = _read_frame(inp)
        if message is None:
            return False  # the parent is gone: seal what is pending (finally: shutdown)
        kind = message[0]
        if kind == "spans":
            _, new_resources, new_scopes, fields, roots = message
            for number, (attributes, schema_url) in new_resources:
                resources[number] = _Resource(attributes, schema_url)
            for number, scope in new_scopes:
                scopes[number] = None if scope is None else _Scope(*scope)
            spans = [FieldSpan(f, resources[f[-2]], scopes[f[-1]]) for f in fields]
            exporter._admit_spans(spans, roots)
        elif kind == "bodies":
            _, bodies, rejected, roots = message
            exporter._admit_bodies(bodies, rejected, roots)
        elif kind == "flush":
            _reply_to(out, ("done", message[1], exporter.force_flush(message[2])))
        elif kind == "shutdown":
            exporter.shutdown(message[2])
            done = not exporter._unwritten and not exporter._inflight
            _reply_to(out, ("done", message[1], done))
            return done  # not done: the caller's shutdown() goes on sealing
        else:
            _logger.error("spanproof: unknown message %r ignored", kind)
