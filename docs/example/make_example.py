"""Build the worked example of docs/SPEC.md §10, deterministically.

The example is a two-record bundle: one trace of a support-case agent in which two
evidence spans (a model call that classifies the case, and a fraud-threshold tool
call) are certified.  Everything is fixed (the 32-byte key seed, the ids, the
times, the sealing time), so the same bytes come out on every run and on every
machine.  The records are sealed by the producer's own code
(``spanproof.exporter.sealing.seal``), so the example is what spanproof writes, not
a hand-made imitation.

Usage (from the repository root)::

    .venv/bin/python docs/example/make_example.py          # (re)write the example files
    .venv/bin/python docs/example/make_example.py --show   # print every value SPEC §10 quotes

It writes ``example.spanproof.json`` (the bundle) and ``example.pub`` (the public key)
next to this script.  ``tests/docs/test_spec_example.py`` regenerates the example in
memory and checks that those files and the values quoted in SPEC §10 still match.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from cryptography.hazmat.primitives import serialization

from spanproof.exporter.keys import SigningKey
from spanproof.exporter.sealing import ChainPosition, SealedBundle, seal
from spanproof.verifier.canonical import canonicalize
from spanproof.verifier.dsse import PAYLOAD_TYPE, Envelope, pae
from spanproof.verifier.records import GENESIS_PREFIX, genesis_hash, record_hash
from spanproof.verifier.statement import Producer
from spanproof.verifier.values import encode_value

HERE = os.path.dirname(os.path.abspath(__file__))
BUNDLE_FILE = "example.spanproof.json"
PUBLIC_KEY_FILE = "example.pub"

SEED = bytes(range(32))  # 000102...1f: a published test key, never use it for real evidence
TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
ROOT_SPAN_ID = "b7ad6b7169203331"  # the agent's root span (not itself certified)
SEALED_AT = datetime(2026, 3, 2, 9, 30, 0, 250000, tzinfo=timezone.utc)
PRODUCER = Producer(name="spanproof", version="0.1.0", instance="5f3c9a0e7d1b2468")
SEAL_REASON = "root_ended"

RESOURCE: dict[str, Any] = {
    "attributes": {
        "service.name": encode_value("support-agent"),
        "telemetry.sdk.language": encode_value("python"),
    },
    "droppedAttributesCount": "0",
    "schemaUrl": "",
}
SCOPE: dict[str, Any] = {
    "name": "support_agent",
    "version": "1.4.0",
    "attributes": {},
    "droppedAttributesCount": "0",
    "schemaUrl": "",
}


def _span(
    span_id: str,
    name: str,
    kind: str,
    start: int,
    end: int,
    attributes: dict[str, Any],
    *,
    status: tuple[str, str] = ("STATUS_CODE_OK", ""),
    events: Sequence[dict[str, Any]] = (),
) -> dict[str, Any]:
    return {
        "traceId": TRACE_ID,
        "spanId": span_id,
        "parentSpanId": ROOT_SPAN_ID,
        "traceState": "",
        "name": name,
        "kind": kind,
        "startTimeUnixNano": str(start),
        "endTimeUnixNano": str(end),
        "status": {"code": status[0], "message": status[1]},
        "attributes": {key: encode_value(value) for key, value in attributes.items()},
        "droppedAttributesCount": "0",
        "events": list(events),
        "droppedEventsCount": "0",
        "links": [],
        "droppedLinksCount": "0",
    }


def bodies() -> list[dict[str, Any]]:
    """The two record bodies (``span``, ``resource``, ``scope``), in chain order."""
    classify = _span(
        "00f067aa0ba902b7",
        "chat classify_case",
        "SPAN_KIND_CLIENT",
        1772443798120000000,
        1772443799004512000,
        {
            "gen_ai.operation.name": "chat",
            "gen_ai.request.model": "gpt-4o-mini",
            "gen_ai.request.temperature": 0.2,
            "gen_ai.usage.input_tokens": 412,
            "spanproof.evidence": True,
            "support.case.category": "billing_dispute",
        },
    )
    fraud = _span(
        "53995c3f42cd8ad8",
        "execute_tool check_fraud_threshold",
        "SPAN_KIND_INTERNAL",
        1772443799010000000,
        1772443799013250000,
        {
            "fraud.account_ref": b"\x8f\x01\xc2",
            "fraud.ledger_offset": 9007199254740993,  # 2**53 + 1: why integers are strings
            "fraud.rules": ["velocity", "amount"],
            "fraud.score": 0.87,
            "fraud.threshold": 0.8,
            "gen_ai.operation.name": "execute_tool",
            "gen_ai.tool.name": "check_fraud_threshold",
            "spanproof.evidence": True,
        },
        events=[
            {
                "timeUnixNano": "1772443799013000000",
                "name": "threshold_exceeded",
                "attributes": {"margin": encode_value(0.07000000000000006)},
                "droppedAttributesCount": "0",
            }
        ],
    )
    return [{"span": body, "resource": RESOURCE, "scope": SCOPE} for body in (classify, fraud)]


@dataclass(frozen=True)
class Example:
    """Every value SPEC §10 shows, computed from the fixed inputs."""

    key: SigningKey
    public_pem: bytes
    spki_der: bytes
    keyid: str
    genesis_input: bytes
    genesis: str
    records: tuple[bytes, ...]
    record_hashes: tuple[str, ...]
    sealed: SealedBundle
    statement: dict[str, Any]
    payload: bytes
    statement_digest: str
    pae: bytes
    envelope: dict[str, Any]
    signature: bytes
    bundle: bytes


def build() -> Example:
    """Seal the example bundle and collect its intermediate values (pure)."""
    key = SigningKey.from_seed(SEED)
    public_key = key.private_key.public_key()
    spki_der = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    sealed = seal(
        TRACE_ID,
        bodies(),
        ChainPosition.genesis(TRACE_ID),
        signer=key,
        producer=PRODUCER,
        sealed_at=SEALED_AT,
        reason=SEAL_REASON,
    )
    lines = sealed.data.split(b"\n")
    records = tuple(line.removesuffix(b",") for line in lines[1:-2])
    header = json.loads(lines[0].removesuffix(b',"records":[') + b"}")
    envelope = Envelope.from_json(header["envelope"])
    statement = sealed.statement.to_json()
    return Example(
        key=key,
        public_pem=key.public_pem(),
        spki_der=spki_der,
        keyid=key.keyid,
        genesis_input=GENESIS_PREFIX + TRACE_ID.encode("ascii"),
        genesis=genesis_hash(TRACE_ID),
        records=records,
        record_hashes=tuple(record_hash(r) for r in records),
        sealed=sealed,
        statement=statement,
        payload=envelope.payload,
        statement_digest=sealed.statement_digest,
        pae=pae(PAYLOAD_TYPE, envelope.payload),
        envelope=header["envelope"],
        signature=envelope.signatures[0].sig,
        bundle=sealed.data,
    )


def write(example: Example, directory: str = HERE) -> list[str]:
    """Write the bundle and public key files; return their paths."""
    written = []
    for name, data in ((BUNDLE_FILE, example.bundle), (PUBLIC_KEY_FILE, example.public_pem)):
        path = os.path.join(directory, name)
        with open(path, "wb") as f:
            f.write(data)
        written.append(path)
    return written


def show(example: Example) -> str:
    """Return every value SPEC §10 quotes, labelled, for pasting and reviewing."""
    ex = example
    out = [
        "public key PEM:",
        ex.public_pem.decode("ascii"),
        f"SPKI DER ({len(ex.spki_der)} bytes): {ex.spki_der.hex()}",
        f"key id: {ex.keyid}",
        f"genesis input ({len(ex.genesis_input)} bytes): {ex.genesis_input.hex()}",
        f"genesis: {ex.genesis}",
    ]
    for i, (raw, digest) in enumerate(zip(ex.records, ex.record_hashes, strict=True)):
        out += [f"record {i} ({len(raw)} bytes):", raw.decode("utf-8")]
        out += [f"record {i} hash: {digest}"]
    out += [
        "statement (pretty):",
        json.dumps(ex.statement, indent=2, ensure_ascii=False),
        f"statement payload ({len(ex.payload)} bytes):",
        ex.payload.decode("utf-8"),
        f"statement digest: {ex.statement_digest}",
        f"PAE prefix: {ex.pae[:64]!r}",
        f"PAE length: {len(ex.pae)}; sha256(PAE) = {hashlib.sha256(ex.pae).hexdigest()}",
        f"signature (hex): {ex.signature.hex()}",
        f"envelope: {json.dumps(ex.envelope)}",
        f"bundle ({len(ex.bundle)} bytes, sha256 {hashlib.sha256(ex.bundle).hexdigest()}):",
        ex.bundle.decode("utf-8"),
        f"canonical check: {canonicalize(ex.statement) == ex.payload}",
    ]
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    """Write the example files (default) or print the values SPEC §10 quotes."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--show", action="store_true", help="print the values instead")
    parser.add_argument("--out", default=HERE, help="directory to write to (default: here)")
    args = parser.parse_args(argv)
    example = build()
    if args.show:
        print(show(example))
    else:
        for path in write(example, args.out):
            print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
