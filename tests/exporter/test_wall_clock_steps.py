"""A wall clock stepped (NTP, a resumed virtual machine) moves no deadline.

The grace and idle deadlines were read off :func:`time.time`: stepped back an hour,
no trace was sealed for an hour, those ending after the step included (they queued
behind the first); stepped forward two minutes, every open trace was sealed at once
as idle.  They follow :func:`time.monotonic` now, and only ``sealedAt`` reads the
wall clock."""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path

import pytest
from exporter_support import Recorder, evidence, reports, signing_key, trust_root
from opentelemetry.context import Context

from spanproof.exporter import SpanproofSpanExporter
from spanproof.verifier import Verdict

# Bounds each wait, so that a deadline on the wrong clock fails instead of hanging.
_WAIT = 20.0


class SteppedWall:
    """The wall clock, off by ``offset`` seconds."""

    def __init__(self) -> None:
        self.real = time.time
        self.offset = 0.0

    def __call__(self) -> float:
        return self.real() + self.offset


def _wait_for_bundles(out: Path, count: int) -> list[Path]:
    deadline = time.monotonic() + _WAIT
    while time.monotonic() < deadline:
        found = sorted(out.glob("*.spanproof.json"))
        if len(found) >= count:
            return found
        time.sleep(0.05)
    return sorted(out.glob("*.spanproof.json"))


def _sealed_at(out: Path, trust_dir: Path) -> dict[str, tuple[str, datetime]]:
    """Trace id -> (seal reason, sealedAt) of every bundle, each verified."""
    out_reports = reports(out, trust_root(trust_dir))
    for report in out_reports:
        assert report.verdict is Verdict.OK, (report.source, report.reason)
    return {r.statement.trace_id: (r.statement.seal_reason, r.statement.sealed_at)
            for r in out_reports if r.statement is not None}


def _stepped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *, idle_timeout: float
) -> tuple[SteppedWall, Path, SpanproofSpanExporter, Recorder]:
    """A wall clock to step, and an exporter (grace 0.2 s) built while it is the
    process's ``time.time``, with its output directory and a recorder."""
    wall = SteppedWall()
    monkeypatch.setattr(time, "time", wall)
    out = tmp_path / "out"
    exporter = SpanproofSpanExporter(out, signing_key=signing_key(), select_all=True,
                                     seal_grace=0.2, idle_timeout=idle_timeout)
    return wall, out, exporter, Recorder()


def test_a_wall_clock_stepped_back_delays_no_seal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wall, out, exporter, rec = _stepped(tmp_path, monkeypatch, idle_timeout=3600.0)
    try:
        with evidence(rec, "before-the-step"):
            pass
        assert exporter.export(rec.take()).name == "SUCCESS"
        wall.offset = -3600.0  # the wall clock steps back an hour
        with evidence(rec, "after-the-step"):
            pass
        assert exporter.export(rec.take()).name == "SUCCESS"
        assert len(_wait_for_bundles(out, 2)) == 2  # sealed by their grace
    finally:
        exporter.shutdown()
    sealed = _sealed_at(out, tmp_path)
    assert sorted(reason for reason, _ in sealed.values()) == ["root_ended", "root_ended"]
    # sealedAt is the wall clock's, stepped or not.
    assert min(at.timestamp() for _, at in sealed.values()) < wall.real() - 3000


def test_a_wall_clock_stepped_forward_seals_no_open_trace_as_idle(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wall, out, exporter, rec = _stepped(tmp_path, monkeypatch, idle_timeout=30.0)
    try:
        with evidence(rec, "open-root"):
            with evidence(rec, "step"):
                pass
            assert exporter.export(rec.take()).name == "SUCCESS"  # the step, root open
            wall.offset = 120.0  # the wall clock steps two minutes forward
            with rec.tracer.start_as_current_span(  # a trace of its own, to wait for
                    "closed-root", context=Context(),
                    attributes={"gen_ai.operation.name": "chat"}):
                pass
            assert exporter.export(rec.take()).name == "SUCCESS"
            assert len(_wait_for_bundles(out, 1)) == 1
            time.sleep(0.5)  # a sealer that took the step for two idle minutes acts now
            assert len(list(out.glob("*.spanproof.json"))) == 1
        assert exporter.export(rec.take()).name == "SUCCESS"
    finally:
        exporter.shutdown()
    # The open trace was sealed by the shutdown that followed its root, not as idle.
    assert sorted(reason for reason, _ in _sealed_at(out, tmp_path).values()) == [
        "root_ended", "shutdown"]
