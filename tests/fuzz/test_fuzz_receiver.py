"""Property tests: whatever a Collector (or anyone on its port) sends, the receiver
answers "malformed" or accepts, and never takes its own error for the sender's.

A bug surfaces as ``UNAVAILABLE`` / HTTP 503, which the Collector retries: a request
that makes the receiver fail that way is retried forever instead of refused.  So an
OTLP/JSON body mutated at the byte level or at the JSON level must decode or raise
``InvalidRequest`` (HTTP 400), and an OTLP protobuf request mutated at the byte level
must, once it decodes, be ingested (malformed spans declared rejected) or raise
``InvalidRequest``; every bundle written from such requests verifies.
"""

from __future__ import annotations

import base64
import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fuzz_mutations
import pytest
from google.protobuf import json_format
from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

from spanproof.exporter import SigningKey
from spanproof.exporter.otlp_server import InvalidRequest, parse_otlp_json
from spanproof.exporter.receiver import Receiver
from spanproof.verifier import TrustRoot, Verdict, check_bundle, find_bundles

_FAST = settings(max_examples=300, deadline=None,
                 suppress_health_check=[HealthCheck.too_slow,
                                        HealthCheck.function_scoped_fixture])
KEY = SigningKey.from_seed(b"\x5a" * 32)
TRACES = ("0af7651916cd43dd8448eb211c80319c", "4bf92f3577b34da6a3ce929d0e0e4736")


def _value(**kind: Any) -> common_pb2.AnyValue:
    return common_pb2.AnyValue(**kind)


def _request() -> trace_service_pb2.ExportTraceServiceRequest:
    """Two traces of evidence spans holding every attribute type, an event, a link
    and a status: every part of a span the receiver reads."""
    request = trace_service_pb2.ExportTraceServiceRequest()
    resource_spans = request.resource_spans.add()
    resource_spans.resource.attributes.add(key="service.name", value=_value(string_value="svc"))
    scope_spans = resource_spans.scope_spans.add()
    scope_spans.scope.name = "fuzz"
    for n in range(1, 6):
        span = scope_spans.spans.add(
            trace_id=bytes.fromhex(TRACES[n > 3]), span_id=n.to_bytes(8, "big"), name="step",
            kind=trace_pb2.Span.SPAN_KIND_CLIENT, start_time_unix_nano=1_000 + n,
            end_time_unix_nano=2_000 + n, flags=0x300,
        )
        if n not in (1, 4):
            span.parent_span_id = (1 if n < 4 else 4).to_bytes(8, "big")
        span.attributes.add(key="gen_ai.operation.name", value=_value(string_value="chat"))
        span.attributes.add(key="text", value=_value(string_value="caf\u00e9 \U0001f600"))
        span.attributes.add(key="int", value=_value(int_value=-(2**63)))
        span.attributes.add(key="double", value=_value(double_value=0.5))
        span.attributes.add(key="bytes", value=_value(bytes_value=b"\x00\xff"))
        listed = span.attributes.add(key="list").value.array_value.values
        listed.add(string_value="x")
        listed.add(bool_value=True)
        mapped = span.attributes.add(key="map").value.kvlist_value.values
        mapped.add(key="k", value=_value(int_value=7))
        event = span.events.add(name="e", time_unix_nano=1_500)
        event.attributes.add(key="x", value=_value(string_value="y"))
        span.links.add(trace_id=bytes.fromhex(TRACES[0]), span_id=b"\x00" * 7 + b"\x09")
        span.status.code = trace_pb2.Status.STATUS_CODE_ERROR
        span.status.message = "boom"
    return request


ORIGINAL_PB = _request().SerializeToString()


def _otlp_json(request: trace_service_pb2.ExportTraceServiceRequest) -> bytes:
    """*request* as OTLP/JSON: hex ids (the protobuf JSON mapping writes base64)."""
    doc = json_format.MessageToDict(request)

    def hex_ids(node: object) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("traceId", "spanId", "parentSpanId") and isinstance(value, str):
                    node[key] = base64.b64decode(value).hex()
                else:
                    hex_ids(value)
        elif isinstance(node, list):
            for item in node:
                hex_ids(item)

    hex_ids(doc)
    return json.dumps(doc).encode()


ORIGINAL_JSON = _otlp_json(_request())


def _json_mutation(rng: random.Random) -> bytes:
    if rng.random() < 0.5:
        return fuzz_mutations.mutate_bytes(ORIGINAL_JSON, rng)
    doc = json.loads(ORIGINAL_JSON)
    path = rng.choice(fuzz_mutations.paths(doc))
    value = fuzz_mutations.random_value(rng)
    if rng.random() < 0.2 and path and isinstance(path[-1], str):
        # A field name of its own: unknown names are ignored, odd ones refused.
        name = rng.choice(["\ud800", "\udfff", "x\udc80", "\u00e9\U0001f600", "", "\x00"])
        parent = doc
        for step in path[:-1]:
            parent = parent[step]
        parent[name] = parent.pop(path[-1])
    else:
        doc = fuzz_mutations.set_path(doc, path, value)
    return json.dumps(doc).encode("utf-8", "surrogatepass")


def test_the_originals_are_accepted(receiver: Receiver) -> None:
    parsed = parse_otlp_json(ORIGINAL_JSON)
    assert parsed.SerializeToString() == ORIGINAL_PB
    receiver(_request().resource_spans)  # raises nothing


@_FAST
@given(st.randoms(use_true_random=False))
def test_mutated_otlp_json_decodes_or_is_malformed(rng: random.Random) -> None:
    body = _json_mutation(rng)
    try:
        parse_otlp_json(body)
    except InvalidRequest:
        pass


@pytest.fixture(scope="module")
def out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz-receiver")


@pytest.fixture(scope="module")
def receiver(out: Path) -> Iterator[Receiver]:
    """One receiver for the module's requests, sealing at once (no grace)."""
    receiver = Receiver(out / "bundles", signing_key=KEY, seal_grace=0.0, idle_timeout=0.0)
    receiver.start()
    try:
        yield receiver
    finally:
        receiver.shutdown()


@_FAST
@given(st.randoms(use_true_random=False))
def test_mutated_protobuf_requests_are_ingested_or_malformed(
    receiver: Receiver, rng: random.Random
) -> None:
    request = trace_service_pb2.ExportTraceServiceRequest()
    try:
        request.ParseFromString(fuzz_mutations.mutate_bytes(ORIGINAL_PB, rng))
    except DecodeError:
        return  # refused by protobuf itself: INVALID_ARGUMENT / HTTP 400
    try:
        receiver(request.resource_spans)
    except InvalidRequest:
        pass


@pytest.mark.slow
def test_long_run_of_mutated_requests(receiver: Receiver) -> None:
    """The long campaign from a fixed seed: 30,000 OTLP/JSON bodies and 5,000
    protobuf requests (a failure names the case number; a JSON case replays alone)."""
    def json_case(n: int, rng: random.Random) -> None:
        body = _json_mutation(rng)
        try:
            parse_otlp_json(body)
        except InvalidRequest:
            pass
        except Exception as e:
            raise AssertionError(f"JSON case {n}: {body[:300]!r}") from e

    # Parsing alone is split over the cores; the protobuf requests go through this
    # process's receiver, whose bundles the next test verifies.
    fuzz_mutations.run_campaign(20261204, 30_000, json_case)
    rng = random.Random(20261204)
    for n in range(5_000):
        request = trace_service_pb2.ExportTraceServiceRequest()
        data = fuzz_mutations.mutate_bytes(ORIGINAL_PB, rng)
        try:
            request.ParseFromString(data)
        except DecodeError:
            continue
        try:
            receiver(request.resource_spans)
        except InvalidRequest:
            pass
        except Exception as e:
            raise AssertionError(f"protobuf case {n}: {data[:300]!r}") from e


def test_every_bundle_sealed_from_the_mutated_requests_verifies(
    receiver: Receiver, out: Path
) -> None:
    # Runs after the tests above (file order), on what they sent.
    assert receiver.flush()
    (out / "producer.pub").write_bytes(KEY.public_pem())
    trust = TrustRoot.from_pem_files([str(out / "producer.pub")])
    bundles = list(find_bundles([str(out / "bundles")]))
    assert bundles
    verdicts = {p: check_bundle(p, trust).verdict for p in bundles}
    assert set(verdicts.values()) <= {Verdict.OK, Verdict.INCOMPLETE}, verdicts
