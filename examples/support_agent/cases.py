"""Sample support cases: at least one escalated and one answered automatically."""

from __future__ import annotations

from .workflow import Case

__all__ = ["SAMPLE_CASES"]

#: Four cases covering each policy path: fraud escalation, self-service reply,
#: automatic small refund, and escalation after a failed CRM look-up (an ERROR span).
SAMPLE_CASES: tuple[Case, ...] = (
    Case(
        case_id="C-1001",
        customer_id="CUST-1001",
        channel="email",
        subject="Charge I don't recognise",
        message="There is a payment of 640.00 EUR on my card that I don't recognise. "
        "I did not make this purchase.",
        amount=640.0,
    ),
    Case(
        case_id="C-1002",
        customer_id="CUST-1002",
        channel="chat",
        subject="Locked out of my account",
        message="I forgot my password and now I am locked out. How do I log in again?",
    ),
    Case(
        case_id="C-1003",
        customer_id="CUST-1003",
        channel="web",
        subject="Refund for a damaged order",
        message="My order arrived damaged. Please refund the 45.00 EUR I paid.",
        amount=45.0,
    ),
    Case(
        case_id="C-1004",
        customer_id="CUST-4040",
        channel="email",
        subject="Question about my invoice",
        message="Why is my latest invoice higher than usual?",
    ),
)
