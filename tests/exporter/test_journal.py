"""The crash-safe journal: durability, torn tails, retirement, orphan recovery."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "cli"))

from spanproof.exporter.journal import (
    Journal,
    _frame,
    _read_entries,
    recover_orphans,
    release_claimed,
    replay,
)

TRACE = "0af7651916cd43dd8448eb211c80319c"
OTHER = "1af7651916cd43dd8448eb211c80319c"


def _body(n: int) -> dict[str, object]:
    return {"span": {"spanId": f"{n:016x}", "name": f"s{n}"}, "resource": {}, "scope": {}}


def _journal_files(d: str) -> list[str]:
    return sorted(os.path.join(d, f) for f in os.listdir(d) if f.endswith(".log"))


def test_unsealed_spans_replay_in_order(tmp_path):
    j = Journal(str(tmp_path), "aaaa")
    j.append_spans([(TRACE, _body(1)), (OTHER, _body(2))])
    j.append_spans([(TRACE, _body(3))])
    traces = replay(_journal_files(str(tmp_path)))
    assert [b["span"]["name"] for b in traces[TRACE].bodies] == ["s1", "s3"]
    assert [b["span"]["name"] for b in traces[OTHER].bodies] == ["s2"]
    assert traces[TRACE].instance == "aaaa"


def test_sealed_entries_retire_spans_and_keep_chain_position(tmp_path):
    j = Journal(str(tmp_path), "aaaa")
    keys = j.append_spans([(TRACE, _body(1)), (TRACE, _body(2))])
    j.append_sealed(TRACE, keys, {"segmentIndex": 1})
    j.append_spans([(TRACE, _body(3))])
    traces = replay(_journal_files(str(tmp_path)))
    assert [b["span"]["name"] for b in traces[TRACE].bodies] == ["s3"]
    assert traces[TRACE].next_position == {"segmentIndex": 1}


def test_sealed_entries_a_failed_write_left_are_written_first_by_the_next_call(
    tmp_path, monkeypatch
):
    j = Journal(str(tmp_path), "aaaa")
    first = j.append_spans([(TRACE, _body(1))])
    second = j.append_spans([(OTHER, _body(2))])
    real_write = Journal._write

    def failing(self, data):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(Journal, "_write", failing)
    with pytest.raises(OSError):
        j.append_sealed_many([(TRACE, first, {"index": "1"}, {})])
    assert j.retire_pending
    monkeypatch.setattr(Journal, "_write", real_write)
    j.append_sealed_many([(OTHER, second, {"index": "1"}, {})])  # the failed one first
    assert not j.retire_pending
    assert replay(_journal_files(str(tmp_path))) == {}  # both retired
    sealed = [e["trace"] for path in _journal_files(str(tmp_path))
              for e in _read_entries(path) if e["t"] == "sealed"]
    assert sealed == [TRACE, OTHER]  # in the order they were sealed


def test_rejections_and_conflicts_replay_until_the_trace_is_sealed(tmp_path):
    j = Journal(str(tmp_path), "aaaa")
    keys = j.append_spans([(TRACE, _body(1)), (TRACE, _body(2))], conflicting={1},
                          rejected={TRACE: 2, OTHER: 1})
    j.append_rejected(TRACE, 1)
    traces = replay(_journal_files(str(tmp_path)))
    assert traces[TRACE].rejected_spans == 3 and traces[OTHER].rejected_spans == 1
    assert traces[TRACE].conflicts == {f"{2:016x}"}
    # A sealed segment declared them: what follows starts from nothing.
    j.append_sealed(TRACE, keys, {"segmentIndex": 1}, {"rejected": 3})
    j.append_spans([(TRACE, json.dumps(_body(3)).encode())], conflicting={0},
                   rejected={TRACE: 1})
    traces = replay(_journal_files(str(tmp_path)))
    assert traces[TRACE].rejected_spans == 1
    assert traces[TRACE].conflicts == {f"{3:016x}"}  # flagged on a body given as bytes
    assert [b["span"]["name"] for b in traces[TRACE].bodies] == ["s3"]


def test_torn_tail_is_ignored_and_earlier_entries_survive(tmp_path):
    j = Journal(str(tmp_path), "aaaa")
    j.append_spans([(TRACE, _body(1))])
    j.close()
    (path,) = _journal_files(str(tmp_path))
    with open(path, "ab") as f:  # a crash mid-write: header promises more than exists
        f.write(struct.pack(">II", 1000, 0) + b'{"t":"span"')
    traces = replay([path])
    assert [b["span"]["name"] for b in traces[TRACE].bodies] == ["s1"]


def test_a_damaged_last_entry_is_ignored(tmp_path, caplog):
    j = Journal(str(tmp_path), "aaaa")
    j.append_spans([(TRACE, _body(1))])
    j.append_spans([(TRACE, _body(2))])
    j.close()
    (path,) = _journal_files(str(tmp_path))
    data = bytearray(open(path, "rb").read())
    data[-3] ^= 0xFF  # flip a byte inside the second entry's payload
    open(path, "wb").write(bytes(data))
    (trace,) = replay([path]).values()
    assert [b["span"]["name"] for b in trace.bodies] == ["s1"]
    assert trace.damaged_spans == 0  # perhaps a write the crash cut: not declared
    assert "corrupt entry at byte" in caplog.text


# -- damage in the middle of a file: written whole, then damaged on disk ---------------


def _frames(path: str) -> list[tuple[int, int]]:
    """Each entry's (start, end) in a journal file."""
    data = open(path, "rb").read()
    frames, pos = [], 0
    while pos < len(data):
        (length,) = struct.unpack_from(">I", data, pos)
        frames.append((pos, pos + 8 + length))
        pos += 8 + length
    return frames


def _damage(path: str, at: int, new: bytes = b"") -> None:
    """Overwrite the byte at *at* (flip it when *new* is empty), or insert *new*
    there when it is longer than one byte."""
    data = bytearray(open(path, "rb").read())
    if not new:
        data[at] ^= 0x01
    elif len(new) == 1:
        data[at:at + 1] = new
    else:
        data[at:at] = new
    open(path, "wb").write(bytes(data))


def _three_spans(tmp_path) -> tuple[str, list[str]]:
    j = Journal(str(tmp_path), "aaaa")
    keys = [*j.append_spans([(TRACE, _body(1))]), *j.append_spans([(TRACE, _body(2))]),
            *j.append_spans([(TRACE, _body(3))])]
    j.close()
    (path,) = _journal_files(str(tmp_path))
    return path, keys


def test_a_damaged_span_entry_mid_file_is_skipped_and_declared(tmp_path, caplog):
    path, _ = _three_spans(tmp_path)
    _, end = _frames(path)[1]
    _damage(path, end - 5)  # inside the second span's body
    (trace,) = replay([path]).values()
    assert [b["span"]["name"] for b in trace.bodies] == ["s1", "s3"]
    assert trace.damaged_spans == 1
    assert trace.dropped_spans == 0  # the journal recorded no drop: kept apart
    assert f"a span entry of trace {TRACE}" in caplog.text


def test_a_damaged_span_entry_a_later_entry_retires_is_not_declared(tmp_path):
    j = Journal(str(tmp_path), "aaaa")
    sealed = [*j.append_spans([(TRACE, _body(1))]), *j.append_spans([(TRACE, _body(2))])]
    j.append_sealed(TRACE, sealed, {"segmentIndex": 1})
    j.append_spans([(TRACE, _body(3))])
    j.close()
    (path,) = _journal_files(str(tmp_path))
    _, end = _frames(path)[1]
    _damage(path, end - 5)
    (trace,) = replay([path]).values()
    assert [b["span"]["name"] for b in trace.bodies] == ["s3"]
    assert trace.damaged_spans == 0
    assert trace.next_position == {"segmentIndex": 1}


def test_a_damaged_length_is_skipped_to_the_next_entry(tmp_path):
    path, _ = _three_spans(tmp_path)
    start, _ = _frames(path)[1]
    _damage(path, start, b"\x7f")  # the length now points far past the end
    (trace,) = replay([path]).values()
    assert [b["span"]["name"] for b in trace.bodies] == ["s1", "s3"]
    assert trace.damaged_spans == 1


def test_a_damaged_entry_whose_head_cannot_be_read_is_skipped_undeclared(tmp_path, caplog):
    path, _ = _three_spans(tmp_path)
    start, _ = _frames(path)[1]
    _damage(path, start + 8 + 3)  # inside '{"t":"span"'
    (trace,) = replay([path]).values()
    assert [b["span"]["name"] for b in trace.bodies] == ["s1", "s3"]
    assert trace.damaged_spans == 0
    assert "(not readable)" in caplog.text


def test_a_damaged_trace_id_is_not_declared_in_a_trace_no_entry_names(tmp_path, caplog):
    path, _ = _three_spans(tmp_path)
    start, _ = _frames(path)[1]
    data = open(path, "rb").read()
    at = data.index(TRACE.encode(), start)
    _damage(path, at, b"f")  # '0' becomes 'f': still a trace id, another one
    traces = replay([path])
    assert set(traces) == {TRACE}
    assert [b["span"]["name"] for b in traces[TRACE].bodies] == ["s1", "s3"]
    assert traces[TRACE].damaged_spans == 0
    assert "f" + TRACE[1:] + ", which no other entry names" in caplog.text


def test_a_damaged_key_naming_another_instance_is_not_declared(tmp_path, caplog):
    path, _ = _three_spans(tmp_path)
    start, _ = _frames(path)[1]
    at = open(path, "rb").read().index(b'"k":"aaaa:', start) + 5
    _damage(path, at, b"b")  # the key now names instance "baaa"
    (trace,) = replay([path]).values()
    assert [b["span"]["name"] for b in trace.bodies] == ["s1", "s3"]
    assert trace.damaged_spans == 0
    assert trace.instance == "aaaa"
    assert "(not readable)" in caplog.text


@pytest.mark.parametrize("garbage", [b"\x00" * 64, bytes(range(256)), b'{"t":"span"' * 3],
                         ids=["zeros", "every-byte", "false-starts"])
def test_bytes_between_entries_are_skipped(tmp_path, garbage):
    path, _ = _three_spans(tmp_path)
    _, end = _frames(path)[0]
    _damage(path, end, garbage)
    (trace,) = replay([path]).values()
    assert [b["span"]["name"] for b in trace.bodies] == ["s1", "s2", "s3"]
    assert trace.damaged_spans == 0


def test_recovery_declares_a_damaged_span_entry_lost(tmp_path):
    from cli_support import span_body

    from spanproof.exporter._recovery import seal_orphaned_journals
    from spanproof.exporter.keys import SigningKey
    from spanproof.exporter.sinks import DirectorySink
    from spanproof.verifier import TrustRoot, Verdict
    from spanproof.verifier.verify import check_bundle

    key = SigningKey.from_seed(bytes(range(32)))
    journal = Journal(str(tmp_path / "journal"), "00000000000000dd")
    for n, parent in ((2, "1000000000000001"), (3, "1000000000000001"), (1, "")):
        journal.append_spans([(TRACE, span_body(TRACE, f"100000000000000{n}", parent,
                                                f"step {n}"))])
    journal.forget_after_fork()  # as if the process had died: the files stay
    (path,) = _journal_files(str(tmp_path / "journal"))
    _, end = _frames(path)[1]
    _damage(path, end - 5)
    written = seal_orphaned_journals(
        str(tmp_path / "journal"), signer=key, sink=DirectorySink(tmp_path / "out"),
        producer_name="spanproof-test", producer_version="0", max_records=100,
        clock=lambda: 1_800_000_000.0,
    )
    (bundle,) = written
    (tmp_path / "key.pub").write_bytes(key.public_pem())
    report = check_bundle(bundle, TrustRoot.from_pem_files([str(tmp_path / "key.pub")]),
                          keep_records=True)
    assert report.verdict is Verdict.INCOMPLETE
    assert report.statement is not None
    completeness = report.statement.completeness
    assert completeness.dropped_spans == 1
    assert ("1 journaled evidence span(s) lost: their journal entries were damaged on disk"
            in completeness.notes)
    assert [r["span"]["name"] for r in report.records or ()] == ["step 2", "step 1"]


def test_dropped_counts_replay_until_sealed(tmp_path):
    j = Journal(str(tmp_path), "aaaa")
    j.append_dropped(TRACE, 3)
    j.append_dropped(TRACE, 2)
    assert replay(_journal_files(str(tmp_path)))[TRACE].dropped_spans == 5
    j.append_sealed(TRACE, [], {"segmentIndex": 1}, {"dropped": 5})
    assert TRACE not in replay(_journal_files(str(tmp_path)))


def test_counts_journaled_while_a_segment_was_written_are_left_for_the_next(tmp_path):
    # The segment's bundle declared 2 of the 3 rejections journaled before its sealed
    # entry: the third arrived while it was being written, and the trace's next
    # segment declares it.  Forgetting every count at the sealed entry lost it.
    j = Journal(str(tmp_path), "aaaa")
    j.append_rejected(TRACE, 2)
    j.append_dropped(TRACE, 1)
    j.append_rejected(TRACE, 1)  # after the job was taken, before its sealed entry
    j.append_sealed(TRACE, [], {"segmentIndex": 1}, {"rejected": 2, "dropped": 1})
    trace = replay(_journal_files(str(tmp_path)))[TRACE]
    assert (trace.rejected_spans, trace.dropped_spans) == (1, 0)


def test_a_count_declared_under_another_kind_is_not_declared_again(tmp_path):
    # With no room left for the trace, the producer declared the journaled rejection
    # as dropped: subtracted kind by kind, it stayed, and a crash declared it twice.
    j = Journal(str(tmp_path), "aaaa")
    j.append_rejected(TRACE, 1)
    j.append_dropped(TRACE, 2)
    j.append_unsampled(TRACE, 1)  # after the job was taken: the next segment's
    j.append_sealed(TRACE, [], {"segmentIndex": 1}, {"dropped": 3})
    trace = replay(_journal_files(str(tmp_path)))[TRACE]
    assert (trace.dropped_spans, trace.rejected_spans, trace.unsampled_spans) == (0, 0, 1)


def test_the_chain_continues_after_the_highest_segment_retired(tmp_path):
    # Segment 1's write failed and was retried after segment 2 was written: its
    # sealed entry came last, and replay took the position after segment 1, so the
    # recovering producer found segment 2 on disk "after" it and subtracted its
    # counts a second time, from the next segment's.
    j = Journal(str(tmp_path), "aaaa")
    j.append_rejected(TRACE, 1)
    j.append_sealed(TRACE, [], {"index": "3"}, {"rejected": 1})  # segment 2
    j.append_sealed(TRACE, [], {"index": "2"})  # segment 1, retried
    j.append_rejected(TRACE, 3)
    trace = replay(_journal_files(str(tmp_path)))[TRACE]
    assert trace.next_position == {"index": "3"}
    assert trace.rejected_spans == 3


def test_a_sealed_entry_without_declared_counts_forgets_them(tmp_path):
    # As entries written before bundles' counts were recorded.
    j = Journal(str(tmp_path), "aaaa")
    j.append_dropped(TRACE, 3)
    j._write(_frame({"t": "sealed", "trace": TRACE, "keys": [], "next": {}}))
    assert TRACE not in replay(_journal_files(str(tmp_path)))


def test_clean_close_with_everything_sealed_removes_files(tmp_path):
    j = Journal(str(tmp_path), "aaaa")
    keys = j.append_spans([(TRACE, _body(1))])
    j.append_sealed(TRACE, keys, {})
    j.close()
    assert _journal_files(str(tmp_path)) == []


def test_spans_journaled_after_close_are_recovered_by_the_next_start(tmp_path):
    # EvidenceSpanProcessor's journal worker may still be draining when shutdown()
    # stops waiting for it and closes the journal: what it journals then goes to a
    # new file, which the process's exit unlocks for the next start to recover.
    script = textwrap.dedent(
        f"""
        from spanproof.exporter.journal import Journal
        j = Journal({str(tmp_path)!r}, "late")
        j.append_spans([({TRACE!r}, {{"span": {{"name": "before close"}}}})])
        j.close()
        j.append_spans([({TRACE!r}, {{"span": {{"name": "after close"}}}})])
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], timeout=60)
    assert proc.returncode == 0
    (trace,), paths = recover_orphans(str(tmp_path))
    assert [b["span"]["name"] for b in trace.bodies] == ["before close", "after close"]
    release_claimed(paths)


def test_close_with_pending_spans_keeps_files(tmp_path):
    j = Journal(str(tmp_path), "aaaa")
    j.append_spans([(TRACE, _body(1))])
    j.close()
    assert len(_journal_files(str(tmp_path))) == 1


def test_live_journal_is_not_recovered_but_a_dead_ones_is(tmp_path):
    live = Journal(str(tmp_path), "live")
    live.append_spans([(TRACE, _body(1))])
    # A process that journals a span and is killed (no close, no sealing).
    script = textwrap.dedent(
        f"""
        import os
        from spanproof.exporter.journal import Journal
        j = Journal({str(tmp_path)!r}, "dead")
        j.append_spans([({OTHER!r}, {{"span": {{"name": "lost?"}}}})])
        os.kill(os.getpid(), 9)
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], timeout=60)
    assert proc.returncode == -9
    (trace,), paths = recover_orphans(str(tmp_path))
    assert (trace.trace_id, trace.instance) == (OTHER, "dead")
    assert [b["span"]["name"] for b in trace.bodies] == ["lost?"]
    assert all("dead" in p for p in paths)
    release_claimed(paths)
    assert [os.path.basename(p) for p in _journal_files(str(tmp_path))] == [
        "journal-live-000001.log"
    ]
    live.close()


def test_a_body_given_as_json_bytes_replays_like_the_same_body(tmp_path) -> None:
    body = {"span": {"spanId": "00000000000000aa", "name": "step é \u2028 \"q\" \\"},
            "n": ["1", "2"]}
    journal = Journal(str(tmp_path), "00000000000000cc")
    journal.append_spans([("a" * 32, body)])
    journal.append_spans([("a" * 32, json.dumps(body, sort_keys=True, ensure_ascii=False)
                           .encode())])
    journal.close()
    (trace,) = replay(sorted(str(p) for p in tmp_path.glob("journal-*.log"))).values()
    assert trace.bodies == [body, body]


def test_a_body_json_cannot_carry_is_refused_and_nothing_of_the_call_is_written(
    tmp_path,
) -> None:
    journal = Journal(str(tmp_path), "00000000000000cc")
    good = {"span": {"name": "ok"}}
    with pytest.raises(ValueError, match="cannot be encoded as JSON"):
        journal.append_spans([("a" * 32, good), ("a" * 32, {"span": {"name": "\ud800"}})])
    (key,) = journal.append_spans([("a" * 32, good)])
    journal.close()
    (trace,) = replay(sorted(str(p) for p in tmp_path.glob("journal-*.log"))).values()
    assert trace.bodies == [good]
    assert key.endswith(":1")  # the refused call used no key


def test_the_write_that_fills_a_file_keeps_the_file_until_its_spans_are_sealed(
    tmp_path, monkeypatch
):
    # Rotation ran inside the write, before the write's keys were recorded against
    # the file holding them: the file looked all sealed and was deleted, with the
    # spans just made durable (and acknowledged) in it.
    from spanproof.exporter import journal as journal_module

    monkeypatch.setattr(journal_module, "ROTATE_BYTES", 4096)
    j = Journal(str(tmp_path), "aaaa")
    big = {**_body(1), "pad": "x" * 5000}
    keys = j.append_spans([(TRACE, big)])
    assert len(_journal_files(str(tmp_path))) == 2  # rotated after the write
    assert [b["span"]["name"] for b in replay(_journal_files(str(tmp_path)))[TRACE].bodies] == [
        "s1"]
    j.append_sealed(TRACE, keys, {"segmentIndex": 1})
    # Sealed now: the full file goes, the current one stays.
    assert len(_journal_files(str(tmp_path))) == 1
    assert TRACE not in replay(_journal_files(str(tmp_path)))


def test_a_file_holding_loss_counts_stays_until_their_trace_is_sealed(tmp_path, monkeypatch):
    # Its spans were all sealed, so it was deleted, and the other trace's counts in
    # it with it: a crash then recovered that trace as if nothing were lost.
    from spanproof.exporter import journal as journal_module

    monkeypatch.setattr(journal_module, "ROTATE_BYTES", 200)
    j = Journal(str(tmp_path), "aaaa")
    keys = j.append_spans([(TRACE, _body(1))], rejected={OTHER: 2})  # fills file 1
    j.append_spans([(OTHER, _body(2))])
    j.append_sealed(TRACE, keys, {"segmentIndex": 1})
    assert replay(_journal_files(str(tmp_path)))[OTHER].rejected_spans == 2
    j.append_sealed(OTHER, [], {"segmentIndex": 1}, {"rejected": 2})
    j.append_dropped(OTHER, 1)  # the next file: the first is now deleted
    trace = replay(_journal_files(str(tmp_path)))[OTHER]
    assert (trace.rejected_spans, trace.dropped_spans) == (0, 1)


def test_counts_left_for_a_traces_next_bundle_keep_their_file(tmp_path, monkeypatch):
    # The sealed bundle declared 1 rejection; the 2 drops journaled while it was
    # written are the next bundle's.  Retiring the first cleared the file's hold on
    # the drops too, and the file went with them.
    from spanproof.exporter import journal as journal_module

    monkeypatch.setattr(journal_module, "ROTATE_BYTES", 300)
    j = Journal(str(tmp_path), "aaaa")
    j.append_rejected(TRACE, 1)
    j.append_dropped(TRACE, 2)
    keys = j.append_spans([(OTHER, {**_body(1), "pad": "y" * 300})])  # rotates
    j.append_sealed(OTHER, keys, {"index": "1"})
    j.append_sealed(TRACE, [], {"index": "1"}, {"rejected": 1})
    assert replay(_journal_files(str(tmp_path)))[TRACE].dropped_spans == 2
    j.append_sealed(TRACE, [], {"index": "2"}, {"dropped": 2})  # now all declared
    j.append_dropped(OTHER, 1)  # a write in the current file: the first one goes
    assert len(_journal_files(str(tmp_path))) == 1
    assert TRACE not in replay(_journal_files(str(tmp_path)))


def test_files_are_deleted_oldest_first(tmp_path, monkeypatch):
    # A newer file whose entries were all retired was deleted while an older one
    # was kept: the older one's count entries then replayed without the sealed
    # entry (in the deleted file) that had retired them, and were declared again.
    from spanproof.exporter import journal as journal_module

    monkeypatch.setattr(journal_module, "ROTATE_BYTES", 250)
    j = Journal(str(tmp_path), "aaaa")
    j.append_spans([(TRACE, _body(1))], rejected={OTHER: 1})  # file 1, TRACE stays open
    j.append_spans([(TRACE, {**_body(2), "pad": "x" * 200})])  # fills file 1
    j.append_sealed(OTHER, [], {"index": "1"}, {"rejected": 1})  # file 2
    third = "2af7651916cd43dd8448eb211c80319c"
    keys = j.append_spans([(third, {**_body(3), "pad": "x" * 200})])  # fills file 2
    j.append_sealed(third, keys, {"index": "1"})
    assert len(_journal_files(str(tmp_path))) == 3  # file 2 waits for file 1
    traces = replay(_journal_files(str(tmp_path)))
    assert OTHER not in traces and third not in traces
    assert len(traces[TRACE].bodies) == 2


def test_a_write_whose_rotation_fails_still_succeeds(tmp_path, monkeypatch):
    # The data was durable, yet the failed rotation raised: the caller took the
    # write as failed, and the journal's file numbering went wrong for the next one.
    from spanproof.exporter import journal as journal_module

    monkeypatch.setattr(journal_module, "ROTATE_BYTES", 200)
    j = Journal(str(tmp_path), "aaaa")
    real_open = os.open

    def no_new_file(path, *args, **kwargs):
        if "-000002.log" in path:
            raise OSError(24, "Too many open files")
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(journal_module.os, "open", no_new_file)
    first = j.append_spans([(TRACE, {**_body(1), "pad": "x" * 300})])  # rotation fails
    monkeypatch.setattr(journal_module.os, "open", real_open)
    second = j.append_spans([(TRACE, _body(2))])  # rotates now
    assert len(first) == len(second) == 1
    assert len(_journal_files(str(tmp_path))) == 2
    j.append_sealed(TRACE, first, {"index": "1"})
    assert [b["span"]["name"] for b in replay(_journal_files(str(tmp_path)))[TRACE].bodies] == [
        "s2"]


def test_a_file_the_journal_moved_on_from_stays_locked_while_it_holds_unsealed_spans(
    tmp_path, monkeypatch
):
    # The journal let go of a full file's lock when it started the next one, spans
    # unsealed in it or not: a process starting beside it (another worker) took the
    # file for a dead process's and sealed its spans a second time.
    from spanproof.exporter import journal as journal_module

    monkeypatch.setattr(journal_module, "ROTATE_BYTES", 4096)
    j = Journal(str(tmp_path), "aaaa")
    keys = j.append_spans([(TRACE, {**_body(1), "pad": "x" * 5000})])
    assert len(_journal_files(str(tmp_path))) == 2  # moved on to a new file
    assert recover_orphans(str(tmp_path)) == ([], [])
    j.append_sealed(TRACE, keys, {"segmentIndex": 1})
    assert len(_journal_files(str(tmp_path))) == 1  # the old one deleted, then let go
    assert recover_orphans(str(tmp_path)) == ([], [])
    j.close()


def test_a_file_left_by_a_failed_write_stays_locked(tmp_path, monkeypatch):
    from spanproof.exporter import journal as journal_module

    j = Journal(str(tmp_path), "aaaa")
    j.append_spans([(TRACE, _body(1))])
    real_write = os.write

    def broken(*args, **kwargs):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(journal_module.os, "write", broken)
    monkeypatch.setattr(journal_module.os, "ftruncate", broken)  # cannot be undone either
    with pytest.raises(OSError):
        j.append_spans([(TRACE, _body(2))])
    monkeypatch.setattr(journal_module.os, "write", real_write)
    assert recover_orphans(str(tmp_path)) == ([], [])  # span 1 is still this journal's
    j.close()
    (trace,), paths = recover_orphans(str(tmp_path))  # let go: a dead process's now
    assert [b["span"]["name"] for b in trace.bodies][:1] == ["s1"]
    release_claimed(paths)


def test_a_journal_file_is_locked_before_it_has_its_name(tmp_path, monkeypatch):
    # Created under its name and then locked, a new file could be taken for a dead
    # process's by a recovery that looked in between.
    from spanproof.exporter import journal as journal_module

    named_when_locked: list[bool] = []
    real_flock = journal_module.fcntl.flock

    def flock(fd, operation):
        target = os.readlink(f"/proc/self/fd/{fd}")
        final = os.path.join(os.path.dirname(target),
                             os.path.basename(target).removeprefix(".").removesuffix(".new"))
        named_when_locked.append(os.path.exists(final))
        return real_flock(fd, operation)

    monkeypatch.setattr(journal_module.fcntl, "flock", flock)
    monkeypatch.setattr(journal_module, "ROTATE_BYTES", 200)
    j = Journal(str(tmp_path), "aaaa")
    j.append_spans([(TRACE, {**_body(1), "pad": "x" * 300})])  # and a second file
    assert named_when_locked == [False, False]
    assert [os.path.basename(p) for p in _journal_files(str(tmp_path))] == [
        "journal-aaaa-000001.log", "journal-aaaa-000002.log"]
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".new")]
    j.close()


def _dead_journal(directory: Path, instance: str = "00000000000000dd") -> None:
    """A journal with one unsealed span, left as by a process that died."""
    from cli_support import span_body

    journal = Journal(str(directory), instance)
    journal.append_spans([(TRACE, span_body(TRACE, "1000000000000001", "", "step"))])
    journal.forget_after_fork()


def test_a_recovery_that_failed_lets_go_of_the_journals_it_took(tmp_path):
    # The claimed journal stayed locked by the failed recovery until the process
    # exited: every later look (every 60 s, or another process's start) took it for
    # a live process's, and its spans were not sealed while this process lived.
    from spanproof.exporter._recovery import seal_orphaned_journals
    from spanproof.exporter.keys import SigningKey
    from spanproof.exporter.sinks import DirectorySink

    _dead_journal(tmp_path / "journal")

    class FullDisk(DirectorySink):
        def write(self, bundle):
            raise OSError(28, "No space left on device")

    settings = dict(signer=SigningKey.from_seed(bytes(range(32))), producer_name="t",
                    producer_version="0", max_records=100, clock=lambda: 1_800_000_000.0)
    with pytest.raises(OSError):
        seal_orphaned_journals(str(tmp_path / "journal"), sink=FullDisk(tmp_path / "out"),
                               **settings)
    (bundle,) = seal_orphaned_journals(str(tmp_path / "journal"),
                                       sink=DirectorySink(tmp_path / "out"), **settings)
    assert os.path.basename(bundle).startswith(TRACE)
    assert _journal_files(str(tmp_path / "journal")) == []


def test_one_recovery_does_not_let_go_of_another_recoverys_journals(tmp_path):
    _dead_journal(tmp_path / "a")
    _dead_journal(tmp_path / "b", "00000000000000ee")
    _, held = recover_orphans(str(tmp_path / "a"))  # still being sealed
    _, done = recover_orphans(str(tmp_path / "b"))
    release_claimed(done)
    assert recover_orphans(str(tmp_path / "a")) == ([], [])  # still held
    release_claimed(held, delete=False)
    traces, again = recover_orphans(str(tmp_path / "a"))
    assert {t.trace_id for t in traces} == {TRACE}
    release_claimed(again)


def test_a_forked_child_does_not_keep_the_journals_its_parent_is_recovering(tmp_path):
    _dead_journal(tmp_path / "journal")
    _, held = recover_orphans(str(tmp_path / "journal"))
    read_end, write_end = os.pipe()
    ready_read, ready_write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child, which lives on meanwhile
        os.close(write_end)
        os.write(ready_write, b".")  # past the fork's handlers
        os.read(read_end, 1)
        os._exit(0)
    os.close(read_end)
    os.close(ready_write)
    assert os.read(ready_read, 1) == b"."
    os.close(ready_read)
    try:
        release_claimed(held, delete=False)
        traces, again = recover_orphans(str(tmp_path / "journal"))  # not the child's
        assert {t.trace_id for t in traces} == {TRACE}
        release_claimed(again)
    finally:
        os.close(write_end)
        os.waitpid(pid, 0)


def test_a_recovery_that_cannot_open_a_journal_lets_go_of_those_it_took(
    tmp_path, monkeypatch
):
    from spanproof.exporter import journal as journal_module

    _dead_journal(tmp_path, "00000000000000aa")
    _dead_journal(tmp_path, "00000000000000bb")
    real_open = os.open

    def unreadable_second(path, *args, **kwargs):
        if "00000000000000bb" in str(path):
            raise OSError(24, "Too many open files", path)
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(journal_module.os, "open", unreadable_second)
    with pytest.raises(OSError, match="Too many open files"):
        recover_orphans(str(tmp_path))
    monkeypatch.setattr(journal_module.os, "open", real_open)
    traces, paths = recover_orphans(str(tmp_path))  # the first is not held any more
    assert len(paths) == 2 and {t.trace_id for t in traces} == {TRACE}
    release_claimed(paths)


def test_a_journal_of_another_user_is_left_and_the_others_recovered(
    tmp_path, monkeypatch, caplog
):
    # A service running as another user shares the directory: its journal files
    # (mode 0600) cannot be opened here.  Raising, the recovery of every other
    # journal in the directory failed, at every start and every look again.
    from spanproof.exporter import journal as journal_module

    _dead_journal(tmp_path, "00000000000000aa")
    _dead_journal(tmp_path, "00000000000000bb")
    real_open = os.open

    def another_user_s(path, *args, **kwargs):
        if "00000000000000aa" in str(path):
            raise PermissionError(13, "Permission denied", path)
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(journal_module.os, "open", another_user_s)
    traces, paths = recover_orphans(str(tmp_path))
    release_claimed(paths)
    assert [t.instance for t in traces] == ["00000000000000bb"]
    assert "journal-00000000000000aa-000001.log (" in caplog.text
    assert [os.path.basename(p) for p in _journal_files(str(tmp_path))] == [
        "journal-00000000000000aa-000001.log"]


def test_recovered_spans_are_sealed_in_segments_of_the_assembler_s_byte_bound(
    tmp_path, monkeypatch
):
    # Recovery cut a dead process's trace by MAX_RECORDS only: a trace of many large
    # spans came back as segments far over the bound the assembler keeps.
    from cli_support import span_body

    from spanproof.exporter import assembly
    from spanproof.exporter._recovery import seal_orphaned_journals
    from spanproof.exporter.keys import SigningKey
    from spanproof.exporter.sinks import DirectorySink
    from spanproof.verifier import TrustRoot, Verdict, link_segments
    from spanproof.verifier.verify import check_bundle

    monkeypatch.setattr(assembly, "MAX_SEGMENT_BYTES", 1)  # every span reaches it
    key = SigningKey.from_seed(bytes(range(32)))
    journal = Journal(str(tmp_path / "journal"), "00000000000000dd")
    for n in (1, 2, 3):
        journal.append_spans([(TRACE, span_body(TRACE, f"100000000000000{n}", "",
                                                f"step {n}"))])
    journal.forget_after_fork()
    written = seal_orphaned_journals(
        str(tmp_path / "journal"), signer=key, sink=DirectorySink(tmp_path / "out"),
        producer_name="spanproof-test", producer_version="0", max_records=100,
        clock=lambda: 1_800_000_000.0,
    )
    (tmp_path / "key.pub").write_bytes(key.public_pem())
    trust = TrustRoot.from_pem_files([str(tmp_path / "key.pub")])
    reports = [check_bundle(path, trust) for path in written]
    assert [r.verdict for r in reports] == [Verdict.OK] * 3
    assert [r.statement.record_count for r in reports if r.statement] == [1, 1, 1]
    (link,) = link_segments(reports)
    assert link.ok and link.segments == (0, 1, 2)


def _position(index: int) -> dict[str, str]:
    """A chain position as the journal's ``sealed`` entries store it."""
    return {"index": str(index), "firstSeq": str(2 * index), "start": "sha256:" + "ab" * 32,
            "previousStatement": f"sha256:{index:064x}"}


def _rotate_away(j: Journal, n: int) -> None:
    """Seal *n* spans of other traces, each in a file of its own: the files before
    are deleted."""
    for i in range(n):
        other = f"{i + 2:032x}"
        j.append_sealed(other, j.append_spans([(other, _body(10 + i))]), _position(1))


@pytest.mark.parametrize("late", ["span", "rejected", "dropped", "unsampled"])
def test_a_chain_position_outlives_the_file_that_held_it(tmp_path, monkeypatch, late):
    # Once the file holding a trace's sealed entry was deleted, replay had no chain
    # position for the trace's late entries, and recovery walked its chain from
    # segment 0 on disk, where a segment declaring only losses cannot be told from
    # one written but not recorded: a late rejection was declared nowhere.
    from spanproof.exporter import journal as journal_module

    monkeypatch.setattr(journal_module, "ROTATE_BYTES", 1)  # every write ends its file
    j = Journal(str(tmp_path), "aaaa")
    j.append_sealed(TRACE, j.append_spans([(TRACE, _body(1))]), _position(1))
    j.append_sealed(TRACE, [], _position(2), {"rejected": 1})
    _rotate_away(j, 3)
    files = _journal_files(str(tmp_path))
    assert TRACE not in replay(files) and len(files) == 1  # nothing of the trace left
    if late == "span":
        j.append_spans([(TRACE, _body(3))])
    else:
        getattr(j, f"append_{late}")(TRACE, 1)
    trace = replay(_journal_files(str(tmp_path)))[TRACE]
    assert trace.next_position == _position(2)
    assert (len(trace.bodies), trace.rejected_spans, trace.dropped_spans,
            trace.unsampled_spans) == {"span": (1, 0, 0, 0), "rejected": (0, 1, 0, 0),
                                       "dropped": (0, 0, 1, 0), "unsampled": (0, 0, 0, 1)}[late]


def test_a_carried_position_is_written_once_per_file(tmp_path, monkeypatch):
    from spanproof.exporter import journal as journal_module

    monkeypatch.setattr(journal_module, "ROTATE_BYTES", 1 << 20)
    j = Journal(str(tmp_path), "aaaa")
    j.append_sealed(TRACE, j.append_spans([(TRACE, _body(1))]), _position(1))
    j.append_spans([(TRACE, _body(2))])  # the same file: nothing to carry
    monkeypatch.setattr(journal_module, "ROTATE_BYTES", 1)
    j.append_spans([(OTHER, _body(3))])  # ends the file
    j.append_spans([(TRACE, _body(4)), (TRACE, _body(5))], rejected={TRACE: 1})
    sealed = [e for path in _journal_files(str(tmp_path)) for e in _read_entries(path)
              if e["t"] == "sealed"]
    assert [(e["keys"], e["next"], e["declared"]) for e in sealed] == [
        ([f"aaaa:{1}"], _position(1), {}), ([], _position(1), {})]


def test_a_position_not_remembered_leaves_the_chain_to_the_disk(tmp_path, monkeypatch):
    # The memory is bounded, as the assembler's of sealed traces: the oldest goes.
    from spanproof.exporter import journal as journal_module

    monkeypatch.setattr(journal_module, "ROTATE_BYTES", 1)
    monkeypatch.setattr(journal_module, "POSITION_MEMORY", 2)
    j = Journal(str(tmp_path), "aaaa")
    j.append_sealed(TRACE, j.append_spans([(TRACE, _body(1))]), _position(1))
    _rotate_away(j, 2)
    j.append_spans([(TRACE, _body(2))])
    assert replay(_journal_files(str(tmp_path)))[TRACE].next_position is None


def test_each_instance_s_journal_is_replayed_apart(tmp_path):
    # One trace journaled by two processes (a request that crossed them) that both
    # died: each one's spans continue its own chain (SPEC §5.3), with its own counts.
    # Replayed as one, they were all sealed under one instance, at the position of
    # whichever had sealed more.
    a = Journal(str(tmp_path), "aaaa")
    a.append_sealed(TRACE, a.append_spans([(TRACE, _body(1))]), _position(1))
    a.append_spans([(TRACE, _body(2))])
    a.append_dropped(TRACE, 1)
    a.forget_after_fork()
    b = Journal(str(tmp_path), "bbbb")
    b.append_sealed(TRACE, b.append_spans([(TRACE, _body(3))]), _position(1))
    b.append_sealed(TRACE, b.append_spans([(TRACE, _body(4))]), _position(2))
    b.append_spans([(TRACE, _body(5))])
    b.forget_after_fork()
    traces, paths = recover_orphans(str(tmp_path))
    try:
        assert sorted((t.trace_id, t.instance, t.next_position, [b["span"]["name"] for b in
                       t.bodies], t.dropped_spans) for t in traces) == [
            (TRACE, "aaaa", _position(1), ["s2"], 1),
            (TRACE, "bbbb", _position(2), ["s5"], 0)]
        with pytest.raises(ValueError, match="more than one producer instance"):
            replay(paths)
    finally:
        release_claimed(paths, delete=False)


@pytest.mark.parametrize("entry", [
    {"t": "dropped", "trace": TRACE},
    {"t": "unsampled", "trace": TRACE, "n": "many"},
    {"t": "rejected", "trace": "not a trace id", "n": "1"},
    {"t": "sealed", "trace": TRACE, "keys": "bbbb:1", "next": {}},
    {"t": "sealed", "trace": TRACE, "keys": ["bbbb:1"], "next": None},
    {"t": "sealed", "trace": TRACE, "keys": [], "next": {}, "declared": {"dropped": "x"}},
    {"t": "span", "k": "bbbb:9", "trace": TRACE, "body": "not an object"},
    {"t": "span", "k": 9, "trace": TRACE, "body": {}},
], ids=["count_missing", "count_not_a_number", "trace_not_an_id", "keys_not_a_list",
        "position_not_an_object", "declared_not_a_number", "body_not_an_object",
        "key_not_a_string"])
def test_an_entry_of_another_form_is_skipped_and_every_journal_recovered(tmp_path, entry):
    # An entry that passes its check but is not of the form this version writes
    # (another version's): replayed as it was, it raised out of replay, and no
    # journal in the directory was recovered, at any start or any look again.
    _dead_journal(tmp_path, "aaaa")
    b = Journal(str(tmp_path), "bbbb")
    b.append_spans([(OTHER, _body(1))])
    b.forget_after_fork()
    (path,) = [p for p in _journal_files(str(tmp_path)) if "bbbb" in p]
    good = open(path, "rb").read()
    open(path, "wb").write(_frame(entry) + good)
    traces, paths = recover_orphans(str(tmp_path))
    release_claimed(paths, delete=False)
    found = {(t.instance, t.trace_id): (len(t.bodies), t.damaged_spans) for t in traces}
    assert found.pop(("aaaa", TRACE)) == (1, 0)
    assert found.pop(("bbbb", OTHER)) == (1, 0)
    # A span entry whose head still reads is declared lost, as a damaged one.
    assert found == ({("bbbb", TRACE): (0, 1)} if entry.get("k") == "bbbb:9" else {})


def test_a_recovered_body_or_position_of_another_form_does_not_stop_the_recovery(
    tmp_path, caplog
):
    # What the journal's own check lets through and a record cannot be made of (a
    # span body of another version's form, a chain position it does not write) is
    # declared lost, and the rest is sealed: raising, it stopped every recovery.
    from cli_support import span_body

    from spanproof.exporter._recovery import seal_orphaned_journals
    from spanproof.exporter.keys import SigningKey
    from spanproof.exporter.sinks import DirectorySink
    from spanproof.verifier import TrustRoot, Verdict, check_bundle
    from spanproof.verifier.keys import TrustedKey

    key = SigningKey.from_seed(bytes(range(32)))
    j = Journal(str(tmp_path / "journal"), "00000000000000aa")
    j.append_spans([(TRACE, span_body(TRACE, "1000000000000001", "", "kept")),
                    (TRACE, {"span": {"name": "another version's"}})])
    j.append_sealed(OTHER, [], {"segment": "one"})
    j.append_spans([(OTHER, span_body(OTHER, "1000000000000002", "", "other"))])
    j.forget_after_fork()
    written = seal_orphaned_journals(
        str(tmp_path / "journal"), signer=key, sink=DirectorySink(tmp_path / "out"),
        producer_name="t", producer_version="0", max_records=100,
        clock=lambda: 1_800_000_000.0)
    trust = TrustRoot.from_keys([TrustedKey.from_public_key(key.private_key.public_key())])
    found = {}
    for path in written:
        report = check_bundle(path, trust, keep_records=True, allow_incomplete=True)
        assert report.verdict is not Verdict.FAIL, report.reason
        assert report.statement is not None and report.records is not None
        found[report.statement.trace_id] = (
            [r["span"]["name"] for r in report.records],
            report.statement.completeness.dropped_spans, report.statement.segment_index)
    assert found == {TRACE: (["kept"], 1, 0), OTHER: (["other"], 0, 0)}
    assert "chain position" in caplog.text
    assert _journal_files(str(tmp_path / "journal")) == []


def test_a_journal_deleted_between_its_open_and_its_lock_is_not_recovered(
    tmp_path, monkeypatch
):
    # Deleted in between by a recovery that sealed it (or by its live process, every
    # span in it retired), then unlocked: taken, it was replayed by its name, which
    # raised, and the whole recovery (every other journal with it) failed.
    from spanproof.exporter import journal as journal_module

    _dead_journal(tmp_path, "aaaa")
    _dead_journal(tmp_path, "bbbb")
    real_flock = journal_module.fcntl.flock
    sealed, left = _journal_files(str(tmp_path))

    def sealed_meanwhile(fd, operation):
        if os.path.exists(sealed):
            os.unlink(sealed)
        return real_flock(fd, operation)

    monkeypatch.setattr(journal_module.fcntl, "flock", sealed_meanwhile)
    traces, paths = recover_orphans(str(tmp_path))
    release_claimed(paths)
    assert paths == [left]
    assert [(t.instance, t.trace_id) for t in traces] == [("bbbb", TRACE)]


def test_the_loss_counts_of_many_traces_take_one_write(tmp_path, monkeypatch):
    # A producer losing spans is most often overloaded: one fsync for each trace
    # that lost any slowed it most when it could afford it least.
    from spanproof.exporter import journal as journal_module

    j = Journal(str(tmp_path), "aaaa")
    fsyncs = []
    real_fsync = journal_module.os.fsync
    monkeypatch.setattr(journal_module.os, "fsync", lambda fd: fsyncs.append(fd) or real_fsync(fd))
    traces = [f"{n:032x}" for n in range(1, 101)]
    j.append_counts({"dropped": dict.fromkeys(traces, 2), "unsampled": {traces[0]: 1},
                     "rejected": {}})
    assert len(fsyncs) == 1
    j.forget_after_fork()
    replayed = replay(_journal_files(str(tmp_path)))
    assert {t: (r.dropped_spans, r.unsampled_spans) for t, r in replayed.items()} == {
        t: (2, 1 if t == traces[0] else 0) for t in traces}
    with pytest.raises(ValueError, match="kind of loss count"):
        j.append_counts({"lost": {TRACE: 1}})


def test_each_journal_file_names_the_key_and_replay_hands_it_over(tmp_path, monkeypatch):
    # A recovery under another key (rotated at the restart) needs the dead instance's
    # own key to know its written segments for its own.
    from spanproof.exporter import journal as journal_module

    monkeypatch.setattr(journal_module, "ROTATE_BYTES", 1)  # every write ends its file
    key = bytes(range(32))
    j = Journal(str(tmp_path), "aaaa", key)
    j.append_spans([(TRACE, _body(1))])
    j.append_spans([(TRACE, _body(2))])
    files = _journal_files(str(tmp_path))
    written = [path for path in files if _read_entries(path)]  # the newest is empty
    assert len(written) == 2
    for path in written:
        first = _read_entries(path)[0]
        assert first == {"t": "key", "key": "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="}
    traces = replay(files)
    assert traces[TRACE].public_key == key
    assert [b["span"]["name"] for b in traces[TRACE].bodies] == ["s1", "s2"]


def test_a_journal_naming_no_key_or_a_malformed_one_replays_as_before(tmp_path, caplog):
    Journal(str(tmp_path / "old"), "aaaa").append_spans([(TRACE, _body(1))])
    assert replay(_journal_files(str(tmp_path / "old")))[TRACE].public_key is None
    path = tmp_path / "bad" / "journal-bbbb-000001.log"
    path.parent.mkdir()
    path.write_bytes(_frame({"t": "key", "key": "not base64!"})
                     + _frame({"t": "span", "k": "bbbb:1", "trace": TRACE, "body": _body(1)}))
    traces = replay([str(path)])
    assert traces[TRACE].public_key is None  # skipped as an entry of another form
    assert [b["span"]["name"] for b in traces[TRACE].bodies] == ["s1"]
