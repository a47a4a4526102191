"""OTLP/gRPC and OTLP/HTTP transports for the receiver (the Collector contract).

Transport only: requests are decoded here and handed to an ``ingest`` callable,
whose outcome is mapped to the codes the OpenTelemetry Collector acts on:

* malformed request → gRPC ``INVALID_ARGUMENT`` / HTTP 400 (permanent, not retried);
* some spans rejected → OK with ``partial_success`` (``rejected_spans``, message);
* overload or storage failure → gRPC ``UNAVAILABLE`` with ``RetryInfo`` / HTTP 503
  with ``Retry-After`` (retried; never ``INTERNAL``/``UNKNOWN``, which the
  Collector treats as permanent and drops; gRPC itself answers ``INTERNAL`` for a
  message whose compression is corrupt or unknown, before any handler runs).

Both also answer health checks, for a load balancer's or Kubernetes' probes: gRPC's
``grpc.health.v1.Health/Check`` and HTTP ``GET /healthz``.
"""

from __future__ import annotations

import base64
import decimal
import errno
import functools
import http.client
import json
import logging
import math
import os
import re
import selectors
import socket
import ssl
import sys
import threading
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from concurrent import futures
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc
from google.protobuf import any_pb2, duration_pb2, json_format, wrappers_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import DecodeError
from google.rpc import code_pb2, error_details_pb2, status_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

from spanproof.verifier._files import open_regular

from ._exporter import Throttled
from ._sealing_process import start_watch
from ._untraced import own_thread
from .otlp import UNDECODABLE_SCOPE

__all__ = [
    "DEFAULT_MAX_MESSAGE_BYTES",
    "GRPC_STATUS_MESSAGE_BYTES",
    "MAX_MESSAGE_BYTES",
    "GrpcServer",
    "HttpServer",
    "IngestResult",
    "InvalidRequest",
    "ServerTLS",
    "Unavailable",
    "parse_otlp_json",
    "parse_otlp_protobuf",
    "read_tls_files_again",
]

_logger = logging.getLogger(__name__)

# gRPC's default is 4 MiB; a Collector batch of large GenAI spans easily exceeds it.
DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024
#: The largest *max_message_bytes*: gRPC's message size limits are C ints.
MAX_MESSAGE_BYTES = 2**31 - 1


def _check_message_bytes(max_message_bytes: int) -> None:
    """Refuse a request size limit the servers cannot apply (gRPC would raise
    OverflowError beyond a C int, and no request fits in 0 bytes)."""
    if (type(max_message_bytes) is not int
            or not 1 <= max_message_bytes <= MAX_MESSAGE_BYTES):
        raise ValueError(f"max_message_bytes must be an integer from 1 to "
                         f"{MAX_MESSAGE_BYTES} (2 GiB - 1), got {max_message_bytes!r}")


@dataclass(frozen=True)
class IngestResult:
    """What the receiver accepted: the count of rejected spans and why."""

    rejected: int = 0
    message: str = ""


class InvalidRequest(ValueError):
    """The whole request is malformed (→ INVALID_ARGUMENT / 400)."""


class Unavailable(Exception):
    """Temporarily unable to accept (overload, storage) (→ UNAVAILABLE / 503)."""

    def __init__(self, message: str, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


Ingest = Callable[[Sequence[trace_pb2.ResourceSpans]], IngestResult]
#: Why the service refuses every request now, or None while it accepts them (the
#: health checks' answer; see `spanproof.exporter.Receiver.not_serving`).
Health = Callable[[], "str | None"]


#: Raises `Unavailable` while the service refuses every request (see
#: `spanproof.exporter.Receiver.check_accepting`).  The transports call it before
#: they decode a request, so a request that would be refused costs no parse.
Admission = Callable[[], None]


def _always_serving() -> str | None:
    return None


#: How often (seconds) the servers look whether their TLS files changed.
TLS_RELOAD_SECONDS = 60.0
#: A connection's handshake must end within this long of the connection, on either
#: port: TLS over OTLP/HTTP; over OTLP/gRPC, TLS (when served) and then HTTP/2's
#: opening, which a client sends at once.  A TLS handshake is one or two round trips
#: and a signature, milliseconds on any network a Collector sends over, so 10 s is
#: generous; each connection still in its handshake holds one of the
#: `HTTP_CONNECTIONS_AT_ONCE` (a thread), and with the head's time (60 s) 128
#: connections that never sent a ClientHello kept every real request out for a
#: minute.  (gRPC's own bound, unset, is 120 s.)  Such a connection is idle, too:
#: when the places run out, a new connection takes the place of the one idle longest.
HANDSHAKE_SECONDS = 10.0


@dataclass(frozen=True)
class ServerTLS:
    """TLS for the servers, from PEM files: the server's certificate chain and private
    key and, with *client_ca_file*, mutual TLS: a client must present a certificate
    that chains to one of those CA certificates (each a trust anchor, an intermediate
    as well as a root), or its connection is refused in the
    handshake (as a Collector's ``tls`` settings ``cert_file``, ``key_file`` and
    ``client_ca_file`` do).  TLS 1.2 at least.

    The servers read the files again when they change (looked at, by their status,
    at most every *reload_interval* seconds, at a new connection; 0: at every one),
    so a renewed certificate is served without a restart.  Files that changed but
    cannot be used together (a certificate renewed before its key) are logged, and
    the previous ones served until the files change again.

    Raises:
        ValueError: *reload_interval* is negative or not a number.
    """

    cert_file: str
    key_file: str
    client_ca_file: str | None = None
    reload_interval: float = TLS_RELOAD_SECONDS

    def __post_init__(self) -> None:
        # NaN would look at every connection, a negative number too, silently.
        interval = self.reload_interval
        if (isinstance(interval, bool) or not isinstance(interval, (int, float))
                or not interval >= 0):
            raise ValueError(f"reload_interval must be a number of seconds >= 0 "
                             f"(inf: never), got {interval!r}")

    def ssl_context(self) -> ssl.SSLContext:
        """The OTLP/HTTP server's context, as the files are now.

        Raises:
            ValueError: a file cannot be read, is not a regular file, is not PEM of
                the right kind, the key is encrypted, or the key does not match the
                certificate (naming the file).
        """
        for what, path in (("certificate", self.cert_file), ("key", self.key_file),
                           ("client CA", self.client_ca_file)):
            # Read by path, twice (Python's TLS, gRPC's): a named pipe would block the
            # start, a device would never end.  A missing file is named below.
            try:
                if path is not None:
                    open_regular(path).close()
            except OSError as e:
                if e.errno in (errno.EINVAL, errno.ENXIO):  # not a regular file
                    raise ValueError(f"TLS {what} {path}: cannot be used ({e.strerror})"
                                     ) from None
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            # Without a password callback OpenSSL asks for an encrypted key's
            # passphrase on the terminal, and waits there: at start, or at a reload
            # on the thread that accepts connections.  No passphrase is taken.
            context.load_cert_chain(self.cert_file, self.key_file, password=_no_passphrase)
        except _EncryptedKey:
            raise ValueError(f"TLS key {self.key_file} is encrypted: give the key "
                             "unencrypted (no passphrase is asked for)") from None
        except (OSError, ssl.SSLError) as e:
            raise ValueError(f"TLS certificate {self.cert_file} and key {self.key_file} "
                             f"cannot be used: {e}") from None
        if self.client_ca_file is not None:
            try:
                context.load_verify_locations(cafile=self.client_ca_file)
            except (OSError, ssl.SSLError) as e:
                raise ValueError(f"TLS client CA {self.client_ca_file} cannot be used: "
                                 f"{e}") from None
            context.verify_mode = ssl.CERT_REQUIRED
            # Every CA certificate in the file is a trust anchor, a root or not, as
            # in a Collector's client_ca_file and on the gRPC port: OpenSSL alone
            # wanted a self-signed root above an intermediate named there.
            context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
        return context

    def grpc_credentials(self) -> grpc.ServerCredentials:
        """The OTLP/gRPC server's credentials, which take the files again when they
        change.

        Raises:
            ValueError: as :meth:`ssl_context`.
        """
        current = _TLSFiles(self, self._grpc_configuration)
        return grpc.dynamic_ssl_server_credentials(
            current.value, current.changed,
            require_client_authentication=self.client_ca_file is not None)

    def _grpc_configuration(self) -> Any:
        self.ssl_context()  # gRPC only finds a bad file at a handshake: check first
        pem = [_read_pem(path) for path in self._paths()]
        self.ssl_context()
        if [_read_pem(path) for path in self._paths()] != pem:
            # Replaced meanwhile: what was checked may not be what was read.
            raise ValueError("TLS files changed while being read")
        chain, key, *roots = pem
        return grpc.ssl_server_certificate_configuration(
            [(key, chain)], roots[0] if roots else None)

    def _paths(self) -> tuple[str, ...]:
        return (self.cert_file, self.key_file,
                *(() if self.client_ca_file is None else (self.client_ca_file,)))


class _EncryptedKey(Exception):
    pass


def _no_passphrase() -> bytes:
    raise _EncryptedKey


# Bumped by read_tls_files_again(): every _TLSFiles looks at its files at the next
# connection, whatever its interval.
_tls_generation = 0


def read_tls_files_again() -> None:
    """Have every server's TLS files looked at on its next connection, whatever
    their *reload_interval* (``spanproof receiver`` on SIGHUP); files that changed are
    then read again, as at the end of an interval."""
    global _tls_generation
    _tls_generation += 1


class _TLSFiles:
    """What a server builds from a :class:`ServerTLS`'s files (an SSL context, gRPC's
    certificate configuration), built again when the files' status changes: their
    identity, size or modification time, through symbolic links (a Kubernetes
    secret's files change by a link's swap).  Thread-safe; never raises once built.

    Raises:
        ValueError: the files cannot be used at construction.
    """

    def __init__(self, tls: ServerTLS, build: Callable[[], Any]) -> None:
        self._tls = tls
        self._build = build
        self._lock = threading.Lock()
        self._seen = self._status()
        self.value = build()
        self._next_look = time.monotonic() + tls.reload_interval
        self._generation = _tls_generation

    def _status(self) -> tuple[Any, ...]:
        status: list[Any] = []
        for path in self._tls._paths():
            try:
                st = os.stat(path)
                status.append((st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns))
            except OSError as e:
                status.append(e.errno)
        return tuple(status)

    def current(self) -> Any:
        """What the files now give (the previous value while they cannot be used)."""
        self.changed()
        return self.value

    def changed(self) -> Any:
        """The new value when the files changed and can be used, else None."""
        now = time.monotonic()
        if now < self._next_look and self._generation == _tls_generation:
            return None
        with self._lock:
            if now < self._next_look and self._generation == _tls_generation:
                return None
            self._next_look = now + self._tls.reload_interval
            self._generation = _tls_generation
            status = self._status()
            if status == self._seen:
                return None
            self._seen = status
            try:
                value = self._build()
            except Exception as e:
                _logger.error("receiver: the TLS files changed but cannot be used (%s); "
                              "still serving the previous ones until they change again", e)
                return None
            self.value = value
            _logger.warning("receiver: TLS certificate %s read again", self._tls.cert_file)
            return value


def _read_pem(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise ValueError(f"TLS file {path} cannot be read: {e.strerror}") from None


def _always_accepting() -> None:
    return None

# The ids OTLP/JSON writes in hex, under both spellings protobuf's JSON mapping takes:
# the Collector's reader (pdata's ptrace JSON unmarshaler) reads ``trace_id`` as hex
# too, where protobuf read it as base64 (32 hex digits became 24 bytes, 22 became a
# 16-byte trace id no one sent).  Both spellings in one object are refused
# (_to_protobuf_json).
_ID_FIELDS = frozenset({"traceId", "trace_id", "spanId", "span_id", "parentSpanId",
                        "parent_span_id"})
# What an id that is not hex becomes: one byte, a length no id has, so that its span
# is rejected alone (or its link left out), as a wrong-length id is in protobuf.  Not
# empty: an empty parentSpanId would make the span a root.
_NOT_AN_ID = base64.b64encode(b"\0").decode("ascii")
_HEX_ID = re.compile(r"(?:[0-9a-fA-F]{2})*")
_BYTES_FIELDS = ("bytesValue", "bytes_value")
_BASE64_DIGITS = re.compile(r"[A-Za-z0-9+/_-]*")
_REQUEST = trace_service_pb2.ExportTraceServiceRequest.DESCRIPTOR


def _is_base64(text: str) -> bool:
    """Whether *text* is base64 as protobuf's JSON mapping takes it: the standard or
    the URL-safe alphabet, with all of the padding or none."""
    digits = text.removesuffix("=").removesuffix("=")
    padding = len(text) - len(digits)
    if _BASE64_DIGITS.fullmatch(digits) is None:
        return False
    left = len(digits) % 4  # digits of the last group: 2 or 3 (1 is no byte), 0 if none
    return left == 4 - padding if padding else left != 1


# A decimal integer as JSON writes one: the common form of an int64 in OTLP/JSON.
_DECIMAL = re.compile(r"-?(?:0|[1-9][0-9]*)")
# A number as JSON writes one (RFC 8259 §6): the only form in which a string may hold
# a number (proto3's JSON mapping) that the Collector's reader (Go's protojson) takes.
# Python's int() and float(), which protobuf's Python parser calls, also take
# "1_000", "٣", " 5 ", "+5", "05" and "inf".
_NUMBER_TEXT = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?")
_DOUBLE_FIELDS = ("doubleValue", "double_value")
_DOUBLE_NAMES = frozenset({"NaN", "Infinity", "-Infinity"})
# The integer fields of a trace request that a record holds (enums included), under
# both spellings protobuf's JSON mapping takes, and the flags of spans and links,
# which are not recorded but tell a local root (its parent's remoteness).
_INTEGER_FIELDS = frozenset({
    "intValue", "int_value", "startTimeUnixNano", "start_time_unix_nano",
    "endTimeUnixNano", "end_time_unix_nano", "timeUnixNano", "time_unix_nano",
    "droppedAttributesCount", "dropped_attributes_count", "droppedEventsCount",
    "dropped_events_count", "droppedLinksCount", "dropped_links_count", "kind", "code",
    "flags",
})


class _Literal(float):
    """A JSON number written with a fraction or an exponent whose double is an
    integer, with its text: in an integer field it stands for the integer the text
    denotes, which the double may not be (``1772443798120000123.0``)."""

    __slots__ = ("text",)
    text: str

    def __new__(cls, text: str) -> _Literal:
        number = super().__new__(cls, text)
        number.text = text
        return number


def _exact_integer(field: str, value: Any) -> Any:
    """*value*, the JSON value of the integer field *field*, with a number written with a fraction
    or an exponent (a JSON number, or a string) replaced by the exact integer it
    denotes: protobuf's JSON parser takes such a value through a double, so
    ``"9007199254740993.0"`` became 2^53 and a fraction whose double is an integer
    (``"9007199254740993.5"``) was taken.  Anything else is left to protobuf.

    Raises:
        InvalidRequest: the value is a number that is not an integer, or one far
            beyond 64 bits.
    """
    if isinstance(value, _Literal):
        text = value.text
    elif isinstance(value, str) and _DECIMAL.fullmatch(value) is None:
        text = value
    else:
        return value
    try:
        number = decimal.Decimal(text)
    except decimal.InvalidOperation:
        return value  # not a number (an enum's name, or malformed): protobuf decides
    if not number.is_finite():
        return value
    if _NUMBER_TEXT.fullmatch(text) is None:
        raise InvalidRequest(f"{field} {_shown(text)} is not a number as JSON writes one")
    if number != number.to_integral_value():
        raise InvalidRequest(f"{field} {_shown(text)} is not an integer")
    if number.adjusted() > 25:
        raise InvalidRequest(f"{field} {_shown(text)} is beyond 64 bits")
    exact = int(number)
    return exact if isinstance(value, float) else str(exact)


def _check_double_string(value: str) -> None:
    """Refuse a ``doubleValue`` string that is not ``NaN``, ``Infinity``,
    ``-Infinity`` or a finite number as JSON writes one (:data:`_NUMBER_TEXT`).
    protobuf's parser read any string Python's ``float()`` takes: ``"1e400"`` became
    Infinity (the number 1e400 is refused as beyond a double), and ``"1_000.5"``,
    ``" 5 "`` and ``"inf"`` were taken too.

    Raises:
        InvalidRequest: naming the value.
    """
    if value in _DOUBLE_NAMES:
        return
    if _NUMBER_TEXT.fullmatch(value) is None:
        raise InvalidRequest(f"doubleValue {_shown(value)} is neither a number as JSON "
                             "writes one nor NaN, Infinity or -Infinity")
    if math.isinf(float(value)):
        raise InvalidRequest(f"doubleValue {_shown(value)} is beyond the range of a double")


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


class _NamedTwice(dict[str, Any]):
    """A JSON object naming a field twice (its last member kept), with that name:
    refused where protobuf reads it (:func:`_to_protobuf_json`), ignored in an
    unknown field as protobuf ignores the field."""

    name = ""


def _unique_members(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object's members as a dict, marked (:class:`_NamedTwice`) when a name
    occurs twice: Python's reader kept the last silently (``{"spans":[A],"spans":[B]}``
    lost span A, answered OK), where Go's protobuf JSON reader refuses it."""
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for name, _ in pairs:
            if name in seen:
                marked = _NamedTwice(obj)
                marked.name = name
                return marked
            seen.add(name)
    return obj


# What _to_protobuf_json does with a field's value, by the kind of field.
_ID, _BYTES, _INTEGER, _DOUBLE, _MESSAGE, _OTHER = range(6)
#: A message's fields by both names protobuf's JSON parser takes for them: what to
#: do with the value, the field's other name to refuse beside it (for its proto
#: name), and the schema of a message field.
_Schema = dict[str, tuple[int, "str | None", Any]]


def _schema(descriptor: Descriptor, built: dict[str, _Schema]) -> _Schema:
    """The :data:`_Schema` of *descriptor* and of the messages under it (in *built*,
    by full name: OTLP's values nest)."""
    schema = built.get(descriptor.full_name)
    if schema is not None:
        return schema
    schema = built[descriptor.full_name] = {}
    for field in descriptor.fields:
        child = None if field.message_type is None else _schema(field.message_type, built)
        for name in (field.name, field.json_name):
            if name in _ID_FIELDS:
                kind = _ID
            elif name in _BYTES_FIELDS:
                kind = _BYTES
            elif name in _INTEGER_FIELDS:
                kind = _INTEGER
            elif name in _DOUBLE_FIELDS:
                kind = _DOUBLE
            else:
                kind = _OTHER if child is None else _MESSAGE
            other = field.json_name if name != field.json_name else None
            schema[name] = (kind, other, child)
    return schema


_REQUEST_SCHEMA = _schema(_REQUEST, {})


def _to_protobuf_json(obj: Any, schema: _Schema = _REQUEST_SCHEMA) -> None:
    """Make a decoded OTLP/JSON document (the JSON of a message of *schema*) what
    protobuf's JSON mapping takes: hex ids
    become base64 (OTLP/JSON spells ids as hex), and an id that is not hex an invalid
    id (``_NOT_AN_ID``).  A field name holding a lone surrogate is refused here:
    protobuf ignores unknown fields, but cannot look up a name that is not valid
    Unicode (it raised SystemError).  So is a ``bytesValue`` that is not base64:
    protobuf's decoder skips what is not in the alphabet and stops at the first
    padding, so ``"AQ==AQ=="`` became the one byte 01 and ``"!!!!"`` no bytes.
    An integer field's value written with a fraction or an exponent becomes the
    integer it denotes (:func:`_exact_integer`).

    An object naming one field twice, or under both spellings protobuf takes
    (``scopeSpans`` and ``scope_spans``), is refused: protobuf kept one, so the spans
    of the other were lost, answered OK.

    What a field of a name the message does not have holds is left alone, as
    protobuf ignores it (OTLP: receivers MUST ignore unknown fields): checked by name,
    a newer field holding a ``bytesValue`` of its own was refused.

    Raises:
        InvalidRequest: a field name holds a lone surrogate, a field is named twice
            or under both spellings, a ``bytesValue`` is not base64, or an integer
            field holds a number that is not an integer, or a ``doubleValue`` holds
            a boolean.
    """
    if isinstance(obj, list):
        for item in obj:
            _to_protobuf_json(item, schema)
        return
    if not isinstance(obj, dict):
        return  # protobuf refuses what is not an object where a message belongs
    if type(obj) is _NamedTwice:
        raise InvalidRequest(f"body names field {_shown(obj.name)} twice in one object")
    for key, value in obj.items():
        if not key.isascii():
            try:
                key.encode("utf-8")
            except UnicodeEncodeError:
                raise InvalidRequest(
                    f"field name {key!r} holds a lone surrogate (not valid Unicode)"
                ) from None
        entry = schema.get(key)
        if entry is None:
            continue  # unknown: ignored
        kind, other, child = entry
        if other is not None and other in obj:
            raise InvalidRequest(f"body names field {_shown(other)} twice in one "
                                 f"object, also as {_shown(key)}")
        if kind == _MESSAGE:
            _to_protobuf_json(value, child)
        elif kind == _INTEGER:
            obj[key] = _exact_integer(key, value)
        elif kind == _DOUBLE and isinstance(value, bool):
            # protobuf takes a JSON boolean as the number 1 or 0 (bool is an int in
            # Python); the Collector's reader refuses it, and a record would state a
            # double the sender never sent.
            raise InvalidRequest(f"{key} {str(value).lower()} is not a number")
        elif not isinstance(value, str):
            continue  # protobuf takes null and numbers, and refuses other non-strings
        elif kind == _ID:
            # Hex digits only: bytes.fromhex also skips whitespace.
            obj[key] = (base64.b64encode(bytes.fromhex(value)).decode("ascii")
                        if _HEX_ID.fullmatch(value) else _NOT_AN_ID)
        elif kind == _BYTES:
            if not _is_base64(value):
                raise InvalidRequest(f"bytesValue {_shown(value)} is not base64")
        elif kind == _DOUBLE:
            _check_double_string(value)


def _refuse_constant(name: str) -> Any:
    # NaN, Infinity and -Infinity are not JSON (RFC 8259 §6), though Python's reader
    # takes them; protobuf's JSON mapping spells such doubles as strings ("NaN").
    raise InvalidRequest(f"body is not JSON: {name} is not a number (RFC 8259 §6)")


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise InvalidRequest(f"number {text} is beyond the range of a double")
    return _Literal(text) if value.is_integer() else value


def _signed_int(text: str) -> int | float:
    """A JSON integer's value; ``-0``, which no int holds, as the double -0.0 (with its
    text, for an integer field: :func:`_exact_integer`).  Python's reader took it as
    the int 0: a ``doubleValue`` of -0 (as Go's protobuf JSON writer spells negative
    zero) was certified as 0, where SPEC §2.3 keeps the sign."""
    return _Literal(text) if text == "-0" else int(text)


def _json_span_count(doc: dict[str, Any]) -> int:
    """The members of the request's span lists (whatever they hold), under either
    spelling of the field names protobuf's JSON mapping accepts."""
    count = 0
    for resource_spans in _json_list(doc, "resourceSpans", "resource_spans"):
        for scope_spans in _json_list(resource_spans, "scopeSpans", "scope_spans"):
            count += len(_json_list(scope_spans, "spans", "spans"))
    return count


def _json_list(obj: Any, name: str, original: str) -> list[Any]:
    """The members of *obj*'s list under either spelling, both counted: protobuf
    reads ``original`` where *name* is null."""
    if not isinstance(obj, dict):
        return []
    members = []
    for key in {name, original}:
        value = obj.get(key)
        if isinstance(value, list):
            members += value
    return members


_INT32 = range(-(2**31), 2**31)
#: Nested messages protobuf's JSON parser may build: Python's own stack bounds them.
_JSON_MESSAGE_DEPTH = 100_000
_SPAN_KIND_NAMES = frozenset(trace_pb2.Span.SpanKind.keys())
_STATUS_CODE_NAMES = frozenset(trace_pb2.Status.StatusCode.keys())


def _enum_as_sent(value: Any, names: frozenset[str]) -> bool:
    """Whether protobuf's JSON parser takes *value*, an enum field's JSON value, as
    sent: absent (``null``), an int32 (written as a number, an integral one with a
    fraction or exponent included, or as a decimal string), or a name of the enum.

    It truncates a larger integer to 32 bits (a status code of 2^32 + 2 became
    ``ERROR``), takes a fraction's integer part and ``true`` as 1, and leaves the
    field unset (0) for an unknown name when unknown fields are ignored.
    """
    if value is None:
        return True
    if isinstance(value, bool):
        return False
    if isinstance(value, float):
        return value.is_integer() and int(value) in _INT32
    if isinstance(value, int):
        return value in _INT32
    if isinstance(value, str):
        return value in names or (_DECIMAL.fullmatch(value) is not None
                                  and int(value) in _INT32)
    return False


def _check_enums(doc: dict[str, Any]) -> None:
    """Refuse a span whose ``kind`` or ``status.code`` protobuf would not carry as
    sent (:func:`_enum_as_sent`): certified, it would state another value.

    Raises:
        InvalidRequest: naming the value.
    """
    for resource_spans in _json_list(doc, "resourceSpans", "resource_spans"):
        for scope_spans in _json_list(resource_spans, "scopeSpans", "scope_spans"):
            for span in _json_list(scope_spans, "spans", "spans"):
                if not isinstance(span, dict):
                    continue
                kind = span.get("kind")
                if not _enum_as_sent(kind, _SPAN_KIND_NAMES):
                    raise InvalidRequest(f"span kind {_shown(kind)} is neither an int32 "
                                         "nor the name of a SpanKind")
                status = span.get("status")
                code = status.get("code") if isinstance(status, dict) else None
                if not _enum_as_sent(code, _STATUS_CODE_NAMES):
                    raise InvalidRequest(f"status code {_shown(code)} is neither an int32 "
                                         "nor the name of a StatusCode")


#: What a body holding a lone surrogate holds: a ``\u`` escape of a surrogate
#: (U+D800 to U+DFFF), or one encoded as UTF-8 bytes, which Python's JSON reader takes
#: as a character (``surrogatepass``).  A body without either holds none.  Two
#: searches, each with a literal prefix to look for: together under 1% of parsing a
#: 1.9 MB request, where one pattern with both alternatives took ~3%.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
_ENCODED_SURROGATE = re.compile(rb"\xed[\xa0-\xbf]")
_LONE_SURROGATE = "holds a lone surrogate: no canonical JSON form (SPEC §3.1)"
#: What the outline of a span set apart keeps besides its attributes, under either
#: spelling: what selecting it, declaring it in its trace and ending its trace need.
_OUTLINE_FIELDS = frozenset({"traceId", "trace_id", "spanId", "span_id", "parentSpanId",
                             "parent_span_id", "flags"})
_RESOURCE_SPANS = trace_pb2.ResourceSpans.DESCRIPTOR
_SCOPE_SPANS = trace_pb2.ScopeSpans.DESCRIPTOR
_SPAN = trace_pb2.Span.DESCRIPTOR


def _has_lone_surrogate(text: str) -> bool:
    """Whether *text* holds a surrogate code point, which UTF-8 cannot encode."""
    if text.isascii():
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


@functools.cache
def _json_fields(descriptor: Descriptor) -> dict[str, FieldDescriptor]:
    """The fields of a message by the names protobuf's JSON parser takes for them."""
    fields: dict[str, FieldDescriptor] = {}
    for field in descriptor.fields:
        fields[field.name] = fields[field.json_name] = field
    return fields


def _repeated(field: FieldDescriptor) -> bool:
    """Whether *field* is repeated: ``is_repeated`` from protobuf 6.31 (7 has no
    ``label``), its ``label`` before, where opentelemetry-proto before 1.35 keeps
    protobuf (an OTLP/JSON request holding a lone surrogate failed there with
    AttributeError: 503, retried for ever)."""
    is_repeated = getattr(field, "is_repeated", None)
    if is_repeated is not None:
        return bool(is_repeated)
    label = field.label  # type: ignore[attr-defined]  # not in protobuf 7's types
    return bool(label == FieldDescriptor.LABEL_REPEATED)


def _holds_lone_surrogate(obj: Any, descriptor: Descriptor, skip: str = "") -> bool:
    """Whether *obj*, the JSON of a *descriptor* message, holds a lone surrogate in a
    string field protobuf reads, at any depth (except under its field *skip*).
    Unknown fields are not read: protobuf ignores them, surrogates and all; nor are
    values of the wrong type, which protobuf refuses."""
    if not isinstance(obj, dict):
        return False
    fields = _json_fields(descriptor)
    for key, value in obj.items():
        field = fields.get(key)
        if field is None or field.name == skip:
            continue
        items = value if _repeated(field) and isinstance(value, list) else (value,)
        if field.type == FieldDescriptor.TYPE_STRING:
            if any(isinstance(item, str) and _has_lone_surrogate(item) for item in items):
                return True
        elif (message := field.message_type) is not None:
            if any(_holds_lone_surrogate(item, message) for item in items):
                return True
    return False


def _outline_attribute(kv: Any) -> dict[str, Any] | None:
    """An attribute of a span set apart as its outline keeps it: with its value,
    emptied when that holds a lone surrogate; None when its key is not a string
    protobuf can carry."""
    if not isinstance(kv, dict):
        return None
    key = kv.get("key")
    if not isinstance(key, str) or _has_lone_surrogate(key):
        return None
    outline: dict[str, Any] = {"key": key}
    if "value" in kv:
        value = kv["value"]
        outline["value"] = (
            {} if _holds_lone_surrogate(value, common_pb2.AnyValue.DESCRIPTOR) else value)
    return outline


def _json_outline(span: Any) -> Any:
    """What a span set apart keeps (as :func:`_span_outline` does for protobuf): its
    ids and flags as sent, and the attributes whose key is valid, so that it is
    selected (by key, or by the evidence marker's value), rejected and declared in
    its trace as the span would be.  What is not a JSON object is left to
    protobuf."""
    if not isinstance(span, dict):
        return span
    outline = {key: value for key, value in span.items() if key in _OUTLINE_FIELDS}
    attributes = span.get("attributes")
    if isinstance(attributes, list):
        kept = (_outline_attribute(kv) for kv in attributes)
        outline["attributes"] = [kv for kv in kept if kv is not None]
    return outline


def _json_undecodable(scope_spans: Any, why: str) -> None:
    """Mark the JSON *scope_spans* as not decodable, *why*, its spans outlined."""
    if not isinstance(scope_spans, dict):
        return
    spans = scope_spans.get("spans")
    scope_spans.clear()
    scope_spans["scope"] = {"name": UNDECODABLE_SCOPE, "version": why}
    if isinstance(spans, list):
        spans = [_json_outline(span) for span in spans]
    if spans is not None:
        scope_spans["spans"] = spans


def _set_apart_lone_surrogates(doc: dict[str, Any]) -> None:
    """Set apart each span of the OTLP/JSON *doc* that holds a lone surrogate (in its
    name, trace state, status, attributes at any depth, events or links), and every
    span under a resource or scope that holds one, as piecewise decoding sets apart
    what protobuf cannot decode (:func:`_parse_piecewise`): its outline, under a scope
    named :data:`~spanproof.exporter.otlp.UNDECODABLE_SCOPE` whose version says why,
    which the receiver rejects and declares alone (SPEC §2.4.2).  protobuf's parser
    refused the whole request for one such string ("Unpaired surrogate"): HTTP 400,
    which a sender takes as permanent, dropping every other span of the batch.
    The resource (or scope) holding one is cleared, its spans kept as outlines.
    """
    for resource_spans in _json_list(doc, "resourceSpans", "resource_spans"):
        if not isinstance(resource_spans, dict):
            continue
        lists = [value for key in ("scopeSpans", "scope_spans")
                 if isinstance(value := resource_spans.get(key), list)]
        if _holds_lone_surrogate(resource_spans, _RESOURCE_SPANS, skip="scope_spans"):
            for key in [key for key in resource_spans if key not in ("scopeSpans",
                                                                     "scope_spans")]:
                del resource_spans[key]
            for scope_spans in (ss for members in lists for ss in members):
                _json_undecodable(scope_spans, f"its resource {_LONE_SURROGATE}")
            continue
        apart: list[Any] = []
        for scope_spans in (ss for members in lists for ss in members):
            if _holds_lone_surrogate(scope_spans, _SCOPE_SPANS, skip="spans"):
                _json_undecodable(scope_spans, f"its scope {_LONE_SURROGATE}")
                continue
            spans = scope_spans.get("spans") if isinstance(scope_spans, dict) else None
            if not isinstance(spans, list):
                continue
            kept = []
            for span in spans:
                if _holds_lone_surrogate(span, _SPAN):
                    apart.append(_json_outline(span))
                else:
                    kept.append(span)
            spans[:] = kept
        if apart:
            lists[0].append({"scope": {"name": UNDECODABLE_SCOPE,
                                       "version": f"a string {_LONE_SURROGATE}"},
                             "spans": apart})


def parse_otlp_json(data: bytes) -> trace_service_pb2.ExportTraceServiceRequest:
    """Decode an OTLP/JSON ``ExportTraceServiceRequest`` (hex ids, int64 as strings,
    integer enums; unknown fields ignored as the OTLP spec requires).  A span holding
    a string with a lone surrogate, or under a resource or scope holding one, is set
    apart to be rejected alone (:func:`_set_apart_lone_surrogates`).

    Raises:
        InvalidRequest: not JSON (``NaN`` and ``Infinity`` included, and numbers
            beyond a double's range), not UTF-8, an object naming a field twice (under one
            spelling or both), not a valid request, or with a span kind or status
            code that is neither an int32 nor a name of its enum.
    """
    encoding = json.detect_encoding(data)
    if encoding not in ("utf-8", "utf-8-sig"):
        # Python's reader decodes UTF-16 and UTF-32 too, where a lone surrogate is
        # not seen by the byte scan below (the whole request failed, not the span).
        raise InvalidRequest(f"body is not UTF-8 (RFC 8259 §8.1) but {encoding}")
    try:
        doc = json.loads(data, parse_constant=_refuse_constant, parse_float=_finite_float,
                         parse_int=_signed_int, object_pairs_hook=_unique_members)
    except InvalidRequest:
        raise
    except (ValueError, UnicodeDecodeError) as e:
        raise InvalidRequest(f"body is not JSON: {e}") from None
    except RecursionError:
        raise InvalidRequest("body is nested too deeply to decode") from None
    if not isinstance(doc, dict):
        raise InvalidRequest("body must be a JSON object")
    spans = _json_span_count(doc)
    if spans > max(len(data) // MIN_JSON_SPAN_BYTES, _ANY_SIZE_SPANS):
        raise _too_many_spans(spans, len(data), MIN_JSON_SPAN_BYTES)
    request = trace_service_pb2.ExportTraceServiceRequest()
    try:
        _to_protobuf_json(doc)
        _check_enums(doc)
        if _SURROGATE_ESCAPE.search(data) or _ENCODED_SURROGATE.search(data):
            _set_apart_lone_surrogates(doc)
        # protobuf's default of 100 nested messages is ~47 levels of values in a
        # request, where SPEC §2.3 allows 64: one span that deep failed the whole
        # request, which a Collector then drops.  Deeper than that, the span alone is
        # rejected; what is too deep for Python's stack gets 400 (below).
        json_format.ParseDict(doc, request, ignore_unknown_fields=True,
                              max_recursion_depth=_JSON_MESSAGE_DEPTH)
    except (json_format.ParseError, ValueError, TypeError, OverflowError) as e:
        raise InvalidRequest(f"not an OTLP ExportTraceServiceRequest: {e}") from None
    except SystemError:
        # protobuf's C parser, naming a value it cannot print (a lone surrogate
        # where a message belongs): still the request's fault, never a retry.
        raise InvalidRequest("not an OTLP ExportTraceServiceRequest: a value of the "
                             "wrong type holds a string that is not Unicode") from None
    except RecursionError:
        raise InvalidRequest("request is nested too deeply to decode") from None
    return request


#: The fewest bytes a span with its ids takes in an encoded request: the span's tag
#: and length (2), ``trace_id`` (18) and ``span_id`` (10).  Decoding costs ~350
#: bytes of memory per span, whatever its size: a request of 2-byte empty spans made
#: the receiver hold ~390 times its size.
MIN_SPAN_BYTES = 30
#: In OTLP/JSON: ``{"traceId":"<32 hex>","spanId":"<16 hex>"}``.
MIN_JSON_SPAN_BYTES = 74
#: Spans a request may hold whatever its size (their decoding costs little), so
#: that a few spans without ids are each rejected with the reason, not the request.
_ANY_SIZE_SPANS = 1024


def _too_many_spans(spans: int, size: int, least: int) -> InvalidRequest:
    return InvalidRequest(
        f"request holds {spans} or more spans in {size} bytes: a span with its trace "
        f"and span ids takes at least {least} bytes")


def _varint(data: bytes, i: int, end: int) -> tuple[int, int]:
    """The varint at *data[i]* and the index after it."""
    value = shift = 0
    while True:
        if i >= end or shift > 63:
            raise DecodeError("bad varint")
        byte = data[i]
        i += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, i
        shift += 7


def _fields(data: bytes, i: int, end: int, *,
            groups: bool = False) -> Iterator[tuple[int, int, int, int]]:
    """Each field of the message *data[i:end]*: (number, wire type, start, end).

    *groups*: a group (wire types 3 and 4, in no OTLP message, which protobuf skips as
    an unknown field) is yielded whole, from after its start tag to after its end
    tag; else it is refused (DecodeError)."""
    while i < end:
        key, i = _varint(data, i, end)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise DecodeError("field number 0")
        if key > 0xFFFFFFFF:  # a tag is 32 bits: protobuf refuses a longer one
            raise DecodeError(f"field number {number} is over 2^29 - 1")
        if wire == 0:
            _, j = _varint(data, i, end)
        elif wire == 1:
            j = i + 8
        elif wire == 2:
            length, i = _varint(data, i, end)
            j = i + length
        elif wire == 5:
            j = i + 4
        elif wire == 3 and groups:
            j = _group_end(data, i, end, number)
        else:  # groups: not in OTLP's messages, known or added later
            raise DecodeError(f"field {number} has wire type {wire}")
        if j > end:
            raise DecodeError("truncated message")
        yield number, wire, i, j
        i = j


def _group_end(data: bytes, i: int, end: int, number: int) -> int:
    """Where the group *number* that starts at *i* ends (after its end tag), groups
    nested in it skipped too, at most ``_PROTOBUF_DEPTH`` deep.

    Raises:
        DecodeError: it does not end, or ends with another group's end tag.
    """
    open_groups = [number]
    while i < end:
        key, i = _varint(data, i, end)
        inner, wire = key >> 3, key & 7
        if inner == 0 or key > 0xFFFFFFFF:
            raise DecodeError("malformed tag in a group")
        if wire == 4:
            if inner != open_groups.pop():
                raise DecodeError(f"group {number} ends with another group's end tag")
            if not open_groups:
                return i
            continue
        if wire == 3:
            open_groups.append(inner)
            if len(open_groups) > _PROTOBUF_DEPTH:
                raise DecodeError("groups nested too deeply")
            continue
        if wire == 0:
            _, i = _varint(data, i, end)
        elif wire == 1:
            i += 8
        elif wire == 2:
            length, i = _varint(data, i, end)
            i += length
        elif wire == 5:
            i += 4
        else:
            raise DecodeError(f"field {inner} has wire type {wire}")
    raise DecodeError(f"group {number} does not end")


def _check_holders(holders: int, spans: int) -> None:
    """Refuse *holders* resource and scope span lists for *spans* spans (the request's,
    or while counting, the most it may hold): the lists a sender writes hold spans."""
    if holders > 2 * spans + _ANY_SIZE_SPANS:
        raise InvalidRequest(f"request holds {holders} or more resource and scope span "
                             f"lists for {spans} spans: each holds spans")


def parse_otlp_protobuf(data: bytes) -> trace_service_pb2.ExportTraceServiceRequest:
    """Decode a protobuf ``ExportTraceServiceRequest``, having first counted its spans
    on the wire: one holding more than ``len(data) / MIN_SPAN_BYTES`` (and over
    1,024) is refused before decoding (its spans cannot all have ids, and decoding
    them would take hundreds of times the request's size in memory), as is one with
    over 1,024 more resource and scope span lists than twice its spans (the lists a
    sender writes each hold spans; empty ones cost as much to decode).

    Raises:
        InvalidRequest: not a protobuf request, or one with too many spans.
    """
    size = len(data)
    most = max(size // MIN_SPAN_BYTES, _ANY_SIZE_SPANS)
    spans = 0
    try:
        # ExportTraceServiceRequest.resource_spans = 1, ResourceSpans.scope_spans = 2,
        # ScopeSpans.spans = 2.
        # Each ResourceSpans and ScopeSpans a sender writes holds a span; beyond a
        # slack, more of them than spans so far is a flood of empty ones.
        holders = 0
        for number, wire, start, end in _fields(data, 0, size):
            if number != 1 or wire != 2:
                continue
            holders += 1
            _check_holders(holders, most)  # spans never exceed most
            for number, wire, start2, end2 in _fields(data, start, end):
                if number != 2 or wire != 2:
                    continue
                holders += 1
                _check_holders(holders, most)
                for number, wire, _, _ in _fields(data, start2, end2):
                    if number == 2 and wire == 2:
                        spans += 1
                        if spans > most:
                            raise _too_many_spans(spans, size, MIN_SPAN_BYTES)
        _check_holders(holders, spans)
        request = trace_service_pb2.ExportTraceServiceRequest()
        try:
            request.ParseFromString(data)
        except (DecodeError, UnicodeDecodeError) as e:
            if _forgiven(e) is None and not _says_not_why(e):
                raise
            # One part nested deeper than protobuf decodes (~47 levels of arrays or
            # ~31 of key-value lists in a request, where SPEC §2.3 allows 64 of
            # either), or one string that is not UTF-8, failed the whole request,
            # and a Collector drops a request answered 400, every other sender's
            # spans in its batch included: decode it piece by piece.  Where protobuf
            # does not say why, the part that fails is diagnosed (:func:`_why`).
            request = _parse_piecewise(data)
    except DecodeError as e:
        raise InvalidRequest(f"body is not an OTLP protobuf request: {e}") from None
    except RecursionError:
        raise InvalidRequest("body is not an OTLP protobuf request: nested too deeply "
                             "to decode") from None
    return request


def _parse_piecewise(data: bytes) -> trace_service_pb2.ExportTraceServiceRequest:
    """*data*, a request protobuf could not decode whole, decoded resource by
    resource, scope by scope and span by span: a span that cannot be decoded is
    held, as the ids, flags and top-level attribute keys read from its bytes (what
    selecting it and declaring it need), under a scope of its own named
    :data:`~spanproof.exporter.otlp.UNDECODABLE_SCOPE` whose version says why, and so
    are the spans under a resource or scope that cannot be decoded (or whose schema
    URL is not UTF-8); the receiver rejects exactly those (partial success).

    Raises:
        DecodeError: the request's own framing is not protobuf, or a part cannot be
            decoded for another reason than its depth or a string that is not UTF-8.
    """
    request = trace_service_pb2.ExportTraceServiceRequest()
    for number, wire, start, end in _fields(data, 0, len(data)):
        if number == 1 and wire == 2:
            _resource_spans_piecewise(data, start, end, request.resource_spans.add())
    return request


def _resource_spans_piecewise(data: bytes, start: int, end: int,
                              rs: trace_pb2.ResourceSpans) -> None:
    problem = _holder_piecewise(data, start, end, rs, "resource",
                                lambda i, j: _scope_spans_piecewise(data, i, j, rs))
    if problem is not None:
        rs.resource.Clear()
        for ss in rs.scope_spans:
            _undecodable(ss, problem)


def _scope_spans_piecewise(data: bytes, start: int, end: int,
                           rs: trace_pb2.ResourceSpans) -> None:
    ss = rs.scope_spans.add()
    problem = _holder_piecewise(data, start, end, ss, "scope",
                                lambda i, j: _span_piecewise(data, i, j, rs, ss))
    if problem is not None:
        _undecodable(ss, problem)


def _holder_piecewise(data: bytes, start: int, end: int, holder: Any, part: str,
                      child: Callable[[int, int], None]) -> str | None:
    """Decode a ``ResourceSpans`` or ``ScopeSpans`` *holder* from *data[start:end]*:
    its *part* (field 1: ``resource`` or ``scope``), its schema URL (3), and each of
    its children (2) through *child*.  Returns why its *part* cannot be decoded."""
    problem = None
    for number, wire, i, j in _fields(data, start, end):
        if wire != 2:
            continue
        if number == 1:
            problem = _merge(getattr(holder, part), data[i:j], f"its {part}") or problem
        elif number == 3:
            try:
                holder.schema_url = data[i:j].decode("utf-8")
            except UnicodeDecodeError:
                problem = problem or f"its {part}'s schema URL is not UTF-8"
        elif number == 2:
            child(i, j)
    return problem


def _span_piecewise(data: bytes, start: int, end: int, rs: trace_pb2.ResourceSpans,
                    ss: trace_pb2.ScopeSpans) -> None:
    why = _merge(ss.spans.add(), data[start:end], "span")
    if why is not None:
        del ss.spans[-1]
        apart = rs.scope_spans.add()
        _undecodable(apart, why)
        apart.spans.append(_span_outline(data, start, end))


def _merge(message: Any, raw: bytes, what: str) -> str | None:
    """Merge the protobuf *raw* into *message*; None, or why it cannot be (*what*
    is nested too deeply).

    Raises:
        DecodeError: *raw* cannot be decoded for another reason than its depth or a
            string that is not UTF-8.
    """
    try:
        message.MergeFromString(raw)
    except (DecodeError, UnicodeDecodeError) as e:
        return f"{what} cannot be decoded ({_why(e, raw, message.DESCRIPTOR)})"
    return None


def _undecodable(ss: trace_pb2.ScopeSpans, why: str) -> None:
    """Mark the spans of *ss* as not decodable, *why*."""
    ss.scope.Clear()
    ss.scope.name, ss.scope.version = UNDECODABLE_SCOPE, why


def _span_outline(data: bytes, start: int, end: int) -> trace_pb2.Span:
    """What the bytes of a span that cannot be decoded still tell: its trace, span
    and parent ids, its flags, and the keys of its attributes (with the evidence
    marker's value when that attribute decodes), so it is selected, rejected and
    declared in its trace as a decoded span would be."""
    span = trace_pb2.Span()
    for number, wire, i, j in _fields(data, start, end, groups=True):
        if wire == 2 and number in (1, 2, 4):
            setattr(span, _OUTLINE_IDS[number], data[i:j])
        elif wire == 5 and number == 16:
            span.flags = int.from_bytes(data[i:j], "little")
        elif wire == 2 and number == 9:
            try:
                kv = common_pb2.KeyValue.FromString(data[i:j])
            except (DecodeError, UnicodeDecodeError):
                key = next((data[a:b] for n, w, a, b in _fields(data, i, j)
                            if n == 1 and w == 2), b"")
                span.attributes.add().key = key.decode("utf-8", "replace")
                continue
            if kv.value.WhichOneof("value") in ("array_value", "kvlist_value"):
                # Its key alone: selection needs no more, and a value that decodes
                # 100 messages below its attribute is 101 below the span, which
                # protobuf then refused to copy into the outline (SystemError, 503).
                span.attributes.add().key = kv.key
            else:
                span.attributes.append(kv)
    return span


_OUTLINE_IDS = {1: "trace_id", 2: "span_id", 4: "parent_span_id"}


_TOO_DEEP = ("nested deeper than protobuf decodes: 100 messages, ~49 levels of arrays or "
             "~32 of key-value lists in a span")
_NOT_UTF8 = "a string is not UTF-8: no canonical JSON form (SPEC §3.1)"


#: How deeply protobuf decodes: 100 messages within the one decoded, in upb and in
#: the pure-Python decoder alike.
_PROTOBUF_DEPTH = 100
#: What upb says before protobuf 7.35, whatever the failure ("with type" from 5.26).
_SAYS_NOT_WHY = re.compile(r"Error parsing message(?: with type '[^']*')?")


def _forgiven(error: DecodeError | UnicodeDecodeError) -> str | None:
    """Why protobuf refused a part of a request, in its own words, when that rejects
    the part alone: it is nested too deeply, or a string in it is not UTF-8 (upb's
    words from protobuf 7.35; the pure-Python decoder's, which raises
    UnicodeDecodeError for such a string; its framing is sound either way).  None
    for any other failure, or words that do not say (:func:`_says_not_why`)."""
    if isinstance(error, UnicodeDecodeError):
        return _NOT_UTF8
    text = str(error)
    if "MaxDepth" in text or "too many levels of nesting" in text:
        return _TOO_DEEP
    if "String field had bad UTF-8" in text:
        return _NOT_UTF8
    return None


def _says_not_why(error: DecodeError | UnicodeDecodeError) -> bool:
    """Whether *error* does not say why protobuf refused the message: upb before
    protobuf 7.35 says "Error parsing message" for a part nested too deeply, a string
    that is not UTF-8 and a broken framing alike."""
    return isinstance(error, DecodeError) and bool(_SAYS_NOT_WHY.fullmatch(str(error)))


def _why(error: DecodeError | UnicodeDecodeError, raw: bytes,
         descriptor: Descriptor) -> str:
    """Why the *descriptor* message *raw*, a part of a request decoded piece by piece,
    cannot be decoded: in protobuf's words (:func:`_forgiven`), or where they do not
    say, from its bytes (:func:`_fault`).

    Raises:
        DecodeError: *error*, when it is not forgiven part by part: the request is
            refused whole, as protobuf refuses it.
    """
    why = _forgiven(error)
    if why is None and _says_not_why(error):
        why = _fault(raw, descriptor)
    elif why == _NOT_UTF8 and isinstance(error, DecodeError) and _fault(raw, descriptor) is None:
        # upb checks a string read past the end of its message before it notices
        # the framing is broken: refused whole, as the other decoders refuse it.
        why = None
    if why is None:
        raise error
    return why


def _fault(raw: bytes, descriptor: Descriptor) -> str | None:
    """Why protobuf refused the *descriptor* message *raw*, found from its bytes as
    protobuf decodes them (first fault first): :data:`_NOT_UTF8` for a string field
    that is not UTF-8, :data:`_TOO_DEEP` for a message field nested deeper than
    `_PROTOBUF_DEPTH`; None when its framing is broken first, or no fault is found."""
    try:
        return _first_fault(raw, 0, len(raw), descriptor, 0)
    except DecodeError:
        return None


def _first_fault(data: bytes, start: int, end: int, descriptor: Descriptor,
                 depth: int) -> str | None:
    """The first fault of :func:`_fault` in the *descriptor* message *data[start:end]*,
    *depth* messages within the one decoded.

    Raises:
        DecodeError: the message's framing is broken (:func:`_fields`).
    """
    fields = descriptor.fields_by_number
    for number, wire, i, j in _fields(data, start, end, groups=True):
        field = fields.get(number)
        if field is None or wire != 2:  # unknown, or of another wire type: skipped
            continue
        if field.type == FieldDescriptor.TYPE_STRING:
            try:
                data[i:j].decode("utf-8")
            except UnicodeDecodeError:
                return _NOT_UTF8
        elif (message := field.message_type) is not None:
            if depth == _PROTOBUF_DEPTH:
                return _TOO_DEEP
            why = _first_fault(data, i, j, message, depth + 1)
            if why is not None:
                return why
    return None


def _response(result: IngestResult) -> trace_service_pb2.ExportTraceServiceResponse:
    response = trace_service_pb2.ExportTraceServiceResponse()
    if result.rejected or result.message:
        response.partial_success.rejected_spans = result.rejected
        response.partial_success.error_message = result.message
    return response


#: The most bytes a gRPC status message takes in its ``grpc-message`` trailer, where
#: it is percent-encoded (three bytes for each byte outside printable ASCII, and for
#: ``%``).  Clients bound a call's metadata (gRPC C-core to 8 KiB by default): a
#: longer message (a rejection naming three spans' nested attribute keys took 12 KB)
#: failed the call at the client with ``RESOURCE_EXHAUSTED``, which OpenTelemetry's
#: exporters retry, instead of the receiver's ``INVALID_ARGUMENT``, and an
#: ``UNAVAILABLE`` lost its ``RetryInfo``.
GRPC_STATUS_MESSAGE_BYTES = 2048
_CUT_MARK = " ... ({} characters cut)"


def _grpc_message(text: str) -> str:
    """*text* as a gRPC status message: whole when it fits in
    `GRPC_STATUS_MESSAGE_BYTES` percent-encoded, else its start and how much was cut."""
    if 3 * len(text) <= GRPC_STATUS_MESSAGE_BYTES or (
            _percent_encoded(text) <= GRPC_STATUS_MESSAGE_BYTES):
        return text
    room = GRPC_STATUS_MESSAGE_BYTES - len(_CUT_MARK.format(len(text)))
    size = 0
    for i, char in enumerate(text):
        size += _percent_encoded(char)
        if size > room:
            return text[:i] + _CUT_MARK.format(len(text) - i)
    return text  # not reached: the whole text is larger than room


def _percent_encoded(text: str) -> int:
    """The bytes gRPC's percent-encoding of *text* takes."""
    data = text.encode("utf-8", "replace")
    return len(data) + 2 * sum(1 for b in data if not 0x20 <= b <= 0x7E or b == 0x25)


def _abort(context: grpc.ServicerContext, code: grpc.StatusCode, message: str) -> None:
    """End the call with *code* and *message*, cut to fit a client's metadata."""
    context.abort(code, _grpc_message(message))


def _abort_unavailable(context: grpc.ServicerContext, error: Unavailable) -> None:
    """End the call ``UNAVAILABLE`` with the ``RetryInfo`` the Collector honours."""
    message = _grpc_message(str(error))
    status = _unavailable_status(error, message)
    context.set_trailing_metadata((("grpc-status-details-bin", status.SerializeToString()),))
    context.abort(grpc.StatusCode.UNAVAILABLE, message)


def _unavailable_status(error: Unavailable, message: str | None = None) -> status_pb2.Status:
    status = status_pb2.Status(code=code_pb2.UNAVAILABLE,
                               message=str(error) if message is None else message)
    detail = any_pb2.Any()
    seconds = max(0.0, error.retry_after)
    detail.Pack(
        error_details_pb2.RetryInfo(
            retry_delay=duration_pb2.Duration(seconds=int(seconds), nanos=int((seconds % 1) * 1e9))
        )
    )
    status.details.append(detail)
    return status


class _Arrivals:
    """The calls whose request message is still arriving, each cancelled when it has
    not arrived by its deadline (a watch thread looks once a second).

    A unary handler's request is read before the handler runs, with no time limit, so
    the handlers that bound it read their request as a stream, through `first`.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._arriving: dict[int, tuple[float, grpc.ServicerContext]] = {}
        self._stop: threading.Event | None = None

    def start(self) -> None:
        self._stop = start_watch(self._check, "spanproof-grpc-arrivals")

    def close(self) -> None:
        if self._stop is not None:
            self._stop.set()

    def first(self, requests: Iterator[bytes], context: grpc.ServicerContext,
              seconds: float) -> bytes | None:
        """The call's request message, or None when the client sent none.  A call
        cancelled meanwhile (by its client, or here after *seconds*) is aborted, and
        a message that arrived as it was cancelled is not returned."""
        key = id(context)
        with self._lock:
            self._arriving[key] = (time.monotonic() + seconds, context)
        try:
            data = next(requests, None)
        except grpc.RpcError as e:
            # gRPC keeps this error in the call's state, and its traceback holds the
            # frames that hold that state: a cycle that kept the call, and its HTTP/2
            # stream, until the garbage collector ran (rarely, in spanproof receiver),
            # so a connection's cancelled calls used up its streams.
            e.__traceback__ = None
            data = None
        finally:
            with self._lock:
                del self._arriving[key]
        if not context.is_active():
            context.abort(grpc.StatusCode.CANCELLED, "cancelled before its request arrived")
        return data

    def _check(self, now: float) -> None:
        with self._lock:  # a call whose message just arrived is no longer here
            for deadline, context in self._arriving.values():
                if deadline <= now:
                    context.cancel()


class _TraceService:
    def __init__(self, ingest: Ingest, arrivals: _Arrivals, admission: Admission) -> None:
        self._ingest = ingest
        self._arrivals = arrivals
        self._admission = admission

    def Export(self, requests: Iterator[bytes], context: grpc.ServicerContext) -> bytes:
        try:
            self._admission()  # refused now: the request is not even read
        except Unavailable as e:
            _abort_unavailable(context, e)
        data = self._arrivals.first(requests, context, GRPC_BODY_SECONDS)
        if data is None:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          "no ExportTraceServiceRequest message")
        # The request arrives undecoded, so a body protobuf cannot parse (for example
        # nested deeper than its recursion limit) is INVALID_ARGUMENT, not INTERNAL.
        try:
            request = parse_otlp_protobuf(data)
        except InvalidRequest as e:
            _abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(e))
        try:
            result = self._ingest(request.resource_spans)
        except InvalidRequest as e:
            _abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(e))
        except Unavailable as e:
            _abort_unavailable(context, e)
        except Exception as e:  # a bug must not become INTERNAL (dropped by the Collector)
            _logger.exception("receiver: unexpected error while ingesting")
            _abort_unavailable(context, Unavailable(f"receiver error: {e}", 5.0))
        return _response(result).SerializeToString()


#: The calls the gRPC server holds at once: those its workers serve and those waiting
#: for a worker.  gRPC reads a waiting call's message into memory before any worker
#: asks for it (up to ``--max-message-bytes`` each), so beyond this many a call is
#: answered ``UNAVAILABLE`` with ``RetryInfo`` at once instead of waiting.  It is also
#: each connection's HTTP/2 stream limit: a client's further calls wait in the client.
GRPC_CALLS_AT_ONCE = 16
#: The retry delay that answer asks for.
GRPC_BUSY_RETRY_AFTER = 1.0
#: How long an Export call's request may take to arrive once a worker takes the call
#: (as an OTLP/HTTP body must arrive within 120 s of its turn); then it is cancelled.
GRPC_BODY_SECONDS = 120.0
#: How long a health check's request may take to arrive before the check is cancelled.
GRPC_HEALTH_BODY_SECONDS = 2.0
#: While a connection has calls under way and has been silent this long, the server
#: pings it, and closes it (cancelling its calls) when no answer comes within
#: `GRPC_PING_TIMEOUT_SECONDS`: a client that vanished mid-request (its host gone,
#: a network cut, no FIN) otherwise holds its calls' places for TCP's hours.
GRPC_KEEPALIVE_SECONDS = 30.0
#: gRPC's own default, set so that tests can shorten it.  Not less: newer gRPC cores
#: time every ping by it, the flow-control pings a connection sends while a request
#: arrives included, and a client uploading slowly answers those behind its data.
GRPC_PING_TIMEOUT_SECONDS = 60.0
_TRACE_SERVICE = "opentelemetry.proto.collector.trace.v1.TraceService"
_EXPORT_METHOD = f"/{_TRACE_SERVICE}/Export"
_HEALTH_CHECK_METHOD = "/grpc.health.v1.Health/Check"
# grpc.health.v1's HealthCheckResponse.ServingStatus values.
_SERVING, _NOT_SERVING = 1, 2


class _CountingPool(futures.ThreadPoolExecutor):
    """The gRPC server's workers, counting the calls handed to them and not yet done."""

    def __init__(self, workers: int, name: str = "spanproof-grpc") -> None:
        super().__init__(max_workers=workers, thread_name_prefix=name)
        self.workers = workers
        self._count_lock = threading.Lock()
        self.calls = 0

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> futures.Future[Any]:
        with self._count_lock:
            self.calls += 1
        try:
            future = super().submit(fn, *args, **kwargs)
        except BaseException:
            self._done(None)
            raise
        future.add_done_callback(self._done)
        return future

    def _done(self, _future: futures.Future[Any] | None) -> None:
        with self._count_lock:
            self.calls -= 1


class _Busy:
    """Answers a call beyond the bound ``UNAVAILABLE`` with ``RetryInfo``.

    It runs on a thread of its own (gRPC's ``experimental_thread_pool`` hook), so the
    answer does not wait behind the calls the workers hold, and as a stream-request
    handler that never reads its request: a unary handler's request is read to its
    end before the handler runs, and a body that is slow to arrive would hold the
    thread, and every busy answer after it.
    """

    def __init__(self, calls_at_once: int, thread: futures.ThreadPoolExecutor) -> None:
        self.experimental_thread_pool = thread
        self._error = Unavailable(
            f"busy: {calls_at_once} calls are being served or waiting", GRPC_BUSY_RETRY_AFTER)

    def __call__(self, requests: Iterator[bytes], context: grpc.ServicerContext) -> bytes:
        del requests  # not read
        context.set_trailing_metadata(
            (("grpc-status-details-bin", _unavailable_status(self._error).SerializeToString()),)
        )
        context.abort(grpc.StatusCode.UNAVAILABLE, str(self._error))


class _HealthCheck:
    """``grpc.health.v1.Health/Check``, on threads of its own.

    Its messages are written with the well-known wrapper types, whose wire format is
    the same: ``HealthCheckRequest`` is a ``string`` field 1, as ``StringValue`` is, and
    ``HealthCheckResponse`` an enum field 1, a varint as ``Int32Value``'s.  ``Watch``
    is not offered (``UNIMPLEMENTED``); probes use ``Check``.  It reads its request as
    a stream, so a request that has not arrived within `GRPC_HEALTH_BODY_SECONDS` is
    cancelled instead of holding a thread.
    """

    def __init__(
        self, health: Health, threads: futures.ThreadPoolExecutor, arrivals: _Arrivals
    ) -> None:
        self.experimental_thread_pool = threads
        self._health = health
        self._arrivals = arrivals

    def __call__(self, requests: Iterator[bytes], context: grpc.ServicerContext) -> bytes:
        data = self._arrivals.first(requests, context, GRPC_HEALTH_BODY_SECONDS)
        if data is None:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "no HealthCheckRequest")
        try:
            service = wrappers_pb2.StringValue.FromString(data).value
        except (DecodeError, UnicodeDecodeError) as e:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"not a HealthCheckRequest: {e}")
        if service not in ("", _TRACE_SERVICE):
            _abort(context, grpc.StatusCode.NOT_FOUND, f"unknown service {service!r}")
        return _health_answer(self._health)


def _health_answer(health: Health) -> bytes:
    """A ``HealthCheckResponse`` with the status *health* gives."""
    status = _SERVING if health() is None else _NOT_SERVING
    return wrappers_pb2.Int32Value(value=status).SerializeToString()


class _HealthNow:
    """The health check's answer while its threads are all taken: the receiver's
    status, for ``""`` and the TraceService alike, without reading the request (so
    an unknown service's check gets it too, not ``NOT_FOUND``).  It runs on the busy
    answer's thread: checks whose request never arrives held both health threads
    for 2 s each, and a real probe waited behind every one of them."""

    def __init__(self, health: Health, thread: futures.ThreadPoolExecutor) -> None:
        self.experimental_thread_pool = thread
        self._health = health

    def __call__(self, requests: Iterator[bytes], context: grpc.ServicerContext) -> bytes:
        del requests  # not read
        return _health_answer(self._health)


class _Handlers(grpc.GenericRpcHandler):
    """``TraceService/Export``, or the busy answer once the workers hold enough calls;
    and the health check, or its answer at once once its threads are taken.

    gRPC looks a call's handler up on its one polling thread, just before handing the
    call to the workers' pool, so the count it reads is exact: only calls finishing
    can change it meanwhile.
    """

    def __init__(
        self,
        ingest: Ingest,
        pool: _CountingPool,
        calls_at_once: int,
        health: Health,
        admission: Admission,
    ) -> None:
        self.arrivals = _Arrivals()
        self._pool = pool
        self._calls_at_once = calls_at_once
        # Threads for the answers that must not wait behind the workers' calls.
        busy_thread = futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="spanproof-grpc-busy")
        health_threads = _CountingPool(2, "spanproof-grpc-health")
        self._health_threads = health_threads
        self.answer_threads = (busy_thread, health_threads)
        self._export: grpc.RpcMethodHandler[bytes, bytes] = (
            grpc.stream_unary_rpc_method_handler(
                _TraceService(ingest, self.arrivals, admission).Export))
        self._busy: grpc.RpcMethodHandler[bytes, bytes] = (
            grpc.stream_unary_rpc_method_handler(_Busy(calls_at_once, busy_thread)))
        self._health: grpc.RpcMethodHandler[bytes, bytes] = (
            grpc.stream_unary_rpc_method_handler(
                _HealthCheck(health, health_threads, self.arrivals)))
        self._health_now: grpc.RpcMethodHandler[bytes, bytes] = (
            grpc.stream_unary_rpc_method_handler(_HealthNow(health, busy_thread)))

    def service(
        self, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        method = handler_call_details.method
        if method == _HEALTH_CHECK_METHOD:
            if self._health_threads.calls >= self._health_threads.workers:
                return self._health_now
            return self._health
        if method != _EXPORT_METHOD:
            return None
        if self._pool.calls >= self._calls_at_once:
            return self._busy
        return self._export


class GrpcServer:
    """OTLP/gRPC ``TraceService/Export`` on *address* (``host:port``; port 0 = free).

    *workers* threads serve calls; with *calls_at_once* calls served or waiting, the
    next is answered ``UNAVAILABLE`` with ``RetryInfo`` (see `GRPC_CALLS_AT_ONCE`).
    The health check answers ``NOT_SERVING`` while *health* gives a reason.  While
    *admission* raises `Unavailable`, an Export call is answered with it unread.  With
    *tls*, it serves TLS (and, with a client CA, mutual TLS) only.  A connection's
    handshake (TLS, then HTTP/2's opening) must end within `HANDSHAKE_SECONDS` of it.

    Raises:
        ValueError: *calls_at_once* is less than *workers*, *max_message_bytes* is
            not from 1 to `MAX_MESSAGE_BYTES`, or a TLS file is unusable.
        OSError: *address* cannot be listened on (another process listens on it,
            another gRPC server too: the port is not shared).
    """

    def __init__(
        self,
        address: str,
        ingest: Ingest,
        *,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        workers: int = 8,
        calls_at_once: int = GRPC_CALLS_AT_ONCE,
        health: Health = _always_serving,
        admission: Admission = _always_accepting,
        tls: ServerTLS | None = None,
    ) -> None:
        _check_message_bytes(max_message_bytes)
        if calls_at_once < workers:
            raise ValueError(f"calls_at_once ({calls_at_once}) must be at least "
                             f"workers ({workers})")
        self._pool = _CountingPool(workers)
        self._server = grpc.server(
            self._pool,
            options=[
                ("grpc.max_receive_message_length", max_message_bytes),
                ("grpc.max_send_message_length", max_message_bytes),
                ("grpc.max_concurrent_streams", calls_at_once),
                ("grpc.keepalive_time_ms", int(GRPC_KEEPALIVE_SECONDS * 1000)),
                ("grpc.keepalive_timeout_ms", int(GRPC_PING_TIMEOUT_SECONDS * 1000)),
                # Newer gRPC cores time a keepalive ping by this one.
                ("grpc.http2.ping_timeout_ms", int(GRPC_PING_TIMEOUT_SECONDS * 1000)),
                ("grpc.server_handshake_timeout_ms", int(HANDSHAKE_SECONDS * 1000)),
                # gRPC sets SO_REUSEPORT on Linux unless told not to: a second
                # receiver on the same port then listened too, and the kernel split
                # the connections between the two (one trace's spans in two output
                # directories).  Without it, the second one's bind fails.
                ("grpc.so_reuseport", 0),
            ],
        )
        self._handlers = _Handlers(ingest, self._pool, calls_at_once, health, admission)
        self._started = False
        self._server.add_generic_rpc_handlers((self._handlers,))
        credentials = None if tls is None else tls.grpc_credentials()
        try:
            if credentials is None:
                self.port = self._server.add_insecure_port(address)
            else:
                self.port = self._server.add_secure_port(address, credentials)
        except RuntimeError as e:
            # Newer gRPC raises "Failed to bind to address ..." (it logs the reason);
            # older gRPC returns 0.  Either is an OSError here, as HttpServer's is.
            raise OSError(str(e)) from e
        if self.port == 0:
            raise OSError(f"cannot listen on {address}")
        self.host = address.rsplit(":", 1)[0]

    def start(self) -> None:
        """Start serving in background threads."""
        self._handlers.arrivals.start()
        self._server.start()
        self._started = True

    def stop(self, grace: float = 5.0) -> None:
        """Stop accepting, let in-flight requests finish for up to *grace* seconds.
        A server never started stops listening too."""
        if not self._started:
            # gRPC's stop() does nothing to a server never started, which then holds
            # its port until the process ends: started here, it stops at once.
            self._server.start()
        self._server.stop(grace).wait()
        self._handlers.arrivals.close()
        for threads in self._handlers.answer_threads:
            threads.shutdown(wait=False)
        self._pool.shutdown(wait=False)

    @property
    def calls(self) -> int:
        """The calls the workers serve or that wait for one (at most *calls_at_once*)."""
        return self._pool.calls


# Bounds on a chunked body's framing: the length of a chunk-size or trailer line, and
# the number of trailer fields.
_MAX_LINE = 4096
_MAX_TRAILERS = 64
_LINE_ENDS = (b"\r\n", b"\n")
# chunk-size [ chunk-ext ] CRLF (RFC 9112 §7.1): hex digits only, no leading space,
# and no bare CR anywhere, which another parser could read as a line end.
_CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]{1,16})(?:[ \t]*;[^\r\n]*)?\r?\n\Z")
# A gzip body is decompressed this many bytes of input at a time (what is left after
# a member is copied once per member, so at most this much), in at most this many
# members: one is what exporters send, and each costs a decompressor.
_GZIP_SLICE = 64 * 1024
_MAX_GZIP_MEMBERS = 1024


def _read_message_body(handler: BaseHTTPRequestHandler, limit: int) -> bytes:
    """The request's message body as sent (RFC 9112 §6.3): ``Content-Length`` bytes, or
    a ``Transfer-Encoding: chunked`` body, at most *limit* bytes either way.

    Raises:
        InvalidRequest: no usable body length, a body cut short, or bad chunk framing.
        _TooLarge: the body exceeds *limit*.
        _NotImplemented: a transfer coding other than chunked.
    """
    codings = handler.headers.get_all("Transfer-Encoding") or []
    lengths = handler.headers.get_all("Content-Length") or []
    if codings:
        if lengths:
            # RFC 9112 §6.3 item 3: a request smuggling pattern.
            raise InvalidRequest("both Transfer-Encoding and Content-Length")
        # Repeated fields are one list (RFC 9110 §5.3): "chunked" must be all of it.
        transfer_encoding = ", ".join(codings)
        if transfer_encoding.strip().lower() != "chunked":
            raise _NotImplemented(f"unsupported Transfer-Encoding {transfer_encoding!r}")
        return _read_chunked(_BodyStream(handler), limit)
    if not lengths:
        raise InvalidRequest("Content-Length is required")
    if len(lengths) > 1:
        # A front end that takes another one than this server would frame another body.
        raise InvalidRequest("more than one Content-Length")
    length_text = lengths[0].strip()
    if not (length_text.isascii() and length_text.isdigit()):
        raise InvalidRequest("bad Content-Length")
    # Leading zeros are allowed (RFC 9110 §8.6); int() refuses over 4,300 digits.
    digits = length_text.lstrip("0") or "0"
    if len(digits) > len(str(limit)) or int(digits) > limit:
        raise _TooLarge(f"body of {digits if len(digits) <= 20 else 'over 10**20'} bytes "
                        f"exceeds the {limit}-byte limit")
    length = int(digits)
    body = _BodyStream(handler).read(length)
    if len(body) < length:
        raise InvalidRequest(f"body cut short ({len(body)} of {length} bytes)")
    return body


class _BodyStream:
    """A request's body (or its head, with *seconds* and *what*), read from the
    handler's stream within HTTP_BODY_SECONDS.

    The socket's timeout bounds each read; a client sending a byte now and then
    would pass every one of them and keep its turn (HTTP_REQUESTS_AT_ONCE) for as
    long as it liked.  Reads here take what has arrived, one receive at a time, and
    give up once the body's time is spent.
    """

    def __init__(
        self, handler: BaseHTTPRequestHandler, seconds: float | None = None,
        what: str = "request body", started: float | None = None,
    ) -> None:
        self._rfile: Any = handler.rfile  # a BufferedReader: read1 and peek
        self._socket = handler.connection
        self._idle = handler.timeout
        self._seconds = HTTP_BODY_SECONDS if seconds is None else seconds
        self._deadline = (time.monotonic() if started is None else started) + self._seconds
        self._what = what

    def _arm(self) -> None:
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"{self._what} not received within {self._seconds:g} s")
        self._socket.settimeout(left if self._idle is None else min(left, self._idle))

    def read(self, n: int) -> bytes:
        """*n* bytes, or fewer when the client closed the connection."""
        out = bytearray()
        while len(out) < n:
            self._arm()
            piece = self._rfile.read1(min(n - len(out), 1 << 16))
            if not piece:
                break
            out += piece
        return bytes(out)

    def readline(self, limit: int) -> bytes:
        """A line with its end, at most *limit* bytes (fewer: cut short)."""
        out = bytearray()
        while len(out) < limit:
            self._arm()
            buffered = self._rfile.peek(1)[: limit - len(out)]
            if not buffered:
                break
            end = buffered.find(b"\n")
            out += self._rfile.read(len(buffered) if end < 0 else end + 1)
            if end >= 0:
                break
        return bytes(out)


class _HeadTooLarge(http.client.HTTPException):
    """A request line and header fields longer than HTTP_HEAD_BYTES (answered 431, or
    414 when the request line alone is)."""


class _HeadStream:
    """What the request handler reads a request's line and header fields from: at
    most HTTP_HEAD_BYTES of them, within HTTP_HEAD_SECONDS of its first read.

    http.server reads up to 100 header fields of 64 KiB each, with only the socket's
    timeout per read: 60 connections sending 6 MB of header fields each, a byte
    every 20 s, held 430 MB and a thread each for as long as they liked.
    """

    def __init__(self, handler: BaseHTTPRequestHandler, started: float | None = None) -> None:
        self._stream = _BodyStream(handler, HTTP_HEAD_SECONDS, "request line and header fields",
                                   started)
        self._left = HTTP_HEAD_BYTES

    def readline(self, limit: int = -1) -> bytes:
        """A line, as ``BufferedReader.readline`` reads it."""
        limit = self._left + 1 if limit < 0 else min(limit, self._left + 1)
        line = self._stream.readline(limit)
        self._left -= len(line)
        if self._left < 0:
            raise _HeadTooLarge(f"request line and header fields longer than "
                                f"{HTTP_HEAD_BYTES} bytes")
        return line


def _read_chunked(rfile: _BodyStream, limit: int) -> bytes:
    """A chunked body (RFC 9112 §7.1), its trailer fields read and ignored.  The
    framing counts against *limit* with the data, so tiny chunks cannot make the
    body cost more than *limit* bytes to read."""
    body = bytearray()
    size = 0
    while True:
        line = _read_line(rfile, "chunk size")
        framing = _CHUNK_SIZE.match(line)  # chunk extensions are ignored
        if framing is None:
            raise InvalidRequest(f"bad chunk size line {line[:20]!r}")
        n = int(framing[1], 16)
        if n == 0:
            break
        size += n + len(line) + 2
        if size > limit:
            raise _TooLarge(f"chunked body exceeds the {limit}-byte limit")
        data = rfile.read(n)
        if len(data) < n:
            raise InvalidRequest("chunked body cut short")
        body += data
        if _read_line(rfile, "chunk end") not in _LINE_ENDS:
            raise InvalidRequest("chunk data longer than its size")
    for _ in range(_MAX_TRAILERS + 1):
        if _read_line(rfile, "trailer field") in _LINE_ENDS:
            return bytes(body)
    raise InvalidRequest(f"more than {_MAX_TRAILERS} trailer fields")


def _read_line(rfile: _BodyStream, what: str) -> bytes:
    line = rfile.readline(_MAX_LINE + 1)
    if not line.endswith(b"\n"):
        why = "cut short" if len(line) <= _MAX_LINE else f"longer than {_MAX_LINE} bytes"
        raise InvalidRequest(f"chunked body: {what} line {why}")
    return line


def _decode_content(handler: BaseHTTPRequestHandler, body: bytes, limit: int) -> bytes:
    """*body* with its ``Content-Encoding`` (identity, gzip or deflate) undone."""
    # RFC 9110 §5.5: the whitespace around a field value is not part of it.
    encoding = (handler.headers.get("Content-Encoding") or "identity").strip().lower()
    if encoding == "gzip":
        body = _gunzip(body, limit)
    elif encoding == "deflate":
        body = _inflate(body, limit)
    elif encoding != "identity":
        raise InvalidRequest(f"unsupported Content-Encoding {encoding!r}")
    return body


class _TooLarge(Exception):
    pass


class _NotImplemented(Exception):
    pass


def _gunzip(data: bytes, limit: int) -> bytes:
    """A gzip body decompressed: every member of it (RFC 1952 §2.2: a gzip file is a
    series of members, which Go's and Python's readers join), at most *limit* bytes
    in all.

    Raises:
        InvalidRequest: a member is damaged or cut short, or data after a member is
            not another member.
        _TooLarge: the decompressed body exceeds *limit*.
    """
    view = memoryview(data)
    out = bytearray()
    pos = 0
    members = 0
    while members == 0 or pos < len(view):
        if members == _MAX_GZIP_MEMBERS:
            raise InvalidRequest(f"gzip body of more than {_MAX_GZIP_MEMBERS} members")
        what = "data after the last gzip member" if members else "bad gzip body"
        pos = _decompress_stream(zlib.decompressobj(16 + zlib.MAX_WBITS), view, pos, out,
                                 limit, what, "bad gzip body: the stream is cut short "
                                 "(no end of member)")
        members += 1
    return bytes(out)


def _inflate(data: bytes, limit: int) -> bytes:
    """A ``deflate`` body decompressed, at most *limit* bytes: the zlib format (RFC
    9110 §8.4.1.2, RFC 1950), as OpenTelemetry's OTLP/HTTP exporters send it.

    Raises:
        InvalidRequest: the stream is damaged or cut short, or data follows it.
        _TooLarge: the decompressed body exceeds *limit*.
    """
    view = memoryview(data)
    out = bytearray()
    pos = _decompress_stream(zlib.decompressobj(), view, 0, out, limit, "bad deflate body",
                             "bad deflate body: the stream is cut short (no end of stream)")
    if pos < len(view):
        raise InvalidRequest(f"bad deflate body: {len(view) - pos} bytes after the stream")
    return bytes(out)


def _decompress_stream(
    decomp: Any, view: memoryview, pos: int, out: bytearray, limit: int, what: str,
    cut: str,
) -> int:
    """Decompress one stream of *view* from *pos* into *out*, a slice at a time (so a
    small body cannot expand past *limit* in memory), and return where it ended.

    Raises:
        InvalidRequest: the stream is damaged (*what* and zlib's reason) or cut
            short (*cut*).
        _TooLarge: *out* would exceed *limit*.
    """
    while not decomp.eof:
        if pos >= len(view):
            raise InvalidRequest(cut)
        piece = view[pos:pos + _GZIP_SLICE]
        try:
            out += decomp.decompress(piece, limit - len(out) + 1)
        except zlib.error as e:
            raise InvalidRequest(f"{what}: {e}") from None
        if len(out) > limit or decomp.unconsumed_tail:
            raise _TooLarge(f"decompressed body exceeds the {limit}-byte limit")
        pos += len(piece) - len(decomp.unused_data)
    return pos


#: Requests whose bodies the HTTP server reads and ingests at once (the gRPC server's
#: workers are as many): memory is bounded by this many bodies, not by the number of
#: clients.  A request beyond them waits, its bytes still in the client's socket.
HTTP_REQUESTS_AT_ONCE = 8
#: How long a request waits for its turn before it is answered 503 (Retry-After).
HTTP_TURN_WAIT = 10.0
#: A connection that sends nothing for this long is closed (a stalled or idle client
#: holds a thread, and a partly read body, no longer than this).
HTTP_IDLE_TIMEOUT = 60.0
#: A request's body must arrive within this long once its turn is taken.
HTTP_BODY_SECONDS = 120.0
#: A request's line and header fields must arrive within this long (from the
#: previous answer on the connection, or its opening, its TLS handshake, which has
#: `HANDSHAKE_SECONDS` of it, included), and be at most this long.
HTTP_HEAD_SECONDS = 60.0
HTTP_HEAD_BYTES = 64 * 1024
#: Connections served at once, each on a thread of its own.  One beyond them takes
#: the place of the connection idle longest (no whole request head, its line and
#: header fields, read on it since its opening, its TLS handshake included, or since
#: its last answer), which is closed, as nginx reuses its idle keep-alive
#: connections when its connections run out: 128 connections that sent nothing, or
#: only a request line, kept every Collector's request out for the head's time
#: (60 s), again and again.  A connection handles a request once its whole head has
#: arrived; only when all of them are handling a request is a new one answered 503
#: (``Retry-After: 1``) and closed (over TLS, closed unanswered).
HTTP_CONNECTIONS_AT_ONCE = 128
#: A client refused in the TLS handshake for its certificate is logged as a warning,
#: with the reason; more refused for the same reason are logged at most once this
#: often (seconds), the next one, the period's end or the server's stop counting
#: those held back: a client retrying in a loop made a line per attempt.
HTTP_REFUSAL_WARNING_SECONDS = 60.0
# Reasons beyond this many (OpenSSL's are a few dozen) share one warning's period.
_REFUSAL_REASONS = 32
#: How long `HttpServer.stop` lets the requests being handled finish (seconds), as
#: `GrpcServer.stop`'s default grace.
HTTP_STOP_GRACE = 5.0
# After the grace, how long stop() waits for the connections it cut to end.
_STOP_MARGIN = 0.5
# How long the accepting thread waits for the place of an idle connection it closed
# for a new one (see _BoundedServer._evict_idlest).
_EVICTION_WAIT = 1.0
# The answer to a path not served names the ones that are: an SDK exporter given
# OTEL_EXPORTER_OTLP_TRACES_ENDPOINT without /v1/traces (used as it is, where the
# general OTEL_EXPORTER_OTLP_ENDPOINT has it appended) got a bare "not found".
_NOT_FOUND = "not found: this receiver serves POST /v1/traces (and GET /healthz)"
# OTLP/HTTP: the body of every 4xx and 5xx answer is a google.rpc.Status, in
# protobuf where the request's content type is not known (it was "busy", text).
_BUSY_STATUS = status_pb2.Status(
    code=code_pb2.UNAVAILABLE,
    message=f"busy: {HTTP_CONNECTIONS_AT_ONCE} connections are handling requests",
).SerializeToString()
_BUSY_CONNECTION = (
    b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nConnection: close\r\n"
    b"Content-Type: application/x-protobuf\r\nContent-Length: "
    + str(len(_BUSY_STATUS)).encode("ascii") + b"\r\n\r\n" + _BUSY_STATUS
)
# The gRPC code of an HTTP error the standard library's parser answers (send_error).
_ERROR_CODES = {400: code_pb2.INVALID_ARGUMENT, 408: code_pb2.DEADLINE_EXCEEDED,
                414: code_pb2.INVALID_ARGUMENT, 431: code_pb2.INVALID_ARGUMENT,
                501: code_pb2.UNIMPLEMENTED, 505: code_pb2.UNIMPLEMENTED}


def _make_handler(
    ingest: Ingest, limit: int, health: Health, admission: Admission
) -> type[BaseHTTPRequestHandler]:
    turns = threading.BoundedSemaphore(HTTP_REQUESTS_AT_ONCE)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "spanproof-receiver"
        timeout = HTTP_IDLE_TIMEOUT
        turns_at_once = turns  # the requests being read and ingested (see above)
        _body_read = False  # whether this request's message body was read to its end
        # When a TLS connection's handshake began, until its first head is read.
        _connected: float | None = None

        def log_message(self, format: str, *args: Any) -> None:
            _logger.debug("http: " + format, *args)

        def handle_one_request(self) -> None:
            rfile = self.rfile
            # A TLS connection's first head shares its time with the handshake.
            started, self._connected = self._connected, None
            self.rfile = _HeadStream(self, started)  # type: ignore[assignment]
            try:
                super().handle_one_request()
            except _HeadTooLarge as e:
                # The request line alone (parse_request answers 431 for the fields).
                self.requestline = self.request_version = self.command = ""
                self.send_error(HTTPStatus.REQUEST_URI_TOO_LONG, None, str(e))
            finally:
                self.rfile = rfile
                if not self._connections().end_request(self.connection):
                    self.close_connection = True  # stopping: no next request

        def _connections(self) -> _BoundedServer:
            return self.server  # type: ignore[return-value]

        def parse_request(self) -> bool:
            # The connection stays idle (it can be closed for a new one, or at a stop)
            # until its whole head is read: marked busy from its request line, 128
            # connections that sent one and went silent held every place for the
            # head's 60 s.  An error answer (400, 431, 505, and the 414 above) is sent
            # while it is still idle, so a connection closed for a new one meanwhile
            # may lose it; that is acceptable, as its client sent no request that
            # could have been served.
            try:
                parsed = super().parse_request()
            finally:
                # The head is read: the body is read from the stream itself.
                self.rfile = self._raw_rfile
                self.connection.settimeout(self.timeout)
            if not parsed:
                return False
            # The request is being handled from here on (HttpServer.stop waits for
            # it), unless the server is stopping or the connection was closed for a
            # new one (whose shut-down socket may also have ended the head early).
            if not self._connections().begin_request(self.connection):
                # Closed unanswered, its body not read: a client retries it.
                self.close_connection = True
                return False
            return True

        def setup(self) -> None:
            self._connected = None
            if isinstance(self.request, ssl.SSLSocket):
                # Within HANDSHAKE_SECONDS, and within the time the first head has,
                # both counted from here; a failure ends the connection
                # (_BoundedServer.handle_error logs it quietly).
                self._connected = time.monotonic()
                _handshake(self.request, self._connected + HANDSHAKE_SECONDS)
            super().setup()  # which sets the socket's timeout (HTTP_IDLE_TIMEOUT) again
            self._raw_rfile = self.rfile

        def _send(
            self, code: int, body: bytes, content_type: str, headers: dict[str, str] | None = None
        ) -> None:
            self.send_response(code)
            if self._connections().stopping:
                self.close_connection = True  # answered, then closed
            if not self._body_read or self.close_connection:
                # What is left of an unread body would be read as the next request.
                self.send_header("Connection", "close")
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(body)

        def _send_status(
            self,
            http_code: int,
            status: status_pb2.Status,
            as_json: bool,
            headers: dict[str, str] | None = None,
        ) -> None:
            if as_json:
                body = json_format.MessageToJson(status).encode("utf-8")
                self._send(http_code, body, "application/json", headers)
            else:
                self._send(http_code, status.SerializeToString(), "application/x-protobuf", headers)

        def send_error(self, code: int, message: str | None = None,
                       explain: str | None = None) -> None:
            """An error the request's parsing found (a method not served, a head
            too long, a malformed request line), answered with a google.rpc.Status
            as OTLP/HTTP asks of every 4xx and 5xx, not the standard library's HTML
            page; the connection is closed, as the standard library does."""
            self.log_error("code %d, message %s", code, message)
            self.close_connection = True
            if not message:
                try:
                    message = HTTPStatus(code).phrase
                except ValueError:
                    message = ""
            status = status_pb2.Status(code=_ERROR_CODES.get(code, code_pb2.UNKNOWN),
                                       message=f"{message}: {explain}" if explain else message)
            body = b"" if self.command == "HEAD" else status.SerializeToString()
            self._send(code, body, "application/x-protobuf")

        def do_GET(self) -> None:
            self._body_read = False  # a body sent with it is not read: the connection closes
            if self.path.split("?")[0] != "/healthz":
                self._send(404, f"{_NOT_FOUND}\n".encode(), "text/plain; charset=utf-8")
                return
            reason = health()
            if reason is None:
                self._send(200, b"SERVING\n", "text/plain; charset=utf-8")
            else:
                self._send(503, f"NOT_SERVING: {reason}\n".encode(), "text/plain; charset=utf-8")

        def do_POST(self) -> None:
            self._body_read = False
            content_type = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
            as_json = content_type == "application/json"
            if self.path.split("?")[0] != "/v1/traces":
                self._send_status(
                    404, status_pb2.Status(code=code_pb2.NOT_FOUND, message=_NOT_FOUND), as_json
                )
                return
            turn = False
            try:
                if content_type not in ("application/x-protobuf", "application/json"):
                    raise _Unsupported(f"unsupported Content-Type {content_type!r}")
                turn = turns.acquire(timeout=HTTP_TURN_WAIT)
                if not turn:
                    raise Unavailable(
                        f"busy: {HTTP_REQUESTS_AT_ONCE} requests are being read", 1.0)
                try:
                    body = _read_message_body(self, limit)
                finally:
                    self.connection.settimeout(self.timeout)  # the body's deadline is over
                self._body_read = True
                admission()  # refused now: read (the connection lives on), not decoded
                body = _decode_content(self, body, limit)
                if as_json:
                    request = parse_otlp_json(body)
                else:
                    request = parse_otlp_protobuf(body)
                del body
                if self._connections().cut:
                    # Past HttpServer.stop's grace: stop() has returned, its caller
                    # may be shutting the receiver down.
                    raise ConnectionError("the server stopped")
                result = ingest(request.resource_spans)
            except (TimeoutError, ConnectionError) as e:
                # The client stalled mid-body, or went away: nothing to answer.
                _logger.debug("http: connection dropped while reading a request: %s", e)
                self.close_connection = True
                return
            except _Unsupported as e:
                self._send_status(
                    415, status_pb2.Status(code=code_pb2.INVALID_ARGUMENT, message=str(e)), as_json
                )
                return
            except _NotImplemented as e:
                self._send_status(
                    501, status_pb2.Status(code=code_pb2.UNIMPLEMENTED, message=str(e)), as_json
                )
                return
            except _TooLarge as e:
                self.close_connection = True
                self._send_status(
                    413, status_pb2.Status(code=code_pb2.INVALID_ARGUMENT, message=str(e)), as_json
                )
                return
            except InvalidRequest as e:
                self._send_status(
                    400, status_pb2.Status(code=code_pb2.INVALID_ARGUMENT, message=str(e)), as_json
                )
                return
            except Unavailable as e:
                retry = str(max(1, round(e.retry_after)))
                self._send_status(503, _unavailable_status(e), as_json, {"Retry-After": retry})
                return
            except Exception as e:
                _logger.exception("receiver: unexpected error while ingesting")
                self._send_status(
                    503,
                    _unavailable_status(Unavailable(f"receiver error: {e}", 5.0)),
                    as_json,
                    {"Retry-After": "5"},
                )
                return
            finally:
                if turn:
                    turns.release()
            response = _response(result)
            if as_json:
                self._send(
                    200, json_format.MessageToJson(response).encode("utf-8"), "application/json"
                )
            else:
                self._send(200, response.SerializeToString(), "application/x-protobuf")

    return Handler


class _Unsupported(Exception):
    pass


class _BoundedServer(ThreadingHTTPServer):
    """A thread per connection, for at most *connections* at once.

    It knows its connections, and which are handling a request (from its whole head,
    request line and header fields, to its answer), so that :meth:`stop_connections`
    can close the idle ones at once and the others when their request is answered or
    the grace is over.  When every place is taken, a new connection takes the place
    of the one idle longest (:meth:`_evict_idlest`); only when all of them are
    handling a request is it refused (503, or over TLS closed unanswered).
    """

    daemon_threads = True
    #: The listening socket's backlog: connections the kernel completes before they
    #: are accepted.  socketserver's 5 dropped the rest of a burst (a Collector's
    #: exporters opening their connections at once), each of which waited a second
    #: or more for TCP to try again: 128 connections took 19 s to open.
    request_queue_size = HTTP_CONNECTIONS_AT_ONCE

    def __init__(
        self,
        address: tuple[str, int],
        handler: type[BaseHTTPRequestHandler],
        connections: int,
        tls: _TLSFiles | None = None,
    ) -> None:
        if ":" in address[0]:
            # An IPv6 host (given in brackets, as gRPC takes it): socketserver's
            # IPv4 socket cannot bind it ("Address family for hostname not
            # supported"), where the gRPC port listened on it.
            self.address_family = socket.AF_INET6
        self._slots = threading.BoundedSemaphore(connections)
        self._tls = tls
        self._changes = threading.Condition()
        # Each open connection's socket, and whether it is handling a request, in the
        # order they last became idle (no whole head read since the connection opened
        # or since its last answer, a head still arriving included): the first idle
        # one is the one idle longest.
        self._connections: dict[Any, bool] = {}
        #: stop_connections was called: requests not yet begun are not served.
        self.stopping = False
        #: Its grace is over: what is left is cut off, nothing more is ingested.
        self.cut = False
        # serve_forever waits on the listening socket and on this pipe, which
        # shutdown writes to: no wake-up while idle, and no wait to stop.
        self._wake_read, self._wake_write = os.pipe()
        self._wake_closed = False
        # The warnings of refused client certificates, by reason.
        self._refusals: dict[str, Throttled] = {}
        self._shutdown_asked = threading.Event()
        self._loop_ended = threading.Event()
        # Last: when the address cannot be bound, socketserver calls server_close,
        # which closes the pipe above, and raises the bind's error.
        super().__init__(address, handler)

    def serve_forever(self, poll_interval: float = 0.5) -> None:
        """Accept connections until :meth:`shutdown`.  (socketserver's own loop
        wakes every *poll_interval*, 0.5 s, to look for a shutdown, and each stop
        waited for it; this one is woken by the shutdown itself, and
        *poll_interval* is not used.)"""
        try:
            with selectors.DefaultSelector() as selector:
                selector.register(self, selectors.EVENT_READ)
                selector.register(self._wake_read, selectors.EVENT_READ)
                while not self._shutdown_asked.is_set():
                    ready = selector.select()
                    if self._shutdown_asked.is_set():
                        break
                    if any(key.fileobj is self for key, _events in ready):
                        self._accept_one()
                    self.service_actions()
        finally:
            self._loop_ended.set()

    def _accept_one(self) -> None:
        """Accept a connection and hand it over (socketserver's
        ``_handle_request_noblock``, which its loop calls)."""
        try:
            request, client_address = self.get_request()
        except OSError:
            return
        if not self.verify_request(request, client_address):
            self.shutdown_request(request)
            return
        try:
            self.process_request(request, client_address)
        except Exception:
            self.handle_error(request, client_address)
            self.shutdown_request(request)
        except BaseException:
            self.shutdown_request(request)
            raise

    def shutdown(self) -> None:
        """End :meth:`serve_forever` and wait until it has (call it only once
        serve_forever runs, or is about to on another thread)."""
        with self._changes:
            self._shutdown_asked.set()
            if not self._loop_ended.is_set() and not self._wake_closed:
                os.write(self._wake_write, b"\0")
        self._loop_ended.wait()

    def server_close(self) -> None:
        super().server_close()
        with self._changes:  # once: a number closed twice may be another file's by then
            if not self._wake_closed:
                self._wake_closed = True
                os.close(self._wake_read)
                os.close(self._wake_write)

    def get_request(self) -> tuple[Any, Any]:
        request, client_address = super().get_request()
        if self._tls is not None:
            # The handshake is the connection's thread's (Handler.setup), not this
            # accepting one's: a client that never finishes it holds only its own.
            request = self._tls.current().wrap_socket(request, server_side=True,
                                                      do_handshake_on_connect=False)
        return request, client_address

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False) and not self._evict_idlest():
            # Every connection is handling a request.  Over TLS the 503 would need a
            # handshake on this, the accepting, thread, which a slow client could
            # stall: the connection is closed unanswered instead (a Collector retries
            # a reset as it retries a 503).
            if not isinstance(request, ssl.SSLSocket):
                try:
                    request.settimeout(1.0)
                    request.sendall(_BUSY_CONNECTION)
                except OSError:
                    pass
            self.shutdown_request(request)
            return
        with self._changes:
            open_ = not self.stopping
            if open_:
                self._connections[request] = False
        if not open_:
            self.shutdown_request(request)
            self._slots.release()
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise  # the caller (socketserver) shuts the request down

    def _evict_idlest(self) -> bool:
        """Close the connection idle longest so that a new one takes its place, as
        nginx reuses an idle keep-alive connection when its connections run out.

        Its client sees the connection closed between requests (or while it sends a
        request's head); a request whose head is read as it is chosen is not served,
        closed unanswered (a client retries it, as at a stop).  True once its place
        is the caller's; False when no connection is idle (or the server is
        stopping), or its place was not given back in time.
        """
        with self._changes:
            idle = (r for r, busy in self._connections.items() if not busy)
            request = None if self.stopping else next(idle, None)
            if request is None:
                return False
            # Forgotten under the lock begin_request takes, so a request head read
            # on it meanwhile is not served on a socket shut down; and shut down
            # under it too, before its thread can have closed it (shutdown_request
            # forgets a socket under this lock before it closes it): never another
            # connection's socket that has its descriptor by then.
            del self._connections[request]
            _shut_down(request)
            self._changes.notify_all()
        # Debug only: under a flood of connections there is one per connection.
        _logger.debug("http: the connection idle longest closed for a new one")
        # Its thread gives the place back (process_request_thread): its read, or its
        # TLS handshake, fails at once on the shut-down socket, so this thread, which
        # accepts every connection, waits for no client, only for that thread's
        # turn, and meanwhile new connections wait in the listening backlog.  Bounded
        # all the same: on a machine too busy to run that thread soon, the new
        # connection is refused as before, rather than stall the accepting.
        return self._slots.acquire(timeout=_EVICTION_WAIT)

    def shutdown_request(self, request: Any) -> None:
        with self._changes:
            # Forgotten before it is closed: stop_connections never shuts down a
            # closed socket (whose descriptor another connection may have by then).
            self._connections.pop(request, None)
            self._changes.notify_all()
        super().shutdown_request(request)

    def begin_request(self, request: Any) -> bool:
        """Mark *request*'s connection as handling a request; False when stopping."""
        with self._changes:
            if self.stopping or request not in self._connections:
                return False
            self._connections[request] = True
            return True

    def end_request(self, request: Any) -> bool:
        """Mark *request*'s connection idle; False when it is to be closed (stopping)."""
        with self._changes:
            if self._connections.get(request):
                # Idle from now, after the others (moved to the end), unless it was
                # idle already (no whole head was read, or it was refused: closing).
                del self._connections[request]
                self._connections[request] = False
            self._changes.notify_all()
            return not self.stopping

    def stop_connections(self) -> None:
        """Serve no request that has not begun, and close the idle connections
        (those still sending a request's head too: their request was not read)."""
        with self._changes:
            self.stopping = True
            for request, busy in self._connections.items():
                if not busy:
                    _shut_down(request)

    def end_connections(self, deadline: float) -> None:
        """Wait until no connection is handling a request or *deadline*
        (time.monotonic) passed, then cut off every connection left and wait a
        little for their threads to close them."""
        with self._changes:
            self._changes.wait_for(lambda: not any(self._connections.values()),
                                   max(0.0, deadline - time.monotonic()))
            self.cut = True
            for request in self._connections:
                # Requests past the grace, and those answered meanwhile, whose
                # threads are closing them anyway.
                _shut_down(request)
            self._changes.wait_for(lambda: not self._connections, _STOP_MARGIN)

    def report_refusals(self) -> None:
        """Log how many refused-client warnings were held back since the last one
        logged for their reason (at the stop: no later one will)."""
        with self._changes:
            refusals = list(self._refusals.items())
        for _, warnings in refusals:
            warnings.held_back()

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        error = sys.exc_info()[1]
        refusal = _certificate_refusal(error)
        if refusal is not None:
            # An operator rolling out mutual TLS needs the reason (expired, another
            # CA's, none at all), as the gRPC port's log and a Collector's give it;
            # each reason has its own period, so that a client retrying in a loop
            # does not hide another's.
            with self._changes:
                if refusal not in self._refusals and len(self._refusals) >= _REFUSAL_REASONS:
                    refusal_key = ""
                else:
                    refusal_key = refusal
                warnings = self._refusals.get(refusal_key)
                if warnings is None:
                    warnings = self._refusals[refusal_key] = Throttled(
                        _logger, HTTP_REFUSAL_WARNING_SECONDS,
                        "name OTLP/HTTP clients refused in the TLS handshake"
                        + (f" ({refusal_key})" if refusal_key else ""))
            warnings.warn("receiver: OTLP/HTTP client %s refused in the TLS handshake: %s",
                          _peer(client_address), refusal)
            return
        if isinstance(error, OSError):  # a failed TLS handshake, a peer gone
            _logger.debug("http: connection from %s ended: %s", client_address, error)
            return
        super().handle_error(request, client_address)


def _handshake(connection: ssl.SSLSocket, deadline: float) -> None:
    """Complete *connection*'s TLS handshake (server side) by *deadline*
    (time.monotonic).  The socket's timeout bounds each read only: a client sending
    its ClientHello a byte at a time passed every one of them, and held its
    connection for as long as it liked.  Leaves the socket non-blocking.

    Raises:
        TimeoutError: the handshake did not end by *deadline*.
        ssl.SSLError: the handshake failed (a client certificate refused, say).
        OSError: the connection failed or was shut down.
    """
    connection.setblocking(False)
    with selectors.DefaultSelector() as selector:
        selector.register(connection, selectors.EVENT_READ)
        while True:
            try:
                connection.do_handshake()
                return
            except ssl.SSLWantReadError:
                selector.modify(connection, selectors.EVENT_READ)
            except ssl.SSLWantWriteError:
                selector.modify(connection, selectors.EVENT_WRITE)
            left = deadline - time.monotonic()
            if left <= 0 or not selector.select(left):
                raise TimeoutError(f"TLS handshake not done within "
                                   f"{HANDSHAKE_SECONDS:g} s of the connection")


def _certificate_refusal(error: BaseException | None) -> str | None:
    """Why a TLS handshake failed for the client's certificate (one that did not
    verify, or none where mutual TLS wants one), or None when it failed otherwise."""
    if isinstance(error, ssl.SSLCertVerificationError):
        return f"client certificate did not verify: {error.verify_message or error}"
    if (isinstance(error, ssl.SSLError)
            and getattr(error, "reason", None) == "PEER_DID_NOT_RETURN_A_CERTIFICATE"):
        return "no client certificate was presented"
    return None


def _peer(client_address: Any) -> str:
    try:
        host, port = client_address[:2]
    except (TypeError, ValueError):
        return str(client_address)
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"


def _shut_down(request: Any) -> None:
    """Shut a connection's socket down both ways: its thread's read or write ends at
    once (closing it would not wake a blocked read)."""
    try:
        # socket.socket's, also for a TLS socket: SSLSocket.shutdown would drop
        # its SSL object under the thread reading from it.
        socket.socket.shutdown(request, socket.SHUT_RDWR)
    except OSError:
        pass  # the peer already went away


class HttpServer:
    """OTLP/HTTP ``POST /v1/traces`` (protobuf and JSON, gzip or deflate) on *address*
    (``host:port``, an IPv6 host in brackets; port 0 = free).

    ``GET /healthz`` answers 200 ``SERVING``, or 503 ``NOT_SERVING: <reason>`` while
    *health* gives a reason.  While *admission* raises `Unavailable`, a request's body
    is read but not decoded, and answered 503 with ``Retry-After``.  With *tls*, it
    serves HTTPS (and, with a client CA, requires client certificates) only; a
    connection's handshake must end within `HANDSHAKE_SECONDS` of it, and its first
    request head within the time a head has (`HTTP_HEAD_SECONDS`) of it.  At most
    `HTTP_CONNECTIONS_AT_ONCE` connections are served at once: one beyond them takes
    the place of the one idle longest, which is closed, and is refused (503 with
    ``Retry-After: 1``, or over TLS closed unanswered) only when every one of them is
    handling a request.

    Raises:
        ValueError: *max_message_bytes* is not from 1 to `MAX_MESSAGE_BYTES`, or a
            TLS file is unusable.
        OSError: *address* cannot be listened on.
    """

    def __init__(
        self,
        address: str,
        ingest: Ingest,
        *,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        health: Health = _always_serving,
        admission: Admission = _always_accepting,
        tls: ServerTLS | None = None,
    ) -> None:
        _check_message_bytes(max_message_bytes)
        host, _, port = address.rpartition(":")
        context = None if tls is None else _TLSFiles(tls, tls.ssl_context)
        self._server = _BoundedServer(
            (host.strip("[]"), int(port)),
            _make_handler(ingest, max_message_bytes, health, admission),
            HTTP_CONNECTIONS_AT_ONCE,
            context,
        )
        self.host = host
        self.port = self._server.server_address[1]
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Serve in a background thread."""
        self._thread = own_thread(self._server.serve_forever, "spanproof-http")
        self._thread.start()

    def stop(self, grace: float | None = None) -> None:
        """Stop serving and close the socket, letting the requests being handled
        finish for up to *grace* seconds (default `HTTP_STOP_GRACE`, 5 s, as
        `GrpcServer.stop`'s).

        A request whose head (line and header fields) arrived before the call is
        answered (with ``Connection: close``) if it finishes within *grace*; a
        connection between requests, or still sending a request's head, is closed
        at once, and a request arriving on one later is not served (its connection
        closed unanswered; a Collector retries it).  After *grace* the remaining
        connections are cut off, and a request among them that has not reached
        *ingest* never does.  Returns within *grace* + 1 s (an ``ingest`` call
        already made runs on, on its own thread).  Idempotent.

        Raises:
            ValueError: *grace* is negative or not a number.
        """
        if grace is None:
            grace = HTTP_STOP_GRACE
        if isinstance(grace, bool) or not isinstance(grace, (int, float)) or not grace >= 0:
            raise ValueError(f"grace must be a number of seconds >= 0, got {grace!r}")
        deadline = time.monotonic() + grace
        self._server.stop_connections()
        if self._thread is not None:
            self._server.shutdown()  # ends serve_forever (which never started without it)
        self._server.server_close()
        self._server.end_connections(deadline)
        if self._thread is not None:
            self._thread.join(max(0.0, deadline - time.monotonic()) + _STOP_MARGIN)
        self._server.report_refusals()
