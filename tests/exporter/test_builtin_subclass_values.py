"""Attribute values that are subclasses of builtins (a ``str`` Enum, an ``IntEnum``),
which the OpenTelemetry SDK keeps as they are.

Defined in the application's ``__main__``, such a class does not exist in the
sealing process: a value pickled by reference there would kill it with every span
it held.  The parent hands the child builtin values only, and both paths record
the value its builtin base holds.
"""

from __future__ import annotations

import enum
import sys
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest
from exporter_support import (
    Recorder,
    declared_rejections,
    evidence,
    needs_any_value_sdk,
    record_span_ids,
    signing_key,
    span_hex,
    trust_root,
    verified,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.trace import Link, SpanContext, StatusCode

from spanproof.exporter import SpanproofSpanExporter
from spanproof.exporter.normalize import span_to_body


class Model(str, enum.Enum):
    GPT = "gpt-4o"


class Tier(enum.IntEnum):
    GOLD = 3


class Score(float):
    pass


class Blob(bytes):
    pass


class Opaque:
    """Not a builtin, nor a subclass of one."""


_APPLICATION_CLASSES = (Model, Tier, Score, Blob, Opaque)


@pytest.fixture
def in_main(monkeypatch: pytest.MonkeyPatch) -> None:
    """The classes above as an application's ``__main__`` defines them (the
    sealing process has its own ``__main__``, without them)."""
    main = sys.modules["__main__"]
    for cls in _APPLICATION_CLASSES:
        monkeypatch.setattr(cls, "__module__", "__main__")
        monkeypatch.setattr(main, cls.__name__, cls, raising=False)


_VALUES: dict[str, Any] = {
    "model": Model.GPT, "tier": Tier.GOLD, "score": Score(0.5), "blob": Blob(b"\x00\x01"),
    "models": (Model.GPT, Tier.GOLD), "by.model": {Model.GPT: Model.GPT},
    Model.GPT: "key",
}


def _spans() -> tuple[list[ReadableSpan], list[str]]:
    """Evidence spans holding subclass values in every place a value can be (span,
    event and link attributes, names, status, resource, scope), and the span ids."""
    rec = Recorder(resource=Resource({"service.name": "svc", "deploy.model": Model.GPT}))
    tracer = rec.provider.get_tracer("lib", "1.0", attributes={"scope.tier": Tier.GOLD})
    ids = []
    with tracer.start_as_current_span("root"):
        with evidence(rec, "first", **_VALUES) as first:
            first.add_event(Model.GPT, {"event.model": Model.GPT})
            first.set_status(StatusCode.ERROR, Model.GPT)
        ids.append(span_hex(first)[1])
        with tracer.start_as_current_span(
            Model.GPT, attributes={"gen_ai.operation.name": Model.GPT},
            links=[Link(first.get_span_context(), {"link.tier": Tier.GOLD})],
        ) as second:
            pass
        ids.append(span_hex(second)[1])
    return rec.take(), ids


@needs_any_value_sdk
def test_subclass_values_are_recorded_as_their_builtin_values() -> None:
    spans, _ = _spans()
    body = span_to_body(spans[0])
    attributes = body["span"]["attributes"]
    assert attributes["model"] == {"stringValue": "gpt-4o"}
    assert attributes["tier"] == {"intValue": "3"}
    assert attributes["score"] == {"doubleValue": "0.5"}
    assert attributes["blob"] == {"bytesValue": "AAE="}
    assert attributes["models"] == {"arrayValue": [{"stringValue": "gpt-4o"},
                                                   {"intValue": "3"}]}
    assert attributes["gpt-4o"] == {"stringValue": "key"}
    # A mapping's key is its string data too, as an attribute name is (not "Model.GPT").
    assert attributes["by.model"] == {"kvlistValue": {"gpt-4o": {"stringValue": "gpt-4o"}}}
    assert body["span"]["status"]["message"] == "gpt-4o"
    assert body["resource"]["attributes"]["deploy.model"] == {"stringValue": "gpt-4o"}


def test_subclass_values_of_application_classes_do_not_kill_the_sealing_process(
    tmp_path: Path, in_main: None
) -> None:
    spans, ids = _spans()
    local = SpanproofSpanExporter(tmp_path / "local", signing_key=signing_key(),
                                  seal_grace=30.0)
    remote = SpanproofSpanExporter(tmp_path / "remote", signing_key=signing_key(),
                                   seal_grace=30.0, sealing_process=True)
    try:
        for exporter in (local, remote):
            assert exporter.export(spans) is SpanExportResult.SUCCESS
        # The sealing process read the frame and still answers.
        assert remote.force_flush(10_000) is True
        assert remote._remote is not None
    finally:
        remote.shutdown()
        local.shutdown()
    (local_report,) = verified(tmp_path / "local", trust_root(tmp_path))
    (remote_report,) = verified(tmp_path / "remote", trust_root(tmp_path))
    assert sorted(record_span_ids(remote_report)) == sorted(ids)
    assert remote_report.records == local_report.records


def test_a_value_of_an_application_class_is_not_handed_to_the_sealing_process(
    tmp_path: Path, in_main: None
) -> None:
    # Only a span built by hand holds such a value (the SDK turns it into a
    # string); it cannot be certified and is declared, and the process lives on.
    rec = Recorder()
    with rec.tracer.start_as_current_span("root"):
        with evidence(rec, "good") as good:
            pass
    spans = rec.take()
    ctx = spans[0].get_span_context()
    assert ctx is not None
    attributes: Any = {"gen_ai.operation.name": "chat", "obj": Opaque()}
    bad = ReadableSpan("bad-value", context=SpanContext(ctx.trace_id, 0x77, False),
                       parent=spans[-1].get_span_context(), attributes=attributes,
                       resource=spans[0].resource, start_time=1, end_time=2)
    exporter = SpanproofSpanExporter(tmp_path / "out", signing_key=signing_key(),
                                     seal_grace=30.0, sealing_process=True)
    try:
        assert exporter.export([spans[0], bad, spans[1]]) is SpanExportResult.FAILURE
        assert exporter.force_flush(10_000) is True
        assert exporter._remote is not None
    finally:
        exporter.shutdown()
    assert declared_rejections(tmp_path / "out", trust_root(tmp_path)) == (
        1, [span_hex(good)[1]])


class _SaysAnotherInt(int):
    def __int__(self) -> int:
        return 99


class _SaysAnotherFloat(float):
    def __float__(self) -> float:
        return 99.0


class _SaysOtherBytes(bytes):
    def __bytes__(self) -> bytes:
        return b"forged"


class _Key(str):
    """A key equal to nothing but itself, whose string data may be another key's."""

    def __eq__(self, other: object) -> bool:
        return self is other

    def __hash__(self) -> int:
        return id(self)


def _one_span(**attributes: Any) -> tuple[ReadableSpan, str]:
    rec = Recorder()
    with evidence(rec, "step", **attributes) as step:
        pass
    (span,) = rec.take()
    return span, span_hex(step)[1]


@needs_any_value_sdk
@pytest.mark.parametrize("sealing_process", [False, True], ids=["in_process", "sealing_process"])
def test_a_subclass_value_is_its_base_value_not_what_its_conversion_says(
    tmp_path: Path, sealing_process: bool
) -> None:
    # int(), float() and bytes() ask the subclass: 5 was certified as 99, 0.5 as 99,
    # b"real" as b"forged", where protobuf (the Collector's path) sends what the
    # builtin base holds (SPEC §2.4.2).
    span, _ = _one_span(n=_SaysAnotherInt(5), x=_SaysAnotherFloat(0.5),
                        b=_SaysOtherBytes(b"real"), nested=(_SaysAnotherInt(7),))
    out = tmp_path / "out"
    exporter = SpanproofSpanExporter(out, signing_key=signing_key(), seal_grace=30.0,
                                     sealing_process=sealing_process)
    try:
        assert exporter.export([span]) is SpanExportResult.SUCCESS
    finally:
        exporter.shutdown()
    (report,) = verified(out, trust_root(tmp_path))
    assert report.records is not None
    attributes = report.records[0]["span"]["attributes"]
    assert attributes["n"] == {"intValue": "5"}
    assert attributes["x"] == {"doubleValue": "0.5"}
    assert attributes["b"] == {"bytesValue": "cmVhbA=="}  # b"real"
    assert attributes["nested"] == {"arrayValue": [{"intValue": "7"}]}


@pytest.mark.parametrize("sealing_process", [False, True], ids=["in_process", "sealing_process"])
@pytest.mark.parametrize(("keys", "mapping"), [
    ((_Key("amount"), "amount"), dict), ((1, "1"), dict), ((1, "1"), MappingProxyType),
], ids=["str_subclass", "int_and_str", "int_and_str_not_a_dict"])
def test_two_mapping_keys_with_one_string_reject_the_span(
    tmp_path: Path, sealing_process: bool, keys: tuple[Any, Any], mapping: Any
) -> None:
    # {K("amount"): 100, "amount": 999999} was certified as {"amount": 999999}: the
    # same bytes as a span that only ever held 999999. Over OTLP such a span is
    # rejected ("duplicate attribute key"), as SPEC §2.4.2 asks.
    first, second = keys
    good, _ = _one_span()
    ctx = good.get_span_context()
    assert ctx is not None
    # Built by hand: the SDK's own cleaning merges 1 and "1" before an exporter.
    order = mapping({first: 100, second: 999_999})
    attributes: Any = {"gen_ai.operation.name": "chat", "order": order}
    bad = ReadableSpan("order", context=SpanContext(ctx.trace_id, 0x77, False),
                       attributes=attributes, resource=good.resource, start_time=1, end_time=2)
    out = tmp_path / "out"
    exporter = SpanproofSpanExporter(out, signing_key=signing_key(), seal_grace=30.0,
                                     sealing_process=sealing_process)
    try:
        exporter.export([good, bad])
    finally:
        exporter.shutdown()
    assert declared_rejections(out, trust_root(tmp_path)) == (1, [span_hex(good)[1]])
