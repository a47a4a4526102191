"""Making evidence: the OpenTelemetry span exporter, normalization, sealing and keys."""

from __future__ import annotations

from ._exporter import PRODUCER_NAME, SpanproofSpanExporter
from .assembly import SealJob, TraceAssembler
from .config import DEFAULT_SELECT_ATTRIBUTES, ExporterConfig
from .keys import SigningKey
from .normalize import span_to_body
from .processor import EvidenceSpanProcessor
from .sealing import ChainPosition, SealedBundle, seal
from .selection import EVIDENCE_ATTRIBUTE, AttributeSelector, Selector
from .sinks import BundleSink, DirectorySink

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
