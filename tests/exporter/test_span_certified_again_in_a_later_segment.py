"""A span id certified again after its segment was sealed is declared in the later
segment's ``conflicts`` (SPEC §4.3: a span id occurs once per chain), in process and
in a sealing process.  Before, only repeats within one segment were listed: a second
version of a step exported after a flush verified as OK beside the first, undeclared."""

from __future__ import annotations

from pathlib import Path

import pytest
from exporter_support import signing_key, trust_root
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanContext, TraceFlags

from spanproof.exporter import SpanproofSpanExporter
from spanproof.verifier import Verdict, check_bundle

CONTEXT = SpanContext(0xABC, 0xDEF, False, TraceFlags(1))


def version(name: str) -> ReadableSpan:
    return ReadableSpan(name=name, context=CONTEXT, parent=None,
                        attributes={"spanproof.evidence": True}, start_time=1, end_time=2)


@pytest.mark.parametrize("sealing_process", [0, 1], ids=["in-process", "sealing-process"])
def test_a_version_exported_after_a_flush_is_declared_a_conflict(
        tmp_path: Path, sealing_process: int) -> None:
    out = tmp_path / "bundles"
    exporter = SpanproofSpanExporter(out, signing_key=signing_key(), seal_grace=0.01,
                                     sealing_process=sealing_process)
    try:
        for name in ("v1", "v2", "v1"):
            exporter.export([version(name)])
            assert exporter.force_flush()
    finally:
        exporter.shutdown()
    paths = sorted(out.glob("*.spanproof.json"))
    assert len(paths) == 3
    root = trust_root(tmp_path)
    declared = []
    for path in paths:
        with path.open("rb") as f:
            report = check_bundle(f, root)
        assert report.verdict is Verdict.OK
        assert report.statement is not None
        declared.append(report.statement.completeness.conflicts)
    assert declared == [(), (f"{0xDEF:016x}",), (f"{0xDEF:016x}",)]
