"""Where a defective attribute value sits is named in its span's rejection, and
naming it costs nothing until a value is defective.

The OTLP mapping built each nested value's location (the attribute's key, of any
length) as it walked: one span whose long key held an array of many small key-value
lists took time proportional to the key's length times their number (13 s for a
3 MB request, most of an hour for 64 MiB), with every other request waiting."""

from __future__ import annotations

import pytest
from opentelemetry.proto.trace.v1 import trace_pb2
from receiver_support import TRACE_A

from spanproof.exporter.otlp import MalformedSpan, otlp_span_to_body


def _span() -> trace_pb2.Span:
    return trace_pb2.Span(trace_id=bytes.fromhex(TRACE_A), span_id=b"\x02" * 8, name="s",
                          kind=trace_pb2.Span.SPAN_KIND_INTERNAL)


@pytest.mark.timeout(30)  # the defect took over a minute here, hours for 64 MiB
def test_a_long_key_over_many_nested_values_is_converted_in_one_pass() -> None:
    span = _span()
    attribute = span.attributes.add(key="k" * 4_000_000)
    for _ in range(200_000):
        kv = attribute.value.array_value.values.add().kvlist_value.values.add(key="a")
        kv.value.bool_value = True
    body = otlp_span_to_body(span, {}, {})
    values = body["span"]["attributes"]["k" * 4_000_000]["arrayValue"]
    assert len(values) == 200_000
    assert values[-1] == {"kvlistValue": {"a": {"boolValue": True}}}


def test_a_defect_deep_in_key_value_lists_is_named_by_its_keys() -> None:
    span = _span()
    outer = span.attributes.add(key="outer").value
    inner = outer.array_value.values.add().kvlist_value.values.add(key="inner").value
    inner.kvlist_value.values.add(key="twice").value.bool_value = True
    inner.kvlist_value.values.add(key="twice").value.bool_value = False
    with pytest.raises(MalformedSpan, match=r"^span 0202020202020202\['outer'\]\['inner'\]: "
                                            r"duplicate attribute key 'twice'$"):
        otlp_span_to_body(span, {}, {})


def test_a_long_key_is_named_cut_short() -> None:
    span = _span()
    value = span.attributes.add(key="x" * 5000).value
    value.kvlist_value.values.add(key="y" * 5000)
    value.kvlist_value.values.add(key="y" * 5000)
    with pytest.raises(MalformedSpan) as caught:
        otlp_span_to_body(span, {}, {})
    message = str(caught.value)
    assert len(message) < 400
    assert f"[{'x' * 100!r}... (5000 characters)]" in message
    assert f"duplicate attribute key {'y' * 100!r}... (5000 characters)" in message
