"""An OTLP/JSON integer written with a fraction or an exponent (``1772443798120000123.0``,
``"9007199254740993.0"``) is certified exactly, not rounded to a double.

protobuf's JSON parser takes such a value through a double when the field is an
integer: a start time of ``1772443798120000123.0`` was certified as
``1772443798120000000``, an ``intValue`` of ``"9007199254740993.0"`` (2^53 + 1) as
2^53."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pytest
from receiver_support import TRACE_A, serving, signing_key, trust_root, verified

from spanproof.exporter.otlp_server import InvalidRequest, parse_otlp_json
from spanproof.exporter.receiver import Receiver

TIME = 1772443798120000123
BIG = 2**53 + 1


def _doc(start: str, end: str, event: str, value: str, double: str = "0.5") -> bytes:
    # Members as JSON text, so that a number keeps its exact spelling.
    span = (f'{{"traceId":"{TRACE_A}","spanId":"00000000000000a1","name":"chat","kind":1,'
            f'"startTimeUnixNano":{start},"endTimeUnixNano":{end},'
            f'"events":[{{"name":"e","timeUnixNano":{event}}}],'
            f'"attributes":[{{"key":"gen_ai.operation.name","value":{{"stringValue":"chat"}}}},'
            f'{{"key":"n","value":{{"intValue":{value}}}}},'
            f'{{"key":"d","value":{{"doubleValue":{double}}}}}]}}')
    return f'{{"resourceSpans":[{{"scopeSpans":[{{"spans":[{span}]}}]}}]}}'.encode()


@pytest.mark.parametrize(("start", "end", "event", "value"), [
    (f"{TIME}.0", f"{TIME + 2}.000", f'"{TIME + 1}.0"', f'"{BIG}.0"'),
    ("1.772443798120000123e18", "17724437981200001250e-1", f'"{TIME + 1}e0"', f"{BIG}.0"),
    (f'"{TIME}.0"', '"1.772443798120000125E+18"', "1772443798120000124.00", f'"{BIG}e0"'),
    (f"{TIME}", f'"{TIME + 2}"', f'"{TIME + 1}"', f'"{BIG}"'),
], ids=["fraction", "exponent", "strings", "plain"])
def test_json_integer_with_a_fraction_or_exponent_is_taken_exactly(
    start: str, end: str, event: str, value: str
) -> None:
    span = parse_otlp_json(_doc(start, end, event, value)).resource_spans[0].scope_spans[0].spans[0]
    assert span.start_time_unix_nano == TIME
    assert span.end_time_unix_nano == TIME + 2
    assert span.events[0].time_unix_nano == TIME + 1
    assert span.attributes[1].value.int_value == BIG


@pytest.mark.parametrize("value", ["1.5", '"1.5"', f'"{BIG}.5"', f"{BIG}.5", '"1e400"',
                                   f'"{2**63}.0"', f"{2**63}.0", '"NaN"', '"Infinity"'])
def test_json_integer_that_is_not_an_int64_is_still_refused(value: str) -> None:
    with pytest.raises(InvalidRequest):
        parse_otlp_json(_doc("1", "2", "1", value))


@pytest.mark.parametrize("value", ['"1_000"', '"\u0663"', '"\\t5"', '"5 "', '"+5"', '"05"',
                                   '"5."', '".5e1"'])
def test_json_integer_string_that_is_not_a_json_number_is_refused(value: str) -> None:
    # Python's int() (which protobuf's parser calls) takes "1_000" as 1000 and the
    # Arabic-Indic digit three as 3; the Collector's reader refuses these.
    with pytest.raises(InvalidRequest, match="is not a number as JSON writes one"):
        parse_otlp_json(_doc("1", "2", "1", value))


@pytest.mark.parametrize("where", ["span", "link"])
@pytest.mark.parametrize("flags", ['"\u0667\u0666\u0668"', '"7_68"', '"+768"', '" 768"'])
def test_json_flags_string_that_is_not_a_json_number_is_refused(where: str, flags: str) -> None:
    # Python's int() took the Arabic-Indic digits 768 as 768: the bits saying the
    # parent is remote, which decide whether a span is a local root.  The Collector's
    # reader refuses them.
    doc = _doc("1", "2", "1", "1")
    flagged = (b'"kind":1,"flags":' + flags.encode() if where == "span" else
               b'"kind":1,"links":[{"traceId":"' + TRACE_A.encode()
               + b'","spanId":"00000000000000a2","flags":' + flags.encode() + b'}]')
    with pytest.raises(InvalidRequest, match=r"flags .* is not a number as JSON writes one"):
        parse_otlp_json(doc.replace(b'"kind":1', flagged))


@pytest.mark.parametrize("flags", ['"768"', "768", '"7.68e2"', "768.0"])
def test_json_flags_in_any_json_number_form_are_taken(flags: str) -> None:
    doc = _doc("1", "2", "1", "1").replace(b'"kind":1', b'"kind":1,"flags":' + flags.encode())
    assert parse_otlp_json(doc).resource_spans[0].scope_spans[0].spans[0].flags == 768


@pytest.mark.parametrize(("value", "expected"), [
    ('"-0"', 0), ('"0"', 0), ('"5e0"', 5), ('"-50E-1"', -5), ('"0.5e1"', 5)])
def test_json_integer_string_in_any_json_number_form_is_taken(value: str, expected: int) -> None:
    span = parse_otlp_json(_doc("1", "2", "1", value)).resource_spans[0].scope_spans[0].spans[0]
    assert span.attributes[1].value.int_value == expected


@pytest.mark.parametrize(("double", "message"), [
    ('"1e400"', "beyond the range of a double"),
    ('"-1e400"', "beyond the range of a double"),
    ('"1_000.5"', "neither a number"), ('" 5 "', "neither a number"),
    ('"inf"', "neither a number"), ('"nan"', "neither a number"),
    ('"\u0663"', "neither a number"), ('""', "neither a number"),
    ('"+5"', "neither a number"), ('".5"', "neither a number"), ('"05"', "neither a number"),
])
def test_json_double_string_that_is_not_a_finite_json_number_or_special_name_is_refused(
    double: str, message: str
) -> None:
    # protobuf's parser took any string float() takes: "1e400" was certified as
    # Infinity, though the number 1e400 is refused.
    with pytest.raises(InvalidRequest, match=message):
        parse_otlp_json(_doc("1", "2", "1", "1", double))


@pytest.mark.parametrize(("double", "expected"), [
    ('"NaN"', "nan"), ('"Infinity"', "inf"), ('"-Infinity"', "-inf"), ('"5"', "5.0"),
    ('"0.5"', "0.5"), ('"-0.0"', "-0.0"), ('"1e-400"', "0.0"),
])
def test_json_double_string_special_names_and_json_numbers_are_taken(
    double: str, expected: str
) -> None:
    request = parse_otlp_json(_doc("1", "2", "1", "1", double))
    got = request.resource_spans[0].scope_spans[0].spans[0].attributes[2].value.double_value
    assert str(got) == expected


@pytest.mark.parametrize(("double", "expected"), [
    ("5.0", 5.0), ("1e300", 1e300), ("9007199254740993.0", 9007199254740992.0),
    ('"9007199254740993.0"', 9007199254740992.0),
    ("1.7976931348623157e308", 1.7976931348623157e308),
    ("-0.0", -0.0), ("0.1", 0.1),
])
def test_json_double_values_are_unchanged(double: str, expected: float) -> None:
    request = parse_otlp_json(_doc("1", "2", "1", "1", double))
    got = request.resource_spans[0].scope_spans[0].spans[0].attributes[2].value.double_value
    assert got == expected and str(got) == str(expected)


def test_json_double_negative_zero_written_without_a_fraction_keeps_its_sign() -> None:
    # Python's reader took the number -0 (as Go's protobuf JSON writer spells
    # negative zero) as the int 0: certified as 0, though the same span over
    # protobuf is certified as -0 (SPEC §2.3 keeps the sign).
    body = _doc("1", "2", "1", "-0", "-0").replace(
        b'"name":"chat"', b'"name":"chat -0","flags":-0').replace(b'"kind":1', b'"kind":-0')
    span = parse_otlp_json(body).resource_spans[0].scope_spans[0].spans[0]
    got = span.attributes[2].value.double_value
    assert str(got) == "-0.0"
    # An integer field takes it as 0, as before.
    assert (span.attributes[1].value.int_value, span.kind, span.flags) == (0, 0, 0)
    nested = body.replace(b'{"doubleValue":-0}',
                          b'{"arrayValue":{"values":[{"doubleValue":-0},{"doubleValue":0}]}}')
    values = parse_otlp_json(nested).resource_spans[0].scope_spans[0].spans[0] \
        .attributes[2].value.array_value.values
    assert [str(v.double_value) for v in values] == ["-0.0", "0.0"]


def test_json_time_with_a_fraction_is_certified_exactly(tmp_path: Path) -> None:
    receiver = Receiver(tmp_path / "out", signing_key=signing_key(), seal_grace=0.0)
    with serving(receiver, http=True) as (_, http_server):
        assert http_server is not None
        req = urllib.request.Request(
            f"http://127.0.0.1:{http_server.port}/v1/traces",
            data=_doc(f"{TIME}.0", f"{TIME + 2}.0", f"{TIME + 1}.0", f"{BIG}.0"),
            method="POST", headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as response:
            assert response.status == 200
            assert "partialSuccess" not in json.loads(response.read() or b"{}")
    (report,) = verified(str(tmp_path / "out"), trust_root(str(tmp_path)))
    assert report.records is not None
    (record,) = report.records
    assert record["span"]["startTimeUnixNano"] == str(TIME)
    assert record["span"]["endTimeUnixNano"] == str(TIME + 2)
    assert record["span"]["events"][0]["timeUnixNano"] == str(TIME + 1)
    assert record["span"]["attributes"]["n"] == {"intValue": str(BIG)}
