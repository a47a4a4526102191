"""An OTLP/JSON object naming one field twice is refused, not half read.

Python's JSON reader keeps the last of two members of one name, and protobuf's JSON
parser keeps one of a field's two spellings (``scopeSpans`` and ``scope_spans``),
emptying the list when that one is ``null``: the spans under the other were
answered 200 OK and neither certified nor declared.  Go's protobuf JSON reader
refuses such a document; so does the receiver now, with 400, so the sender knows.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
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

from spanproof.exporter.otlp_server import InvalidRequest, parse_otlp_json
from spanproof.exporter.receiver import Receiver


def _span(n: int, trace: str = TRACE_A, parent: int | None = None) -> str:
    parent_id = f',"parentSpanId":"{span_id(parent)}"' if parent is not None else ""
    return (f'{{"traceId":"{trace}","spanId":"{span_id(n)}"{parent_id},"name":"step",'
            f'"kind":1,"startTimeUnixNano":"1","endTimeUnixNano":"2","attributes":'
            f'[{{"key":"gen_ai.operation.name","value":{{"stringValue":"chat"}}}}]}}')


NAMED_TWICE = {
    # Members as JSON text: a dict cannot hold one name twice.
    "spans twice": f'{{"resourceSpans":[{{"scopeSpans":[{{"spans":[{_span(1)}],'
                   f'"spans":[{_span(2, parent=1)}]}}]}}]}}',
    "both spellings": f'{{"resourceSpans":[{{"scopeSpans":[{{"spans":[{_span(1)}]}}],'
                      f'"scope_spans":[{{"spans":[{_span(2, parent=1)}]}}]}}]}}',
    "null spelling after": f'{{"resourceSpans":[{{"scopeSpans":[{{"spans":[{_span(1)}]}}],'
                           f'"scope_spans":null}}]}}',
    "top level": f'{{"resourceSpans":[{{"scopeSpans":[{{"spans":[{_span(1)}]}}]}}],'
                 f'"resource_spans":null}}',
    "id both spellings": f'{{"resourceSpans":[{{"scopeSpans":[{{"spans":['
                         f'{_span(1)[:-1]},"trace_id":"{TRACE_B}"}}]}}]}}]}}',
    "value twice": '{"resourceSpans":[{"scopeSpans":[{"spans":[' + _span(1).replace(
        '{"stringValue":"chat"}', '{"stringValue":"chat","stringValue":"other"}') + ']}]}]}',
}


@pytest.mark.parametrize("case", NAMED_TWICE)
def test_a_field_named_twice_in_one_object_is_refused(case: str) -> None:
    json.loads(NAMED_TWICE[case])  # valid JSON, to Python's reader
    with pytest.raises(InvalidRequest, match=r"names field .* twice in one object"):
        parse_otlp_json(NAMED_TWICE[case].encode())


def test_a_field_named_twice_is_answered_400_and_nothing_is_certified(tmp_path: Path) -> None:
    receiver = Receiver(tmp_path / "out", signing_key=signing_key(), seal_grace=0.0)
    with serving(receiver, http=True) as (_, http_server):
        assert http_server is not None
        url = f"http://127.0.0.1:{http_server.port}/v1/traces"

        def post(body: str) -> Any:
            req = urllib.request.Request(url, data=body.encode(), method="POST",
                                         headers={"Content-Type": "application/json"})
            return urllib.request.urlopen(req, timeout=10)

        for body in NAMED_TWICE.values():
            with pytest.raises(urllib.error.HTTPError) as refused:
                post(body)
            assert refused.value.code == 400  # before: 200, spans lost undeclared
            refused.value.close()
        good = f'{{"resourceSpans":[{{"scopeSpans":[{{"spans":[{_span(7, TRACE_B)}]}}]}}]}}'
        with post(good) as answer:
            assert answer.status == 200
        assert receiver.flush()
    reports = verified(str(tmp_path / "out"), trust_root(str(tmp_path)), allow_incomplete=True)
    assert [(r.statement.trace_id, span_ids(r)) for r in reports] == [(TRACE_B, [span_id(7)])]
