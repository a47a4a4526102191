"""Fixtures for the verifier tests: fixed keys, record bodies and sealed bundles.

Everything is deterministic (fixed seeds, ids and sealing time), so a failing test
reproduces byte for byte.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import pytest

from spanproof.exporter.keys import SigningKey
from spanproof.exporter.sealing import ChainPosition, SealedBundle, seal
from spanproof.verifier import (
    BundleReport,
    Completeness,
    Producer,
    TrustedKey,
    TrustRoot,
    check_bundle,
)
from spanproof.verifier.values import encode_value

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
OTHER_TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
SEALED_AT = datetime(2026, 3, 2, 9, 30, 0, 250000, tzinfo=timezone.utc)
PRODUCER = Producer(name="spanproof-tests", version="0", instance="00000000000000aa")
# Published test seeds; never use them for real evidence.
TRUSTED_SEED = bytes(range(32))
ATTACKER_SEED = bytes(range(32, 64))


def span_body(
    index: int,
    *,
    trace_id: str = TRACE_ID,
    span_id: str | None = None,
    attributes: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A small, valid record body (``span``, ``resource``, ``scope``) for step *index*."""
    attrs = {"step.index": index, "step.note": f"step {index}", "spanproof.evidence": True}
    if attributes is not None:
        attrs.update(attributes)
    return {
        "span": {
            "traceId": trace_id,
            "spanId": span_id or f"{index + 1:016x}",
            "parentSpanId": "",
            "traceState": "",
            "name": f"step-{index}",
            "kind": "SPAN_KIND_INTERNAL",
            "startTimeUnixNano": str(1772443798000000000 + index * 1000),
            "endTimeUnixNano": str(1772443798000000000 + index * 1000 + 500),
            "status": {"code": "STATUS_CODE_OK", "message": ""},
            "attributes": {k: encode_value(v) for k, v in attrs.items()},
            "droppedAttributesCount": "0",
            "events": [],
            "droppedEventsCount": "0",
            "links": [],
            "droppedLinksCount": "0",
        },
        "resource": {
            "attributes": {"service.name": encode_value("verifier-tests")},
            "droppedAttributesCount": "0",
            "schemaUrl": "",
        },
        "scope": {
            "name": "tests",
            "version": "1",
            "attributes": {},
            "droppedAttributesCount": "0",
            "schemaUrl": "",
        },
    }


@dataclass(frozen=True)
class Kit:
    """A trusted signing key, an attacker's key, and helpers to seal and check bundles."""

    key: SigningKey
    attacker: SigningKey
    trust: TrustRoot

    trace_id = TRACE_ID
    other_trace_id = OTHER_TRACE_ID
    sealed_at = SEALED_AT
    producer = PRODUCER
    span_body = staticmethod(span_body)

    def bodies(self, count: int, trace_id: str = TRACE_ID) -> list[dict[str, Any]]:
        """*count* distinct record bodies of one trace."""
        return [span_body(i, trace_id=trace_id) for i in range(count)]

    def seal(
        self,
        bodies: Sequence[Mapping[str, Any]] | None = None,
        *,
        trace_id: str = TRACE_ID,
        position: ChainPosition | None = None,
        signer: SigningKey | None = None,
        sealed_at: datetime = SEALED_AT,
        reason: str = "root_ended",
        completeness: Completeness | None = None,
    ) -> SealedBundle:
        """Seal *bodies* (default: four steps of *trace_id*) with the trusted key."""
        return seal(
            trace_id,
            self.bodies(4, trace_id) if bodies is None else bodies,
            position or ChainPosition.genesis(trace_id),
            signer=signer or self.key,
            producer=PRODUCER,
            sealed_at=sealed_at,
            reason=reason,
            completeness=completeness,
        )

    def check(self, data: bytes, trust: TrustRoot | None = None, **kwargs: Any) -> BundleReport:
        """Run :func:`check_bundle` on bundle bytes."""
        return check_bundle(io.BytesIO(data), trust or self.trust, **kwargs)


@pytest.fixture(scope="session")
def kit() -> Kit:
    """Fixed keys: ``kit.key`` is the only key ``kit.trust`` trusts."""
    key = SigningKey.from_seed(TRUSTED_SEED)
    trusted = TrustedKey.from_public_key(key.private_key.public_key(), "trusted test key")
    return Kit(key, SigningKey.from_seed(ATTACKER_SEED), TrustRoot.from_keys([trusted]))
