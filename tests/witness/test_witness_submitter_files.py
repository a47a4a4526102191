"""The files the producer-side submitter keeps (SPEC §12.11): its queue, its
``failed/`` entries, and the receipts it writes beside the bundles."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from witness_helpers import ORIGIN, FakeClock, make_bundle, trace_id, write_bundle

from spanproof.exporter._leftovers import LEFTOVER_AGE_S
from spanproof.exporter.submit import WitnessSubmitter
from spanproof.verifier.keys import TrustRoot
from spanproof.verifier.receipt import receipt_path
from spanproof.witness.service import Witness
from spanproof.witness.signing import CheckpointSigner
from spanproof.witness.store import Store

ENTRY = "000000000003-0123456789abcdef.json"  # a queue entry's name
OLD = time.time() - LEFTOVER_AGE_S - 60


def _temporary(directory: Path, name: str, mtime: float | None = None) -> Path:
    """A temporary file as ``write_temp`` names it, left by a write cut short."""
    path = directory / f".{name}.0a1b2c3d.tmp"
    path.write_bytes(b'{"bund')
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return path


def _run(script: str, *args: str, drop_root: bool = False) -> subprocess.CompletedProcess[str]:
    """Run *script* in a new interpreter, without the right to ignore file modes
    when *drop_root* (root writes whatever the mode says, unless it drops that)."""
    command = [sys.executable, "-c", textwrap.dedent(script), *args]
    if drop_root and os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root without setpriv to drop the right to ignore modes")
        command = [setpriv, "--bounding-set=-dac_override,-dac_read_search", *command]
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 0, (done.stdout, done.stderr)
    return done


def test_a_queue_files_temporary_file_left_by_a_crash_is_removed_once_old(
    tmp_path: Path,
) -> None:
    # A kill -9 while a queue entry (or a failed/ entry) was being written left its
    # temporary file, and no start ever removed it.
    queue = tmp_path / "q"
    (queue / "failed").mkdir(parents=True)
    old = [_temporary(queue, ENTRY, OLD), _temporary(queue / "failed", ENTRY, OLD)]
    young = [_temporary(queue, "000000000004-0123456789abcdef.json"),
             _temporary(queue / "failed", "000000000004-0123456789abcdef.json")]
    other = _temporary(queue, "notes.txt", OLD)  # not the submitter's: never touched
    WitnessSubmitter("http://w.invalid", queue, start=False)
    assert [p.exists() for p in old] == [False, False]
    assert [p.exists() for p in young] == [True, True]  # maybe a live process's write
    assert other.exists()


def test_a_submitter_that_does_not_resume_the_queue_leaves_its_temporary_files(
    tmp_path: Path,
) -> None:
    # The one that takes the queue over tidies it; the others only deliver.
    queue = tmp_path / "q"
    queue.mkdir()
    left = _temporary(queue, ENTRY, OLD)
    WitnessSubmitter("http://w.invalid", queue, start=False, resume=False)
    assert left.exists()


_RETIRE_CUT_SHORT = """
    import resource, signal, sys
    from spanproof.exporter.submit import WitnessSubmitter

    def refuse(url, body, headers, timeout):
        return 422, b'{"error":"nope"}', None

    queue, bundle = sys.argv[1:]
    sub = WitnessSubmitter("http://w.invalid", queue, post=refuse, start=False)
    sub.submit(bundle)
    sub._drain_incoming()
    # From here the file system takes 16 bytes of a file at most, as a crash (or a
    # full disk) stops a write part way.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (16, resource.RLIM_INFINITY))
    sub.process_due()
"""


def test_a_submission_is_retired_to_failed_atomically(tmp_path: Path) -> None:
    # The failed/ entry was written in place: a write cut short left half an entry
    # under its name, and its queue file was kept, so both were there.
    queue, bundle = tmp_path / "q", tmp_path / "b.spanproof.json"
    bundle.write_bytes(b"{}")
    _run(_RETIRE_CUT_SHORT, str(queue), str(bundle))
    assert list((queue / "failed").iterdir()) == []  # nothing half written, no leftover
    assert len(list(queue.glob("*.json"))) == 1  # still queued, retired again next start


_UNWRITABLE_RECEIPT = """
    import json, logging, sys
    from spanproof.exporter.submit import WitnessSubmitter

    queue, bundle, receipt_file = sys.argv[1:]
    with open(receipt_file, "rb") as f:
        receipt = f.read()
    posts = []

    def answer(url, body, headers, timeout):
        posts.append(url)
        return 201, receipt, None

    errors = []

    class Errors(logging.Handler):
        def emit(self, record):
            if record.levelno >= logging.ERROR:
                errors.append(record.getMessage())

    logging.getLogger("spanproof").addHandler(Errors())
    now = [1000.0]
    sub = WitnessSubmitter("http://w.invalid", queue, post=answer, clock=lambda: now[0],
                           rng=lambda: 0.0, start=False)
    sub.submit(bundle)
    waits = [sub.process_due()]
    now[0] += 1000.0
    waits.append(sub.process_due())
    print(json.dumps({"waits": waits, "pending": sub.pending, "posts": len(posts),
                      "errors": errors}))
"""


@pytest.fixture
def read_only_bundle(
    tmp_path: Path, witness_private: Ed25519PrivateKey, producer_trust: TrustRoot
) -> Iterator[tuple[Path, Path]]:
    """A bundle in a directory nobody may write, and the receipt its witness gives."""
    store = Store(str(tmp_path / "w.db"))
    witness = Witness(store, CheckpointSigner(witness_private, ORIGIN),
                      producer_trust=producer_trust, clock=FakeClock())
    (tmp_path / "b").mkdir()
    bundle = write_bundle(tmp_path / "b", make_bundle(trace_id(1)))
    receipt = tmp_path / "receipt.bin"
    receipt.write_bytes(witness.submit(bundle.read_bytes()).receipt.to_bytes())
    store.close()
    (tmp_path / "b").chmod(0o555)
    yield bundle, receipt
    (tmp_path / "b").chmod(0o755)


def test_a_receipt_that_can_never_be_written_is_retired_with_one_error(
    tmp_path: Path, read_only_bundle: tuple[Path, Path]
) -> None:
    # A read-only bundle directory made every round fail as if the witness were
    # down: the submission backed off up to the longest backoff and asked the
    # witness again, forever, holding up the other submissions' deliveries too.
    bundle, receipt = read_only_bundle
    queue = tmp_path / "q"
    done = _run(_UNWRITABLE_RECEIPT, str(queue), str(bundle), str(receipt), drop_root=True)
    got = json.loads(done.stdout)
    assert got["waits"] == [None, None] and got["pending"] == 0 and got["posts"] == 1
    (error,) = got["errors"]  # once, naming the receipt and why
    assert receipt_path(str(bundle)) in error and "Permission denied" in error
    (failed,) = (queue / "failed").glob("*.json")
    entry = json.loads(failed.read_text())
    assert entry["bundle"] == str(bundle)
    assert receipt_path(str(bundle)) in entry["reason"]
    assert "Permission denied" in entry["reason"]
    assert not Path(receipt_path(str(bundle))).exists()
