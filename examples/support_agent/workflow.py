"""The support-case agent, instrumented with the OpenTelemetry tracing API.

One case runs these steps, each a span under the case's root span::

    handle_support_case                     SERVER, the agent invocation (root)
    ├── receive_case
    ├── classify_intent
    │   └── chat support-classifier-1       CLIENT, LLM call
    ├── retrieve_account_context
    │   └── execute_tool crm.get_account    tool call (ERROR when the account is unknown)
    ├── check_fraud_threshold
    ├── apply_policy                        event "policy.decision"
    ├── draft_response
    │   ├── chat support-writer-1           CLIENT, LLM call
    │   └── format_reply                    not evidence: left out of the bundle
    └── escalate  or  send_response

LLM and tool calls carry the GenAI semantic-convention attributes
(``gen_ai.operation.name`` ``chat`` / ``execute_tool``, provider, models, token
usage, tool name), which spanproof's default rules select as evidence.  The root
and the business steps carry the explicit marker ``spanproof.evidence = True``.
``format_reply`` carries neither, so it is traced but not certified.

Only the OpenTelemetry API is used: give :func:`run_case` any tracer (the SDK's,
with whatever exporters you configure, or the API's no-op tracer).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from .model import LocalModel
from .tools import (
    CRM,
    DEFAULT_ACCOUNTS,
    FRAUD_THRESHOLD,
    POLICY_ID,
    POLICY_VERSION,
    Account,
    AccountNotFound,
    Decision,
    apply_policy,
    fraud_score,
)

__all__ = ["AGENT_NAME", "EVIDENCE", "Case", "Outcome", "run_case"]

AGENT_NAME = "support-agent"
#: spanproof's explicit evidence marker attribute.
EVIDENCE = "spanproof.evidence"

_CLASSIFIER_PROMPT = (
    "You are a support triage model. Label the customer's message with one intent: "
    "fraud_report, refund_request, billing_question, account_access or general_inquiry."
)
_WRITER_PROMPT = "You write short, polite replies to customers, stating the decision taken."


@dataclass(frozen=True)
class Case:
    """An incoming support case."""

    case_id: str
    customer_id: str
    channel: str
    subject: str
    message: str
    amount: float | None = None
    currency: str = "EUR"


@dataclass(frozen=True)
class Outcome:
    """What the agent did with a case (``trace_id`` is the case's trace, 32 hex digits)."""

    case_id: str
    trace_id: str
    intent: str
    account_found: bool
    fraud_score: float
    decision: Decision
    reply: str

    @property
    def escalated(self) -> bool:
        """True when the case was handed to a human team."""
        return self.decision.escalated


@contextlib.contextmanager
def _step(tracer: trace.Tracer, name: str) -> Iterator[trace.Span]:
    """A business step: an evidence span, current while it runs, OK when it returns.

    An exception escaping the step is recorded and sets the span's status to ERROR
    (the SDK's ``start_as_current_span`` default).
    """
    with tracer.start_as_current_span(name, attributes={EVIDENCE: True}) as span:
        yield span
        span.set_status(Status(StatusCode.OK))


def _chat(tracer: trace.Tracer, model: str, provider: str, max_tokens: int) -> trace.Span:
    """Start a GenAI ``chat`` client span (semantic conventions for GenAI spans)."""
    return tracer.start_span(
        f"chat {model}",
        kind=SpanKind.CLIENT,
        attributes={
            "gen_ai.operation.name": "chat",
            "gen_ai.provider.name": provider,
            "gen_ai.system": provider,  # the attribute's older name, for older tooling
            "gen_ai.request.model": model,
            "gen_ai.request.temperature": 0.0,
            "gen_ai.request.max_tokens": max_tokens,
        },
    )


def run_case(
    tracer: trace.Tracer,
    case: Case,
    *,
    model: LocalModel | None = None,
    crm: CRM | None = None,
) -> Outcome:
    """Handle one support case, tracing every step with *tracer*; return the outcome.

    Deterministic: the same case gives the same outcome and the same span names,
    attributes and events (only ids and times differ between runs).
    """
    model = model or LocalModel()
    crm = crm or CRM(DEFAULT_ACCOUNTS)
    with tracer.start_as_current_span(
        "handle_support_case",
        kind=SpanKind.SERVER,
        attributes={
            EVIDENCE: True,
            "gen_ai.operation.name": "invoke_agent",
            "gen_ai.agent.name": AGENT_NAME,
            "support.case.id": case.case_id,
            "support.case.channel": case.channel,
            "support.customer.id": case.customer_id,
        },
    ) as root:
        trace_id = format(root.get_span_context().trace_id, "032x")

        with _step(tracer, "receive_case") as span:
            span.set_attribute("support.case.subject", case.subject)
            span.set_attribute("support.case.message_chars", len(case.message))
            if case.amount is not None:
                span.set_attribute("support.case.amount", case.amount)
                span.set_attribute("support.case.currency", case.currency)
            span.add_event("case.received", {"support.case.channel": case.channel})

        intent = _classify(tracer, model, case)
        account = _retrieve_account(tracer, crm, case)
        score = _check_fraud(tracer, intent, case, account)

        with _step(tracer, "apply_policy") as span:
            decision = apply_policy(intent, case.amount, account, score)
            span.set_attribute("policy.id", POLICY_ID)
            span.set_attribute("policy.version", POLICY_VERSION)
            event = {
                "policy.rule": decision.rule,
                "support.decision": decision.action,
                "support.decision.reason": decision.reason,
            }
            if decision.queue:
                event["support.escalation.queue"] = decision.queue
            span.add_event("policy.decision", event)

        reply = _draft(tracer, model, case, intent, account, decision)

        if decision.escalated:
            with _step(tracer, "escalate") as span:
                ticket = f"ESC-{case.case_id}"
                priority = "high" if decision.queue == "fraud-review" else "normal"
                span.set_attribute("support.escalation.queue", decision.queue or "")
                span.set_attribute("support.escalation.ticket", ticket)
                span.set_attribute("support.escalation.priority", priority)
                span.add_event("escalation.created", {"support.escalation.ticket": ticket})
        else:
            with _step(tracer, "send_response") as span:
                span.set_attribute("support.response.channel", case.channel)
                span.set_attribute("support.response.chars", len(reply))
                span.add_event("response.sent", {"support.response.channel": case.channel})

        root.set_attribute("support.intent", intent)
        root.set_attribute("support.decision", decision.action)
        root.set_attribute("support.escalated", decision.escalated)
        root.set_status(Status(StatusCode.OK))
    return Outcome(case.case_id, trace_id, intent, account is not None, score, decision, reply)


def _classify(tracer: trace.Tracer, model: LocalModel, case: Case) -> str:
    with _step(tracer, "classify_intent") as step:
        prompt = f"{_CLASSIFIER_PROMPT}\nSubject: {case.subject}\nMessage: {case.message}"
        chat = _chat(tracer, model.classifier_model, model.provider, max_tokens=8)
        with trace.use_span(chat, end_on_exit=True):
            completion = model.classify(prompt)
            _record_completion(chat, completion.model, completion.response_id,
                               completion.finish_reason, completion.input_tokens,
                               completion.output_tokens)
            chat.set_status(Status(StatusCode.OK))
        step.set_attribute("support.intent", completion.text)
        return completion.text


def _record_completion(
    span: trace.Span, model: str, response_id: str, finish_reason: str,
    input_tokens: int, output_tokens: int,
) -> None:
    span.set_attribute("gen_ai.response.model", model)
    span.set_attribute("gen_ai.response.id", response_id)
    span.set_attribute("gen_ai.response.finish_reasons", (finish_reason,))
    span.set_attribute("gen_ai.usage.input_tokens", input_tokens)
    span.set_attribute("gen_ai.usage.output_tokens", output_tokens)


def _retrieve_account(tracer: trace.Tracer, crm: CRM, case: Case) -> Account | None:
    with _step(tracer, "retrieve_account_context") as step:
        tool = tracer.start_span(
            "execute_tool crm.get_account",
            kind=SpanKind.INTERNAL,
            attributes={
                "gen_ai.operation.name": "execute_tool",
                "gen_ai.tool.name": "crm.get_account",
                "gen_ai.tool.type": "function",
                "gen_ai.tool.call.id": f"call-{case.case_id}-crm",
                "gen_ai.tool.description": "Look up a customer's account in the CRM",
            },
        )
        with trace.use_span(tool, end_on_exit=True, record_exception=False,
                            set_status_on_exception=False):
            try:
                account: Account | None = crm.get_account(case.customer_id)
            except AccountNotFound as e:
                # Recorded without a stack trace, so the record is the same on every
                # machine (SPEC: content deterministic except ids and times).
                tool.set_attribute("error.type", type(e).__name__)
                tool.add_event("exception", {
                    "exception.type": type(e).__name__,
                    "exception.message": str(e),
                })
                tool.set_status(Status(StatusCode.ERROR, str(e)))
                account = None
            else:
                assert account is not None
                tool.set_status(Status(StatusCode.OK))
        step.set_attribute("support.account.found", account is not None)
        if account is not None:
            step.set_attribute("support.account.tier", account.tier)
            step.set_attribute("support.account.tenure_months", account.tenure_months)
            step.set_attribute("support.account.chargebacks_12m", account.chargebacks_12m)
        return account


def _check_fraud(
    tracer: trace.Tracer, intent: str, case: Case, account: Account | None
) -> float:
    with _step(tracer, "check_fraud_threshold") as span:
        score = fraud_score(intent, case.amount, account)
        exceeded = score >= FRAUD_THRESHOLD
        span.set_attribute("fraud.score", score)
        span.set_attribute("fraud.threshold", FRAUD_THRESHOLD)
        span.set_attribute("fraud.threshold_exceeded", exceeded)
        if exceeded:
            span.add_event("fraud.threshold_exceeded",
                           {"fraud.margin": round(score - FRAUD_THRESHOLD, 2)})
        return score


def _draft(
    tracer: trace.Tracer,
    model: LocalModel,
    case: Case,
    intent: str,
    account: Account | None,
    decision: Decision,
) -> str:
    with _step(tracer, "draft_response") as step:
        template = decision.action
        fields = {
            "name": account.name if account else "there",
            "subject": case.subject,
            "case_id": case.case_id,
            "intent": intent,
            "queue": decision.queue or "",
            "hours": "4" if decision.queue == "fraud-review" else "24",
            "amount": f"{case.amount:.2f} {case.currency}" if case.amount is not None else "",
        }
        prompt = (
            f"{_WRITER_PROMPT}\nDecision: {decision.action} ({decision.reason})\n"
            f"Intent: {intent}\nSubject: {case.subject}"
        )
        chat = _chat(tracer, model.writer_model, model.provider, max_tokens=400)
        with trace.use_span(chat, end_on_exit=True):
            completion = model.draft(prompt, template=template, fields=fields)
            _record_completion(chat, completion.model, completion.response_id,
                               completion.finish_reason, completion.input_tokens,
                               completion.output_tokens)
            chat.set_status(Status(StatusCode.OK))
        # Plain application code: traced, but not evidence (no marker, no GenAI
        # attributes), so spanproof leaves it out of the bundle.
        with tracer.start_as_current_span("format_reply") as fmt:
            reply = " ".join(completion.text.split())
            fmt.set_attribute("support.reply.chars", len(reply))
        step.set_attribute("support.reply.template", template)
        return reply
