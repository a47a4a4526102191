"""Producer signing keys: generation, PKCS#8 PEM files, and DSSE signing (SPEC §6)."""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from nacl.signing import SigningKey as _SodiumKey

from spanproof.verifier.dsse import PAYLOAD_TYPE, Envelope, Signature, pae
from spanproof.verifier.keys import key_id, load_private_key

__all__ = ["PRIVATE_KEY_NAME", "PUBLIC_KEY_NAME", "SigningKey"]

_logger = logging.getLogger(__name__)

PRIVATE_KEY_NAME = "signing.key"
PUBLIC_KEY_NAME = "signing.pub"


@dataclass(frozen=True)
class SigningKey:
    """An Ed25519 private key used to sign bundle statements."""

    private_key: Ed25519PrivateKey

    @functools.cached_property  # every bundle's signature names it
    def keyid(self) -> str:
        """The SPEC §6.1 key id of the public half."""
        return key_id(self.private_key.public_key())

    @functools.cached_property
    def _sodium(self) -> _SodiumKey:
        # libsodium signs in ~26 µs here against ~37 for OpenSSL through
        # cryptography (Ed25519 is deterministic: the same bytes either way); a
        # short trace's bundle spends about half its sealing time in its signature.
        return _SodiumKey(self.seed)

    @property
    def seed(self) -> bytes:
        """The 32-byte seed (the raw private key), for :meth:`from_seed`."""
        return self.private_key.private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )

    @classmethod
    def generate(cls) -> SigningKey:
        """Return a fresh random key."""
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_seed(cls, seed: bytes) -> SigningKey:
        """Return the key with this 32-byte seed (deterministic; for tests and vectors)."""
        return cls(Ed25519PrivateKey.from_private_bytes(seed))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> SigningKey:
        """Load a PKCS#8 PEM Ed25519 private key; warn when others can read the file.

        Raises:
            InvalidKey: unreadable file, not PEM, encrypted, or not Ed25519.
        """
        return cls(load_private_key(path))

    def private_pem(self) -> bytes:
        """PKCS#8 PEM of the private key (unencrypted)."""
        return self.private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def public_pem(self) -> bytes:
        """SubjectPublicKeyInfo PEM of the public key."""
        return self.private_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def write(
        self, directory: str | os.PathLike[str], *, exist_ok: bool = False
    ) -> tuple[str, str]:
        """Write ``signing.key`` (mode 0600) and ``signing.pub`` into *directory*.

        The private key file is created with mode 0600 from the start (never
        readable by others, not even briefly).  Returns both paths.

        Raises:
            FileExistsError: the key file exists and *exist_ok* is false.
        """
        os.makedirs(directory, exist_ok=True)
        priv = os.path.join(directory, PRIVATE_KEY_NAME)
        pub = os.path.join(directory, PUBLIC_KEY_NAME)
        # Write a private temp file (0600 from creation), then link it into place:
        # link() fails if the name exists, so concurrent processes never see a
        # half-written key and never overwrite each other's.
        tmp_priv = priv + f".tmp{os.getpid()}"
        fd = os.open(tmp_priv, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.fchmod(fd, 0o600)
            os.write(fd, self.private_pem())
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            if exist_ok:
                os.replace(tmp_priv, priv)
            else:
                os.link(tmp_priv, priv)
        finally:
            if os.path.exists(tmp_priv):
                os.unlink(tmp_priv)
        tmp = pub + f".tmp{os.getpid()}"
        with open(tmp, "wb") as f:
            f.write(self.public_pem())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, pub)
        return priv, pub

    def sign_envelope(self, payload: bytes) -> Envelope:
        """Return a DSSE envelope over *payload* (SPEC §5.1) signed by this key."""
        sig = self._sodium.sign(pae(PAYLOAD_TYPE, payload)).signature
        return Envelope(PAYLOAD_TYPE, payload, (Signature(sig, self.keyid),))


def load_or_create(directory: str | os.PathLike[str]) -> SigningKey:
    """Load ``directory/signing.key``, creating it (race-free across processes) if absent."""
    path = os.path.join(directory, PRIVATE_KEY_NAME)
    if not os.path.exists(path):
        try:
            SigningKey.generate().write(directory)
            _logger.warning(
                "generated a signing key at %s; in production provide your own key "
                "(OTEL_EXPORTER_SPANPROOF_KEY_FILE) and distribute %s to verifiers",
                path, os.path.join(directory, PUBLIC_KEY_NAME),
            )
        except FileExistsError:
            pass  # another process won the race; load its key
    return SigningKey.load(path)
