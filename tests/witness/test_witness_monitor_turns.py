"""``monitor``: runs that share a state file take turns (SPEC §12.7 step 7).

Side by side, a slow run that fetched an older checkpoint wrote it over the newer
one a faster run had verified meanwhile: the state went back, and the next run
took a rollback to a tree between the two for growth."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from witness_helpers import ORIGIN, WITNESS_SEED

from spanproof.verifier.checkpoint import Checkpoint
from spanproof.verifier.errors import LogInconsistent
from spanproof.verifier.merkle import leaf_hash
from spanproof.witness.monitor import load_state, monitor_once
from spanproof.witness.signing import CheckpointSigner
from spanproof.witness.tree import MerkleTree

SIGNER = CheckpointSigner(Ed25519PrivateKey.from_private_bytes(WITNESS_SEED), ORIGIN)
KEYS = [SIGNER.key]


class Log:
    """A witness, as a monitor's client sees it: a signed tree and its proofs.

    *fetched* is set once a checkpoint was served; a proof waits up to *hold*
    seconds for *release* (a slow network)."""

    def __init__(self, tree: MerkleTree, size: int, hold: float = 0.0) -> None:
        self.tree, self.size, self.hold = tree, size, hold
        self.fetched, self.release = threading.Event(), threading.Event()

    def checkpoint(self, size: int | None = None) -> bytes:
        self.fetched.set()
        return SIGNER.sign(Checkpoint(ORIGIN, self.size, self.tree.root(self.size)))

    def consistency_proof(self, size1: int, size2: int) -> list[bytes]:
        self.release.wait(self.hold)
        return self.tree.consistency_proof(size1, size2)


def test_overlapping_monitor_runs_never_take_the_state_back(tmp_path: Path) -> None:
    tree = MerkleTree(leaf_hash(b"entry %d" % i) for i in range(20))
    state = str(tmp_path / "monitor.json")
    monitor_once(Log(tree, 10), state, KEYS)  # type: ignore[arg-type]
    # A slow run fetches tree size 15; a fast one starts meanwhile and verifies 20.
    slow, fast = Log(tree, 15, hold=1.0), Log(tree, 20)
    errors: list[BaseException] = []

    def run(log: Log) -> None:
        try:
            monitor_once(log, state, KEYS)  # type: ignore[arg-type]
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    first = threading.Thread(target=run, args=(slow,))
    first.start()
    assert slow.fetched.wait(10)
    second = threading.Thread(target=run, args=(fast,))
    second.start()
    second.join(10)
    slow.release.set()
    first.join(10)
    assert not errors
    remembered = load_state(state, KEYS)
    assert remembered is not None and remembered.size == 20
    # So a log that rolled back to 16 entries, the first 15 unchanged, is caught.
    forked = MerkleTree(leaf_hash(b"entry %d" % i) for i in range(15))
    forked.append(leaf_hash(b"rewritten"))
    with pytest.raises(LogInconsistent, match="rollback"):
        monitor_once(Log(forked, 16), state, KEYS)  # type: ignore[arg-type]
