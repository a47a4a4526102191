"""What a pending span costs the receiver's memory: it is held as the JSON it was
journaled as, made to measure, not as the dict it was decoded to (about three
times the memory) nor in the buffer orjson wrote it to (at least 4 KiB)."""

from __future__ import annotations

import gc
import tracemalloc

from receiver_support import FakeClock, otlp_span, quiet_receiver, request

from spanproof.exporter.otlp import iter_request_spans, otlp_span_to_body

# ~230 characters, as in the benchmark's workload.
TEXT = "The customer reports a duplicate charge on invoice 2291; " * 4
SPANS = 400


def workload_requests() -> list:
    spans = [otlp_span(f"{t + 1:032x}", n, parent=1,
                       extra={"app.prompt": TEXT, "app.completion": TEXT})
             for t in range(SPANS // 4) for n in (2, 3, 4, 5)]  # no roots: nothing is due
    return [request(*spans[i:i + 100]) for i in range(0, SPANS, 100)]


def traced_bytes_per_span(action) -> float:
    """Bytes of Python memory that *action()* leaves allocated, per span of SPANS."""
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        kept = action()
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    del kept
    return held / SPANS


def test_a_pending_span_is_held_as_its_json_not_its_dict(tmp_path):
    requests = workload_requests()
    # What the bodies alone take as dicts.
    as_dicts = traced_bytes_per_span(lambda: [
        otlp_span_to_body(*fields) for req in requests
        for fields in iter_request_spans(req.resource_spans)])
    receiver = quiet_receiver(tmp_path / "out", FakeClock())
    receiver.start()
    try:
        pending = traced_bytes_per_span(
            lambda: [receiver(req.resource_spans) for req in requests])
    finally:
        receiver.shutdown(10)
    # Everything the receiver keeps for a pending span (its JSON, journal key,
    # fingerprint, assembly) takes less than the dict alone would.
    assert pending < as_dicts, f"{pending:.0f} bytes per pending span, {as_dicts:.0f} as dicts"
