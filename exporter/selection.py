"""Which spans are evidence.

A span is evidence when its attribute ``spanproof.evidence`` is ``True``, or when it
carries one of the configured attribute keys (by default the GenAI semantic
conventions' ``gen_ai.operation.name``, OpenInference's ``openinference.span.kind``
and OpenLLMetry's ``traceloop.span.kind``) or a key matching one of the configured
glob patterns (``gen_ai.*``: the syntax of ``REDACT_ATTRIBUTES``, see
:class:`~spanproof.verifier.disclosure.AttributeMatcher`), or when every span is
selected.  ``spanproof.evidence = False`` excludes a span that a rule would otherwise
select.

Selectors look at a span's raw attribute mapping only (key to Python value), so the
same selector serves the SDK exporter and the OTLP receiver.  Most spans of an
application are not evidence, so rejecting one must cost almost nothing: with exact
keys only (no ``*`` or ``?``), the default selector rejects a span carrying neither
the marker nor a configured key with one set operation (pass a plain ``dict`` for
the C fast path).  With a pattern, a span's keys are looked up, also in C, among the
keys seen before that a pattern matched or did not (each new key is matched once),
which costs a few hundred nanoseconds more per span.
"""

from __future__ import annotations

from collections.abc import Iterable, KeysView, Mapping
from typing import Any, Protocol, runtime_checkable

from spanproof.verifier._settings import refuse_string
from spanproof.verifier.disclosure import AttributeMatcher

from .config import DEFAULT_SELECT_ATTRIBUTES, ExporterConfig

__all__ = ["EVIDENCE_ATTRIBUTE", "AttributeSelector", "Selector"]

#: The explicit marker: ``True`` selects a span, ``False`` excludes it.
EVIDENCE_ATTRIBUTE = "spanproof.evidence"
# Attribute keys whose matching a selector with patterns remembers, at most (beyond
# them, as from a sender making up keys, the others are matched every time).
_MAX_LEARNED_KEYS = 8192


@runtime_checkable
class Selector(Protocol):
    """Decides whether a span is evidence, from its attributes alone."""

    def selects(self, attributes: Mapping[str, Any]) -> bool:
        """True when a span with these attributes is evidence.  Must not raise."""
        ...


class AttributeSelector:
    """The default :class:`Selector`: the marker attribute, attribute keys and glob
    patterns, or all.

    *keys* holds exact attribute keys and patterns in the syntax of
    :class:`~spanproof.verifier.disclosure.AttributeMatcher` (``*`` any run of
    characters, ``?`` one); an entry with neither is an exact key.  Only the
    boolean marker values count: ``spanproof.evidence = "true"`` (a string) is
    treated like an absent marker.

    Raises:
        TypeError: *keys* is a ``str`` (a list of keys is expected).
    """

    __slots__ = ("_keys", "_matched", "_patterns", "_select_all", "_triggers", "_unmatched")

    def __init__(
        self, keys: Iterable[str] = DEFAULT_SELECT_ATTRIBUTES, *, select_all: bool = False
    ) -> None:
        refuse_string(keys, "AttributeSelector keys", "keys", "attribute keys")
        entries = tuple(keys)
        patterns = tuple(k for k in entries if isinstance(k, str) and ("*" in k or "?" in k))
        self._keys = frozenset(k for k in entries if k not in patterns)
        # None: exact keys only.
        self._patterns = AttributeMatcher(patterns) if patterns else None
        # The keys seen that a pattern matches, and those it does not (together at
        # most _MAX_LEARNED_KEYS): an application uses a few hundred keys over and
        # over, so a span's keys are looked up in C instead of matched in Python.
        self._matched: set[str] = set()
        self._unmatched: set[str] = set()
        self._select_all = select_all
        # A span carrying none of these cannot be selected (unless every span is, or a
        # pattern may match a key: each span's keys must then be tried).
        self._triggers = (None if select_all or patterns
                          else self._keys | {EVIDENCE_ATTRIBUTE})

    @classmethod
    def from_config(cls, config: ExporterConfig) -> AttributeSelector:
        """The selector that *config*'s ``select_attributes`` and ``select_all`` describe."""
        return cls(config.select_attributes, select_all=config.select_all)

    @property
    def keys(self) -> frozenset[str]:
        """The exact attribute keys that select a span."""
        return self._keys

    @property
    def patterns(self) -> tuple[str, ...]:
        """The glob patterns whose matching attribute keys select a span."""
        return () if self._patterns is None else self._patterns.patterns

    def selects(self, attributes: Mapping[str, Any]) -> bool:
        """True when *attributes* make the span evidence (see the module docstring)."""
        # Most spans are not evidence: with exact keys only, one set operation in C
        # rejects them.  A dict's keys() view runs isdisjoint iterating the smaller side.
        triggers = self._triggers
        if triggers is not None and attributes.keys().isdisjoint(triggers):
            return False
        marker = attributes.get(EVIDENCE_ATTRIBUTE)
        if marker is True:
            return True
        if marker is False:
            return False
        return (self._select_all or not attributes.keys().isdisjoint(self._keys)
                or (self._patterns is not None and self._match(attributes.keys())))

    def _match(self, keys: KeysView[str]) -> bool:
        """True when a pattern matches one of *keys*."""
        matched, unmatched = self._matched, self._unmatched
        if not keys.isdisjoint(matched):
            return True
        if keys <= unmatched:
            return False
        assert self._patterns is not None
        matches = self._patterns.matches
        for key in keys:
            if key in unmatched:
                continue
            hit = isinstance(key, str) and matches(key)
            if len(matched) + len(unmatched) < _MAX_LEARNED_KEYS:
                (matched if hit else unmatched).add(key)
            if hit:
                return True
        return False

    def __repr__(self) -> str:
        keys = sorted(self._keys) + list(self.patterns)
        return f"AttributeSelector(keys={keys!r}, select_all={self._select_all})"
