"""The support-case agent example: outcomes, span structure, GenAI attributes."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

import spanproof.examples.support_agent as agent
from spanproof.examples.support_agent import SAMPLE_CASES, Case, run_case

STEPS = [
    "receive_case", "classify_intent", "retrieve_account_context", "check_fraud_threshold",
    "apply_policy", "draft_response",
]
CASES = {case.case_id: case for case in SAMPLE_CASES}


@pytest.fixture
def traced() -> Iterator[tuple[trace.Tracer, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider.get_tracer("test"), exporter
    provider.shutdown()


def _run(traced: tuple[trace.Tracer, InMemorySpanExporter], case: Case) -> tuple[
    agent.Outcome, dict[str, ReadableSpan]
]:
    tracer, exporter = traced
    exporter.clear()
    outcome = run_case(tracer, case)
    spans = {span.name: span for span in exporter.get_finished_spans()}
    return outcome, spans


@pytest.mark.parametrize(
    ("case_id", "intent", "action", "queue"),
    [
        ("C-1001", "fraud_report", "escalate", "fraud-review"),
        ("C-1002", "account_access", "auto_reply", None),
        ("C-1003", "refund_request", "auto_refund", None),
        ("C-1004", "billing_question", "escalate", "account-verification"),
    ],
)
def test_sample_case_outcomes(traced, case_id, intent, action, queue):
    outcome, spans = _run(traced, CASES[case_id])
    assert outcome.case_id == case_id
    assert outcome.intent == intent
    assert outcome.decision.action == action
    assert outcome.decision.queue == queue
    assert outcome.escalated == (action == "escalate")
    assert ("escalate" in spans) == outcome.escalated
    assert ("send_response" in spans) != outcome.escalated
    assert case_id in outcome.reply


def test_samples_cover_escalated_and_not():
    flags = [run_case(trace.NoOpTracer(), case).escalated for case in SAMPLE_CASES]
    assert any(flags) and not all(flags)


def test_steps_are_children_of_the_root_and_calls_children_of_their_step(traced):
    outcome, spans = _run(traced, CASES["C-1001"])
    root = spans["handle_support_case"]
    assert root.parent is None
    assert root.kind is SpanKind.SERVER
    assert format(root.context.trace_id, "032x") == outcome.trace_id
    for name in [*STEPS, "escalate"]:
        assert spans[name].parent.span_id == root.context.span_id, name
    parent_of = {
        "chat support-classifier-1": "classify_intent",
        "execute_tool crm.get_account": "retrieve_account_context",
        "chat support-writer-1": "draft_response",
        "format_reply": "draft_response",
    }
    for child, parent in parent_of.items():
        assert spans[child].parent.span_id == spans[parent].context.span_id, child
    assert {s.context.trace_id for s in spans.values()} == {root.context.trace_id}


def test_root_and_steps_are_marked_evidence_and_plain_code_is_not(traced):
    _, spans = _run(traced, CASES["C-1002"])
    for name in ["handle_support_case", *STEPS, "send_response"]:
        assert spans[name].attributes["spanproof.evidence"] is True, name
        assert spans[name].status.status_code is StatusCode.OK, name
    plain = spans["format_reply"].attributes
    assert "spanproof.evidence" not in plain
    assert not any(key.startswith("gen_ai.") for key in plain)


def test_llm_calls_carry_genai_chat_attributes(traced):
    _, spans = _run(traced, CASES["C-1001"])
    for name, model in [("chat support-classifier-1", "support-classifier-1"),
                        ("chat support-writer-1", "support-writer-1")]:
        span = spans[name]
        attrs = span.attributes
        assert span.kind is SpanKind.CLIENT
        assert attrs["gen_ai.operation.name"] == "chat"
        assert attrs["gen_ai.provider.name"] == attrs["gen_ai.system"] == "spanproof.local"
        assert attrs["gen_ai.request.model"] == attrs["gen_ai.response.model"] == model
        assert isinstance(attrs["gen_ai.usage.input_tokens"], int)
        assert attrs["gen_ai.usage.input_tokens"] > 0
        assert attrs["gen_ai.usage.output_tokens"] > 0
        assert attrs["gen_ai.response.finish_reasons"] == ("stop",)
        assert str(attrs["gen_ai.response.id"]).startswith("local-")
        assert attrs["gen_ai.request.temperature"] == 0.0
    assert spans["handle_support_case"].attributes["gen_ai.operation.name"] == "invoke_agent"
    assert spans["handle_support_case"].attributes["gen_ai.agent.name"] == "support-agent"


def test_tool_call_carries_genai_tool_attributes_and_errors_when_the_account_is_unknown(traced):
    _, ok_spans = _run(traced, CASES["C-1001"])
    tool = ok_spans["execute_tool crm.get_account"]
    assert tool.attributes["gen_ai.operation.name"] == "execute_tool"
    assert tool.attributes["gen_ai.tool.name"] == "crm.get_account"
    assert tool.attributes["gen_ai.tool.call.id"] == "call-C-1001-crm"
    assert tool.status.status_code is StatusCode.OK

    outcome, spans = _run(traced, CASES["C-1004"])
    tool = spans["execute_tool crm.get_account"]
    assert tool.status.status_code is StatusCode.ERROR
    assert tool.status.description == "no account for customer CUST-4040"
    assert tool.attributes["error.type"] == "AccountNotFound"
    (event,) = tool.events
    assert event.name == "exception"
    assert "exception.stacktrace" not in event.attributes  # deterministic content
    assert outcome.account_found is False
    assert spans["retrieve_account_context"].attributes["support.account.found"] is False


def test_policy_and_fraud_steps_record_events(traced):
    _, spans = _run(traced, CASES["C-1001"])
    (decision,) = spans["apply_policy"].events
    assert decision.name == "policy.decision"
    assert decision.attributes["policy.rule"] == "R2-fraud-threshold"
    assert decision.attributes["support.decision"] == "escalate"
    fraud = spans["check_fraud_threshold"]
    assert fraud.attributes["fraud.threshold_exceeded"] is True
    assert [e.name for e in fraud.events] == ["fraud.threshold_exceeded"]


def _content(spans: dict[str, ReadableSpan]) -> list[Any]:
    """Everything about the spans except ids and times."""
    return sorted(
        (
            s.name, s.kind.name, s.status.status_code.name, s.status.description,
            sorted(s.attributes.items()),
            [(e.name, sorted(e.attributes.items())) for e in s.events],
        )
        for s in spans.values()
    )


def test_runs_are_deterministic_except_ids_and_times(traced):
    for case in SAMPLE_CASES:
        first, spans_a = _run(traced, case)
        second, spans_b = _run(traced, case)
        assert first.trace_id != second.trace_id
        assert (first.intent, first.decision, first.reply, first.fraud_score) == (
            second.intent, second.decision, second.reply, second.fraud_score
        )
        assert _content(spans_a) == _content(spans_b)


def test_runs_with_the_api_alone(traced):
    outcome = run_case(trace.NoOpTracer(), CASES["C-1003"])
    assert outcome.decision.action == "auto_refund"
    assert outcome.trace_id == "0" * 32


def test_module_runs(tmp_path):
    done = subprocess.run([sys.executable, "-m", "spanproof.examples.support_agent"],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "C-1001" in done.stdout and "decision=escalate to fraud-review" in done.stdout


@pytest.mark.parametrize("flags", [[], ["--spans"]])
def test_module_stops_quietly_when_its_reader_goes_away(tmp_path, flags):
    # `... | head`: the reader has closed the pipe (here before the first line, so
    # that every write fails, whatever the buffering).
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        done = subprocess.run([sys.executable, "-m", "spanproof.examples.support_agent", *flags],
                              stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=60,
                              cwd=tmp_path)
    finally:
        os.close(write_end)
    assert (done.returncode, done.stderr) == (1, "")


def test_example_imports_only_public_apis():
    package = Path(agent.__file__).parent
    for source in sorted(package.glob("*.py")):
        tree = ast.parse(source.read_text(), str(source))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module, *(a.name for a in node.names)]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            for name in names:
                assert not any(part.startswith("_") and part != "__future__"
                               for part in name.split(".")), (source.name, name)
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                assert node.module.split(".")[0] in ("__future__", "opentelemetry") or (
                    node.module in sys.stdlib_module_names
                    or node.module.split(".")[0] in sys.stdlib_module_names
                ), (source.name, node.module)
