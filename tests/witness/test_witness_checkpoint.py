"""C2SP signed notes and tlog-checkpoints: signing, strict parsing, pinned-key checks."""

from __future__ import annotations

import base64
import hashlib

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from witness_helpers import ORIGIN, OTHER_WITNESS_SEED

from spanproof.verifier import errors
from spanproof.verifier.checkpoint import (
    MAX_NOTE_BYTES,
    MAX_NOTE_SIGNATURES,
    Checkpoint,
    SignedNote,
    WitnessKey,
    check_consistent,
    note_key_hash,
    verify_checkpoint,
)
from spanproof.verifier.merkle import EMPTY_ROOT, leaf_hash
from spanproof.witness.signing import CheckpointSigner
from spanproof.witness.tree import MerkleTree

# The reference example of golang.org/x/mod/sumdb/note (note_test.go), the
# implementation behind C2SP signed-note.
GO_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
GO_SKEY = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
GO_TEXT = (
    "If you think cryptography is the answer to your problem,\n"
    "then you don't know what your problem is.\n"
)
GO_NOTE = (
    GO_TEXT
    + "\n\u2014 PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNX"
    + "gKvqfqdngotpRZb6KE6RyyBwJnAM=\n"
)


def _go_private() -> Ed25519PrivateKey:
    blob = base64.b64decode(GO_SKEY.split("+", 4)[4])
    assert blob[0] == 1
    return Ed25519PrivateKey.from_private_bytes(blob[1:])


@pytest.fixture
def signer(witness_private: Ed25519PrivateKey) -> CheckpointSigner:
    return CheckpointSigner(witness_private, ORIGIN)


@pytest.fixture
def pem_key(signer: CheckpointSigner) -> WitnessKey:
    """The witness key pinned from PEM (no name: the origin names it)."""
    return WitnessKey.from_pem(signer.key.public_pem())


def _checkpoint(size: int = 3) -> Checkpoint:
    tree = MerkleTree(leaf_hash(bytes([i])) for i in range(size))
    return Checkpoint(ORIGIN, size, tree.root())


# --- interoperability with the Go reference ------------------------------------------------


def test_signer_reproduces_the_go_reference_note_byte_for_byte() -> None:
    signer = CheckpointSigner(_go_private(), "PeterNeumann")
    assert signer.vkey == GO_VKEY
    assert signer.sign_text(GO_TEXT) == GO_NOTE.encode()


def test_go_reference_note_parses_and_verifies_with_its_vkey() -> None:
    key = WitnessKey.from_vkey(GO_VKEY)
    note = SignedNote.from_bytes(GO_NOTE.encode())
    assert note.text == GO_TEXT and note.to_bytes() == GO_NOTE.encode()
    (sig,) = note.signatures
    assert sig.name == "PeterNeumann" and sig.key_hash == key.key_hash() == bytes.fromhex(
        "c74f20a3"
    )
    assert key.verify(sig.signature, GO_TEXT.encode())
    assert not key.verify(sig.signature, GO_TEXT.replace("answer", "Answer").encode())


def test_key_hash_is_the_signed_note_formula(signer: CheckpointSigner) -> None:
    raw = signer.key.public_key.public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    want = hashlib.sha256(ORIGIN.encode() + b"\n\x01" + raw).digest()[:4]
    assert note_key_hash(ORIGIN, signer.key.public_key) == want
    name, khash, blob = signer.vkey.split("+", 2)
    assert (name, khash) == (ORIGIN, want.hex())
    assert base64.b64decode(blob) == b"\x01" + raw


@pytest.mark.parametrize(
    "bad",
    [
        GO_VKEY[:-1],
        GO_VKEY.replace("c74f20a3", "c74f20a4"),
        "PeterNeumann+c74f20a3",
        "Peter Neumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
        "PeterNeumann+173116ae+ZRpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
    ],
)
def test_malformed_vkeys_are_rejected(bad: str) -> None:
    with pytest.raises(errors.InvalidKey):
        WitnessKey.from_vkey(bad)


@pytest.mark.parametrize("text", ["\ufeff" + GO_VKEY + "\n", GO_VKEY + "\ufeff"],
                         ids=["leading", "trailing"])
def test_vkey_with_a_byte_order_mark_is_refused_naming_it(text: str) -> None:
    # Kept as part of the name, the mark made "key hash does not match its name and key".
    with pytest.raises(errors.InvalidKey, match=r"^w\.vkey: a byte-order mark \(U\+FEFF\) "
                                                r"in the verifier key; save it as plain text"):
        WitnessKey.from_vkey(text, "w.vkey")


def test_vkey_of_another_signature_type_fail() -> None:
    # The reference key with its type byte 0x01 changed to 0x02, its key hash left as
    # it was (the hash is computed with the type Ed25519 has): only the type check
    # refuses it.
    name, key_hash, blob = GO_VKEY.split("+", 2)
    raw = base64.b64decode(blob)
    other = f"{name}+{key_hash}+{base64.b64encode(bytes([2]) + raw[1:]).decode()}"
    with pytest.raises(errors.InvalidKey, match="not an Ed25519 \\(type 0x01\\) key"):
        WitnessKey.from_vkey(other)


# --- checkpoints -----------------------------------------------------------------------


def test_checkpoint_signs_and_verifies_with_pem_and_vkey(
    signer: CheckpointSigner, pem_key: WitnessKey
) -> None:
    cp = _checkpoint()
    note = signer.sign(cp)
    lines = note.decode().split("\n")
    assert lines[:3] == [ORIGIN, "3", base64.b64encode(cp.root).decode()]
    assert lines[3] == "" and lines[4].startswith(f"\u2014 {ORIGIN} ")
    for key in (pem_key, WitnessKey.from_vkey(signer.vkey)):
        verified = verify_checkpoint(note, [key])
        assert verified.checkpoint == cp and verified.key_name == ORIGIN
        assert verified.note == note


def test_empty_tree_checkpoint(signer: CheckpointSigner, pem_key: WitnessKey) -> None:
    note = signer.sign(Checkpoint(ORIGIN, 0, EMPTY_ROOT))
    assert verify_checkpoint(note, [pem_key]).size == 0


def test_checkpoint_by_another_key_is_rejected(signer: CheckpointSigner) -> None:
    other = CheckpointSigner(Ed25519PrivateKey.from_private_bytes(OTHER_WITNESS_SEED), ORIGIN)
    note = other.sign(_checkpoint())
    # Both keys sign under one name: only their key hashes tell them apart (the
    # message said "signed by: witness.test/spanproof", the pinned key's own name).
    theirs = other.key.key_hash(ORIGIN).hex()
    ours = signer.key.key_hash(ORIGIN).hex()
    assert theirs != ours
    want = (f"checkpoint not signed by a pinned witness key (signed by: {ORIGIN}+{theirs}; "
            f"pinned: {ORIGIN}+{ours}")
    # A PEM key is named by the note's line, and the message says so: the key of
    # another log read as a rotated key of this one.
    pem = "; a PEM key names no log, so it is shown under the note's names"
    for key, end in ((WitnessKey.from_pem(signer.key.public_pem()), pem + ")"),
                     (WitnessKey.from_vkey(signer.vkey), ")")):
        with pytest.raises(errors.NoteSignatureError) as caught:
            verify_checkpoint(note, [key])
        assert str(caught.value) == want + end


def test_a_rejected_checkpoint_names_a_few_keys_and_counts_the_rest(
    signer: CheckpointSigner,
) -> None:
    key = Ed25519PrivateKey.from_private_bytes(OTHER_WITNESS_SEED)
    names = [f"log{i}.example" for i in range(5)] + ["x" * 100]
    text = _checkpoint().to_text()
    lines = [CheckpointSigner(key, name).sign_text(text).decode().split("\n\n")[1]
             for name in names]
    note = (text + "\n" + "".join(lines)).encode()
    pinned = [WitnessKey.from_vkey(signer.key.vkey(f"pinned{i}.example")) for i in range(4)]
    with pytest.raises(errors.NoteSignatureError) as caught:
        verify_checkpoint(note, pinned)
    signers = ", ".join(f"log{i}.example+{note_key_hash(f'log{i}.example', key.public_key()).hex()}"
                        for i in range(3))
    shown = ", ".join(f"pinned{i}.example+{pinned[i].key_hash().hex()}" for i in range(3))
    assert str(caught.value) == (
        f"checkpoint not signed by a pinned witness key (signed by: {signers} and 3 more; "
        f"pinned: {shown} and 1 more)")
    # A long name is cut; a key pinned without a name is shown under each line's.
    long_note = (text + "\n" + lines[-1]).encode()
    with pytest.raises(errors.NoteSignatureError) as caught:
        verify_checkpoint(long_note, [WitnessKey.from_pem(signer.key.public_pem())])
    cut = "x" * 64 + "..."
    assert str(caught.value) == (
        f"checkpoint not signed by a pinned witness key "
        f"(signed by: {cut}+{note_key_hash('x' * 100, key.public_key()).hex()}; "
        f"pinned: {cut}+{signer.key.key_hash('x' * 100).hex()}; a PEM key names no log, so "
        "it is shown under the note's names)")


@pytest.mark.parametrize(
    "field, replace",
    [
        ("size", lambda lines: [lines[0], "4", *lines[2:]]),
        (
            "root",
            lambda lines: [lines[0], lines[1], base64.b64encode(b"\x07" * 32).decode(), *lines[3:]],
        ),
        ("extension", lambda lines: [*lines[:3], "extra line", *lines[3:]]),
    ],
)
def test_altered_checkpoint_is_rejected(
    signer: CheckpointSigner, pem_key: WitnessKey, field: str, replace: object
) -> None:
    note = signer.sign(_checkpoint()).decode()
    lines = note.split("\n")
    altered = "\n".join(replace(lines))  # type: ignore[operator]
    with pytest.raises(errors.NoteSignatureError, match="does not verify"):
        verify_checkpoint(altered.encode(), [pem_key])


def test_origin_must_be_the_key_name(witness_private: Ed25519PrivateKey) -> None:
    # The log signs as "witness.test/spanproof" a checkpoint claiming another origin.
    signer = CheckpointSigner(witness_private, ORIGIN)
    note = signer.sign_text(Checkpoint("evil.example/log", 3, _checkpoint().root).to_text())
    with pytest.raises(
        errors.NoteSignatureError, match="is not the name of the pinned witness key"
    ):
        verify_checkpoint(note, [WitnessKey.from_pem(signer.key.public_pem())])


@pytest.mark.parametrize("origin", [
    "log\x01.example", "log.example/\x1b[31m", "log\udcff",
    # White space is Unicode's (SPEC §12.4), as Go's unicode.IsSpace reads it.
    "log\u00a0example", "log\u3000example", "log\u2028example", "log\u0085example",
])
def test_an_origin_no_signed_note_can_carry_is_refused(
    witness_private: Ed25519PrivateKey, origin: str
) -> None:
    # `witness serve --origin` took a name with a control character (or, from a
    # command line that is not UTF-8, a lone surrogate): every checkpoint it signed
    # was a note no verifier accepts, so the witness logged each submission and then
    # answered 400 (its own receipt check failed), and refused to start again.
    with pytest.raises(ValueError, match="invalid witness key name"):
        CheckpointSigner(witness_private, origin)
    with pytest.raises(ValueError, match="invalid witness key name"):
        WitnessKey.from_pem(CheckpointSigner(witness_private).key.public_pem(), origin)


def test_an_origin_with_a_delete_character_signs_notes_that_verify(
    witness_private: Ed25519PrivateKey,
) -> None:
    # U+007F is no control character to a signed note (only those below U+0020 are).
    signer = CheckpointSigner(witness_private, "log\x7f.example")
    note = signer.sign(Checkpoint(signer.origin, 3, _checkpoint().root))
    assert verify_checkpoint(note, [WitnessKey.from_vkey(signer.vkey)]).origin == signer.origin


def test_wrong_origin_is_rejected_when_pinned(
    signer: CheckpointSigner, pem_key: WitnessKey
) -> None:
    note = signer.sign(_checkpoint())
    with pytest.raises(errors.NoteSignatureError, match="not the pinned witness origin"):
        verify_checkpoint(note, [pem_key], origin="other.example/log")
    # A vkey pins the name: a vkey for another name ignores this signature.
    vkey_other_name = signer.key.vkey("other.example/log")
    with pytest.raises(errors.NoteSignatureError, match="not signed by a pinned"):
        verify_checkpoint(note, [WitnessKey.from_vkey(vkey_other_name)])


def test_unknown_cosignatures_are_ignored(signer: CheckpointSigner, pem_key: WitnessKey) -> None:
    other = CheckpointSigner(
        Ed25519PrivateKey.from_private_bytes(OTHER_WITNESS_SEED), "cosigner.example"
    )
    note = signer.sign(_checkpoint())
    extra = other.sign_text(_checkpoint().to_text()).decode().split("\n\n")[1]
    cosigned = note + extra.encode()
    assert verify_checkpoint(cosigned, [pem_key]).size == 3


def test_a_failing_signature_by_a_pinned_key_rejects_the_note(
    signer: CheckpointSigner, pem_key: WitnessKey
) -> None:
    note = signer.sign(_checkpoint()).decode()
    text, sig_line = note.split("\n\n")
    name_part, blob = sig_line.rstrip("\n").rsplit(" ", 1)
    raw = bytearray(base64.b64decode(blob))
    raw[10] ^= 1
    bad = f"{name_part} {base64.b64encode(bytes(raw)).decode()}\n"
    with pytest.raises(errors.NoteSignatureError, match="does not verify"):
        verify_checkpoint(f"{text}\n\n{bad}{sig_line}".encode(), [pem_key])


@pytest.mark.parametrize(
    "note, message",
    [
        (b"", "must end with a line feed"),
        (b"a\n1\nroot\n", "no blank line"),
        (b"a\n1\nroot\n\n", "no signature lines"),
        (b"a\n1\nroot\n\n- a AAAAAAA=\n", "em dash"),
        ("a\n1\nroot\n\n\u2014 a !!!\n".encode(), "base64"),
        ("a\n1\nroot\n\n\u2014 a AAAA\n".encode(), "shorter than its 4-byte key hash"),
        ("a\n1\nroot\n\n\u2014 a+b AAAAAAA=\n".encode(), "key name"),
        ("a\t\n1\nroot\n\n\u2014 a AAAAAAA=\n".encode(), "control character"),
        (b"\xff\n\n", "UTF-8"),
        ("a\n1\n\ud800\n\n", "UTF-8"),  # a str that UTF-8 cannot encode
        # SPEC §12.4: at most 64 signature lines; a key name non-empty, without a space;
        # signatures in canonical base64 (the last character's unused bits zero).
        (("a\n1\nroot\n\n" + "\u2014 a AAAAAAA=\n" * 65).encode(), "more than 64 signature"),
        ("a\n1\nroot\n\n\u2014  AAAAAAA=\n".encode(), "key name"),
        ("a\n1\nroot\n\n\u2014 a b AAAAAAA=\n".encode(), "key name"),
        ("a\n1\nroot\n\n\u2014 a AAAAAAB=\n".encode(), "canonical"),
    ],
)
def test_malformed_notes_are_rejected(note: bytes | str, message: str) -> None:
    with pytest.raises(errors.InvalidReceipt, match=message):
        SignedNote.from_bytes(note)


def test_note_signature_lines_are_bounded() -> None:
    # signed-note: at least 16 signature lines MUST be accepted, and a verifier
    # bounds them; MAX_NOTE_SIGNATURES are accepted, one more is refused.
    line = "\u2014 a AAAAAAA=\n"
    note = SignedNote.from_bytes("a\n1\nroot\n\n" + line * MAX_NOTE_SIGNATURES)
    assert len(note.signatures) == MAX_NOTE_SIGNATURES
    with pytest.raises(errors.InvalidReceipt, match=f"more than {MAX_NOTE_SIGNATURES} signature"):
        SignedNote.from_bytes("a\n1\nroot\n\n" + line * (MAX_NOTE_SIGNATURES + 1))


def test_note_size_is_bounded() -> None:
    # A note of MAX_NOTE_BYTES parses; one byte more is refused for its size, before
    # anything else is read of it.
    tail = "\n1\nroot\n\n\u2014 a AAAAAAA=\n".encode()
    note = b"a" * (MAX_NOTE_BYTES - len(tail)) + tail
    assert len(note) == MAX_NOTE_BYTES
    assert len(SignedNote.from_bytes(note).signatures) == 1
    with pytest.raises(errors.InvalidReceipt, match=f"longer than {MAX_NOTE_BYTES} bytes"):
        SignedNote.from_bytes(b"a" + note)


@pytest.mark.parametrize(
    "text, message",
    [
        ("o\n1\n", "needs origin"),
        ("o\n01\n" + base64.b64encode(b"\0" * 32).decode() + "\n", "leading zeros"),
        ("o\n-1\n" + base64.b64encode(b"\0" * 32).decode() + "\n", "leading zeros"),
        ("o\n" + "9" * 5000 + "\n" + base64.b64encode(b"\0" * 32).decode() + "\n", "below 2"),
        ("o\n" + str(2**64) + "\n" + base64.b64encode(b"\0" * 32).decode() + "\n", "below 2"),
        ("o\n1\n" + base64.b64encode(b"\0" * 31).decode() + "\n", "not 32"),
        ("o\n1\nAAAA AAAA\n", "base64"),
        ("o\n0\n" + base64.b64encode(b"\0" * 32).decode() + "\n", "empty-tree root"),
        ("o\n1\n" + base64.b64encode(b"\0" * 32).decode() + "\n\n", "must not be empty"),
        ("o\n1\n" + "A" * 42 + "B=\n", "canonical"),
    ],
)
def test_malformed_checkpoint_bodies_are_rejected(text: str, message: str) -> None:
    with pytest.raises(errors.InvalidReceipt, match=message):
        Checkpoint.from_text(text)


# --- consistency between checkpoints ---------------------------------------------------------


def test_check_consistent_accepts_growth_and_detects_fork_and_rollback() -> None:
    tree = MerkleTree(leaf_hash(bytes([i])) for i in range(9))
    old, new = Checkpoint(ORIGIN, 5, tree.root(5)), Checkpoint(ORIGIN, 9, tree.root(9))
    check_consistent(old, new, tree.consistency_proof(5, 9))
    check_consistent(Checkpoint(ORIGIN, 0, EMPTY_ROOT), new, [])
    check_consistent(new, new, [])
    with pytest.raises(errors.LogInconsistent, match="rollback"):
        check_consistent(new, old, [])
    forked = Checkpoint(ORIGIN, 9, MerkleTree(leaf_hash(bytes([i + 1])) for i in range(9)).root())
    with pytest.raises(errors.LogInconsistent, match="fork: two checkpoints of tree size 9"):
        check_consistent(new, forked, [])
    with pytest.raises(errors.LogInconsistent, match="fork: the tree of size 9 does not extend"):
        check_consistent(old, forked, tree.consistency_proof(5, 9))
    with pytest.raises(errors.LogInconsistent, match="different logs"):
        check_consistent(old, Checkpoint("other", 9, tree.root()), [])


def test_error_hierarchy() -> None:
    assert issubclass(errors.InvalidReceipt, errors.InvalidBundle)
    for cls in (
        errors.ProofError,
        errors.NoteSignatureError,
        errors.ReceiptMismatch,
        errors.LogInconsistent,
    ):
        assert issubclass(cls, errors.VerificationError)
