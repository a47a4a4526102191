"""Throttled warnings (the exporter's spans that cannot be certified, the receiver's
TLS refusals): at most one a period, and those held back are counted once the period
ends without another.  The count waited for the next warning or the shutdown: a
burst that stopped went unsaid for as long as the process ran."""

from __future__ import annotations

import logging
import threading
import time

import pytest
from no_threads import refuse_new_threads

from spanproof.exporter._exporter import Throttled

_LOGGER = logging.getLogger("spanproof.tests.throttled")
# Bounds the wait for the period's end, so that a timer that never fires fails.
_WAIT = 10.0


def _held_counts(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "were held back" in r.getMessage()]


def test_warnings_held_back_are_counted_when_the_period_ends(
    caplog: pytest.LogCaptureFixture,
) -> None:
    warnings = Throttled(_LOGGER, 0.3, "name a test's refusals")
    with caplog.at_level(logging.WARNING, logger=_LOGGER.name):
        for n in range(5):
            warnings.warn("refused %d", n)
        assert [r.getMessage() for r in caplog.records] == ["refused 0"]
        deadline = time.monotonic() + _WAIT
        while not _held_counts(caplog) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert _held_counts(caplog) == [
            "spanproof: 4 more warning(s) that name a test's refusals were held back in the "
            "last 0.3 s"]
        # Counted: the next warning is logged whole, starting a period of its own,
        # and the shutdown has nothing more to say.
        warnings.warn("refused %d", 5)
        warnings.held_back()
    assert [r.getMessage() for r in caplog.records][-1] == "refused 5"
    assert len(_held_counts(caplog)) == 1


def test_where_no_thread_may_start_the_count_waits_for_the_shutdown(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch,
) -> None:
    warnings = Throttled(_LOGGER, 0.1, "name a test's refusals")
    refuse_new_threads(monkeypatch)
    with caplog.at_level(logging.WARNING, logger=_LOGGER.name):
        warnings.warn("refused")
        warnings.warn("refused")  # held back: no timer could start
        time.sleep(0.3)
        assert not _held_counts(caplog)
        warnings.held_back()
    assert _held_counts(caplog) == [
        "spanproof: 1 more warning(s) that name a test's refusals were held back"]


def test_a_shutdown_cancels_the_timer(caplog: pytest.LogCaptureFixture) -> None:
    warnings = Throttled(_LOGGER, 30.0, "name a test's refusals")
    with caplog.at_level(logging.WARNING, logger=_LOGGER.name):
        warnings.warn("refused")
        warnings.warn("refused")
        timers = [t for t in threading.enumerate() if t.name == "spanproof-held-warnings"]
        assert len(timers) == 1
        warnings.held_back()
        timers[0].join(_WAIT)
        assert not timers[0].is_alive()
    assert len(_held_counts(caplog)) == 1
