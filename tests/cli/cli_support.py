"""Helpers for the command-line tests: bundles sealed by the producer's own code.

Bundles are built with ``spanproof.exporter.sealing.seal``, fixed keys and a fixed
clock, so these tests need no tracer, no exporter instance and no randomness.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from spanproof.exporter.keys import SigningKey
from spanproof.exporter.sealing import ChainPosition, SealedBundle, seal
from spanproof.verifier.statement import Completeness, Producer
from spanproof.verifier.values import encode_value

SEED = bytes(range(32))  # a published test key: never for real evidence
OTHER_SEED = bytes([0x42]) * 32
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
OTHER_TRACE = "5bf92f3577b34da6a3ce929d0e0e4737"
SEALED_AT = datetime(2026, 3, 2, 9, 30, 0, 250000, tzinfo=timezone.utc)
PRODUCER = Producer(name="spanproof-test", version="0.1.0", instance="00000000000000aa")
T0 = 1772443798000000000  # nanoseconds

ROOT, RECEIVE, CLASSIFY, CHAT, TOOL, POLICY, ORPHAN = (
    "1000000000000001",
    "1000000000000002",
    "1000000000000003",
    "1000000000000004",
    "1000000000000005",
    "1000000000000006",
    "1000000000000007",
)
NOT_IN_BUNDLE = "20000000000000ff"

RESOURCE: dict[str, Any] = {
    "attributes": {"service.name": encode_value("support-agent")},
    "droppedAttributesCount": "0",
    "schemaUrl": "",
}
SCOPE: dict[str, Any] = {
    "name": "support_agent",
    "version": "1.0.0",
    "attributes": {},
    "droppedAttributesCount": "0",
    "schemaUrl": "",
}


def span_body(
    trace_id: str,
    span_id: str,
    parent: str,
    name: str,
    *,
    kind: str = "SPAN_KIND_INTERNAL",
    start_ms: float = 0.0,
    duration_ms: float = 1.0,
    attributes: dict[str, Any] | None = None,
    status: tuple[str, str] = ("STATUS_CODE_OK", ""),
    events: Sequence[dict[str, Any]] = (),
) -> dict[str, Any]:
    """A record body (span, resource, scope) as the exporter's normalizer makes it."""
    start = T0 + int(start_ms * 1_000_000)
    return {
        "span": {
            "traceId": trace_id,
            "spanId": span_id,
            "parentSpanId": parent,
            "traceState": "",
            "name": name,
            "kind": kind,
            "startTimeUnixNano": str(start),
            "endTimeUnixNano": str(start + int(duration_ms * 1_000_000)),
            "status": {"code": status[0], "message": status[1]},
            "attributes": {k: encode_value(v) for k, v in (attributes or {}).items()},
            "droppedAttributesCount": "0",
            "events": list(events),
            "droppedEventsCount": "0",
            "links": [],
            "droppedLinksCount": "0",
        },
        "resource": RESOURCE,
        "scope": SCOPE,
    }


def workflow_bodies(trace_id: str = TRACE) -> list[dict[str, Any]]:
    """Six spans of a support case, in the order they end (as an exporter chains them).

    Tree: handle_support_case > receive_case, classify_intent > chat ...,
    execute_tool crm.get_account (ERROR), apply_policy (event); plus one span whose
    parent is not in the bundle.
    """
    policy_event = {
        "timeUnixNano": str(T0 + 9_000_000),
        "name": "policy.decision",
        "attributes": {"policy.rule": encode_value("R2-fraud-threshold"),
                       "support.decision": encode_value("escalate")},
        "droppedAttributesCount": "0",
    }
    return [
        span_body(trace_id, RECEIVE, ROOT, "receive_case", start_ms=1,
                  attributes={"spanproof.evidence": True}),
        span_body(trace_id, CHAT, CLASSIFY, "chat support-classifier-1", kind="SPAN_KIND_CLIENT",
                  start_ms=3, duration_ms=2.5,
                  attributes={"gen_ai.operation.name": "chat",
                              "gen_ai.request.model": "support-classifier-1",
                              "gen_ai.response.model": "support-classifier-1",
                              "gen_ai.usage.input_tokens": 53,
                              "gen_ai.usage.output_tokens": 1}),
        span_body(trace_id, CLASSIFY, ROOT, "classify_intent", start_ms=2, duration_ms=4,
                  attributes={"spanproof.evidence": True}),
        span_body(trace_id, TOOL, ROOT, "execute_tool crm.get_account", start_ms=7,
                  status=("STATUS_CODE_ERROR", "no account for customer CUST-4040"),
                  attributes={"gen_ai.operation.name": "execute_tool",
                              "gen_ai.tool.name": "crm.get_account"}),
        span_body(trace_id, POLICY, ROOT, "apply_policy", start_ms=9,
                  attributes={"spanproof.evidence": True}, events=[policy_event]),
        span_body(trace_id, ORPHAN, NOT_IN_BUNDLE, "late_callback", start_ms=11,
                  attributes={"spanproof.evidence": True}),
        span_body(trace_id, ROOT, "", "handle_support_case", kind="SPAN_KIND_SERVER",
                  duration_ms=12, attributes={"spanproof.evidence": True,
                                              "gen_ai.operation.name": "invoke_agent"}),
    ]


def flip_in_record(path: Path, record: int = 0) -> None:
    """Change one character inside record *record*'s span name (still valid JSON)."""
    lines = path.read_bytes().split(b"\n")
    line = lines[1 + record]
    at = line.index(b'"name":"', line.index(b'"span":')) + len(b'"name":"')
    swapped = b"X" if line[at:at + 1] != b"X" else b"Y"
    lines[1 + record] = line[:at] + swapped + line[at + 1:]
    path.write_bytes(b"\n".join(lines))


def spanproof_script() -> str:
    """The installed ``spanproof`` console script beside this Python."""
    script = Path(sys.executable).parent / ("spanproof.exe" if os.name == "nt" else "spanproof")
    if not script.exists():
        pytest.skip("the spanproof console script is not installed (pip install -e .)")
    return str(script)


@dataclass(frozen=True)
class Keys:
    """The test signer, its public key file, and an unrelated public key file."""

    signer: SigningKey
    pub: Path
    other_pub: Path


MakeBundle = Callable[..., tuple[Path, SealedBundle]]


def write_keys(directory: Path) -> Keys:
    """Write the fixed test key's public half (and an unrelated key) into *directory*."""
    signer = SigningKey.from_seed(SEED)
    directory.mkdir(parents=True, exist_ok=True)
    pub = directory / "signing.pub"
    pub.write_bytes(signer.public_pem())
    other = directory / "other.pub"
    other.write_bytes(SigningKey.from_seed(OTHER_SEED).public_pem())
    return Keys(signer, pub, other)


def bundle_maker(default_dir: Path, default_signer: SigningKey) -> MakeBundle:
    """A function that seals bodies into a bundle file; it returns ``(path, sealed)``.

    Keyword arguments: ``name`` (file name stem), ``directory``, ``trace_id``,
    ``bodies``, ``position`` (continuation segments), ``completeness``, ``signer``,
    ``reason``, ``producer``, ``sealed_at``.
    """

    def make(
        name: str = "case",
        *,
        directory: Path | None = None,
        trace_id: str = TRACE,
        bodies: list[dict[str, Any]] | None = None,
        position: ChainPosition | None = None,
        completeness: Completeness | None = None,
        signer: SigningKey | None = None,
        reason: str = "root_ended",
        producer: Producer = PRODUCER,
        sealed_at: datetime = SEALED_AT,
    ) -> tuple[Path, SealedBundle]:
        sealed = seal(
            trace_id,
            workflow_bodies(trace_id) if bodies is None else bodies,
            position or ChainPosition.genesis(trace_id),
            signer=signer or default_signer,
            producer=producer,
            sealed_at=sealed_at,
            reason=reason,
            completeness=completeness,
        )
        folder = directory or default_dir
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{name}.spanproof.json"
        path.write_bytes(sealed.data)
        return path, sealed

    return make


