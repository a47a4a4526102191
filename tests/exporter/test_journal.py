"""The crash-safe journal: durability, torn tails, retirement, orphan recovery."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import textwrap

import pytest

from spanproof.exporter.journal import Journal, recover_orphans, release_claimed, replay

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


def test_torn_tail_is_ignored_and_earlier_entries_survive(tmp_path):
    j = Journal(str(tmp_path), "aaaa")
    j.append_spans([(TRACE, _body(1))])
    j.close()
    (path,) = _journal_files(str(tmp_path))
    with open(path, "ab") as f:  # a crash mid-write: header promises more than exists
        f.write(struct.pack(">II", 1000, 0) + b'{"t":"span"')
    traces = replay([path])
    assert [b["span"]["name"] for b in traces[TRACE].bodies] == ["s1"]


def test_corrupt_entry_stops_replay_at_the_corruption(tmp_path):
    j = Journal(str(tmp_path), "aaaa")
    j.append_spans([(TRACE, _body(1))])
    j.append_spans([(TRACE, _body(2))])
    j.close()
    (path,) = _journal_files(str(tmp_path))
    data = bytearray(open(path, "rb").read())
    data[-3] ^= 0xFF  # flip a byte inside the second entry's payload
    open(path, "wb").write(bytes(data))
    assert [b["span"]["name"] for b in replay([path])[TRACE].bodies] == ["s1"]


def test_dropped_counts_replay_until_sealed(tmp_path):
    j = Journal(str(tmp_path), "aaaa")
    j.append_dropped(TRACE, 3)
    j.append_dropped(TRACE, 2)
    assert replay(_journal_files(str(tmp_path)))[TRACE].dropped_spans == 5
    j.append_sealed(TRACE, [], {"segmentIndex": 1})
    assert TRACE not in replay(_journal_files(str(tmp_path)))


def test_clean_close_with_everything_sealed_removes_files(tmp_path):
    j = Journal(str(tmp_path), "aaaa")
    keys = j.append_spans([(TRACE, _body(1))])
    j.append_sealed(TRACE, keys, {})
    j.close()
    assert _journal_files(str(tmp_path)) == []


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
    traces, paths = recover_orphans(str(tmp_path))
    assert set(traces) == {OTHER}
    assert traces[OTHER].instance == "dead"
    assert [b["span"]["name"] for b in traces[OTHER].bodies] == ["lost?"]
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
