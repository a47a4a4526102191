"""Faults and hostile input: an unwritable output directory, two processes sharing one,
span values that try to steer file names, and nesting deeper than any parser allows."""

from __future__ import annotations

import base64
import errno
import json
import logging
import os
import re
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from reliability_support import (
    Traced,
    bundles,
    evidence_span,
    ids,
    make_processor,
    signing_key,
    spanproof_cli,
    write_public_key,
)

from spanproof.exporter import EvidenceSpanProcessor, SpanproofSpanExporter
from spanproof.exporter import _exporter as exporter_module
from spanproof.exporter import sinks as sinks_module
from spanproof.exporter.otlp_server import HttpServer
from spanproof.exporter.receiver import Receiver
from spanproof.verifier import TrustRoot, Verdict, check_bundle
from spanproof.verifier.statement import Statement
from spanproof.verifier.values import encode_double

BUNDLE_NAME = re.compile(r"[0-9a-f]{32}-[0-9]{4}-[0-9a-f]{16}(\.[0-9]+)?\.spanproof\.json")


class _Disk:
    """Makes ``os.open`` fail below one directory with a chosen errno (root ignores
    file modes, so a read-only directory is simulated where the sink opens files)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, directory: Path) -> None:
        self.failure: int | None = None
        real_open = os.open
        prefix = str(directory)

        def fake_open(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
            if self.failure is not None and str(path).startswith(prefix):
                raise OSError(self.failure, os.strerror(self.failure), str(path))
            return real_open(path, flags, *args, **kwargs)

        monkeypatch.setattr(sinks_module.os, "open", fake_open)


def _trace(exporter: SpanproofSpanExporter, name: str, service: str = "faults-svc") -> None:
    provider = TracerProvider(resource=Resource.create({"service.name": service}),
                              shutdown_on_exit=False)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("tests.faults")
    with tracer.start_as_current_span(f"{name}-root"):
        with tracer.start_as_current_span(name, attributes={"gen_ai.operation.name": "chat"}):
            pass


def _verify(out: Path, keys: Path) -> subprocess.CompletedProcess[str]:
    return spanproof_cli("verify", "--key", str(write_public_key(keys)), str(out))


def test_unwritable_output_is_logged_once_per_condition_and_resumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    out = tmp_path / "out"
    disk = _Disk(monkeypatch, out)
    exporter = SpanproofSpanExporter(out, signing_key=signing_key(), seal_grace=0.0)
    caplog.set_level(logging.DEBUG, logger="spanproof")
    disk.failure = errno.EROFS
    for n in range(3):
        _trace(exporter, f"read-only-{n}")  # the app keeps running: export never raises
        assert exporter.force_flush() is False
    disk.failure = errno.ENOSPC
    _trace(exporter, "disk-full")
    assert exporter.force_flush() is False
    assert bundles(out) == []

    errors = [r.getMessage() for r in caplog.records
              if r.levelno >= logging.ERROR and "cannot write bundles" in r.getMessage()]
    assert len(errors) == 2, errors  # one per condition, not one per bundle
    assert "Read-only file system" in errors[0] and "No space left" in errors[1]

    disk.failure = None
    assert exporter.force_flush() is True
    exporter.shutdown()
    assert any("can be written again" in r.getMessage() for r in caplog.records)
    assert len(bundles(out)) == 4  # nothing kept in memory was lost
    result = _verify(out, tmp_path / "keys")
    assert result.returncode == 0, result.stdout + result.stderr


def _statements(out: Path, keys: Path) -> list[Statement]:
    trust = TrustRoot.from_pem_files([str(write_public_key(keys))])
    found = []
    for path in bundles(out):
        report = check_bundle(str(path), trust, allow_incomplete=True)
        assert report.verdict is Verdict.OK, (path.name, report)
        assert report.statement is not None
        found.append(report.statement)
    return found


def _discarding_exporter(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, unwritten: int
) -> tuple[Path, _Disk, SpanproofSpanExporter]:
    """An exporter that keeps at most *unwritten* bundles for a failing sink: its
    output directory, the disk (writing works until told otherwise), the exporter."""
    out = tmp_path / "out"
    disk = _Disk(monkeypatch, out)
    monkeypatch.setattr(exporter_module, "_MAX_UNWRITTEN", unwritten)
    return out, disk, SpanproofSpanExporter(out, signing_key=signing_key(), seal_grace=0.0)


def _fail_writes_and_discard(
    exporter: SpanproofSpanExporter, disk: _Disk, traces: int, digests: dict[str, str]
) -> list[str]:
    """Certify *traces* traces while every write fails; return the names of the
    bundles sealed, in order (and their statement digests in *digests*)."""
    sealed: list[str] = []
    real_seal = exporter._seal

    def recording_seal(job: Any) -> Any:
        bundle = real_seal(job)
        sealed.append(bundle.file_name)
        digests[bundle.file_name] = bundle.statement_digest
        return bundle

    exporter._seal = recording_seal  # type: ignore[method-assign]
    disk.failure = errno.ENOSPC
    for n in range(traces):
        _trace(exporter, f"disk-full-{n}")
        assert exporter.force_flush() is False
    return sealed


def test_bundle_discarded_for_a_failing_sink_is_declared_by_its_trace_next_bundle(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    out, disk, exporter = _discarding_exporter(tmp_path, monkeypatch, 3)
    digests: dict[str, str] = {}
    sealed = _fail_writes_and_discard(exporter, disk, 5, digests)
    assert len(sealed) == 5 and bundles(out) == []
    discarded = [r.getMessage() for r in caplog.records if "json discarded:" in r.getMessage()]
    assert len(discarded) == 2 and sealed[0] in discarded[0] and sealed[1] in discarded[1]

    disk.failure = None
    assert exporter.force_flush() is True
    exporter.shutdown()
    statements = _statements(out, tmp_path / "keys")
    names = {f"{s.trace_id}-{s.segment_index:04d}-{s.producer.instance}.spanproof.json"
             for s in statements}
    assert set(sealed[2:]) <= names and not set(sealed[:2]) & names
    per_trace = {s.trace_id: s for s in statements if s.segment_index == 0}
    spans_per_trace = {s.record_count for s in per_trace.values()}
    assert len(spans_per_trace) == 1  # every trace has the same shape
    [spans] = spans_per_trace
    declarations = [s for s in statements if s.segment_index == 1]
    assert sorted(s.trace_id for s in declarations) == sorted(n[:32] for n in sealed[:2])
    lost = {name[:32]: digests[name] for name in sealed[:2]}
    for declaration in declarations:
        # The lost segment's spans, declared by an empty segment that continues it.
        assert declaration.record_count == 0
        assert declaration.completeness.dropped_spans == spans
        [note] = declaration.completeness.notes
        assert "1 sealed bundle(s) of it were discarded unwritten" in note
        assert declaration.previous_statement == lost[declaration.trace_id]
    assert all(s.completeness.dropped_spans == 0 for s in per_trace.values())
    result = _verify(out, tmp_path / "keys")
    assert result.returncode == 1, result.stdout + result.stderr  # declared losses
    lines = result.stdout.splitlines()
    verdicts = sorted(line.split()[0] for line in lines if not line.startswith("OK trace "))
    assert verdicts == ["INCOMPLETE"] * 2 + ["OK"] * 3, result.stdout
    assert sum("notes=1;" in line for line in lines) == 2  # the two declarations' notes
    # The discarded segment 0 of each declaring trace is said not to be present.
    assert sorted(line.split()[2] for line in lines if line.startswith("OK trace ")
                  and line.endswith("segment 1 forms one chain (segment 0 not present)")) \
        == sorted(d.trace_id for d in declarations), result.stdout


def test_bundles_kept_for_a_failing_sink_are_bounded_in_bytes_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Only their number was bounded (1,024): bundles of up to 64 MiB and more, kept
    # while the disk was full, grew the process until it was killed, losing all.
    out, disk, exporter = _discarding_exporter(tmp_path, monkeypatch, 1024)
    monkeypatch.setattr(exporter_module, "_MAX_UNWRITTEN_BYTES", 1)  # the newest only
    sealed = _fail_writes_and_discard(exporter, disk, 4, {})
    assert len(exporter._unwritten) == 1
    discarded = [r.getMessage() for r in caplog.records if "json discarded:" in r.getMessage()]
    assert [name in message for name, message in zip(sealed[:3], discarded, strict=True)] \
        == [True] * 3
    assert "or 256 MiB of them" in discarded[0]
    disk.failure = None
    assert exporter.force_flush() is True
    exporter.shutdown()
    statements = _statements(out, tmp_path / "keys")
    declarations = [s for s in statements if s.segment_index == 1]
    assert sorted(s.trace_id for s in declarations) == sorted(n[:32] for n in sealed[:3])
    assert all("or 256 MiB of them, waited for a failing sink" in s.completeness.notes[0]
               for s in declarations)


def test_bundles_kept_for_a_failing_sink_count_their_disclosures_in_the_bound(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # With redaction the values are in the bundles' disclosures, not in their bytes:
    # the bound counted the bytes alone, and kept every bundle of large prompts.
    out = tmp_path / "out"
    disk = _Disk(monkeypatch, out)
    monkeypatch.setattr(exporter_module, "_MAX_UNWRITTEN_BYTES", 300_000)
    exporter = SpanproofSpanExporter(out, signing_key=signing_key(), seal_grace=0.0,
                                     redact_attributes=["gen_ai.prompt"])
    provider = TracerProvider(resource=Resource.create({"service.name": "faults-svc"}),
                              shutdown_on_exit=False)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("tests.faults")
    disk.failure = errno.ENOSPC
    for n in range(3):  # each ~200 kB of committed prompt, a few kB of bundle
        with tracer.start_as_current_span(f"ask-{n}", attributes={
                "gen_ai.operation.name": "chat", "gen_ai.prompt": f"{n}" * 200_000}):
            pass
        assert exporter.force_flush() is False
    assert len(exporter._unwritten) == 1
    assert sum(len(b.data) for b in exporter._unwritten) < 20_000  # the values are not there
    disk.failure = None
    assert exporter.force_flush() is True
    exporter.shutdown()
    declared = [s for s in _statements(out, tmp_path / "keys") if s.segment_index == 1]
    assert len(declared) == 2 and all(s.completeness.dropped_spans == 1 for s in declared)


def test_discarded_bundle_losses_beyond_the_remembered_traces_go_to_the_next_bundle(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(exporter_module, "_MAX_DISCARDED_TRACES", 1)
    out, disk, exporter = _discarding_exporter(tmp_path, monkeypatch, 2)
    sealed = _fail_writes_and_discard(exporter, disk, 5, {})

    disk.failure = None
    assert exporter.force_flush() is True
    exporter.shutdown()
    statements = _statements(out, tmp_path / "keys")
    spans = max(s.record_count for s in statements)
    # Three bundles were discarded: the trace of the last one is remembered and gets a
    # declaration of its own, which also counts the two before it (their traces are
    # not remembered) as the first bundle sealed after them.
    assert len(statements) == 3 and len(sealed) == 6  # five traces, one declaration
    assert sorted(s.trace_id for s in statements) == sorted(n[:32] for n in sealed[2:5])
    [named] = [s for s in statements if s.trace_id == sealed[2][:32]]
    assert sealed[5] == sealed[2][:32] + "-0001" + sealed[2][37:]
    assert named.record_count == 0 and named.segment_index == 1
    assert named.completeness.dropped_spans == 3 * spans
    notes = named.completeness.notes
    assert len(notes) == 2 and "discarded unwritten" in notes[0]
    assert notes[1].startswith(f"{2 * spans} evidence span(s) of other traces")
    assert sum(s.completeness.dropped_spans for s in statements) == 3 * spans


def test_shutdown_with_the_sink_still_failing_reports_the_undeclared_discarded_spans(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    out, disk, exporter = _discarding_exporter(tmp_path, monkeypatch, 2)
    _fail_writes_and_discard(exporter, disk, 4, {})
    exporter.shutdown(timeout_millis=2000)
    assert bundles(out) == []
    assert ("shutdown incomplete: 2 sealed bundle(s) not written, 0 still being written, "
            "0 trace(s) not sealed, 2 span(s) of discarded bundles not declared") in caplog.text


def _processor_discarding(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
    failing: Path, seal_grace: float = 0.0,
) -> tuple[EvidenceSpanProcessor, list[str], list[str]]:
    """An EvidenceSpanProcessor on ``tmp_path/out`` (journal ``tmp_path/journal``)
    that certifies four traces while writes below *failing* fail, keeping at most
    two bundles for the sink; the disk then works again.  Returns the processor,
    the trace ids, and the messages that logged the two discarded bundles."""
    disk = _Disk(monkeypatch, failing)
    monkeypatch.setattr(exporter_module, "_MAX_UNWRITTEN", 2)
    processor = make_processor(tmp_path / "out", journal_dir=tmp_path / "journal",
                               seal_grace=seal_grace)
    traced = Traced(processor)
    disk.failure = errno.ENOSPC
    trace_ids = []
    for n in range(4):
        with traced.tracer.start_as_current_span("request") as root:
            with evidence_span(traced.tracer, f"step-{n}"):
                pass
        trace_ids.append(ids(root)[0])
        processor.force_flush(10_000)  # True when its spans are journaled
    discarded = [r.getMessage() for r in caplog.records if "json discarded:" in r.getMessage()]
    disk.failure = None
    return processor, trace_ids, discarded


def test_processor_bundle_discarded_for_a_failing_sink_is_sealed_from_its_journal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    out, journal = tmp_path / "out", tmp_path / "journal"
    processor, trace_ids, discarded = _processor_discarding(tmp_path, monkeypatch, caplog, out)
    assert len(discarded) == 2 and all("stay in the journal" in m for m in discarded)
    assert processor.force_flush(10_000) is True
    processor.shutdown()
    # The two written bundles, and nothing declared: the discarded bundles' spans are
    # still journaled, and the next start seals them.
    assert sorted(path.name[:32] for path in bundles(out)) == sorted(trace_ids[2:])
    recovering = make_processor(out, journal_dir=journal)
    recovering.shutdown()
    assert sorted(Path(p).name[:32] for p in recovering.recovered) == sorted(trace_ids[:2])
    statements = _statements(out, tmp_path / "keys")
    assert sorted(s.trace_id for s in statements) == sorted(trace_ids)  # each once
    for statement in statements:
        assert (statement.segment_index, statement.record_count) == (0, 1)
        assert statement.completeness.dropped_spans == 0
    # Nothing crashed: the recovered bundles' signed note does not say it did.
    recovered = [s for s in statements if s.seal_reason == "recovered"]
    assert len(recovered) == 2
    for statement in recovered:
        (note,) = statement.completeness.notes
        assert "crash" not in note
        assert note.endswith("wrote no bundle of them (it stopped first, or discarded the "
                             "bundle unwritten while its storage was failing)")


def test_processor_bundle_discarded_with_its_journal_failing_too_is_declared(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # The journal and the bundles on one full disk: the discarded bundles' spans were
    # never journaled, so no later start can seal them; they are declared instead.
    out, journal = tmp_path / "out", tmp_path / "journal"
    processor, trace_ids, discarded = _processor_discarding(
        tmp_path, monkeypatch, caplog, tmp_path)
    assert len(discarded) == 2 and all("not journaled either" in m for m in discarded)
    assert processor.force_flush(10_000) is True
    processor.shutdown()
    statements = _statements(out, tmp_path / "keys")
    assert sorted(s.trace_id for s in statements) == sorted(trace_ids)
    for statement in statements:
        lost = statement.trace_id in trace_ids[:2]
        assert (statement.segment_index, statement.record_count) == ((1, 0) if lost else (0, 1))
        assert statement.completeness.dropped_spans == (1 if lost else 0)
    recovering = make_processor(out, journal_dir=journal)
    recovering.shutdown()
    assert recovering.recovered == []  # nothing of them was journaled


def test_processor_journals_no_declaration_for_a_trace_it_stopped_naming(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Past the traces it names, a discarded trace's count goes to another trace's
    # bundle; journaling it under its own trace as well would have the next start
    # declare it a second time.
    monkeypatch.setattr(exporter_module, "_MAX_DISCARDED_TRACES", 1)
    out, journal = tmp_path / "out", tmp_path / "journal"
    processor, trace_ids, discarded = _processor_discarding(
        tmp_path, monkeypatch, caplog, tmp_path)
    assert len(discarded) == 2
    assert processor.force_flush(10_000) is True
    processor.shutdown()
    statements = _statements(out, tmp_path / "keys")
    assert sum(s.completeness.dropped_spans for s in statements) == 2
    [named] = [s for s in statements if s.trace_id == trace_ids[1]]
    assert (named.record_count, named.completeness.dropped_spans) == (0, 2)
    recovering = make_processor(out, journal_dir=journal)
    recovering.shutdown()
    assert recovering.recovered == []


def test_processor_declaration_of_unjournaled_spans_survives_a_crash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # The declaration is journaled when writing works again: a crash before the
    # declaring bundle is sealed (the grace is long) leaves it to the next start.
    out, journal = tmp_path / "out", tmp_path / "journal"
    processor, trace_ids, discarded = _processor_discarding(
        tmp_path, monkeypatch, caplog, tmp_path, seal_grace=3600.0)
    assert len(discarded) == 2
    deadline = time.monotonic() + 30
    while len(bundles(out)) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)  # the sealer retries the two kept bundles within a second
    assert sorted(path.name[:32] for path in bundles(out)) == sorted(trace_ids[2:])
    # A crash: the journal is released, nothing more is sealed.
    processor.exporter._journal.forget_after_fork()  # type: ignore[attr-defined]
    recovering = make_processor(out, journal_dir=journal)
    recovering.shutdown()
    assert sorted(Path(p).name[:32] for p in recovering.recovered) == sorted(trace_ids[:2])
    for statement in _statements(out, tmp_path / "keys"):
        if statement.trace_id in trace_ids[:2]:
            assert statement.seal_reason == "recovered"
            assert (statement.record_count, statement.completeness.dropped_spans) == (0, 1)


_WRITER = textwrap.dedent("""
    import sys
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.id_generator import IdGenerator
    from spanproof.exporter import SigningKey, SpanproofSpanExporter

    class SameIds(IdGenerator):
        # Both processes certify the very same trace ids.
        def __init__(self):
            self.n = 0
        def generate_trace_id(self):
            self.n += 1
            return self.n
        def generate_span_id(self):
            self.n += 1
            return self.n

    key = SigningKey.from_seed(bytes(range(32)))
    exporter = SpanproofSpanExporter(sys.argv[1], signing_key=key)
    provider = TracerProvider(id_generator=SameIds())
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("writer")
    for i in range(int(sys.argv[2])):
        with tracer.start_as_current_span("root"):
            with tracer.start_as_current_span("step", attributes={"gen_ai.operation.name": "chat"}):
                pass
    provider.shutdown()
""")


def test_two_processes_writing_one_output_directory_never_collide(tmp_path: Path) -> None:
    out = tmp_path / "shared"
    script = tmp_path / "writer.py"
    script.write_text(_WRITER)
    traces = 20
    procs = [subprocess.Popen([sys.executable, str(script), str(out), str(traces)])
             for _ in range(2)]
    for proc in procs:
        assert proc.wait(timeout=120) == 0
    written = bundles(out)
    assert len(written) == 2 * traces  # same trace ids, two producers: nothing overwritten
    assert len({p.name.split("-")[0] for p in written}) == traces
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    result = _verify(out, tmp_path / "keys")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("OK ") == 2 * traces


def test_span_values_never_reach_file_names(tmp_path: Path) -> None:
    out = tmp_path / "out"
    exporter = SpanproofSpanExporter(out, signing_key=signing_key())
    hostile = "../../escaped/../" + "/etc/passwd\x00.spanproof.json"
    _trace(exporter, hostile, service=hostile)
    exporter.shutdown()
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    written = [p for p in files if p.name.endswith(".spanproof.json")]
    assert len(written) == 1 and written[0].parent == out
    assert BUNDLE_NAME.fullmatch(written[0].name), written[0].name
    assert not (tmp_path / "escaped").exists()
    # The hostile text is certified as data, intact, inside the bundle.
    assert json.dumps("../../escaped/../")[1:-1].encode() in written[0].read_bytes()


def _nested_any_value(depth: int) -> str:
    """OTLP/JSON text of an AnyValue nested *depth* kvlists deep (built as text:
    json.dumps itself refuses such depth)."""
    head = '{"kvlistValue":{"values":[{"key":"k","value":' * depth
    return head + '{"stringValue":"bottom"}' + "}]}}" * depth


def _otlp_json(trace: str, span: str, key: str, value: str) -> bytes:
    return ('{"resourceSpans":[{"scopeSpans":[{"spans":[{'
            f'"traceId":"{trace}","spanId":"{span}","name":"deep","kind":1,'
            '"startTimeUnixNano":"1000","endTimeUnixNano":"2000","attributes":['
            '{"key":"gen_ai.operation.name","value":{"stringValue":"chat"}},'
            f'{{"key":"{key}","value":{value}}}]}}]}}]}}]}}').encode()


def _post(url: str, body: bytes, content_type: str) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=body, method="POST",
                                 headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field (wire type 2)."""
    tag, size, out = (number << 3) | 2, len(payload), bytearray()
    out.append(tag)
    while True:
        byte, size = size & 0x7F, size >> 7
        out.append(byte | (0x80 if size else 0))
        if not size:
            return bytes(out) + payload


def _nested_protobuf(depth: int) -> bytes:
    """An OTLP protobuf request whose span has an AnyValue *depth* kvlists deep, written
    byte by byte (the protobuf runtime itself refuses to build such a message)."""
    from opentelemetry.proto.common.v1 import common_pb2
    from opentelemetry.proto.trace.v1 import trace_pb2

    value = common_pb2.AnyValue(string_value="bottom").SerializeToString()
    for _ in range(depth):  # AnyValue.kvlist_value(6) > KeyValueList.values(1) > KeyValue
        value = _field(6, _field(1, _field(1, b"k") + _field(2, value)))
    span = trace_pb2.Span(trace_id=bytes.fromhex("1" * 32), span_id=bytes.fromhex("2" * 16),
                          name="deep", start_time_unix_nano=1000, end_time_unix_nano=2000)
    span.attributes.add(key="gen_ai.operation.name",
                        value=common_pb2.AnyValue(string_value="chat"))
    span_bytes = span.SerializeToString() + _field(9, _field(1, b"deep") + _field(2, value))
    # ExportTraceServiceRequest.resource_spans(1) > ResourceSpans.scope_spans(2) > spans(2)
    return _field(1, _field(2, _field(2, span_bytes)))


@pytest.mark.parametrize(
    ("content_type", "body", "declared"),
    [
        ("application/json", lambda: _otlp_json("1" * 32, "2" * 16, "deep",
                                                _nested_any_value(150)), True),
        ("application/json", lambda: _otlp_json("1" * 32, "2" * 16, "deep",
                                                _nested_any_value(5000)), False),
        ("application/x-protobuf", lambda: _nested_protobuf(150), True),
    ],
    ids=["json-150", "json-5000", "protobuf-150"],
)
def test_receiver_refuses_nesting_deeper_than_its_parsers_allow(
    tmp_path: Path, content_type: str, body: Any, declared: bool
) -> None:
    receiver = Receiver(tmp_path / "out", signing_key=signing_key(), seal_grace=0.0)
    receiver.start()
    server = HttpServer("127.0.0.1:0", receiver)
    server.start()
    url = f"http://127.0.0.1:{server.port}/v1/traces"
    try:
        status, answer = _post(url, body(), content_type)
        # INVALID_ARGUMENT with a message: a Collector drops it instead of retrying forever.
        assert status == 400, (status, answer[:300])
        assert answer
        fine = _otlp_json("3" * 32, "4" * 16, "nested", _nested_any_value(8))
        json.loads(fine)  # well-formed
        status, _ = _post(url, fine, "application/json")
        assert status == 200  # the receiver keeps serving
    finally:
        server.stop()
        assert receiver.shutdown()
    trust = TrustRoot.from_pem_files([str(write_public_key(tmp_path / "keys"))])
    reports = {path.name[:32]: check_bundle(str(path), trust, allow_incomplete=True,
                                            keep_records=True)
               for path in bundles(tmp_path / "out")}
    assert all(r.verdict is Verdict.OK for r in reports.values())
    assert set(reports) == ({"1" * 32, "3" * 32} if declared else {"3" * 32})
    if declared:
        # Its one span, too deep to certify, is declared rejected in its trace: a span
        # decoded piece by piece (protobuf), or a value beyond SPEC's 64 levels (JSON).
        deep = reports["1" * 32]
        assert deep.statement is not None and deep.records == ()
        assert deep.statement.completeness.rejected_spans == 1


def test_grpc_refuses_a_request_nested_too_deeply_as_invalid_argument(tmp_path: Path) -> None:
    import grpc

    from spanproof.exporter.otlp_server import GrpcServer

    receiver = Receiver(tmp_path / "out", signing_key=signing_key(), seal_grace=0.0)
    receiver.start()
    server = GrpcServer("127.0.0.1:0", receiver)
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            export = channel.unary_unary(
                "/opentelemetry.proto.collector.trace.v1.TraceService/Export")
            with pytest.raises(grpc.RpcError) as refused:
                export(_nested_protobuf(150), timeout=30)
            # Its only evidence span cannot be decoded: the request has nothing else.
            assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
            assert "span cannot be decoded (nested deeper than protobuf decodes" in (
                refused.value.details() or "")
    finally:
        server.stop()
        assert receiver.shutdown()
    (bundle,) = bundles(tmp_path / "out")
    assert bundle.name.startswith("1" * 32)  # the span declared rejected in its trace


def test_private_keys_are_never_logged_nor_readable_by_others(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    caplog.set_level(logging.DEBUG)
    out = tmp_path / "out"
    exporter = SpanproofSpanExporter(out)  # no key configured: one is generated
    _trace(exporter, "keys")
    exporter.shutdown()
    key_file = out / "keys" / "signing.key"
    assert key_file.stat().st_mode & 0o077 == 0
    pem = key_file.read_text()
    secret = "".join(pem.strip().splitlines()[1:-1])
    logged = "\n".join(r.getMessage() for r in caplog.records) + "".join(capsys.readouterr())
    assert any("signing.key" in r.getMessage() for r in caplog.records)  # it was mentioned
    assert secret[:40] not in logged and "PRIVATE KEY" not in logged


def test_value_size_counts_utf8_bytes_and_nested_values() -> None:
    from spanproof.exporter.limits import value_size
    from spanproof.verifier.values import encode_value

    assert value_size(encode_value("é" * 10)) == 20
    assert value_size(encode_value(b"\x00" * 30)) == 30
    # Padding is not data: 1,024 bytes encode to 1,368 characters ending "==",
    # which counted as 1,026 and got a value exactly at the limit refused.
    for n in (0, 1, 2, 3, 1022, 1023, 1024):
        assert value_size(encode_value(b"\x00" * n)) == n
    assert value_size(encode_value(["ab", "c"])) == 3
    assert value_size({"kvlistValue": {"key": encode_value("xyz")}}) == 6
    assert value_size(encode_value(7)) == 8


_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=6)
_typed_values = st.recursive(
    st.just({})
    | st.builds(lambda t: {"stringValue": t}, _text)
    | st.builds(lambda b: {"boolValue": b}, st.booleans())
    | st.builds(lambda i: {"intValue": str(i)}, st.integers(-(2**63), 2**63 - 1))
    | st.builds(lambda f: {"doubleValue": encode_double(f)}, st.floats(allow_nan=False))
    | st.builds(lambda b: {"bytesValue": base64.b64encode(b).decode()}, st.binary(max_size=6)),
    lambda children: st.builds(lambda v: {"arrayValue": v}, st.lists(children, max_size=8))
    | st.builds(lambda v: {"kvlistValue": v}, st.dictionaries(_text, children, max_size=8)),
    max_leaves=40,
)


def _smallest_fitting_limit(json_length: int) -> int:
    """The smallest limit for which fits_by_json_length(json_length, limit) holds."""
    from spanproof.exporter.limits import fits_by_json_length

    low, high = 0, 64 * (json_length + 1)
    assert fits_by_json_length(json_length, high)
    while low < high:
        middle = (low + high) // 2
        if fits_by_json_length(json_length, middle):
            high = middle
        else:
            low = middle + 1
    return low


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(_text, _typed_values, min_size=1, max_size=6))
def test_a_value_within_what_its_json_length_allows_is_never_measured_above_it(attrs) -> None:
    # The receiver skips measuring values when fits_by_json_length holds for the
    # body's JSON: no value may then be above the limit, for any shape of value,
    # the costliest being arrays of empty values (8 bytes each, 3 of JSON).
    from spanproof.exporter.limits import check_value_sizes, value_size

    for typed in attrs.values():
        assert value_size(typed) <= _smallest_fitting_limit(len(orjson.dumps(typed)))
    body = _sized_body(attrs, {"attributes": {}})
    check_value_sizes(body, _smallest_fitting_limit(len(orjson.dumps(body))))


def test_empty_values_count_more_than_twice_their_json() -> None:
    from spanproof.exporter.limits import value_size

    empties = {"arrayValue": [{}] * 1000}
    # 8,000 bytes counted for 3,015 bytes of JSON.
    assert value_size(empties) > 2 * len(orjson.dumps(empties))
    assert value_size(empties) <= _smallest_fitting_limit(len(orjson.dumps(empties)))


def _sized_body(span_attrs: dict[str, Any], resource: dict[str, Any],
                event_attrs: dict[str, Any] | None = None) -> dict[str, Any]:
    events = [] if event_attrs is None else [{"attributes": {}}, {"attributes": event_attrs}]
    return {"span": {"attributes": span_attrs, "events": events,
                     "links": [{"attributes": {"ok": {"stringValue": "x"}}}]},
            "resource": resource, "scope": {"attributes": {}}}


def test_value_size_check_names_where_the_oversized_value_is() -> None:
    from spanproof.exporter.limits import OversizedValue, check_value_sizes

    small = {"a": {"stringValue": "x" * 10}}
    big = {"a": {"stringValue": "x" * 100}}
    shared = {"attributes": small}
    check_value_sizes(_sized_body(small, shared, small), 64)  # nothing too large
    with pytest.raises(OversizedValue, match=r"^span attribute 'a' is 100 bytes"):
        check_value_sizes(_sized_body(big, shared), 64)
    with pytest.raises(OversizedValue, match=r"^event 1 attribute 'a' is 100 bytes"):
        check_value_sizes(_sized_body(small, shared, big), 64)


def test_a_shared_resource_is_measured_again_for_every_span_it_fails_and_every_limit(
) -> None:
    # Resource bodies are shared between spans and measured once when they pass;
    # one that fails must fail every span, and passing one limit is not passing
    # a smaller one.
    from spanproof.exporter.limits import OversizedValue, check_value_sizes

    small = {"a": {"stringValue": "x"}}
    resource = {"attributes": {"host.name": {"stringValue": "h" * 100}}}
    for _ in range(2):
        with pytest.raises(OversizedValue, match=r"^resource attribute 'host\.name'"):
            check_value_sizes(_sized_body(small, resource), 64)
    check_value_sizes(_sized_body(small, resource), 128)
    check_value_sizes(_sized_body(small, resource), 128)
    with pytest.raises(OversizedValue, match=r"^resource attribute 'host\.name'"):
        check_value_sizes(_sized_body(small, resource), 64)


def test_span_with_a_value_over_the_limit_is_declared_rejected(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_SPANPROOF_MAX_VALUE_BYTES", "4096")
    out = tmp_path / "out"
    exporter = SpanproofSpanExporter(out, signing_key=signing_key())
    assert exporter.config.max_value_bytes == 4096
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("tests.faults")
    with tracer.start_as_current_span("root"):
        with tracer.start_as_current_span("small", attributes={
                "gen_ai.operation.name": "chat", "gen_ai.prompt": "x" * 4096}):
            pass
        with tracer.start_as_current_span("huge", attributes={
                "gen_ai.operation.name": "chat", "gen_ai.prompt": "é" * 2049}):
            pass
    exporter.shutdown()
    (bundle,) = bundles(out)
    assert b"\\u00e9" not in bundle.read_bytes() and "é".encode() not in bundle.read_bytes()
    keys = write_public_key(tmp_path / "keys")
    result = spanproof_cli("verify", "--key", str(keys), "--json", str(bundle))
    assert result.returncode == 1, result.stdout  # INCOMPLETE: the huge span is declared
    (report,) = json.loads(result.stdout)["bundles"]
    assert report["verdict"] == "INCOMPLETE" and report["records"] == 1
    assert str(report["completeness"]["rejectedSpans"]) == "1"
    allowed = spanproof_cli("verify", "--key", str(keys), "--allow-incomplete", str(bundle))
    assert allowed.returncode == 0, allowed.stdout


def test_receiver_answers_partial_success_for_a_value_over_the_limit(tmp_path: Path) -> None:
    receiver = Receiver(tmp_path / "out", signing_key=signing_key(), seal_grace=0.0,
                        max_value_bytes=2048)
    receiver.start()
    server = HttpServer("127.0.0.1:0", receiver)
    server.start()
    url = f"http://127.0.0.1:{server.port}/v1/traces"
    huge = json.dumps({"stringValue": "y" * 5000})
    fine = json.dumps({"stringValue": "y" * 100})
    body = (_otlp_json("5" * 32, "6" * 16, "big", huge)[:-len("]}]}]}]}")]
            + b"]}, " + _otlp_json("5" * 32, "7" * 16, "small", fine)
            .split(b'"spans":[', 1)[1][:-len("]}]}]}")] + b"]}]}]}")
    try:
        status, answer = _post(url, body, "application/json")
        assert status == 200, answer
        doc = json.loads(answer)
        assert doc["partialSuccess"]["rejectedSpans"] == "1", doc
        assert "above the limit of 2048" in doc["partialSuccess"]["errorMessage"]
    finally:
        server.stop()
        assert receiver.shutdown()
    (bundle,) = bundles(tmp_path / "out")
    keys = write_public_key(tmp_path / "keys")
    result = spanproof_cli("verify", "--key", str(keys), "--json", str(bundle))
    (report,) = json.loads(result.stdout)["bundles"]
    assert report["records"] == 1 and str(report["completeness"]["rejectedSpans"]) == "1"


def test_bundles_kept_for_a_failing_sink_are_retried_under_a_steady_load(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The sealer's pass goes on for as long as traces keep coming due; the bundles
    # kept while the sink failed were retried only when a pass began, so under a
    # steady load they stayed in memory for good once the sink worked again.
    out, disk, exporter = _discarding_exporter(tmp_path, monkeypatch, 1024)
    _fail_writes_and_discard(exporter, disk, 3, {})
    assert len(exporter._unwritten) == 3
    real_seal_jobs = exporter._seal_jobs
    passes: list[int] = []

    def seal_jobs_while_traces_keep_coming(deadline: float | None, **kwargs: bool) -> None:
        real_seal_jobs(deadline, **kwargs)
        passes.append(len(exporter._unwritten))
        if len(passes) == 2:
            disk.failure = None
        if len(passes) < 20:
            _trace(exporter, f"steady-{len(passes)}")  # due at once: the pass goes on

    exporter._seal_jobs = seal_jobs_while_traces_keep_coming  # type: ignore[method-assign]
    _trace(exporter, "steady-0")
    deadline = time.monotonic() + 10
    while len(passes) < 20 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(passes) >= 20
    assert passes[19] == 0, passes  # retried within the pass, not after it
    exporter.shutdown()
    assert len(bundles(out)) == 3 + 20


def test_bundle_discarded_while_the_sink_works_is_declared(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A bundle is also discarded with the sink working, when later segments waiting
    # behind kept ones push the queue past its bound; its count was declared only
    # when the sink recovered from a failure, so it stayed in memory, undeclared.
    out, disk, exporter = _discarding_exporter(tmp_path, monkeypatch, 1024)
    _fail_writes_and_discard(exporter, disk, 1, {})
    disk.failure = None
    assert exporter.force_flush() is True and exporter._sink_condition is None
    [written] = _statements(out, tmp_path / "keys")
    # Discarded now, as _discard counts a bundle.
    exporter._count_discarded(SimpleNamespace(statement=written), written.record_count)
    assert exporter.force_flush() is True
    assert not exporter._discarded
    exporter.shutdown()
    [declaration] = [s for s in _statements(out, tmp_path / "keys") if s.segment_index == 1]
    assert declaration.trace_id == written.trace_id
    assert declaration.completeness.dropped_spans == written.record_count
