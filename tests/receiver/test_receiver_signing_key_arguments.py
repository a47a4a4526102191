"""The receiver's ``signing_key`` argument, refused when it cannot work: a key of
another type than ``SigningKey`` failed every seal (no bundle was ever written)."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from receiver_support import SEED

from spanproof.exporter.receiver import Receiver


@pytest.mark.parametrize("key", [Ed25519PrivateKey.from_private_bytes(SEED), "signing.key",
                                 SEED], ids=["cryptography_key", "path", "seed"])
def test_receiver_signing_key_of_another_type_is_refused(tmp_path: Path, key: object) -> None:
    out = tmp_path / "out"
    with pytest.raises(TypeError, match=r"^spanproof exporter setting signing_key must be a "
                                        r"SigningKey \(spanproof\.exporter\.keys\.SigningKey\)"):
        Receiver(out, signing_key=key)  # type: ignore[arg-type]
    assert not out.exists()

