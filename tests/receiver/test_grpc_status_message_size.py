"""A gRPC status message travels in a trailer (``grpc-message``, percent-encoded),
which clients bound with their metadata: gRPC C-core's 8 KiB by default.  A longer
one turned the receiver's ``INVALID_ARGUMENT`` into ``RESOURCE_EXHAUSTED`` at the
client, which OpenTelemetry's gRPC exporters retry, and lost its ``RetryInfo``."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from spanproof.exporter.otlp_server import (
    GRPC_STATUS_MESSAGE_BYTES,
    GrpcServer,
    InvalidRequest,
    Unavailable,
)

# What a rejection of three spans with deeply nested attributes said: each reason
# names every key down to the defective value (up to 64, each up to 100 characters).
LONG = "3 evidence span(s) rejected: " + "; ".join(
    f"span {n:016x}" + ("['" + "q" * 100 + "']") * 40 + ": duplicate attribute key 'd'"
    for n in range(3)
)


class _Refusing:
    def __init__(self) -> None:
        self.error: Exception = InvalidRequest(LONG)

    def __call__(self, resource_spans: Any) -> Any:
        raise self.error


@pytest.fixture
def refusing() -> Iterator[tuple[_Refusing, Any]]:
    ingest = _Refusing()
    server = GrpcServer("127.0.0.1:0", ingest)
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    try:
        yield ingest, trace_service_pb2_grpc.TraceServiceStub(channel)
    finally:
        channel.close()
        server.stop(0)


def _percent_encoded_length(text: str) -> int:
    # gRPC's percent-encoding of grpc-message: bytes outside 0x20-0x7E, and '%'.
    return sum(1 if 0x20 <= b <= 0x7E and b != 0x25 else 3 for b in text.encode("utf-8"))


@pytest.mark.parametrize("text", [LONG, LONG.replace("q", "ü")], ids=["ascii", "non-ascii"])
def test_grpc_status_message_longer_than_a_client_takes_is_cut_to_fit(
    refusing: tuple[_Refusing, Any], text: str
) -> None:
    ingest, stub = refusing
    ingest.error = InvalidRequest(text)
    assert _percent_encoded_length(text) > 8192
    with pytest.raises(grpc.RpcError) as err:
        stub.Export(trace_service_pb2.ExportTraceServiceRequest(), timeout=10)
    # Was RESOURCE_EXHAUSTED: "received metadata size exceeds soft limit".
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = err.value.details()
    assert details.startswith(text[:200])
    assert "characters cut" in details
    assert _percent_encoded_length(details) <= GRPC_STATUS_MESSAGE_BYTES


def test_grpc_unavailable_with_a_long_message_keeps_its_retry_info(
    refusing: tuple[_Refusing, Any],
) -> None:
    ingest, stub = refusing
    ingest.error = Unavailable("journal write failed: " + "ü" * 5000, 2.0)
    with pytest.raises(grpc.RpcError) as err:
        stub.Export(trace_service_pb2.ExportTraceServiceRequest(), timeout=10)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    trailers = dict(err.value.trailing_metadata())
    status = status_pb2.Status.FromString(trailers["grpc-status-details-bin"])
    assert status.message == err.value.details()
    info = error_details_pb2.RetryInfo()
    assert status.details[0].Unpack(info)
    assert info.retry_delay.seconds == 2


def test_grpc_status_message_that_fits_is_unchanged(refusing: tuple[_Refusing, Any]) -> None:
    ingest, stub = refusing
    text = "span 0000000000000001: duplicate attribute key 'ü%'"
    ingest.error = InvalidRequest(text)
    with pytest.raises(grpc.RpcError) as err:
        stub.Export(trace_service_pb2.ExportTraceServiceRequest(), timeout=10)
    assert err.value.details() == text
