"""A record longer than a bundle line may be (SPEC §7.1: 64 MiB, the line's comma
and line feed included) is left out of its bundle and declared rejected: the
producer never signs a bundle that no verifier can read."""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from exporter_support import (
    FakeClock,
    Recorder,
    evidence,
    make_exporter,
    record_span_ids,
    signing_key,
    span_hex,
    trust_root,
    verified,
)

from spanproof.exporter import sealing
from spanproof.exporter.normalize import span_to_body
from spanproof.exporter.sealing import OVERSIZED_NOTE, ChainPosition, build_record, seal
from spanproof.exporter.sinks import DirectorySink
from spanproof.verifier import Verdict, check_bundle
from spanproof.verifier.bundle import MAX_LINE_BYTES, MAX_RECORD_BYTES
from spanproof.verifier.canonical import canonicalize
from spanproof.verifier.disclosure import DisclosureFile
from spanproof.verifier.statement import Producer

PRODUCER = Producer(name="spanproof-test", version="0.1.0", instance="00000000000000ee")
SEALED_AT = datetime(2026, 3, 2, 9, 30, tzinfo=timezone.utc)
SMALL_BOUND = 4096  # the bound the exporter tests seal under, to stay small


def test_a_record_over_the_bound_is_rejected_and_its_trace_still_chains(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(sealing, "MAX_RECORD_BYTES", SMALL_BOUND)
    rec = Recorder()
    with rec.tracer.start_as_current_span("root"):
        with evidence(rec, "before") as before:
            pass
        with evidence(rec, "huge", prompt="x" * SMALL_BOUND):
            pass
        with evidence(rec, "after") as after:
            pass
    out = tmp_path / "out"
    exporter = make_exporter(out, FakeClock())
    with caplog.at_level(logging.WARNING, "spanproof"):
        exporter.export(rec.take())
        exporter.shutdown()
    assert "1 span(s) of trace" in caplog.text and "rejected at sealing" in caplog.text
    (report,) = verified(out, trust_root(tmp_path), allow_incomplete=True)
    assert report.statement is not None
    assert report.statement.completeness.rejected_spans == 1
    assert OVERSIZED_NOTE.format(1) in report.statement.completeness.notes
    # The records after the one left out take its place in the chain (seq 1, not 2).
    assert record_span_ids(report) == [span_hex(before)[1], span_hex(after)[1]]
    assert report.verdict is Verdict.OK


def test_the_disclosures_of_a_rejected_record_are_not_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sealing, "MAX_RECORD_BYTES", SMALL_BOUND)
    rec = Recorder()
    with rec.tracer.start_as_current_span("root"):
        with evidence(rec, "kept", **{"customer.email": "ana@example.com"}) as kept:
            pass
        with evidence(rec, "huge", prompt="x" * SMALL_BOUND,
                      **{"customer.email": "bo@example.com"}):
            pass
    out = tmp_path / "out"
    exporter = make_exporter(out, FakeClock(), redact_attributes=("customer.*",))
    exporter.export(rec.take())
    exporter.shutdown()
    (report,) = verified(out, trust_root(tmp_path), allow_incomplete=True)
    assert record_span_ids(report) == [span_hex(kept)[1]]
    (path,) = out.glob("*.disclosures.json")
    disclosures = DisclosureFile.from_bytes(path.read_bytes()).disclosures
    assert [(d.span_id, d.key) for d in disclosures] == [(span_hex(kept)[1], "customer.email")]


def _bodies_with_a_record_of(size: int) -> list[dict[str, Any]]:
    """Two record bodies of one trace, the first's record *size* bytes long at seq 0."""
    rec = Recorder()
    with rec.tracer.start_as_current_span("root"):
        with evidence(rec, "big", prompt=""):
            pass
        with evidence(rec, "small"):
            pass
    big, small = (span_to_body(span) for span in rec.take()[:2])
    genesis = ChainPosition.genesis(big["span"]["traceId"])
    empty = len(canonicalize(build_record(big, 0, genesis.start)))
    prompt = big["span"]["attributes"]["prompt"]
    big["span"] = {**big["span"], "attributes": {
        **big["span"]["attributes"], "prompt": {**prompt, "stringValue": "x" * (size - empty)}}}
    return [big, small]


@pytest.mark.parametrize(("size", "verdict", "records"), [
    (MAX_RECORD_BYTES, Verdict.OK, 2),
    (MAX_RECORD_BYTES + 1, Verdict.INCOMPLETE, 1),
], ids=["at_the_bound_kept", "one_byte_over_rejected"])
def test_the_bound_is_the_verifiers_line_limit(
    tmp_path: Path, size: int, verdict: Verdict, records: int
) -> None:
    # Unpatched: the record is sealed first, so its line carries the comma and line
    # feed and is MAX_LINE_BYTES long at the bound.
    bodies = _bodies_with_a_record_of(size)
    trace_id = bodies[0]["span"]["traceId"]
    bundle = seal(trace_id, bodies, ChainPosition.genesis(trace_id), signer=signing_key(),
                  producer=PRODUCER, sealed_at=SEALED_AT, reason="root_ended")
    assert bundle.statement.record_count == records
    longest = max(len(line) for line in bundle.data.splitlines(keepends=True))
    assert longest <= MAX_LINE_BYTES
    path = DirectorySink(tmp_path / "out").write(bundle)
    report = check_bundle(path, trust_root(tmp_path))
    assert report.verdict is verdict, report.reason
