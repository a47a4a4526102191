"""A Collector's retry that outlives the receiver's process is not certified again.

A Collector retries a request whose answer it did not get: one in flight when the
receiver was killed, or one whose answer timed out.  The receiver recognised an
identical re-delivery by fingerprints it kept in memory only, so after a restart
the retry was certified a second time, in a chain of the new instance, with nothing
declaring it (README: "Retries are harmless").  The fingerprints of sealed and
recovered spans are now kept in ``<journal>/sealed-spans/`` and taken over by the
next start.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
from receiver_support import (
    TRACE_A,
    TRACE_B,
    FakeClock,
    bundle_paths,
    crash,
    otlp_span,
    quiet_receiver,
    request,
    span_id,
    span_ids,
    trust_root,
    verified,
)

from spanproof.exporter._sealed_spans import MAGIC, SEALED_SPANS_DIR
from spanproof.exporter.receiver import Receiver


def sealed_then_crashed(out: Path, clock: FakeClock, req: object, **kwargs: object) -> None:
    """A receiver that accepts *req*, seals and writes it, then dies."""
    first = quiet_receiver(out, clock, **kwargs)
    first.start()
    first(req.resource_spans)  # type: ignore[attr-defined]
    clock.advance(5)
    assert first.flush()
    crash(first)


def certified(out: Path, tmp_path: Path) -> list[str]:
    """Every span id certified under *out*, once per bundle that holds it."""
    return sorted(s for r in verified(str(out), trust_root(str(tmp_path)),
                                       allow_incomplete=True) for s in span_ids(r))


def spans_dir(out: Path) -> Path:
    return out / "journal" / SEALED_SPANS_DIR


def test_a_retry_of_spans_sealed_before_a_crash_is_not_certified_again(
    tmp_path: Path,
) -> None:
    clock = FakeClock()
    out = tmp_path / "out"
    req = request(otlp_span(TRACE_A, 1, name="root"), otlp_span(TRACE_A, 2, parent=1))
    sealed_then_crashed(out, clock, req)
    assert len(bundle_paths(str(out))) == 1
    second = quiet_receiver(out, clock)
    second.start()
    second(req.resource_spans)  # the Collector's retry: its answer was lost
    clock.advance(5)
    assert second.flush()
    assert second.shutdown()
    assert len(bundle_paths(str(out))) == 1
    assert certified(out, tmp_path) == [span_id(1), span_id(2)]


def test_a_retry_of_recovered_spans_is_not_certified_by_a_later_start_either(
    tmp_path: Path,
) -> None:
    # The first receiver journaled the spans and died; the second recovered them and
    # stopped cleanly; the retry reaches the third.
    clock = FakeClock()
    out = tmp_path / "out"
    req = request(otlp_span(TRACE_A, 1, name="root"))
    first = quiet_receiver(out, clock)
    first.start()
    first(req.resource_spans)
    crash(first)
    second = quiet_receiver(out, clock)
    assert len(second.start()) == 1  # recovered
    assert second.shutdown()
    third = quiet_receiver(out, clock)
    third.start()
    third(req.resource_spans)
    clock.advance(5)
    assert third.flush() and third.shutdown()
    assert certified(out, tmp_path) == [span_id(1)]


def test_a_changed_span_after_a_restart_is_still_certified(tmp_path: Path) -> None:
    # Only an identical re-delivery is recognised; a second version is evidence too.
    clock = FakeClock()
    out = tmp_path / "out"
    sealed_then_crashed(out, clock, request(otlp_span(TRACE_A, 1, name="approve")))
    second = quiet_receiver(out, clock)
    second.start()
    second(request(otlp_span(TRACE_A, 1, name="deny")).resource_spans)
    clock.advance(5)
    assert second.flush() and second.shutdown()
    assert certified(out, tmp_path) == [span_id(1), span_id(1)]


def test_a_running_receivers_spans_are_not_taken_over(tmp_path: Path) -> None:
    # Two receivers on one directory: the second does not take the first's file (it
    # is locked), and takes it once the first has stopped.
    clock = FakeClock()
    out = tmp_path / "out"
    first = quiet_receiver(out, clock)
    first.start()
    first(request(otlp_span(TRACE_A, 1)).resource_spans)
    clock.advance(5)
    assert first.flush()
    second = quiet_receiver(out, clock)
    second.start()
    assert len(os.listdir(spans_dir(out))) == 2
    assert second.shutdown()
    assert first.shutdown()
    third = quiet_receiver(out, clock)
    third.start()
    # The first's file taken over (its span in the third's own file), the second's too.
    assert len(os.listdir(spans_dir(out))) == 1
    third(request(otlp_span(TRACE_A, 1)).resource_spans)
    clock.advance(5)
    assert third.flush() and third.shutdown()
    assert certified(out, tmp_path) == [span_id(1)]


def test_the_files_stay_within_the_memory(tmp_path: Path) -> None:
    # Two files of half the span memory each: the oldest go first.
    clock = FakeClock()
    out = tmp_path / "out"
    receiver = quiet_receiver(out, clock, dedup_memory=4)
    receiver.start()
    traces = [f"{n + 1:032x}" for n in range(10)]
    for trace in traces:
        receiver(request(otlp_span(trace, 1)).resource_spans)
        clock.advance(5)
        assert receiver.flush()
    names = os.listdir(spans_dir(out))
    assert len(names) == 2
    sizes = [(spans_dir(out) / name).stat().st_size for name in names]
    assert sum(sizes) <= 2 * len(MAGIC) + 4 * 56
    assert receiver.shutdown()
    later = quiet_receiver(out, clock, dedup_memory=4)
    later.start()
    later(request(otlp_span(traces[-1], 1)).resource_spans)  # remembered
    later(request(otlp_span(traces[0], 1)).resource_spans)  # long forgotten
    clock.advance(5)
    assert later.flush() and later.shutdown()
    assert len(bundle_paths(str(out))) == 11


def test_without_a_span_memory_nothing_is_kept(tmp_path: Path) -> None:
    clock = FakeClock()
    out = tmp_path / "out"
    sealed_then_crashed(out, clock, request(otlp_span(TRACE_A, 1)), dedup_memory=0)
    assert not spans_dir(out).exists()


def test_a_file_not_of_this_format_is_left_and_said_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock()
    out = tmp_path / "out"
    sealed_then_crashed(out, clock, request(otlp_span(TRACE_A, 1)))
    (name,) = os.listdir(spans_dir(out))
    foreign = spans_dir(out) / "sealed-spans-00000000000000aa-0.bin"
    foreign.write_bytes(b"something else\n")
    # A torn last record (a process killed mid-write) keeps the whole ones before it.
    with open(spans_dir(out) / name, "ab") as f:
        f.write(b"\x01" * 20)
    caplog.set_level(logging.WARNING, logger="spanproof.exporter._sealed_spans")
    second = quiet_receiver(out, clock)
    second.start()
    assert f"{foreign} is not a file of sealed spans this version writes" in caplog.text
    second(request(otlp_span(TRACE_A, 1)).resource_spans)
    clock.advance(5)
    assert second.flush() and second.shutdown()
    assert len(bundle_paths(str(out))) == 1


def test_a_forked_process_does_not_keep_the_files_from_the_next_start(tmp_path: Path) -> None:
    clock = FakeClock()
    out = tmp_path / "out"
    first = quiet_receiver(out, clock)
    first.start()
    first(request(otlp_span(TRACE_B, 1)).resource_spans)
    clock.advance(5)
    assert first.flush()
    ready_r, ready_w = os.pipe()
    stop_r, stop_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the forked process: past its fork hooks, alive until told
        os.write(ready_w, b"r")
        os.read(stop_r, 1)
        os._exit(0)
    try:
        assert os.read(ready_r, 1) == b"r"
        assert first.shutdown()
        later: Receiver = quiet_receiver(out, clock)
        later.start()
        assert len(os.listdir(spans_dir(out))) == 1  # the first's taken over
        later(request(otlp_span(TRACE_B, 1)).resource_spans)
        clock.advance(5)
        assert later.flush() and later.shutdown()
    finally:
        os.write(stop_w, b"s")
        os.waitpid(pid, 0)
        for fd in (ready_r, ready_w, stop_r, stop_w):
            os.close(fd)
    assert len(bundle_paths(str(out))) == 1


def test_a_short_write_is_cut_back_so_later_records_stay_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A full disk wrote part of a record and failed: every record appended after it,
    # once there was room again, was misaligned and not recognised after a restart.
    from spanproof.exporter import _sealed_spans
    from spanproof.exporter._sealed_spans import SealedSpanLog

    log = SealedSpanLog(str(tmp_path), "00000000000000aa", 100)
    assert log.take_over() == []
    real = _sealed_spans.write_all

    def short(fd: int, data: bytes) -> None:
        os.write(fd, data[:20])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(_sealed_spans, "write_all", short)
    log.append([("ab" * 16, "01" * 8, b"\x11" * 32)])
    monkeypatch.setattr(_sealed_spans, "write_all", real)
    log.append([("ab" * 16, "02" * 8, b"\x22" * 32)])
    log.close()
    again = SealedSpanLog(str(tmp_path), "00000000000000bb", 100)
    assert again.take_over() == [("ab" * 16, "02" * 8, b"\x22" * 32)]
    again.close()


def test_a_take_over_that_cannot_make_its_file_keeps_what_it_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A full disk at start: the spans read were thrown away with the error, and the
    # files of the stopped receiver stayed locked for this one's whole life.
    from spanproof.exporter._sealed_spans import SealedSpanLog

    span = ("ab" * 16, "01" * 8, b"\x11" * 32)
    first = SealedSpanLog(str(tmp_path), "00000000000000aa", 100)
    first.take_over()
    first.append([span])
    first.close()
    second = SealedSpanLog(str(tmp_path), "00000000000000bb", 100)

    def full(self: SealedSpanLog) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(SealedSpanLog, "_open_next", full)
    assert second.take_over() == [span]
    monkeypatch.undo()
    second.append([("cd" * 16, "02" * 8, b"\x22" * 32)])  # remembers nothing more
    third = SealedSpanLog(str(tmp_path), "00000000000000cc", 100)
    assert third.take_over() == [span]  # the file was kept, and its lock released
    third.close()


def test_only_a_stopped_processs_temporary_files_are_removed(tmp_path: Path) -> None:
    # A starting process's file is named before it is locked: one younger than a
    # minute may be that, and was deleted under it, so it ran remembering nothing.
    from spanproof.exporter._sealed_spans import SealedSpanLog

    young = tmp_path / ".sealed-spans-00000000000000aa-0.bin.0123abcd.new"
    old = tmp_path / ".sealed-spans-00000000000000bb-0.bin.4567cdef.new"
    young.write_bytes(MAGIC)
    old.write_bytes(MAGIC)
    os.utime(old, (0, 0))
    log = SealedSpanLog(str(tmp_path), "00000000000000cc", 100)
    log.take_over()
    log.close()
    assert young.exists() and not old.exists()
