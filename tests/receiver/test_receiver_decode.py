"""Concurrent export requests are decoded one after another, so each request's traces
can be sealed while the next request is decoded (see ``Receiver._decode``); the
evidence marker selects spans as on the SDK path."""

from __future__ import annotations

import itertools
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.proto.common.v1 import common_pb2
from receiver_support import bundle_paths, otlp_span, request, signing_key

from spanproof.exporter import receiver as receiver_module
from spanproof.exporter.receiver import Receiver
from spanproof.exporter.selection import EVIDENCE_ATTRIBUTE

SPANS_PER_REQUEST = 400


@pytest.fixture
def switching_often() -> Iterator[None]:
    # Threads take turns on the GIL every 10 µs instead of every 5 ms, so two
    # requests decoded side by side would interleave almost at once.
    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    try:
        yield
    finally:
        sys.setswitchinterval(previous)


def test_concurrent_requests_are_decoded_one_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, switching_often: None
) -> None:
    traces = ["a" * 32, "b" * 32]
    decoded: list[str] = []  # the trace of every span normalized, in order
    original = receiver_module.otlp_span_to_body

    def recording(span: Any, resource: Any, scope: Any) -> Any:
        decoded.append(span.trace_id.hex())
        return original(span, resource, scope)

    monkeypatch.setattr(receiver_module, "otlp_span_to_body", recording)
    receiver = Receiver(tmp_path / "out", signing_key=signing_key(), seal_grace=3600)
    receiver.start()
    try:
        start = threading.Barrier(2)
        errors: list[BaseException] = []

        def send(trace: str) -> None:
            spans = (otlp_span(trace, n, parent=1) for n in range(2, 2 + SPANS_PER_REQUEST))
            req = request(*spans)
            start.wait()
            try:
                receiver(req.resource_spans)
            except BaseException as e:  # reported below, on the test's thread
                errors.append(e)

        threads = [threading.Thread(target=send, args=(t,)) for t in traces]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert errors == []
    finally:
        receiver.shutdown()
    assert sorted(decoded) == sorted(traces * SPANS_PER_REQUEST)
    switches = sum(1 for before, after in itertools.pairwise(decoded) if before != after)
    assert switches == 1, f"the requests' spans were decoded interleaved ({switches} switches)"


@pytest.mark.parametrize(
    ("marker", "gen_ai_keys", "certified"),
    [
        (common_pb2.AnyValue(bool_value=True), False, True),
        (common_pb2.AnyValue(bool_value=False), True, False),
        (common_pb2.AnyValue(string_value="true"), False, False),  # only a bool counts
        (common_pb2.AnyValue(string_value="false"), True, True),  # ... so the keys decide
        (None, True, True),
        (None, False, False),
    ],
    ids=["true", "false-over-keys", "string-true", "string-false", "keys", "neither"],
)
def test_the_evidence_marker_selects_on_the_collector_path_as_on_the_sdk_path(
    tmp_path: Path, marker: Any, gen_ai_keys: bool, certified: bool
) -> None:
    span = otlp_span("c" * 32, 1, evidence=gen_ai_keys)
    if marker is not None:
        span.attributes.append(common_pb2.KeyValue(key=EVIDENCE_ATTRIBUTE, value=marker))
    receiver = Receiver(tmp_path / "out", signing_key=signing_key(), seal_grace=3600)
    receiver.start()
    try:
        receiver(request(span).resource_spans)
    finally:
        assert receiver.shutdown(10)
    assert len(bundle_paths(str(tmp_path / "out"))) == (1 if certified else 0)


def test_a_malformed_resource_or_scope_is_yielded_without_its_traceback() -> None:
    # Its traceback holds the generator's frame, which holds it: a cycle that kept the
    # whole request alive until a garbage collection.
    from spanproof.exporter.otlp import MalformedSpan, iter_request_spans

    bad = request(otlp_span("0af7651916cd43dd8448eb211c80319c", 1))
    duplicate = common_pb2.KeyValue(key="k", value=common_pb2.AnyValue(string_value="v"))
    bad.resource_spans[0].resource.attributes.extend([duplicate, duplicate])
    bad.resource_spans[0].scope_spans[0].scope.attributes.extend([duplicate, duplicate])
    ((_, resource, scope),) = list(iter_request_spans(bad.resource_spans))
    assert isinstance(resource, MalformedSpan) and isinstance(scope, MalformedSpan)
    assert "duplicate" in str(resource) and "duplicate" in str(scope)
    assert resource.__traceback__ is None and scope.__traceback__ is None
