"""OTLP/JSON receivers MUST ignore fields with unknown names and read the message as
if they were not there (OTLP specification, JSON Protobuf Encoding), as protobuf's
parser does with ``ignore_unknown_fields``.  The receiver's own checks of typed
values (ids, ``bytesValue``, integers, ``doubleValue``, a field named twice) went
into unknown fields too, by name: a request carrying a newer field holding such a
member it would refuse where protobuf reads it was answered 400, and a Collector
drops a batch answered so."""

from __future__ import annotations

import pytest
from receiver_support import TRACE_A, span_id

from spanproof.exporter.otlp_server import InvalidRequest, parse_otlp_json

# What the receiver refuses where protobuf reads it, each under an unknown name.
UNKNOWN = {
    "bytes not base64": '{"bytesValue":"not base64!"}',
    "integer with a fraction": '{"intValue":"1.5"}',
    "integer not as JSON writes one": '{"startTimeUnixNano":"1_000"}',
    "double not a number": '{"doubleValue":"abc"}',
    "both spellings": '{"scope_spans":[],"scopeSpans":[]}',
    "named twice": '{"spans":[],"spans":[]}',
    "nested": '[{"value":{"kvlistValue":{"values":[{"key":"k","value":{"intValue":"2.5"}}]}}}]',
}
# Where the unknown field stands: in each message of a request.
WHERE = ["request", "resource spans", "resource", "scope spans", "scope", "span", "event",
         "link", "status", "attribute", "value"]


def _request(where: str, extra: str) -> str:
    def at(here: str) -> str:
        return f',"futureField":{extra}' if here == where else ""

    value = f'{{"stringValue":"chat"{at("value")}}}'
    attribute = f'{{"key":"gen_ai.operation.name","value":{value}{at("attribute")}}}'
    span = (f'{{"traceId":"{TRACE_A}","spanId":"{span_id(1)}","name":"step","kind":1,'
            f'"startTimeUnixNano":"1","endTimeUnixNano":"2","attributes":[{attribute}],'
            f'"events":[{{"timeUnixNano":"1","name":"e"{at("event")}}}],'
            f'"links":[{{"traceId":"{TRACE_A}","spanId":"{span_id(2)}"{at("link")}}}],'
            f'"status":{{"code":2,"message":"m"{at("status")}}}{at("span")}}}')
    scope = f'{{"name":"lib"{at("scope")}}}'
    resource = f'{{"attributes":[]{at("resource")}}}'
    return (f'{{"resourceSpans":[{{"resource":{resource},"scopeSpans":[{{"scope":{scope},'
            f'"spans":[{span}]{at("scope spans")}}}]{at("resource spans")}}}]'
            f'{at("request")}}}')


@pytest.mark.parametrize("where", WHERE)
@pytest.mark.parametrize("extra", UNKNOWN.values(), ids=list(UNKNOWN))
def test_json_unknown_field_holding_what_a_known_one_may_not_is_ignored(
    where: str, extra: str
) -> None:
    body = _request(where, extra)
    assert "futureField" in body
    assert parse_otlp_json(body.encode()) == parse_otlp_json(_request("", "").encode())


@pytest.mark.parametrize(
    "member", ['"bytesValue":"not base64!"', '"intValue":"1.5"', '"doubleValue":"abc"'])
def test_json_the_same_members_where_protobuf_reads_them_are_still_refused(
    member: str
) -> None:
    text = _request("", "").replace('{"stringValue":"chat"}', "{" + member + "}")
    assert member in text
    with pytest.raises(InvalidRequest):
        parse_otlp_json(text.encode())
