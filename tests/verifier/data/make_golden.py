"""Regenerate the golden bundles in this folder, deterministically.

One trace, sealed in two segments by the producer's own pure ``seal()``: segment 0
(three records, sealed at the size limit) and its continuation, segment 1 (one
late span).  Everything is fixed -- the 32-byte key seed, ids, times and the
sealing times -- and the span bodies cover every typed value kind (string, bool,
int, double incl. -0/NaN/±Infinity, bytes, arrays, key-value lists, the empty
value), events, links, an error status, resource and scope.

Usage, from the repository root::

    .venv/bin/python tests/verifier/data/make_golden.py

``tests/verifier/test_golden.py`` regenerates the files in memory and compares
them byte for byte with the committed ones.
"""

from __future__ import annotations

import hashlib
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from spanproof.exporter.keys import SigningKey
from spanproof.exporter.sealing import ChainPosition, seal
from spanproof.verifier.statement import Completeness, Producer
from spanproof.verifier.values import encode_value

HERE = Path(__file__).resolve().parent
SEGMENT_0 = "golden.spanproof.json"
SEGMENT_1 = "golden-continuation.spanproof.json"
PUBLIC_KEY = "golden.pub"

# A published test key, never for real evidence: its 32-byte seed is
# SHA-256("spanproof golden test key").
SEED = hashlib.sha256(b"spanproof golden test key").digest()
TRACE_ID = "5b8efff798038103d269b633813fc60c"
ROOT_SPAN_ID = "eee19b7ec3c1b174"
PRODUCER = Producer(name="spanproof", version="0.1.0", instance="9a1c0e2d4b6f8a37")
SEALED_AT_0 = datetime(2026, 3, 2, 9, 30, 0, 125000, tzinfo=timezone.utc)
SEALED_AT_1 = datetime(2026, 3, 2, 9, 31, 5, 0, tzinfo=timezone.utc)
T0 = 1772443798000000000

RESOURCE: dict[str, Any] = {
    "attributes": {
        "service.name": encode_value("golden-agent"),
        "service.instance.id": encode_value("pod-7"),
        "deployment.environment.name": encode_value("test"),
    },
    "droppedAttributesCount": "1",
    "schemaUrl": "https://opentelemetry.io/schemas/1.26.0",
}
SCOPE: dict[str, Any] = {
    "name": "golden_agent.workflow",
    "version": "2.0.1",
    "attributes": {"scope.tier": encode_value("evidence")},
    "droppedAttributesCount": "0",
    "schemaUrl": "https://opentelemetry.io/schemas/1.26.0",
}


def _span(
    index: int, name: str, kind: str, attributes: dict[str, Any], **extra: Any
) -> dict[str, Any]:
    span = {
        "traceId": TRACE_ID,
        "spanId": f"{0xA000 + index:016x}",
        "parentSpanId": ROOT_SPAN_ID,
        "traceState": "",
        "name": name,
        "kind": kind,
        "startTimeUnixNano": str(T0 + index * 1_000_000),
        "endTimeUnixNano": str(T0 + index * 1_000_000 + 750_000),
        "status": {"code": "STATUS_CODE_OK", "message": ""},
        "attributes": {key: encode_value(value) for key, value in attributes.items()},
        "droppedAttributesCount": "0",
        "events": [],
        "droppedEventsCount": "0",
        "links": [],
        "droppedLinksCount": "0",
    }
    span.update(extra)
    return {"span": span, "resource": RESOURCE, "scope": SCOPE}


def bodies() -> list[dict[str, Any]]:
    """The four record bodies in chain order: three for segment 0, one late span."""
    typed_values = _span(
        0,
        "chat classify_case",
        "SPAN_KIND_CLIENT",
        {
            "str.plain": "billing_dispute",
            "str.empty": "",
            "str.unicode": "r\u00e9sum\u00e9 e\u0301 \U0001f600 \u4e2d",
            "str.controls": "tab\tnul\x00del\x7f",
            "str.digits": "5",
            "bool.true": True,
            "bool.false": False,
            "int.five": 5,
            "int.negative": -42,
            "int.beyond_2_53": 2**53 + 1,
            "int.min": -(2**63),
            "int.max": 2**63 - 1,
            "double.five": 5.0,
            "double.tenth": 0.1,
            "double.big": 1e21,
            "double.tiny": 5e-324,
            "double.negative_zero": -0.0,
            "double.nan": float("nan"),
            "double.infinity": float("inf"),
            "double.negative_infinity": float("-inf"),
            "bytes.some": b"\x00\x8f\x01\xc2\xff",
            "bytes.empty": b"",
            "array.empty": [],
            "array.bool": [True, False],
            "array.int": [1, -2, 2**53 + 1],
            "array.double": [0.5, -0.0, 1e300],
            "array.str": ["velocity", "", "amount"],
            "kvlist.nested": {"a": 1, "b": {"c": ["x", 2.5]}, "empty": None},
            "empty.value": None,
        },
        traceState="vendor=abc,other=1",
        droppedAttributesCount="2",
    )
    events = _span(
        1,
        "execute_tool check_fraud_threshold",
        "SPAN_KIND_INTERNAL",
        {"gen_ai.operation.name": "execute_tool", "fraud.score": 0.87},
        status={"code": "STATUS_CODE_ERROR", "message": "threshold exceeded"},
        events=[
            {
                "timeUnixNano": str(T0 + 1_500_000),
                "name": "threshold_exceeded",
                "attributes": {"margin": encode_value(0.07), "rule": encode_value("velocity")},
                "droppedAttributesCount": "0",
            },
            {
                "timeUnixNano": str(T0 + 1_600_000),
                "name": "exception",
                "attributes": {
                    "exception.type": encode_value("FraudThresholdExceeded"),
                    "exception.message": encode_value("score 0.87 > 0.8"),
                },
                "droppedAttributesCount": "1",
            },
        ],
        droppedEventsCount="3",
    )
    links = _span(
        2,
        "escalate",
        "SPAN_KIND_PRODUCER",
        {"support.case.id": "C-1042", "spanproof.evidence": True},
        links=[
            {
                "traceId": "0af7651916cd43dd8448eb211c80319c",
                "spanId": "00f067aa0ba902b7",
                "traceState": "vendor=xyz",
                "attributes": {"link.reason": encode_value("caused_by")},
                "droppedAttributesCount": "0",
            }
        ],
        droppedLinksCount="1",
    )
    late = _span(
        3,
        "send_reply",
        "SPAN_KIND_SERVER",
        {"http.response.status_code": 202, "gen_ai.operation.name": "chat"},
        parentSpanId="",
    )
    return [typed_values, events, links, late]


def build() -> dict[str, bytes]:
    """Return every golden file's name and bytes (pure)."""
    key = SigningKey.from_seed(SEED)
    all_bodies = bodies()
    first = seal(
        TRACE_ID,
        all_bodies[:3],
        ChainPosition.genesis(TRACE_ID),
        signer=key,
        producer=PRODUCER,
        sealed_at=SEALED_AT_0,
        reason="size_limit",
    )
    second = seal(
        TRACE_ID,
        all_bodies[3:],
        first.next_position(),
        signer=key,
        producer=PRODUCER,
        sealed_at=SEALED_AT_1,
        reason="root_ended",
        completeness=Completeness(notes=("golden test vector: fixed key, not evidence",)),
    )
    return {SEGMENT_0: first.data, SEGMENT_1: second.data, PUBLIC_KEY: key.public_pem()}


def main() -> int:
    """Write the golden files next to this script."""
    for name, data in build().items():
        (HERE / name).write_bytes(data)
        print(HERE / name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
