"""Span, event and scope names, versions, schema URLs that are not strings.

The OpenTelemetry SDK keeps whatever it is given as a span name
(``start_span(None)``, ``update_name(7)``), an event name (``add_event(None)``), an
instrumentation scope's name, version or schema URL (``get_tracer(123)``) and a
resource's schema URL.  A record's are strings (SPEC §2.1).  Such a value went into
the record as it was: the verifier failed the signed bundle (an int or ``None`` is
not a string), or, for a span name, sizing the body raised inside ``export()`` and
the spans after it in the batch were lost undeclared (in a sealing process, the
process died).  Now the span is not certified but declared rejected in its trace's
bundle, on every path, and a ``str`` subclass (a ``str`` Enum) is its string data.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from exporter_support import (
    FakeClock,
    Recorder,
    assert_declared_rejected,
    export_through_a_sealing_process,
    make_exporter,
    processor_recorder,
    span_hex,
    trust_root,
    verified,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult

from spanproof.exporter.normalize import span_to_body


class Plain(enum.Enum):
    NAME = "chat"


class Named(str, enum.Enum):
    NAME = "chat"


def _name(rec: Recorder, name: Any) -> None:
    with rec.tracer.start_as_current_span(name):
        pass


def _renamed(rec: Recorder, name: Any) -> None:
    with rec.tracer.start_as_current_span("odd") as span:
        span.update_name(name)


def _event_name(rec: Recorder, name: Any) -> None:
    with rec.tracer.start_as_current_span("odd") as span:
        span.add_event(name)


ODD: dict[str, tuple[Callable[[Recorder, Any], None], Any]] = {
    "span name None": (_name, None),
    "span name int": (_name, 123),
    "span name list": (_name, ["chat"]),
    "span name Enum": (_name, Plain.NAME),
    "updated name None": (_renamed, None),
    "event name None": (_event_name, None),
    "event name int": (_event_name, 7),
}


def _trace(rec: Recorder, odd: Callable[[Recorder, Any], None], value: Any) -> list[str]:
    """A root span, a child, the odd span, and a child after it: the span ids of all
    but the odd one."""
    with rec.tracer.start_as_current_span("root") as root:
        with rec.tracer.start_as_current_span("before") as before:
            pass
        odd(rec, value)
        with rec.tracer.start_as_current_span("after") as after:
            pass
    return [span_hex(s)[1] for s in (before, after, root)]


@pytest.mark.parametrize("case", list(ODD))
def test_a_name_that_is_not_a_string_is_declared_rejected_not_signed(
    tmp_path: Path, case: str
) -> None:
    rec = Recorder()
    kept = _trace(rec, *ODD[case])
    exporter = make_exporter(tmp_path / "out", FakeClock(), select_all=True)
    assert exporter.export(rec.take()) is SpanExportResult.FAILURE
    exporter.shutdown()
    assert_declared_rejected(tmp_path / "out", tmp_path, kept)


@pytest.mark.parametrize("case", ["span name None", "event name int"])
def test_a_name_that_is_not_a_string_is_declared_rejected_by_the_sealing_process(
    tmp_path: Path, case: str
) -> None:
    rec = Recorder()
    kept = _trace(rec, *ODD[case])
    export_through_a_sealing_process(tmp_path / "out", rec.take())
    assert_declared_rejected(tmp_path / "out", tmp_path, kept)


@pytest.mark.parametrize("case", ["span name int", "event name None"])
def test_a_name_that_is_not_a_string_is_declared_rejected_by_the_evidence_processor(
    tmp_path: Path, case: str
) -> None:
    with processor_recorder(tmp_path / "out") as rec:
        kept = _trace(rec, *ODD[case])
    assert_declared_rejected(tmp_path / "out", tmp_path, kept)


@pytest.mark.parametrize("where", ["scope name", "scope version", "scope schema URL",
                                   "resource schema URL"])
def test_a_scope_or_resource_string_that_is_not_a_string_rejects_its_spans(
    tmp_path: Path, where: str
) -> None:
    provider = TracerProvider(resource=Resource(
        {"service.name": "svc"}, schema_url=5 if where == "resource schema URL" else None))
    rec = Recorder()
    provider.add_span_processor(SimpleSpanProcessor(rec.memory))
    tracer = provider.get_tracer(
        123 if where == "scope name" else "odd",  # type: ignore[arg-type]
        456 if where == "scope version" else None,  # type: ignore[arg-type]
        schema_url=789 if where == "scope schema URL" else None,  # type: ignore[arg-type]
    )
    with rec.tracer.start_as_current_span("root") as root:
        with tracer.start_as_current_span("odd-1"):
            pass
        with tracer.start_as_current_span("odd-2"):
            pass
    exporter = make_exporter(tmp_path / "out", FakeClock(), select_all=True)
    assert exporter.export(rec.take()) is SpanExportResult.FAILURE
    exporter.shutdown()
    assert_declared_rejected(tmp_path / "out", tmp_path, [span_hex(root)[1]], rejected=2)


def test_a_str_enum_name_is_its_string_data(tmp_path: Path) -> None:
    rec = Recorder()
    with rec.tracer.start_as_current_span(Named.NAME) as span:
        span.add_event(Named.NAME)
    (ended,) = rec.spans()
    body = span_to_body(ended)["span"]
    assert type(body["name"]) is str and body["name"] == "chat"
    assert type(body["events"][0]["name"]) is str and body["events"][0]["name"] == "chat"
    exporter = make_exporter(tmp_path / "out", FakeClock(), select_all=True)
    assert exporter.export(rec.take()) is SpanExportResult.SUCCESS
    exporter.shutdown()
    (report,) = verified(tmp_path / "out", trust_root(tmp_path))
    assert report.records is not None
    assert report.records[0]["span"]["name"] == "chat"


def test_a_missing_scope_or_resource_string_is_empty() -> None:
    rec = Recorder()
    tracer = rec.provider.get_tracer("odd", None, schema_url=None)
    with tracer.start_as_current_span("x"):
        pass
    (ended,) = rec.spans()
    body = span_to_body(ended)
    assert body["scope"]["version"] == body["scope"]["schemaUrl"] == ""
    assert body["span"]["status"]["message"] == ""

