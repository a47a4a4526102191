"""An OTLP/JSON ``bytesValue`` that is not base64 is refused, not certified as the
bytes protobuf's lenient decoder makes of it.

protobuf decodes it with Python's non-validating base64 decoder, which skips every
character outside the alphabet and stops at the first padding: ``"AQ==AQ=="`` was
certified as the one byte 01, ``"!!!!"`` as no bytes, ``"A Q=="`` as 01."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from receiver_support import TRACE_A, bundle_paths, serving, signing_key

from spanproof.exporter.otlp_server import InvalidRequest, parse_otlp_json
from spanproof.exporter.receiver import Receiver


def _doc(value: Any, where: str = "span") -> bytes:
    attributes = [{"key": "b", "value": value}]
    span: dict[str, Any] = {
        "traceId": TRACE_A, "spanId": "00000000000000a1", "name": "chat", "kind": 1,
        "attributes": [{"key": "gen_ai.operation.name", "value": {"stringValue": "chat"}}],
    }
    resource: dict[str, Any] = {}
    if where == "span":
        span["attributes"] += attributes
    elif where == "event":
        span["events"] = [{"name": "e", "attributes": attributes}]
    elif where == "link":
        span["links"] = [{"traceId": TRACE_A, "spanId": "00000000000000a2",
                          "attributes": attributes}]
    else:
        resource["attributes"] = attributes
    return json.dumps({"resourceSpans": [
        {"resource": resource, "scopeSpans": [{"spans": [span]}]}]}).encode()


NOT_BASE64 = ["AQ==AQ==", "!!!!", "A Q==", "AQ!!", "%%%%AQ==", "ab\ncd", "AQ=", "A===",
              "=AQ=", "AQ==="]


@pytest.mark.parametrize("text", NOT_BASE64, ids=repr)
@pytest.mark.parametrize("where", ["span", "event", "link", "resource"])
def test_json_bytes_value_that_is_not_base64_is_refused(text: str, where: str) -> None:
    with pytest.raises(InvalidRequest, match="bytesValue"):
        parse_otlp_json(_doc({"bytesValue": text}, where))


@pytest.mark.parametrize("value", [
    {"arrayValue": {"values": [{"bytesValue": "AQ==AQ=="}]}},
    {"kvlistValue": {"values": [{"key": "k", "value": {"bytes_value": "!!!!"}}]}},
], ids=["array", "kvlist-snake-case"])
def test_json_nested_bytes_value_that_is_not_base64_is_refused(value: Any) -> None:
    with pytest.raises(InvalidRequest, match="bytesValue"):
        parse_otlp_json(_doc(value))


@pytest.mark.parametrize(("text", "data"), [
    ("", b""), ("AQ==", b"\x01"), ("AQ", b"\x01"), ("AQI=", b"\x01\x02"), ("AQI", b"\x01\x02"),
    ("AQID", b"\x01\x02\x03"), ("+/8=", b"\xfb\xff"), ("-_8", b"\xfb\xff"),
])
def test_json_bytes_value_in_base64_is_taken(text: str, data: bytes) -> None:
    span = parse_otlp_json(_doc({"bytesValue": text})).resource_spans[0].scope_spans[0].spans[0]
    assert span.attributes[1].value.bytes_value == data


def test_json_bytes_value_not_base64_is_400_and_nothing_certified(tmp_path: Path) -> None:
    receiver = Receiver(tmp_path / "out", signing_key=signing_key(), seal_grace=0.0)
    with serving(receiver, http=True) as (_, http_server):
        assert http_server is not None
        req = urllib.request.Request(
            f"http://127.0.0.1:{http_server.port}/v1/traces",
            data=_doc({"bytesValue": "AQ==AQ=="}), method="POST",
            headers={"Content-Type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(req, timeout=10)
        assert refused.value.code == 400
        assert "bytesValue" in json.loads(refused.value.read())["message"]
    assert bundle_paths(str(tmp_path / "out")) == []
