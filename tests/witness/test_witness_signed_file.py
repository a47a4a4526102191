"""A witness keeps the latest checkpoint its key signed outside its database
(``<key>.checkpoint``), and refuses a database that does not extend it (SPEC §12.8
step 5): served with a new file, an older copy or another log of its origin, the
key signed a second root for a tree size it had signed before."""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import shutil
import sqlite3
import subprocess
import threading
import time
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
from spanproof.verifier.errors import TransportError
from spanproof.verifier.keys import TrustRoot
from spanproof.witness import service
from spanproof.witness.client import WitnessClient
from spanproof.witness.service import LogCorrupted, SubmitResult, Witness
from spanproof.witness.signing import (
    CheckpointSigner,
    earlier_checkpoint_paths,
    signed_checkpoint_path,
)
from spanproof.witness.store import Store


@pytest.fixture
def signer(witness_private: Ed25519PrivateKey) -> CheckpointSigner:
    """The witness's checkpoint signer, of the tests' origin."""
    return CheckpointSigner(witness_private, ORIGIN)


def _open(db: Path, signer: CheckpointSigner, trust: TrustRoot, signed: Path) -> Witness:
    return Witness(Store(str(db)), signer, producer_trust=trust, signed_file=str(signed))


def _serve(key: Path, db: Path, log: Path, *options: str) -> tuple[subprocess.Popen[bytes], str]:
    """``witness serve`` with *key* on *db* (and *options*), its output appended to
    *log*."""
    port = free_port()
    with log.open("ab") as out:
        proc = subprocess.Popen(
            witness_command("witness", "serve", "--key", str(key), "--origin", ORIGIN,
                            "--db", str(db), "--listen", f"127.0.0.1:{port}", *options),
            stdout=out, stderr=subprocess.STDOUT)
    return proc, f"http://127.0.0.1:{port}"


def _refused_start(proc: subprocess.Popen[bytes]) -> int:
    """The exit status of a ``witness serve`` expected to exit at start (bounded)."""
    try:
        return proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def _submit(url: str, producer_key: SigningKey, n: int) -> int:
    """Submit the bundle of trace *n*; the answer's status."""
    der = producer_key.private_key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return WitnessClient(url).submit(make_bundle(trace_id(n)).data, public_key_der=der).status


def test_a_database_that_does_not_extend_what_the_key_signed_is_refused(
    tmp_path: Path, signer: CheckpointSigner, producer_trust: TrustRoot
) -> None:
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

    first, url = _serve(key, tmp_path / "log.db", log)
    try:
        wait_until_up(url, proc=first)
        assert _submit(url, producer_key, 0) == 201
    finally:
        first.terminate()
    assert first.wait(30) == 0
    # The same key, and a --db naming a new file.
    assert _refused_start(_serve(key, tmp_path / "typo.db", log)[0]) == 1
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
        proc, url = _serve(key, tmp_path / db, log)
        procs.append(proc)
        return proc, url

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


def _signed_size(signed: Path, signer: CheckpointSigner) -> int:
    return verify_checkpoint(signed.read_bytes(), [signer.key], origin=ORIGIN).size


def test_every_checkpoint_handed_out_is_in_the_signed_file_without_a_stop(
    tmp_path: Path, signer: CheckpointSigner, producer_trust: TrustRoot
) -> None:
    # Written on start and stop only, the file held the tree size of the start: a
    # witness killed after weeks of appends left it there.
    signed = tmp_path / "witness.key.checkpoint"
    witness = _open(tmp_path / "log.db", signer, producer_trust, signed)
    assert _signed_size(signed, signer) == 0
    first = witness.submit(make_bundle(trace_id(0)).data)
    assert _signed_size(signed, signer) == first.receipt.tree_size == 1
    batch = witness.submit_batch([make_bundle(trace_id(n)).data for n in (1, 2, 3)])
    sizes = {r.receipt.tree_size for r in batch if isinstance(r, SubmitResult)}
    assert sizes == {4} and _signed_size(signed, signer) == 4
    assert signed.read_bytes() == witness.checkpoint()


def test_a_database_restored_after_a_crash_from_a_copy_older_than_the_crash_is_refused(
    tmp_path: Path, signer: CheckpointSigner, producer_trust: TrustRoot
) -> None:
    # The copy (last night's backup) extends the checkpoint of the last start, but
    # not those signed since: served, it signed other roots for those sizes.
    signed = tmp_path / "witness.key.checkpoint"
    log = tmp_path / "log.db"
    witness = _open(log, signer, producer_trust, signed)
    witness.submit(make_bundle(trace_id(0)).data)
    with sqlite3.connect(log) as live, sqlite3.connect(tmp_path / "backup.db") as copy:
        live.backup(copy)  # an online backup, of tree size 1
    witness.submit(make_bundle(trace_id(1)).data)
    witness.submit(make_bundle(trace_id(2)).data)
    # No keep_latest(): the process dies here.
    with pytest.raises(LogCorrupted, match=r"signed tree size 3 .* is a log of tree size 1"):
        _open(tmp_path / "backup.db", signer, producer_trust, signed)


def test_a_checkpoint_is_handed_out_only_once_the_signed_file_holds_it(
    tmp_path: Path, signer: CheckpointSigner, producer_trust: TrustRoot,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    signed = tmp_path / "witness.key.checkpoint"
    witness = _open(tmp_path / "log.db", signer, producer_trust, signed)
    writing, release = threading.Event(), threading.Event()
    written: list[int] = []
    real_write = service.write_atomic

    def slow_write(path: str, data: bytes) -> None:
        writing.set()
        assert release.wait(30)
        real_write(path, data)
        written.append(verify_checkpoint(data, [signer.key], origin=ORIGIN).size)

    monkeypatch.setattr(service, "write_atomic", slow_write)
    results: dict[int, SubmitResult] = {}

    def submit(n: int) -> None:
        results[n] = witness.submit(make_bundle(trace_id(n)).data)

    first = threading.Thread(target=submit, args=(0,))
    first.start()
    assert writing.wait(30)
    # Committed, not yet in the file: nothing of it is handed out.
    assert witness.size == 0 and witness.checkpoint(1) is None
    assert verify_checkpoint(witness.checkpoint() or b"", [signer.key], origin=ORIGIN).size == 0
    assert witness.lookup(trace=trace_id(0)) == []
    with pytest.raises(ValueError):
        witness.inclusion_proof(0)
    # Two more commit while the first write is under way: one more write covers both.
    later = [threading.Thread(target=submit, args=(n,)) for n in (1, 2)]
    for thread in later:
        thread.start()
    deadline = time.monotonic() + 30
    while witness._tree.size < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert witness._tree.size == 3
    release.set()
    for thread in (first, *later):
        thread.join(30)
    assert written == [1, 3]
    assert sorted(r.receipt.tree_size for r in results.values())[-1] == 3
    assert witness.size == 3 and _signed_size(signed, signer) == 3
    assert [entry.index for entry, _, _ in witness.lookup(trace=trace_id(0))] == [0]


def test_a_signed_file_that_cannot_be_written_is_warned_of_once_and_the_log_still_answers(
    tmp_path: Path, signer: CheckpointSigner, producer_trust: TrustRoot,
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    signed = tmp_path / "witness.key.checkpoint"
    witness = _open(tmp_path / "log.db", signer, producer_trust, signed)
    real_write = service.write_atomic

    def full_disk(path: str, data: bytes) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", path)

    monkeypatch.setattr(service, "write_atomic", full_disk)
    with caplog.at_level(logging.WARNING, logger=service.__name__):
        assert witness.submit(make_bundle(trace_id(0)).data).receipt.tree_size == 1
        assert witness.submit(make_bundle(trace_id(1)).data).receipt.tree_size == 2
        assert witness.size == 2
        failures = [r for r in caplog.records if "cannot write" in r.getMessage()]
        assert len(failures) == 1 and "No space left on device" in failures[0].getMessage()
        monkeypatch.setattr(service, "write_atomic", real_write)
        witness.submit(make_bundle(trace_id(2)).data)
    assert _signed_size(signed, signer) == 3
    assert any("written again (tree size 3)" in r.getMessage() for r in caplog.records)


def test_the_signed_file_and_the_origin_are_found_beside_the_key_through_a_link(
    tmp_path: Path, witness_private: Ed25519PrivateKey
) -> None:
    # Beside the link, a key served through a second name found no checkpoint and
    # took a new database as its log; its origin was the derived one.
    real = tmp_path / "keys" / "witness.key"
    real.parent.mkdir()
    write_private_key(real, witness_private)
    (tmp_path / "keys" / "witness.key.origin").write_text(f"{ORIGIN}\n")
    link = tmp_path / "elsewhere" / "witness.key"
    link.parent.mkdir()
    link.symlink_to(real)
    assert signed_checkpoint_path(link) == signed_checkpoint_path(real) == f"{real}.checkpoint"
    assert CheckpointSigner.load(link).origin == ORIGIN


def test_witness_serve_killed_keeps_what_it_signed_and_a_stopped_write_is_removed(
    tmp_path: Path, witness_private: Ed25519PrivateKey, producer_key: SigningKey
) -> None:
    # Served through a link to the key, killed with SIGKILL after an append: the next
    # start, through the key's own name on a new database, is refused.  A temporary
    # file of <key>.checkpoint that a stopped witness left goes at its start; another
    # file's does not.
    (tmp_path / "keys").mkdir()
    real = write_private_key(tmp_path / "keys" / "witness.key", witness_private)
    link = tmp_path / "elsewhere" / "witness.key"
    link.parent.mkdir()
    link.symlink_to(real)
    stale = real.parent / ".witness.key.checkpoint.0123abcd.tmp"
    stale.write_bytes(b"half a checkpoint")
    other = real.parent / ".witness.key.pub.0123abcd.tmp"
    other.write_bytes(b"not the witness's to remove")
    log = tmp_path / "serve.log"

    first, url = _serve(link, tmp_path / "log.db", log)
    try:
        wait_until_up(url, proc=first)
        assert not stale.exists() and other.exists()
        assert _submit(url, producer_key, 0) == 201
    finally:
        first.kill()
        first.wait(30)
    assert not (link.parent / "witness.key.checkpoint").exists()
    assert verify_checkpoint((real.parent / "witness.key.checkpoint").read_bytes(),
                             [CheckpointSigner(witness_private, ORIGIN).key],
                             origin=ORIGIN).size == 1
    assert _refused_start(_serve(real, tmp_path / "new.db", log)[0]) == 1
    assert f"refusing to start: this key signed tree size 1 of {ORIGIN!r}" in log.read_text()
    assert f"removed {stale}, left by a write that stopped" in log.read_text()


def test_witness_serve_keeps_the_keys_lock_and_checkpoint_in_its_state_dir(
    tmp_path: Path, witness_private: Ed25519PrivateKey, producer_key: SigningKey,
    signer: CheckpointSigner,
) -> None:
    # A key on a read-only mount (a secret volume) could hold neither beside it:
    # another process serving the key, or a new database, went unrefused.  In the
    # state directory they are named for the key, not its file name.
    (tmp_path / "secret").mkdir()
    key = write_private_key(tmp_path / "secret" / "witness.key", witness_private)
    state = tmp_path / "state"
    state.mkdir()
    log = tmp_path / "serve.log"
    named = f"witness-{signer.key_id}"

    def serve(db: str, *options: str) -> tuple[subprocess.Popen[bytes], str]:
        return _serve(key, tmp_path / db, log, *options)

    first, url = serve("log.db", "--state-dir", str(state))
    try:
        wait_until_up(url, proc=first)
        assert _submit(url, producer_key, 0) == 201
        # The lock in the state directory, and the key file's own, which a serve
        # without --state-dir (or with another) takes too.
        assert _refused_start(serve("other.db", "--state-dir", str(state))[0]) == 3
        assert f"{key} is served by another process ({state}/{named}.lock" in log.read_text()
        assert sorted(p.name for p in key.parent.iterdir()) == ["witness.key",
                                                               "witness.key.pub"]
        assert _refused_start(serve("third.db")[0]) == 3
        assert f"{key} is served by another process ({key} is locked" in log.read_text()
    finally:
        first.terminate()
    assert first.wait(30) == 0
    assert sorted(p.name for p in state.iterdir()) == [f"{named}.checkpoint", f"{named}.lock"]
    assert not (key.parent / "witness.key.checkpoint").exists()
    assert _refused_start(serve("new.db", "--state-dir", str(state))[0]) == 1
    assert f"refusing to start: this key signed tree size 1 of {ORIGIN!r}" in log.read_text()


def test_state_files_of_two_keys_of_one_file_name_are_apart(tmp_path: Path) -> None:
    # Named for the file, the second key found the first's checkpoint and was refused
    # as "not a checkpoint this key signed", whose removal the message advised.
    one = signed_checkpoint_path(tmp_path / "a" / "witness.key", str(tmp_path), "0" * 16)
    two = signed_checkpoint_path(tmp_path / "b" / "witness.key", str(tmp_path), "1" * 16)
    assert one != two and Path(one).parent == Path(two).parent == tmp_path


@pytest.mark.parametrize("earlier", ["beside the link", "beside the key file"])
def test_a_checkpoint_an_earlier_run_kept_elsewhere_is_still_checked(
    tmp_path: Path, signer: CheckpointSigner, producer_trust: TrustRoot, earlier: str
) -> None:
    # Earlier runs kept it beside the key's name as given (before links were
    # followed), or beside the key file (before --state-dir): a start after such a
    # change took a new database unrefused.
    (tmp_path / "secret").mkdir()
    real = tmp_path / "secret" / "witness.key"
    real.write_bytes(b"")
    link = tmp_path / "witness.key"
    link.symlink_to(real)
    state = tmp_path / "state"
    state.mkdir()
    if earlier == "beside the link":
        used, key_as_given, state_dir = f"{link}.checkpoint", link, None
    else:
        used, key_as_given, state_dir = f"{real}.checkpoint", real, str(state)
    witness = _open(tmp_path / "log.db", signer, producer_trust, Path(used))
    witness.submit(make_bundle(trace_id(0)).data)
    witness._store.close()
    current = signed_checkpoint_path(key_as_given, state_dir, signer.key_id)
    assert current != used and used in earlier_checkpoint_paths(
        key_as_given, state_dir, signer.key_id)
    with pytest.raises(LogCorrupted, match=r"signed tree size 1 .* is a log of tree size 0"):
        Witness(Store(str(tmp_path / "new.db")), signer, producer_trust=producer_trust,
                signed_file=current,
                earlier_files=earlier_checkpoint_paths(key_as_given, state_dir,
                                                       signer.key_id))


def test_a_failure_after_the_commit_still_hands_out_and_keeps_the_checkpoint(
    tmp_path: Path, signer: CheckpointSigner, producer_trust: TrustRoot,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Raised after the commit (reading the conflict flag), the append's checkpoint was
    # neither handed out nor written to the file until another append came.
    signed = tmp_path / "witness.key.checkpoint"
    witness = _open(tmp_path / "log.db", signer, producer_trust, signed)

    def unreadable(entry: object) -> bool:
        raise TransportError("database is locked")

    monkeypatch.setattr(witness._store, "in_conflict", unreadable)
    with pytest.raises(TransportError):
        witness.submit(make_bundle(trace_id(0)).data)
    assert witness.size == 1 and _signed_size(signed, signer) == 1


def test_witness_serve_refuses_a_state_dir_that_is_not_a_directory(
    tmp_path: Path, witness_private: Ed25519PrivateKey
) -> None:
    key = write_private_key(tmp_path / "witness.key", witness_private)
    proc = subprocess.run(
        witness_command("witness", "serve", "--key", str(key), "--db", str(tmp_path / "w.db"),
                        "--state-dir", str(tmp_path / "missing"), "--listen", "127.0.0.1:0"),
        capture_output=True, timeout=60)
    assert proc.returncode == 2
    assert f"--state-dir {tmp_path / 'missing'}: not a directory" in proc.stderr.decode()
    assert not (tmp_path / "w.db").exists()


def test_an_unreadable_place_an_earlier_run_may_have_used_is_warned_of_not_in_the_way(
    tmp_path: Path, signer: CheckpointSigner, producer_trust: TrustRoot,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Only the checkpoint file in use must be readable: a start is not refused for
    # the place an earlier run may have kept one.
    earlier = tmp_path / "witness.key.checkpoint"
    earlier.mkdir()  # not a file: cannot be read
    with caplog.at_level(logging.WARNING):
        witness = Witness(Store(str(tmp_path / "log.db")), signer,
                          producer_trust=producer_trust,
                          signed_file=str(tmp_path / "state.checkpoint"),
                          earlier_files=[str(earlier)])
    assert witness.size == 0
    assert f"cannot read {earlier}, where an earlier run may have kept" in caplog.text
    with pytest.raises(LogCorrupted, match="cannot read the latest checkpoint"):
        Witness(Store(str(tmp_path / "other.db")), signer, producer_trust=producer_trust,
                signed_file=str(earlier))


def test_another_keys_checkpoint_where_an_earlier_run_may_have_kept_this_ones_is_passed_over(
    tmp_path: Path, signer: CheckpointSigner, producer_trust: TrustRoot,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A key replaced in place, now served with a state directory: the old key's
    # checkpoint beside it proves nothing about this log, and refused the start.
    other = CheckpointSigner(Ed25519PrivateKey.from_private_bytes(bytes(range(32))), ORIGIN)
    earlier = tmp_path / "witness.key.checkpoint"
    old = _open(tmp_path / "old.db", other, producer_trust, earlier)
    old.submit(make_bundle(trace_id(0)).data)
    old._store.close()
    with caplog.at_level(logging.WARNING):
        witness = Witness(Store(str(tmp_path / "log.db")), signer,
                          producer_trust=producer_trust,
                          signed_file=str(tmp_path / "state.checkpoint"),
                          earlier_files=[str(earlier)])
    assert witness.size == 0
    assert f"{earlier} is not a checkpoint this key signed" in caplog.text


def test_a_wrapper_that_locks_the_key_file_is_named_in_the_refusal(
    tmp_path: Path, witness_private: Ed25519PrivateKey
) -> None:
    key = write_private_key(tmp_path / "witness.key", witness_private)
    fd = os.open(key, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # as `flock witness.key spanproof witness serve`
        proc = subprocess.run(
            witness_command("witness", "serve", "--key", str(key), "--db",
                            str(tmp_path / "w.db"), "--listen", "127.0.0.1:0"),
            capture_output=True, timeout=60)
    finally:
        os.close(fd)
    assert proc.returncode == 3
    assert "or a wrapper of this command locks the key file" in proc.stderr.decode()


def test_a_key_file_that_cannot_be_locked_is_warned_of(
    tmp_path: Path, witness_private: Ed25519PrivateKey, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Some network filesystems lock only files open for writing: the key file's lock
    # was skipped without a word, and with it the exclusion of a serve keeping its
    # lock in another state directory.
    from spanproof.witness import signing

    key = write_private_key(tmp_path / "witness.key", witness_private)
    real_flock = fcntl.flock

    def flock(fd: int, operation: int) -> None:
        if os.path.samefile(f"/proc/self/fd/{fd}", key):
            raise OSError(errno.EBADF, "Bad file descriptor")
        real_flock(fd, operation)

    monkeypatch.setattr(signing.fcntl, "flock", flock)
    with caplog.at_level(logging.WARNING):
        held, state_locked = signing.hold_key(key)
    try:
        assert state_locked and len(held) == 1  # <key>.lock only
        assert f"cannot lock the key file {key} (Bad file descriptor)" in caplog.text
    finally:
        for fd in held:
            os.close(fd)
