"""Witness checkpoints: C2SP signed notes around C2SP tlog-checkpoint bodies (SPEC §12.4).

A checkpoint names a log (its *origin*), a tree size and the RFC 9162 root hash at
that size, and is signed as a C2SP ``signed-note`` with Ed25519::

    witness.example/spanproof
    42
    qH8vjP4f0Ew8l2Tx1kqJzV2yWq3N0pKX6+gH5bcdE0M=

    — witness.example/spanproof AbCdEf...base64(key hash || signature)...

The note text (the three lines above, each ending in a line feed) is what the key
signs.  A signature line names the key and carries ``base64(key hash || sig)``, the
key hash being the first 4 bytes of ``SHA-256(name || 0x0A || 0x01 || public key)``.

Verification follows the signed-note rule *verify, then parse*: the signature
lines are matched against the pinned witness keys and the signature checked over
the exact note text before the checkpoint body is parsed (SPEC §12.5 step 2).  A
pinned key is either a PEM public key (its name is then the checkpoint's origin)
or a verifier key string ``<name>+<hex key hash>+<base64(0x01 || key)>`` (the
form Go's ``golang.org/x/mod/sumdb/note`` and transparency-dev tools use), which
also pins the name.  Unknown signatures are ignored, so a log can rotate keys and
be cosigned.

Pure: no network, no clock.  Signing lives in the witness.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from ._files import read_named_file
from ._settings import refuse_string
from .errors import InvalidKey, InvalidReceipt, LogInconsistent, NoteSignatureError, ProofError
from .keys import TrustRoot, load_public_key, raw_public_bytes, refuse_small_order
from .merkle import EMPTY_ROOT, HASH_SIZE, verify_consistency
from .records import is_uint

__all__ = [
    "ED25519_SIGNATURE_TYPE",
    "MAX_NOTE_BYTES",
    "MAX_NOTE_SIGNATURES",
    "Checkpoint",
    "NoteSignature",
    "SignedNote",
    "VerifiedCheckpoint",
    "WitnessKey",
    "check_consistent",
    "load_witness_keys",
    "note_key_hash",
    "refuse_producer_key_as_witness_key",
    "verify_checkpoint",
]

#: C2SP signed-note signature type byte for Ed25519.
ED25519_SIGNATURE_TYPE = 0x01
#: A note longer than this is refused (signed-note: verifiers SHOULD bound the size).
MAX_NOTE_BYTES = 1 << 20
#: Signature lines accepted per note (signed-note: at least 16 MUST be accepted).
MAX_NOTE_SIGNATURES = 64

#: Keys (``name+hash``) named in a failure message, each list, before the rest are
#: only counted.
_KEYS_SHOWN = 3
#: Characters of one key name shown in a failure message.
_NAME_CHARS = 64

_SIG_PREFIX = "\u2014 "  # em dash, space
_HEX8 = re.compile(r"[0-9a-f]{8}\Z")
_UINT64_MAX = 2**64 - 1


def _bad_name(name: str) -> bool:
    # signed-note: key names are non-empty and contain no Unicode space and no '+'.
    # A name is written in the note, which is UTF-8 without control characters
    # other than line feed: a name no note can carry is no name either.
    return not name or "+" in name or any(
        c.isspace() or c < " " or "\ud800" <= c <= "\udfff" for c in name
    )


def strict_b64(text: str, what: str) -> bytes:
    """The bytes of *text*, canonical base64 (SPEC §1.3).

    Raises:
        InvalidReceipt: *text* is not standard base64, or not its canonical form.
    """
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as e:
        raise InvalidReceipt(f"{what}: not valid standard base64") from e
    if base64.b64encode(raw).decode("ascii") != text:
        raise InvalidReceipt(f"{what}: base64 is not in canonical (padded) form")
    return raw


def note_key_hash(name: str, public_key: Ed25519PublicKey) -> bytes:
    """Return the 4-byte signed-note key hash of an Ed25519 key named *name*:
    ``SHA-256(name || 0x0A || 0x01 || 32-byte public key)[:4]``."""
    data = name.encode("utf-8") + b"\n" + bytes([ED25519_SIGNATURE_TYPE])
    return hashlib.sha256(data + raw_public_bytes(public_key)).digest()[:4]


@dataclass(frozen=True)
class NoteSignature:
    """One signature line of a signed note: key name, key hash, signature bytes."""

    name: str
    key_hash: bytes
    signature: bytes

    def to_line(self) -> str:
        """Return the signature line, without its line feed."""
        blob = base64.b64encode(self.key_hash + self.signature).decode("ascii")
        return f"{_SIG_PREFIX}{self.name} {blob}"


@dataclass(frozen=True)
class SignedNote:
    """A C2SP signed note: the signed text (ending in a line feed) and its signatures."""

    text: str
    signatures: tuple[NoteSignature, ...]

    def to_bytes(self) -> bytes:
        """Return the note's UTF-8 bytes: text, a blank line, the signature lines."""
        lines = "".join(s.to_line() + "\n" for s in self.signatures)
        return (self.text + "\n" + lines).encode("utf-8")

    @classmethod
    def from_bytes(cls, data: bytes | str) -> SignedNote:
        """Parse a signed note strictly (C2SP signed-note "Format").

        Raises:
            InvalidReceipt: too long, not UTF-8, a control character other than line
                feed, no blank line before the signatures, or a malformed signature line.
        """
        try:
            raw = data.encode("utf-8") if isinstance(data, str) else bytes(data)
        except UnicodeEncodeError as e:
            raise InvalidReceipt(f"signed note: not valid UTF-8 (character {e.start})") from e
        if len(raw) > MAX_NOTE_BYTES:
            raise InvalidReceipt(f"signed note: longer than {MAX_NOTE_BYTES} bytes")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise InvalidReceipt(f"signed note: not valid UTF-8 (byte {e.start})") from e
        for i, ch in enumerate(text):
            if ch < " " and ch != "\n":
                raise InvalidReceipt(
                    f"signed note: control character U+{ord(ch):04X} at offset {i}"
                )
        if not text.endswith("\n"):
            raise InvalidReceipt("signed note: must end with a line feed")
        split = text.rfind("\n\n")
        if split < 0:
            raise InvalidReceipt("signed note: no blank line between the text and its signatures")
        body, sig_text = text[: split + 1], text[split + 2 :]
        sig_lines = sig_text.split("\n")[:-1]
        if not sig_lines:
            raise InvalidReceipt("signed note: has no signature lines")
        if len(sig_lines) > MAX_NOTE_SIGNATURES:
            raise InvalidReceipt(
                f"signed note: more than {MAX_NOTE_SIGNATURES} signature lines"
            )
        sigs = []
        for n, line in enumerate(sig_lines, 1):
            where = f"signed note: signature line {n}"
            if not line.startswith(_SIG_PREFIX):
                raise InvalidReceipt(f"{where}: must start with an em dash and a space")
            name, sep, blob = line[len(_SIG_PREFIX) :].partition(" ")
            if not sep or _bad_name(name) or " " in blob:
                raise InvalidReceipt(f"{where}: must be '\u2014 <key name> <base64 signature>'")
            decoded = strict_b64(blob, where)
            if len(decoded) < 5:
                raise InvalidReceipt(f"{where}: signature is shorter than its 4-byte key hash")
            sigs.append(NoteSignature(name, decoded[:4], decoded[4:]))
        return cls(body, tuple(sigs))


@dataclass(frozen=True)
class WitnessKey:
    """A pinned witness public key (Ed25519), optionally with its pinned key name.

    With ``name`` unset the key signs under the checkpoint's origin, which is then
    taken from the signature line and must equal the origin (SPEC §12.5 step 2).

    Raises:
        ValueError: *name* is not a valid key name.
        InvalidKey: *public_key* is of small order (SPEC §6.1, §12.4), named by
            *source*.
    """

    public_key: Ed25519PublicKey
    name: str | None = None
    source: str = "witness key"

    def __post_init__(self) -> None:
        # SPEC §6.1: with such a key, checkpoints nobody signed verify.
        refuse_small_order(self.public_key, self.source)
        if self.name is not None and _bad_name(self.name):
            raise ValueError(
                f"invalid witness key name {self.name!r} (no spaces, '+' or control "
                "characters)")

    def __reduce__(self) -> tuple[Any, ...]:
        # As TrustedKey's: the raw key bytes, as cryptography's objects cannot be pickled.
        return (_witness_key, (raw_public_bytes(self.public_key), self.name, self.source))

    def key_hash(self, name: str | None = None) -> bytes:
        """The signed-note key hash of this key under *name* (default: its own name).

        Raises:
            ValueError: no name given and the key has none.
        """
        use = name if name is not None else self.name
        if use is None:
            raise ValueError("a key hash needs a key name")
        return note_key_hash(use, self.public_key)

    def vkey(self, name: str | None = None) -> str:
        """Return the verifier key string ``<name>+<hex key hash>+<base64(0x01 || key)>``.

        Raises:
            ValueError: no name given and the key has none.
        """
        use = name if name is not None else self.name
        if use is None:
            raise ValueError("a verifier key string needs a key name")
        if _bad_name(use):
            raise ValueError(f"invalid key name {use!r}")
        blob = base64.b64encode(bytes([ED25519_SIGNATURE_TYPE]) + raw_public_bytes(self.public_key))
        return f"{use}+{self.key_hash(use).hex()}+{blob.decode('ascii')}"

    def public_pem(self) -> bytes:
        """SubjectPublicKeyInfo PEM of the key."""
        return self.public_key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def verify(self, signature: bytes, message: bytes) -> bool:
        """True when *signature* is a valid Ed25519 signature of *message* by this key."""
        try:
            self.public_key.verify(signature, message)
        except InvalidSignature:
            return False
        return True

    @classmethod
    def from_pem(
        cls, pem: bytes, name: str | None = None, source: str = "witness key"
    ) -> WitnessKey:
        """Pin an SPKI PEM Ed25519 public key.

        Raises:
            InvalidKey: not PEM, or not Ed25519.
        """
        return cls(load_public_key(pem, source), name, source)

    @classmethod
    def from_vkey(cls, text: str, source: str = "witness key") -> WitnessKey:
        """Pin a key given as a verifier key string (pins its name too).

        Raises:
            InvalidKey: malformed string, a byte-order mark in it, not an Ed25519
                key, a key of small order (SPEC §6.1), or a key hash that does not
                match the name and key.
        """
        if "\ufeff" in text:
            # Refused, as in a PEM key file: a BOM is no part of the key, and kept it
            # read as part of the name, whose key hash then did not match.
            raise InvalidKey(f"{source}: a byte-order mark (U+FEFF) in the verifier key; "
                             "save it as plain text without one")
        parts = text.strip().split("+", 2)  # base64 may itself contain '+'
        if len(parts) != 3 or _bad_name(parts[0]) or not _HEX8.match(parts[1]):
            raise InvalidKey(f"{source}: not a verifier key '<name>+<8 hex>+<base64 key>'")
        try:
            blob = base64.b64decode(parts[2], validate=True)
        except (binascii.Error, ValueError) as e:
            raise InvalidKey(f"{source}: verifier key is not valid base64") from e
        if len(blob) != 33 or blob[0] != ED25519_SIGNATURE_TYPE:
            raise InvalidKey(f"{source}: verifier key is not an Ed25519 (type 0x01) key")
        try:
            key = Ed25519PublicKey.from_public_bytes(blob[1:])
        except ValueError as e:
            raise InvalidKey(f"{source}: verifier key holds no valid Ed25519 key") from e
        pinned = cls(key, parts[0], source)  # refuses a key of small order
        if pinned.key_hash().hex() != parts[1]:
            raise InvalidKey(f"{source}: verifier key hash does not match its name and key")
        return pinned

    @classmethod
    def load(cls, spec: str) -> WitnessKey:
        """Pin a key from a PEM file path, or from a verifier key string.

        Raises:
            InvalidKey: the file cannot be read or holds no Ed25519 key, or the
                string is not a valid verifier key.
        """
        if not os.path.exists(spec) and "+" in spec:
            # Name the string: several --witness-key flags may be given.  A public key
            # is no secret; a long string is cut.
            shown = spec if len(spec) <= 120 else spec[:120] + "..."
            return cls.from_vkey(spec, f"verifier key {shown!r}")
        try:
            data, _ = read_named_file(spec)
        except OSError as e:
            raise InvalidKey(f"{spec}: cannot read witness key ({e.strerror})") from e
        if b"-----BEGIN" not in data and b"+" in data:
            return cls.from_vkey(data.decode("utf-8", "replace"), spec)
        return cls.from_pem(data, None, spec)


def _witness_key(raw: bytes, name: str | None, source: str) -> WitnessKey:
    """A :class:`WitnessKey` rebuilt from its pickled form."""
    return WitnessKey(Ed25519PublicKey.from_public_bytes(raw), name, source)


def load_witness_keys(specs: Sequence[str]) -> tuple[WitnessKey, ...]:
    """Pin each key in *specs* (PEM file paths or verifier key strings).

    Raises:
        TypeError: *specs* is a ``str`` (a list of keys is expected).
        InvalidKey: a key cannot be loaded.
    """
    refuse_string(specs, "witness keys", "specs", "PEM file paths or verifier key strings")
    return tuple(WitnessKey.load(spec) for spec in specs)


def refuse_producer_key_as_witness_key(
    trust: TrustRoot, witness_keys: Sequence[WitnessKey]
) -> None:
    """Refuse a witness key that is also one of *trust*'s producer keys: whoever signs
    the bundles would then sign the checkpoints that witness them, and a receipt would
    prove nothing the bundle's own signature does not (SPEC §12.1).

    Raises:
        ValueError: a witness key is one of *trust*'s keys (the message names both).
    """
    producers = {raw_public_bytes(k.key): k for k in trust.keys}
    for witness in witness_keys:
        producer = producers.get(raw_public_bytes(witness.public_key))
        if producer is not None:
            raise ValueError(
                f"{witness.source}: the witness key is also a trusted producer key "
                f"({producer.source}): a receipt it signs proves nothing the bundle's "
                "own signature does not; pin the witness's own key")


@dataclass(frozen=True)
class Checkpoint:
    """A C2SP tlog-checkpoint body: origin, tree size, root hash, extension lines."""

    origin: str
    size: int
    root: bytes
    extensions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.origin or "\n" in self.origin:
            raise ValueError("checkpoint origin must be one non-empty line")
        if not 0 <= self.size <= _UINT64_MAX:
            raise ValueError("checkpoint size must fit in 64 bits")
        if len(self.root) != HASH_SIZE:
            raise ValueError("checkpoint root must be 32 bytes")
        if any(not e or "\n" in e for e in self.extensions):
            raise ValueError("checkpoint extension lines must be non-empty single lines")

    def to_text(self) -> str:
        """Return the note text: origin, size, base64 root, extensions, each + line feed."""
        lines = [self.origin, str(self.size), base64.b64encode(self.root).decode("ascii")]
        return "".join(line + "\n" for line in (*lines, *self.extensions))

    @classmethod
    def from_text(cls, text: str) -> Checkpoint:
        """Parse a checkpoint body strictly (C2SP tlog-checkpoint "Note text").

        Raises:
            InvalidReceipt: fewer than three lines, an empty line, a size that is not a
                canonical decimal, or a root that is not 32 bytes of canonical base64
                (the empty tree must carry the empty-tree root).
        """
        if not text.endswith("\n"):
            raise InvalidReceipt("checkpoint: text must end with a line feed")
        lines = text[:-1].split("\n")
        if len(lines) < 3:
            raise InvalidReceipt("checkpoint: needs origin, tree size and root hash lines")
        if any(not line for line in lines):
            raise InvalidReceipt("checkpoint: lines must not be empty")
        origin, size_text, root_text = lines[0], lines[1], lines[2]
        if not is_uint(size_text):
            raise InvalidReceipt(
                f"checkpoint: tree size {size_text[:40]!r} is not a decimal without leading "
                "zeros below 2^64"
            )
        root = strict_b64(root_text, "checkpoint: root hash")
        if len(root) != HASH_SIZE:
            raise InvalidReceipt(f"checkpoint: root hash is {len(root)} bytes, not {HASH_SIZE}")
        size = int(size_text)
        if size == 0 and root != EMPTY_ROOT:
            raise InvalidReceipt("checkpoint: an empty tree must have the empty-tree root")
        return cls(origin, size, root, tuple(lines[3:]))


@dataclass(frozen=True)
class VerifiedCheckpoint:
    """A checkpoint whose note verified under a pinned witness key.

    ``note`` holds the exact signed-note bytes, ``key_name`` the name the key signed
    under (always equal to the origin), ``key`` the first pinned key that signed it
    under that name, and ``signers`` every one that did (a note may carry several:
    rotation, cosigning; SPEC §12.4), ``key`` among them.
    """

    checkpoint: Checkpoint
    note: bytes
    key: WitnessKey
    key_name: str
    signers: tuple[WitnessKey, ...] = ()

    def shares_a_signer(self, other: VerifiedCheckpoint) -> bool:
        """Whether one pinned key signed both this checkpoint and *other*: only then
        are the two, if they cannot both be honest, proof against that key's log
        (SPEC §12.7).  Two keys' checkpoints under one origin are proof against
        neither."""
        mine = {raw_public_bytes(k.public_key) for k in self.signers or (self.key,)}
        return any(raw_public_bytes(k.public_key) in mine
                   for k in other.signers or (other.key,))

    def pinned_note(self) -> bytes:
        """The note with only the signature lines of the pinned keys that signed it
        (:attr:`signers`), in their order: what is worth keeping of it.  The lines of
        other keys are ignored when verifying (C2SP signed-note), and up to ~2 MB
        of them, added on the way by anyone, would be kept otherwise."""
        note = SignedNote.from_bytes(self.note)
        hashes = {key.key_hash(self.key_name) for key in self.signers or (self.key,)}
        kept = tuple(sig for sig in note.signatures
                     if sig.name == self.key_name and sig.key_hash in hashes)
        return SignedNote(note.text, kept).to_bytes()

    @property
    def origin(self) -> str:
        """The log's origin line."""
        return self.checkpoint.origin

    @property
    def size(self) -> int:
        """The tree size."""
        return self.checkpoint.size

    @property
    def root(self) -> bytes:
        """The root hash at that size."""
        return self.checkpoint.root


def _key_list(keys: Sequence[tuple[str, bytes]]) -> str:
    """``name+hash`` (the 4-byte key hash in 8 hex digits, as a verifier key string
    gives it) of the first few distinct *keys*, sorted, each name cut to
    `_NAME_CHARS`, then how many more."""
    unique = sorted(set(keys))
    shown = [
        f"{name if len(name) <= _NAME_CHARS else name[:_NAME_CHARS] + '...'}+{key_hash.hex()}"
        for name, key_hash in unique[:_KEYS_SHOWN]
    ]
    more = len(unique) - len(shown)
    return (", ".join(shown) or "none") + (f" and {more} more" if more else "")


def verify_checkpoint(
    data: bytes | str, keys: Sequence[WitnessKey], *, origin: str | None = None
) -> VerifiedCheckpoint:
    """Verify a signed checkpoint with pinned witness keys, then parse it
    (SPEC §12.5 step 2).

    A signature counts when its key name and key hash match a pinned key (for a key
    pinned without a name, the hash is computed under the line's name).  A matching
    signature that fails to verify rejects the whole note.  The verifying key's
    name must equal the checkpoint's origin, and *origin*, when given, pins it.

    Raises:
        InvalidReceipt: the note or checkpoint is malformed.
        NoteSignatureError: no pinned key signed it, a pinned key's signature is
            invalid, or the origin is not the signing key's name (or not *origin*).
    """
    note = SignedNote.from_bytes(data)
    message = note.text.encode("utf-8")
    signed: list[tuple[WitnessKey, str]] = []
    for sig in note.signatures:
        for key in keys:
            name = key.name if key.name is not None else sig.name
            if sig.name != name or sig.key_hash != key.key_hash(name):
                continue
            if not key.verify(sig.signature, message):
                raise NoteSignatureError(
                    f"checkpoint signature by pinned witness key {name!r} does not verify "
                    "(altered checkpoint)"
                )
            signed.append((key, name))
    if not signed:
        # Names and key hashes as the signature lines give them: two keys of one name
        # (a rotated witness key, another witness under the same origin) differ only
        # in their hashes.  A key pinned without a name is shown under each line's.
        signed_by = [(sig.name, sig.key_hash) for sig in note.signatures]
        pinned = [(name, key.key_hash(name))
                  for key in keys
                  for name in ([key.name] if key.name is not None
                               else sorted({sig.name for sig in note.signatures}))]
        # A PEM key's name above is borrowed from the note: without this, another
        # log's key read as a rotated key of the log that signed (one name, two hashes).
        unnamed = ("; a PEM key names no log, so it is shown under the note's names"
                   if any(key.name is None for key in keys) else "")
        raise NoteSignatureError(
            f"checkpoint not signed by a pinned witness key (signed by: {_key_list(signed_by)}; "
            f"pinned: {_key_list(pinned)}{unnamed})"
        )
    # Only now is the text trusted enough to parse (signed-note: verify, then parse).
    checkpoint = Checkpoint.from_text(note.text)
    for key, name in signed:
        if name == checkpoint.origin:
            if origin is not None and checkpoint.origin != origin:
                raise NoteSignatureError(
                    f"checkpoint origin {checkpoint.origin!r} is not the pinned witness "
                    f"origin {origin!r}"
                )
            signers = tuple(k for k, n in signed if n == checkpoint.origin)
            return VerifiedCheckpoint(checkpoint, note.to_bytes(), key, name, signers)
    raise NoteSignatureError(
        f"checkpoint origin {checkpoint.origin!r} is not the name of the pinned witness key "
        f"that signed it ({signed[0][1]!r})"
    )


def check_consistent(old: Checkpoint, new: Checkpoint, proof: Sequence[bytes]) -> None:
    """Check that *new* extends *old*, two verified checkpoints of one log
    (SPEC §12.7): no rollback, no second root for one size, and a valid RFC 9162
    consistency proof between them.  *proof* is ignored when the sizes are equal or
    *old* is the empty tree.

    Raises:
        LogInconsistent: a different origin, a rollback, or a fork (same size with
            another root, or a consistency proof that fails).
    """
    if old.origin != new.origin:
        raise LogInconsistent(
            f"checkpoints come from different logs ({old.origin!r}, {new.origin!r})"
        )
    if new.size < old.size:
        raise LogInconsistent(
            f"rollback: the log now shows tree size {new.size}, smaller than the size "
            f"{old.size} it signed before"
        )
    if new.size == old.size:
        if new.root != old.root:
            raise LogInconsistent(
                f"fork: two checkpoints of tree size {new.size} with different roots"
            )
        return
    if old.size == 0:
        return  # every tree extends the empty tree
    try:
        verify_consistency(old.size, new.size, proof, old.root, new.root)
    except ProofError as e:
        raise LogInconsistent(
            f"fork: the tree of size {new.size} does not extend the tree of size "
            f"{old.size} ({e})"
        ) from e
