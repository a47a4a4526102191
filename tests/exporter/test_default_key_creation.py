"""The default signing key (``<output_dir>/keys``): created by one of several writers
at once, and ``signing.pub`` always the public half of ``signing.key``."""

from __future__ import annotations

import errno
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from stopped_writes import without_directory_locks

from spanproof.exporter import keys
from spanproof.exporter.keys import SigningKey, load_or_create
from spanproof.verifier.errors import InvalidKey

# Bounds a wait for the other thread, so that a broken hand-over fails instead of hanging.
_WAIT = 30.0


def _assert_matching_pair(directory: Path) -> SigningKey:
    """The directory holds signing.key and its own signing.pub, and no other file."""
    key = SigningKey.load(directory / "signing.key")
    assert (directory / "signing.pub").read_bytes() == key.public_pem()
    assert sorted(os.listdir(directory)) == ["signing.key", "signing.pub"]
    return key


def _waited(event: threading.Event) -> None:
    if not event.wait(_WAIT):
        raise AssertionError("the other writer never got there")


@pytest.mark.parametrize("stale_pub", [False, True], ids=["no-pub", "stale-pub"])
def test_a_writer_losing_the_race_neither_fails_nor_leaves_its_own_public_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stale_pub: bool
) -> None:
    # Writers A and B both find no signing.key and write their keys.  A links first;
    # B gets as far as linking its own, then loads signing.key and returns, all
    # before A writes signing.pub.  (Where directories can be locked, the writers
    # take turns and this cannot happen.)
    without_directory_locks(monkeypatch, keys)  # writers do not take turns
    directory = tmp_path / "keys"
    directory.mkdir()
    if stale_pub:  # left by a key that was deleted
        (directory / "signing.pub").write_bytes(SigningKey.generate().public_pem())
    written = {"A": SigningKey.from_seed(b"A" * 32), "B": SigningKey.from_seed(b"B" * 32)}
    a_at_link, b_at_link, a_linked, b_done = (threading.Event() for _ in range(4))
    real_link, real_make_directories = os.link, keys.make_directories

    def writer() -> str:
        return threading.current_thread().name

    def link(src: Any, dst: Any, **kwargs: Any) -> None:
        if writer() == "A":
            a_at_link.set()
            _waited(b_at_link)  # both have written their temporary private key
            real_link(src, dst, **kwargs)
            a_linked.set()
            _waited(b_done)  # A writes signing.pub only after B has returned
        else:
            b_at_link.set()
            _waited(a_linked)
            real_link(src, dst, **kwargs)

    def make_directories(name: Any, **kwargs: Any) -> None:
        if writer() == "B":
            _waited(a_at_link)  # B writes its temporary key after A has written its own
        real_make_directories(name, **kwargs)

    monkeypatch.setattr(os, "link", link)
    monkeypatch.setattr(keys, "make_directories", make_directories)
    monkeypatch.setattr(SigningKey, "generate", classmethod(lambda cls: written[writer()]))
    returned: dict[str, str] = {}
    errors: list[BaseException] = []

    def run(done: threading.Event | None) -> None:
        try:
            returned[writer()] = load_or_create(directory).keyid
        except BaseException as e:
            errors.append(e)
        finally:
            if done is not None:
                done.set()

    threads = [threading.Thread(target=run, args=(None,), name="A"),
               threading.Thread(target=run, args=(b_done,), name="B")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    monkeypatch.undo()
    assert errors == []
    assert returned == {"A": written["A"].keyid, "B": written["A"].keyid}
    assert _assert_matching_pair(directory).keyid == written["A"].keyid


def _race(directory: Path, writers: int) -> tuple[list[str], list[BaseException]]:
    """Start *writers* threads calling load_or_create(directory) at once; return the
    key ids they got and the exceptions they raised."""
    barrier = threading.Barrier(writers)
    keyids: list[str] = []
    errors: list[BaseException] = []

    def run() -> None:
        barrier.wait()
        try:
            keyids.append(load_or_create(directory).keyid)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=run) for _ in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return keyids, errors


def test_writers_racing_for_the_default_key_all_get_one_key_and_its_public_half(
    tmp_path: Path,
) -> None:
    for round_number in range(20):
        directory = tmp_path / str(round_number)
        keyids, errors = _race(directory, 4)
        assert errors == []
        key = _assert_matching_pair(directory)
        assert keyids == [key.keyid] * 4


def test_a_key_without_its_public_half_gets_it_written(tmp_path: Path) -> None:
    # What a writer stopped between linking signing.key and writing signing.pub leaves.
    key = SigningKey.generate()
    key.write(tmp_path)
    os.unlink(tmp_path / "signing.pub")
    assert load_or_create(tmp_path).keyid == key.keyid
    _assert_matching_pair(tmp_path)


def test_a_key_replaced_while_loaded_does_not_get_the_old_keys_public_half(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A producer loaded K1 and found no signing.pub; `keygen --force` then wrote K2
    # and its half; the producer wrote K1's half over it, and every later start was
    # refused for a signing.pub that is not signing.key's.
    k1, k2 = SigningKey.from_seed(b"1" * 32), SigningKey.from_seed(b"2" * 32)
    k1.write(tmp_path)
    (tmp_path / "signing.pub").unlink()
    real_turn = keys._key_writers_turn
    replaced: list[bool] = []

    def turn(folder: str) -> Any:
        if not replaced:  # the producer loaded K1 and found no signing.pub: K2 now
            replaced.append(True)
            k2.write(tmp_path, exist_ok=True)
        return real_turn(folder)

    monkeypatch.setattr(keys, "_key_writers_turn", turn)
    with pytest.raises(InvalidKey, match=r"signing\.key was replaced while it was being loaded"):
        load_or_create(tmp_path)
    monkeypatch.undo()
    assert _assert_matching_pair(tmp_path).keyid == k2.keyid
    assert load_or_create(tmp_path).keyid == k2.keyid


@pytest.mark.parametrize("published", [
    lambda: SigningKey.generate().public_pem(),
    lambda: b"not a key\n",
], ids=["another-key", "not-a-key"])
def test_a_public_key_file_not_matching_the_signing_key_is_refused(
    tmp_path: Path, published: Callable[[], bytes]
) -> None:
    key = SigningKey.generate()
    key.write(tmp_path)
    other = published()
    (tmp_path / "signing.pub").write_bytes(other)
    with pytest.raises(InvalidKey, match=r"signing\.pub is not the public key of .*signing\.key"):
        load_or_create(tmp_path)
    assert (tmp_path / "signing.pub").read_bytes() == other


def test_a_stale_public_key_without_its_signing_key_is_replaced(tmp_path: Path) -> None:
    (tmp_path / "signing.pub").write_bytes(SigningKey.generate().public_pem())
    created = load_or_create(tmp_path)
    assert _assert_matching_pair(tmp_path).keyid == created.keyid


def test_replacing_a_key_writes_a_matching_pair_and_no_temporary_file(tmp_path: Path) -> None:
    SigningKey.generate().write(tmp_path)
    replacement = SigningKey.generate()
    assert replacement.write(tmp_path, exist_ok=True) == (
        str(tmp_path / "signing.key"), str(tmp_path / "signing.pub"))
    assert _assert_matching_pair(tmp_path).keyid == replacement.keyid
    assert os.stat(tmp_path / "signing.key").st_mode & 0o777 == 0o600
    with pytest.raises(FileExistsError):
        SigningKey.generate().write(tmp_path)
    assert _assert_matching_pair(tmp_path).keyid == replacement.keyid


def test_keys_replaced_at_once_leave_one_writers_pair(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `spanproof keygen --force` twice at once: A replaces signing.key, then B replaces
    # it and writes signing.pub, and only then does A come to write signing.pub.
    # (Where directories can be locked, the writers take turns.)
    without_directory_locks(monkeypatch, keys)  # writers do not take turns
    SigningKey.generate().write(tmp_path)
    a, b = SigningKey.from_seed(b"A" * 32), SigningKey.from_seed(b"B" * 32)
    real_unlink_quietly = keys.unlink_quietly
    b_written: list[bool] = []

    def unlink_quietly(path: str) -> None:  # A's, once its key is signing.key
        real_unlink_quietly(path)
        if not b_written:
            b_written.append(True)
            b.write(tmp_path, exist_ok=True)

    monkeypatch.setattr(keys, "unlink_quietly", unlink_quietly)
    a.write(tmp_path, exist_ok=True)
    assert b_written
    assert _assert_matching_pair(tmp_path).keyid == b.keyid


@pytest.mark.parametrize("producer", ["SpanproofSpanExporter", "EvidenceSpanProcessor"])
def test_a_dangling_signing_key_link_is_refused_and_signing_pub_kept(
    tmp_path: Path, producer: str
) -> None:
    # signing.key a symbolic link to a file that is gone (an unmounted volume, a
    # moved secret): the default key was taken for absent, signing.pub deleted, and
    # only then did loading the link fail.
    from spanproof import exporter

    directory = tmp_path / "out" / "keys"
    directory.mkdir(parents=True)
    target = tmp_path / "secrets" / "signing.key"
    os.symlink(target, directory / "signing.key")
    published = SigningKey.generate().public_pem()
    (directory / "signing.pub").write_bytes(published)
    with pytest.raises(InvalidKey) as raised:
        getattr(exporter, producer)(output_dir=tmp_path / "out")
    assert (directory / "signing.pub").read_bytes() == published
    message = str(raised.value)
    assert f"{directory / 'signing.key'} is a symbolic link to {target}" in message
    assert "does not exist" in message
    assert sorted(os.listdir(directory)) == ["signing.key", "signing.pub"]
    assert os.readlink(directory / "signing.key") == str(target)
    assert not target.parent.exists()  # no key written through the link


def test_a_default_key_that_cannot_be_written_leaves_signing_pub_in_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # signing.pub (with no signing.key) was removed before the new key was written:
    # on a full disk it was gone, and no key was there to take its place.
    published = SigningKey.generate().public_pem()
    (tmp_path / "signing.pub").write_bytes(published)

    def full(*args: Any, **kwargs: Any) -> str:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(keys, "write_temp", full)
    with pytest.raises(OSError, match="No space left"):
        load_or_create(tmp_path)
    assert (tmp_path / "signing.pub").read_bytes() == published
    assert os.listdir(tmp_path) == ["signing.pub"]
    monkeypatch.undo()
    created = load_or_create(tmp_path)  # with room, it is replaced as before
    assert _assert_matching_pair(tmp_path).keyid == created.keyid
