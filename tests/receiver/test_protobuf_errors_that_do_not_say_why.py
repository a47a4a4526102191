"""A span protobuf cannot decode is rejected alone, whatever protobuf says about it.

A span nested deeper than protobuf decodes, or holding a string that is not UTF-8, is
rejected alone and the rest of its request certified (test_deep_values_on_the_wire.py,
test_protobuf_strings_not_utf8.py).  The receiver knew them by upb's words, which
protobuf gives from 7.35 only: before, upb says "Error parsing message" (from 5.26
with the message's type) whatever went wrong, so with the protobuf OpenTelemetry
before 1.43 installs the whole request was refused, 400 / ``INVALID_ARGUMENT``, and a
Collector dropped the batch.  protobuf's pure-Python decoder raises
UnicodeDecodeError for such a string (answered 503 / ``UNKNOWN``: retried for ever,
or dropped) and says "too many levels of nesting".  Where protobuf does not say why,
the part that fails is now diagnosed from its bytes; any other fault still refuses
the request.

The newest protobuf is made to speak as older ones do (monkeypatched), and the
pure-Python decoder itself is run in a subprocess.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.resource.v1 import resource_pb2
from opentelemetry.proto.trace.v1 import trace_pb2
from receiver_support import (
    TRACE_A,
    TRACE_B,
    decoded_groups,
    nest_in_arrays,
    otlp_span,
    serving,
    signing_key,
    span_id,
    span_ids,
    trust_root,
    verified,
)

from spanproof.exporter.otlp import UNDECODABLE_SCOPE
from spanproof.exporter.otlp_server import InvalidRequest, parse_otlp_protobuf
from spanproof.exporter.receiver import Receiver

# A span name protobuf encodes as b"\xc3\x89zz", made not UTF-8 on the wire.
MARK = "\u00c9zz"
NOT_UTF8 = "span cannot be decoded (a string is not UTF-8: no canonical JSON form (SPEC §3.1))"
TOO_DEEP = ("span cannot be decoded (nested deeper than protobuf decodes: 100 messages, "
            "~49 levels of arrays or ~32 of key-value lists in a span)")

#: What protobuf raises for failing to decode *data* as a *message*.
Saying = Callable[[type[Any], bytes], Exception]


def _before_5_26(message: type[Any], data: bytes) -> Exception:
    return DecodeError("Error parsing message")


def _before_7_35(message: type[Any], data: bytes) -> Exception:
    return DecodeError(f"Error parsing message with type '{message.DESCRIPTOR.full_name}'")


def _pure_python(message: type[Any], data: bytes) -> Exception:
    """As protobuf's pure-Python decoder fails on the requests here: a string not UTF-8
    (b"\xc3\xc3zz", before any part nested too deeply in them) or nesting."""
    if b"\xc3\xc3zz" in data:
        return UnicodeDecodeError("utf-8", b"\xc3\xc3", 0, 1, "invalid continuation byte")
    return DecodeError("Error parsing message: too many levels of nesting.")


#: What the receiver decodes a request and its parts as.
_DECODED = (trace_service_pb2.ExportTraceServiceRequest, resource_pb2.Resource,
            common_pb2.InstrumentationScope, trace_pb2.Span, common_pb2.KeyValue)


def _saying(decode: Callable[[Any, bytes], Any], message: type[Any],
            said: Saying) -> Callable[[Any, bytes], Any]:
    def decode_saying(self: Any, data: bytes) -> Any:
        try:
            return decode(self, data)
        except (DecodeError, UnicodeDecodeError):
            raise said(message, data) from None
    return decode_saying


def _from_string(message: type[Any], data: bytes) -> Any:
    decoded = message()
    decoded.MergeFromString(data)
    return decoded


def _protobuf_saying(monkeypatch: pytest.MonkeyPatch, said: Saying) -> None:
    """Make protobuf raise *said(message class, data)* wherever it fails to decode a
    request or a part of one (its own error dropped)."""
    for message in _DECODED:
        for name in ("ParseFromString", "MergeFromString"):
            decode = getattr(message, name)
            monkeypatch.setattr(message, name, _saying(decode, message, said))
        monkeypatch.setattr(message, "FromString", classmethod(_from_string))



def _request(fault: str) -> bytes:
    """TRACE_A's root, a child with *fault* ("not UTF-8" or "too deep") and another
    child; TRACE_B's root."""
    req = trace_service_pb2.ExportTraceServiceRequest()
    ss = req.resource_spans.add().scope_spans.add()
    ss.scope.name = "tests.receiver"
    ss.spans.append(otlp_span(TRACE_A, 1))
    bad = ss.spans.add()
    bad.CopyFrom(otlp_span(TRACE_A, 2, parent=1, name=MARK if fault == "not UTF-8"
                           else "step"))
    if fault == "too deep":
        nest_in_arrays(bad.attributes.add(key="deep").value, 60)
    ss.spans.extend([otlp_span(TRACE_A, 3, parent=1), otlp_span(TRACE_B, 4)])
    return req.SerializeToString().replace(MARK.encode(), b"\xc3\xc3zz")



def _set_apart(why: str) -> list[tuple[str, str, list[str]]]:
    return [("tests.receiver", "", [span_id(1), span_id(3), span_id(4)]),
            (UNDECODABLE_SCOPE, why, [span_id(2)])]


@pytest.mark.parametrize("said", [_before_5_26, _before_7_35], ids=["4.x", "5.26-7.34"])
@pytest.mark.parametrize("fault, why", [("not UTF-8", NOT_UTF8), ("too deep", TOO_DEEP)],
                         ids=["not-utf8", "too-deep"])
def test_a_span_is_set_apart_alone_where_protobuf_does_not_say_why(
    monkeypatch: pytest.MonkeyPatch, said: Saying, fault: str, why: str
) -> None:
    data = _request(fault)
    _protobuf_saying(monkeypatch, said)
    with pytest.raises(DecodeError, match=r"^Error parsing message"):
        trace_service_pb2.ExportTraceServiceRequest.FromString(data)
    assert decoded_groups(data) == _set_apart(why)  # before: InvalidRequest, the whole request


@pytest.mark.parametrize("fault, why", [("not UTF-8", NOT_UTF8), ("too deep", TOO_DEEP)],
                         ids=["not-utf8", "too-deep"])
def test_a_span_is_set_apart_alone_where_protobuf_speaks_as_its_pure_python_decoder(
    monkeypatch: pytest.MonkeyPatch, fault: str, why: str
) -> None:
    # Before: UnicodeDecodeError out of the parser (HTTP 503, gRPC UNKNOWN) for a
    # string not UTF-8.
    data = _request(fault)
    _protobuf_saying(monkeypatch, _pure_python)
    assert decoded_groups(data) == _set_apart(why)


_PURE_PYTHON_GROUPS = """
import json, sys
from google.protobuf.internal import api_implementation
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from spanproof.exporter.otlp_server import parse_otlp_protobuf
assert api_implementation.Type() == "python", api_implementation.Type()
data = sys.stdin.buffer.read()
try:
    trace_service_pb2.ExportTraceServiceRequest.FromString(data)
    whole = True
except (DecodeError, UnicodeDecodeError):
    whole = False
decoded = parse_otlp_protobuf(data)
print(json.dumps([whole, [[ss.scope.name, ss.scope.version, [s.span_id.hex() for s in ss.spans]]
                          for rs in decoded.resource_spans for ss in rs.scope_spans]]))
"""


@pytest.mark.parametrize("fault, why", [("not UTF-8", NOT_UTF8), ("too deep", TOO_DEEP)],
                         ids=["not-utf8", "too-deep"])
def test_a_span_is_set_apart_alone_by_protobuf_s_pure_python_decoder(
    fault: str, why: str
) -> None:
    env = dict(os.environ, PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION="python")
    run = subprocess.run([sys.executable, "-c", _PURE_PYTHON_GROUPS], input=_request(fault),
                         env=env, capture_output=True, timeout=60, check=False)
    assert run.returncode == 0, run.stderr.decode(errors="replace")
    whole, groups = json.loads(run.stdout)
    if whole:
        # Some releases' pure-Python decoder (3.x, 5.26) has no depth limit: the span
        # is decoded whole, within SPEC §2.3's 64 levels.
        assert fault == "too deep"
        assert [tuple(group) for group in groups] == [
            ("tests.receiver", "", [span_id(1), span_id(2), span_id(3), span_id(4)])]
    else:
        assert [tuple(group) for group in groups] == _set_apart(why)


def _nested(levels: int, *, framing_broken: bool = False) -> bytes:
    """A span holding a string *levels* arrays down, whose own framing is broken
    when *framing_broken* (the string's length overruns its value)."""
    span = trace_pb2.Span(trace_id=bytes.fromhex(TRACE_A), span_id=bytes.fromhex(span_id(1)))
    nest_in_arrays(span.attributes.add(key="deep").value, levels)
    data = span.SerializeToString()
    if framing_broken:
        assert data.count(b"\x0a\x06bottom") == 1
        data = data.replace(b"\x0a\x06bottom", b"\x0a\x07bottom")
    return data


def _in_a_request(span: bytes) -> bytes:
    """*span* as the only span of a request, framed by hand (protobuf does not copy a
    message nested too deeply)."""
    def field(number: int, value: bytes) -> bytes:
        length, size = b"", len(value)
        while size > 0x7F:
            length, size = length + bytes([size & 0x7F | 0x80]), size >> 7
        return bytes([number << 3 | 2]) + length + bytes([size]) + value
    return field(1, field(2, field(2, span)))


@pytest.mark.parametrize("levels", [49, 50])
def test_the_depth_diagnosed_is_the_depth_protobuf_decodes(
    monkeypatch: pytest.MonkeyPatch, levels: int
) -> None:
    # protobuf decodes a span 49 arrays deep, not 50.  Its framing broken below that,
    # a span 49 deep is refused as protobuf refuses it, and one 50 deep is too deep
    # (protobuf stops there, before it reads the framing).
    too_deep = levels == 50
    try:
        trace_pb2.Span.FromString(_nested(levels))
    except DecodeError:
        assert too_deep
    else:
        assert not too_deep
    data = _in_a_request(_nested(levels, framing_broken=True))
    _protobuf_saying(monkeypatch, _before_7_35)
    if too_deep:
        assert decoded_groups(data) == [("", "", []), (UNDECODABLE_SCOPE, TOO_DEEP, [span_id(1)])]
    else:
        with pytest.raises(InvalidRequest, match=r"Error parsing message with type "
                           r"'opentelemetry\.proto\.trace\.v1\.Span'"):
            parse_otlp_protobuf(data)


@pytest.mark.parametrize("said", [_before_5_26, _before_7_35], ids=["4.x", "5.26-7.34"])
def test_a_span_whose_framing_is_broken_still_refuses_the_request(
    monkeypatch: pytest.MonkeyPatch, said: Saying
) -> None:
    # A string that is not UTF-8 after the fault is not what protobuf stopped at.
    data = _in_a_request(_nested(3, framing_broken=True) + b"\x2a\x03\xc3\xc3z")
    _protobuf_saying(monkeypatch, said)
    with pytest.raises(InvalidRequest, match=r"^body is not an OTLP protobuf request: "
                       r"Error parsing message"):
        parse_otlp_protobuf(data)


def _both_faults() -> bytes:
    """:func:`_request` with TRACE_B's root set apart too, nested too deeply."""
    req = trace_service_pb2.ExportTraceServiceRequest.FromString(
        _request("not UTF-8").replace(b"\xc3\xc3zz", MARK.encode()))
    ss = req.resource_spans[0].scope_spans[0]
    root_b = ss.spans[3]
    del ss.spans[3]
    deep = ss.spans.add()
    deep.CopyFrom(root_b)
    nest_in_arrays(deep.attributes.add(key="deep").value, 60)
    return req.SerializeToString().replace(MARK.encode(), b"\xc3\xc3zz")


def _post(transport: str, port: int, data: bytes) -> trace_service_pb2.ExportTraceServiceResponse:
    if transport == "grpc":
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            export = channel.unary_unary(
                "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
                response_deserializer=trace_service_pb2.ExportTraceServiceResponse.FromString)
            answer: trace_service_pb2.ExportTraceServiceResponse = export(data, timeout=10)
            return answer
    post = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/traces", data=data, method="POST",
        headers={"Content-Type": "application/x-protobuf"})
    with urllib.request.urlopen(post, timeout=10) as reply:
        assert reply.status == 200
        return trace_service_pb2.ExportTraceServiceResponse.FromString(reply.read())


@pytest.mark.parametrize("said", [_before_5_26, _pure_python], ids=["4.x", "pure-Python"])
@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_the_spans_protobuf_cannot_decode_are_rejected_the_rest_certified(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, said: Saying, transport: str
) -> None:
    # Before: 400 / INVALID_ARGUMENT for the whole request where protobuf did not say
    # why, 503 / UNKNOWN where it raised UnicodeDecodeError.
    data = _both_faults()
    receiver = Receiver(tmp_path / "out", signing_key=signing_key(), seal_grace=0.0)
    _protobuf_saying(monkeypatch, said)
    with serving(receiver, http=True) as (grpc_server, http_server):
        assert http_server is not None
        port = grpc_server.port if transport == "grpc" else http_server.port
        response = _post(transport, port, data)
        assert receiver.flush()
    assert response.partial_success.rejected_spans == 2
    message = response.partial_success.error_message
    assert NOT_UTF8 in message and TOO_DEEP in message
    reports = verified(str(tmp_path / "out"), trust_root(str(tmp_path)), allow_incomplete=True)
    by_trace = {r.statement.trace_id: r for r in reports}
    assert span_ids(by_trace[TRACE_A]) == [span_id(1), span_id(3)]
    assert by_trace[TRACE_A].statement.completeness.rejected_spans == 1
    assert span_ids(by_trace[TRACE_B]) == []
    assert by_trace[TRACE_B].statement.completeness.rejected_spans == 1


# -- requests written byte by byte: what protobuf's own encoder never writes ----------


def _varint(n: int) -> bytes:
    out = b""
    while n > 0x7F:
        out += bytes([n & 0x7F | 0x80])
        n >>= 7
    return out + bytes([n])


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _span_with(n: int, extra: bytes, *, trace: str = TRACE_A) -> bytes:
    """Span *n* of *trace* (a child of span 1 unless it is span 1), then *extra*."""
    parent = None if n == 1 or trace != TRACE_A else 1
    return otlp_span(trace, n, parent=parent).SerializeToString() + extra


def _written(second: bytes) -> bytes:
    """:func:`_request`'s four spans, the second one *second*."""
    spans = [_span_with(1, b""), second, _span_with(3, b""), _span_with(4, b"", trace=TRACE_B)]
    scope = common_pb2.InstrumentationScope(name="tests.receiver").SerializeToString()
    return _field(1, _field(2, _field(1, scope) + b"".join(_field(2, s) for s in spans)))


_GROUP = _varint(200 << 3 | 3) + _varint(1 << 3) + b"\x05" + _varint(200 << 3 | 4)
_NOT_UTF8_NAME = _field(5, b"\xc3\xc3zz")  # a name after the span's own: protobuf keeps the last


def _decoders() -> list[Any]:
    return [pytest.param(None, id="protobuf"), pytest.param(_before_7_35, id="5.26-7.34"),
            pytest.param(_pure_python, id="pure-python")]


@pytest.mark.parametrize("said", _decoders())
def test_a_value_100_messages_below_its_attribute_sets_its_span_apart_alone(
    monkeypatch: pytest.MonkeyPatch, said: Saying | None
) -> None:
    # It decodes as an attribute, 100 messages deep, and not as part of the span,
    # 101: copying it into the span's outline failed (SystemError with protobuf
    # 5.29, HTTP 503 for ever; the whole request refused with 7.35 and later).
    value = _field(5, b"")
    for _ in range(49):
        value = _field(5, _field(1, value))
    data = _written(_span_with(2, _field(9, _field(1, b"deep") + _field(2, value))))
    if said is not None:
        _protobuf_saying(monkeypatch, said)
    assert decoded_groups(data) == _set_apart(TOO_DEEP)


@pytest.mark.parametrize("said", _decoders()[:2])
@pytest.mark.parametrize("where", ["attribute", "span"])
def test_an_unknown_group_beside_a_string_not_utf8_sets_the_span_apart_alone(
    monkeypatch: pytest.MonkeyPatch, said: Saying | None, where: str
) -> None:
    # protobuf skips an unknown group; the diagnosis from the bytes refused the whole
    # request at it.
    kv = _field(1, b"k") + (_GROUP if where == "attribute" else b"") + _field(2, b"")
    extra = _field(9, kv) + (_GROUP if where == "span" else b"") + _NOT_UTF8_NAME
    data = _written(_span_with(2, extra))
    if said is not None:
        _protobuf_saying(monkeypatch, said)
    assert decoded_groups(data) == _set_apart(NOT_UTF8)


@pytest.mark.parametrize("said", _decoders()[:2])
def test_a_string_not_utf8_after_a_broken_framing_refuses_the_request(
    monkeypatch: pytest.MonkeyPatch, said: Saying | None
) -> None:
    # upb 7.35+ reports the string (read past its message's end) before the broken
    # framing: the span was set apart alone, where older releases refuse the request.
    broken = _field(9, _field(1, b"a") + _field(2, b"\x0a\x0aok"))  # says 10 bytes, holds 2
    data = _written(_span_with(2, broken + _field(5, b"\xc3\xc3zzzzzz")))
    if said is not None:
        _protobuf_saying(monkeypatch, said)
    with pytest.raises(InvalidRequest, match=r"^body is not an OTLP protobuf request"):
        parse_otlp_protobuf(data)


@pytest.mark.parametrize("said", _decoders()[:2])
def test_a_tag_over_32_bits_refuses_the_request(
    monkeypatch: pytest.MonkeyPatch, said: Saying | None
) -> None:
    huge = _varint((1 << 40) << 3) + b"\x01"  # protobuf: wire format corrupt
    data = _written(_span_with(2, huge + _NOT_UTF8_NAME))
    if said is not None:
        _protobuf_saying(monkeypatch, said)
    with pytest.raises(InvalidRequest, match=r"^body is not an OTLP protobuf request"):
        parse_otlp_protobuf(data)
