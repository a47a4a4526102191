"""A sampler that records every span but samples none: spans reach a processor's
``on_end`` unsampled (what record-only sampling does)."""

from __future__ import annotations

from typing import Any

from opentelemetry.sdk.trace.sampling import Decision, Sampler, SamplingResult


class RecordOnly(Sampler):
    """Records every span but samples none."""

    def should_sample(self, parent_context: object, trace_id: int, name: str,
                      kind: object = None, attributes: Any = None,
                      links: object = None, trace_state: object = None) -> SamplingResult:
        # The SDK keeps only the attributes the sampler returns.
        return SamplingResult(Decision.RECORD_ONLY, attributes)

    def get_description(self) -> str:
        return "RecordOnly"
