"""SPEC §10 cannot rot: the worked example is regenerated and compared with the
committed files and with every value the document quotes."""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import re

import pytest

from spanproof.verifier import TrustRoot, Verdict, check_bundle, pae, verify_bundle
from spanproof.verifier.dsse import PAYLOAD_TYPE

_DIGEST = re.compile(r"sha256:([0-9a-f]{64})")
_HEX64 = re.compile(r"(?<![0-9a-f])[0-9a-f]{64}(?![0-9a-f])")
_HEX128 = re.compile(r"(?<![0-9a-f])[0-9a-f]{128}(?![0-9a-f])")


def _known_hex(example) -> set[str]:  # type: ignore[no-untyped-def]
    """Every 64-hex value the example legitimately produces."""
    digests = [example.genesis, *example.record_hashes, example.statement_digest]
    return (
        {d.removeprefix("sha256:") for d in digests}
        | {
            example.keyid,
            hashlib.sha256(example.pae).hexdigest(),
            hashlib.sha256(example.bundle).hexdigest(),
            example.spki_der[12:].hex(),  # the raw 32-byte public key
            example.genesis_input[21:].hex(),  # the trace id's ASCII bytes, in hex
        }
    )


def test_committed_example_files_are_byte_identical(example, example_dir) -> None:  # type: ignore[no-untyped-def]
    bundle = (example_dir / "example.spanproof.json").read_bytes()
    pub = (example_dir / "example.pub").read_bytes()
    assert bundle == example.bundle, "regenerate: .venv/bin/python docs/example/make_example.py"
    assert pub == example.public_pem, "regenerate: .venv/bin/python docs/example/make_example.py"


def test_generation_is_deterministic(make_example, example) -> None:  # type: ignore[no-untyped-def]
    again = make_example.build()
    assert again.bundle == example.bundle
    assert again.signature == example.signature


def test_every_digest_in_spec_is_a_real_value(spec_text: str, example) -> None:  # type: ignore[no-untyped-def]
    # Anywhere in SPEC.md: a quoted sha256:<hex> must be one the example produces.
    known = _known_hex(example)
    quoted = set(_DIGEST.findall(spec_text))
    assert quoted, "SPEC.md quotes no digests"
    assert quoted <= known, f"SPEC.md quotes digests the example does not produce: {quoted - known}"


def test_every_hex_value_in_section_10_is_a_real_value(spec_section, example) -> None:  # type: ignore[no-untyped-def]
    text = spec_section("10")
    known = _known_hex(example)
    assert set(_HEX64.findall(text)) <= known
    assert set(_HEX128.findall(text)) == {example.signature.hex()}


def test_section_10_quotes_every_value(spec_section, example) -> None:  # type: ignore[no-untyped-def]
    text = spec_section("10")
    must_appear = {
        "public key PEM": example.public_pem.decode("ascii").strip(),
        "key id": example.keyid,
        "SPKI DER": example.spki_der[:12].hex() + " " + example.spki_der[12:].hex(),
        "genesis": "genesis = " + example.genesis,
        "genesis input": "7370616e70726f6f662e67656e657369732e7631 00 "
        + example.genesis_input[21:].hex(),
        "record 0 hash": "hash(record 0) = " + example.record_hashes[0],
        "record 1 hash": "hash(record 1) = " + example.record_hashes[1],
        "statement digest": example.statement_digest,
        "statement payload": example.payload.decode("utf-8"),
        "PAE prefix": example.pae[:43].decode("ascii") + '{"_type":',
        "signature (hex)": example.signature.hex(),
        "signature (base64)": base64.b64encode(example.signature).decode("ascii"),
        "bundle file": example.bundle.decode("utf-8").rstrip("\n"),
        "file name": example.sealed.file_name,
        "payload length": f"{len(example.payload)} bytes",
        "PAE length": f"PAE (§5.1) is {len(example.pae)} bytes",
        "bundle length": f"{len(example.bundle)} bytes",
    }
    for i, raw in enumerate(example.records):
        must_appear[f"record {i} bytes"] = raw.decode("utf-8")
        must_appear[f"record {i} length"] = f"{len(raw)} bytes"
    missing = [name for name, value in must_appear.items() if value not in text]
    assert not missing, f"SPEC §10 does not show the current {missing}"


def test_section_10_pretty_statement_is_the_signed_statement(spec_section, example) -> None:  # type: ignore[no-untyped-def]
    text = spec_section("10")
    pretty = json.dumps(example.statement, indent=2, ensure_ascii=False)
    assert pretty in text
    assert json.loads(pretty) == json.loads(example.payload)


def test_pae_example_in_section_5_1(spec_section) -> None:  # type: ignore[no-untyped-def]
    text = spec_section("5")
    message = pae(PAYLOAD_TYPE, b"{}")
    assert message.decode("ascii") in text
    assert f"({len(message)} bytes;" in text


def test_example_bundle_verifies_ok(example, example_dir) -> None:  # type: ignore[no-untyped-def]
    trust = TrustRoot.from_pem_files([str(example_dir / "example.pub")])
    proven = verify_bundle(example_dir / "example.spanproof.json", trust)
    assert proven.statement_digest == example.statement_digest
    assert proven.signer_keyid == example.keyid
    assert proven.statement.head == example.record_hashes[-1]
    assert proven.statement.record_count == len(example.records) == 2
    report = check_bundle(example_dir / "example.spanproof.json", trust)
    assert report.verdict is Verdict.OK
    assert [c.status.value for c in report.checks] == ["PASS"] * 9


def test_example_bundle_is_jcs_without_its_line_feeds(example) -> None:  # type: ignore[no-untyped-def]
    # SPEC §7.1: removing the framing LFs leaves the RFC 8785 bytes of the whole bundle.
    rfc8785 = pytest.importorskip("rfc8785")
    assert rfc8785.dumps(json.loads(example.bundle)) == example.bundle.replace(b"\n", b"")
    for raw in example.records:
        assert rfc8785.dumps(json.loads(raw)) == raw
    assert rfc8785.dumps(json.loads(example.payload)) == example.payload


def test_example_envelope_verifies_with_independent_dsse(example) -> None:  # type: ignore[no-untyped-def]
    # SPEC §5.1: existing DSSE tooling, given the public key, verifies the envelope.
    dsse = pytest.importorskip("securesystemslib.dsse")
    signer = pytest.importorskip("securesystemslib.signer")
    key = signer.SSlibKey.from_crypto(example.key.private_key.public_key(), keyid=example.keyid)
    envelope = dsse.Envelope.from_dict(copy.deepcopy(example.envelope))  # it mutates its input
    assert set(envelope.verify([key], 1)) == {example.keyid}
    assert envelope.pae() == example.pae
