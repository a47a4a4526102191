"""EvidenceSpanProcessor: durable flush, counted drops and unsampled spans, recovery."""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from no_threads import refuse_new_threads
from record_only import RecordOnly
from reliability_support import (
    Traced,
    bundles,
    evidence_span,
    ids,
    journaled_span_ids,
    make_processor,
    signing_key,
    spanproof_cli,
    write_public_key,
)

from spanproof.exporter import EvidenceSpanProcessor
from spanproof.exporter.journal import _read_entries
from spanproof.verifier import TrustRoot, Verdict, check_bundle


def _trust(tmp_path: Path) -> TrustRoot:
    return TrustRoot.from_pem_files([str(write_public_key(tmp_path / "trust"))])


def test_processor_is_exported_and_configured_from_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_SPANPROOF_OUTPUT_DIR", str(tmp_path / "env-out"))
    monkeypatch.setenv("OTEL_EXPORTER_SPANPROOF_QUEUE_SIZE", "7")
    monkeypatch.setenv("OTEL_EXPORTER_SPANPROOF_QUEUE_BLOCK_MS", "0")
    processor = EvidenceSpanProcessor()
    try:
        assert processor.exporter.config.output_dir == str(tmp_path / "env-out")
        assert processor.journal_dir == str(tmp_path / "env-out" / "journal")
        assert processor._queue.maxsize == 7
        assert processor._block == 0.0
    finally:
        processor.shutdown()


@pytest.mark.parametrize(("var", "raw"), [
    ("OTEL_EXPORTER_SPANPROOF_QUEUE_SIZE", "many"),
    ("OTEL_EXPORTER_SPANPROOF_QUEUE_SIZE", "0"),
    ("OTEL_EXPORTER_SPANPROOF_QUEUE_BLOCK_MS", "-5"),
    ("OTEL_EXPORTER_SPANPROOF_QUEUE_BLOCK_MS", "50ms"),
    ("OTEL_EXPORTER_SPANPROOF_QUEUE_BLOCK_MS", "10000000000000"),  # past any wait
    ("OTEL_EXPORTER_SPANPROOF_QUEUE_BLOCK_MS", "9" * 400),  # past any float
])
def test_malformed_queue_variable_is_named_and_the_default_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
    var: str, raw: str,
) -> None:
    monkeypatch.setenv(var, raw)
    with caplog.at_level(logging.WARNING, logger="spanproof.exporter.processor"):
        processor = EvidenceSpanProcessor(tmp_path, signing_key=signing_key())
    try:
        assert processor._queue.maxsize == 2048
        assert processor._block == 0.05
        assert f"{var}={raw!r} is not valid" in caplog.text
    finally:
        processor.shutdown()


def test_bad_queue_argument_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="OTEL_EXPORTER_SPANPROOF_QUEUE_SIZE"):
        EvidenceSpanProcessor(tmp_path, signing_key=signing_key(), queue_size=0)


@pytest.mark.parametrize(("argument", "value", "var"), [
    ("queue_size", 0, "OTEL_EXPORTER_SPANPROOF_QUEUE_SIZE"),
    ("queue_block", -1.0, "OTEL_EXPORTER_SPANPROOF_QUEUE_BLOCK_MS"),
])
def test_bad_queue_argument_error_names_the_argument(
    tmp_path: Path, argument: str, value: float, var: str
) -> None:
    # README: "An invalid constructor argument is a ValueError that names the
    # setting". The processor's said "spanproof processor setting (OTEL_...)",
    # leaving out the argument the caller wrote.
    with pytest.raises(ValueError, match=rf"processor setting {argument} \({var}\)"):
        EvidenceSpanProcessor(tmp_path, signing_key=signing_key(), **{argument: value})


@pytest.mark.parametrize("block", [1e10, 10**20, float("inf"), float("nan"), -1.0])
def test_a_queue_block_no_wait_can_last_is_an_error(tmp_path: Path, block: float) -> None:
    # Accepted, every on_end() that found the queue full raised OverflowError in its
    # wait, and its span was lost without being counted as dropped.
    with pytest.raises(ValueError, match="OTEL_EXPORTER_SPANPROOF_QUEUE_BLOCK_MS"):
        EvidenceSpanProcessor(tmp_path, signing_key=signing_key(), queue_block=block)


@pytest.mark.parametrize("timeout", [None, 10**13, 10**400, float("inf")],
                         ids=["none", "past_any_wait", "past_any_float", "inf"])
def test_force_flush_without_a_limit_makes_spans_durable(
    tmp_path: Path, timeout: Any
) -> None:
    # BatchSpanProcessor.force_flush takes None; a timeout longer than any wait
    # (threading.TIMEOUT_MAX) raised in the wait (None in the arithmetic before it),
    # and the flush answered False, or raised, with the span journaled after all.
    processor = make_processor(tmp_path)
    traced = Traced(processor)
    try:
        with traced.tracer.start_as_current_span("request"):
            with evidence_span(traced.tracer, "step") as span:
                pass
            assert processor.force_flush(timeout) is True
            assert journaled_span_ids(Path(processor.journal_dir)) == {ids(span)[1]}
    finally:
        processor.shutdown()


def test_spans_ending_where_no_thread_may_start_are_journaled_and_sealed_by_shutdown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    processor = make_processor(tmp_path)
    traced = Traced(processor)
    refuse_new_threads(monkeypatch)
    monkeypatch.setattr(sys, "is_finalizing", lambda: True)  # the interpreter is exiting
    with traced.tracer.start_as_current_span("request"):
        with evidence_span(traced.tracer, "step") as span:
            pass
    assert processor._worker is None  # the span waits in the queue
    processor.shutdown()
    (path,) = bundles(tmp_path)
    report = check_bundle(path, _trust(tmp_path), keep_records=True)
    assert report.verdict is Verdict.OK and report.statement is not None
    assert report.statement.seal_reason == "shutdown"
    assert report.records is not None
    assert [r["span"]["spanId"] for r in report.records] == [ids(span)[1]]
    assert "journal worker" not in caplog.text and "on_end failed" not in caplog.text


def test_without_a_journal_worker_force_flush_journals_and_seals_on_the_calling_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    processor = make_processor(tmp_path)
    traced = Traced(processor)
    with monkeypatch.context() as patch:
        refuse_new_threads(patch)
        with traced.tracer.start_as_current_span("request"):
            with evidence_span(traced.tracer, "first") as first:
                pass
            with evidence_span(traced.tracer, "second") as second:
                pass
        assert processor.force_flush(10_000) is True
    assert caplog.text.count("cannot start the journal worker") == 1  # once, not per span
    (path,) = bundles(tmp_path)
    report = check_bundle(path, _trust(tmp_path), keep_records=True)
    assert report.verdict is Verdict.OK and report.statement is not None
    assert report.statement.seal_reason == "force_flush"
    assert report.records is not None
    assert [r["span"]["spanId"] for r in report.records] == [ids(first)[1], ids(second)[1]]
    with evidence_span(traced.tracer, "later"):  # threads may start again
        pass
    assert processor._worker is not None and processor._worker.is_alive()
    processor.shutdown()
    assert len(bundles(tmp_path)) == 2


def test_force_flush_makes_every_ended_evidence_span_durable_in_journal(tmp_path: Path) -> None:
    processor = make_processor(tmp_path)
    traced = Traced(processor)
    ended = []
    with traced.tracer.start_as_current_span("request"):  # the root stays open
        for i in range(25):
            with evidence_span(traced.tracer, f"step-{i}") as span:
                pass
            ended.append(ids(span)[1])
        with traced.tracer.start_as_current_span("not-evidence") as plain:
            pass
        assert processor.force_flush(10_000) is True
        journaled = journaled_span_ids(Path(processor.journal_dir))
        assert set(ended) <= journaled
        assert ids(plain)[1] not in journaled
        assert bundles(tmp_path) == []  # durable in the journal, not sealed yet
    processor.shutdown()


def test_shutdown_seals_journaled_spans_and_retires_the_journal(tmp_path: Path) -> None:
    processor = make_processor(tmp_path)
    traced = Traced(processor)
    with evidence_span(traced.tracer, "root") as root:
        with evidence_span(traced.tracer, "child"):
            pass
    assert processor.force_flush(10_000)
    processor.shutdown()
    reports = [check_bundle(str(p), _trust(tmp_path), keep_records=True) for p in bundles(tmp_path)]
    assert [r.verdict for r in reports] == [Verdict.OK]
    assert reports[0].statement is not None
    assert reports[0].statement.trace_id == ids(root)[0]
    assert len(reports[0].records or []) == 2
    # Everything sealed: the journal files were deleted.
    assert list(Path(processor.journal_dir).glob("journal-*.log")) == []


def test_bundles_written_in_one_pass_are_retired_with_one_journal_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A journal write is fsynced: one per bundle cost a disk flush per bundle.
    processor = make_processor(tmp_path)
    traced = Traced(processor)
    journal = processor.exporter.journal()  # type: ignore[attr-defined]
    retired: list[list[str]] = []
    real = journal.append_sealed_many

    def counting(items: Any) -> None:
        items = list(items)
        retired.append([trace_id for trace_id, *_ in items])
        real(items)

    monkeypatch.setattr(journal, "append_sealed_many", counting)
    roots = []
    for name in ("first", "second", "third"):
        with evidence_span(traced.tracer, name) as root:
            with evidence_span(traced.tracer, "child"):
                pass
        roots.append(ids(root)[0])
    assert processor.force_flush(10_000)  # seals the three traces in one pass
    assert [sorted(batch) for batch in retired] == [sorted(roots)]
    processor.shutdown()
    assert len(bundles(tmp_path)) == 3
    assert list(Path(processor.journal_dir).glob("journal-*.log")) == []  # all retired


def test_force_flush_after_shutdown_returns_false(tmp_path: Path) -> None:
    processor = make_processor(tmp_path)
    processor.shutdown()
    processor.shutdown()  # idempotent
    assert processor.force_flush(1000) is False


def _fill_queue_without_worker(
    processor: EvidenceSpanProcessor, traced: Traced, monkeypatch: pytest.MonkeyPatch, n: int
) -> str:
    """End *n* evidence spans of one trace while no worker drains the queue."""
    monkeypatch.setattr(processor, "_ensure_worker", lambda: None)
    with traced.tracer.start_as_current_span("request") as root:
        for i in range(n):
            with evidence_span(traced.tracer, f"step-{i}"):
                pass
    monkeypatch.undo()
    return ids(root)[0]


def test_full_queue_drops_are_counted_in_the_trace_bundle_as_incomplete(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    processor = make_processor(tmp_path / "out", queue_size=2, queue_block=0.0)
    traced = Traced(processor)
    with caplog.at_level(logging.ERROR, logger="spanproof.exporter.processor"):
        trace_id = _fill_queue_without_worker(processor, traced, monkeypatch, 6)
    assert sum("queue full" in r.getMessage() for r in caplog.records) == 1  # logged once
    assert processor.force_flush(10_000)
    processor.shutdown()
    [path] = bundles(tmp_path / "out")
    report = check_bundle(str(path), _trust(tmp_path), keep_records=True)
    assert report.verdict is Verdict.INCOMPLETE
    assert report.statement is not None
    assert report.statement.trace_id == trace_id
    assert report.statement.completeness.dropped_spans == 4
    assert any("queue" in note for note in report.statement.completeness.notes)
    assert len(report.records or []) == 2

    key = str(tmp_path / "trust" / "signing.pub")
    strict = spanproof_cli("verify", "--key", key, str(path))
    assert strict.returncode == 1, strict.stdout + strict.stderr
    assert "INCOMPLETE" in strict.stdout
    allowed = spanproof_cli("verify", "--key", key, "--allow-incomplete", str(path))
    assert allowed.returncode == 0, allowed.stdout + allowed.stderr
    assert "Traceback" not in strict.stderr + allowed.stderr


def test_without_a_journal_worker_force_flush_answers_with_the_queue_full(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No thread may start (the interpreter exits, or the process is out of
    # threads): force_flush queued its request behind a full queue that nothing
    # drained, waited out its whole timeout, and answered False.
    processor = make_processor(tmp_path, queue_size=2, queue_block=0.0)
    traced = Traced(processor)
    monkeypatch.setattr(processor, "_ensure_worker", lambda: False)
    with traced.tracer.start_as_current_span("request"):
        for n in range(2):
            with evidence_span(traced.tracer, f"step-{n}"):
                pass
    assert processor._queue.full()
    started = time.monotonic()
    assert processor.force_flush(5_000)
    assert time.monotonic() - started < 4
    assert len(journaled_span_ids(tmp_path / "journal")) == 2
    processor.shutdown()


def test_drops_in_many_traces_are_journaled_with_one_fsync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An overloaded application drops spans of many traces at once: journaling each
    # trace's count with its own fsync slowed the worker most when the queue was full.
    from spanproof.exporter import journal as journal_module

    processor = make_processor(tmp_path, queue_size=1, queue_block=0.0)
    traced = Traced(processor)
    monkeypatch.setattr(processor, "_ensure_worker", lambda: False)
    for n in range(50):
        with traced.tracer.start_as_current_span(f"request-{n}"):
            with evidence_span(traced.tracer, "step"):
                pass
    assert sum(processor._dropped.values()) == 49
    fsyncs: list[int] = []
    real_fsync = journal_module.os.fsync
    monkeypatch.setattr(journal_module.os, "fsync",
                        lambda fd: fsyncs.append(fd) or real_fsync(fd))
    assert processor.force_flush(10_000)  # journals the queued span and 49 counts
    assert len(fsyncs) <= 3  # spans, counts, and the file's first directory sync
    processor.shutdown()


def test_full_queue_drop_counts_survive_a_crash_in_the_journal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    processor = make_processor(tmp_path, queue_size=1, queue_block=0.0)
    traced = Traced(processor)
    trace_id = _fill_queue_without_worker(processor, traced, monkeypatch, 3)
    assert processor.force_flush(10_000)
    # Simulate a crash: the journal is released without sealing (no shutdown).
    journal = processor.exporter._journal  # type: ignore[attr-defined]
    journal.forget_after_fork()
    recovering = make_processor(tmp_path)
    try:
        [path] = [Path(p) for p in recovering.recovered]
        report = check_bundle(str(path), _trust(tmp_path), allow_incomplete=True)
        assert report.verdict is Verdict.OK
        assert report.statement is not None
        assert report.statement.trace_id == trace_id
        assert report.statement.seal_reason == "recovered"
        assert report.statement.completeness.dropped_spans == 2
    finally:
        recovering.shutdown()


@pytest.mark.parametrize(
    "bad_value, note",
    [
        ("x" * 5000, "rejected"),  # over max_value_bytes: the normalizer rejects it
        ("report-\udcff.txt", "rejected"),  # a lone surrogate: the journal cannot encode it
    ],
    ids=["oversized_value", "lone_surrogate"],
)
def test_rejected_spans_survive_a_crash_in_the_journal(
    tmp_path: Path, bad_value: str, note: str
) -> None:
    # force_flush() answering True makes every evidence span that ended before it
    # durable, and a span that cannot be certified is declared: after a crash the
    # recovered bundle must still say so.
    processor = make_processor(tmp_path, max_value_bytes=1024)
    traced = Traced(processor)
    with traced.tracer.start_as_current_span("request"):  # still open at the crash
        with evidence_span(traced.tracer, "good") as good:
            pass
        with evidence_span(traced.tracer, "bad") as bad:
            bad.set_attribute("file.path", bad_value)
        assert processor.force_flush(10_000)
        journal = processor.exporter._journal  # type: ignore[attr-defined]
        journal.forget_after_fork()  # a crash: the journal as a killed process leaves it
    recovering = make_processor(tmp_path)
    try:
        [path] = [Path(p) for p in recovering.recovered]
        report = check_bundle(str(path), _trust(tmp_path), keep_records=True)
        assert report.verdict is Verdict.INCOMPLETE, report.reason
        assert report.statement is not None
        assert report.statement.trace_id == ids(good)[0]
        assert report.statement.completeness.rejected_spans == 1
        assert any(note in n for n in report.statement.completeness.notes)
        assert [r["span"]["spanId"] for r in report.records or []] == [ids(good)[1]]
    finally:
        recovering.shutdown()


def test_a_span_longer_than_a_journal_entry_may_be_is_declared_after_a_crash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Journaled and acknowledged, an entry longer than replay would read (256 MiB,
    # made small here) was taken for a torn tail at the next start: the span, which
    # no bundle line can hold either, was lost without being declared rejected.
    from spanproof.exporter import journal as journal_module

    monkeypatch.setattr(journal_module, "_MAX_ENTRY", 1500)
    processor = make_processor(tmp_path)
    traced = Traced(processor)
    with traced.tracer.start_as_current_span("request"):  # still open at the crash
        with evidence_span(traced.tracer, "good") as good:
            pass
        with evidence_span(traced.tracer, "long") as long:
            long.set_attribute("gen_ai.prompt", "y" * 1000)
        assert processor.force_flush(10_000)
        journal = processor.exporter._journal  # type: ignore[attr-defined]
        journal.forget_after_fork()  # a crash: the journal as a killed process leaves it
    recovering = make_processor(tmp_path)
    try:
        [path] = [Path(p) for p in recovering.recovered]
        report = check_bundle(str(path), _trust(tmp_path), keep_records=True,
                              allow_incomplete=True)
        assert report.statement is not None
        assert report.statement.completeness.rejected_spans == 1
        assert [r["span"]["spanId"] for r in report.records or []] == [ids(good)[1]]
        assert ids(long)[1] not in journaled_span_ids(tmp_path / "journal")
    finally:
        recovering.shutdown()


def test_a_rejection_declared_in_a_sealed_segment_is_not_declared_again_after_a_crash(
    tmp_path: Path,
) -> None:
    processor = make_processor(tmp_path, max_value_bytes=1024, max_records=2)
    traced = Traced(processor)
    with traced.tracer.start_as_current_span("request"):  # still open at the crash
        with evidence_span(traced.tracer, "bad") as bad:
            bad.set_attribute("file.path", "x" * 5000)
        for name in ("first", "second"):  # segment 0 is full: sealed, with the rejection
            with evidence_span(traced.tracer, name):
                pass
        assert processor.force_flush(10_000)
        with evidence_span(traced.tracer, "third"):
            pass
        assert processor.force_flush(10_000)
        journal = processor.exporter._journal  # type: ignore[attr-defined]
        journal.forget_after_fork()  # a crash before the third span's segment is sealed
    recovering = make_processor(tmp_path)
    try:
        assert len(recovering.recovered) == 1
        reports = sorted((check_bundle(str(p), _trust(tmp_path), keep_records=True)
                          for p in bundles(tmp_path)),
                         key=lambda r: r.statement.segment_index if r.statement else -1)
        assert [r.statement.completeness.rejected_spans for r in reports
                if r.statement] == [1, 0]
        assert [r.statement.seal_reason for r in reports if r.statement][1] == "recovered"
    finally:
        recovering.shutdown()



def test_unsampled_evidence_spans_are_counted_not_certified(tmp_path: Path) -> None:
    processor = make_processor(tmp_path / "out")
    traced = Traced(processor, sampler=RecordOnly())
    with traced.tracer.start_as_current_span("request") as root:
        for i in range(3):
            with evidence_span(traced.tracer, f"step-{i}"):
                pass
        with traced.tracer.start_as_current_span("not-evidence"):
            pass
    assert processor.force_flush(10_000)
    processor.shutdown()
    [path] = bundles(tmp_path / "out")
    report = check_bundle(str(path), _trust(tmp_path), keep_records=True)
    assert report.verdict is Verdict.INCOMPLETE
    assert report.statement is not None
    assert report.statement.trace_id == ids(root)[0]
    assert report.statement.completeness.unsampled_spans == 3
    assert report.statement.completeness.dropped_spans == 0
    assert list(report.records or []) == []


def test_journal_records_unsampled_counts_for_recovery(tmp_path: Path) -> None:
    processor = make_processor(tmp_path)
    traced = Traced(processor, sampler=RecordOnly())
    with evidence_span(traced.tracer, "only"):
        pass
    assert processor.force_flush(10_000)
    entries = []
    for log in Path(processor.journal_dir).glob("journal-*.log"):
        data = log.read_bytes()
        pos = 0
        while pos + 8 <= len(data):
            length = int.from_bytes(data[pos:pos + 4], "big")
            entries.append(json.loads(data[pos + 8:pos + 8 + length]))
            pos += 8 + length
    # After the key the file names first (recovery under a rotated key); the span
    # was its trace's root, so the flush sealed the trace too.
    assert [e["t"] for e in entries] == ["key", "unsampled", "sealed"]
    assert entries[1]["n"] == "1"
    processor.shutdown()


def test_processor_seals_in_its_own_process_whatever_the_sealing_process_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The processor's journal is its hand-off; its flush must reach its own sealer.
    monkeypatch.setenv("OTEL_EXPORTER_SPANPROOF_SEALING_PROCESS", "true")
    processor = make_processor(tmp_path)
    assert processor.exporter._remote is None
    traced = Traced(processor)
    with evidence_span(traced.tracer, "root") as root:
        pass
    assert processor.force_flush(10_000)
    reports = [check_bundle(str(p), _trust(tmp_path)) for p in bundles(tmp_path)]
    assert [r.verdict for r in reports] == [Verdict.OK]
    assert reports[0].statement is not None
    assert reports[0].statement.trace_id == ids(root)[0]
    processor.shutdown()


def test_failed_write_keeps_the_journal_keys_of_bundles_still_being_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two bundles go to the writer together; the first write fails.  Forgetting the
    # keys of bundles that gave up must spare the second, still in flight, or its
    # spans would stay in the journal and be sealed a second time at the next start.
    from spanproof.exporter.sinks import DirectorySink

    real_write_many = DirectorySink.write_many
    calls: list[str] = []

    def first_write_fails(self: DirectorySink, group: Any) -> list[Any]:
        first_call = not calls
        calls.extend(b.file_name for b in group)
        if first_call:
            return [OSError(28, "No space left on device"), *real_write_many(self, group[1:])]
        return real_write_many(self, group)  # type: ignore[return-value]

    monkeypatch.setattr(DirectorySink, "write_many", first_write_fails)
    processor = make_processor(tmp_path)
    traced = Traced(processor)
    for name in ("first", "second"):
        with evidence_span(traced.tracer, name):
            pass
    processor.force_flush(10_000)  # seals both at once: one write fails, one succeeds
    processor.shutdown()  # retries the failed one
    assert len(calls) == 3
    reports = [check_bundle(str(p), _trust(tmp_path)) for p in bundles(tmp_path)]
    assert [r.verdict for r in reports] == [Verdict.OK, Verdict.OK]
    # Every journaled span was retired: nothing is left to recover at the next start.
    assert list(Path(processor.journal_dir).glob("journal-*.log")) == []


def test_bundle_whose_journal_retire_failed_is_not_sealed_again_at_the_next_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The bundle is written, but the journal cannot record it as sealed (disk
    # trouble): its spans stay journaled, and the next start recovers them. It must
    # find the bundle rather than seal the same segment twice (the verifier fails a
    # trace whose segment appears twice).
    processor = make_processor(tmp_path)
    traced = Traced(processor)
    journal = processor.exporter.journal()  # type: ignore[attr-defined]

    def cannot_retire(*args: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(journal, "append_sealed_many", cannot_retire)
    with evidence_span(traced.tracer, "root"):
        with evidence_span(traced.tracer, "child"):
            pass
    assert processor.force_flush(10_000)
    processor.shutdown()
    [written] = bundles(tmp_path)
    assert list(Path(processor.journal_dir).glob("journal-*.log"))  # spans still journaled
    recovering = make_processor(tmp_path)
    try:
        assert recovering.recovered == []
    finally:
        recovering.shutdown()
    assert bundles(tmp_path) == [written]
    result = spanproof_cli("verify", "--key", str(write_public_key(tmp_path / "trust")),
                           str(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "appears twice" not in result.stdout


def test_a_failed_journal_retire_is_retried_by_the_next_pass(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Left unretired, the entries made the next start seal the spans again (or, had
    # the bundle gone, re-declare its counts); they are retried in order instead.
    processor = make_processor(tmp_path)
    traced = Traced(processor)
    journal = processor.exporter.journal()  # type: ignore[attr-defined]
    real = journal._write
    disk = {"failing": True}

    def write(data: bytes) -> None:
        if disk["failing"] and b'{"t":"sealed"' in data[:32]:
            raise OSError(5, "Input/output error")
        real(data)

    monkeypatch.setattr(journal, "_write", write)
    with evidence_span(traced.tracer, "first"):
        pass
    assert processor.force_flush(10_000)
    assert journaled_span_ids(Path(processor.journal_dir))  # not retired
    disk["failing"] = False
    with evidence_span(traced.tracer, "second"):
        pass
    assert processor.force_flush(10_000)  # the next pass retires both
    assert journaled_span_ids(Path(processor.journal_dir)) == set()
    processor.shutdown()
    assert len(bundles(tmp_path)) == 2


def _sealed(tmp_path: Path) -> dict[str, str]:
    """Trace id -> seal reason of every bundle, each verified."""
    out = {}
    for path in bundles(tmp_path):
        report = check_bundle(str(path), _trust(tmp_path))
        assert report.verdict is Verdict.OK, report.reason
        assert report.statement is not None
        out[report.statement.trace_id] = report.statement.seal_reason
    return out


def _open_trace_step(traced: Traced, name: str) -> Any:
    """An evidence span ended under a root that is not: journaled, never due."""
    from opentelemetry import trace

    root = traced.tracer.start_span(f"{name}-root")
    with traced.tracer.start_as_current_span(
            name, context=trace.set_span_in_context(root),
            attributes={"gen_ai.operation.name": "chat"}) as span:
        pass
    return span


def test_the_journal_of_a_forked_worker_that_exited_without_shutdown_is_sealed_at_shutdown(
    tmp_path: Path,
) -> None:
    # multiprocessing's forked workers leave through os._exit: no shutdown, their
    # journals orphaned.  The parent sealed them only when a process started again
    # in the directory, which a long-lived parent (a gunicorn master) never does.
    import os
    import signal

    processor = make_processor(tmp_path)
    traced = Traced(processor)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the forked worker
        signal.alarm(30)
        _open_trace_step(traced, "in-worker")
        os._exit(0 if processor.force_flush(10_000) else 1)  # journaled, then gone
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    mine = _open_trace_step(traced, "in-parent")
    assert processor.force_flush(10_000)
    assert _sealed(tmp_path) == {}
    processor.shutdown()
    sealed = _sealed(tmp_path)
    assert sealed.pop(ids(mine)[0]) == "shutdown"
    assert list(sealed.values()) == ["recovered"]  # the worker's trace
    assert not list((tmp_path / "journal").glob("journal-*.log"))


def test_the_process_that_built_the_processor_seals_dead_workers_journals_while_it_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import time

    from spanproof.exporter import processor as processor_module

    monkeypatch.setattr(processor_module, "ORPHAN_CHECK_SECONDS", 0.1)
    processor = make_processor(tmp_path)
    mine = _open_trace_step(Traced(processor), "pending-here")
    assert processor.force_flush(10_000)  # journaled, not sealed (its root is open)
    dead = make_processor(tmp_path, recover=False)  # a worker beside it ...
    theirs = _open_trace_step(Traced(dead), "in-dead-worker")
    assert dead.force_flush(10_000)
    dead.exporter._journal.forget_after_fork()  # type: ignore[attr-defined]  # ... killed
    deadline = time.monotonic() + 20
    while not bundles(tmp_path) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _sealed(tmp_path) == {ids(theirs)[0]: "recovered"}  # this process's own: not
    processor.shutdown()
    assert _sealed(tmp_path) == {ids(theirs)[0]: "recovered", ids(mine)[0]: "shutdown"}


def test_the_spans_of_a_segment_that_could_not_be_sealed_leave_the_journal_with_the_next(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Their journal entries were never retired: the journal kept their files (and a
    # descriptor each) for as long as the process lived.
    from spanproof.exporter import _exporter as exporter_module

    real_seal = exporter_module.seal
    calls: list[int] = []

    def failing_once(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("signing failed")
        return real_seal(*args, **kwargs)

    monkeypatch.setattr(exporter_module, "seal", failing_once)
    processor = make_processor(tmp_path)
    traced = Traced(processor)
    with evidence_span(traced.tracer, "lost") as first:
        pass
    assert processor.force_flush(10_000)  # its segment fails: declared in the next
    with traced.tracer.start_as_current_span("root", context=trace_context(first)):
        with evidence_span(traced.tracer, "later"):
            pass
    assert processor.force_flush(10_000)
    assert journaled_span_ids(tmp_path / "journal") == set()
    # The loss is declared in the trace's next bundle, which is due at once: sealed
    # alone when the sealer gets to it before the later spans arrive (a busy
    # machine), else with them.
    reports = [check_bundle(str(path), _trust(tmp_path), allow_incomplete=True,
                            keep_records=True) for path in bundles(tmp_path)]
    assert [r.verdict for r in reports] == [Verdict.OK] * len(reports)
    assert sum(r.statement.completeness.dropped_spans for r in reports if r.statement) == 1
    assert [record["span"]["name"] for r in reports for record in r.records or ()] == [
        "later"]
    processor.shutdown()


def trace_context(span: Any) -> Any:
    """A context whose parent is a remote span of *span*'s trace."""
    from opentelemetry import trace
    from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

    ctx = span.get_span_context()
    parent = SpanContext(ctx.trace_id, 0x1234, is_remote=True,
                         trace_flags=TraceFlags(TraceFlags.SAMPLED))
    return trace.set_span_in_context(NonRecordingSpan(parent))


def test_shutdown_and_exit_from_a_signal_handler_mid_seal_certify_each_span_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The segment being sealed when the handler's sys.exit() landed was sealed by the
    # shutdown that followed, but its spans' journal entries were never retired (and
    # the journal never closed): the next start certified them a second time.
    from spanproof.exporter import _exporter as exporter_module

    real_seal = exporter_module.seal
    processor = make_processor(tmp_path)
    traced = Traced(processor)
    interrupted: list[int] = []

    def seal_with_a_signal(*args: Any, **kwargs: Any) -> Any:
        if not interrupted:
            interrupted.append(1)
            processor.shutdown()  # as a SIGTERM handler would, then sys.exit()
            raise SystemExit(0)
        return real_seal(*args, **kwargs)

    monkeypatch.setattr(exporter_module, "seal", seal_with_a_signal)
    with evidence_span(traced.tracer, "step"):
        pass
    with pytest.raises(SystemExit):
        processor.force_flush(10_000)
    assert len(bundles(tmp_path)) == 1
    assert journaled_span_ids(tmp_path / "journal") == set()
    assert not list((tmp_path / "journal").glob("journal-*.log"))  # closed, all retired
    again = make_processor(tmp_path)  # the next start
    assert again.recovered == []
    again.shutdown()
    assert len(bundles(tmp_path)) == 1


def test_with_a_custom_sink_a_failed_write_does_not_have_the_next_start_certify_again(
    tmp_path: Path,
) -> None:
    # A sink other than DirectorySink is written one bundle at a time: when the first
    # write of a pass failed, the journal keys of the pass's other bundles, not yet
    # written, were forgotten, so their writes retired nothing and the next start
    # certified their spans a second time.
    import time

    from spanproof.exporter.sinks import DirectorySink

    class FailingOnce(DirectorySink):
        failed = False

        def write(self, bundle: Any) -> str:
            if not FailingOnce.failed:
                FailingOnce.failed = True
                raise OSError(5, "Input/output error")
            return super().write(bundle)

    processor = make_processor(tmp_path, sink=FailingOnce(tmp_path), seal_grace=0.0)
    traced = Traced(processor)
    for name in ("a", "b", "c"):
        with evidence_span(traced.tracer, name):
            pass
    processor.force_flush(10_000)  # the first write fails, the other two succeed
    deadline = time.monotonic() + 10
    while len(bundles(tmp_path)) < 3 and time.monotonic() < deadline:
        processor.force_flush(10_000)  # the failed one is retried after a second
        time.sleep(0.2)
    processor.shutdown()
    assert len(bundles(tmp_path)) == 3
    again = make_processor(tmp_path)
    assert again.recovered == []
    again.shutdown()
    assert len(bundles(tmp_path)) == 3


@pytest.mark.parametrize("then", ["return", "exit"])
def test_shutdown_from_a_signal_handler_during_on_end_seals_when_on_end_returns(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, then: str
) -> None:
    # on_end() runs on the thread that ends a span; a SIGTERM handler that shuts the
    # provider down may interrupt it while it holds the queue's lock, which
    # shutdown() then waited for forever (queuing its stop).
    import queue as queue_module
    import threading
    import time

    processor = make_processor(tmp_path)
    took: list[float] = []

    class Interrupted(queue_module.Queue):  # type: ignore[type-arg]
        def _put(self, item: Any) -> None:  # under the queue's lock
            super()._put(item)
            if not took:
                began = time.monotonic()
                processor.shutdown()
                took.append(time.monotonic() - began)
                if then == "exit":
                    raise SystemExit(0)

    processor._queue = Interrupted(processor._queue.maxsize)
    traced = Traced(processor)
    ended: list[object] = []

    def end_a_span() -> None:
        try:
            with evidence_span(traced.tracer, "interrupted") as span:
                ended.append(ids(span)[0])
        except SystemExit:
            ended.append("exit")

    with caplog.at_level(logging.WARNING):
        ending = threading.Thread(target=end_a_span, daemon=True)
        ending.start()
        ending.join(20)
        assert not ending.is_alive(), "shutdown() inside on_end() deadlocked"
    assert took[0] < 1.0
    assert "shutdown() called inside an on_end() of its own thread" in caplog.text
    assert processor._shutdown
    assert journaled_span_ids(tmp_path / "journal") == set()
    assert _sealed(tmp_path) == {ended[0]: "shutdown"}
    assert ended[1:] == (["exit"] if then == "exit" else [])


def test_a_loss_of_no_trace_is_not_retired_from_the_journal_counts_of_the_trace_declaring_it(
    tmp_path: Path,
) -> None:
    # A rejected span of no trace (a zero trace id) is declared in the next bundle of
    # any trace; the journal's sealed entry for that bundle took the count off the
    # trace's own, hiding a rejection of the trace journaled meanwhile after a crash.
    from opentelemetry.sdk.trace.id_generator import IdGenerator, RandomIdGenerator

    class FirstTraceZero(IdGenerator):
        def __init__(self) -> None:
            self.random, self.traces = RandomIdGenerator(), 0

        def generate_trace_id(self) -> int:
            self.traces += 1
            return 0 if self.traces == 1 else self.random.generate_trace_id()

        def generate_span_id(self) -> int:
            return self.random.generate_span_id()

    processor = make_processor(tmp_path)
    traced = Traced(processor, id_generator=FirstTraceZero())
    with evidence_span(traced.tracer, "nameless"):
        pass
    with evidence_span(traced.tracer, "root"):
        pass
    assert processor.force_flush(10_000)
    journal = processor.exporter._journal  # type: ignore[attr-defined]
    sealed = [entry for path in sorted(Path(journal.directory).glob("journal-*.log"))
              for entry in _read_entries(str(path)) if entry["t"] == "sealed"]
    processor.shutdown()
    [report] = [check_bundle(str(p), _trust(tmp_path)) for p in bundles(tmp_path)]
    assert report.statement is not None
    assert report.statement.completeness.rejected_spans == 1  # the nameless span's
    assert [entry["declared"] for entry in sealed] == [{}]


def test_a_str_enum_attribute_key_is_journaled_so_a_crash_loses_nothing(
    tmp_path: Path,
) -> None:
    # The journal's encoder refused a str subclass key and counted the span as
    # rejected: after a crash, the next start declared rejected a span it could
    # have certified.
    import enum

    from opentelemetry import trace

    class Attr(str, enum.Enum):
        DECISION = "fraud.decision"

    dead = make_processor(tmp_path, recover=False)
    traced = Traced(dead)
    root = traced.tracer.start_span("open-root")
    with traced.tracer.start_as_current_span(
            "check", context=trace.set_span_in_context(root),
            attributes={"gen_ai.operation.name": "chat", Attr.DECISION: "deny"}) as span:
        pass
    assert dead.force_flush(10_000)  # journaled, not sealed (its root is open)
    dead.exporter._journal.forget_after_fork()  # type: ignore[attr-defined]  # killed
    make_processor(tmp_path).shutdown()  # the next start recovers the journal
    (path,) = bundles(tmp_path)
    report = check_bundle(str(path), _trust(tmp_path), keep_records=True)
    assert report.verdict is Verdict.OK, report.reason
    assert report.statement is not None and report.statement.seal_reason == "recovered"
    assert report.records is not None
    ((record_span, attributes),) = [(r["span"]["spanId"], r["span"]["attributes"])
                                    for r in report.records]
    assert record_span == ids(span)[1]
    assert attributes["fraud.decision"] == {"stringValue": "deny"}
