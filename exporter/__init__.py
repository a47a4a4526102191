"""Making evidence: the OpenTelemetry span exporter, normalization, sealing and keys."""

from __future__ import annotations

#: The top-level modules of the ``exporter`` extra's packages (OpenTelemetry, protobuf,
#: gRPC, PyNaCl), which the verifier alone (``pip install .``) does not install.
_EXTRA_MODULES = frozenset({"opentelemetry", "google", "grpc", "nacl"})

try:
    from ._exporter import PRODUCER_NAME, SpanproofSpanExporter
    from .assembly import SealJob, TraceAssembler
    from .config import DEFAULT_SELECT_ATTRIBUTES, ExporterConfig
    from .keys import SigningKey
    from .normalize import span_to_body
    from .processor import EvidenceSpanProcessor
    from .sealing import ChainPosition, SealedBundle, seal
    from .selection import EVIDENCE_ATTRIBUTE, AttributeSelector, Selector
    from .sinks import BundleSink, DirectorySink
except ModuleNotFoundError as e:
    if (e.name or "").partition(".")[0] not in _EXTRA_MODULES:
        raise
    raise ModuleNotFoundError(
        f"spanproof's exporter needs {e.name!r}, which is not installed: pip install "
        "'.[exporter]' in a checkout of spanproof (the verifier alone needs none of it)",
        name=e.name,
    ) from e

__all__ = [
    "DEFAULT_SELECT_ATTRIBUTES",
    "EVIDENCE_ATTRIBUTE",
    "PRODUCER_NAME",
    "AttributeSelector",
    "BundleSink",
    "ChainPosition",
    "DirectorySink",
    "EvidenceSpanProcessor",
    "ExporterConfig",
    "SealJob",
    "SealedBundle",
    "Selector",
    "SigningKey",
    "SpanproofSpanExporter",
    "TraceAssembler",
    "seal",
    "span_to_body",
]
