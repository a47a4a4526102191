"""A witness process killed with SIGKILL during submissions restarts on a consistent
log: every receipt it returned still verifies, and is consistent with later
checkpoints; no tree size ever gets two roots."""

from __future__ import annotations

import base64
import json
import sqlite3
import subprocess
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from witness_helpers import (
    ORIGIN,
    free_port,
    make_bundle,
    trace_id,
    wait_until_up,
    witness_command,
    write_bundle,
    write_private_key,
)

from spanproof.exporter.keys import SigningKey
from spanproof.verifier.checkpoint import WitnessKey, verify_checkpoint
from spanproof.verifier.keys import TrustRoot
from spanproof.verifier.merkle import verify_consistency
from spanproof.verifier.receipt import verify_receipt
from spanproof.verifier.verify import check_bundle

N_BUNDLES = 48
KILL_AFTER = 12
THREADS = 4


def _start(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    out = log.open("ab")
    try:
        return subprocess.Popen(witness_command(*args), stdout=out, stderr=subprocess.STDOUT)
    finally:
        out.close()


def _post(url: str, data: bytes) -> tuple[int, bytes]:
    req = urllib.request.Request(
        url + "/v1/submit",
        data=data,
        method="POST",
        headers={"Content-Type": "application/vnd.spanproof.bundle.v1+json"},
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        return resp.status, resp.read()


def _get(url: str, path: str) -> bytes:
    with urllib.request.urlopen(url + path, timeout=10) as resp:
        data: bytes = resp.read()
        return data


def test_sigkill_during_submissions_keeps_every_receipt_valid(
    tmp_path: Path, witness_private: Any, producer_key: SigningKey, producer_trust: TrustRoot
) -> None:
    key = write_private_key(tmp_path / "witness.key", witness_private)
    pub = tmp_path / "producer.pub"
    pub.write_bytes(producer_key.public_pem())
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    args = [
        "serve",
        "--listen",
        f"127.0.0.1:{port}",
        "--db",
        str(tmp_path / "w.db"),
        "--key",
        str(key),
        "--origin",
        ORIGIN,
        "--producer-key",
        str(pub),
        "--log-level",
        "warning",
    ]
    log = tmp_path / "witness.log"
    bundles = [write_bundle(tmp_path, make_bundle(trace_id(i))) for i in range(N_BUNDLES)]
    receipts: dict[int, bytes] = {}
    lock = threading.Lock()
    enough = threading.Event()

    def worker(indexes: list[int]) -> None:
        for i in indexes:
            try:
                status, body = _post(url, bundles[i].read_bytes())
            except (OSError, urllib.error.URLError):
                return  # the witness died under us
            assert status in (200, 201)
            with lock:
                receipts[i] = body
                if len(receipts) >= KILL_AFTER:
                    enough.set()

    proc = _start(args, log)
    try:
        wait_until_up(url, proc=proc)
        threads = [
            threading.Thread(target=worker, args=(list(range(t, N_BUNDLES, THREADS)),))
            for t in range(THREADS)
        ]
        for t in threads:
            t.start()
        assert enough.wait(30), "submissions did not get going"
        proc.kill()  # SIGKILL: no shutdown, possibly mid-transaction
        proc.wait(10)
        for t in threads:
            t.join(30)
            assert not t.is_alive()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    got_before = dict(receipts)
    assert len(got_before) >= KILL_AFTER

    proc = _start(args, log)
    try:
        wait_until_up(url, proc=proc)  # starts fine on the killed process's database
        keys = [WitnessKey.load(str(key) + ".pub")]
        # Everything not acknowledged before the crash is submitted again.
        for i in range(N_BUNDLES):
            if i not in receipts:
                status, body = _post(url, bundles[i].read_bytes())
                assert status in (200, 201)
                receipts[i] = body
        latest = verify_checkpoint(_get(url, "/v1/checkpoint"), keys, origin=ORIGIN)
        assert latest.size == N_BUNDLES  # each bundle logged exactly once

        roots: dict[int, bytes] = {}
        for i, receipt in sorted(receipts.items()):
            verified = verify_receipt(receipt, check_bundle(bundles[i], producer_trust), keys)
            cp = verified.checkpoint
            assert roots.setdefault(cp.size, cp.root) == cp.root, "two roots for one size"
            if cp.size < latest.size:
                doc = json.loads(
                    _get(url, f"/v1/proof/consistency?from={cp.size}&to={latest.size}")
                )
                proof = [base64.b64decode(h) for h in doc["proof"]]
                verify_consistency(cp.size, latest.size, proof, cp.root, latest.root)
        # Every checkpoint the log ever stored is signed, and agrees with the receipts.
        for size in range(N_BUNDLES + 1):
            cp = verify_checkpoint(_get(url, f"/v1/checkpoint?size={size}"), keys, origin=ORIGIN)
            assert roots.setdefault(size, cp.root) == cp.root
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    db = sqlite3.connect(tmp_path / "w.db")
    sizes = [s for (s,) in db.execute("SELECT size FROM checkpoints ORDER BY size")]
    db.close()
    assert sizes == list(range(N_BUNDLES + 1)), log.read_text()
