"""A deterministic, local stand-in for the language models the agent calls.

No network and no randomness: the "model" is a handful of keyword rules and reply
templates, so the same case always gives the same answer and the same token
counts.  It stands where a real chat-completion client would be; the agent
instruments the call exactly as it would a real one.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

__all__ = ["CLASSIFIER_MODEL", "INTENTS", "WRITER_MODEL", "Completion", "LocalModel"]

CLASSIFIER_MODEL = "support-classifier-1"
WRITER_MODEL = "support-writer-1"
#: The provider name recorded as ``gen_ai.provider.name`` / ``gen_ai.system``.
PROVIDER = "spanproof.local"

#: Intent labels, in rule order: the first rule with a matching keyword wins.
INTENTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("fraud_report", ("don't recognise", "don't recognize", "did not make", "unauthorized",
                      "unauthorised", "fraud", "stolen")),
    ("refund_request", ("refund", "money back", "return the")),
    ("billing_question", ("invoice", "charged twice", "bill", "charge")),
    ("account_access", ("password", "log in", "login", "locked out")),
)
_FALLBACK_INTENT = "general_inquiry"

_REPLIES = {
    "escalate": (
        "Hello {name}, thank you for contacting us about \"{subject}\". Your case {case_id} "
        "has been passed to our {queue} team, who will contact you within {hours} hours."
    ),
    "auto_refund": (
        "Hello {name}, we have approved a refund of {amount} for case {case_id}. "
        "It will reach your account within 5 business days."
    ),
    "auto_reply": (
        "Hello {name}, thank you for contacting us about \"{subject}\". {guidance} "
        "Reply to this message if you need anything else (case {case_id})."
    ),
}
_GUIDANCE = {
    "account_access": "You can reset your password from the sign-in page with 'Forgot password'.",
    "billing_question": "Your invoices are listed under Billing > History in your account.",
    "general_inquiry": "Our help centre answers the most common questions.",
    "refund_request": "Refunds are listed under Billing > Refunds once processed.",
    "fraud_report": "We have reviewed the transactions on your account.",
}


@dataclass(frozen=True)
class Completion:
    """What a chat call returned: the text, usage and response metadata."""

    text: str
    model: str
    response_id: str
    input_tokens: int
    output_tokens: int
    finish_reason: str = "stop"


def _tokens(text: str) -> int:
    """A deterministic token count: words and punctuation runs."""
    return len(text.replace(",", " ,").replace(".", " .").split())


def _response_id(model: str, prompt: str) -> str:
    return "local-" + hashlib.sha256(f"{model}\x00{prompt}".encode()).hexdigest()[:16]


class LocalModel:
    """Rule-based stand-in for the classifier and writer models (deterministic)."""

    classifier_model = CLASSIFIER_MODEL
    writer_model = WRITER_MODEL
    provider = PROVIDER

    def classify(self, prompt: str) -> Completion:
        """Label a support message with an intent from :data:`INTENTS`.

        The prompt's first line is the instruction; the rules read the rest.
        """
        lowered = prompt.partition("\n")[2].lower()
        label = _FALLBACK_INTENT
        for intent, keywords in INTENTS:
            if any(k in lowered for k in keywords):
                label = intent
                break
        return Completion(
            text=label,
            model=self.classifier_model,
            response_id=_response_id(self.classifier_model, prompt),
            input_tokens=_tokens(prompt),
            output_tokens=1,
        )

    def draft(self, prompt: str, *, template: str, fields: dict[str, str]) -> Completion:
        """Write the customer reply for a decision (``escalate``, ``auto_refund``, ...).

        Raises:
            KeyError: an unknown *template*.
        """
        values = dict(fields)
        values.setdefault("guidance", _GUIDANCE.get(fields.get("intent", ""), ""))
        text = _REPLIES[template].format(**values)
        return Completion(
            text=text,
            model=self.writer_model,
            response_id=_response_id(self.writer_model, prompt),
            input_tokens=_tokens(prompt),
            output_tokens=_tokens(text),
        )
