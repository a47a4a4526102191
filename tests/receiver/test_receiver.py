"""The receiver behind OTLP: grouping, sealing, dedup, conflicts, the Collector contract."""

from __future__ import annotations

import base64
import json
import os
import threading
import urllib.error
import urllib.request

import grpc
import pytest
from processes import wait_for
from receiver_support import (
    TRACE_A,
    TRACE_B,
    FakeClock,
    export,
    journal_files,
    otlp_span,
    request,
    serving,
    signing_key,
    span_id,
    span_ids,
    trust_root,
    verified,
)

from spanproof.exporter.otlp_server import Unavailable
from spanproof.exporter.receiver import Receiver
from spanproof.exporter.sealing import SealedBundle
from spanproof.exporter.sinks import DirectorySink
from spanproof.verifier.verify import link_segments

# Each test runs twice: sealing in the receiver's process, and in two seal workers
# (``sealing_processes``), except those that patch this process's sink, which the
# workers' own sinks do not see.
_PATCHES_THIS_PROCESS = {
    "test_bundles_sealed_in_one_pass_are_written_as_one_group",
    "test_a_failed_group_write_keeps_its_spans_journaled_and_is_retried",
}
_mode = {"sealing_processes": 0}


def pytest_generate_tests(metafunc):
    if "sealing_processes" in metafunc.fixturenames:
        modes = [0] if metafunc.function.__name__ in _PATCHES_THIS_PROCESS else [0, 2]
        ids = ["in-process", "seal-workers"][: len(modes)]
        metafunc.parametrize("sealing_processes", modes, ids=ids, indirect=True)


@pytest.fixture(autouse=True)
def sealing_processes(request, monkeypatch):
    if request.param:
        def sealed_here(self, job, sealed_at):
            raise AssertionError("sealed in the receiver's process, not in a seal worker")

        monkeypatch.setattr(Receiver, "_seal_here", sealed_here)
    _mode["sealing_processes"] = request.param
    yield request.param
    _mode["sealing_processes"] = 0


def make_receiver(out, clock, **kwargs):
    kwargs.setdefault("seal_grace", 2.0)
    kwargs.setdefault("idle_timeout", 30.0)
    kwargs.setdefault("sealing_processes", _mode["sealing_processes"])
    return Receiver(out, signing_key=signing_key(), clock=clock, **kwargs)


@pytest.fixture
def clock():
    return FakeClock()


def test_out_of_order_spans_across_requests_form_one_bundle(tmp_path, clock):
    receiver = make_receiver(tmp_path / "out", clock)
    with serving(receiver) as (server, _):
        endpoint = f"127.0.0.1:{server.port}"
        # Children first, one request each, then the (non-evidence) root, then a grandchild.
        for n in (4, 2, 3):
            export(endpoint, otlp_span(TRACE_A, n, parent=1))
        export(endpoint, otlp_span(TRACE_A, 1, evidence=False))
        clock.advance(1.5)
        export(endpoint, otlp_span(TRACE_A, 5, parent=2))  # restarts the quiet period
        clock.advance(1.5)
        assert receiver.flush()
        assert verified(str(tmp_path / "out"), trust_root(str(tmp_path))) == []
        clock.advance(1.0)
        assert receiver.flush()
        reports = verified(str(tmp_path / "out"), trust_root(str(tmp_path)))
    assert len(reports) == 1
    assert reports[0].statement.seal_reason == "root_ended"
    assert span_ids(reports[0]) == [span_id(n) for n in (4, 2, 3, 5)]  # arrival order


def seal_now(receiver, endpoint, clock, *spans):
    """Send *spans* in one request and seal them (past the grace period)."""
    export(endpoint, *spans)
    clock.advance(2.5)
    assert receiver.flush()


def test_late_span_starts_a_linked_continuation_segment(tmp_path, clock):
    receiver = make_receiver(tmp_path / "out", clock)
    with serving(receiver) as (server, _):
        endpoint = f"127.0.0.1:{server.port}"
        seal_now(receiver, endpoint, clock, otlp_span(TRACE_A, 1), otlp_span(TRACE_A, 2, parent=1))
        seal_now(receiver, endpoint, clock, otlp_span(TRACE_A, 3, parent=1))
        reports = verified(str(tmp_path / "out"), trust_root(str(tmp_path)))
    assert [span_ids(r) for r in reports] == [[span_id(1), span_id(2)], [span_id(3)]]
    first, second = (r.statement for r in reports)
    assert (second.segment_index, second.first_seq, second.start) == (1, 2, first.head)
    assert second.previous_statement == reports[0].statement_digest


def test_late_span_of_a_forgotten_trace_continues_its_chain_from_disk(tmp_path, clock):
    receiver = make_receiver(tmp_path / "out", clock, sealed_trace_memory=1)
    with serving(receiver) as (server, _):
        endpoint = f"127.0.0.1:{server.port}"
        for trace_id in (TRACE_A, TRACE_B):  # sealing B forgets A
            seal_now(receiver, endpoint, clock,
                     otlp_span(trace_id, 1), otlp_span(trace_id, 2, parent=1))
        seal_now(receiver, endpoint, clock, otlp_span(TRACE_A, 3, parent=1))
        reports = verified(str(tmp_path / "out"), trust_root(str(tmp_path)))
    a = [r for r in reports if r.statement.trace_id == TRACE_A]
    assert [(r.statement.segment_index, span_ids(r)) for r in a] == [
        (0, [span_id(1), span_id(2)]), (1, [span_id(3)])]
    assert a[1].statement.previous_statement == a[0].statement_digest
    assert all(link.ok for link in link_segments(reports))


def test_idle_timeout_and_size_limit(tmp_path, clock):
    receiver = make_receiver(tmp_path / "out", clock, max_records=3)
    with serving(receiver) as (server, _):
        endpoint = f"127.0.0.1:{server.port}"
        export(endpoint, *[otlp_span(TRACE_A, n, parent=99) for n in range(1, 8)])
        export(endpoint, otlp_span(TRACE_B, 1, parent=99))  # its root never arrives
        clock.advance(31)
        assert receiver.flush()
        reports = verified(str(tmp_path / "out"), trust_root(str(tmp_path)))
    by_trace = {}
    for r in reports:
        by_trace.setdefault(r.statement.trace_id, []).append(r)
    assert [len(r.records) for r in by_trace[TRACE_A]] == [3, 3, 1]
    assert [r.statement.seal_reason for r in by_trace[TRACE_A]][:2] == ["size_limit"] * 2
    assert [r.statement.seal_reason for r in by_trace[TRACE_B]] == ["idle_timeout"]


def test_shutdown_seals_everything_pending(tmp_path, clock):
    receiver = make_receiver(tmp_path / "out", clock)
    with serving(receiver) as (server, _):
        export(f"127.0.0.1:{server.port}", otlp_span(TRACE_A, 1, parent=9),
               otlp_span(TRACE_B, 1))
    reports = verified(str(tmp_path / "out"), trust_root(str(tmp_path)))
    assert {r.statement.trace_id for r in reports} == {TRACE_A, TRACE_B}
    assert {r.statement.seal_reason for r in reports} == {"shutdown"}
    assert journal_files(receiver.journal_dir) == []  # everything retired


def test_identical_redelivery_is_ignored_before_and_after_sealing(tmp_path, clock):
    receiver = make_receiver(tmp_path / "out", clock)
    with serving(receiver) as (server, _):
        endpoint = f"127.0.0.1:{server.port}"
        batch = [otlp_span(TRACE_A, 1), otlp_span(TRACE_A, 2, parent=1)]
        export(endpoint, *batch)
        export(endpoint, *batch)  # a Collector retry of the same batch
        clock.advance(2.5)
        assert receiver.flush()
        export(endpoint, *batch)  # retried again after the trace was sealed
        clock.advance(2.5)
        assert receiver.flush()
        reports = verified(str(tmp_path / "out"), trust_root(str(tmp_path)))
    assert [span_ids(r) for r in reports] == [[span_id(1), span_id(2)]]
    assert reports[0].statement.completeness.conflicts == ()


def _stopped_with_nothing_to_recover(receiver, tmp_path, clock):
    """Stop *receiver* and check that every journal entry was retired: a new start
    recovers nothing.  The verified bundles of ``tmp_path/out``."""
    assert receiver.shutdown()
    assert receiver._keys == {}
    assert journal_files(tmp_path / "out" / "journal") == []
    again = make_receiver(tmp_path / "out", clock)
    assert again.start() == []  # nothing left to recover
    again.shutdown()
    return verified(str(tmp_path / "out"), trust_root(str(tmp_path)), allow_incomplete=True)


def test_a_pending_span_the_memory_forgot_is_still_ignored_when_redelivered(tmp_path, clock):
    # Its trace waited (no root) while more spans than the memory holds arrived.
    # The retry was journaled again, joined no bundle, and its journal entry was
    # never retired: the next start certified the span a second time.
    receiver = make_receiver(tmp_path / "out", clock, dedup_memory=4)
    receiver.start()
    waiting = request(otlp_span(TRACE_A, 2, parent=1)).resource_spans
    receiver(waiting)
    for n in range(6):
        receiver(request(otlp_span(f"{n + 1:032x}", 1)).resource_spans)
    assert receiver._memory.versions(TRACE_A, span_id(2)) is None  # forgotten
    receiver(waiting)
    reports = _stopped_with_nothing_to_recover(receiver, tmp_path, clock)
    assert [span_ids(r) for r in reports if r.statement.trace_id == TRACE_A] == [[span_id(2)]]


def test_a_span_one_request_holds_twice_is_certified_once(tmp_path, clock):
    # The memory had forgotten the first copy by the second (more spans than it
    # holds in between), and neither was pending yet: both were journaled, the
    # second joined no bundle, its entry was never retired (the journal kept every
    # later file), and the next start certified the span a second time.
    receiver = make_receiver(tmp_path / "out", clock, dedup_memory=2)
    receiver.start()
    twice = otlp_span(TRACE_A, 2, parent=1)
    receiver(request(twice, otlp_span(TRACE_A, 3, parent=1), otlp_span(TRACE_A, 4, parent=1),
                     twice).resource_spans)
    reports = _stopped_with_nothing_to_recover(receiver, tmp_path, clock)
    assert [span_ids(r) for r in reports] == [[span_id(2), span_id(3), span_id(4)]]


def test_a_pending_version_redelivered_after_the_memory_kept_only_another_is_ignored(
        tmp_path, clock):
    # Two versions of one span id are pending; the memory, full, kept only the
    # second.  The first one's retry looked like a conflict, skipped the check for a
    # pending copy, was journaled again and joined no bundle: its entry was never
    # retired, and the next start certified the span a second time ("recovered").
    receiver = make_receiver(tmp_path / "out", clock, dedup_memory=1)
    receiver.start()
    first = request(otlp_span(TRACE_A, 2, parent=1, extra={"v": "1"})).resource_spans
    receiver(first)
    receiver(request(otlp_span(TRACE_A, 2, parent=1, extra={"v": "2"})).resource_spans)
    versions = receiver._memory.versions(TRACE_A, span_id(2))
    assert versions is not None and len(versions) == 1  # the first one forgotten
    receiver(first)
    reports = _stopped_with_nothing_to_recover(receiver, tmp_path, clock)
    assert [span_ids(r) for r in reports] == [[span_id(2), span_id(2)]]


def test_a_redelivered_rejected_span_is_declared_once(tmp_path, clock):
    receiver = make_receiver(tmp_path / "out", clock)
    bad = otlp_span(TRACE_A, 2, parent=1)
    bad.span_id = b"\x01\x02\x03"  # not 8 bytes: rejected
    other_bad = otlp_span(TRACE_A, 3, parent=1)
    other_bad.span_id = b"\x01\x02\x04"
    receiver.start()
    try:
        batch = request(otlp_span(TRACE_A, 1), bad).resource_spans
        for _ in range(3):  # the Collector re-sends a batch after a lost answer
            assert receiver(batch).rejected == 1  # each answer reports it
        later = request(otlp_span(TRACE_A, 4, parent=1), other_bad).resource_spans
        assert receiver(later).rejected == 1
        clock.advance(2.5)
        assert receiver.flush()
    finally:
        receiver.shutdown(5)
    (report,) = verified(str(tmp_path / "out"), trust_root(str(tmp_path)),
                         allow_incomplete=True)
    assert span_ids(report) == [span_id(1), span_id(4)]
    assert report.statement.completeness.rejected_spans == 2  # bad once, other_bad once


def test_a_rejected_span_twice_in_one_request_is_declared_once(tmp_path, clock):
    # A sender's retry batched with its first delivery: the accepted span twice in
    # the request was certified once, the rejected one declared twice.
    receiver = make_receiver(tmp_path / "out", clock)
    bad = otlp_span(TRACE_A, 2, parent=1)
    bad.span_id = b"\x01\x02\x03"  # not 8 bytes: rejected
    good = otlp_span(TRACE_A, 3, parent=1)
    receiver.start()
    try:
        batch = request(otlp_span(TRACE_A, 1), bad, good, bad, good).resource_spans
        assert receiver(batch).rejected == 2  # the answer counts the request's spans
        clock.advance(2.5)
        assert receiver.flush()
    finally:
        receiver.shutdown(5)
    (report,) = verified(str(tmp_path / "out"), trust_root(str(tmp_path)),
                         allow_incomplete=True)
    assert span_ids(report) == [span_id(1), span_id(3)]
    assert report.statement.completeness.rejected_spans == 1


def test_different_content_under_a_seen_span_id_is_kept_as_a_conflict(tmp_path, clock):
    receiver = make_receiver(tmp_path / "out", clock)
    with serving(receiver) as (server, _):
        endpoint = f"127.0.0.1:{server.port}"
        export(endpoint, otlp_span(TRACE_A, 1), otlp_span(TRACE_A, 2, parent=1))
        export(endpoint, otlp_span(TRACE_A, 2, parent=1, extra={"v": "changed"}))
        clock.advance(2.5)
        assert receiver.flush()
        # And against a version already sealed: listed in the continuation segment.
        export(endpoint, otlp_span(TRACE_A, 1, extra={"v": "again"}))
        clock.advance(2.5)
        assert receiver.flush()
        reports = verified(str(tmp_path / "out"), trust_root(str(tmp_path)))
    assert [span_ids(r) for r in reports] == [
        [span_id(1), span_id(2), span_id(2)], [span_id(1)]]
    assert reports[0].statement.completeness.conflicts == (span_id(2),)
    assert reports[1].statement.completeness.conflicts == (span_id(1),)
    versions = [r["span"]["attributes"].get("v") for r in reports[0].records]
    assert versions == [None, None, {"stringValue": "changed"}]


def test_malformed_spans_partial_success_and_invalid_argument(tmp_path, clock):
    receiver = make_receiver(tmp_path / "out", clock)
    with serving(receiver, http=True) as (server, http_server):
        endpoint = f"127.0.0.1:{server.port}"
        bad = otlp_span(TRACE_A, 2, parent=1)
        bad.kind = 42  # unknown span kind
        response = export(endpoint, otlp_span(TRACE_A, 1), bad)
        assert response.partial_success.rejected_spans == 1
        # The span is named once, then where in it the defect is.
        assert response.partial_success.error_message == (
            f"1 evidence span(s) rejected: span {span_id(2)}: span.kind: unknown span kind 42")

        with pytest.raises(grpc.RpcError) as err:
            export(endpoint, bad)
        assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert "unknown span kind" in err.value.details()

        url = f"http://127.0.0.1:{http_server.port}/v1/traces"
        body = request(bad).SerializeToString()
        req = urllib.request.Request(url, data=body, method="POST",
                                     headers={"Content-Type": "application/x-protobuf"})
        with pytest.raises(urllib.error.HTTPError) as http_err:
            urllib.request.urlopen(req, timeout=10)
        assert http_err.value.code == 400
        garbage = urllib.request.Request(url, data=b"{not json", method="POST",
                                         headers={"Content-Type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as json_err:
            urllib.request.urlopen(garbage, timeout=10)
        assert json_err.value.code == 400
        assert "not JSON" in json.loads(json_err.value.read())["message"]
    reports = verified(str(tmp_path / "out"), trust_root(str(tmp_path)), allow_incomplete=True)
    assert [span_ids(r) for r in reports] == [[span_id(1)]]
    # The rejected evidence span is declared, never silently lost (SPEC §5.3), and
    # once: the three requests delivered the same span.
    assert reports[0].statement.completeness.rejected_spans == 1


_SNAKE_CASE = {"traceId": "trace_id", "spanId": "span_id", "parentSpanId": "parent_span_id"}


def otlp_json(*spans, snake_case=False):
    """*spans* as one OTLP/JSON request, ids in hex, their names spelled as protobuf's
    JSON mapping writes them or, with *snake_case*, as the proto fields are named."""
    from google.protobuf import json_format

    doc = json_format.MessageToDict(request(*spans))
    for span in doc["resourceSpans"][0]["scopeSpans"][0]["spans"]:
        for obj in (span, *span.get("links", ())):
            for key, original in _SNAKE_CASE.items():
                if key in obj:
                    hex_id = base64.b64decode(obj.pop(key)).hex()
                    obj[original if snake_case else key] = hex_id
    return doc


def post_json(tmp_path, clock, doc):
    """POST *doc* to a receiver as OTLP/JSON: the answer, and the bundles of spans."""
    receiver = make_receiver(tmp_path / "out", clock)
    with serving(receiver, http=True) as (_, http_server):
        assert http_server is not None
        req = urllib.request.Request(
            f"http://127.0.0.1:{http_server.port}/v1/traces", data=json.dumps(doc).encode(),
            method="POST", headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as response:
            assert response.status == 200
            answer = json.loads(response.read())
    reports = verified(str(tmp_path / "out"), trust_root(str(tmp_path)), allow_incomplete=True)
    return answer, [r for r in reports if r.records]


@pytest.mark.parametrize(("field", "bad"), [
    ("spanId", "00f067aa0ba902bz"), ("parentSpanId", "00f067aa0ba902bz"),
    ("traceId", "00f067aa0ba902bz"),
    # bytes.fromhex skips spaces: this id was certified as 00f067aa0ba902b7.
    ("spanId", "00f067aa 0ba902b7"), ("spanId", " 00f067aa0ba902b7"),
])
def test_otlp_json_span_with_an_id_that_is_not_hex_is_rejected_alone(
    tmp_path, clock, field, bad
):
    # As a wrong-length id in protobuf: partial success, the other spans certified.
    # The whole batch was answered 400, and the Collector dropped it.
    doc = otlp_json(otlp_span(TRACE_A, 1), otlp_span(TRACE_B, 2, parent=1))
    doc["resourceSpans"][0]["scopeSpans"][0]["spans"][1][field] = bad
    answer, reports = post_json(tmp_path, clock, doc)
    partial = answer["partialSuccess"]
    assert partial["rejectedSpans"] == "1"
    assert "must be" in partial["errorMessage"]
    certified = [(r.statement.trace_id, span_ids(r)) for r in reports]
    assert certified == [(TRACE_A, [span_id(1)])]


def test_snake_case_span_ids_are_read_as_hex_like_the_collector(tmp_path, clock):
    # protobuf's JSON parser takes trace_id as well as traceId, and the Collector's
    # reads both as hex; trace_id was read as base64, 32 hex digits as 24 bytes, so
    # every span so written was rejected.
    doc = otlp_json(otlp_span(TRACE_A, 1), otlp_span(TRACE_A, 2, parent=1), snake_case=True)
    assert "trace_id" in doc["resourceSpans"][0]["scopeSpans"][0]["spans"][1]
    answer, reports = post_json(tmp_path, clock, doc)
    assert "partialSuccess" not in answer
    (report,) = reports
    assert (report.statement.trace_id, span_ids(report)) == (TRACE_A, [span_id(1), span_id(2)])
    assert report.records[1]["span"]["parentSpanId"] == span_id(1)


def test_snake_case_link_ids_are_read_as_hex_not_left_out(tmp_path, clock):
    # A link's trace_id of 24 bytes and span_id of 12 made an invalid context: the
    # link was left out and counted as dropped, its span certified without it.
    span = otlp_span(TRACE_A, 1)
    span.links.add(trace_id=bytes.fromhex(TRACE_B), span_id=bytes.fromhex(span_id(9)))
    doc = otlp_json(span)
    link = doc["resourceSpans"][0]["scopeSpans"][0]["spans"][0]["links"][0]
    link["trace_id"], link["span_id"] = link.pop("traceId"), link.pop("spanId")
    _, reports = post_json(tmp_path, clock, doc)
    (record,) = reports[0].records
    assert [(ln["traceId"], ln["spanId"]) for ln in record["span"]["links"]] == [
        (TRACE_B, span_id(9))]
    assert record["span"]["droppedLinksCount"] == "0"


@pytest.mark.parametrize(("field", "bad"), [
    # As base64, 22 hex digits are 16 bytes: certified under a trace id no one sent.
    ("trace_id", TRACE_B[:22]),
    # Base64 is not hex, under this spelling either: certified as the base64 said.
    ("trace_id", base64.b64encode(bytes.fromhex(TRACE_B)).decode()),
    # As base64, 11 hex digits are 8 bytes.
    ("span_id", "00f067aa0ba"), ("parent_span_id", "00f067aa0ba"),
])
def test_snake_case_id_that_is_not_a_hex_id_is_rejected_alone_not_read_as_base64(
    tmp_path, clock, field, bad
):
    doc = otlp_json(otlp_span(TRACE_A, 1), otlp_span(TRACE_B, 2, parent=1))
    span = doc["resourceSpans"][0]["scopeSpans"][0]["spans"][1]
    del span[{snake: camel for camel, snake in _SNAKE_CASE.items()}[field]]
    span[field] = bad
    answer, reports = post_json(tmp_path, clock, doc)
    partial = answer["partialSuccess"]
    assert partial["rejectedSpans"] == "1"
    assert "must be" in partial["errorMessage"]
    certified = [(r.statement.trace_id, span_ids(r)) for r in reports]
    assert certified == [(TRACE_A, [span_id(1)])]


def test_non_evidence_spans_are_not_certified(tmp_path, clock):
    receiver = make_receiver(tmp_path / "out", clock)
    with serving(receiver) as (server, _):
        export(f"127.0.0.1:{server.port}", otlp_span(TRACE_A, 1, evidence=False),
               otlp_span(TRACE_A, 2, parent=1), otlp_span(TRACE_B, 1, evidence=False))
    reports = verified(str(tmp_path / "out"), trust_root(str(tmp_path)))
    assert [span_ids(r) for r in reports] == [[span_id(2)]]


class FailingSink(DirectorySink):
    def __init__(self, directory):
        super().__init__(directory)
        self.failing = True

    def write(self, bundle: SealedBundle) -> str:
        if self.failing:
            raise OSError(28, "No space left on device")
        return super().write(bundle)


def test_storage_failure_answers_unavailable_and_recovers(tmp_path, clock):
    sink = FailingSink(tmp_path / "out")
    receiver = make_receiver(tmp_path / "out", clock, sink=sink)
    with serving(receiver) as (server, _):
        endpoint = f"127.0.0.1:{server.port}"
        export(endpoint, otlp_span(TRACE_A, 1))
        clock.advance(2.5)
        assert not receiver.flush()
        with pytest.raises(grpc.RpcError) as err:
            export(endpoint, otlp_span(TRACE_B, 1))
        assert err.value.code() is grpc.StatusCode.UNAVAILABLE
        assert "No space left" in err.value.details()
        sink.failing = False
        assert receiver.flush()
        export(endpoint, otlp_span(TRACE_B, 1))  # accepted again
    reports = verified(str(tmp_path / "out"), trust_root(str(tmp_path)))
    assert {r.statement.trace_id for r in reports} == {TRACE_A, TRACE_B}


def _healthz(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_requests_before_start_and_after_shutdown_are_unavailable(tmp_path, clock):
    receiver = make_receiver(tmp_path / "out", clock)
    spans = request(otlp_span(TRACE_A, 1)).resource_spans
    with pytest.raises(Unavailable, match="receiver is not running") as before:
        receiver(spans)
    assert before.value.retry_after == 1.0
    receiver.start()
    receiver(spans)
    receiver.shutdown()
    with pytest.raises(Unavailable, match="receiver is not running"):
        receiver(spans)
    assert [span_ids(r) for r in verified(str(tmp_path / "out"), trust_root(str(tmp_path)))] \
        == [[span_id(1)]]


def test_health_checks_say_not_serving_while_storage_fails(tmp_path, clock):
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from spanproof.exporter._cli import _transports

    sink = FailingSink(tmp_path / "out")
    receiver = make_receiver(tmp_path / "out", clock, sink=sink)
    assert receiver.not_serving() == "receiver is not running"
    receiver.start()
    # The servers `spanproof receiver` runs, wired to the receiver as it wires them.
    grpc_server, http_server = _transports(receiver, "127.0.0.1:0", "127.0.0.1:0", 1 << 20)
    grpc_server.start()
    http_server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{grpc_server.port}")
    healthz = f"http://127.0.0.1:{http_server.port}/healthz"

    def grpc_status() -> int:
        check = health_pb2_grpc.HealthStub(channel).Check
        return int(check(health_pb2.HealthCheckRequest(), timeout=5).status)

    try:
        assert receiver.not_serving() is None
        assert grpc_status() == health_pb2.HealthCheckResponse.SERVING
        assert _healthz(healthz) == (200, b"SERVING\n")
        export(f"127.0.0.1:{grpc_server.port}", otlp_span(TRACE_A, 1))
        clock.advance(2.5)
        assert not receiver.flush()
        reason = receiver.not_serving()
        assert reason == "storage is failing: cannot write bundles: " \
            "[Errno 28] No space left on device"
        assert grpc_status() == health_pb2.HealthCheckResponse.NOT_SERVING
        assert _healthz(healthz) == (503, f"NOT_SERVING: {reason}\n".encode())
        with pytest.raises(Unavailable) as refused:
            receiver.check_accepting()  # what the transports ask before decoding
        assert (str(refused.value), refused.value.retry_after) == (reason, 5.0)
        sink.failing = False
        assert receiver.flush()
        assert receiver.not_serving() is None
        receiver.check_accepting()
        assert grpc_status() == health_pb2.HealthCheckResponse.SERVING
        assert _healthz(healthz) == (200, b"SERVING\n")
    finally:
        channel.close()
        grpc_server.stop(1.0)
        http_server.stop()
        receiver.shutdown()
    assert receiver.not_serving() == "receiver is not running"


def _grpc_health(endpoint: str) -> int:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(endpoint) as channel:
        check = health_pb2_grpc.HealthStub(channel).Check
        return int(check(health_pb2.HealthCheckRequest(), timeout=5).status)


def test_spanproof_receiver_listens_while_it_recovers_and_refuses_until_done(
    tmp_path, clock, monkeypatch
):
    # Recovering a large journal takes seconds (~9 s for 200,000 journaled spans).
    # Listening only afterwards, the receiver refused connections meanwhile, which a
    # liveness probe counts as failures; now it answers, NOT_SERVING / UNAVAILABLE.
    from grpc_health.v1 import health_pb2

    from spanproof.exporter import _cli

    recovering, finish = threading.Event(), threading.Event()
    real_recover = Receiver._recover

    def slow_recover(self):
        recovering.set()
        assert finish.wait(60)
        return real_recover(self)

    monkeypatch.setattr(Receiver, "_recover", slow_recover)
    from spanproof.exporter import otlp_server

    decoded: list[bytes] = []
    real_parse = otlp_server.parse_otlp_protobuf
    monkeypatch.setattr(otlp_server, "parse_otlp_protobuf",
                        lambda data: decoded.append(data) or real_parse(data))
    receiver = make_receiver(tmp_path / "out", clock)
    servers = _cli._transports(receiver, "127.0.0.1:0", "127.0.0.1:0",
                               otlp_server.DEFAULT_MAX_MESSAGE_BYTES)
    stop = threading.Event()
    exits: list[int] = []
    serve = threading.Thread(target=lambda: exits.append(_cli._serve_receiver(
        receiver, servers, stop, {})))
    serve.start()
    try:
        assert recovering.wait(30)
        grpc_server, http_server = servers
        endpoint = f"127.0.0.1:{grpc_server.port}"
        healthz = f"http://127.0.0.1:{http_server.port}/healthz"
        reason = "receiver is starting: sealing the spans of an earlier receiver's journal"
        assert receiver.not_serving() == reason
        assert _grpc_health(endpoint) == health_pb2.HealthCheckResponse.NOT_SERVING
        assert _healthz(healthz) == (503, f"NOT_SERVING: {reason}\n".encode())
        with pytest.raises(grpc.RpcError) as err:
            export(endpoint, otlp_span(TRACE_A, 1))
        assert err.value.code() is grpc.StatusCode.UNAVAILABLE
        assert err.value.details() == reason
        posted = urllib.request.Request(
            f"http://127.0.0.1:{http_server.port}/v1/traces", method="POST",
            data=request(otlp_span(TRACE_A, 1)).SerializeToString(),
            headers={"Content-Type": "application/x-protobuf"})
        with pytest.raises(urllib.error.HTTPError) as answer:
            urllib.request.urlopen(posted, timeout=10)
        assert (answer.value.code, answer.value.headers["Retry-After"]) == (503, "1")
        assert decoded == []  # refused before the requests were decoded
        with pytest.raises(Unavailable, match="earlier receiver's journal") as refused:
            receiver(request(otlp_span(TRACE_A, 1)).resource_spans)
        assert refused.value.retry_after == 1.0
        finish.set()
        wait_for(lambda: receiver.not_serving() is None, what="the receiver to be ready")
        assert _grpc_health(endpoint) == health_pb2.HealthCheckResponse.SERVING
        assert _healthz(healthz) == (200, b"SERVING\n")
        export(endpoint, otlp_span(TRACE_A, 1))
        assert len(decoded) == 1
    finally:
        finish.set()
        stop.set()
        serve.join(60)
    assert exits == [0]
    assert [span_ids(r) for r in verified(str(tmp_path / "out"), trust_root(str(tmp_path)))] \
        == [[span_id(1)]]


def test_the_receiver_command_stops_its_two_servers_at_once(tmp_path, clock, monkeypatch):
    # It stopped the gRPC server, then the HTTP server, each waiting its own grace for
    # the requests in flight: a SIGTERM took both graces before sealing began.
    from spanproof.exporter import _cli, otlp_server

    receiver = make_receiver(tmp_path / "out", clock)
    servers = _cli._transports(receiver, "127.0.0.1:0", "127.0.0.1:0",
                               otlp_server.DEFAULT_MAX_MESSAGE_BYTES)
    began = [threading.Event() for _ in servers]
    overlapped = []
    for server, mine in zip(servers, began, strict=True):
        def stop(grace=None, real_stop=server.stop, mine=mine):
            mine.set()
            # While this one waits for its requests, the other has begun too.
            overlapped.append(all(other.wait(5) for other in began))
            real_stop() if grace is None else real_stop(grace)

        monkeypatch.setattr(server, "stop", stop)
    stop = threading.Event()
    stop.set()  # SIGTERM came at once
    assert _cli._serve_receiver(receiver, servers, stop, {}) == 0
    assert overlapped == [True, True]


def test_a_receiver_that_failed_to_start_says_why(tmp_path, clock, monkeypatch):
    def failing_recover(self):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Receiver, "_recover", failing_recover)
    receiver = make_receiver(tmp_path / "out", clock)
    with pytest.raises(PermissionError):
        receiver.start()
    reason = "receiver failed to start: [Errno 13] Permission denied"
    assert receiver.not_serving() == reason
    with pytest.raises(Unavailable) as refused:
        receiver(request(otlp_span(TRACE_A, 1)).resource_spans)
    assert str(refused.value) == reason
    receiver.shutdown()
    assert receiver.not_serving() == "receiver is not running"


def test_a_failed_journal_retire_is_retried_and_requests_are_accepted_again(
    tmp_path, clock, monkeypatch
):
    # Writing that a bundle's spans are sealed failed once: with seal workers the
    # receiver answered UNAVAILABLE from then on (nothing retried the entries), in
    # one process it went on as if they were written.
    from spanproof.exporter.journal import Journal

    real_write = Journal._write
    disk = {"failing": True}

    def write(self, data):
        if disk["failing"] and b'{"t":"sealed"' in data[:32]:
            raise OSError(5, "Input/output error")
        return real_write(self, data)

    monkeypatch.setattr(Journal, "_write", write)
    receiver = make_receiver(tmp_path / "out", clock)
    with serving(receiver) as (server, _):
        endpoint = f"127.0.0.1:{server.port}"
        export(endpoint, otlp_span(TRACE_A, 1))
        clock.advance(2.5)
        assert receiver.flush()  # written; its journal entries not retired
        assert len(verified(str(tmp_path / "out"), trust_root(str(tmp_path)))) == 1
        with pytest.raises(grpc.RpcError) as err:
            export(endpoint, otlp_span(TRACE_B, 1))
        assert err.value.code() is grpc.StatusCode.UNAVAILABLE
        assert "Input/output error" in err.value.details()
        disk["failing"] = False
        assert receiver.flush()
        export(endpoint, otlp_span(TRACE_B, 1))  # accepted again
    reports = verified(str(tmp_path / "out"), trust_root(str(tmp_path)))
    assert [(r.statement.trace_id, span_ids(r)) for r in reports] == [
        (TRACE_A, [span_id(1)]), (TRACE_B, [span_id(1)])]
    assert journal_files(receiver.journal_dir) == []  # every entry retired


def test_overload_answers_unavailable(tmp_path, clock):
    receiver = make_receiver(tmp_path / "out", clock, max_backlog_spans=2)
    with serving(receiver) as (server, _):
        endpoint = f"127.0.0.1:{server.port}"
        export(endpoint, otlp_span(TRACE_A, 1, parent=9), otlp_span(TRACE_A, 2, parent=9))
        with pytest.raises(grpc.RpcError) as err:
            export(endpoint, otlp_span(TRACE_A, 3, parent=9))
        assert err.value.code() is grpc.StatusCode.UNAVAILABLE
        assert "overloaded" in err.value.details()
    reports = verified(str(tmp_path / "out"), trust_root(str(tmp_path)))
    assert [span_ids(r) for r in reports] == [[span_id(1), span_id(2)]]


def test_retry_after_overload_is_not_a_conflict(tmp_path, clock):
    # A delivery answered UNAVAILABLE was not acknowledged: the Collector's unchanged
    # retry is the span's first version, not a second one (it was sealed listing the
    # span as a conflict with itself).
    receiver = make_receiver(tmp_path / "out", clock, max_pending_traces=1)
    with serving(receiver) as (server, _):
        endpoint = f"127.0.0.1:{server.port}"
        export(endpoint, otlp_span(TRACE_A, 1, parent=9))
        with pytest.raises(grpc.RpcError) as err:
            export(endpoint, otlp_span(TRACE_B, 1))
        assert err.value.code() is grpc.StatusCode.UNAVAILABLE
        assert "overloaded" in err.value.details()
        clock.advance(31)
        assert receiver.flush()
        export(endpoint, otlp_span(TRACE_B, 1))  # the Collector's retry
    reports = verified(str(tmp_path / "out"), trust_root(str(tmp_path)))
    assert [(r.statement.trace_id, span_ids(r)) for r in reports] == [
        (TRACE_A, [span_id(1)]), (TRACE_B, [span_id(1)])]
    assert [r.statement.completeness.conflicts for r in reports] == [(), ()]


def test_retry_after_a_failed_journal_write_is_not_a_conflict(tmp_path, clock, monkeypatch):
    from spanproof.exporter.journal import Journal

    real_append = Journal.append_spans
    failures = [OSError(28, "No space left on device")]

    def append_spans(self, items, **kwargs):
        if failures:
            raise failures.pop()
        return real_append(self, items, **kwargs)

    monkeypatch.setattr(Journal, "append_spans", append_spans)
    receiver = make_receiver(tmp_path / "out", clock)
    with serving(receiver) as (server, _):
        endpoint = f"127.0.0.1:{server.port}"
        batch = [otlp_span(TRACE_A, 1), otlp_span(TRACE_A, 2, parent=1)]
        with pytest.raises(grpc.RpcError) as err:
            export(endpoint, *batch)
        assert err.value.code() is grpc.StatusCode.UNAVAILABLE
        assert "journal write failed" in err.value.details()
        export(endpoint, *batch)  # the Collector's retry
    (report,) = verified(str(tmp_path / "out"), trust_root(str(tmp_path)))
    assert span_ids(report) == [span_id(1), span_id(2)]
    assert report.statement.completeness.conflicts == ()


def test_a_journal_that_cannot_take_spans_makes_the_health_checks_not_serving(
    tmp_path, clock, monkeypatch
):
    # A full disk refused every request ("journal write failed") while the health
    # checks said SERVING, so a readiness probe kept sending the Collector's
    # traffic to a receiver that could take none of it.
    from spanproof.exporter import receiver as receiver_module
    from spanproof.exporter.journal import Journal

    real_append = Journal.append_spans
    disk = {"full": True}

    def append_spans(self, items, **kwargs):
        if disk["full"]:
            raise OSError(28, "No space left on device")
        return real_append(self, items, **kwargs)

    monkeypatch.setattr(Journal, "append_spans", append_spans)
    receiver = make_receiver(tmp_path / "out", clock)
    receiver.start()
    try:
        assert receiver.not_serving() is None
        with pytest.raises(Unavailable, match="journal write failed"):
            receiver(request(otlp_span(TRACE_A, 1)).resource_spans)
        assert receiver.not_serving() == (
            "storage is failing: journal write failed: [Errno 28] No space left on device")
        receiver.check_accepting()  # a retry still tries the journal
        # Without a request to try it, the failure counts for the storage retry delay.
        monkeypatch.setattr(receiver_module, "_STORAGE_RETRY_AFTER", 0.0)
        assert receiver.not_serving() is None
        monkeypatch.setattr(receiver_module, "_STORAGE_RETRY_AFTER", 5.0)
        with pytest.raises(Unavailable, match="journal write failed"):
            receiver(request(otlp_span(TRACE_A, 1)).resource_spans)
        assert receiver.not_serving() is not None
        disk["full"] = False
        receiver(request(otlp_span(TRACE_A, 1)).resource_spans)  # the Collector's retry
        assert receiver.not_serving() is None
    finally:
        assert receiver.shutdown()


def test_requests_with_a_malformed_resource_do_not_use_up_their_connections_streams(
    tmp_path, clock
):
    # The malformed resource's exception, shared by its spans and raised again for
    # each, formed a reference cycle with the frames of the call, which kept the gRPC
    # call and its HTTP/2 stream until a garbage collection (rare in spanproof
    # receiver): after the stream limit's worth of such requests, the connection
    # refused every call.
    import gc

    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc
    from opentelemetry.proto.common.v1 import common_pb2

    from spanproof.exporter.otlp_server import GRPC_CALLS_AT_ONCE

    receiver = make_receiver(tmp_path / "out", clock)
    with serving(receiver) as (server, _):
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = trace_service_pb2_grpc.TraceServiceStub(channel)
            gc.disable()
            try:
                for n in range(GRPC_CALLS_AT_ONCE + 4):
                    bad = request(otlp_span(TRACE_A, n + 1), otlp_span(TRACE_A, n + 100))
                    bad.resource_spans[0].resource.attributes.append(common_pb2.KeyValue(
                        key="service.name", value=common_pb2.AnyValue(string_value="again")))
                    with pytest.raises(grpc.RpcError) as err:
                        stub.Export(bad, timeout=10)
                    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
                    assert "duplicate" in err.value.details()
                stub.Export(request(otlp_span(TRACE_B, 1)), timeout=10)  # a stream is free
            finally:
                gc.enable()


def test_span_memory_forgets_a_removed_span_entirely() -> None:
    from spanproof.exporter.receiver import _SpanMemory

    memory = _SpanMemory(capacity=2)
    memory.add(TRACE_A, span_id(1), b"first")
    memory.add(TRACE_A, span_id(1), b"second")
    memory.remove(TRACE_A, span_id(1), b"second")
    assert list(memory.versions(TRACE_A, span_id(1)) or ()) == [b"first"]
    memory.remove(TRACE_A, span_id(1), b"first")
    memory.remove(TRACE_A, span_id(1), b"first")  # no longer remembered: nothing to do
    assert memory.versions(TRACE_A, span_id(1)) is None
    # Nothing is counted for the removed fingerprints: two spans fit again, and a
    # third evicts the oldest trace.
    memory.add(TRACE_A, span_id(2), b"a")
    memory.add(TRACE_B, span_id(3), b"b")
    assert list(memory.versions(TRACE_A, span_id(2)) or ()) == [b"a"]
    memory.add(TRACE_B, span_id(4), b"c")
    assert memory.versions(TRACE_A, span_id(2)) is None
    assert list(memory.versions(TRACE_B, span_id(3)) or ()) == [b"b"]


def test_span_memory_holds_its_capacity_when_one_trace_fills_it() -> None:
    # Only other traces were evicted: one sender's trace grew without bound.
    from spanproof.exporter.receiver import _SpanMemory

    memory = _SpanMemory(capacity=3)
    for n in range(1, 6):
        memory.add(TRACE_A, span_id(n), b"x")
    assert [memory.versions(TRACE_A, span_id(n)) is not None for n in range(1, 6)] == [
        False, False, True, True, True]
    for version in (b"1", b"2", b"3", b"4"):  # versions of one span id
        memory.add(TRACE_A, span_id(9), version)
    assert memory._size == 3 and sum(map(len, memory._traces[TRACE_A].values())) == 3


@pytest.mark.timeout(60)
def test_many_versions_of_one_span_id_are_remembered_by_hash() -> None:
    # Each version was compared with every pending and remembered one: 10,000
    # versions of one span id took ~5 s in the assembler and ~30 s per 100,000 in
    # the memory, the ingest lock held throughout.
    from spanproof.exporter.receiver import _SpanMemory

    memory = _SpanMemory(capacity=400_000)
    for n in range(200_000):
        fingerprint = n.to_bytes(8, "big")  # looked up first, as each request does
        assert fingerprint not in (memory.versions(TRACE_A, span_id(1)) or ())
        memory.add(TRACE_A, span_id(1), fingerprint)
    assert memory.versions(TRACE_A, span_id(1)) is not None
    assert (199_999).to_bytes(8, "big") in (memory.versions(TRACE_A, span_id(1)) or ())


def test_redacted_attributes_are_committed_and_disclosable(tmp_path, clock):
    from spanproof.verifier.disclosure import check_disclosures, load_disclosures

    secret = "account 4711-0815, balance 12.34"
    receiver = make_receiver(tmp_path / "out", clock, redact_attributes=["customer.*"])
    with serving(receiver) as (server, _):
        export(f"127.0.0.1:{server.port}",
               otlp_span(TRACE_A, 1, extra={"customer.account": secret}))
    (report,) = verified(str(tmp_path / "out"), trust_root(str(tmp_path)))
    bundle = report.source
    assert secret.encode() not in open(bundle, "rb").read()
    sidecar = bundle.removesuffix(".spanproof.json") + ".disclosures.json"
    assert os.stat(sidecar).st_mode & 0o777 == 0o600
    (result,) = check_disclosures(load_disclosures(sidecar).disclosures, [report])
    assert result.ok and result.key == "customer.account", result.message


def test_span_fingerprint_data_is_the_key_sorted_json_of_the_body() -> None:
    # The journal stores this JSON and recovery re-reads it; the dedup memory keys
    # on its digest.  orjson must write exactly what the standard encoder writes.
    import hashlib
    import json as std_json

    from spanproof.exporter.receiver import _serialized

    text_values = ["".join(chr(c) for c in range(0x80)), "\u2028\u2029\u00e9\uffff",
                   "\U0001f600 \U0010ffff", "", 'quote " and \\ backslash']
    body = {
        "span": {"name": text_values[0], "z": [], "a": {"b": True, "a": False},
                 "attributes": {v or "empty": {"stringValue": v} for v in text_values}},
        "resource": {"attributes": {"\U0001f600": {"arrayValue": [{"boolValue": True}, {}]}},
                     "\ue000": {"kvlistValue": {"k": {"stringValue": "v"}}}},
    }
    data, fingerprint = _serialized(body)
    expected = std_json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert data == expected.encode()
    assert fingerprint == hashlib.sha256(expected.encode()).digest()
    assert std_json.loads(data) == body


def test_bundles_sealed_in_one_pass_are_written_as_one_group(tmp_path, clock, monkeypatch):
    from spanproof.exporter import sinks as sinks_module

    barriers = []

    def fake_syncfs(fd):
        barriers.append(fd)
        os.fsync(fd)

    monkeypatch.setattr(sinks_module, "_SYNCFS", fake_syncfs)
    traces = [f"{n + 1:032x}" for n in range(8)]
    receiver = make_receiver(tmp_path / "out", clock)
    receiver.start()
    receiver(request(*(otlp_span(t, 1) for t in traces)).resource_spans)
    clock.advance(2.5)
    assert receiver.flush()
    reports = verified(str(tmp_path / "out"), trust_root(str(tmp_path)))
    assert sorted(r.statement.trace_id for r in reports) == traces
    assert len(barriers) == 1  # one durability barrier for the eight bundles
    assert receiver.shutdown()
    assert journal_files(receiver.journal_dir) == []


def test_a_failed_group_write_keeps_its_spans_journaled_and_is_retried(
    tmp_path, clock, monkeypatch
):
    # The default sink's group path: a failing disk answers UNAVAILABLE, keeps the
    # spans in the journal, and the same bundles are written once the disk recovers.
    real_write_many = DirectorySink.write_many
    disk = {"full": True}

    def write_many(self, group):
        if disk["full"]:
            return [OSError(28, "No space left on device")] * len(group)
        return real_write_many(self, group)

    monkeypatch.setattr(DirectorySink, "write_many", write_many)
    receiver = make_receiver(tmp_path / "out", clock)
    receiver.start()
    receiver(request(otlp_span(TRACE_A, 1), otlp_span(TRACE_B, 1)).resource_spans)
    clock.advance(2.5)
    assert not receiver.flush()
    with pytest.raises(Unavailable, match="No space left"):
        receiver(request(otlp_span(TRACE_A, 2, parent=1)).resource_spans)
    assert journal_files(receiver.journal_dir) != []
    disk["full"] = False
    assert receiver.flush()
    reports = verified(str(tmp_path / "out"), trust_root(str(tmp_path)))
    assert sorted(r.statement.trace_id for r in reports) == sorted([TRACE_A, TRACE_B])
    assert receiver.shutdown()
    assert journal_files(receiver.journal_dir) == []


# -- large requests: admitted in chunks of whole traces -----------------------------

TRACES = [f"{n:032x}" for n in range(1, 5)]


def interleaved_request():
    """Four 3-span traces, their spans interleaved (a Collector's batch)."""
    return request(*(otlp_span(trace, n, parent=None if n == 1 else 1)
                     for n in (2, 1, 3) for trace in TRACES))


def test_a_large_request_is_admitted_in_chunks_of_whole_traces(tmp_path, clock, monkeypatch):
    from spanproof.exporter import receiver as receiver_module
    from spanproof.exporter.journal import Journal

    monkeypatch.setattr(receiver_module, "_ADMIT_CHUNK_SPANS", 4)
    journaled = []
    real_append = Journal.append_spans

    def append_spans(self, items, **kwargs):
        items = list(items)
        journaled.append([trace for trace, _ in items])
        return real_append(self, items, **kwargs)

    monkeypatch.setattr(Journal, "append_spans", append_spans)
    receiver = make_receiver(tmp_path / "out", clock)
    receiver.start()
    try:
        assert receiver(interleaved_request().resource_spans).rejected == 0
        clock.advance(2.5)
        assert receiver.flush()
    finally:
        receiver.shutdown(10)
    # Two chunks of two whole traces each, journaled one after the other.
    assert journaled == [[TRACES[0]] * 3 + [TRACES[1]] * 3, [TRACES[2]] * 3 + [TRACES[3]] * 3]
    reports = verified(str(tmp_path / "out"), trust_root(str(tmp_path)))
    # One segment per trace, its records in the order the request held them.
    assert [(r.statement.trace_id, span_ids(r)) for r in reports] == [
        (trace, [span_id(2), span_id(1), span_id(3)]) for trace in TRACES]


def test_a_request_of_more_traces_than_max_pending_traces_is_admitted_in_turn(
    tmp_path, clock
):
    # 1,024 spans are admitted in one chunk; of 200 one-span traces with room for
    # 2 x 100 pending ones, that chunk was refused on every retry, even by an idle
    # receiver.  In chunks of at most half of max_pending_traces traces, part of it
    # is admitted (three chunks of 50) and the rest once the first part is sealed.
    receiver = make_receiver(tmp_path / "out", clock, max_pending_traces=100)
    traces = [f"{n + 1:032x}" for n in range(200)]
    spans = request(*(otlp_span(trace, 1) for trace in traces)).resource_spans
    receiver.start()
    try:
        with pytest.raises(Unavailable, match="overloaded: 150 traces"):
            receiver(spans)
        clock.advance(2.5)
        assert receiver.flush()
        assert receiver(spans).rejected == 0
        clock.advance(2.5)
        assert receiver.flush()
    finally:
        receiver.shutdown(10)
    reports = verified(str(tmp_path / "out"), trust_root(str(tmp_path)))
    assert sorted(r.statement.trace_id for r in reports) == traces


def test_a_request_of_new_traces_is_admitted_beside_a_full_set_of_open_ones(tmp_path, clock):
    # Open traces (no root yet) fill max_pending_traces, as under steady traffic.  A
    # chunk of max_pending_traces new traces would reach twice the limit: it was
    # refused on every retry, however many seals passed in between.  In chunks of
    # half the limit, part of it is admitted, and the rest once the traces it
    # pushed out are sealed.
    receiver = make_receiver(tmp_path / "out", clock, max_pending_traces=10)
    waiting = [f"{n + 1:032x}" for n in range(10)]
    new = [f"{n + 101:032x}" for n in range(10)]
    receiver.start()
    try:
        for trace in waiting:
            receiver(request(otlp_span(trace, 2, parent=1)).resource_spans)
        spans = request(*(otlp_span(trace, 2, parent=1) for trace in new)).resource_spans
        with pytest.raises(Unavailable, match="overloaded: 15 traces"):
            receiver(spans)
        assert receiver.flush()  # seals the five open traces the first chunk pushed out
        assert receiver(spans).rejected == 0
    finally:
        receiver.shutdown(10)
    reports = verified(str(tmp_path / "out"), trust_root(str(tmp_path)), allow_incomplete=True)
    assert sorted(r.statement.trace_id for r in reports) == sorted(waiting + new)


def test_a_trace_larger_than_the_backlog_limit_is_admitted_while_others_wait(tmp_path, clock):
    # Refused while any span waited: under steady traffic, on every retry.  It waits
    # only until the backlog is under the limit; a chunk that fits the limit still
    # waits for its room.
    receiver = make_receiver(tmp_path / "out", clock, max_backlog_spans=4)
    receiver.start()
    try:
        receiver(request(otlp_span(TRACE_B, 2, parent=1)).resource_spans)  # one waits
        large = request(*(otlp_span(TRACE_A, n) for n in range(1, 7))).resource_spans
        assert receiver(large).rejected == 0
        assert len(receiver._keys) == 7
        with pytest.raises(Unavailable, match="overloaded: 7 accepted spans"):
            receiver(request(otlp_span(f"{3:032x}", 1)).resource_spans)
    finally:
        receiver.shutdown(10)
    reports = verified(str(tmp_path / "out"), trust_root(str(tmp_path)), allow_incomplete=True)
    assert sorted(r.statement.trace_id for r in reports) == sorted([TRACE_A, TRACE_B])


def test_a_request_refused_part_way_loses_nothing_and_its_retry_adds_each_span_once(
    tmp_path, clock, monkeypatch
):
    from spanproof.exporter import receiver as receiver_module

    monkeypatch.setattr(receiver_module, "_ADMIT_CHUNK_SPANS", 4)
    # Room for the first chunk (two traces, six spans) only.
    receiver = make_receiver(tmp_path / "out", clock, max_backlog_spans=6)
    receiver.start()
    try:
        with pytest.raises(Unavailable, match="overloaded"):
            receiver(interleaved_request().resource_spans)
        clock.advance(2.5)
        assert receiver.flush()  # the first chunk was accepted: it is sealed
        first = {r.statement.trace_id for r in
                 verified(str(tmp_path / "out"), trust_root(str(tmp_path)))}
        assert first == set(TRACES[:2])
        # The Collector retries the whole batch: the first chunk is a re-delivery.
        assert receiver(interleaved_request().resource_spans).rejected == 0
        clock.advance(2.5)
        assert receiver.flush()
    finally:
        receiver.shutdown(10)
    reports = verified(str(tmp_path / "out"), trust_root(str(tmp_path)))
    assert [(r.statement.trace_id, sorted(span_ids(r))) for r in reports] == [
        (trace, [span_id(1), span_id(2), span_id(3)]) for trace in TRACES]
    assert [r.statement.completeness.conflicts for r in reports] == [()] * 4


def test_shutdown_during_a_large_request_admits_it_to_its_end(tmp_path, clock, monkeypatch):
    import threading
    import time

    from spanproof.exporter import receiver as receiver_module

    monkeypatch.setattr(receiver_module, "_ADMIT_CHUNK_SPANS", 4)
    receiver = make_receiver(tmp_path / "out", clock)
    receiver.start()
    real_decode = Receiver._decode
    chunks = []
    stopping: list[threading.Thread] = []

    def decode(self, spans):
        chunks.append(len(spans))
        if len(chunks) == 2:  # the first chunk is admitted: shut down meanwhile
            stopping.append(threading.Thread(target=receiver.shutdown, args=(30,)))
            stopping[0].start()
            wait_for(lambda: self._shut_down, what="shutdown to begin")
            # Time for a shutdown that did not wait for this request to seal and
            # close before its second chunk is admitted (this one must wait).
            time.sleep(0.5)
        return real_decode(self, spans)

    monkeypatch.setattr(Receiver, "_decode", decode)
    try:
        assert receiver(interleaved_request().resource_spans).rejected == 0
    finally:
        stopping[0].join(30)
    assert not stopping[0].is_alive()
    assert chunks == [6, 6]
    reports = verified(str(tmp_path / "out"), trust_root(str(tmp_path)))
    assert [(r.statement.trace_id, len(span_ids(r)), r.statement.seal_reason)
            for r in reports] == [(trace, 3, "shutdown") for trace in TRACES]


def test_shutdown_without_start_has_nothing_to_seal(tmp_path, clock, caplog):
    # It logged "shutdown incomplete: 0 bundle(s) not written" and returned False, as
    # though spans were left unsealed, although nothing was ever accepted.
    receiver = make_receiver(tmp_path / "out", clock)
    with caplog.at_level("WARNING", logger="spanproof"):
        assert receiver.shutdown()
        assert receiver.shutdown()  # idempotent
    assert caplog.records == []
    assert receiver.not_serving() is not None


def test_start_after_shutdown_is_refused(tmp_path, clock):
    # Started after its shutdown had run, it would accept spans that nothing seals
    # at the end (the journal would keep them for the next start).
    receiver = make_receiver(tmp_path / "out", clock)
    assert receiver.shutdown()
    with pytest.raises(RuntimeError, match="already shut down"):
        receiver.start()
    assert not os.path.exists(tmp_path / "out" / "journal") or not os.listdir(
        tmp_path / "out" / "journal")
