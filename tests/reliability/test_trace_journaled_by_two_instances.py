"""One trace journaled by two producer instances that both died (SPEC §5.3 recovered).

A trace crosses processes: a request served by one worker calls another worker of the
same application, or forks workers that end spans of the request's trace.  Each
process journals its spans under its own producer instance, and seals its own chain
of the trace.  When both die (the container is killed), the next start replays their
journals together; it must seal each instance's spans under that instance, after
that instance's last segment.  Replayed as one, the spans of both were sealed under
whichever instance came first, at the position of whichever had sealed more: the
other instance's spans named the wrong producer, and the chain of the instance named
had a gap ("segment 1 is missing").
"""

from __future__ import annotations

from pathlib import Path

import pytest
from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags
from reliability_support import Traced, evidence_span, make_processor, write_public_key

from spanproof.exporter import EvidenceSpanProcessor
from spanproof.verifier import TrustRoot, Verdict, check_bundle
from spanproof.verifier.verify import link_segments

TRACE = 0x1234567890ABCDEF1234567890ABCDEF
CALLER = trace.set_span_in_context(NonRecordingSpan(
    SpanContext(TRACE, 0x1111111111111111, is_remote=True, trace_flags=TraceFlags(1))))


def _serve(processor: EvidenceSpanProcessor, tag: str, sealed: int,
           monkeypatch: pytest.MonkeyPatch) -> None:
    """*sealed* requests of the trace sealed, then one journaled and not sealed when
    the process dies."""
    traced = Traced(processor)
    for n in range(sealed):
        with traced.tracer.start_as_current_span(f"{tag}-request-{n}", context=CALLER):
            with evidence_span(traced.tracer, f"{tag}-sealed-{n}"):
                pass
        assert processor.force_flush(10_000)
    # The process dies once this request's span is journaled, before it is sealed.
    monkeypatch.setattr(processor.exporter, "force_flush", lambda timeout_millis=0: True)
    with traced.tracer.start_as_current_span(f"{tag}-request-open", context=CALLER):
        with evidence_span(traced.tracer, f"{tag}-open"):
            pass
        assert processor.force_flush(10_000)
    processor.exporter._journal.forget_after_fork()  # type: ignore[attr-defined]


def test_each_instance_s_spans_of_a_shared_trace_continue_its_own_chain(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = make_processor(tmp_path, recover=False)
    second = make_processor(tmp_path, recover=False)
    instances = {"first": first.exporter.producer.instance,
                 "second": second.exporter.producer.instance}
    _serve(first, "first", 1, monkeypatch)
    _serve(second, "second", 2, monkeypatch)

    recovering = make_processor(tmp_path)
    try:
        trust = TrustRoot.from_pem_files([str(write_public_key(tmp_path / "trust"))])
        recovered = {}
        for path in recovering.recovered:
            report = check_bundle(path, trust, keep_records=True)
            assert report.verdict is Verdict.OK, report.reason
            assert report.statement is not None and report.records is not None
            recovered[report.statement.producer.instance] = (
                report.statement.segment_index, [r["span"]["name"] for r in report.records])
        assert recovered == {instances["first"]: (1, ["first-open"]),
                             instances["second"]: (2, ["second-open"])}
        reports = [check_bundle(str(p), trust) for p in tmp_path.glob("*.spanproof.json")]
        links = link_segments(reports)
        assert len(links) == 2
        assert all(link.ok for link in links), [link.message for link in links]
    finally:
        recovering.shutdown()
