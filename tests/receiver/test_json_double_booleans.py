"""An OTLP/JSON ``doubleValue`` holding a JSON boolean is refused, wherever it stands.

protobuf's JSON parser took ``{"doubleValue": true}`` as the double 1 (a Python bool
is an int), so the receiver answered 200 and certified ``{"doubleValue": "1"}``: a
type and value the sender never sent (SPEC §2.3 keeps each value's type).  The
Collector's reader refuses a boolean there, as the receiver refuses one for an
``intValue``."""

from __future__ import annotations

import json
from typing import Any

import pytest
from receiver_support import TRACE_A, span_id

from spanproof.exporter.otlp_server import InvalidRequest, parse_otlp_json


def _attributes(value: Any) -> list[dict[str, Any]]:
    return [{"key": "d", "value": value}]


def _doc(where: str, value: Any) -> bytes:
    """A request with *value* (an ``AnyValue``) as an attribute of *where*."""
    def at(here: str) -> list[dict[str, Any]]:
        return _attributes(value) if here == where else []

    span = {"traceId": TRACE_A, "spanId": span_id(1), "name": "chat",
            "startTimeUnixNano": "1", "endTimeUnixNano": "2",
            "attributes": [{"key": "gen_ai.operation.name",
                            "value": {"stringValue": "chat"}}, *at("span")],
            "events": [{"name": "e", "timeUnixNano": "1", "attributes": at("event")}],
            "links": [{"traceId": TRACE_A, "spanId": span_id(2), "attributes": at("link")}]}
    return json.dumps({"resourceSpans": [{
        "resource": {"attributes": at("resource")},
        "scopeSpans": [{"scope": {"name": "lib", "attributes": at("scope")},
                        "spans": [span]}]}]}).encode()


PLACES = ["span", "event", "link", "resource", "scope"]
SHAPES = {
    "plain": lambda b: {"doubleValue": b},
    "in an array": lambda b: {"arrayValue": {"values": [{"doubleValue": 0.5},
                                                         {"doubleValue": b}]}},
    "in a kvlist": lambda b: {"kvlistValue": {"values": [{"key": "k",
                                                          "value": {"doubleValue": b}}]}},
}


@pytest.mark.parametrize("boolean", [True, False])
@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("where", PLACES)
def test_json_double_value_holding_a_boolean_is_refused(
    where: str, shape: str, boolean: bool
) -> None:
    with pytest.raises(InvalidRequest, match=f"doubleValue {str(boolean).lower()} is not a number"):
        parse_otlp_json(_doc(where, SHAPES[shape](boolean)))


@pytest.mark.parametrize("where", PLACES)
@pytest.mark.parametrize("number", [1, 0, 1.0, "1", "NaN"])
def test_json_double_value_holding_a_number_is_still_read(where: str, number: Any) -> None:
    request = parse_otlp_json(_doc(where, {"doubleValue": number}))
    resource_spans = request.resource_spans[0]
    scope_spans = resource_spans.scope_spans[0]
    span = scope_spans.spans[0]
    attributes = {"span": span.attributes[1:], "event": span.events[0].attributes,
                  "link": span.links[0].attributes,
                  "resource": resource_spans.resource.attributes,
                  "scope": scope_spans.scope.attributes}[where]
    (attribute,) = attributes
    assert attribute.value.WhichOneof("value") == "double_value"
    expected = float(number)
    assert (attribute.value.double_value == expected
            or (expected != expected and attribute.value.double_value != expected))
