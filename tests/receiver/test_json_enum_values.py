"""OTLP/JSON enum values (``Span.kind``, ``Status.code``) that protobuf's JSON parser
does not carry as sent are refused, not certified as another value.

protobuf's parser truncated an integer beyond 32 bits (a status code of 2^32 + 2 was
certified as ``STATUS_CODE_ERROR``, a kind of 2^40 as ``SPAN_KIND_UNSPECIFIED``),
took a fraction's integer part (kind 1.5 as ``SPAN_KIND_INTERNAL``) and ``true`` as
1, and, told to ignore unknown fields, left a kind or code of an unknown name unset
(certified as ``SPAN_KIND_UNSPECIFIED`` / ``STATUS_CODE_UNSET``)."""

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


def _doc(kind: Any = 1, code: Any = 0) -> bytes:
    span = {
        "traceId": TRACE_A, "spanId": "00000000000000a1", "name": "chat",
        "kind": kind, "status": {"code": code, "message": "m"},
        "startTimeUnixNano": "1", "endTimeUnixNano": "2",
        "attributes": [{"key": "gen_ai.operation.name", "value": {"stringValue": "chat"}}],
    }
    return json.dumps({"resourceSpans": [{"scopeSpans": [{"spans": [span]}]}]}).encode()


MALFORMED = [2**40, 2**32 + 1, 2**31, -(2**31) - 1, 1.5, True, False, "SPAN_KIND_NEW", "",
             "1.5", "0x1", [1], {"v": 1}]


@pytest.mark.parametrize("kind", MALFORMED, ids=repr)
def test_json_span_kind_not_carried_as_sent_is_refused(kind: Any) -> None:
    with pytest.raises(InvalidRequest, match="kind"):
        parse_otlp_json(_doc(kind=kind))


@pytest.mark.parametrize("code", [2**32 + 2, 2**32, 2.5, True, "STATUS_CODE_NEW", "2 "],
                         ids=repr)
def test_json_status_code_not_carried_as_sent_is_refused(code: Any) -> None:
    with pytest.raises(InvalidRequest, match="code"):
        parse_otlp_json(_doc(code=code))


@pytest.mark.parametrize(("kind", "code", "expected"), [
    (3, 2, (3, 2)),
    ("SPAN_KIND_CLIENT", "STATUS_CODE_ERROR", (3, 2)),
    ("3", "2", (3, 2)),
    (3.0, 2.0, (3, 2)),
    (None, None, (0, 0)),
    # A number the enum does not name is carried: its span is rejected alone (SPEC §2.4.1).
    (99, -7, (99, -7)),
    (2**31 - 1, -(2**31), (2**31 - 1, -(2**31))),
])
def test_json_enum_values_carried_as_sent_are_taken(kind: Any, code: Any,
                                                    expected: tuple[int, int]) -> None:
    span = parse_otlp_json(_doc(kind=kind, code=code)).resource_spans[0].scope_spans[0].spans[0]
    assert (span.kind, span.status.code) == expected


def test_json_status_code_beyond_32_bits_is_400_not_certified_as_error(tmp_path: Path) -> None:
    receiver = Receiver(tmp_path / "out", signing_key=signing_key(), seal_grace=0.0)
    with serving(receiver, http=True) as (_, http_server):
        assert http_server is not None
        req = urllib.request.Request(
            f"http://127.0.0.1:{http_server.port}/v1/traces", data=_doc(code=2**32 + 2),
            method="POST", headers={"Content-Type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(req, timeout=10)
        assert refused.value.code == 400
        assert "status code" in json.loads(refused.value.read())["message"]
    assert bundle_paths(str(tmp_path / "out")) == []
