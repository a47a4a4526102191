"""The witness's checkpoint key: loading, generating, and signing C2SP notes (SPEC §12.4).

The key is an Ed25519 private key in a PKCS#8 PEM file.  Its signed-note name is
the log's origin, so the verifier key string ``<origin>+<key hash>+<key>`` names
both; a key generated for an origin records it in ``<key>.origin``, so that serving
the key without naming the origin again does not start another origin's log.
Signing is deterministic (Ed25519), with no clock or randomness.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import logging
import os
import stat

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from spanproof.verifier._files import (
    fsync_directory,
    link_no_replace,
    locked_directory,
    open_regular,
    remove_stopped_writes,
    unlink_quietly,
    write_atomic,
    write_temp,
)
from spanproof.verifier.checkpoint import Checkpoint, NoteSignature, SignedNote, WitnessKey
from spanproof.verifier.errors import TransportError
from spanproof.verifier.keys import load_private_key

from ._lock import Held, NotLocked, lock_beside

__all__ = [
    "CheckpointSigner",
    "default_origin",
    "earlier_checkpoint_paths",
    "generate_key_file",
    "hold_key",
    "origin_path",
    "release_key",
    "signed_checkpoint_path",
]

_logger = logging.getLogger(__name__)


def origin_path(key_path: str | os.PathLike[str]) -> str:
    """Where the origin a key was generated for is recorded: ``<key>.origin``."""
    return os.fspath(key_path) + ".origin"


def _key_state(key_path: str | os.PathLike[str], state_dir: str | None,
               key_id: str | None) -> str:
    """Where ``witness serve`` keeps the key's lock and latest checkpoint, less the
    ``.lock`` and ``.checkpoint``: ``<key>`` beside the key file, symbolic links
    followed, or ``witness-<key id>`` in *state_dir* (named for the key, not its
    file name: two keys both named ``witness.key``, or a key read from a pipe, would
    share or change names)."""
    if state_dir is None:
        return os.path.realpath(key_path)
    if key_id is None:
        raise ValueError("a state directory needs the key's id")
    return os.path.join(os.path.realpath(state_dir), f"witness-{key_id}")


def signed_checkpoint_path(key_path: str | os.PathLike[str], state_dir: str | None = None,
                           key_id: str | None = None) -> str:
    """Where ``witness serve`` keeps the latest checkpoint the key signed (SPEC §12.8
    step 5): ``<key>.checkpoint`` beside the key file, symbolic links followed, or
    ``witness-<key id>.checkpoint`` in *state_dir* (a key on a read-only mount; see
    :attr:`CheckpointSigner.key_id`).  Beside a link, a key served through a second
    name found no checkpoint there and took a new database for its log."""
    return _key_state(key_path, state_dir, key_id) + ".checkpoint"


def earlier_checkpoint_paths(key_path: str | os.PathLike[str], state_dir: str | None = None,
                             key_id: str | None = None) -> list[str]:
    """Where earlier runs may have kept the key's latest checkpoint, other than
    :func:`signed_checkpoint_path`: beside the key's name as given (before symbolic
    links were followed), and beside the key file (before *state_dir* was used).  A
    database must extend those too, or a start after such a change would take a new
    or older one unrefused."""
    current = signed_checkpoint_path(key_path, state_dir, key_id)
    found: list[str] = []
    for path in (os.path.abspath(os.fspath(key_path)) + ".checkpoint",
                 os.path.realpath(key_path) + ".checkpoint"):
        if path != current and path not in found:
            found.append(path)
    return found


def hold_key(key_path: str | os.PathLike[str], state_dir: str | None = None,
             key_id: str | None = None) -> tuple[list[int], bool]:
    """Lock the key for this process: one process serves a key.  Two locks, both
    ``flock`` without waiting: ``<key>.lock`` beside the key file, symbolic links
    followed (or ``witness-<key id>.lock`` in *state_dir*), under which this process
    alone writes the checkpoint file beside it; and the key file itself, read-only,
    which every ``witness serve`` of the key takes wherever it keeps its state.
    Returns the descriptors (close them to release the locks) and whether the first
    lock is held: a lock that cannot be opened or taken here (a key read from a pipe,
    a read-only directory, a filesystem without such locks) is warned of and left
    out.

    Two ``witness serve`` with one key and two databases each signed its own log
    under the key's origin: two roots for a tree size, a fork of the key's making.

    Raises:
        TransportError: another process holds a lock, or the lock file cannot be
            locked.
    """
    held: list[int] = []
    try:
        try:
            fd, _ = lock_beside(_key_state(key_path, state_dir, key_id), resolve=False)
            held.append(fd)
        except OSError as e:
            if isinstance(e, (Held, NotLocked)):
                raise
            # Nowhere to put the lock (a key read from a pipe, a read-only directory).
            _logger.warning("cannot open %s (%s): another process serving this key would "
                            "not be refused (--state-dir names a writable directory for "
                            "it)", e.filename, e.strerror or e)
        state_locked = bool(held)
        key_lock = _lock_key_file(key_path)
        if key_lock is not None:
            held.append(key_lock)
    except Held as e:
        release_key(held)
        wrapper = (" (or a wrapper of this command locks the key file: have it lock "
                   "another file)" if e.lock == os.fspath(key_path) else "")
        raise TransportError(
            f"{os.fspath(key_path)} is served by another process ({e.lock} is "
            f"locked{wrapper}): a key signs one log, or the checkpoints of the two would "
            "contradict each other") from None
    except NotLocked as e:
        release_key(held)
        raise TransportError(f"{e.filename}: cannot lock the witness key "
                             f"({e.strerror})") from None
    return held, state_locked


def _lock_key_file(key_path: str | os.PathLike[str]) -> int | None:
    """``flock`` the key file itself (read-only, exclusive, without waiting): its
    descriptor, or None where it cannot be opened as a regular file or locked that
    way (a pipe; some network filesystems lock only files open for writing).

    Raises:
        Held: another process holds it.
    """
    try:
        fd = os.open(key_path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            return None
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        os.close(fd)
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise Held(os.fspath(key_path)) from None
        _logger.warning("cannot lock the key file %s (%s): a serve of this key keeping "
                        "its lock elsewhere (another --state-dir) would not be refused",
                        os.fspath(key_path), e.strerror or e)
        return None
    return fd


def release_key(held: list[int]) -> None:
    """Release the locks :func:`hold_key` took (its descriptors *held*)."""
    for fd in held:
        with contextlib.suppress(OSError):
            os.close(fd)


def default_origin(public_raw: bytes) -> str:
    """The origin used when none is configured: ``spanproof-witness/<16 hex>``,
    derived from the public key so that it is stable across restarts."""
    return "spanproof-witness/" + _key_id(public_raw)


def _key_id(public_raw: bytes) -> str:
    """16 hex digits of the SHA-256 of a raw public key."""
    return hashlib.sha256(public_raw).hexdigest()[:16]


class CheckpointSigner:
    """Signs checkpoints of one log (origin) with one Ed25519 key.

    Raises:
        ValueError: *origin* is not a valid signed-note key name (empty, spaces, '+').
    """

    def __init__(self, private_key: Ed25519PrivateKey, origin: str | None = None) -> None:
        raw = private_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self._private_key = private_key
        self.origin = origin if origin is not None else default_origin(raw)
        # Validates the name (no spaces, no '+'): the key name is the origin.
        self.key = WitnessKey(private_key.public_key(), self.origin, "witness key")
        self._key_hash = self.key.key_hash()
        #: 16 hex digits of the SHA-256 of the raw public key: what names the key's
        #: files in a state directory (and its default origin).
        self.key_id = _key_id(raw)

    @classmethod
    def load(cls, path: str | os.PathLike[str], origin: str | None = None) -> CheckpointSigner:
        """Load a PKCS#8 PEM Ed25519 private key; warn when others can read the file.
        Without *origin*, the origin the key was generated for (``<key>.origin``,
        :func:`origin_path`, beside the key file, symbolic links followed), else the
        one derived from the key.

        Raises:
            InvalidKey: unreadable file, not an unencrypted PEM key, or not Ed25519.
            ValueError: *origin* is not a valid key name (spaces or '+'), or not the
                one the key was generated for; ``<key>.origin`` is not a regular file
                or cannot be read.
        """
        private_key = load_private_key(path, "witness key", made_by="spanproof witness keygen")
        recorded = _recorded_origin(path)
        if recorded is not None and origin is not None and origin != recorded:
            raise ValueError(
                f"{path} was generated for origin {recorded!r} "
                f"({origin_path(os.path.realpath(path))}), not "
                f"{origin!r}: a log's origin names it in every checkpoint and verifier "
                "key, so serve it with that origin (or remove that file to choose anew)")
        return cls(private_key, origin if origin is not None else recorded)

    @property
    def vkey(self) -> str:
        """The verifier key string monitors and auditors pin."""
        return self.key.vkey()

    def sign_text(self, text: str) -> bytes:
        """Return the signed note of *text* (which must end in a line feed).

        Raises:
            ValueError: *text* does not end with a line feed.
        """
        if not text.endswith("\n"):
            raise ValueError("note text must end with a line feed")
        sig = self._private_key.sign(text.encode("utf-8"))
        return SignedNote(text, (NoteSignature(self.origin, self._key_hash, sig),)).to_bytes()

    def sign(self, checkpoint: Checkpoint) -> bytes:
        """Return the signed note of *checkpoint*.

        Raises:
            ValueError: the checkpoint belongs to another origin.
        """
        if checkpoint.origin != self.origin:
            raise ValueError(f"checkpoint origin {checkpoint.origin!r} is not {self.origin!r}")
        return self.sign_text(checkpoint.to_text())


def _recorded_origin(path: str | os.PathLike[str]) -> str | None:
    """The origin recorded beside the key at *path*, or None.

    Raises:
        ValueError: the file exists but is not a regular file (a named pipe would
            block the command forever), or cannot be read as one line of UTF-8.
    """
    # Beside the key file itself, where keygen wrote it: a link to the key has none.
    where = origin_path(os.path.realpath(path))
    try:
        with open_regular(where) as f:
            data = f.read(4097)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise ValueError(f"{where}: cannot read the key's origin ({e.strerror})") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{where}: the key's origin is not UTF-8") from None
    origin = text.removesuffix("\n")
    if not origin or "\n" in origin or len(data) > 4096:
        raise ValueError(f"{where}: must hold the key's origin on one line")
    return origin


def generate_key_file(
    path: str | os.PathLike[str], key: Ed25519PrivateKey | None = None,
    origin: str | None = None,
) -> Ed25519PrivateKey:
    """Create a new witness key (or write *key*) at *path* (mode 0600), its public
    key at ``<path>.pub`` and, given *origin*, that origin at ``<path>.origin``;
    refuse to overwrite.

    The key's name is given last: each file is written to a temporary file beside
    it and fsynced, ``<path>.pub`` and ``<path>.origin`` are renamed into place and
    the directory fsynced, and only then is the key linked as *path* (never over a
    file there) and the directory fsynced again.  So a key never exists, not even
    after a crash or a power cut, without the public key and origin it was written
    with; what a crash can leave is temporary files (the key's holds the private
    key) and, without a key, a ``<path>.pub`` or ``<path>.origin`` that belongs to
    no key.  The next call for *path*, refused or not, removes those temporary
    files (``.<name>.<8 hex>.tmp`` of the three names, no other file; the key's,
    left after its link, is a second name of the key's file), and a call that
    writes the key replaces the others (or, without *origin*, removes the
    ``.origin``); loading a key that is not there fails.  On an error, the files
    it placed are removed.  Writers at once take turns (:func:`locked_directory`),
    each writing its temporary files under the lock: one of them writes the key,
    the others get FileExistsError.  On a filesystem without directory locks, no
    temporary file is removed (another writer's may be in progress).

    Raises:
        FileExistsError: *path* exists.
        OSError: a file cannot be written.
    """
    if key is None:
        key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    pub = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    name = os.fspath(path)
    if name.endswith(os.sep):
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), name)
    target = os.path.abspath(name)
    folder = os.path.dirname(target)
    beside = ((target + ".pub", pub),
              (origin_path(target), None if origin is None else origin.encode("utf-8") + b"\n"))
    with contextlib.ExitStack() as stack:
        try:
            locked = stack.enter_context(locked_directory(folder))
        except OSError as e:
            e.filename = name  # not the folder's name: the key cannot be written
            raise
        if locked:  # a refused call too: after a crash past the link, the key exists
            files = (target, *(where for where, _ in beside))
            remove_stopped_writes(folder, {os.path.basename(where) for where in files},
                                  _logger.warning)
        if os.path.lexists(target):
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), name)
        try:
            tmp = write_temp(folder, os.path.basename(target), pem, mode=0o600)
        except OSError as e:
            e.filename = name  # not the temporary file's name: the key cannot be written
            raise
        stack.callback(unlink_quietly, tmp)
        # No key at *path*: a .pub or .origin there belongs to no key (a write
        # stopped before linking it), and is replaced before this key appears.
        placed: list[str] = []
        try:
            for where, data in beside:
                if data is None:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(where)
                else:
                    write_atomic(where, data)
                    placed.append(where)
            link_no_replace(tmp, target)
            fsync_directory(folder)
        except BaseException:
            for where in placed:
                unlink_quietly(where)
            raise
    return key

