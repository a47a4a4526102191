"""SPEC Appendix A names what Python's OTLP exporter sends differently from what the
SDK exporter certifies.  These tests hold both sides to it, so the appendix is
revisited when either changes."""

from __future__ import annotations

import enum
import logging

import pytest

from spanproof.exporter.normalize import typed_attributes

otlp_common = pytest.importorskip("opentelemetry.exporter.otlp.proto.common._internal")


class K(str, enum.Enum):
    A = "a"


def test_appendix_a_2_an_integer_beyond_int64_is_left_out_by_otlp_and_certified_by_spanproof(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.ERROR):
        sent = otlp_common._encode_attributes({"big": 2**64, "small": 1})
    assert [kv.key for kv in sent] == ["small"]
    assert typed_attributes({"big": 2**64})["big"] == {"stringValue": str(2**64)}


def test_appendix_a_3_a_str_enum_mapping_key_is_its_name_to_otlp_and_its_data_to_spanproof(
) -> None:
    (sent,) = otlp_common._encode_attributes({"m": {K.A: 1}})
    assert [kv.key for kv in sent.value.kvlist_value.values] == ["K.A"]
    assert typed_attributes({"m": {K.A: 1}})["m"] == {"kvlistValue": {"a": {"intValue": "1"}}}
