"""Producer signing keys: generation, PKCS#8 PEM files, and DSSE signing (SPEC §6)."""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from nacl.signing import SigningKey as _SodiumKey

from spanproof.verifier._files import (
    link_no_replace,
    locked_directory,
    make_directories,
    read_named_file,
    remove_stopped_writes,
    unlink_quietly,
    write_atomic,
    write_temp,
)
from spanproof.verifier.dsse import PAYLOAD_TYPE, Envelope, Signature, pae
from spanproof.verifier.errors import InvalidKey
from spanproof.verifier.keys import key_id, load_private_key, load_public_key

__all__ = ["PRIVATE_KEY_NAME", "PUBLIC_KEY_NAME", "SigningKey"]

_logger = logging.getLogger(__name__)

PRIVATE_KEY_NAME = "signing.key"
PUBLIC_KEY_NAME = "signing.pub"
#: The files a key's writers write in its directory (each through a temporary file).
_KEY_FILES = frozenset({PRIVATE_KEY_NAME, PUBLIC_KEY_NAME})


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
        """Write ``signing.key`` (mode 0600) and ``signing.pub`` into *directory*,
        created (mode 0755 whatever the umask) if missing.

        The private key file is created with mode 0600 from the start (never
        readable by others, not even briefly), and named ``signing.key`` only once
        whole.  Writers take turns under a lock on *directory* (or, where it cannot
        be locked, by a hard link that fails on an existing name): without
        *exist_ok*, of several writers at once exactly one succeeds and only that
        one writes ``signing.pub``; with *exist_ok* both files are replaced.  No hard
        links are needed where directories can be locked.
        Of writers replacing the key at once, each writes ``signing.pub`` only
        while ``signing.key`` is still its own (one at a time), so
        the pair left is one writer's.  Returns both paths.

        Raises:
            FileExistsError: the key file exists and *exist_ok* is false.
            OSError: the directory cannot be created or written.
        """
        return self._write(directory, exist_ok=exist_ok)

    def _write(
        self, directory: str | os.PathLike[str], *, exist_ok: bool,
        drop_stale_public: bool = False,
    ) -> tuple[str, str]:
        """:meth:`write`; with *drop_stale_public*, ``signing.pub`` is removed once
        the private key's temporary file is written, just before it is linked (see
        :func:`load_or_create`): a write that fails before then removes nothing."""
        make_directories(directory)
        folder = os.fspath(directory)
        priv = os.path.join(folder, PRIVATE_KEY_NAME)
        pub = os.path.join(folder, PUBLIC_KEY_NAME)
        # Writers take turns, and write their temporary files only under the lock: a
        # temporary file found under it is one a stopped writer left (the private
        # key's holds a private key), removed here.
        with _key_writers_turn(folder) as locked:
            # A uniquely named private temp file (0600 from creation), then renamed
            # into place, whole.  Holding the lock, no other writer can place a key
            # meanwhile; without it, link() fails if the name exists, so of writers at
            # once exactly one places its key (link_no_replace: even without hard links).
            tmp = write_temp(folder, PRIVATE_KEY_NAME, self.private_pem(), mode=0o600)
            try:
                if drop_stale_public:
                    unlink_quietly(pub)
                if exist_ok:
                    os.replace(tmp, priv)
                elif locked:
                    if os.path.lexists(priv):
                        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), priv)
                    os.replace(tmp, priv)
                else:
                    link_no_replace(tmp, priv)
            finally:
                unlink_quietly(tmp)
            # Where directories cannot be locked, another writer may have replaced
            # signing.key since (--force), and writes its own half: the last private
            # key must not get another writer's public half.
            if read_named_file(priv)[0] == self.private_pem():
                write_atomic(pub, self.public_pem())
        return priv, pub

    def sign_envelope(self, payload: bytes) -> Envelope:
        """Return a DSSE envelope over *payload* (SPEC §5.1) signed by this key."""
        sig = self._sodium.sign(pae(PAYLOAD_TYPE, payload)).signature
        return Envelope(PAYLOAD_TYPE, payload, (Signature(sig, self.keyid),))


@contextlib.contextmanager
def _key_writers_turn(folder: str) -> Iterator[bool]:
    """Hold the lock on the key directory *folder*, under which every writer of
    ``signing.key`` and ``signing.pub`` writes their temporary files; so those
    found there then a stopped writer left (a private key's holds a private key),
    and they are removed.  Gives whether the lock is held: where directories cannot
    be locked, none is removed."""
    with locked_directory(folder) as locked:
        if locked:
            remove_stopped_writes(folder, _KEY_FILES, _logger.warning)
        yield locked


def load_or_create(directory: str | os.PathLike[str]) -> SigningKey:
    """Load ``directory/signing.key``, creating it if absent, and make sure
    ``directory/signing.pub`` holds its public half.

    Of several threads or processes creating the key at once, one key wins and all
    of them return it.  A missing ``signing.pub`` is written from the key.  A
    ``signing.key`` that is a symbolic link to nothing is refused: no key is written
    through it, and nothing in *directory* is changed.

    Raises:
        InvalidKey: ``signing.key`` cannot be used (a dangling symbolic link among
            them), or ``signing.pub`` holds another key than the public half of
            ``signing.key``.
        OSError: the directory cannot be created or written.
    """
    path = os.path.join(directory, PRIVATE_KEY_NAME)
    if _key_missing(path):
        # A signing.pub with no signing.key beside it is the half of no key that
        # will sign here.  Removed before the link, it cannot be taken for the new
        # key's in the moment between the winner's link and its own signing.pub;
        # removed only once the new key is written, it is kept when that fails.
        key = SigningKey.generate()
        try:
            key._write(directory, exist_ok=False, drop_stale_public=True)
        except FileExistsError:
            pass  # another writer won the race: its key is signing.key
        else:
            _logger.warning(
                "generated a signing key at %s; in production provide your own key "
                "(OTEL_EXPORTER_SPANPROOF_KEY_FILE) and distribute %s to verifiers",
                path, os.path.join(directory, PUBLIC_KEY_NAME),
            )
            return key
    key = SigningKey.load(path)
    _check_public_half(key, directory)
    return key


def _key_missing(path: str) -> bool:
    """Whether there is no ``signing.key`` at *path* at all, so that one is created.

    A symbolic link there whose target cannot be reached (missing, a loop of links,
    a directory that cannot be searched) is refused rather than taken for no key:
    it is someone's choice of where the key lives (a mounted secret, say), gone for
    now.  A key generated through it would be written where the link leads, and
    ``signing.pub`` beside it replaced, for a private key its owner never made.

    Raises:
        InvalidKey: *path* is a symbolic link that leads to no file.
    """
    try:
        if not stat.S_ISLNK(os.lstat(path).st_mode):
            return False  # a file, or something else the loading refuses by name
    except OSError:  # none there, or none can be seen: creating it says why not
        return True
    try:
        os.stat(path)
    except OSError as e:
        raise InvalidKey(
            f"{path} is a symbolic link to {os.readlink(path)}, which does not exist "
            f"or cannot be reached ({e.strerror or e}): no signing key is generated "
            f"through a link. Make the file it names available, or remove the link "
            f"to have a key generated in its place"
        ) from None
    return False


def _check_public_half(key: SigningKey, directory: str | os.PathLike[str]) -> None:
    """Write ``signing.pub`` from *key* when it is missing (its writer has not
    written it yet, or never did); refuse one that holds another key.

    Raises:
        InvalidKey: ``signing.pub`` holds something else than *key*'s public half,
            or ``signing.key`` is no longer *key* (replaced meanwhile).
        OSError: ``signing.pub`` cannot be read or written.
    """
    pub = os.path.join(directory, PUBLIC_KEY_NAME)
    priv = os.path.join(directory, PRIVATE_KEY_NAME)
    try:
        found, _ = read_named_file(pub)
    except FileNotFoundError:
        with _key_writers_turn(os.fspath(directory)):
            # No writer is midway now.  One that replaced signing.key since it was
            # loaded (keygen --force) wrote its own half: *key*'s would not match.
            if SigningKey.load(priv).keyid != key.keyid:
                raise InvalidKey(
                    f"{priv} was replaced while it was being loaded (by `spanproof keygen "
                    f"--force`?): start again to sign with the new key") from None
            try:
                found, _ = read_named_file(pub)
            except FileNotFoundError:
                write_atomic(pub, key.public_pem())  # the bytes the key's writer writes
                return
    try:
        matches = key_id(load_public_key(found, pub)) == key.keyid
    except InvalidKey:
        matches = False
    if not matches:
        # Which of the two is right only its owner knows: signing on would make
        # bundles that fail with the published key, replacing it would hide that.
        raise InvalidKey(
            f"{pub} is not the public key of {os.path.join(directory, PRIVATE_KEY_NAME)} "
            f"(key id {key.keyid}): bundles signed with that key would not verify with "
            f"it. Remove {PUBLIC_KEY_NAME} to have it written again from "
            f"{PRIVATE_KEY_NAME}, or put back the {PRIVATE_KEY_NAME} it belongs to"
        )
