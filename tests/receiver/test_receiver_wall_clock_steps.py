"""The receiver's deadlines do not follow a stepped wall clock.

They were read off :func:`time.time`: stepped back an hour, no trace was sealed for
an hour, the backlog filled and every Collector request was answered UNAVAILABLE.
They follow :func:`time.monotonic` now; ``sealedAt`` is the wall clock's."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from receiver_support import (
    TRACE_A,
    TRACE_B,
    bundle_paths,
    export,
    otlp_span,
    serving,
    signing_key,
    trust_root,
    verified,
)

from spanproof.exporter.receiver import Receiver

_WAIT = 20.0


def test_a_wall_clock_stepped_back_delays_no_seal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = time.time
    offset = [0.0]
    out = tmp_path / "out"
    with monkeypatch.context() as patched:  # the receiver's wall clock only (gRPC's
        patched.setattr(time, "time", lambda: real() + offset[0])  # deadlines read it)
        receiver = Receiver(out, signing_key=signing_key(), seal_grace=0.2,
                            idle_timeout=3600.0)
    with serving(receiver) as (grpc_server, _):
        endpoint = f"127.0.0.1:{grpc_server.port}"
        export(endpoint, otlp_span(TRACE_A, 1))
        offset[0] = -3600.0  # the wall clock steps back an hour
        export(endpoint, otlp_span(TRACE_B, 1))
        deadline = time.monotonic() + _WAIT
        while len(bundle_paths(str(out))) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(bundle_paths(str(out))) == 2  # each sealed by its grace
    reports = verified(str(out), trust_root(str(tmp_path)))
    assert sorted(r.statement.seal_reason for r in reports if r.statement) == [
        "root_ended", "root_ended"]
    assert min(r.statement.sealed_at.timestamp() for r in reports if r.statement) < (
        real() - 3000)  # sealedAt: the wall clock, as stepped
