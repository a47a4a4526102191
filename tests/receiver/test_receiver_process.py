"""``spanproof receiver`` as a process: SIGTERM, kill -9 and recovery, usage errors."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys

import pytest
from receiver_support import (
    TRACE_A,
    TRACE_B,
    ReceiverProcess,
    bundle_paths,
    export,
    journal_files,
    otlp_span,
    span_id,
    span_ids,
    trust_root,
    verified,
    write_key,
)
from thread_signals import skip_unless_available

# Long enough that nothing is sealed while the test runs, unless shut down.
HOLD = ("--seal-grace-ms", "600000", "--idle-timeout-ms", "600000")


@pytest.mark.parametrize("thread", ["main", "another"])
def test_sigterm_seals_everything_and_exits_0(tmp_path, thread):
    # The kernel gives a process's signal to any thread that does not block it;
    # delivered to a server thread, it must still stop the receiver.
    if thread == "another":
        skip_unless_available()
    key, _ = write_key(str(tmp_path))
    out = str(tmp_path / "out")
    proc = ReceiverProcess(out, key, *HOLD)
    export(proc.grpc, otlp_span(TRACE_A, 1), otlp_span(TRACE_A, 2, parent=1),
           otlp_span(TRACE_B, 1, parent=7))
    assert bundle_paths(out) == []
    assert proc.stop(signal.SIGTERM, 30, thread=thread) == 0, proc.log()
    assert "receiver stopped: everything sealed" in "".join(proc.lines)
    reports = verified(out, trust_root(str(tmp_path)))
    assert {r.statement.trace_id: span_ids(r) for r in reports} == {
        TRACE_A: [span_id(1), span_id(2)], TRACE_B: [span_id(1)]}
    assert {r.statement.seal_reason for r in reports} == {"shutdown"}


def test_sigterm_while_the_receiver_is_being_set_up_stops_it_cleanly(tmp_path):
    # The handlers were installed only once the receiver was built: a SIGTERM during
    # the imports and set-up (a service manager stopping it as it starts) killed the
    # process, exit status -15.  Here the signal comes from inside the set-up.
    key, _ = write_key(str(tmp_path))
    out = str(tmp_path / "out")
    script = (
        "import os, signal, sys\n"
        "from spanproof.exporter import receiver as module\n"
        "built = module.Receiver.__init__\n"
        "def signalled(self, *args, **kwargs):\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "    built(self, *args, **kwargs)\n"
        "module.Receiver.__init__ = signalled\n"
        "from spanproof.verifier._cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, "receiver", "--grpc", "127.0.0.1:0", "--no-http",
         "--out", out, "--key", key], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "receiver stopped: everything sealed" in done.stdout


def test_kill_9_after_acknowledging_then_restart_recovers_the_spans(tmp_path):
    key, _ = write_key(str(tmp_path))
    out = str(tmp_path / "out")
    first = ReceiverProcess(out, key, *HOLD)
    export(first.grpc, otlp_span(TRACE_A, 1), otlp_span(TRACE_A, 2, parent=1))
    export(first.grpc, otlp_span(TRACE_A, 3, parent=1), otlp_span(TRACE_B, 1, parent=5))
    assert first.stop(signal.SIGKILL) == -signal.SIGKILL
    assert bundle_paths(out) == []  # acknowledged, journaled, never sealed

    second = ReceiverProcess(out, key, *HOLD)
    assert any(line.startswith("recovered") for line in second.lines), second.lines
    recovered = verified(out, trust_root(str(tmp_path)))
    assert {r.statement.trace_id: span_ids(r) for r in recovered} == {
        TRACE_A: [span_id(1), span_id(2), span_id(3)], TRACE_B: [span_id(1)]}
    assert {r.statement.seal_reason for r in recovered} == {"recovered"}
    instances = {r.statement.producer.instance for r in recovered}
    assert len(instances) == 1
    assert all("recovered: these spans were journaled" in r.statement.completeness.notes[0]
               for r in recovered)
    # A Collector retrying the batch it never saw acknowledged duplicates nothing.
    export(second.grpc, otlp_span(TRACE_A, 3, parent=1), otlp_span(TRACE_B, 1, parent=5))
    assert second.stop(signal.SIGTERM) == 0, second.log()
    after = verified(out, trust_root(str(tmp_path)))
    assert [r.source for r in after] == [r.source for r in recovered]
    # The dead instance's journal was retired once its spans were sealed, and the
    # second instance retired its own at shutdown.
    assert journal_files(os.path.join(out, "journal")) == []


def test_a_receiver_that_cannot_listen_exits_1_and_leaves_the_journal(tmp_path):
    # It listens before it recovers the journal (so probes get an answer meanwhile);
    # one that cannot listen exits before taking an earlier receiver's spans.
    key, _ = write_key(str(tmp_path))
    out = str(tmp_path / "out")
    first = ReceiverProcess(out, key, *HOLD)
    export(first.grpc, otlp_span(TRACE_A, 1))
    assert first.stop(signal.SIGKILL) == -signal.SIGKILL
    journal = journal_files(os.path.join(out, "journal"))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        result = subprocess.run(
            [sys.executable, "-m", "spanproof.verifier", "receiver", "--out", out,
             "--key", key, "--grpc", f"127.0.0.1:{taken.getsockname()[1]}", "--no-http"],
            capture_output=True, text=True, timeout=60,
        )
    assert result.returncode == 1, result.stderr
    assert "cannot listen" in result.stderr
    assert bundle_paths(out) == []
    assert journal_files(os.path.join(out, "journal")) == journal
    second = ReceiverProcess(out, key, *HOLD)
    assert second.stop(signal.SIGTERM) == 0, second.log()
    assert [span_ids(r) for r in verified(out, trust_root(str(tmp_path)))] == [[span_id(1)]]


def test_a_second_receiver_on_the_grpc_port_of_a_running_one_exits_1(tmp_path):
    # gRPC shares a port (SO_REUSEPORT) unless told not to: the second receiver
    # started, and the kernel split the Collectors' connections between the two,
    # one trace's spans landing in two output directories.  (Without the fix this
    # waits for the timeout: the second receiver runs.)
    key, _ = write_key(str(tmp_path))
    first = ReceiverProcess(str(tmp_path / "out"), key, *HOLD)
    try:
        result = subprocess.run(
            [sys.executable, "-m", "spanproof.verifier", "receiver",
             "--out", str(tmp_path / "second"), "--key", key,
             "--grpc", first.grpc, "--no-http"],
            capture_output=True, text=True, timeout=30,
        )
    finally:
        assert first.stop(signal.SIGTERM) == 0, first.log()
    assert result.returncode == 1, result.stderr
    assert "spanproof: error: cannot listen: " in result.stderr, result.stderr
    assert first.grpc in result.stderr
    assert not os.path.exists(tmp_path / "second")


def test_usage_errors_exit_2(tmp_path):
    key, _ = write_key(str(tmp_path))
    for args, message in (
        (["--grpc", "localhost"], "--grpc must be HOST:PORT"),
        (["--http", "127.0.0.1:99999"], "--http must be HOST:PORT"),
        (["--max-records", "0"], "--max-records must be an integer >= 1"),
        (["--seal-grace-ms", "soon"],
         "argument --seal-grace-ms: must be a whole number in the digits 0-9, not 'soon'"),
        (["--sealing-processes", "-1"],
         "argument --sealing-processes: must be a whole number in the digits 0-9, not '-1'"),
    ):
        result = subprocess.run(
            [sys.executable, "-m", "spanproof.verifier", "receiver", "--out",
             str(tmp_path / "out"), "--key", key, *args],
            capture_output=True, text=True, timeout=60,
        )
        assert result.returncode == 2, (args, result.stderr)
        assert message in result.stderr
    bad_key = tmp_path / "bad.key"
    bad_key.write_text("not a key")
    result = subprocess.run(
        [sys.executable, "-m", "spanproof.verifier", "receiver", "--out", str(tmp_path / "out"),
         "--key", str(bad_key), "--grpc", "127.0.0.1:0", "--no-http"],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert "bad.key" in result.stderr
