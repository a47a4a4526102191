"""The EvidenceSpanProcessor at two edges: a journal that fails partway through a
batch, and a shutdown() while another thread's on_end() is under way.

- The spans of a batch were journaled (fsynced), then the batch's loss count failed
  to be (a disk filling up just then): their keys were thrown away, so the bundle
  that certified them retired nothing, and the next start certified them again.
- A span whose on_end() had passed its shutdown check when shutdown() ran was queued
  after the worker's last batch (or its loss counted after it): neither sealed nor
  declared, and nothing said so.
"""

from __future__ import annotations

import collections
import errno
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from exporter_support import reports, signing_key, trust_root
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider

from spanproof.exporter import EvidenceSpanProcessor
from spanproof.exporter import journal as journal_module
from spanproof.exporter.selection import AttributeSelector

EVIDENCE = {"gen_ai.operation.name": "chat"}


def _provider(processor: EvidenceSpanProcessor) -> TracerProvider:
    provider = TracerProvider(resource=Resource.create({"service.name": "t"}),
                              shutdown_on_exit=False)
    provider.add_span_processor(processor)
    return provider


def _certified(out: Path, tmp_path: Path) -> collections.Counter[str]:
    found = reports(out, trust_root(tmp_path), allow_incomplete=True)
    return collections.Counter(r["span"]["spanId"] for report in found
                               for r in report.records or ())


def test_spans_journaled_before_a_count_failed_are_not_certified_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    failing = [True]
    real = journal_module.Journal.append_counts

    def append_counts(self: Any, counts: Any) -> None:
        if failing[0]:
            failing[0] = False
            raise OSError(errno.ENOSPC, "No space left on device")
        real(self, counts)

    monkeypatch.setattr(journal_module.Journal, "append_counts", append_counts)
    out = tmp_path / "out"
    processor = EvidenceSpanProcessor(out, signing_key=signing_key(), seal_grace=0.0,
                                      idle_timeout=3600)
    monkeypatch.setattr(processor, "_ensure_worker", lambda: False)  # one batch, here
    tracer = _provider(processor).get_tracer("t")
    with tracer.start_as_current_span("root", attributes=EVIDENCE):
        for i in range(3):
            tracer.start_span(f"step{i}", attributes=EVIDENCE).end()
        bad = tracer.start_span("bad", attributes=EVIDENCE, start_time=2**64)  # rejected
        bad.end(end_time=2**64 + 1)
    assert not processor.force_flush(10_000)  # the count did not reach the journal
    processor.shutdown()
    again = EvidenceSpanProcessor(out, signing_key=signing_key())
    assert again.recovered == []  # before: the four spans, as a "recovered" segment
    again.shutdown()
    certified = _certified(out, tmp_path)
    assert len(certified) == 4 and set(certified.values()) == {1}


def test_a_flush_behind_a_batch_the_journal_did_not_take_is_not_durable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # More spans queued than one batch holds: the first batch's write failed (a disk
    # filling up, then freed), the flush rode in the next one, which the journal
    # took, and force_flush answered True for spans that were in memory only.
    from spanproof.exporter import processor as processor_module

    failing = [True]
    real = journal_module.Journal.append_spans

    def append_spans(self: Any, items: Any, **kwargs: Any) -> list[str]:
        if failing[0]:
            failing[0] = False
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, items, **kwargs)

    monkeypatch.setattr(journal_module.Journal, "append_spans", append_spans)
    out = tmp_path / "out"
    processor = EvidenceSpanProcessor(out, signing_key=signing_key(), seal_grace=3600,
                                      idle_timeout=3600)
    monkeypatch.setattr(processor, "_ensure_worker", lambda: False)  # batches, here
    tracer = _provider(processor).get_tracer("t")
    with tracer.start_as_current_span("root", attributes=EVIDENCE):
        for i in range(processor_module._BATCH + 10):
            tracer.start_span(f"step{i}", attributes=EVIDENCE).end()
        assert not processor.force_flush(10_000)
    processor.shutdown()


def test_a_span_whose_on_end_is_under_way_at_shutdown_is_sealed(tmp_path: Path) -> None:
    class SlowSelector:
        """Takes a while for some spans (a policy it consults, say)."""

        inner = AttributeSelector()

        def selects(self, attributes: Any) -> bool:
            if attributes.get("slow"):
                time.sleep(0.3)
            return self.inner.selects(attributes)

    out = tmp_path / "out"
    processor = EvidenceSpanProcessor(out, signing_key=signing_key(), selector=SlowSelector(),
                                      seal_grace=0.0)
    tracer = _provider(processor).get_tracer("t")
    with tracer.start_as_current_span("root", attributes=EVIDENCE):
        slow = tracer.start_span("slow", attributes={**EVIDENCE, "slow": True})
    assert processor.force_flush(10_000)
    ending = threading.Thread(target=slow.end)  # the application's other thread
    ending.start()
    time.sleep(0.1)  # its on_end() is past the shutdown check
    processor.shutdown()
    ending.join(10)
    assert processor._queue.qsize() == 0
    ctx = slow.get_span_context()
    assert ctx is not None
    assert _certified(out, tmp_path)[f"{ctx.span_id:016x}"] == 1  # before: 0, undeclared
