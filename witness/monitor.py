"""Watching a witness for forks and rollbacks (SPEC §12.7), for ``spanproof monitor``.

Each run fetches the witness's latest checkpoint, verifies its signature with the
pinned witness key, and checks that it extends the checkpoint remembered from the
previous run (same size: same root; larger: a valid consistency proof; smaller:
a rollback).  Only then is the new checkpoint remembered, atomically.  On a fork
or rollback the two signed checkpoints (and the proof served) are written to an
evidence file: two signed checkpoints that cannot both be honest are proof of
the witness's misbehaviour that anyone can check.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from spanproof.verifier._files import read_named_file, write_atomic
from spanproof.verifier.canonical import canonicalize, parse_strict
from spanproof.verifier.checkpoint import (
    VerifiedCheckpoint,
    WitnessKey,
    check_consistent,
    verify_checkpoint,
)
from spanproof.verifier.errors import InvalidBundle, InvalidReceipt, LogInconsistent

from .client import WitnessClient

__all__ = [
    "MONITOR_EVIDENCE_MEDIA_TYPE",
    "MONITOR_STATE_MEDIA_TYPE",
    "MonitorResult",
    "load_state",
    "monitor_once",
    "save_state",
]

MONITOR_STATE_MEDIA_TYPE = "application/vnd.spanproof.monitor-state.v1+json"
MONITOR_EVIDENCE_MEDIA_TYPE = "application/vnd.spanproof.monitor-evidence.v1+json"


@dataclass(frozen=True)
class MonitorResult:
    """One successful monitor run: the remembered checkpoint (None on the first run)
    and the new one, which now replaces it."""

    previous: VerifiedCheckpoint | None
    current: VerifiedCheckpoint

    @property
    def message(self) -> str:
        """One line for the operator."""
        cur = self.current
        root = base64.b64encode(cur.root).decode("ascii")
        if self.previous is None:
            return f"OK {cur.origin}: first checkpoint recorded (tree size {cur.size}, root {root})"
        if self.previous.size == cur.size:
            return f"OK {cur.origin}: unchanged at tree size {cur.size}"
        return (
            f"OK {cur.origin}: tree size {self.previous.size} -> {cur.size} is consistent "
            f"(root {root})"
        )


def load_state(
    path: str, keys: Sequence[WitnessKey], *, origin: str | None = None
) -> VerifiedCheckpoint | None:
    """The checkpoint remembered in the state file, re-verified; None if no file.

    Raises:
        InvalidReceipt: the state file is malformed.
        NoteSignatureError: its checkpoint is not signed by a pinned key.
        OSError: the file exists but cannot be read.
    """
    try:
        data, _ = read_named_file(path)
    except FileNotFoundError:
        return None
    try:
        doc = parse_strict(data, f"monitor state {path}")
    except InvalidBundle as e:
        raise InvalidReceipt(str(e)) from None
    if (
        not isinstance(doc, dict)
        or doc.get("mediaType") != MONITOR_STATE_MEDIA_TYPE
        or not isinstance(doc.get("checkpoint"), str)
    ):
        raise InvalidReceipt(
            f"monitor state {path}: not a {MONITOR_STATE_MEDIA_TYPE} document"
        )
    return verify_checkpoint(doc["checkpoint"], keys, origin=origin)


def save_state(path: str, checkpoint: VerifiedCheckpoint) -> None:
    """Remember *checkpoint* in the state file (temp file, fsync, rename).

    Raises:
        OSError: the file cannot be written.
    """
    doc = {"mediaType": MONITOR_STATE_MEDIA_TYPE, "checkpoint": checkpoint.note.decode("utf-8")}
    write_atomic(path, canonicalize(doc) + b"\n")


def _save_evidence(
    path: str,
    reason: str,
    previous: VerifiedCheckpoint,
    current: VerifiedCheckpoint,
    proof: Sequence[bytes],
) -> str:
    evidence = f"{path}.evidence.json"
    doc: dict[str, Any] = {
        "mediaType": MONITOR_EVIDENCE_MEDIA_TYPE,
        "reason": reason,
        "previous": previous.note.decode("utf-8"),
        "current": current.note.decode("utf-8"),
        "consistencyProof": [base64.b64encode(h).decode("ascii") for h in proof],
    }
    write_atomic(evidence, json.dumps(doc, indent=2).encode("utf-8") + b"\n")
    return evidence


def monitor_once(
    client: WitnessClient,
    state_path: str,
    keys: Sequence[WitnessKey],
    *,
    origin: str | None = None,
) -> MonitorResult:
    """Run one monitor check (SPEC §12.7) and remember the new checkpoint.

    Raises:
        LogInconsistent: a fork or rollback; the message names the evidence file.
            The state file is left unchanged.
        NoteSignatureError: the served (or remembered) checkpoint is not signed by
            a pinned witness key.
        InvalidReceipt: a malformed checkpoint or state file.
        TransportError: the witness could not be reached.
        OSError: the state file cannot be read or written.
    """
    previous = load_state(state_path, keys, origin=origin)
    pinned_origin = origin if origin is not None else (previous.origin if previous else None)
    current = verify_checkpoint(client.checkpoint(), keys, origin=pinned_origin)
    if previous is not None:
        proof: list[bytes] = []
        if 0 < previous.size < current.size:
            proof = client.consistency_proof(previous.size, current.size)
        try:
            check_consistent(previous.checkpoint, current.checkpoint, proof)
        except LogInconsistent as e:
            evidence = _save_evidence(state_path, str(e), previous, current, proof)
            raise LogInconsistent(f"{e}; evidence saved to {evidence}") from e
    save_state(state_path, current)
    return MonitorResult(previous, current)
