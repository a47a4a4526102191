"""The receiver's ``signing_key`` and ``witness_key`` arguments, refused when they cannot
work: a key of another type than ``SigningKey`` failed every seal (no bundle was ever
written), and a witness key that is the signing key's public half failed every genuine
receipt (each submission retired as failed)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from receiver_support import SEED

from spanproof.exporter import SigningKey
from spanproof.exporter.receiver import Receiver


@pytest.mark.parametrize("key", [Ed25519PrivateKey.from_private_bytes(SEED), "signing.key",
                                 SEED], ids=["cryptography_key", "path", "seed"])
def test_receiver_signing_key_of_another_type_is_refused(tmp_path: Path, key: object) -> None:
    out = tmp_path / "out"
    with pytest.raises(TypeError, match=r"^spanproof exporter setting signing_key must be a "
                                        r"SigningKey \(spanproof\.exporter\.keys\.SigningKey\)"):
        Receiver(out, signing_key=key)  # type: ignore[arg-type]
    assert not out.exists()


def test_receiver_witness_key_that_is_the_signing_keys_public_half_is_refused(
    tmp_path: Path,
) -> None:
    key = SigningKey.from_seed(SEED)
    key_file, public = key.write(tmp_path)
    out = tmp_path / "out"
    for given in ({"key_file": key_file}, {"signing_key": key}):
        with pytest.raises(ValueError, match=(
            r"^spanproof exporter setting witness_key \(OTEL_EXPORTER_SPANPROOF_WITNESS_KEY\): "
            f"{re.escape(public)}: the witness key is also a trusted producer key "
            r"\(the sign.*; pin the witness's own key"
        )):
            Receiver(out, witness_key=public, **given)  # type: ignore[arg-type]
        assert not out.exists()
