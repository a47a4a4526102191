"""What the SDK exporter and the OTLP receiver resolve the same way at start-up."""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from spanproof.verifier.checkpoint import WitnessKey
from spanproof.verifier.errors import InvalidKey

from .config import ENV_PREFIX, ExporterConfig
from .disclosure import AttributeMatcher, redaction_matcher
from .keys import SigningKey, load_or_create
from .selection import AttributeSelector, Selector

__all__ = ["ProducerSetup", "resolve_setup"]


@dataclass(frozen=True)
class ProducerSetup:
    """A producer's resolved settings, signing key, selector, redaction and witness keys."""

    config: ExporterConfig
    signer: SigningKey
    selector: Selector
    redact: AttributeMatcher | None
    witness_keys: tuple[WitnessKey, ...]


def writable_directory(path: str, setting: str = f"output_dir ({ENV_PREFIX}OUTPUT_DIR)") -> None:
    """Create the directory *path* of the *setting* (the output directory by default)
    if missing and check that it can be written, at start-up: found later, every
    bundle (or journal entry) would fail to be written and be lost at shutdown, while
    the application runs on and exits 0.  Nothing is written to it.

    Raises:
        ValueError: *path* cannot be created, is not a directory or cannot be written.
    """
    problem = None
    try:
        os.makedirs(path, exist_ok=True)
    except FileExistsError:  # exists, and is not a directory (or a link to one)
        problem = "it exists and is not a directory"
    except OSError as e:
        problem = f"cannot create it: {e.strerror or e}"
    else:
        if not os.access(path, os.W_OK | os.X_OK):
            problem = "cannot write to it"
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
    **settings: Any,
) -> ProducerSetup:
    """Resolve *settings* (``ExporterConfig`` field names; None means "not given")
    against the ``OTEL_EXPORTER_SPANPROOF_*`` variables of *environ* (default
    :data:`os.environ`) and load the keys.

    ``output_dir`` is made absolute and created (with its parents) when missing.
    Without *signing_key* the configured key file is loaded, or a key is generated
    once under ``<output_dir>/keys``.

    Raises:
        TypeError: a ``str`` given for a list setting.
        ValueError: a malformed argument or a malformed variable that is not a
            tuning setting (naming it; see :mod:`~spanproof.exporter.config`), or
            an output directory that cannot be created or written.
        InvalidKey: a key file cannot be used.
        OSError: the key directory cannot be created.
    """
    config = ExporterConfig.from_env(environ=environ, output_dir=output_dir,
                                     key_file=key_file, **settings)
    output = os.path.abspath(config.output_dir)
    config = dataclasses.replace(config, output_dir=output)
    writable_directory(output)
    if signing_key is None:
        if config.key_file is not None:
            with _naming("key_file"):
                signing_key = SigningKey.load(config.key_file)
        else:
            signing_key = load_or_create(os.path.join(output, "keys"))
    witness_keys: tuple[WitnessKey, ...] = ()
    if config.witness_key is not None:
        with _naming("witness_key"):
            witness_keys = (WitnessKey.load(config.witness_key),)
    return ProducerSetup(
        config=config,
        signer=signing_key,
        selector=selector or AttributeSelector.from_config(config),
        redact=redaction_matcher(config.redact_attributes),
        witness_keys=witness_keys,
    )
