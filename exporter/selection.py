"""Which spans are evidence.

A span is evidence when its attribute ``spanproof.evidence`` is ``True``, or when it
carries one of the configured attribute keys (by default the GenAI semantic
conventions' ``gen_ai.operation.name``, OpenInference's ``openinference.span.kind``
and OpenLLMetry's ``traceloop.span.kind``), or when every span is selected.
``spanproof.evidence = False`` excludes a span that a rule would otherwise select.

Selectors look at a span's raw attribute mapping only (key to Python value), so the
same selector serves the SDK exporter and the OTLP receiver.  Most spans of an
application are not evidence, so rejecting one must cost almost nothing: the
default selector rejects a span carrying neither the marker nor a configured key
with one set operation (pass a plain ``dict`` for the C fast path).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Protocol, runtime_checkable

from .config import DEFAULT_SELECT_ATTRIBUTES, ExporterConfig

__all__ = ["EVIDENCE_ATTRIBUTE", "AttributeSelector", "Selector"]

#: The explicit marker: ``True`` selects a span, ``False`` excludes it.
EVIDENCE_ATTRIBUTE = "spanproof.evidence"


@runtime_checkable
class Selector(Protocol):
    """Decides whether a span is evidence, from its attributes alone."""

    def selects(self, attributes: Mapping[str, Any]) -> bool:
        """True when a span with these attributes is evidence.  Must not raise."""
        ...


class AttributeSelector:
    """The default :class:`Selector`: the marker attribute, attribute keys, or all.

    Only the boolean marker values count: ``spanproof.evidence = "true"`` (a string)
    is treated like an absent marker.
    """

    __slots__ = ("_keys", "_select_all", "_triggers")

    def __init__(
        self, keys: Iterable[str] = DEFAULT_SELECT_ATTRIBUTES, *, select_all: bool = False
    ) -> None:
        self._keys = frozenset(keys)
        self._select_all = select_all
        # A span carrying none of these cannot be selected (unless every span is).
        self._triggers = None if select_all else self._keys | {EVIDENCE_ATTRIBUTE}

    @classmethod
    def from_config(cls, config: ExporterConfig) -> AttributeSelector:
        """The selector that *config*'s ``select_attributes`` and ``select_all`` describe."""
        return cls(config.select_attributes, select_all=config.select_all)

    @property
    def keys(self) -> frozenset[str]:
        """The attribute keys that select a span."""
        return self._keys

    def selects(self, attributes: Mapping[str, Any]) -> bool:
        """True when *attributes* make the span evidence (see the module docstring)."""
        # Most spans are not evidence: one set operation in C rejects them.
        # A dict's keys() view runs isdisjoint iterating the smaller side.
        triggers = self._triggers
        if triggers is not None and attributes.keys().isdisjoint(triggers):
            return False
        marker = attributes.get(EVIDENCE_ATTRIBUTE)
        if marker is True:
            return True
        if marker is False:
            return False
        return self._select_all or not attributes.keys().isdisjoint(self._keys)

    def __repr__(self) -> str:
        return f"AttributeSelector(keys={sorted(self._keys)!r}, select_all={self._select_all})"
