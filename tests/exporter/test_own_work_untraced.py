"""spanproof's own work is never traced by the application's instrumentations.

Under ``opentelemetry-instrument`` with the urllib instrumentation and a proxy set,
each witness submission (sent through ``urllib`` when a proxy is configured) made a
span; with ``select_all`` the exporter sealed it and submitted it, which made another,
without end (21 bundles and 21 witness entries from one application span in 20 s).
The instrumentations record nothing where instrumentation is suppressed, as the SDK's
``BatchSpanProcessor`` suppresses it around ``export()``; spanproof's threads ran
outside that, and, with the ``threading`` instrumentation, in the context (the current
span) of whatever started them.
"""

from __future__ import annotations

import http.client
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from exporter_support import Recorder, signing_key
from opentelemetry import context, trace
from opentelemetry.instrumentation.utils import (
    is_http_instrumentation_enabled,
    is_instrumentation_enabled,
)

from spanproof.exporter import SpanproofSpanExporter, _exporter

#: (where, instrumentation enabled, HTTP instrumentation enabled, a span current)
Seen = tuple[str, bool, bool, bool]


def _look(where: str, seen: list[Seen]) -> None:
    seen.append((where, is_instrumentation_enabled(), is_http_instrumentation_enabled(),
                 trace.get_current_span().get_span_context().is_valid))


@pytest.fixture
def threads_carry_context(monkeypatch: pytest.MonkeyPatch) -> None:
    """Threads run in the context current where they were started, as the
    ``threading`` instrumentation makes them."""
    start, run = threading.Thread.start, threading.Thread.run

    def carrying_start(self: threading.Thread) -> None:
        self._carried = context.get_current()  # type: ignore[attr-defined]
        start(self)

    def carrying_run(self: threading.Thread) -> None:
        carried = getattr(self, "_carried", None)
        token = None if carried is None else context.attach(carried)
        try:
            run(self)
        finally:
            if token is not None:
                context.detach(token)

    monkeypatch.setattr(threading.Thread, "start", carrying_start)
    monkeypatch.setattr(threading.Thread, "run", carrying_run)


def _wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)


def _export_under_an_application_span(exporter: SpanproofSpanExporter) -> None:
    """One evidence span, exported while an application span is current (the
    exporter's threads start then); sealed by the sealer thread (grace 0)."""
    rec = Recorder()
    with rec.tracer.start_as_current_span("request"):
        # A trace of its own, whose root ends: due at once.
        with rec.tracer.start_as_current_span(
                "llm", context=context.Context(), attributes={"gen_ai.operation.name": "chat"}):
            pass
        evidence_spans = [s for s in rec.take() if s.name == "llm"]
        assert exporter.export(evidence_spans) is not None


@pytest.fixture
def seen_sending(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Seen]]:
    """What each witness request's sending saw, direct or through a proxy (the request
    then fails: no witness is needed)."""
    seen: list[Seen] = []

    def connect(self: http.client.HTTPConnection) -> None:
        _look("direct", seen)
        raise ConnectionRefusedError("no witness in this test")

    def open_(self: urllib.request.OpenerDirector, *args: Any, **kwargs: Any) -> Any:
        _look("proxy", seen)
        raise urllib.error.URLError("no proxy in this test")

    monkeypatch.setattr(http.client.HTTPConnection, "connect", connect)
    monkeypatch.setattr(urllib.request.OpenerDirector, "open", open_)
    for name in ("no_proxy", "NO_PROXY", "http_proxy", "HTTP_PROXY"):
        monkeypatch.delenv(name, raising=False)
    yield seen


@pytest.mark.parametrize("route", ["direct", "proxy"])
@pytest.mark.usefixtures("threads_carry_context")
def test_witness_submissions_are_sent_with_instrumentation_suppressed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, seen_sending: list[Seen],
        route: str) -> None:
    if route == "proxy":
        monkeypatch.setenv("http_proxy", "http://127.0.0.1:9")
    exporter = SpanproofSpanExporter(tmp_path / "out", signing_key=signing_key(),
                                     seal_grace=0.0, witness_url="http://127.0.0.1:9")
    try:
        _export_under_an_application_span(exporter)
        _wait_for(lambda: len(seen_sending) > 0)
    finally:
        exporter.shutdown()
    assert seen_sending, "no witness request was sent"
    assert {where for where, *_ in seen_sending} == {route}
    assert all(not enabled and not http and not current
               for _, enabled, http, current in seen_sending), seen_sending


@pytest.mark.usefixtures("threads_carry_context")
def test_sealer_and_writer_threads_run_untraced_and_outside_the_application_span(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[Seen] = []
    seal, drain = _exporter.seal, SpanproofSpanExporter._drain_write_queue

    def looking_seal(*args: Any, **kwargs: Any) -> Any:
        _look(threading.current_thread().name, seen)
        return seal(*args, **kwargs)

    def looking_drain(self: SpanproofSpanExporter) -> Any:
        _look(threading.current_thread().name, seen)
        return drain(self)

    monkeypatch.setattr(_exporter, "seal", looking_seal)
    monkeypatch.setattr(SpanproofSpanExporter, "_drain_write_queue", looking_drain)
    exporter = SpanproofSpanExporter(tmp_path / "out", signing_key=signing_key(),
                                     seal_grace=0.0)
    try:
        _export_under_an_application_span(exporter)
        _wait_for(lambda: any((tmp_path / "out").glob("*.spanproof.json")))
    finally:
        exporter.shutdown()
    threads = {where for where, *_ in seen}
    assert "spanproof-sealer" in threads
    assert any(name.startswith("spanproof-write") for name in threads), threads
    mine = [s for s in seen if s[0].startswith("spanproof-")]
    assert all(not enabled and not http and not current
               for _, enabled, http, current in mine), mine
