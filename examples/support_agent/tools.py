"""The agent's tools and business rules: a CRM look-up, the fraud score, the policy.

All local and deterministic; they stand for a CRM API, a fraud service and a
policy engine.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

__all__ = [
    "AUTO_REFUND_LIMIT",
    "CRM",
    "FRAUD_THRESHOLD",
    "POLICY_ID",
    "POLICY_VERSION",
    "Account",
    "AccountNotFound",
    "Decision",
    "apply_policy",
    "fraud_score",
]

FRAUD_THRESHOLD = 0.8
AUTO_REFUND_LIMIT = 100.0
POLICY_ID = "support-escalation-policy"
POLICY_VERSION = "2026.03"


@dataclass(frozen=True)
class Account:
    """What the CRM knows about a customer."""

    customer_id: str
    name: str
    tier: str
    tenure_months: int
    chargebacks_12m: int
    country: str


class AccountNotFound(LookupError):
    """The CRM has no account for this customer id."""


class CRM:
    """An in-memory CRM directory."""

    def __init__(self, accounts: Mapping[str, Account]) -> None:
        self._accounts = dict(accounts)

    def get_account(self, customer_id: str) -> Account:
        """Return the customer's account.

        Raises:
            AccountNotFound: no such customer.
        """
        try:
            return self._accounts[customer_id]
        except KeyError:
            raise AccountNotFound(f"no account for customer {customer_id}") from None


DEFAULT_ACCOUNTS: dict[str, Account] = {
    a.customer_id: a
    for a in (
        Account("CUST-1001", "Ada", "standard", 4, 1, "GB"),
        Account("CUST-1002", "Grace", "premium", 48, 0, "US"),
        Account("CUST-1003", "Alan", "standard", 26, 0, "DE"),
        Account("CUST-1005", "Edsger", "standard", 14, 0, "NL"),
    )
}


def fraud_score(intent: str, amount: float | None, account: Account | None) -> float:
    """A deterministic risk score in [0, 1] (rounded to two decimals)."""
    score = 0.1
    if intent == "fraud_report":
        score += 0.35
    if amount:
        score += min(amount / 2000.0, 0.3)
    if account is None:
        score += 0.2
    else:
        score += 0.15 * min(account.chargebacks_12m, 2)
        if account.tenure_months < 6:
            score += 0.1
    return round(min(score, 1.0), 2)


@dataclass(frozen=True)
class Decision:
    """What the policy decided, and which rule decided it."""

    action: str  # "escalate", "auto_refund" or "auto_reply"
    rule: str
    queue: str | None = None
    reason: str = ""

    @property
    def escalated(self) -> bool:
        """True when a human team takes the case over."""
        return self.action == "escalate"


def apply_policy(
    intent: str, amount: float | None, account: Account | None, score: float
) -> Decision:
    """Apply the escalation policy (first matching rule wins)."""
    if account is None:
        return Decision("escalate", "R1-no-account-context", "account-verification",
                        "account context unavailable")
    if score >= FRAUD_THRESHOLD:
        return Decision("escalate", "R2-fraud-threshold", "fraud-review",
                        f"fraud score {score:.2f} at or over threshold {FRAUD_THRESHOLD:.2f}")
    if intent == "refund_request" and amount is not None:
        if amount <= AUTO_REFUND_LIMIT:
            return Decision("auto_refund", "R3-small-refund", None,
                            f"refund {amount:.2f} within limit {AUTO_REFUND_LIMIT:.2f}")
        return Decision("escalate", "R4-refund-over-limit", "billing",
                        f"refund {amount:.2f} over limit {AUTO_REFUND_LIMIT:.2f}")
    return Decision("auto_reply", "R5-self-service", None, "answerable from the help centre")
