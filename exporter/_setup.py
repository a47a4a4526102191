"""What the SDK exporter and the OTLP receiver resolve the same way at start-up."""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
import stat
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from spanproof.verifier._files import make_directories
from spanproof.verifier.checkpoint import WitnessKey, refuse_producer_key_as_witness_key
from spanproof.verifier.errors import InvalidKey
from spanproof.verifier.keys import TrustedKey, TrustRoot

from .config import ENV_PREFIX, ExporterConfig
from .disclosure import AttributeMatcher, redaction_matcher
from .keys import PRIVATE_KEY_NAME, SigningKey, load_or_create
from .selection import AttributeSelector, Selector

__all__ = ["ProducerSetup", "check_directory", "resolve_setup", "writable_directory"]


@dataclass(frozen=True)
class ProducerSetup:
    """A producer's resolved settings, signing key, selector, redaction and witness keys."""

    config: ExporterConfig
    signer: SigningKey
    selector: Selector
    redact: AttributeMatcher | None
    witness_keys: tuple[WitnessKey, ...]


_OUTPUT_DIR_SETTING = f"output_dir ({ENV_PREFIX}OUTPUT_DIR)"


def writable_directory(path: str, setting: str = _OUTPUT_DIR_SETTING) -> None:
    """Create the directory *path* of the *setting* (the output directory by default)
    if missing (with its parents, mode 0755 whatever the umask: `make_directories`)
    and check that it can be written, at start-up: found later, every bundle (or
    journal entry) would fail to be written and be lost at shutdown, while the
    application runs on and exits 0.  Nothing is written to it.

    Raises:
        ValueError: *path* cannot be created, is not a directory or cannot be written.
    """
    problem = None
    try:
        make_directories(path)
    except FileExistsError:  # exists, and is not a directory (or a link to one)
        problem = "it exists and is not a directory"
    except OSError as e:
        problem = f"cannot create it: {e.strerror or e}"
    else:
        if not os.access(path, os.W_OK | os.X_OK):
            problem = "cannot write to it"
    _refuse_directory(path, setting, problem)


def check_directory(path: str, setting: str = _OUTPUT_DIR_SETTING) -> None:
    """Check, creating nothing, that `writable_directory` could create (if missing)
    and write the directory *path*: a constructor checks every argument before it
    creates any directory or key, so that one it refuses leaves the file system as
    it was.

    Raises:
        ValueError: as `writable_directory` would, with the same message.
    """
    _refuse_directory(path, setting, _directory_problem(os.path.abspath(path)))


def _directory_problem(path: str) -> str | None:
    """What `writable_directory` would find wrong with the absolute *path*, found by
    looking at it and at its nearest existing ancestor, the one directory that
    ``makedirs`` would create into (None: nothing)."""
    probe, missing = path, False
    while True:
        try:
            st = os.stat(probe)
        except FileNotFoundError:
            if os.path.islink(probe):  # a dangling link: makedirs finds it in the way
                return "it exists and is not a directory"
            parent = os.path.dirname(probe)
            if parent == probe:
                return f"cannot create it: {os.strerror(errno.ENOENT)}"
            probe, missing = parent, True
            continue
        except OSError as e:  # ENOTDIR: a file on the way; EACCES: a closed directory
            return f"cannot create it: {e.strerror or e}"
        break
    if not stat.S_ISDIR(st.st_mode):
        return (f"cannot create it: {os.strerror(errno.ENOTDIR)}" if missing
                else "it exists and is not a directory")
    if not os.access(probe, os.W_OK | os.X_OK):
        return f"cannot create it: {os.strerror(errno.EACCES)}" if missing else "cannot write to it"
    return None


def _refuse_directory(path: str, setting: str, problem: str | None) -> None:
    if problem is not None:
        raise ValueError(f"spanproof exporter setting {setting} must be a directory "
                         f"spanproof can create and write to, got {path!r} ({problem})")


@contextlib.contextmanager
def _naming(field_name: str) -> Iterator[None]:
    """Name the setting whose key file failed to load, as a malformed setting's
    error does (the path alone does not say which setting, or variable, gave it)."""
    try:
        yield
    except InvalidKey as e:
        raise InvalidKey(f"spanproof exporter setting {field_name} "
                         f"({ENV_PREFIX}{field_name.upper()}): {e}") from e


def resolve_setup(
    output_dir: str | os.PathLike[str] | None,
    key_file: str | os.PathLike[str] | None,
    *,
    signing_key: SigningKey | None,
    selector: Selector | None,
    environ: Mapping[str, str] | None = None,
    check: Callable[[ExporterConfig], None] | None = None,
    **settings: Any,
) -> ProducerSetup:
    """Resolve *settings* (``ExporterConfig`` field names; None means "not given")
    against the ``OTEL_EXPORTER_SPANPROOF_*`` variables of *environ* (default
    :data:`os.environ`) and load the keys.

    ``output_dir`` is made absolute and created (with its parents) when missing.
    Without *signing_key* the configured key file is loaded, or a key is generated
    once under ``<output_dir>/keys``.

    Every argument is checked before anything is created: the settings, that the
    output directory could be created and written, the key files, then *check*
    (the caller's own arguments, given the resolved settings; it raises to refuse
    them and creates nothing).  A refused setup leaves the file system as it was.

    Raises:
        TypeError: a ``str`` given for a list setting, or a *signing_key* that is
            not a :class:`~spanproof.exporter.keys.SigningKey`.
        ValueError: a malformed argument or a malformed variable that is not a
            tuning setting (naming it; see :mod:`~spanproof.exporter.config`), an
            output directory that cannot be created or written, or a witness key
            that is the signing key's public half.
        InvalidKey: a key file cannot be used.
        OSError: the key directory cannot be created.
        Exception: what *check* raises.
    """
    _refuse_other_than_a_signing_key(signing_key)
    config = ExporterConfig.from_env(environ=environ, output_dir=output_dir,
                                     key_file=key_file, **settings)
    output = os.path.abspath(config.output_dir)
    config = dataclasses.replace(config, output_dir=output)
    check_directory(output)
    signed_by = "the signing_key argument"
    if signing_key is None and config.key_file is not None:
        with _naming("key_file"):
            signing_key = SigningKey.load(config.key_file)
        signed_by = f"the signing key {os.fspath(config.key_file)}"
    witness_keys: tuple[WitnessKey, ...] = ()
    if config.witness_key is not None:
        with _naming("witness_key"):
            witness_keys = (WitnessKey.load(config.witness_key),)
    if signing_key is not None:
        _refuse_signing_key_as_witness_key(signing_key, signed_by, witness_keys)
    if check is not None:
        check(config)
    # Checked: now create.  (An existing signing.key is read here, not above: a
    # default key directory that holds one is in an output directory that exists,
    # so refusing it leaves nothing new behind.)
    writable_directory(output)
    if signing_key is None:
        key_directory = os.path.join(output, "keys")
        signing_key = load_or_create(key_directory)
        _refuse_signing_key_as_witness_key(
            signing_key, f"the signing key {os.path.join(key_directory, PRIVATE_KEY_NAME)}",
            witness_keys)
    return ProducerSetup(
        config=config,
        signer=signing_key,
        selector=selector or AttributeSelector.from_config(config),
        redact=redaction_matcher(config.redact_attributes),
        witness_keys=witness_keys,
    )


def _refuse_other_than_a_signing_key(signing_key: object) -> None:
    """Refuse a *signing_key* that is not a spanproof SigningKey (or None): taken, it
    failed every seal (``sign_envelope`` missing), and no bundle was ever written.

    Raises:
        TypeError: *signing_key* is of another type; the message says what to give.
    """
    if signing_key is None or isinstance(signing_key, SigningKey):
        return
    if isinstance(signing_key, Ed25519PrivateKey):
        how = "wrap the key: signing_key=SigningKey(key)"
    elif isinstance(signing_key, (str, bytes, os.PathLike)):
        how = "give a key file's path as key_file, or signing_key=SigningKey.load(path)"
    else:
        how = ("signing_key=SigningKey(key) wraps a cryptography Ed25519PrivateKey, "
               "SigningKey.load(path) reads a key file")
    raise TypeError(
        f"spanproof exporter setting signing_key must be a SigningKey "
        f"(spanproof.exporter.keys.SigningKey), not {type(signing_key).__name__}: {how}")


def _refuse_signing_key_as_witness_key(
    signing_key: SigningKey, signed_by: str, witness_keys: tuple[WitnessKey, ...]
) -> None:
    """Refuse a witness key that is the public half of *signing_key* (named by
    *signed_by*): every genuine receipt would fail to verify with it, and each
    submission would be retired as failed (SPEC §12.1).

    Raises:
        ValueError: it is; the message names the setting and both keys.
    """
    producer = TrustedKey.from_public_key(signing_key.private_key.public_key(), signed_by)
    try:
        refuse_producer_key_as_witness_key(TrustRoot((producer,)), witness_keys)
    except ValueError as e:
        raise ValueError(f"spanproof exporter setting witness_key "
                         f"({ENV_PREFIX}WITNESS_KEY): {e}") from None
