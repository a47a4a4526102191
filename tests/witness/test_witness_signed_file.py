"""A witness keeps the latest checkpoint its key signed outside its database
(``<key>.checkpoint``), and refuses a database that does not extend it (SPEC §12.8
step 5): served with a new file, an older copy or another log of its origin, the
key signed a second root for a tree size it had signed before."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from witness_helpers import (
    ORIGIN,
    free_port,
    make_bundle,
    trace_id,
    wait_until_up,
    witness_command,
    write_private_key,
)

from spanproof.exporter.keys import SigningKey
from spanproof.verifier.checkpoint import verify_checkpoint
from spanproof.verifier.keys import TrustRoot
from spanproof.witness.client import WitnessClient
from spanproof.witness.service import LogCorrupted, Witness
from spanproof.witness.signing import CheckpointSigner
from spanproof.witness.store import Store


def _open(db: Path, signer: CheckpointSigner, trust: TrustRoot, signed: Path) -> Witness:
    return Witness(Store(str(db)), signer, producer_trust=trust, signed_file=str(signed))


def test_a_database_that_does_not_extend_what_the_key_signed_is_refused(
    tmp_path: Path, witness_private: Ed25519PrivateKey, producer_trust: TrustRoot
) -> None:
    signer = CheckpointSigner(witness_private, ORIGIN)
    signed = tmp_path / "witness.key.checkpoint"
    log = tmp_path / "log.db"
    witness = _open(log, signer, producer_trust, signed)
    witness.submit(make_bundle(trace_id(0)).data)
    witness._store.close()
    shutil.copy(log, tmp_path / "older.db")  # a copy of the log at tree size 1
    witness = _open(log, signer, producer_trust, signed)
    witness.submit(make_bundle(trace_id(1)).data)
    witness.keep_latest()
    witness._store.close()
    assert verify_checkpoint(signed.read_bytes(), [signer.key], origin=ORIGIN).size == 2

    with pytest.raises(LogCorrupted, match=r"signed tree size 2 .* is a log of tree size 0"):
        _open(tmp_path / "new.db", signer, producer_trust, signed)
    with pytest.raises(LogCorrupted, match=r"signed tree size 2 .* is a log of tree size 1"):
        _open(tmp_path / "older.db", signer, producer_trust, signed)
    other = _open(tmp_path / "other.db", signer, producer_trust, tmp_path / "elsewhere")
    other.submit(make_bundle(trace_id(7)).data)
    other.submit(make_bundle(trace_id(8)).data)
    other._store.close()
    with pytest.raises(LogCorrupted, match="another root at that size"):
        _open(tmp_path / "other.db", signer, producer_trust, signed)
    # The log itself still opens, and grows.
    witness = _open(log, signer, producer_trust, signed)
    witness.submit(make_bundle(trace_id(2)).data)
    assert witness.size == 3


def test_witness_serve_refuses_a_new_database_for_a_key_that_signed_a_log(
    tmp_path: Path, witness_private: Ed25519PrivateKey, producer_key: SigningKey
) -> None:
    key = write_private_key(tmp_path / "witness.key", witness_private)
    log = tmp_path / "serve.log"

    def serve(db: str) -> tuple[subprocess.Popen[bytes], str]:
        port = free_port()
        with log.open("ab") as out:
            proc = subprocess.Popen(
                witness_command("witness", "serve", "--key", str(key), "--origin", ORIGIN,
                                "--db", str(tmp_path / db), "--listen", f"127.0.0.1:{port}"),
                stdout=out, stderr=subprocess.STDOUT)
        return proc, f"http://127.0.0.1:{port}"

    first, url = serve("log.db")
    try:
        wait_until_up(url, proc=first)
        der = producer_key.private_key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        assert WitnessClient(url).submit(make_bundle(trace_id(0)).data,
                                         public_key_der=der).status == 201
    finally:
        first.terminate()
    assert first.wait(30) == 0
    second, _ = serve("typo.db")  # the same key, and a --db naming a new file
    try:
        assert second.wait(30) == 1
    finally:
        if second.poll() is None:
            second.kill()
            second.wait(10)
    assert (f"refusing to start: this key signed tree size 1 of {ORIGIN!r}"
            in log.read_text())


def test_a_second_process_cannot_serve_the_same_key(
    tmp_path: Path, witness_private: Ed25519PrivateKey
) -> None:
    # Started side by side on two databases, both signed a log of the key's origin:
    # two roots for one tree size as soon as each logged an entry.
    key = write_private_key(tmp_path / "witness.key", witness_private)
    log = tmp_path / "serve.log"
    procs: list[subprocess.Popen[bytes]] = []

    def serve(db: str) -> tuple[subprocess.Popen[bytes], str]:
        port = free_port()
        with log.open("ab") as out:
            proc = subprocess.Popen(
                witness_command("witness", "serve", "--key", str(key), "--origin", ORIGIN,
                                "--db", str(tmp_path / db), "--listen", f"127.0.0.1:{port}"),
                stdout=out, stderr=subprocess.STDOUT)
        procs.append(proc)
        return proc, f"http://127.0.0.1:{port}"

    try:
        first, url = serve("one.db")
        wait_until_up(url, proc=first)
        second, _ = serve("two.db")
        assert second.wait(30) == 3
        assert f"{key} is served by another process" in log.read_text()
        first.terminate()
        assert first.wait(30) == 0
        third, url = serve("one.db")  # free once the first stopped
        wait_until_up(url, proc=third)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(10)
