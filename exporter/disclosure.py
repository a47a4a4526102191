"""Committing configured attributes of a record body (SPEC §2.5): the producer side.

:func:`commit_body` is a pure function (randomness is passed in): it takes a
normalized record body (``{"span", "resource", "scope"}``, as
:func:`~spanproof.exporter.normalize.span_to_body` and the OTLP mapping build it)
and returns the body with every selected span attribute replaced by its committed
value, plus the :class:`~spanproof.verifier.disclosure.Disclosure` of each (value
and salt).  The SDK exporter and the OTLP receiver both call it, through
:func:`~spanproof.exporter.sealing.seal`'s ``redact`` argument, at sealing time:

* never before :meth:`TraceAssembler.add <spanproof.exporter.assembly.TraceAssembler.add>`:
  fresh salts would make an identical re-delivered span look like a conflict;
* the disclosures travel in :attr:`SealedBundle.disclosures
  <spanproof.exporter.sealing.SealedBundle.disclosures>`, outside the hashed records,
  and :class:`~spanproof.exporter.sinks.DirectorySink` writes them to
  ``<name>.disclosures.json`` (mode 0600) beside the bundle.

Only span attributes are committed; event, link, resource and scope attributes
are stored as they are.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from spanproof.verifier._settings import refuse_string
from spanproof.verifier.disclosure import SALT_BYTES, AttributeMatcher, Disclosure, commit_value

__all__ = ["AttributeMatcher", "commit_body", "new_salt", "redaction_matcher"]


def new_salt() -> bytes:
    """A fresh 128-bit salt from the operating system's CSPRNG."""
    return secrets.token_bytes(SALT_BYTES)


def redaction_matcher(patterns: Iterable[str]) -> AttributeMatcher | None:
    """The matcher for configured redaction *patterns* (``ExporterConfig.redact_attributes``),
    or None when there are none.

    Raises:
        TypeError: *patterns* is a ``str`` (a list of patterns is expected).
        ValueError: a pattern is empty.
    """
    refuse_string(patterns, "redaction patterns", "patterns", "attribute keys and patterns")
    matcher = AttributeMatcher(tuple(patterns))
    return matcher if matcher else None


def commit_body(
    body: Mapping[str, Any],
    redact: AttributeMatcher,
    *,
    salt: Callable[[], bytes] = new_salt,
) -> tuple[dict[str, Any], tuple[Disclosure, ...]]:
    """Commit the span attributes of *body* that *redact* selects (SPEC §2.5.2).

    Returns a new body (*body* is not changed; members other than the committed
    attributes are shared with it) and one disclosure per committed attribute, in
    key order.  A body with nothing to commit is returned as is, with no disclosures.

    Args:
        body: a normalized record body.
        redact: which attribute keys to commit.
        salt: returns a fresh 16-byte salt per call (injected for tests).

    Raises:
        ValueError: *salt* returned something other than 16 bytes.
        CanonicalizationError: a selected value has no canonical JSON form.
    """
    span = body["span"]
    attributes: Mapping[str, Any] = span["attributes"]
    keys = sorted(k for k in attributes if redact.matches(k))
    if not keys:
        return dict(body), ()
    trace_id: str = span["traceId"]
    span_id: str = span["spanId"]
    committed = dict(attributes)
    disclosures = []
    for key in keys:
        value = attributes[key]
        fresh = salt()
        if not isinstance(fresh, bytes) or len(fresh) != SALT_BYTES:
            raise ValueError(f"salt source must return {SALT_BYTES} bytes")
        committed[key] = commit_value(trace_id, span_id, key, value, fresh)
        disclosures.append(Disclosure(trace_id, span_id, key, fresh, value))
    out = dict(body)
    out["span"] = {**span, "attributes": committed}
    return out, tuple(disclosures)

