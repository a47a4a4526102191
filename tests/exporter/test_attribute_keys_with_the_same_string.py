"""Two span attribute keys that hold the same string.

The OpenTelemetry SDK keeps a ``str`` subclass key as given, so a subclass with its
own ``__eq__`` or ``__hash__`` (a case-insensitive or identity-compared string type)
can sit in a span's attributes beside a plain ``str`` of the same characters.  Both
were written as members of the record's ``attributes`` object: the exporter signed
a record with a duplicate member name, which the verifier's strict parser fails
(SPEC §3.2).  Such a record has no canonical form; the span is now declared
rejected in its trace's bundle, as a span holding a lone surrogate is.  A sealing
process used to get the subclass key as a plain ``str``, and the two keys merged
there, the later value silently kept; it now gets a string equal only to itself, so
the span is declared rejected on that path too.
"""

from __future__ import annotations

from pathlib import Path

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
from opentelemetry.sdk.trace.export import SpanExportResult

from spanproof.exporter.sealing import UNENCODABLE_NOTE
from spanproof.verifier.canonical import canonicalize
from spanproof.verifier.errors import CanonicalizationError


class IdentityKey(str):
    """A string compared by identity: never equal to the plain string it spells."""

    __slots__ = ()

    def __eq__(self, other: object) -> bool:
        return self is other

    def __hash__(self) -> int:
        return id(self)


class Plain(str):
    __slots__ = ()


def test_keys_with_the_same_string_have_no_canonical_form() -> None:
    with pytest.raises(CanonicalizationError):
        canonicalize({"a": "1", IdentityKey("a"): "2"})
    # A str subclass key alone is its string data.
    assert canonicalize({Plain("b"): "1", "a": "2"}) == b'{"a":"2","b":"1"}'


def _trace(rec: Recorder) -> list[str]:
    """A root span, a good child, and a child with two keys spelled "k": the span
    ids of the root and the good child."""
    with rec.tracer.start_as_current_span("root") as root:
        with rec.tracer.start_as_current_span("good", attributes={"k": 1}) as good:
            pass
        with rec.tracer.start_as_current_span("twice") as twice:
            twice.set_attribute("k", 1)
            twice.set_attribute(IdentityKey("k"), 2)
    return [span_hex(good)[1], span_hex(root)[1]]


def test_keys_with_the_same_string_are_declared_rejected_not_signed(tmp_path: Path) -> None:
    rec = Recorder()
    kept = _trace(rec)
    exporter = make_exporter(tmp_path / "out", FakeClock(), select_all=True)
    assert exporter.export(rec.take()) is SpanExportResult.SUCCESS
    exporter.shutdown()
    assert_declared_rejected(tmp_path / "out", tmp_path, kept, note=UNENCODABLE_NOTE.format(1))


def test_keys_with_the_same_string_are_declared_rejected_by_the_evidence_processor(
    tmp_path: Path,
) -> None:
    with processor_recorder(tmp_path / "out") as rec:
        kept = _trace(rec)
    assert_declared_rejected(tmp_path / "out", tmp_path, kept, note=UNENCODABLE_NOTE.format(1))


def test_keys_with_the_same_string_are_declared_rejected_by_the_sealing_process(
    tmp_path: Path,
) -> None:
    # Pickled for the child, the subclass key became a plain "k" and the two merged:
    # the bundle verified OK without the first value, and declared nothing.
    rec = Recorder()
    kept = _trace(rec)
    export_through_a_sealing_process(tmp_path / "out", rec.take())
    assert_declared_rejected(tmp_path / "out", tmp_path, kept, note=UNENCODABLE_NOTE.format(1))


def test_one_key_of_a_string_type_with_its_own_equality_is_certified_by_the_sealing_process(
    tmp_path: Path,
) -> None:
    rec = Recorder()
    with rec.tracer.start_as_current_span(
            "alone", attributes={IdentityKey("k"): IdentityKey("v")}) as alone:
        pass
    export_through_a_sealing_process(tmp_path / "out", rec.take())
    (report,) = verified(tmp_path / "out", trust_root(tmp_path))
    assert report.records is not None
    (record,) = report.records
    assert record["span"]["spanId"] == span_hex(alone)[1]
    assert record["span"]["attributes"] == {"k": {"stringValue": "v"}}
