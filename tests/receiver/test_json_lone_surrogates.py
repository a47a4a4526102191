"""An OTLP/JSON span holding a lone surrogate is rejected alone, not with its request.

A browser's OTLP exporter writes one when an attribute length limit cuts a string
inside a surrogate pair (``JSON.stringify`` then writes ``"truncated emoji \\ud83d"``).
protobuf's JSON parser refused the whole request ("Unpaired surrogate"): HTTP 400,
which a sender takes as permanent, so every other span of the batch, evidence
included, was lost and declared nowhere.  Such a string has no canonical JSON form
(SPEC §3.1), so the span cannot be certified as sent, and is not altered to fit
(SPEC §2.4.2): it is rejected and declared in its trace's bundle, as are the spans
under a resource or scope holding one, and the rest of the request is certified.
"""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from receiver_support import (
    TRACE_A,
    TRACE_B,
    serving,
    signing_key,
    span_id,
    span_ids,
    trust_root,
    verified,
)

from spanproof.exporter import otlp_server
from spanproof.exporter.otlp import UNDECODABLE_SCOPE
from spanproof.exporter.otlp_server import InvalidRequest, parse_otlp_json
from spanproof.exporter.receiver import Receiver
from spanproof.verifier import BundleReport

CUT = "truncated emoji \ud83d"  # a pair cut in half, as JSON.stringify writes it
WHY = "holds a lone surrogate: no canonical JSON form (SPEC §3.1)"


def _string(text: str) -> dict[str, Any]:
    return {"stringValue": text}


def _span(trace: str, n: int, parent: int | None = None, **members: Any) -> dict[str, Any]:
    span: dict[str, Any] = {
        "traceId": trace, "spanId": span_id(n), "name": "step", "kind": 1,
        "startTimeUnixNano": str(1_000 + n), "endTimeUnixNano": str(2_000 + n),
        "attributes": [{"key": "gen_ai.operation.name", "value": _string("chat")}],
    }
    if parent is not None:
        span["parentSpanId"] = span_id(parent)
    extra = members.pop("attributes", [])
    span.update(members)
    span["attributes"] += extra
    return span


def _resource(*spans: dict[str, Any], attributes: Any = ()) -> dict[str, Any]:
    return {"resource": {"attributes": [{"key": "service.name", "value": _string("svc")},
                                        *attributes]},
            "scopeSpans": [{"scope": {"name": "tests.receiver"}, "spans": list(spans)}]}


def _body(*resources: dict[str, Any]) -> bytes:
    # json.dumps escapes a lone surrogate as \udXXX, as JSON.stringify does.
    return json.dumps({"resourceSpans": list(resources)}).encode("ascii")


def _export(tmp_path: Path, body: bytes) -> tuple[dict[str, Any], dict[str, BundleReport]]:
    """POST *body* as OTLP/JSON to a receiver; its answer and the bundles by trace."""
    receiver = Receiver(tmp_path / "out", signing_key=signing_key(), seal_grace=0.0)
    with serving(receiver, http=True) as (_, http_server):
        assert http_server is not None
        post = urllib.request.Request(
            f"http://127.0.0.1:{http_server.port}/v1/traces", data=body, method="POST",
            headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(post, timeout=10) as answer:  # before: 400
            assert answer.status == 200
            response = json.loads(answer.read())
        assert receiver.flush()
    reports = verified(str(tmp_path / "out"), trust_root(str(tmp_path)), allow_incomplete=True)
    return response, {r.statement.trace_id: r for r in reports}


def test_a_lone_surrogate_in_an_attribute_rejects_its_span_alone(tmp_path: Path) -> None:
    bad = _span(TRACE_A, 2, parent=1, attributes=[{"key": "note", "value": _string(CUT)}])
    response, bundles = _export(tmp_path, _body(_resource(_span(TRACE_A, 1), bad)))
    assert response["partialSuccess"]["rejectedSpans"] == "1"
    assert f"span {span_id(2)}: a string {WHY}" in response["partialSuccess"]["errorMessage"]
    (bundle,) = bundles.values()
    assert span_ids(bundle) == [span_id(1)]
    assert bundle.statement.completeness.rejected_spans == 1


@pytest.mark.parametrize("members", [
    {"events": [{"name": "e", "timeUnixNano": "1500",
                 "attributes": [{"key": "k", "value": _string(CUT)}]}]},
    {"events": [{"name": CUT}]},
    {"attributes": [{"key": "nested", "value": {"kvlistValue": {"values": [
        {"key": "inner", "value": {"arrayValue": {"values": [_string(CUT)]}}}]}}}]},
    {"links": [{"traceId": TRACE_B, "spanId": span_id(9),
                "attributes": [{"key": "k", "value": _string(CUT)}]}]},
    {"status": {"code": 2, "message": CUT}},
    {"name": CUT},
    {"traceState": "k=\udc00"},
], ids=["event-attribute", "event-name", "nested-kvlist", "link", "status", "name",
        "trace-state"])
def test_a_lone_surrogate_anywhere_in_a_span_rejects_that_span_alone(
    tmp_path: Path, members: dict[str, Any]
) -> None:
    body = _body(_resource(_span(TRACE_A, 1), _span(TRACE_A, 2, parent=1, **members),
                           _span(TRACE_A, 3, parent=1)))
    response, bundles = _export(tmp_path, body)
    assert response["partialSuccess"]["rejectedSpans"] == "1"
    (bundle,) = bundles.values()
    assert span_ids(bundle) == [span_id(1), span_id(3)]
    assert bundle.statement.completeness.rejected_spans == 1


def test_a_lone_surrogate_in_a_resource_rejects_all_its_spans_alone(tmp_path: Path) -> None:
    cut = _resource(_span(TRACE_A, 1), _span(TRACE_A, 2, parent=1),
                    attributes=[{"key": "host.name", "value": _string(CUT)}])
    response, bundles = _export(tmp_path, _body(cut, _resource(_span(TRACE_B, 3))))
    assert response["partialSuccess"]["rejectedSpans"] == "2"
    assert f"its resource {WHY}" in response["partialSuccess"]["errorMessage"]
    assert span_ids(bundles[TRACE_A]) == []
    assert bundles[TRACE_A].statement.completeness.rejected_spans == 2
    assert span_ids(bundles[TRACE_B]) == [span_id(3)]
    assert bundles[TRACE_B].statement.completeness.rejected_spans == 0


def test_a_surrogate_pair_escaped_is_certified_unchanged(tmp_path: Path) -> None:
    emoji = "emoji \ud83d\ude00"  # one character: json.dumps writes \ud83d\ude00
    body = _body(_resource(_span(TRACE_A, 1, name=emoji,
                                 attributes=[{"key": "note", "value": _string(emoji)}])))
    assert b"\\ud83d\\ude00" in body
    response, bundles = _export(tmp_path, body)
    assert "partialSuccess" not in response or not response["partialSuccess"].get(
        "rejectedSpans")
    (bundle,) = bundles.values()
    assert bundle.records is not None
    (record,) = bundle.records
    assert record["span"]["name"] == "emoji \U0001f600"
    assert record["span"]["attributes"]["note"] == _string("emoji \U0001f600")
    assert bundle.statement.completeness.rejected_spans == 0


def _set_apart(body: bytes) -> dict[str, list[tuple[str, str]]]:
    """The spans of *body* by scope name (the scopes set apart by reason)."""
    request = parse_otlp_json(body)
    scopes: dict[str, list[tuple[str, str]]] = {}
    for rs in request.resource_spans:
        for ss in rs.scope_spans:
            name = ss.scope.version if ss.scope.name == UNDECODABLE_SCOPE else ss.scope.name
            scopes.setdefault(name, []).extend(
                (s.trace_id.hex(), s.span_id.hex()) for s in ss.spans)
    return scopes


def test_the_outline_of_a_span_set_apart_is_still_selected_and_declared(
    tmp_path: Path
) -> None:
    # Selected by the evidence marker alone, or by an evidence key whose own value
    # holds the lone surrogate (kept, its value emptied); a span that is not evidence
    # is not counted.
    marked = {"traceId": TRACE_A, "spanId": span_id(2), "parentSpanId": span_id(1),
              "name": CUT, "attributes": [
                  {"key": "spanproof.evidence", "value": {"boolValue": True}}]}
    by_key = {"traceId": TRACE_A, "spanId": span_id(3), "parentSpanId": span_id(1),
              "attributes": [{"key": "gen_ai.operation.name", "value": _string(CUT)}]}
    plain = {"traceId": TRACE_A, "spanId": span_id(4), "parentSpanId": span_id(1),
             "name": CUT, "attributes": [{"key": "app.step", "value": _string("x")}]}
    body = _body(_resource(_span(TRACE_A, 1), marked, by_key, plain))
    (apart,) = parse_otlp_json(body).resource_spans[0].scope_spans[1:]
    outline = apart.spans[1]
    assert (outline.parent_span_id.hex(), outline.name) == (span_id(1), "")
    assert [(kv.key, kv.value.WhichOneof("value")) for kv in outline.attributes] == [
        ("gen_ai.operation.name", None)]
    response, bundles = _export(tmp_path, body)
    assert response["partialSuccess"]["rejectedSpans"] == "2"
    (bundle,) = bundles.values()
    assert span_ids(bundle) == [span_id(1)]
    assert bundle.statement.completeness.rejected_spans == 2


def test_a_lone_surrogate_in_a_scope_sets_apart_the_spans_under_it() -> None:
    good = _resource(_span(TRACE_A, 1))
    cut = _resource(_span(TRACE_B, 2))
    cut["scopeSpans"].append({"scope": {"name": "lib", "version": CUT},
                              "spans": [_span(TRACE_B, 3)]})
    assert _set_apart(_body(good, cut)) == {
        "tests.receiver": [(TRACE_A, span_id(1)), (TRACE_B, span_id(2))],
        f"its scope {WHY}": [(TRACE_B, span_id(3))],
    }


def test_a_lone_surrogate_in_a_field_protobuf_ignores_changes_nothing() -> None:
    # Unknown fields are ignored (OTLP), lone surrogates in them too: the span is
    # certified as before.
    span = _span(TRACE_A, 1, extra=CUT, attributes=[
        {"key": "k", "value": _string("v"), "unknown": CUT}])
    assert _set_apart(_body(_resource(span))) == {"tests.receiver": [(TRACE_A, span_id(1))]}


def test_a_surrogate_encoded_as_utf8_bytes_is_set_apart_as_an_escaped_one() -> None:
    # Python's JSON reader takes the bytes ED A0 BD as the surrogate U+D83D: the span
    # is set apart, escape or not.
    body = _body(_resource(_span(TRACE_A, 1), _span(TRACE_A, 2, parent=1, name=CUT)))
    body = body.replace(b"\\ud83d", "\ud83d".encode("utf-8", "surrogatepass"))
    assert b"\\u" not in body
    assert _set_apart(body) == {"tests.receiver": [(TRACE_A, span_id(1))],
                                f"a string {WHY}": [(TRACE_A, span_id(2))]}


@pytest.mark.parametrize("encoding", ["utf-16-le", "utf-16", "utf-32-be"])
def test_a_body_not_in_utf8_is_refused_whole_whatever_it_holds(encoding: str) -> None:
    # Python's reader decoded UTF-16 and UTF-32 too, where the byte scan for lone
    # surrogates sees none: a span holding one failed its whole request instead of
    # being set apart. JSON between systems is UTF-8 (RFC 8259 §8.1), as the
    # Collector reads it: such a body is refused, whatever it holds.
    for name in ("step", CUT):
        text = _body(_resource(_span(TRACE_A, 1), _span(TRACE_A, 2, name=name))).decode()
        with pytest.raises(InvalidRequest, match=f"not UTF-8 .* but {encoding[:6]}"):
            parse_otlp_json(text.encode(encoding))
    # A UTF-8 byte order mark is still read past, as before.
    request = parse_otlp_json(b"\xef\xbb\xbf" + _body(_resource(_span(TRACE_A, 1))))
    assert len(request.resource_spans[0].scope_spans[0].spans) == 1


class _FieldBefore631:
    """A field descriptor as protobuf before 6.31 has it: ``label``, no ``is_repeated``
    (and protobuf 7 has no ``label``)."""

    def __init__(self, field: FieldDescriptor) -> None:
        self._field = field

    def __getattr__(self, name: str) -> Any:
        if name == "is_repeated":
            raise AttributeError(name)
        if name == "label" and not hasattr(self._field, "label"):
            return (FieldDescriptor.LABEL_REPEATED if self._field.is_repeated
                    else FieldDescriptor.LABEL_OPTIONAL)
        return getattr(self._field, name)


def test_a_lone_surrogate_is_set_apart_with_a_protobuf_without_is_repeated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # FieldDescriptor.is_repeated arrived in protobuf 6.31, where OpenTelemetry before
    # 1.35 caps protobuf below 6: looking for lone surrogates failed with
    # AttributeError, and the request was answered 503 and retried for ever.
    fields = otlp_server._json_fields

    def before_631(descriptor: Descriptor) -> dict[str, Any]:
        return {name: _FieldBefore631(field) for name, field in fields(descriptor).items()}

    monkeypatch.setattr(otlp_server, "_json_fields", before_631)
    bad = _span(TRACE_A, 2, parent=1, events=[{"name": "e", "attributes": [
        {"key": "k", "value": {"arrayValue": {"values": [_string(CUT)]}}}]}])
    body = _body(_resource(_span(TRACE_A, 1), bad))
    assert _set_apart(body) == {"tests.receiver": [(TRACE_A, span_id(1))],
                                f"a string {WHY}": [(TRACE_A, span_id(2))]}
    response, bundles = _export(tmp_path, body)
    assert response["partialSuccess"]["rejectedSpans"] == "1"
    (bundle,) = bundles.values()
    assert span_ids(bundle) == [span_id(1)]
