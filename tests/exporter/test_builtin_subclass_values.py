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
