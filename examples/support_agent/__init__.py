"""The support-case agent: an AI workflow traced with OpenTelemetry.

receive case → classify intent (LLM call) → retrieve account context (CRM tool) →
check fraud threshold → apply policy → draft response (LLM call) → escalate or reply.
The "models" are a deterministic local stand-in (no network).  Run it with
``python -m spanproof.examples.support_agent``, or traced, certified and verified
with ``spanproof demo``.
"""

from __future__ import annotations

from .cases import SAMPLE_CASES
from .model import Completion, LocalModel
from .tools import CRM, Account, AccountNotFound, Decision
from .workflow import AGENT_NAME, EVIDENCE, Case, Outcome, run_case

__all__ = [
    "AGENT_NAME",
    "CRM",
    "EVIDENCE",
    "SAMPLE_CASES",
    "Account",
    "AccountNotFound",
    "Case",
    "Completion",
    "Decision",
    "LocalModel",
    "Outcome",
    "run_case",
]
