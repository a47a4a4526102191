"""A witness key that is the producer's own signing key's public half is refused, as
``spanproof verify`` and ``witness submit`` refuse it: taken, every genuine receipt
failed to verify with it and each submission was retired as failed."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from exporter_support import signing_key

from spanproof.exporter import EvidenceSpanProcessor, SigningKey, SpanproofSpanExporter
from spanproof.exporter.config import ENV_PREFIX
from spanproof.verifier.checkpoint import WitnessKey

SETTING = r"^spanproof exporter setting witness_key \(OTEL_EXPORTER_SPANPROOF_WITNESS_KEY\): "
WHY = (r": the witness key is also a trusted producer key \({signer}\): a receipt it signs "
       r"proves nothing the bundle's own signature does not; pin the witness's own key")


@pytest.mark.parametrize("make", [SpanproofSpanExporter, EvidenceSpanProcessor])
def test_witness_key_that_is_the_key_files_public_half_is_refused(
    tmp_path: Path, make: type,
) -> None:
    key_file, public = signing_key().write(tmp_path)
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=SETTING + re.escape(public) + WHY.format(
            signer=re.escape(f"the signing key {key_file}"))):
        make(out, key_file, witness_key=public)
    assert not out.exists()


@pytest.mark.parametrize("make", [SpanproofSpanExporter, EvidenceSpanProcessor])
def test_witness_key_that_is_the_signing_key_argument_is_refused(
    tmp_path: Path, make: type,
) -> None:
    vkey = WitnessKey(signing_key().private_key.public_key(), "producer.test/log").vkey()
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=SETTING + r"verifier key '.*'" + WHY.format(
            signer="the signing_key argument")):
        make(out, signing_key=signing_key(), witness_key=vkey)
    assert not out.exists()


def test_witness_key_that_is_the_generated_keys_public_half_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    out = tmp_path / "out"
    SpanproofSpanExporter(out).shutdown()  # generates out/keys/signing.key
    public = str(out / "keys" / "signing.pub")
    before = sorted(os.listdir(out / "keys"))
    monkeypatch.setenv(ENV_PREFIX + "WITNESS_KEY", public)
    with pytest.raises(ValueError, match=SETTING + re.escape(public) + WHY.format(
            signer=re.escape(f"the signing key {out / 'keys' / 'signing.key'}"))):
        SpanproofSpanExporter(out)
    assert sorted(os.listdir(out / "keys")) == before


def test_a_witness_key_of_its_own_is_taken(tmp_path: Path) -> None:
    _, public = SigningKey.from_seed(b"\x77" * 32).write(tmp_path)
    SpanproofSpanExporter(tmp_path / "out", signing_key=signing_key(),
                          witness_key=public).shutdown()

