"""``monitor``: each checkpoint first seen is recorded with the time it was seen
(SPEC §12.7 step 7), in ``<state>.history``.

Checkpoints carry no time, and SPEC §6.2 and the threat model name a monitor's
record of when it saw each checkpoint as the clock that dates log entries
independently of the producer's ``sealedAt``; the state file kept only the latest
checkpoint, with no time, overwritten at each run."""

from __future__ import annotations

import base64
import json
import os
from datetime import datetime, timezone
from pathlib import Path

import pytest
from test_witness_monitor_turns import KEYS, Log
from witness_helpers import ORIGIN

from spanproof.verifier.canonical import canonicalize
from spanproof.verifier.checkpoint import verify_checkpoint
from spanproof.verifier.errors import LogInconsistent
from spanproof.verifier.merkle import leaf_hash
from spanproof.witness.monitor import HISTORY_SUFFIX, monitor_once
from spanproof.witness.tree import MerkleTree


def history(state: str) -> list[dict[str, object]]:
    """The history's lines, each checked to be canonical JSON."""
    raw = Path(state + HISTORY_SUFFIX).read_bytes()
    assert raw.endswith(b"\n")
    lines = [json.loads(line) for line in raw.splitlines()]
    for line, doc in zip(raw.splitlines(), lines, strict=True):
        assert canonicalize(doc) == line
    return lines


def parse(seen_at: object) -> datetime:
    assert isinstance(seen_at, str) and seen_at.endswith("Z")
    return datetime.fromisoformat(seen_at[:-1]).replace(tzinfo=timezone.utc)


def test_each_new_checkpoint_is_recorded_once_with_when_it_was_seen(tmp_path: Path) -> None:
    tree = MerkleTree(leaf_hash(b"entry %d" % i) for i in range(20))
    state = str(tmp_path / "monitor.json")
    before = datetime.now(timezone.utc)
    monitor_once(Log(tree, 10), state, KEYS)  # type: ignore[arg-type]
    monitor_once(Log(tree, 10), state, KEYS)  # type: ignore[arg-type]  # unchanged
    monitor_once(Log(tree, 20), state, KEYS)  # type: ignore[arg-type]
    after = datetime.now(timezone.utc)
    lines = history(state)
    assert [line["treeSize"] for line in lines] == [10, 20]
    for line, size in zip(lines, (10, 20), strict=True):
        assert line["rootHash"] == base64.b64encode(tree.root(size)).decode("ascii")
        # The note is the signed checkpoint itself: anyone can check it again.
        note = line["checkpoint"]
        assert isinstance(note, str)
        verified = verify_checkpoint(note.encode("utf-8"), KEYS, origin=ORIGIN)
        assert verified.size == size
    times = [parse(line[member]) for line in lines for member in ("askedAt", "seenAt")]
    assert before <= times[0] <= times[1] <= times[2] <= times[3] <= after


def test_a_rollback_is_not_recorded_as_seen(tmp_path: Path) -> None:
    tree = MerkleTree(leaf_hash(b"entry %d" % i) for i in range(20))
    state = str(tmp_path / "monitor.json")
    monitor_once(Log(tree, 20), state, KEYS)  # type: ignore[arg-type]
    with pytest.raises(LogInconsistent, match="rollback"):
        monitor_once(Log(tree, 15), state, KEYS)  # type: ignore[arg-type]
    assert [line["treeSize"] for line in history(state)] == [20]


def test_a_history_that_cannot_be_appended_to_stops_the_run_before_the_state(
    tmp_path: Path,
) -> None:
    # The state must not move past a checkpoint whose first sighting went unrecorded.
    tree = MerkleTree(leaf_hash(b"entry %d" % i) for i in range(20))
    state = str(tmp_path / "monitor.json")
    monitor_once(Log(tree, 10), state, KEYS)  # type: ignore[arg-type]
    kept = Path(state).read_bytes()
    os.remove(state + HISTORY_SUFFIX)
    os.mkfifo(state + HISTORY_SUFFIX)
    with pytest.raises(OSError):
        monitor_once(Log(tree, 20), state, KEYS)  # type: ignore[arg-type]
    assert Path(state).read_bytes() == kept


def test_a_history_it_cannot_append_to_is_a_usage_error_naming_it(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cryptography.hazmat.primitives import serialization
    from test_witness_monitor_turns import SIGNER

    from spanproof.verifier._cli import main
    from spanproof.witness.client import WitnessClient

    tree = MerkleTree(leaf_hash(b"entry %d" % i) for i in range(3))
    monkeypatch.setattr(WitnessClient, "checkpoint",
                        lambda self, *a, **k: Log(tree, 3).checkpoint())
    pub = tmp_path / "witness.pub"
    pub.write_bytes(SIGNER.key.public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    state = tmp_path / "state.json"
    history_path = f"{state}{HISTORY_SUFFIX}"
    os.mkdir(history_path)
    argv = ["monitor", "--url", "http://127.0.0.1:9", "--state", str(state),
            "--witness-key", str(pub)]
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith(f"spanproof: error: --state {state}: cannot append to its "
                          f"history {history_path} (")
    assert not state.exists()
    os.rmdir(history_path)
    assert main(argv) == 0
    assert [line["treeSize"] for line in history(str(state))] == [3]


def test_a_line_written_in_part_is_cut_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A full disk cut a line short; the next run's line was appended to the fragment,
    # and neither could be read.
    from spanproof.witness import monitor

    tree = MerkleTree(leaf_hash(b"entry %d" % i) for i in range(20))
    state = str(tmp_path / "monitor.json")
    monitor_once(Log(tree, 10), state, KEYS)  # type: ignore[arg-type]
    real = monitor.write_all

    def short(fd: int, data: bytes) -> None:
        os.write(fd, data[:30])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(monitor, "write_all", short)
    with pytest.raises(OSError):
        monitor_once(Log(tree, 15), state, KEYS)  # type: ignore[arg-type]
    monkeypatch.setattr(monitor, "write_all", real)
    monitor_once(Log(tree, 20), state, KEYS)  # type: ignore[arg-type]
    assert [line["treeSize"] for line in history(state)] == [10, 20]
