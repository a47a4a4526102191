"""Helpers for the selective-disclosure tests: bundles sealed with fixed keys, a fixed
clock and (unless a test wants fresh ones) deterministic salts."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from spanproof.exporter.disclosure import redaction_matcher
from spanproof.exporter.keys import SigningKey
from spanproof.exporter.sealing import ChainPosition, SealedBundle, seal
from spanproof.exporter.sinks import DirectorySink
from spanproof.verifier import BundleReport, TrustRoot, check_bundle
from spanproof.verifier.statement import Producer
from spanproof.verifier.values import encode_value

SEED = bytes(range(32))  # a published test key: never for real evidence
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN_A = "1000000000000001"
SPAN_B = "1000000000000002"
SPAN_C = "1000000000000003"
SEALED_AT = datetime(2026, 3, 2, 9, 30, 0, 250000, tzinfo=timezone.utc)
PRODUCER = Producer(name="spanproof-test", version="0.1.0", instance="00000000000000dd")

#: The attributes every test span carries, by span.
ATTRIBUTES: dict[str, dict[str, Any]] = {
    SPAN_A: {
        "gen_ai.operation.name": "chat",
        "gen_ai.input.messages": "my card ending 4242 was charged twice",
        "customer.email": "ana@example.com",
        "customer.tier": 5,
        "case.priority": "5",
    },
    SPAN_B: {
        "gen_ai.operation.name": "execute_tool",
        "customer.email": "ana@example.com",
        "customer.flags": [True, False],
        "fraud.score": 0.87,
    },
    SPAN_C: {
        "gen_ai.operation.name": "chat",
        "customer.account": b"\x8f\x01\xc2",
        "customer.note": None,
    },
}
REDACT = ("gen_ai.input.messages", "customer.*", "case.priority")


def counter_salts() -> Callable[[], bytes]:
    """A deterministic salt source: 16-byte big-endian counters 1, 2, 3, ..."""
    numbers = itertools.count(1)
    return lambda: next(numbers).to_bytes(16, "big")


def span_body(span_id: str, attributes: Mapping[str, Any], parent: str = "") -> dict[str, Any]:
    """A record body (span, resource, scope) with *attributes* encoded as typed values."""
    return {
        "span": {
            "traceId": TRACE,
            "spanId": span_id,
            "parentSpanId": parent,
            "traceState": "",
            "name": f"step {span_id[-1]}",
            "kind": "SPAN_KIND_INTERNAL",
            "startTimeUnixNano": "1772443798000000000",
            "endTimeUnixNano": "1772443798500000000",
            "status": {"code": "STATUS_CODE_OK", "message": ""},
            "attributes": {k: encode_value(v) for k, v in attributes.items()},
            "droppedAttributesCount": "0",
            "events": [],
            "droppedEventsCount": "0",
            "links": [],
            "droppedLinksCount": "0",
        },
        "resource": {
            "attributes": {"service.name": encode_value("support-agent")},
            "droppedAttributesCount": "0",
            "schemaUrl": "",
        },
        "scope": {
            "name": "support_agent", "version": "1.0.0", "attributes": {},
            "droppedAttributesCount": "0", "schemaUrl": "",
        },
    }


def default_bodies() -> list[dict[str, Any]]:
    """The three test spans, in chain order."""
    return [span_body(span_id, attrs) for span_id, attrs in ATTRIBUTES.items()]


def signer() -> SigningKey:
    """The fixed test signing key."""
    return SigningKey.from_seed(SEED)


def seal_bodies(
    bodies: Sequence[Mapping[str, Any]],
    redact: Sequence[str] = REDACT,
    *,
    salt: Callable[[], bytes] | None = None,
) -> SealedBundle:
    """Seal *bodies* as segment 0 of :data:`TRACE`, committing *redact*."""
    return seal(
        TRACE, bodies, ChainPosition.genesis(TRACE),
        signer=signer(), producer=PRODUCER, sealed_at=SEALED_AT, reason="root_ended",
        redact=redaction_matcher(redact), salt=salt or counter_salts(),
    )


@dataclass(frozen=True)
class Written:
    """A bundle written by the directory sink, and its disclosure file."""

    bundle: Path
    disclosures: Path
    sealed: SealedBundle


def write_bundle(directory: Path, bodies: Sequence[Mapping[str, Any]] | None = None,
                 redact: Sequence[str] = REDACT) -> Written:
    """Seal and write a bundle with the directory sink."""
    sealed = seal_bodies(default_bodies() if bodies is None else bodies, redact)
    path = Path(DirectorySink(directory).write(sealed))
    return Written(path, path.with_name(path.name.replace(".spanproof.json",
                                                          ".disclosures.json")), sealed)


def trust_root(directory: Path) -> tuple[TrustRoot, Path]:
    """The test key's public half as a trust root, and its PEM file."""
    directory.mkdir(parents=True, exist_ok=True)
    pem = directory / "signer.pub"
    pem.write_bytes(signer().public_pem())
    return TrustRoot.from_pem_files([str(pem)]), pem


def report_of(path: Path, trust: TrustRoot) -> BundleReport:
    """The verification report of one bundle, with its records."""
    return check_bundle(path, trust, keep_records=True)
