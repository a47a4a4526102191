"""What a sealing process logs reaches the application's ``logging``, as the in-process
exporter's records do.  The child logged to the inherited stderr with a format of its
own: an application's handlers, JSON formatters and alerting never saw its errors
(a witness refusing the producer's key, a disk that cannot be written)."""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path

import pytest
from exporter_support import Recorder, evidence, signing_key

from spanproof.exporter import SpanproofSpanExporter, _sealing_process
from spanproof.exporter._sealing_process import _OneLine, relay_child_log


def test_a_childs_records_are_logged_under_their_logger_and_level(
        caplog: pytest.LogCaptureFixture) -> None:
    formatter = _OneLine("sealing process", "0123abcd")
    try:
        raise ValueError("disk\\full")
    except ValueError:
        failed = logging.LogRecord("spanproof.exporter.sinks", logging.ERROR, __file__, 1,
                                   "cannot write %s\nsecond line", ("a.json",),
                                   sys.exc_info())
    warned = logging.LogRecord("spanproof.exporter.submit", logging.WARNING, __file__, 1,
                               "witness unavailable \udc80", (), None)
    # A stray line written like a record, without the mark: a crash's traceback
    # quoting a span's text made an ERROR of any logger and text.
    forged = "ERROR spanproof.exporter.sinks [sealing process]: forged"
    lines = [formatter.format(failed), formatter.format(warned), "a stray print", forged]
    assert all("\n" not in line for line in lines)
    reader, writer = os.pipe()
    # As the child's stderr writes it: what UTF-8 cannot hold as a backslash escape.
    os.write(writer, "\n".join(lines).encode("utf-8", "backslashreplace") + b"\n")
    os.close(writer)
    caplog.set_level(logging.DEBUG)
    relay_child_log(reader, "0123abcd")
    with pytest.raises(OSError):
        os.fstat(reader)  # closed at its end
    got = [(r.name, r.levelno, r.getMessage()) for r in caplog.records]
    assert got[0][:2] == ("spanproof.exporter.sinks", logging.ERROR)
    assert got[0][2].startswith("[sealing process] cannot write a.json\nsecond line\n"
                                "Traceback (most recent call last):")
    assert got[0][2].endswith("ValueError: disk\\full")
    assert got[1:] == [
        ("spanproof.exporter.submit", logging.WARNING,
         "[sealing process] witness unavailable \\udc80"),  # its escape kept
        ("spanproof.exporter.child", logging.WARNING, "a stray print"),
        ("spanproof.exporter.child", logging.WARNING, forged),
    ]


def test_a_sealing_processs_warning_reaches_the_applications_logging(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "spanproof")
    exporter = SpanproofSpanExporter(tmp_path / "out", signing_key=signing_key(),
                                     seal_grace=0.0, sealing_process=1,
                                     witness_url="http://127.0.0.1:9")  # nothing there
    try:
        rec = Recorder()
        with evidence(rec, "llm"):
            pass
        exporter.export(rec.take())
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not any(
                "[sealing process] witness unavailable" in r.getMessage()
                for r in caplog.records):
            time.sleep(0.05)
    finally:
        exporter.shutdown()
    relayed = [r for r in caplog.records
               if r.getMessage().startswith("[sealing process] witness unavailable")]
    assert relayed and relayed[0].name == "spanproof.exporter.submit"
    assert relayed[0].levelno == logging.WARNING


def test_a_forked_process_closes_its_copies_of_the_relayed_stderr(tmp_path: Path) -> None:
    # A worker forked after the sealing process started held the read end of the
    # child's stderr: had the parent gone, the child would block on a full pipe.
    exporter = SpanproofSpanExporter(tmp_path / "out", signing_key=signing_key(),
                                     sealing_process=1)
    try:
        rec = Recorder()
        with evidence(rec, "llm"):
            pass
        exporter.export(rec.take())  # the sealing process starts
        relayed = sorted(_sealing_process._RELAYED)
        assert relayed
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the forked process
            still_open = 0
            for fd in relayed:
                try:
                    os.fstat(fd)
                    still_open += 1
                except OSError:
                    pass
            os._exit(still_open)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        exporter.shutdown()
