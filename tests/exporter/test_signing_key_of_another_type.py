"""``signing_key=`` takes a spanproof ``SigningKey``.  Anything else (a cryptography
``Ed25519PrivateKey``, a key file's path, its bytes) was taken: every trace then failed
to seal (``'...' object has no attribute 'sign_envelope'``) and no bundle was ever
written; with ``sealing_process`` the constructor raised a bare ``AttributeError``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from exporter_support import SEED, signing_key

from spanproof.exporter import EvidenceSpanProcessor, SpanproofSpanExporter

KEY = Ed25519PrivateKey.from_private_bytes(SEED)
OTHER_TYPES: dict[str, tuple[Any, str]] = {
    "cryptography_key": (KEY, r"not Ed25519PrivateKey: wrap the key: "
                              r"signing_key=SigningKey\(key\)"),
    "path": ("signing.key", r"not str: give a key file's path as key_file"),
    "path_object": (Path("signing.key"), r"not PosixPath: give a key file's path as key_file"),
    "pem_bytes": (signing_key().private_pem(), r"not bytes: give a key file's path"),
    "seed": (bytearray(SEED), r"not bytearray: signing_key=SigningKey\(key\) wraps a "
                              r"cryptography Ed25519PrivateKey"),
}
MAKERS = {
    "exporter": lambda out, key: SpanproofSpanExporter(out, signing_key=key),
    "exporter_sealing_process": lambda out, key: SpanproofSpanExporter(
        out, signing_key=key, sealing_process=True),
    "processor": lambda out, key: EvidenceSpanProcessor(out, signing_key=key),
}


@pytest.mark.parametrize("maker", list(MAKERS))
@pytest.mark.parametrize("given", list(OTHER_TYPES))
def test_signing_key_of_another_type_is_refused(tmp_path: Path, maker: str, given: str) -> None:
    key, how = OTHER_TYPES[given]
    out = tmp_path / "out"
    with pytest.raises(TypeError, match=r"^spanproof exporter setting signing_key must be a "
                                        r"SigningKey \(spanproof\.exporter\.keys\.SigningKey\), "
                       + how):
        MAKERS[maker](out, key)
    assert not out.exists()  # refused before anything was created


def test_a_cryptography_key_wrapped_as_the_message_says_signs(tmp_path: Path) -> None:
    from spanproof.exporter import SigningKey

    exporter = SpanproofSpanExporter(tmp_path, signing_key=SigningKey(KEY))
    try:
        assert exporter._signer.keyid == signing_key().keyid
    finally:
        exporter.shutdown()
