"""After a clean stop, ``EvidenceSpanProcessor``'s journal owes nothing for a span it
could not journal as the sealer encodes it.

- A span with a ``str`` subclass attribute key (a ``str`` Enum, which the SDK keeps as
  given) was refused by the journal's encoder, counted there as rejected, yet
  certified by its bundle: the journal file stayed, and the next start wrote a
  "recovered" bundle declaring the certified span rejected.  After a crash, the span
  was gone (declared rejected instead of certified).  It is journaled now, under its
  string data, as its record holds it.
- A span the sealer rejects too (a lone surrogate) was declared rejected twice: by its
  bundle, and again by the next start, whose bundle said the dead instance "wrote no
  bundle of them" though it had.
"""

from __future__ import annotations

import enum
import os
from pathlib import Path

from exporter_support import (
    FakeClock,
    Recorder,
    evidence,
    make_exporter,
    processor_recorder,
    reports,
    signing_key,
    span_hex,
    trust_root,
    verified,
)
from opentelemetry.sdk.resources import Resource

from spanproof.exporter import EvidenceSpanProcessor
from spanproof.exporter.sealing import UNENCODABLE_NOTE
from spanproof.verifier import Verdict


class Attr(str, enum.Enum):
    DECISION = "fraud.decision"


def _journal_files(out: Path) -> list[str]:
    return sorted(os.listdir(out / "journal")) if (out / "journal").is_dir() else []


def _restart(out: Path) -> None:
    """A new processor on *out*, as the next start of the application: it recovers
    what the journal still owes, then stops."""
    EvidenceSpanProcessor(out, signing_key=signing_key(), select_all=True).shutdown()


def _records(out: Path, trust_dir: Path) -> dict[str, dict[str, object]]:
    return {r["span"]["spanId"]: r["span"]["attributes"]
            for report in verified(out, trust_root(trust_dir))
            for r in report.records or ()}


def test_str_enum_attribute_key_is_journaled_and_certified_once(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with processor_recorder(out) as rec:
        with evidence(rec, "check") as span:
            span.set_attribute(Attr.DECISION, "deny")
    assert _journal_files(out) == []
    _restart(out)
    (report,) = verified(out, trust_root(tmp_path))  # one bundle: nothing recovered
    assert report.statement is not None
    assert report.statement.completeness.rejected_spans == 0
    span_id = span_hex(span)[1]
    assert _records(out, tmp_path)[span_id]["fraud.decision"] == {"stringValue": "deny"}


def test_str_enum_attribute_key_gives_the_exporters_record(tmp_path: Path) -> None:
    attributes = {Attr.DECISION: "deny", "gen_ai.operation.name": "chat"}
    rec = Recorder()
    with rec.tracer.start_as_current_span("check", attributes=attributes) as exported:
        pass
    exporter = make_exporter(tmp_path / "exporter", FakeClock(), select_all=True)
    exporter.export(rec.take())
    exporter.shutdown()
    with processor_recorder(tmp_path / "processor") as prec:
        with prec.tracer.start_as_current_span("check", attributes=attributes) as journaled:
            pass
    assert (_records(tmp_path / "processor", tmp_path)[span_hex(journaled)[1]]
            == _records(tmp_path / "exporter", tmp_path)[span_hex(exported)[1]])


def test_str_enum_resource_attribute_key_is_journaled(tmp_path: Path) -> None:
    out = tmp_path / "out"
    rec = Recorder(resource=Resource({Attr.DECISION: "deny"}))
    rec.provider.add_span_processor(
        EvidenceSpanProcessor(out, signing_key=signing_key(), select_all=True))
    with evidence(rec, "check"):
        pass
    rec.provider.shutdown()
    assert _journal_files(out) == []
    _restart(out)
    (report,) = verified(out, trust_root(tmp_path))
    assert report.statement is not None
    assert report.statement.record_count == 1


def test_lone_surrogate_span_is_declared_rejected_once(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with processor_recorder(out) as rec:
        with evidence(rec, "root"):
            with evidence(rec, "bad") as bad:
                bad.set_attribute("x", "a\ud83d")
    assert _journal_files(out) == []
    _restart(out)
    (report,) = reports(out, trust_root(tmp_path))  # no "recovered" bundle beside it
    assert report.verdict is Verdict.INCOMPLETE, report.reason
    assert report.statement is not None
    assert report.statement.completeness.rejected_spans == 1
    assert UNENCODABLE_NOTE.format(1) in report.statement.completeness.notes
