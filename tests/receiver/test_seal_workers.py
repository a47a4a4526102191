"""The receiver's seal workers (``sealing_processes``): the same bundles as sealing in
the receiver's process, writes that fail are retried by the receiver, and a worker
that dies or cannot start leaves the receiver sealing on its own."""

from __future__ import annotations

import contextlib
import fcntl
import glob
import logging
import os
import signal
import struct
import subprocess
import sys
import termios
import threading
import time
from datetime import datetime, timezone

import orjson
import pytest
from processes import child_pids, needs_proc, returns_within, running, wait_for
from receiver_support import (
    TRACE_A,
    TRACE_B,
    FakeClock,
    ReceiverProcess,
    bundle_paths,
    export,
    journal_files,
    otlp_span,
    request,
    signing_key,
    span_id,
    span_ids,
    trust_root,
    verified,
    write_key,
)

from spanproof.exporter import _seal_workers
from spanproof.exporter import receiver as receiver_module
from spanproof.exporter._seal_workers import SealWorkerError, SealWorkers
from spanproof.exporter.assembly import SealJob
from spanproof.exporter.journal import Journal, replay
from spanproof.exporter.otlp import iter_request_spans, otlp_span_to_body
from spanproof.exporter.otlp_server import Unavailable
from spanproof.exporter.receiver import Receiver
from spanproof.exporter.sealing import ChainPosition, SerializedBody, seal
from spanproof.exporter.sinks import DirectorySink
from spanproof.verifier.statement import Completeness, Producer

PRODUCER = Producer("spanproof-receiver", "0", "00112233aabbccdd")
SEALED_AT = datetime(2026, 12, 3, 10, 0, tzinfo=timezone.utc)


def bodies(trace: str, *numbers: int) -> tuple:
    spans = [otlp_span(trace, n, parent=None if n == 1 else 1) for n in numbers]
    return tuple(otlp_span_to_body(span, resource, scope)
                 for span, resource, scope in iter_request_spans(request(*spans).resource_spans))


def serialized(body) -> SerializedBody:
    """*body* as the receiver holds it: its key-sorted JSON."""
    return SerializedBody(body["span"]["spanId"], orjson.dumps(body, option=orjson.OPT_SORT_KEYS))


TRACE_C = "5c" * 16


def jobs() -> list[SealJob]:
    """Segments of every shape a pass can hold: a genesis segment, a continuation
    with conflicts and notes, a body JSON cannot carry, more traces than workers,
    and bodies held as JSON, as the receiver holds them."""
    continuation = ChainPosition(3, 17, "ab" * 32, "cd" * 32)
    (lone,) = bodies(TRACE_B, 4)  # protobuf refuses a lone surrogate; JSON may carry one
    lone["span"]["attributes"]["app.note"] = {"stringValue": "half a pair: \ud800"}
    return [
        SealJob(TRACE_A, bodies(TRACE_A, 1, 2, 3), ChainPosition.genesis(TRACE_A),
                "root_ended", Completeness()),
        SealJob(TRACE_B, bodies(TRACE_B, 2, 3), continuation, "idle_timeout",
                Completeness(dropped_spans=2, conflicts=(span_id(3),), notes=("a note",))),
        SealJob(TRACE_B, (*bodies(TRACE_B, 5), lone), ChainPosition(4, 19, "ef" * 32, "01" * 32),
                "shutdown", Completeness()),
        *(SealJob(f"{n:032x}", bodies(f"{n:032x}", 1), ChainPosition.genesis(f"{n:032x}"),
                  "root_ended", Completeness()) for n in range(1, 6)),
        SealJob(TRACE_C, tuple(map(serialized, bodies(TRACE_C, 1, 2))),
                ChainPosition.genesis(TRACE_C), "root_ended", Completeness()),
    ]


def sealed_here(job: SealJob):
    return seal(job.trace_id, job.bodies, job.position, signer=signing_key(),
                producer=PRODUCER, sealed_at=SEALED_AT, reason=job.reason,
                completeness=job.completeness, reject_unencodable=True)


@pytest.mark.parametrize("round_jobs", [256, 1], ids=["one-round", "a-round-per-job"])
def test_workers_seal_the_bytes_the_receivers_process_would(monkeypatch, round_jobs):
    # A pass larger than a round goes in several rounds, results still in order.
    monkeypatch.setattr(_seal_workers, "_ROUND_JOBS", round_jobs)
    workers = SealWorkers(2, signing_key(), PRODUCER, None)
    try:
        results = workers.seal(jobs(), SEALED_AT)
    finally:
        workers.close()
    assert [r[0] for r in results] == ["sealed"] * len(jobs())
    for job, (_, bundle) in zip(jobs(), results, strict=True):
        expected = sealed_here(job)
        assert bundle.data == expected.data, job.trace_id
        assert bundle.next_position() == expected.next_position()
    # The body JSON cannot carry went as it is, and is declared rejected.
    lone = results[2][1].statement.completeness
    assert (lone.rejected_spans, lone.notes[-1][:18]) == (1, "1 span(s) rejected")


def test_serialized_bodies_seal_as_their_dicts_do():
    (job,) = [job for job in jobs() if job.trace_id == TRACE_C]
    as_dicts = SealJob(job.trace_id, tuple(body.parse() for body in job.bodies),
                       job.position, job.reason, job.completeness)
    assert sealed_here(job).data == sealed_here(as_dicts).data


def test_the_receivers_json_goes_to_a_worker_as_it_is_not_encoded_again(monkeypatch):
    # The receiver journaled each body's JSON; a worker gets those bytes, joined.
    (job,) = [job for job in jobs() if job.trace_id == TRACE_C]
    monkeypatch.setattr(_seal_workers.orjson, "dumps", None)  # any encoding would fail
    portable = _seal_workers._portable(job)
    assert portable[1] == b"[" + b",".join(body.json for body in job.bodies) + b"]"


def test_workers_write_to_a_directory_sink_what_they_seal(tmp_path):
    sink = DirectorySink(tmp_path / "out")
    workers = SealWorkers(2, signing_key(), PRODUCER, None, sink)
    try:
        results = workers.seal(jobs(), SEALED_AT)
    finally:
        workers.close()
    for job, result in zip(jobs(), results, strict=True):
        expected = sealed_here(job)
        kind, path, position = result
        assert kind == "written"
        assert os.path.dirname(path) == str(tmp_path / "out")
        assert os.path.basename(path) == expected.file_name
        with open(path, "rb") as f:
            assert f.read() == expected.data
        assert position == expected.next_position()


def test_a_worker_reports_a_segment_it_cannot_seal_and_seals_the_others():
    broken = SealJob(TRACE_A, ({"resource": {}, "scope": {}},), ChainPosition.genesis(TRACE_A),
                     "root_ended", Completeness())
    good = jobs()[0]
    workers = SealWorkers(1, signing_key(), PRODUCER, None)
    try:
        (failed, sealed) = workers.seal([broken, good], SEALED_AT)
    finally:
        workers.close()
    assert failed[0] == "failed" and failed[1].startswith("KeyError: 'span'")
    assert sealed[0] == "sealed" and sealed[1].data == sealed_here(good).data


def test_a_worker_that_fails_to_write_hands_the_bundle_back(tmp_path):
    (tmp_path / "out").write_text("a file where the directory should be")
    workers = SealWorkers(1, signing_key(), PRODUCER, None, DirectorySink(tmp_path / "out"))
    try:
        (result,) = workers.seal(jobs()[:1], SEALED_AT)
    finally:
        workers.close()
    kind, bundle, error = result
    assert kind == "unwritten" and error.startswith("FileExistsError")
    assert bundle.data == sealed_here(jobs()[0]).data


def test_meanwhile_runs_once_after_the_first_round_is_sent(monkeypatch):
    # The receiver retires the previous pass's journal entries while the workers
    # seal: after every worker has its first round, before any answer is read.
    monkeypatch.setattr(_seal_workers, "_ROUND_JOBS", 2)
    events: list[str] = []
    real_send, real_receive = _seal_workers._Worker.send, _seal_workers._Worker.receive

    def send(self, message):
        events.append(message[0])
        real_send(self, message)

    def receive(self):
        events.append("answer")
        return real_receive(self)

    workers = SealWorkers(2, signing_key(), PRODUCER, None)
    try:
        monkeypatch.setattr(_seal_workers._Worker, "send", send)
        monkeypatch.setattr(_seal_workers._Worker, "receive", receive)
        results = workers.seal(jobs(), SEALED_AT, meanwhile=lambda: events.append("meanwhile"))
    finally:
        workers.close()
    assert [r[0] for r in results] == ["sealed"] * len(jobs())
    assert events[:5] == ["seal", "seal", "meanwhile", "answer", "answer"]
    assert events.count("meanwhile") == 1
    assert events.count("seal") == events.count("answer") > 2  # several rounds


def test_an_error_in_meanwhile_is_raised_after_the_answers_are_read():
    # The answers of the round under way are read before the error is raised: the
    # next pass must not read this one's answers as its own.
    def fails() -> None:
        raise RuntimeError("retiring failed")

    workers = SealWorkers(2, signing_key(), PRODUCER, None)
    try:
        with pytest.raises(RuntimeError, match="retiring failed"):
            workers.seal(jobs()[:2], SEALED_AT, meanwhile=fails)
        results = workers.seal(jobs(), SEALED_AT)
    finally:
        workers.close()
    for job, (_, bundle) in zip(jobs(), results, strict=True):
        assert bundle.data == sealed_here(job).data, job.trace_id


def test_a_worker_whose_output_ends_is_reported_with_its_exit_code():
    workers = SealWorkers(1, signing_key(), PRODUCER, None)
    try:
        (worker,) = workers._workers
        worker.proc.kill()
        with pytest.raises(SealWorkerError, match=rf"exited \(exit code -{int(signal.SIGKILL)}\)"):
            worker.receive()
    finally:
        workers.close()


def test_closed_workers_refuse_and_leave_no_process():
    workers = SealWorkers(2, signing_key(), PRODUCER, None)
    pids = workers.pids
    workers.close()
    for pid in pids:
        with pytest.raises(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)  # already reaped: no zombie, no orphan
    with pytest.raises(SealWorkerError, match="closed"):
        workers.seal(jobs()[:1], SEALED_AT)


# -- the receiver with seal workers -----------------------------------------------------


def make_receiver(out, clock, **kwargs):
    return Receiver(out, signing_key=signing_key(), clock=clock, seal_grace=2.0,
                    idle_timeout=30.0, **kwargs)


def test_a_worker_write_failure_is_retried_by_the_receiver(tmp_path):
    # The workers write to the directory; when that fails the receiver keeps the
    # bundles, answers UNAVAILABLE, keeps the spans journaled, and writes them itself
    # once the disk is back.
    clock = FakeClock()
    out = tmp_path / "out"
    receiver = make_receiver(out, clock, sealing_processes=1,
                             journal_dir=tmp_path / "journal")
    receiver.start()
    if out.is_dir():
        out.rmdir()  # nothing in it yet
    out.write_text("in the way")
    receiver(request(otlp_span(TRACE_A, 1), otlp_span(TRACE_B, 1)).resource_spans)
    clock.advance(2.5)
    assert not receiver.flush()
    with pytest.raises(Unavailable, match="cannot write bundles"):
        receiver(request(otlp_span(TRACE_A, 2, parent=1)).resource_spans)
    assert journal_files(receiver.journal_dir) != []
    out.unlink()
    assert receiver.flush()
    reports = verified(str(out), trust_root(str(tmp_path)))
    assert sorted(r.statement.trace_id for r in reports) == sorted([TRACE_A, TRACE_B])
    assert receiver.shutdown()
    assert journal_files(receiver.journal_dir) == []


def test_a_pass_is_retired_while_the_workers_seal_the_next_one(tmp_path, monkeypatch):
    # The journal's "sealed" entries of one pass are written while the workers seal
    # the next pass of the same cycle, not while they wait; the last pass's at the
    # end of the cycle, so flush() leaves nothing to seal again after a crash.
    clock = FakeClock()
    out = tmp_path / "out"
    receiver = make_receiver(out, clock, sealing_processes=1)
    receiver.start()
    events: list[tuple[str, ...]] = []
    real_seal, real_append = SealWorkers.seal, Journal.append_sealed_many

    def seal_pass(self, jobs, sealed_at, meanwhile=None):
        traces = tuple(job.trace_id for job in jobs)
        events.append(("pass", *traces))
        if traces == (TRACE_A,):
            # Trace B arrives and falls due while A is sealed: a second pass follows.
            receiver(request(otlp_span(TRACE_B, 1)).resource_spans)
            clock.advance(2.5)
        results = real_seal(self, jobs, sealed_at, meanwhile)
        events.append(("passed", *traces))
        return results

    def append_sealed_many(self, items):
        items = list(items)
        events.append(("retired", *(item[0] for item in items)))
        real_append(self, items)

    monkeypatch.setattr(SealWorkers, "seal", seal_pass)
    monkeypatch.setattr(Journal, "append_sealed_many", append_sealed_many)
    receiver(request(otlp_span(TRACE_A, 1)).resource_spans)
    clock.advance(2.5)
    assert receiver.flush()
    assert events == [("pass", TRACE_A), ("passed", TRACE_A),
                      ("pass", TRACE_B), ("retired", TRACE_A), ("passed", TRACE_B),
                      ("retired", TRACE_B)]
    # Nothing is left for a restart to seal again.
    assert replay(sorted(glob.glob(os.path.join(receiver.journal_dir, "journal-*.log")))) == {}
    assert receiver.shutdown()
    assert sorted(r.statement.trace_id for r in verified(str(out), trust_root(str(tmp_path)))
                  ) == sorted([TRACE_A, TRACE_B])


def test_a_worker_killed_mid_run_leaves_the_receiver_sealing_itself(
    tmp_path, caplog, monkeypatch
):
    monkeypatch.setattr(receiver_module, "_WORKERS_RESTART_SECONDS", 600.0)
    clock = FakeClock()
    out = tmp_path / "out"
    receiver = make_receiver(out, clock, sealing_processes=1)
    receiver.start()
    receiver(request(otlp_span(TRACE_A, 1)).resource_spans)
    clock.advance(2.5)
    assert receiver.flush()
    (pid,) = receiver._workers.pids
    os.kill(pid, signal.SIGKILL)
    receiver(request(otlp_span(TRACE_A, 2, parent=1), otlp_span(TRACE_B, 1)).resource_spans)
    clock.advance(2.5)
    with caplog.at_level(logging.ERROR, logger="spanproof.exporter.receiver"):
        assert receiver.flush()
    assert "sealing in the receiver's process, and starting the seal workers again " \
           "in 600 s" in caplog.text
    assert receiver._workers is None
    assert receiver.shutdown()
    reports = verified(str(out), trust_root(str(tmp_path)))
    segments = {(r.statement.trace_id, r.statement.segment_index): span_ids(r)
                for r in reports}
    assert segments == {(TRACE_A, 0): [span_id(1)], (TRACE_A, 1): [span_id(2)],
                        (TRACE_B, 0): [span_id(1)]}
    assert journal_files(receiver.journal_dir) == []


def test_bundles_a_worker_wrote_before_it_died_are_not_sealed_again(
    tmp_path, caplog, monkeypatch
):
    # The worker wrote the pass's bundles, then died before it answered.  With
    # committed values (fresh salts) sealing them again would give other bytes: a
    # second bundle of the same segment, a fork of the chain.
    real_seal = SealWorkers.seal

    def wrote_then_died(self, jobs, sealed_at, meanwhile=None):
        real_seal(self, jobs, sealed_at, meanwhile)
        raise SealWorkerError("seal worker 1 exited (exit code -9)")

    clock = FakeClock()
    out = tmp_path / "out"
    receiver = make_receiver(out, clock, sealing_processes=1, redact_attributes=["app.*"])
    receiver.start()
    monkeypatch.setattr(SealWorkers, "seal", wrote_then_died)
    receiver(request(otlp_span(TRACE_A, 1, extra={"app.secret": "s1"}),
                     otlp_span(TRACE_B, 1, extra={"app.secret": "s2"})).resource_spans)
    clock.advance(2.5)
    with caplog.at_level(logging.ERROR, logger="spanproof.exporter.receiver"):
        assert receiver.flush()
    assert "exit code -9" in caplog.text
    receiver(request(otlp_span(TRACE_A, 2, parent=1, extra={"app.secret": "s3"})).resource_spans)
    clock.advance(2.5)
    assert receiver.flush()  # sealed in the receiver, continuing the worker's segment
    assert receiver.shutdown()
    names = sorted(os.listdir(out))
    assert len([n for n in names if n.endswith(".spanproof.json")]) == 3, names
    assert not [n for n in names if ".1." in n], names  # no second copy of a segment
    reports = verified(str(out), trust_root(str(tmp_path)))
    a = [r for r in reports if r.statement.trace_id == TRACE_A]
    assert [r.statement.segment_index for r in a] == [0, 1]
    assert a[1].statement.previous_statement == a[0].statement_digest
    assert journal_files(receiver.journal_dir) == []


def directory_fsyncs(monkeypatch, events: list, directory) -> None:
    """Record in *events* each fsync of *directory* this process makes."""
    real_fsync = os.fsync
    directory = os.path.realpath(directory)

    def fsync(fd):
        if os.path.realpath(f"/proc/self/fd/{fd}") == directory:
            events.append("fsync output directory")
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)


@needs_proc
def test_bundles_a_dead_worker_wrote_are_durable_before_their_spans_are_retired(
    tmp_path, monkeypatch
):
    # A worker killed between linking its bundles into place and fsyncing the
    # directory leaves names a power loss can take away.  The receiver takes those
    # bundles as written: it must make them durable before it journals their spans
    # as sealed, or a power loss then loses spans no bundle declares.
    events: list[str] = []
    real_seal = SealWorkers.seal

    def wrote_then_died(self, jobs, sealed_at, meanwhile=None):
        real_seal(self, jobs, sealed_at, meanwhile)
        events.append("worker died")
        raise SealWorkerError("seal worker 1 exited (exit code -9)")

    clock = FakeClock()
    out = tmp_path / "out"
    receiver = make_receiver(out, clock, sealing_processes=1)
    receiver.start()
    real_retire = receiver._journal.append_sealed_many

    def retire(items):
        events.append("retire")
        return real_retire(items)

    monkeypatch.setattr(receiver._journal, "append_sealed_many", retire)
    monkeypatch.setattr(SealWorkers, "seal", wrote_then_died)
    directory_fsyncs(monkeypatch, events, out)
    receiver(request(otlp_span(TRACE_A, 1), otlp_span(TRACE_B, 1)).resource_spans)
    clock.advance(2.5)
    assert receiver.flush()
    after = events[events.index("worker died") + 1:]
    assert "retire" in after
    assert "fsync output directory" in after[:after.index("retire")], events
    assert receiver.shutdown()
    assert len(bundle_paths(str(out))) == 2


def test_disclosures_a_dead_worker_left_unnamed_are_named_when_its_bundle_is_kept(
    tmp_path, monkeypatch
):
    # A worker killed between linking a bundle into place and renaming its
    # disclosures leaves them under a temporary name.  The receiver keeps the
    # bundle: its disclosures, the only way to open its commitments, must get
    # their name too, not wait for the next start.
    real_seal = SealWorkers.seal

    def linked_then_died(self, jobs, sealed_at, meanwhile=None):
        real_seal(self, jobs, sealed_at, meanwhile)
        for path in glob.glob(str(out / "*.disclosures.json")):
            name = os.path.basename(path).removesuffix(".disclosures.json")
            os.rename(path, str(out / f".{name}.spanproof.json.0123abcd.tmp"))
        raise SealWorkerError("seal worker 1 exited (exit code -9)")

    clock = FakeClock()
    out = tmp_path / "out"
    receiver = make_receiver(out, clock, sealing_processes=1, redact_attributes=["app.*"])
    receiver.start()
    monkeypatch.setattr(SealWorkers, "seal", linked_then_died)
    receiver(request(otlp_span(TRACE_A, 1, extra={"app.secret": "s1"})).resource_spans)
    clock.advance(2.5)
    assert receiver.flush()
    (bundle,) = bundle_paths(str(out))
    named = bundle.removesuffix(".spanproof.json") + ".disclosures.json"
    assert os.path.exists(named), sorted(os.listdir(out))
    assert not glob.glob(str(out / ".*.tmp"))
    assert receiver.shutdown()


def test_the_workers_are_started_again_later_twice_as_late_after_each_failure(
    tmp_path, caplog, monkeypatch
):
    # Workers that failed once (a crash, a round that outlasted its allowance on a
    # disk that stalled) need not halve the receiver's throughput until a restart.
    monkeypatch.setattr(receiver_module, "_WORKERS_RESTART_SECONDS", 1.5)
    monkeypatch.setattr(receiver_module, "_MAX_WORKERS_RESTART_SECONDS", 4.0)
    clock = FakeClock()
    out = tmp_path / "out"
    receiver = make_receiver(out, clock, sealing_processes=1)
    receiver.start()
    (first,) = receiver._workers.pids
    os.kill(first, signal.SIGKILL)

    def seal_a_trace(number: int) -> None:
        receiver(request(otlp_span(f"{number:032x}", 1)).resource_spans)
        clock.advance(2.5)
        assert receiver.flush()

    with caplog.at_level(logging.WARNING, logger="spanproof.exporter.receiver"):
        seal_a_trace(1)  # finds the worker gone
        assert "starting the seal workers again in 1.5 s" in caplog.text
        seal_a_trace(2)  # too soon: sealed here
        assert receiver._workers is None
        time.sleep(1.6)
        with monkeypatch.context() as m:
            m.setattr(receiver_module, "SealWorkers", _failing_workers)
            seal_a_trace(3)  # the start fails: the next is three seconds away
        assert "cannot start the seal workers (no python); sealing in the receiver's " \
               "process, and starting the seal workers again in 3 s" in caplog.text
        time.sleep(0.5)
        seal_a_trace(4)
        assert receiver._workers is None
        time.sleep(2.6)
        seal_a_trace(5)
        (second,) = receiver._workers.pids
        assert second != first and running(second)
        assert f"seal workers started again (pids {second})" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="spanproof.exporter.receiver"):
        os.kill(second, signal.SIGKILL)
        seal_a_trace(6)  # workers lost soon after they started: twice 3 s, at most 4
    assert "starting the seal workers again in 4 s" in caplog.text
    assert receiver.shutdown()
    reports = verified(str(out), trust_root(str(tmp_path)))
    assert sorted(r.statement.trace_id for r in reports) == [f"{n:032x}" for n in range(1, 7)]


def _failing_workers(*args, **kwargs):
    raise SealWorkerError("no python")


@contextlib.contextmanager
def stopped_worker_with_a_pass_due(out, clock, journal):
    """A started receiver with one seal worker, stopped (SIGSTOP), and 300 traces
    due (~300 KB of bodies: more than the worker's pipe holds); yields the
    receiver, the worker's pid and the traces, and resumes the worker if it runs."""
    receiver = make_receiver(out, clock, sealing_processes=1, journal_dir=journal)
    receiver.start()
    (pid,) = receiver._workers.pids
    traces = [f"{n:032x}" for n in range(1, 301)]
    os.kill(pid, signal.SIGSTOP)
    try:
        for trace in traces:
            receiver(request(otlp_span(trace, 1, extra={"app.x": os.urandom(500).hex()})
                             ).resource_spans)
        clock.advance(2.5)
        yield receiver, pid, traces
    finally:
        if running(pid):
            os.kill(pid, signal.SIGCONT)


def test_shutdown_stops_a_worker_that_stopped_answering_and_loses_nothing(
    tmp_path, monkeypatch, caplog
):
    # A worker that stops reading or answering (SIGSTOP, stuck) held the sealer's
    # pass, and shutdown() waiting for it, for good.  At the deadline the workers are
    # killed: the spans are journaled, so the next start seals what is left.
    monkeypatch.setattr(receiver_module, "_MIN_SHUTDOWN_SECONDS", 0.5)
    clock = FakeClock()
    out, journal = tmp_path / "out", tmp_path / "journal"
    with stopped_worker_with_a_pass_due(out, clock, journal) as (receiver, pid, traces):
        with receiver._cond:
            receiver._cond.notify()  # the sealer: a pass is due
        wait_for(lambda: receiver._seal_lock.locked(), 10, "the sealer to start a pass")
        with caplog.at_level(logging.ERROR, logger="spanproof.exporter.receiver"):
            returns_within(lambda: receiver.shutdown(timeout=0.5), 10,
                           "shutdown() with a pass held by the stopped worker")
        assert "have not finished their pass by the shutdown deadline" in caplog.text
    wait_for(lambda: not running(pid), 10, "the worker to be gone")
    receiver._thread.join(60)  # the sealer finished the pass in its own process
    assert not receiver._thread.is_alive()
    again = make_receiver(out, clock, journal_dir=journal)
    again.start()
    assert again.shutdown()
    reports = verified(str(out), trust_root(str(tmp_path)))
    assert sorted(r.statement.trace_id for r in reports) == traces  # each exactly once


def sealing_within(workers: SealWorkers, seconds: float, meanwhile=None):
    """What ``workers.seal(jobs(), ...)`` returned or raised; fails unless it did so
    within *seconds* (then the workers are killed, which ends the call)."""
    outcome: list = []

    def call() -> None:
        try:
            outcome.append(workers.seal(jobs(), SEALED_AT, meanwhile))
        except Exception as e:
            outcome.append(e)

    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        workers.kill()  # a write or read blocked on a stopped worker fails
        thread.join(10)
        pytest.fail(f"seal() did not return within {seconds} s")
    return outcome[0]


@pytest.mark.parametrize("meanwhile", [None, lambda: None],
                         ids=["no-own-work", "after-the-receivers-own-work"])
def test_a_round_that_outlasts_its_allowance_kills_the_stopped_workers(monkeypatch, meanwhile):
    # A worker that stops reading or answering (SIGSTOP, a debugger, a deadlock)
    # held the receiver's sealer, and every pass after it, until shutdown.  The
    # requests fit in the pipes: the round waits for the answers (the receiver's
    # test below fills a pipe, so the write waits).
    monkeypatch.setattr(_seal_workers, "_ROUND_SECONDS", 0.5)
    monkeypatch.setattr(_seal_workers, "_SECONDS_PER_BODY", 0.0)
    workers = SealWorkers(2, signing_key(), PRODUCER, None)
    stopped, other = workers.pids
    try:
        os.kill(stopped, signal.SIGSTOP)
        error = sealing_within(workers, 15, meanwhile)
        assert isinstance(error, SealWorkerError), error
        assert f"seal worker(s) {stopped}, {other} did not finish a round of " \
               f"{len(jobs())} segment(s)" in str(error)
        assert "(stopped or stuck) and were killed" in str(error)
        wait_for(lambda: not running(stopped) and not running(other), 10, "the workers killed")
        with pytest.raises(SealWorkerError, match="did not finish a round"):
            workers.seal(jobs(), SEALED_AT)  # they are gone: every later pass is told why
    finally:
        workers.close(0)


def test_a_round_within_its_allowance_per_span_is_waited_for(monkeypatch):
    # The allowance grows with the spans a round seals: a large pass at shutdown
    # (every pending trace) takes longer than a small one, and is no sign of a stuck
    # worker.  Here a worker stopped for a second, under an allowance of 0.3 s plus
    # a second per span, is waited for.
    monkeypatch.setattr(_seal_workers, "_ROUND_SECONDS", 0.3)
    monkeypatch.setattr(_seal_workers, "_SECONDS_PER_BODY", 1.0)
    workers = SealWorkers(1, signing_key(), PRODUCER, None)
    (pid,) = workers.pids
    try:
        os.kill(pid, signal.SIGSTOP)
        resume = threading.Timer(1.0, os.kill, (pid, signal.SIGCONT))
        resume.start()
        results = sealing_within(workers, 15)
        resume.join()
        assert [r[0] for r in results] == ["sealed"] * len(jobs())
        assert running(pid)
    finally:
        workers.close()


def test_the_receivers_own_work_during_a_round_does_not_count_against_the_workers(
    monkeypatch
):
    # *meanwhile* is the receiver retiring journal entries (an fsync), not the
    # workers sealing: their allowance starts again once it returns.
    monkeypatch.setattr(_seal_workers, "_ROUND_SECONDS", 0.5)
    monkeypatch.setattr(_seal_workers, "_SECONDS_PER_BODY", 0.0)
    workers = SealWorkers(1, signing_key(), PRODUCER, None)
    try:
        results = sealing_within(workers, 15, meanwhile=lambda: time.sleep(1.0))
        assert [r[0] for r in results] == ["sealed"] * len(jobs())
        assert [r[0] for r in workers.seal(jobs(), SEALED_AT)] == ["sealed"] * len(jobs())
    finally:
        workers.close()


def test_a_stopped_worker_leaves_the_receiver_sealing_itself_and_loses_nothing(
    tmp_path, monkeypatch, caplog
):
    # Before, the pass waited on the stopped worker until shutdown, and the receiver
    # sealed nothing more meanwhile.  Now the workers are killed once the round
    # outlasts its allowance, and the receiver seals that pass, and every later one,
    # in its own process.
    monkeypatch.setattr(_seal_workers, "_ROUND_SECONDS", 0.5)
    monkeypatch.setattr(_seal_workers, "_SECONDS_PER_BODY", 0.0)
    clock = FakeClock()
    out = tmp_path / "out"
    with stopped_worker_with_a_pass_due(out, clock, tmp_path / "journal") as (
            receiver, pid, traces):
        flushed: list[bool] = []
        with caplog.at_level(logging.ERROR, logger="spanproof.exporter.receiver"):
            returns_within(lambda: flushed.append(receiver.flush()), 30,
                           "flush() with the worker stopped")
        assert flushed == [True]
        assert f"seal worker(s) {pid} did not finish a round of " in caplog.text
        assert "sealing in the receiver's process, and starting the seal workers again" \
               in caplog.text
        assert receiver._workers is None
        assert not running(pid)
        receiver(request(otlp_span(TRACE_A, 1)).resource_spans)
        clock.advance(2.5)
        assert receiver.flush()
    assert receiver.shutdown()
    reports = verified(str(out), trust_root(str(tmp_path)))
    assert sorted(r.statement.trace_id for r in reports) == sorted([*traces, TRACE_A])
    assert journal_files(receiver.journal_dir) == []


def test_workers_that_cannot_start_leave_the_receiver_sealing_itself(
    tmp_path, caplog, monkeypatch
):
    def exiting_child(module, function, **kwargs):
        return subprocess.Popen([sys.executable, "-c", "import sys; sys.exit(3)"],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE)

    monkeypatch.setattr(_seal_workers, "spawn_child", exiting_child)
    clock = FakeClock()
    receiver = make_receiver(tmp_path / "out", clock, sealing_processes=2)
    with caplog.at_level(logging.ERROR, logger="spanproof.exporter.receiver"):
        receiver.start()
    assert "cannot start the seal workers" in caplog.text
    assert receiver._workers is None
    receiver(request(otlp_span(TRACE_A, 1)).resource_spans)
    assert receiver.shutdown()
    (report,) = verified(str(tmp_path / "out"), trust_root(str(tmp_path)))
    assert span_ids(report) == [span_id(1)]


def test_shutdown_stops_the_workers(tmp_path):
    receiver = make_receiver(tmp_path / "out", FakeClock(), sealing_processes=2)
    receiver.start()
    pids = receiver._workers.pids
    receiver(request(otlp_span(TRACE_A, 1, parent=9)).resource_spans)
    assert receiver.shutdown()
    for pid in pids:
        with pytest.raises(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
    (report,) = verified(str(tmp_path / "out"), trust_root(str(tmp_path)))
    assert report.statement.seal_reason == "shutdown"


def test_sealing_processes_must_not_be_negative(tmp_path):
    with pytest.raises(ValueError, match="sealing_processes"):
        make_receiver(tmp_path / "out", FakeClock(), sealing_processes=-1)


# -- the receiver process with seal workers ---------------------------------------------

HOLD = ("--seal-grace-ms", "600000", "--idle-timeout-ms", "600000")


@needs_proc
def test_sigterm_to_the_whole_group_seals_everything_with_the_workers(tmp_path):
    # A service manager stops a service by signalling every process in it: the
    # workers ignore it, and the receiver seals what is pending with them.
    key, _ = write_key(str(tmp_path))
    out = str(tmp_path / "out")
    proc = ReceiverProcess(out, key, *HOLD, "--sealing-processes", "2")
    export(proc.grpc, otlp_span(TRACE_A, 1), otlp_span(TRACE_A, 2, parent=1),
           otlp_span(TRACE_B, 1, parent=7))
    workers = child_pids(proc.proc.pid)
    assert len(workers) == 2
    for pid in workers:
        os.kill(pid, signal.SIGTERM)
    time.sleep(0.2)
    assert all(running(pid) for pid in workers)
    assert proc.stop(signal.SIGTERM, 30) == 0, proc.log()
    assert "receiver stopped: everything sealed" in "".join(proc.lines)
    assert "seal worker" not in proc.log()  # no worker failed
    reports = verified(out, trust_root(str(tmp_path)))
    assert {r.statement.trace_id: span_ids(r) for r in reports} == {
        TRACE_A: [span_id(1), span_id(2)], TRACE_B: [span_id(1)]}
    wait_for(lambda: not any(running(pid) for pid in workers), 10, "the workers to exit")


@needs_proc
def test_workers_exit_when_the_receiver_is_killed(tmp_path):
    key, _ = write_key(str(tmp_path))
    proc = ReceiverProcess(str(tmp_path / "out"), key, *HOLD, "--sealing-processes", "2")
    workers = child_pids(proc.proc.pid)
    assert len(workers) == 2
    assert proc.stop(signal.SIGKILL) == -signal.SIGKILL
    wait_for(lambda: not any(running(pid) for pid in workers), 10, "the workers to exit")


def _unread_input(pid: int) -> int:
    """The bytes waiting in the pipe process *pid* reads its input from."""
    fd = os.open(f"/proc/{pid}/fd/0", os.O_RDONLY | os.O_NONBLOCK)
    try:
        return struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0" * 4))[0]
    finally:
        os.close(fd)


@needs_proc
def test_a_worker_orphaned_by_a_killed_receiver_does_not_write_a_second_bundle(tmp_path):
    # The receiver sent a round to a worker and was killed (kill -9, the OOM killer)
    # before the answer; the next receiver recovers the journal and seals the
    # round's spans ("recovered").  The orphaned worker, still holding the round,
    # must not write its own bundle of the same segment: the spans would be
    # certified twice (the second one under another file name).
    key, _ = write_key(str(tmp_path))
    out = str(tmp_path / "out")
    first = ReceiverProcess(out, key, "--seal-grace-ms", "0", "--sealing-processes", "1")
    (worker,) = child_pids(first.proc.pid)
    os.kill(worker, signal.SIGSTOP)
    try:
        export(first.grpc, otlp_span(TRACE_A, 1))
        wait_for(lambda: _unread_input(worker), 30, "the round in the stopped worker's pipe")
        assert first.stop(signal.SIGKILL) == -signal.SIGKILL
        second = ReceiverProcess(out, key, "--sealing-processes", "1")
        assert any(line.startswith("recovered") for line in second.lines), second.lines
    finally:
        os.kill(worker, signal.SIGCONT)
    wait_for(lambda: not running(worker), 30, "the orphaned worker to exit")
    assert second.stop(signal.SIGTERM, 30) == 0, second.log()
    names = sorted(n for n in os.listdir(out) if n.endswith(".spanproof.json"))
    reports = verified(out, trust_root(str(tmp_path)))
    assert [(r.statement.trace_id, span_ids(r)) for r in reports] == [
        (TRACE_A, [span_id(1)])], names


def test_temporary_files_of_a_dead_workers_pass_are_removed_at_once(tmp_path, monkeypatch):
    # A worker killed mid-write leaves the temporary files of the bundles it was
    # writing.  They were removed only by the next start, an hour old: a receiver
    # whose workers were killed again and again (stopped, stuck) gathered a pass's
    # worth each time.  Those of another producer instance may be a live write.
    def staged_then_died(self, jobs, sealed_at, meanwhile=None):
        for job in jobs:
            name = f"{job.trace_id}-{job.position.segment_index:04d}-{instance}.spanproof.json"
            (out / f".{name}.0123abcd.tmp").write_bytes(b"{")
        raise SealWorkerError("seal worker 1 exited (exit code -9)")

    clock = FakeClock()
    out = tmp_path / "out"
    receiver = make_receiver(out, clock, sealing_processes=1)
    receiver.start()
    instance = receiver.producer.instance
    other = f".{TRACE_A}-0000-{'0' * 16}.spanproof.json.89abcdef.tmp"
    (out / other).write_bytes(b"{")
    monkeypatch.setattr(SealWorkers, "seal", staged_then_died)
    receiver(request(otlp_span(TRACE_A, 1), otlp_span(TRACE_B, 2)).resource_spans)
    clock.advance(2.5)
    assert receiver.flush()
    assert len(bundle_paths(str(out))) == 2
    assert sorted(p.name for p in out.glob(".*.tmp")) == [other]
    assert receiver.shutdown()
