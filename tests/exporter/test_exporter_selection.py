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
