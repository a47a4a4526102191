"""TraceAssembler: when traces are sealed, how segments chain, how losses are declared."""

from __future__ import annotations

import io
from datetime import datetime, timezone
from typing import Any

import orjson
import pytest
from exporter_support import signing_key
from hypothesis import given, settings
from hypothesis import strategies as st

from spanproof.exporter import ChainPosition, SealedBundle, SealJob, TraceAssembler, seal
from spanproof.exporter.sealing import SerializedBody
from spanproof.verifier import (
    Producer,
    TrustedKey,
    TrustRoot,
    Verdict,
    check_bundle,
    link_segments,
)

T1 = "11111111111111111111111111111111"
T2 = "22222222222222222222222222222222"
T3 = "33333333333333333333333333333333"
PRODUCER = Producer("test", "0", "00000000000000aa")
SEALED_AT = datetime(2027, 1, 1, tzinfo=timezone.utc)


def body(trace_id: str, n: int, name: str = "step") -> dict[str, Any]:
    """A valid record body for span number *n* of a trace."""
    return {
        "span": {
            "traceId": trace_id, "spanId": f"{n + 1:016x}", "parentSpanId": "",
            "traceState": "", "name": name, "kind": "SPAN_KIND_INTERNAL",
            "startTimeUnixNano": "1", "endTimeUnixNano": "2",
            "status": {"code": "STATUS_CODE_UNSET", "message": ""},
            "attributes": {}, "droppedAttributesCount": "0", "events": [],
            "droppedEventsCount": "0", "links": [], "droppedLinksCount": "0",
        },
        "resource": {"attributes": {}, "droppedAttributesCount": "0", "schemaUrl": ""},
        "scope": {"name": "t", "version": "", "attributes": {}, "droppedAttributesCount": "0",
                  "schemaUrl": ""},
    }


def assembler(**kwargs: Any) -> TraceAssembler:
    kwargs.setdefault("seal_grace", 2.0)
    kwargs.setdefault("idle_timeout", 30.0)
    return TraceAssembler(**kwargs)


def seal_all(asm: TraceAssembler, jobs: list[SealJob]) -> list[SealedBundle]:
    """Seal each job for real and report it, as the exporter's sealer does."""
    out = []
    for job in jobs:
        bundle = seal(job.trace_id, job.bodies, job.position, signer=signing_key(),
                      producer=PRODUCER, sealed_at=SEALED_AT, reason=job.reason,
                      completeness=job.completeness)
        asm.sealed(job, bundle.next_position())
        out.append(bundle)
    return out


def names(job: SealJob) -> list[str]:
    return [(b.parse() if isinstance(b, SerializedBody) else b)["span"]["name"]
            for b in job.bodies]


def as_json(body: dict[str, Any]) -> SerializedBody:
    """*body* as the receiver holds it: its key-sorted JSON."""
    return SerializedBody(body["span"]["spanId"], orjson.dumps(body, option=orjson.OPT_SORT_KEYS))


def test_root_ended_trace_is_due_after_the_grace_only() -> None:
    asm = assembler()
    asm.add(T1, body(T1, 0), now=100.0)
    asm.root_ended(T1, now=101.0)
    assert asm.due(102.9) == []
    asm.add(T1, body(T1, 1), now=102.5)  # a child still in the processor's queue
    (job,) = asm.due(103.0)
    assert (job.trace_id, job.reason, len(job.bodies)) == (T1, "root_ended", 2)
    assert job.position == ChainPosition.genesis(T1)
    seal_all(asm, [job])
    assert asm.pending_traces == 0
    assert asm.due(1e9) == []


def test_open_trace_is_sealed_on_idle_timeout() -> None:
    asm = assembler(idle_timeout=10.0)
    asm.add(T1, body(T1, 0), now=0.0)
    asm.add(T1, body(T1, 1), now=5.0)
    assert asm.due(14.9) == []
    (job,) = asm.due(15.0)
    assert job.reason == "idle_timeout"
    assert len(job.bodies) == 2


def test_next_deadline_tracks_grace_and_idle() -> None:
    asm = assembler(seal_grace=2.0, idle_timeout=10.0)
    assert asm.next_deadline() is None
    asm.add(T1, body(T1, 0), now=0.0)
    assert asm.next_deadline() == 10.0
    asm.root_ended(T1, now=1.0)
    assert asm.next_deadline() == 3.0


def test_root_of_an_unknown_trace_is_ignored() -> None:
    asm = assembler()
    asm.root_ended(T1, now=0.0)
    assert asm.pending_traces == 0 and asm.next_deadline() is None


def test_size_limit_cuts_linked_segments() -> None:
    asm = assembler(max_records=3)
    woke = [asm.add(T1, body(T1, i), now=0.0) for i in range(7)]
    assert woke[2] is True  # the third body filled a segment
    asm.root_ended(T1, now=0.0)
    bundles = []
    for _ in range(10):
        jobs = asm.due(10.0)
        if not jobs:
            break
        assert len(jobs) == 1
        bundles += seal_all(asm, jobs)
    assert [b.statement.seal_reason for b in bundles] == ["size_limit", "size_limit", "root_ended"]
    assert [b.statement.record_count for b in bundles] == [3, 3, 1]
    assert [b.statement.first_seq for b in bundles] == [0, 3, 6]
    trust = trust_root_for_test()
    reports = [check_bundle(io.BytesIO(b.data), trust) for b in bundles]
    assert all(r.verdict is Verdict.OK for r in reports)
    (link,) = link_segments(reports)
    assert link.ok and link.segments == (0, 1, 2)


def prompt(trace_id: str, n: int, chars: int) -> dict[str, Any]:
    """A body with a *chars*-long prompt attribute (and a 4-character name)."""
    b = body(trace_id, n)
    b["span"]["attributes"] = {"gen_ai.prompt": {"stringValue": "p" * chars}}
    return b


def test_body_bytes_counts_names_strings_and_bytes_values_or_the_json() -> None:
    from spanproof.exporter.assembly import body_bytes

    b = prompt(T1, 0, 100)
    b["span"]["events"] = [{"name": "e", "attributes": {"x": {"bytesValue": "AAAA"}}}]
    b["span"]["links"] = [{"attributes": {"y": {"stringValue": "ab"}, "n": {"intValue": "1"}}}]
    assert body_bytes(b) == len("step") + 100 + 4 + 2
    # Values inside arrays and kvlists count too: GenAI message lists often are arrays.
    b["span"]["attributes"]["gen_ai.input.messages"] = {"arrayValue": [
        {"stringValue": "m" * 50},
        {"kvlistValue": {"role": {"stringValue": "user"},
                         "parts": {"arrayValue": [{"bytesValue": "AAAA"}]}}}]}
    assert body_bytes(b) == len("step") + 100 + 4 + 2 + 50 + len("role") + 4 + len("parts") + 4
    assert body_bytes(as_json(b)) == len(orjson.dumps(b, option=orjson.OPT_SORT_KEYS))


def test_body_bytes_counts_text_in_utf8_bytes_not_characters() -> None:
    # A prompt in Japanese is three bytes a character in the bundle: counted by
    # characters, a segment of such text would reach three times the byte bound.
    from spanproof.exporter.assembly import body_bytes

    b = prompt(T1, 0, 0)
    b["span"]["name"] = "caf\u00e9"  # 5 bytes
    b["span"]["attributes"] = {
        "gen_ai.prompt": {"stringValue": "\u65e5\u672c" * 10},  # 60 bytes
        "tags": {"arrayValue": [{"stringValue": "\U0001f600"}]},  # 4 bytes
        "meta": {"kvlistValue": {"cl\u00e9": {"stringValue": "x"}}},  # 4 + 1 bytes
        "half": {"stringValue": "a\ud800"},  # a lone surrogate, rejected at sealing: 4
    }
    assert body_bytes(b) == 5 + 60 + 4 + 4 + 1 + 4


@pytest.mark.parametrize("form", [dict, as_json], ids=["dict", "json"])
def test_a_trace_is_cut_once_its_pending_bodies_reach_the_byte_limit(form: Any) -> None:
    # A long-lived trace (its root open for hours) with large prompts was held whole
    # until max_records bodies: 10,000 of 1 MB each.
    from spanproof.exporter.assembly import body_bytes

    size = body_bytes(form(prompt(T1, 0, 1000)))
    asm = assembler(max_segment_bytes=int(2.5 * size))
    woke = [asm.add(T1, form(prompt(T1, i, 1000)), now=0.0) for i in range(7)]
    assert woke[:3] == [False, False, True]  # the third reached the limit
    (job,) = asm.due(0.0)  # the root is open: nothing else would seal it
    assert (job.reason, len(job.bodies)) == ("size_limit", 3)
    bundles = seal_all(asm, [job])
    (job,) = asm.due(0.0)  # the next three reached it meanwhile
    assert (job.reason, len(job.bodies)) == ("size_limit", 3)
    bundles += seal_all(asm, [job])
    assert asm.due(0.0) == []  # one body is left, below the limit: the trace stays open
    asm.root_ended(T1, now=0.0)
    (job,) = asm.due(10.0)
    assert (job.reason, len(job.bodies)) == ("root_ended", 1)
    bundles += seal_all(asm, [job])
    reports = [check_bundle(io.BytesIO(b.data), trust_root_for_test()) for b in bundles]
    (link,) = link_segments(reports)
    assert link.ok and link.segments == (0, 1, 2)


def test_the_largest_open_trace_is_sealed_early_when_open_traces_hold_too_many_bytes() -> None:
    # max_pending_traces traces of up to MAX_SEGMENT_BYTES each would be 128 GiB.
    from spanproof.exporter.assembly import PENDING_SPAN_BYTES, body_bytes

    size = body_bytes(prompt(T1, 0, 1000)) + PENDING_SPAN_BYTES
    asm = assembler(max_pending_bytes=10 * size)
    for trace_id, count in ((T1, 5), (T2, 3), (T3, 2)):
        for i in range(count):
            asm.add(trace_id, prompt(trace_id, i, 1000), now=0.0)
    assert asm.due(0.0) == []  # ten bodies: at the bound, not over it
    asm.add(T2, prompt(T2, 3, 1000), now=0.0)  # eleven: the largest goes
    (job,) = asm.due(0.0)
    assert (job.trace_id, job.reason, len(job.bodies)) == (T1, "size_limit", 5)
    assert job.completeness.notes == (
        f"sealed before its root span ended or went idle: the open traces held more than "
        f"{10 * size} bytes (the largest is sealed first)",)
    bundles = seal_all(asm, [job])
    for i in range(4):  # six held now: room for four more
        asm.add(T3, prompt(T3, 2 + i, 1000), now=0.0)
    assert asm.due(0.0) == []
    assert asm.pending_traces == 2
    reports = [check_bundle(io.BytesIO(b.data), trust_root_for_test()) for b in bundles]
    assert [r.verdict for r in reports] == [Verdict.OK]


def test_many_open_traces_stay_within_the_bytes_bound() -> None:
    # One trace sealed per look let 2,048 traces growing side by side hold several
    # times the bound: each look freed less than the growth between two looks.
    from spanproof.exporter.assembly import body_bytes

    size = body_bytes(prompt(T1, 0, 100))
    bound = 16 * 1024
    asm = assembler(max_pending_bytes=bound, max_pending_traces=1024, idle_timeout=1e9)
    traces = [f"{i + 1:032x}" for i in range(512)]
    most = 0
    for step in range(4):  # 2,048 spans of ~100 bytes: over 12 times the bound
        for trace_id in traces:  # round-robin: every trace grows, none ends
            asm.add(trace_id, prompt(trace_id, step, 100), now=0.0)
            held = sum(asm._traces[t].size for t in asm._open)
            most = max(most, held)
        seal_all(asm, asm.due(0.0))
    assert most <= bound + bound // 64 + size


def test_traces_already_due_do_not_count_against_the_open_traces_bytes() -> None:
    from spanproof.exporter.assembly import PENDING_SPAN_BYTES, body_bytes

    size = body_bytes(prompt(T1, 0, 1000))
    asm = assembler(max_pending_bytes=4 * (size + PENDING_SPAN_BYTES),
                    max_segment_bytes=5 * size)
    for i in range(3):
        asm.add(T1, prompt(T1, i, 2000), now=0.0)  # a segment's worth: due at once
    for i in range(4):
        asm.add(T2, prompt(T2, i, 1000), now=0.0)  # ten sizes held, four of them open
    (job,) = asm.due(0.0)  # the sealer is behind: only T1 is due, T2 stays open
    assert (job.trace_id, job.reason, job.completeness.notes) == (T1, "size_limit", ())


def test_open_traces_of_small_spans_are_bounded_by_their_count_too() -> None:
    # The bound counted only names and strings: a span of few short strings counted
    # ~50 bytes while it held ~2 KB, so open traces of such spans reached the 1 GiB
    # bound only at ~5 million spans, ~12 GB.  Each pending span now also counts
    # PENDING_SPAN_BYTES.
    from spanproof.exporter.assembly import PENDING_SPAN_BYTES

    bound = 100 * PENDING_SPAN_BYTES
    asm = assembler(max_pending_bytes=bound, idle_timeout=1e9)
    traces = [f"{i + 1:032x}" for i in range(10)]
    most = 0
    for step in range(50):  # 500 small spans, round-robin: every trace grows, none ends
        for trace_id in traces:
            asm.add(trace_id, body(trace_id, step), now=0.0)
            most = max(most, sum(len(asm._traces[t].bodies) for t in asm._open))
        seal_all(asm, asm.due(0.0))
    assert most <= 100 + 100 // 64 + 1
    assert asm.pending_traces == 10


def trust_root_for_test() -> TrustRoot:
    public = signing_key().private_key.public_key()
    return TrustRoot.from_keys([TrustedKey.from_public_key(public)])


def test_late_span_after_sealing_continues_the_chain() -> None:
    asm = assembler()
    asm.add(T1, body(T1, 0), now=0.0)
    asm.root_ended(T1, now=0.0)
    (first,) = seal_all(asm, asm.due(2.0))
    asm.add(T1, body(T1, 1, "late"), now=50.0)
    # The root already ended: the continuation waits the grace, not the idle timeout.
    assert asm.due(51.9) == []
    (job,) = asm.due(52.0)
    assert job.reason == "root_ended"
    assert job.position == first.next_position()
    (second,) = seal_all(asm, [job])
    assert second.statement.segment_index == 1
    assert second.statement.previous_statement == first.statement_digest


def test_span_arriving_while_a_segment_is_in_flight_waits_for_it() -> None:
    asm = assembler()
    asm.add(T1, body(T1, 0), now=0.0)
    asm.root_ended(T1, now=0.0)
    (job,) = asm.due(2.0)
    asm.add(T1, body(T1, 1), now=2.5)  # sealer busy with `job`
    assert asm.due(100.0) == []  # cannot chain before the position is known
    (bundle,) = seal_all(asm, [job])
    (next_job,) = asm.due(100.0)
    assert next_job.position == bundle.next_position()
    assert names(next_job) == ["step"]


@pytest.mark.parametrize("form", [dict, as_json], ids=["dict", "json"])
def test_identical_duplicate_is_ignored_and_conflict_is_declared(form: Any) -> None:
    asm = assembler()
    asm.add(T1, form(body(T1, 0)), now=0.0)
    assert asm.add(T1, form(body(T1, 0)), now=0.1) is False  # identical re-delivery
    changed = form(body(T1, 0, name="rewritten"))
    asm.add(T1, changed, now=0.2)
    assert asm.add(T1, form(body(T1, 0, name="rewritten")), now=0.25) is False  # seen too
    asm.add(T1, form(body(T1, 1)), now=0.3)
    (job,) = asm.drain_all("shutdown")
    assert names(job) == ["step", "rewritten", "step"]
    assert job.completeness.conflicts == (f"{1:016x}",)
    (bundle,) = seal_all(asm, [job])
    # The verifier accepts the duplicate span id because it is declared.
    assert check_bundle(io.BytesIO(bundle.data), trust_root_for_test()).verdict is Verdict.OK


@pytest.mark.parametrize("form", [dict, as_json], ids=["dict", "json"])
def test_span_id_certified_in_an_earlier_segment_is_listed_as_a_conflict(form: Any) -> None:
    # SPEC §4.3: a span id occurs once per chain.  Only a segment's own repeats were
    # listed: a second version arriving after its first was sealed verified as OK,
    # nothing declared, in every later segment.
    asm = assembler()
    asm.add(T1, form(body(T1, 0)), now=0.0)
    (first,) = seal_all(asm, asm.drain_all("force_flush"))
    assert first.statement.completeness.conflicts == ()
    asm.add(T1, form(body(T1, 0, name="rewritten")), now=1.0)
    asm.add(T1, form(body(T1, 1)), now=1.0)
    (job,) = asm.drain_all("force_flush")
    assert job.completeness.conflicts == (f"{1:016x}",)
    (second,) = seal_all(asm, [job])
    # Identical content too: the earlier segment's content is not kept.
    asm.add(T1, form(body(T1, 0)), now=2.0)
    asm.add(T1, form(body(T1, 2)), now=2.0)
    (job,) = asm.drain_all("force_flush")
    assert job.completeness.conflicts == (f"{1:016x}",)
    (third,) = seal_all(asm, [job])
    for bundle in (second, third):
        assert check_bundle(io.BytesIO(bundle.data), trust_root_for_test()).verdict is Verdict.OK


def test_span_id_of_the_segment_in_flight_is_listed_as_a_conflict() -> None:
    # Arriving while the segment holding its first version is being sealed, it is in
    # neither the pending spans nor the sealed ones yet.
    asm = assembler()
    asm.add(T1, body(T1, 0), now=0.0)
    (job,) = asm.drain_all("force_flush")
    asm.add(T1, body(T1, 0, name="rewritten"), now=0.5)  # the sealer has `job`
    seal_all(asm, [job])
    (later,) = asm.drain_all("force_flush")
    assert names(later) == ["rewritten"]
    assert later.completeness.conflicts == (f"{1:016x}",)


def test_chain_holds_answers_as_add_lists_conflicts() -> None:
    # The receiver journals a span as conflicting when chain_holds says an earlier
    # segment holds its id, so a bundle recovered after a crash lists it as the live
    # one would.  In flight, sealed with the trace still pending, and sealed alone.
    asm = assembler()
    one, two = f"{1:016x}", f"{2:016x}"
    asm.add(T1, body(T1, 0), now=0.0)
    assert not asm.chain_holds(T1, one)  # pending in this segment: not an earlier one
    (job,) = asm.drain_all("force_flush")
    assert asm.chain_holds(T1, one) and not asm.chain_holds(T1, two)
    asm.add(T1, body(T1, 1), now=0.5)
    seal_all(asm, [job])
    assert asm.chain_holds(T1, one) and not asm.chain_holds(T1, two)
    seal_all(asm, asm.drain_all("force_flush"))
    assert T1 not in asm._traces
    assert asm.chain_holds(T1, one) and asm.chain_holds(T1, two)
    assert not asm.chain_holds(T1, f"{3:016x}") and not asm.chain_holds(T2, one)


def test_a_long_traces_span_ids_are_looked_up_in_a_set_not_scanned() -> None:
    # One string of all a trace's sealed ids was scanned for each new span: ~0.5 ms a
    # span once 100,000 were sealed, under the exporter's lock.
    from spanproof.exporter import assembly

    asm = assembler()
    for segment in range(3):
        for n in range(200 * segment, 200 * segment + 200):
            asm.add(T1, body(T1, n), now=float(segment))
        seal_all(asm, asm.drain_all("force_flush"))
    held = asm._certified[T1]
    assert isinstance(held, set) and len(held) == 600
    assert assembly._count(held) == asm._certified_count == 600
    asm.add(T1, body(T1, 5, name="rewritten"), now=9.0)  # first segment's
    asm.add(T1, body(T1, 600), now=9.0)
    (job,) = asm.drain_all("force_flush")
    assert job.completeness.conflicts == (f"{6:016x}",)


def test_span_ids_of_an_abandoned_segment_are_not_conflicts() -> None:
    asm = assembler()
    asm.add(T1, body(T1, 0), now=0.0)
    (job,) = asm.drain_all("force_flush")
    asm.abandon(job, "the disk is full")  # never certified: declared dropped instead
    asm.add(T1, body(T1, 0), now=1.0)
    (again,) = asm.drain_all("force_flush")
    assert again.completeness.conflicts == ()
    assert again.completeness.dropped_spans == 1


def test_sealed_span_ids_are_forgotten_least_recently_sealed_trace_first(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from spanproof.exporter import assembly

    monkeypatch.setattr(assembly, "SEALED_SPAN_IDS", 3)
    asm = assembler()
    for trace_id in (T1, T2):  # T1's two ids, then T2's two: T1 is forgotten
        asm.add(trace_id, body(trace_id, 0), now=0.0)
        asm.add(trace_id, body(trace_id, 1), now=0.0)
        seal_all(asm, asm.drain_all("force_flush"))
    for trace_id in (T1, T2):
        asm.add(trace_id, body(trace_id, 1), now=1.0)
    jobs = {job.trace_id: job for job in asm.drain_all("force_flush")}
    assert jobs[T1].completeness.conflicts == ()
    assert jobs[T2].completeness.conflicts == (f"{2:016x}",)
    # Forgetting a sealed trace's chain forgets its span ids with it.
    small = assembler(sealed_trace_memory=1)
    for trace_id in (T1, T2):
        small.add(trace_id, body(trace_id, 0), now=0.0)
        seal_all(small, small.drain_all("force_flush"))
    assert list(small._certified) == [T2]


def test_pending_trace_limit_seals_the_least_recently_active_trace() -> None:
    asm = assembler(max_pending_traces=2)
    asm.add(T1, body(T1, 0), now=0.0)
    asm.add(T2, body(T2, 0), now=1.0)
    asm.add(T1, body(T1, 1), now=2.0)  # T2 is now the least recently active
    assert asm.add(T3, body(T3, 0), now=3.0) is True
    (job,) = asm.due(3.0)
    assert (job.trace_id, job.reason) == (T2, "idle_timeout")
    assert job.completeness.notes == (
        "sealed before its root span ended or went idle: 2 traces were open "
        "(max_pending_traces)",)
    assert job.completeness.dropped_spans == 0


def test_a_trace_sealed_early_for_room_after_its_root_ended_says_so() -> None:
    # Its statement said idle_timeout, "sealed before its root span ended": an
    # auditor read a complete trace as cut short.
    asm = assembler(max_pending_traces=2)
    asm.add(T1, body(T1, 0), now=0.0)
    asm.root_ended(T1, now=0.5)  # complete, within its grace
    asm.add(T2, body(T2, 0), now=1.0)
    assert asm.add(T3, body(T3, 0), now=1.5) is True  # T1 goes for room
    (job,) = asm.due(1.5)
    assert (job.trace_id, job.reason) == (T1, "root_ended")
    assert job.completeness.notes == (
        "sealed before its grace period ended: 2 traces were open (max_pending_traces)",)
    assert asm.due(10.0) == []  # sealed once, not again when its grace ends


def test_a_trace_sealed_early_for_room_keeps_its_reason_when_a_shutdown_drains_it() -> None:
    # Drained before the sealer took it, it was sealed "shutdown", beside a note saying
    # it was sealed early for room.
    asm = assembler(max_pending_traces=1)
    asm.add(T1, body(T1, 0), now=0.0)
    asm.root_ended(T1, now=0.5)
    assert asm.add(T2, body(T2, 0), now=1.0) is True  # T1 goes for room
    jobs = {job.trace_id: job for job in asm.drain_all()}
    assert jobs[T1].reason == "root_ended"
    assert jobs[T1].completeness.notes == (
        "sealed before its grace period ended: 1 traces were open (max_pending_traces)",)
    assert jobs[T2].reason == "shutdown"


def test_spans_dropped_for_want_of_room_are_declared_in_their_trace() -> None:
    asm = assembler(max_pending_traces=1)
    asm.add(T1, body(T1, 0), now=0.0)
    asm.add(T2, body(T2, 0), now=1.0)  # T1 sealed early to make room
    asm.add(T3, body(T3, 0), now=2.0)  # T2 cannot be sealed early: T1 still waits
    asm.add(T3, body(T3, 1), now=2.0)
    jobs = {job.trace_id: job for job in asm.due(2.0)}
    assert jobs[T1].reason == "idle_timeout"
    # T3's spans were dropped; once there is room, an empty segment declares them.
    assert jobs[T3].bodies == ()
    assert jobs[T3].completeness.dropped_spans == 2
    assert T2 not in jobs
    bundles = {b.statement.trace_id: b for b in seal_all(asm, list(jobs.values()))}
    report = check_bundle(io.BytesIO(bundles[T3].data), trust_root_for_test())
    assert report.verdict is Verdict.INCOMPLETE
    assert report.statement is not None and report.statement.record_count == 0
    # A later span of T3 continues the chain after the empty segment, owing nothing.
    asm.add(T3, body(T3, 2), now=3.0)
    later = {j.trace_id: j for j in asm.drain_all("shutdown")}
    assert set(later) == {T2, T3}
    assert later[T3].position == bundles[T3].next_position()
    assert later[T3].completeness.dropped_spans == 0


def test_a_loss_declared_while_there_is_no_room_keeps_its_note() -> None:
    # A declaration (a discarded bundle's, a dead sealing process's) that found the
    # assembler full waited for room with its count, but only the generic "fallen
    # behind" note: the one saying how the spans were lost was dropped.
    asm = assembler(max_pending_traces=1)
    asm.add(T1, body(T1, 0), now=0.0)
    asm.add(T2, body(T2, 0), now=1.0)  # T1 sealed early to make room; T2 cannot be
    discarded = "4 span(s) of this trace were in a bundle discarded unwritten"
    asm.drop(T3, now=2.0, count=4, note=discarded)
    asm.drop(T3, now=2.0, count=1, note=discarded)
    jobs = {job.trace_id: job for job in asm.due(2.0)}
    completeness = jobs[T3].completeness
    assert completeness.dropped_spans == 5
    assert completeness.notes.count(discarded) == 1
    assert any("max_pending_traces" in note for note in completeness.notes)


def test_a_waiting_loss_forgotten_for_room_takes_its_note_with_it() -> None:
    # Past max_pending_traces waiting losses, the oldest's count goes to the next
    # bundle of any trace; its note must not stay behind to be pinned on a later
    # loss of the same trace.
    t4 = "44" * 16
    asm = assembler(max_pending_traces=1)
    asm.add(T1, body(T1, 0), now=0.0)
    asm.add(T2, body(T2, 0), now=1.0)
    asm.drop(T3, now=2.0, count=2, note="T3's cause")
    asm.drop(t4, now=2.0, count=3, note="T4's cause")  # T3's count is forgotten
    assert list(asm._lost) == [t4]
    jobs = {job.trace_id: job for job in asm.drain_all("shutdown")}
    assert sum(job.completeness.dropped_spans for job in jobs.values()) == 5
    assert "T4's cause" in jobs[t4].completeness.notes
    assert "T3's cause" not in [n for job in jobs.values() for n in job.completeness.notes]


def test_rejected_spans_are_declared() -> None:
    asm = assembler()
    asm.add(T1, body(T1, 0), now=0.0)
    asm.reject(T1, now=0.0)
    asm.reject(T2, now=0.0, count=2)
    jobs = {j.trace_id: j for j in asm.drain_all("shutdown")}
    assert jobs[T1].completeness.rejected_spans == 1
    assert (len(jobs[T2].bodies), jobs[T2].completeness.rejected_spans) == (0, 2)


def test_flush_seals_ended_traces_early_but_never_cuts_open_ones() -> None:
    asm = assembler()
    asm.add(T1, body(T1, 0), now=0.0)
    asm.root_ended(T1, now=0.0)
    asm.add(T2, body(T2, 0), now=0.0)  # root still running
    (job,) = asm.due(0.5, flush=True)
    assert (job.trace_id, job.reason) == (T1, "force_flush")
    seal_all(asm, [job])
    assert asm.due(0.5, flush=True) == []
    assert asm.pending_traces == 1


def test_drain_all_takes_everything_over_several_calls() -> None:
    asm = assembler(max_records=2)
    for i in range(5):
        asm.add(T1, body(T1, i), now=0.0)
    asm.add(T2, body(T2, 0), now=0.0)
    reasons = []
    for _ in range(10):
        jobs = asm.drain_all("shutdown")
        if not jobs:
            break
        reasons += [(j.trace_id, j.reason, len(j.bodies)) for j in jobs]
        seal_all(asm, jobs)
    assert sorted(reasons) == sorted([
        (T1, "size_limit", 2), (T1, "size_limit", 2), (T1, "shutdown", 1), (T2, "shutdown", 1),
    ])
    assert asm.pending_traces == 0


def test_sealed_trace_memory_is_bounded() -> None:
    asm = assembler(sealed_trace_memory=1)
    forgot = []
    for trace in (T1, T2):
        asm.add(trace, body(trace, 0), now=0.0)
        asm.root_ended(trace, now=0.0)
        seal_all(asm, asm.due(5.0))
        forgot.append(asm.forgot_sealed)
    assert forgot == [False, True]
    asm.add(T1, body(T1, 1), now=10.0)  # T1 was forgotten: a new chain
    asm.add(T2, body(T2, 1), now=10.0)  # T2 is remembered: a continuation
    jobs = {j.trace_id: j for j in asm.drain_all("shutdown")}
    assert jobs[T1].position == ChainPosition.genesis(T1)
    assert jobs[T2].position.segment_index == 1


def test_holds_a_trace_pending_remembered_or_owed_a_loss_and_no_other() -> None:
    # What an exporter whose sealing processes started again keeps sealing itself.
    t4, t5 = "44" * 16, "55" * 16
    asm = assembler(max_pending_traces=1, sealed_trace_memory=1)
    asm.add(T1, body(T1, 0), now=0.0)
    asm.root_ended(T1, now=0.0)
    seal_all(asm, asm.due(5.0))  # T1: remembered as sealed
    asm.add(T2, body(T2, 0), now=6.0)
    asm.add(T3, body(T3, 0), now=6.0)  # T2 is sealed early for room; both pending
    asm.add(t4, body(t4, 0), now=6.0)  # no room at all: t4's loss waits
    assert asm.pending_traces == 2 and list(asm._lost) == [t4]
    assert [asm.holds(t) for t in (T1, T2, T3, t4, t5)] == [True, True, True, True, False]
    seal_all(asm, asm.drain_all("shutdown"))
    assert not asm.holds(T1)  # forgotten: the sealed trace memory keeps one


def test_no_sealed_trace_memory_forgets_from_the_start() -> None:
    assert assembler(sealed_trace_memory=0).forgot_sealed
    assert not assembler().forgot_sealed


def test_abandoned_job_declares_its_spans_dropped() -> None:
    asm = assembler()
    asm.add(T1, body(T1, 0), now=0.0)
    asm.add(T1, body(T1, 1), now=0.0)
    (job,) = asm.drain_all("shutdown")
    asm.abandon(job, "disk on fire")
    (retry,) = asm.due(0.0)
    assert retry.position == job.position
    assert retry.bodies == ()
    assert retry.completeness.dropped_spans == 2
    assert "disk on fire" in retry.completeness.notes


def test_caller_mistakes_raise() -> None:
    asm = assembler()
    with pytest.raises(ValueError, match="seal reason"):
        asm.drain_all("because")
    asm.add(T1, body(T1, 0), now=0.0)
    (job,) = asm.drain_all("shutdown")
    seal_all(asm, [job])
    with pytest.raises(ValueError, match="in flight"):
        asm.sealed(job, ChainPosition.genesis(T1))
    with pytest.raises(ValueError):
        TraceAssembler(max_records=0)



# -- property: nothing lost, nothing duplicated, chains continue --------------------

_STEPS = st.lists(
    st.tuples(
        st.sampled_from(["add", "add", "add", "again", "root", "due", "flush", "complete",
                         "reject"]),
        st.integers(0, 5),  # which trace
        st.floats(0, 5),  # time passing
    ),
    max_size=120,
)


@settings(max_examples=300, deadline=None)
@given(steps=_STEPS, max_records=st.integers(1, 4), max_pending=st.integers(1, 4),
       redeliver=st.booleans(), max_bytes=st.integers(1, 24), max_total=st.integers(1, 64))
def test_every_span_is_certified_or_declared(
    steps: list[tuple[str, int, float]], max_records: int, max_pending: int, redeliver: bool,
    max_bytes: int, max_total: int,
) -> None:
    """Random interleavings of spans, roots, sealing passes and slow sealers: each
    span ends up in exactly one record or in exactly one declared loss (identical
    re-deliveries may only add records), segments chain, and a bundle never holds an
    undeclared duplicate span id."""
    from spanproof.exporter.assembly import body_bytes

    asm = assembler(seal_grace=1.0, idle_timeout=8.0, max_records=max_records,
                    max_pending_traces=max_pending, max_segment_bytes=max_bytes,
                    max_pending_bytes=max_total)
    traces = [f"{i + 1:032x}" for i in range(6)]
    now = 0.0
    sent = dict.fromkeys(traces, 0)
    offered = 0  # spans and rejections handed to the assembler, re-deliveries excluded
    in_flight: list[SealJob] = []
    chain: dict[str, tuple[int, int]] = {}  # trace -> (next segment, next seq)
    certified: dict[str, list[str]] = {t: [] for t in traces}
    declared = 0

    def take(jobs: list[SealJob]) -> None:
        nonlocal declared
        for job in jobs:
            assert job.trace_id not in {j.trace_id for j in in_flight}
            assert len(job.bodies) <= max_records
            # Over the byte limit by its last body at most (each body here is 4 bytes).
            assert sum(map(body_bytes, job.bodies[:-1])) < max_bytes
            assert (job.position.segment_index, job.position.first_seq) == chain.get(
                job.trace_id, (0, 0)
            )
            ids = [b["span"]["spanId"] for b in job.bodies]
            repeated = {i for i in ids if ids.count(i) > 1}
            assert repeated <= set(job.completeness.conflicts)
            certified[job.trace_id] += ids
            declared += job.completeness.dropped_spans + job.completeness.rejected_spans
            in_flight.append(job)

    def complete_all() -> None:
        while in_flight:
            job = in_flight.pop(0)
            p = job.position
            nxt = ChainPosition(p.segment_index + 1, p.first_seq + len(job.bodies), p.start,
                                "sha256:" + "0" * 64)
            chain[job.trace_id] = (nxt.segment_index, nxt.first_seq)
            asm.sealed(job, nxt)

    for op, t, step in steps:
        now += step
        trace_id = traces[t]
        if op == "add" or (op == "again" and not (redeliver and sent[trace_id])):
            asm.add(trace_id, body(trace_id, sent[trace_id]), now)
            sent[trace_id] += 1
            offered += 1
        elif op == "again":
            asm.add(trace_id, body(trace_id, sent[trace_id] - 1), now)
        elif op == "root":
            asm.root_ended(trace_id, now)
        elif op in ("due", "flush"):
            take(asm.due(now, flush=op == "flush"))
        elif op == "complete":
            complete_all()
        else:
            asm.reject(trace_id, now)
            offered += 1
    for _ in range(200):
        complete_all()
        jobs = asm.drain_all("shutdown")
        if not jobs:
            break
        take(jobs)
    complete_all()
    assert asm.pending_traces == 0 and asm.next_deadline() is None
    distinct = sum(len(set(ids)) for ids in certified.values())
    records = sum(len(ids) for ids in certified.values())
    if redeliver:
        assert distinct + declared >= offered  # nothing lost silently
        for trace_id in traces:
            assert set(certified[trace_id]) <= {f"{n + 1:016x}" for n in range(sent[trace_id])}
    else:
        assert records == distinct  # no span certified twice
        assert records + declared == offered  # and none lost without a declaration


def test_rejections_of_no_known_trace_are_declared_once_in_the_next_bundle() -> None:
    # SPEC §5.3: a loss that cannot be attributed to a trace goes in the next bundle
    # sealed, whose notes say the spans may be other traces'.
    asm = assembler()
    asm.reject_untracked(2)
    assert asm.undeclared_untracked == 2
    asm.add(T1, body(T1, 0), now=0.0)
    asm.reject(T1, now=0.0)
    asm.root_ended(T1, now=0.0)
    (first,) = asm.due(5.0)
    assert first.completeness.rejected_spans == 3  # its own one and the two
    assert any("trace id could not be read" in n and "other traces'" in n
               for n in first.completeness.notes)
    assert asm.undeclared_untracked == 0
    seal_all(asm, [first])
    asm.add(T2, body(T2, 0), now=6.0)
    asm.root_ended(T2, now=6.0)
    (second,) = asm.due(10.0)
    assert second.completeness.rejected_spans == 0  # declared once only
    assert second.completeness.notes == ()


@pytest.mark.timeout(60)
def test_many_versions_of_one_span_id_are_told_apart_by_hash() -> None:
    # The receiver's senders choose span ids: each version of one was compared with
    # every pending one, 10,000 versions taking ~5 s with the ingest lock held.
    asm = assembler(max_records=100_000, max_pending_bytes=1 << 40)
    versions = [SerializedBody("00f067aa0ba902b7", b'{"n":%d}' % n) for n in range(50_000)]
    for version in versions:
        asm.add(T1, version, 0.0)
    assert asm.holds_copy(T1, SerializedBody("00f067aa0ba902b7", b'{"n":49999}'))
    assert not asm.holds_copy(T1, SerializedBody("00f067aa0ba902b7", b'{"n":50000}'))
    assert not asm.add(T1, SerializedBody("00f067aa0ba902b7", b'{"n":7}'), 0.0)


def test_many_versions_of_a_dict_body_are_still_compared() -> None:
    # Past the versions compared one by one, dict bodies (the SDK path's) cannot be
    # hashed: an identical one is still found.
    asm = assembler()
    for n in range(12):
        assert not asm.add(T1, body(T1, 1, name=f"v{n}"), 0.0)
    assert asm.holds_copy(T1, body(T1, 1, name="v3"))
    assert not asm.holds_copy(T1, body(T1, 1, name="v12"))
    asm.add(T1, body(T1, 1, name="v3"), 0.0)  # a re-delivery: not pending twice
    (job,) = asm.drain_all()
    assert [b["span"]["name"] for b in job.bodies] == [f"v{n}" for n in range(12)]
    assert job.completeness.conflicts == (body(T1, 1)["span"]["spanId"],)
