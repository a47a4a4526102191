"""Which spans are evidence: the marker, the default conventions, configuration."""

from __future__ import annotations

import pytest

from spanproof.exporter import (
    DEFAULT_SELECT_ATTRIBUTES,
    EVIDENCE_ATTRIBUTE,
    AttributeSelector,
    ExporterConfig,
    Selector,
)


@pytest.mark.parametrize(
    "key", ["gen_ai.operation.name", "openinference.span.kind", "traceloop.span.kind"]
)
def test_each_default_convention_selects(key: str) -> None:
    selector = AttributeSelector()
    assert selector.selects({key: "chat", "http.method": "GET"})


def test_defaults_are_the_three_conventions() -> None:
    assert set(DEFAULT_SELECT_ATTRIBUTES) == {
        "gen_ai.operation.name", "openinference.span.kind", "traceloop.span.kind",
    }
    assert AttributeSelector().keys == frozenset(DEFAULT_SELECT_ATTRIBUTES)


def test_plain_spans_are_not_evidence() -> None:
    selector = AttributeSelector()
    assert not selector.selects({})
    assert not selector.selects({"http.method": "GET", "gen_ai.system": "openai"})


def test_marker_true_selects_any_span() -> None:
    assert AttributeSelector().selects({EVIDENCE_ATTRIBUTE: True})
    assert AttributeSelector(()).selects({EVIDENCE_ATTRIBUTE: True})


def test_marker_false_excludes_even_a_matching_span() -> None:
    selector = AttributeSelector(select_all=True)
    assert not selector.selects({EVIDENCE_ATTRIBUTE: False, "gen_ai.operation.name": "chat"})


def test_only_boolean_marker_values_count() -> None:
    selector = AttributeSelector()
    assert not selector.selects({EVIDENCE_ATTRIBUTE: "true"})
    assert not selector.selects({EVIDENCE_ATTRIBUTE: 1})
    assert selector.selects({EVIDENCE_ATTRIBUTE: "false", "traceloop.span.kind": "task"})


def test_select_all() -> None:
    assert AttributeSelector(select_all=True).selects({})
    assert AttributeSelector(select_all=True).selects({"anything": 1})


def test_configured_keys_replace_the_defaults() -> None:
    config = ExporterConfig.from_env(environ={}, select_attributes=("app.decision",))
    selector = AttributeSelector.from_config(config)
    assert selector.selects({"app.decision": "approve"})
    assert not selector.selects({"gen_ai.operation.name": "chat"})


def test_selector_from_environment() -> None:
    env = {"OTEL_EXPORTER_SPANPROOF_SELECT_ATTRIBUTES": "app.step, app.policy ,",
           "OTEL_EXPORTER_SPANPROOF_SELECT_ALL": "false"}
    selector = AttributeSelector.from_config(ExporterConfig.from_env(environ=env))
    assert selector.keys == frozenset({"app.step", "app.policy"})
    assert selector.selects({"app.policy": "refund"})
    env["OTEL_EXPORTER_SPANPROOF_SELECT_ALL"] = "TRUE"
    assert AttributeSelector.from_config(ExporterConfig.from_env(environ=env)).selects({})


def test_works_on_any_mapping_and_satisfies_the_protocol() -> None:
    from types import MappingProxyType

    selector = AttributeSelector()
    assert isinstance(selector, Selector)
    assert selector.selects(MappingProxyType({"openinference.span.kind": "LLM"}))
    assert not selector.selects(MappingProxyType({"x": 1}))


# ------------------------------------------------------------------------ patterns


def test_glob_patterns_select_as_redaction_matches() -> None:
    # The syntax of REDACT_ATTRIBUTES: "*" any run of characters, "?" one.
    selector = AttributeSelector(["gen_ai.*", "app.?d", "*.decision"])
    assert selector.patterns == ("gen_ai.*", "app.?d", "*.decision")
    assert selector.keys == frozenset()
    assert selector.selects({"http.method": "GET", "gen_ai.system": "openai"})
    assert selector.selects({"app.id": 1})
    assert selector.selects({"policy.refund.decision": "approve"})
    assert not selector.selects({"gen_ai": 1, "app.uuid": 1, "decision": 1})
    assert not selector.selects({})


def test_patterns_and_exact_keys_together() -> None:
    selector = AttributeSelector(["app.step", "gen_ai.*"])
    assert selector.keys == frozenset({"app.step"})
    assert selector.patterns == ("gen_ai.*",)
    assert selector.selects({"app.step": 1})
    assert selector.selects({"gen_ai.operation.name": "chat"})
    assert not selector.selects({"app.steps": 1})


def test_the_marker_still_decides_with_patterns() -> None:
    selector = AttributeSelector(["gen_ai.*"])
    assert not selector.selects({EVIDENCE_ATTRIBUTE: False, "gen_ai.system": "openai"})
    assert selector.selects({EVIDENCE_ATTRIBUTE: True, "x": 1})
    assert not selector.selects({EVIDENCE_ATTRIBUTE: "true", "x": 1})


def test_patterns_from_the_environment() -> None:
    env = {"OTEL_EXPORTER_SPANPROOF_SELECT_ATTRIBUTES": "gen_ai.*,openinference.*"}
    selector = AttributeSelector.from_config(ExporterConfig.from_env(environ=env))
    assert selector.selects({"gen_ai.operation.name": "chat"})
    assert selector.selects({"openinference.span.kind": "LLM"})
    assert not selector.selects({"traceloop.span.kind": "task"})


def test_what_a_pattern_matched_is_remembered_within_a_bound(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from spanproof.exporter import selection

    monkeypatch.setattr(selection, "_MAX_LEARNED_KEYS", 4)
    selector = AttributeSelector(["gen_ai.*"])
    # Asked again and again, and past the bound, the answers stay the same.
    for _ in range(3):
        for i in range(10):
            assert not selector.selects({f"k{i}": 1, "other": 2})
            assert selector.selects({f"k{i}": 1, f"gen_ai.{i}": 2})
    assert len(selector._matched) + len(selector._unmatched) == 4


def test_a_key_that_is_not_a_string_never_breaks_a_selector_with_patterns() -> None:
    selector = AttributeSelector(["gen_ai.*"])
    assert not selector.selects({1: "x"})  # type: ignore[dict-item]
    assert selector.selects({1: "x", "gen_ai.system": "openai"})  # type: ignore[dict-item]


def test_exact_keys_alone_keep_the_one_set_operation_fast_path() -> None:
    # No "*" or "?": a span with none of the keys is rejected by one isdisjoint.
    selector = AttributeSelector(["app.step"])
    assert selector.patterns == ()
    assert selector._triggers == frozenset({"app.step", EVIDENCE_ATTRIBUTE})


def test_a_string_of_keys_is_a_type_error() -> None:
    with pytest.raises(TypeError, match=r"write keys=\['llm\.call'\]"):
        AttributeSelector("llm.call")


def test_an_exporter_selects_by_pattern_end_to_end(tmp_path) -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    from spanproof.exporter import SigningKey, SpanproofSpanExporter
    from spanproof.verifier import find_bundles

    exporter = SpanproofSpanExporter(tmp_path, signing_key=SigningKey.generate(),
                                     select_attributes=["gen_ai.*"])
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("t")
    with tracer.start_as_current_span("chat", attributes={"gen_ai.operation.name": "chat"}):
        pass
    with tracer.start_as_current_span("plain", attributes={"http.method": "GET"}):
        pass
    provider.shutdown()
    (bundle,) = find_bundles([str(tmp_path)])
    text = open(bundle, encoding="utf-8").read()
    assert '"chat"' in text and '"plain"' not in text
