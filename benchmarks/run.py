"""spanproof performance harness.

    python -m benchmarks.run [--quick] [--reps N] [--app-reps N] [--traces N]
                             [--only SECTION,...] [--work-dir DIR]

Alternates the configurations within one run, repeats each ``--reps`` times (the
``app`` section ``--app-reps`` times, 3 x ``--reps`` unless given), and prints
medians and ratios against baselines measured in the same run.  Sections:

* ``app``: app-thread spans/s (time for the application thread to create and end
  the spans) with a ``BatchSpanProcessor`` over a no-op exporter, the stock
  OTLP/gRPC exporter to a local sink process, spanproof with 100% of spans
  selected, and with 10% selected, each sealing in the application's process (the
  default), in a sealing process (``sealing_process=True``) and in two that share
  the traces (``sealing_process=2``) (plus, for
  information only, spanproof at 100% writing bundles without fsync, to separate
  the disk's flush latency, an exporter that only selects at 10%, the floor
  for any exporter that looks at every span, the sealing process at 10% with every
  span frame built and then dropped instead of written, so that the child has
  nothing to seal (the application's own cost of the mode, without the child's
  work beside it; app-thread only), and the durable ``EvidenceSpanProcessor`` at
  100%, in place of the ``BatchSpanProcessor``);
* ``e2e``: end-to-end spans/s for the same (until every span is acknowledged by
  the sink, or every bundle is sealed on disk);
* ``canonical``: RFC 8785 records/s, ours against the ``rfc8785`` package;
* ``seal``: sealing cost per trace (chain, statement, signature) for traces of
  1, 5 and 50 spans, and the Ed25519 signature's share of it;
* ``seal-bursts``: CPU per span sealing the same distinct 5-span traces in bursts of 7
  with a 20 ms sleep between (as a sealing process does at 10% selected, between the
  application's batches), against sealing them all in one go, alternating (information
  only: what work in short bursts costs on this machine);
* ``verify``: records/s and peak RSS verifying one trace of 100,000 records;
* ``verify-1m``: the same for 1,000,000 records (written once, streamed, into a
  temporary directory; the verifier's peak RSS is its wrapper's
  ``RUSAGE_CHILDREN`` ``ru_maxrss``);
* ``verify-many``: bundles/s verifying a directory of 4,000 bundles of 5-span
  traces with ``spanproof verify``, in one process (``--jobs 1``) against the
  default (one worker process per usable CPU), each run a fresh command;
* ``receiver``: certified spans/s through ``spanproof receiver`` over OTLP/gRPC
  (prebuilt requests of 5-span evidence traces, 4 client threads), sent directly
  and through ``rotel-agent``, and through ``rotel-agent`` to a receiver with two
  seal workers (``--sealing-processes 2``); timed until every trace's bundle is on
  disk, with each process's CPU per span meanwhile (from ``/proc``); five times the
  run's traces (10,000 by default), so that rotel's batches of up to 8,192 spans
  do not make the figure mostly the time to fill and drain the pipeline;
* ``receiver-cost``: the receiver's cost per span in this process, without a
  transport: ingesting (decode, select, normalize, fingerprint, journal with fsync)
  and sealing and writing, separately;
* ``witness``: receipts/s for sealed bundles of 5-span traces, through the
  producer-side submitter to ``spanproof witness serve`` on loopback, which pins the
  producer's key (4 requests in flight of up to 16 submissions, the default,
  against 4 of one and one of one, and the default verifying each receipt), with the
  producer's CPU per submission, and the witness's own ``submit()`` without HTTP.
  It runs last: the submitter deletes each queue file once its bundle has a receipt.

Every file of the run stays under one directory until the run ends, and a full
run first waits (at most ``SETTLE_LIMIT_S``) until creating a file is quick; the
header and the last line print what creating a file cost (see ``main``).

After the figures it prints PASS or MISS for each target of the performance
work.  Ratios are paired: the median, over the rounds, of each round's figure
against the baseline measured in the same round (this machine's speed drifts by
tens of percent between rounds; a ratio of two medians would pair different
rounds).  For the app section it also prints where the middle half of the
per-round ratios fell (first to third quartile), and for its targets how many rounds
met them: a median near a target can fall either side of it between runs.
``--quick`` uses tiny sizes (the test suite runs it so the harness cannot rot; its
figures mean nothing).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import random
import shutil
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

NO_FSYNC = "spanproof-100%-nofsync"
SELECTION_ONLY = "selection-only-10%"
DURABLE = "evidence-processor-100%"  # EvidenceSpanProcessor instead of the batch processor
UNSENT = "spanproof-10%+process-unsent"  # the sealing process receives no span
PROCESS = "+process"  # configuration suffix: sealing_process=True
PROCESSES = "+2processes"  # configuration suffix: sealing_process=2
_MIB = 1 << 20
LONG_TEXT = "The customer reports a duplicate charge on invoice 2291; " * 4  # ~230 bytes


class NoopExporter(SpanExporter):
    """Accepts and discards spans."""

    def export(self, spans: Sequence[Any]) -> SpanExportResult:
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass


def workload(provider: TracerProvider, traces: int, selected_every: int) -> int:
    """Create *traces* traces of a root and four children; return the span count.

    Every ``selected_every``-th trace carries GenAI attributes (evidence); the others
    carry attributes of the same size that select nothing.
    """
    tracer = provider.get_tracer("bench", "1.0")
    for i in range(traces):
        evidence = i % selected_every == 0
        op_key = "gen_ai.operation.name" if evidence else "app.operation.name"
        with tracer.start_as_current_span("handle_case", attributes={op_key: "workflow"}):
            for step in ("classify", "retrieve", "policy", "draft"):
                with tracer.start_as_current_span(
                    f"chat {step}",
                    attributes={
                        op_key: "chat",
                        "gen_ai.request.model": "local-model-1",
                        "gen_ai.usage.input_tokens": 412,
                        "gen_ai.usage.output_tokens": 96,
                        "app.prompt": LONG_TEXT,
                        "app.completion": LONG_TEXT,
                    },
                ):
                    pass
    return traces * 5


class SelectionOnlyExporter(SpanExporter):
    """Runs only the exporter's per-span selection and root tracking, then discards
    the spans: the floor for any exporter that looks at every span in Python
    (information only)."""

    def __init__(self) -> None:
        from spanproof.exporter.selection import AttributeSelector

        self._selector = AttributeSelector()

    def export(self, spans: Sequence[Any]) -> SpanExportResult:
        from spanproof.exporter._exporter import select_spans

        select_spans(self._selector, spans, self._dropped)
        return SpanExportResult.SUCCESS

    def _dropped(self, span: Any, count: object) -> None:
        """As the exporter's, called for a span not selected that lost attributes."""

    def shutdown(self) -> None:
        pass


class Sink:
    """A local OTLP/gRPC sink in a child process."""

    def __enter__(self) -> Sink:
        self._dir = tempfile.mkdtemp(prefix="spanproof-bench-")
        port_file = os.path.join(self._dir, "port")
        here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks._sink", port_file],
            stdin=subprocess.PIPE, cwd=here,
        )
        deadline = time.monotonic() + 30
        while not os.path.exists(port_file) or not open(port_file).read():
            if time.monotonic() > deadline:
                raise RuntimeError("sink did not start")
            time.sleep(0.05)
        self.endpoint = f"127.0.0.1:{open(port_file).read()}"
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._proc.stdin is not None
        self._proc.stdin.close()
        self._proc.wait(10)


class _UnsyncedSink:
    """Writes bundle files without fsync: for the informational ``no-fsync`` row
    only, which shows what end-to-end costs apart from the disk's flush latency."""

    def __init__(self, directory: str) -> None:
        self._dir = directory

    def write(self, bundle: Any) -> str:
        path = os.path.join(self._dir, bundle.file_name)
        with open(path + ".tmp", "wb") as f:
            f.write(bundle.data)
        os.replace(path + ".tmp", path)
        return path


_KEY: Any = None


def _key() -> Any:
    """The app section's signing key: one, from a fixed seed (no key files per run)."""
    global _KEY
    if _KEY is None:
        from spanproof.exporter.keys import SigningKey

        _KEY = SigningKey.from_seed(bytes(32))
    return _KEY


def _make(config: str, sink: Sink, out_dir: str) -> tuple[SpanExporter, int]:
    if config == "noop":
        return NoopExporter(), 1
    if config == SELECTION_ONLY:
        return SelectionOnlyExporter(), 10
    if config == "otlp-grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter(endpoint=sink.endpoint, insecure=True), 1
    from spanproof.exporter import SpanproofSpanExporter

    every = 10 if config.startswith("spanproof-10%") else 1
    bundle_sink = _UnsyncedSink(out_dir) if config == NO_FSYNC else None
    processes = (2 if config.endswith(PROCESSES)
                 else 1 if config.endswith(PROCESS) or config == UNSENT else 0)
    exporter = SpanproofSpanExporter(output_dir=out_dir, seal_grace=0.05, signing_key=_key(),
                                     sink=bundle_sink, sealing_process=processes)
    if processes and exporter._remote is None:
        raise RuntimeError("the sealing process did not start")
    if config == UNSENT:
        assert exporter._remote is not None
        (process,) = exporter._remote.processes
        _drop_span_frames(process)
    return exporter, every


def _drop_span_frames(remote: Any) -> None:
    """Make *remote* (a ``SealingProcess``) build every span frame in full and then
    drop it instead of writing it to the child, which so has nothing to seal; other
    messages (flush, shutdown) still reach it."""
    send_spans, write_locked = remote.send_spans, remote._write_locked
    sending = threading.local()  # a flush from another thread meanwhile still goes

    def send_spans_dropped(spans: Sequence[Any], roots: Sequence[str]) -> None:
        sending.spans = True
        try:
            send_spans(spans, roots)
        finally:
            sending.spans = False

    def write_unless_dropping(frame: bytes) -> None:
        if not getattr(sending, "spans", False):
            write_locked(frame)

    remote.send_spans = send_spans_dropped
    remote._write_locked = write_unless_dropping


def _span_processor(config: str, sink: Sink, out_dir: str,
                    queue: int) -> tuple[SpanProcessor, int]:
    """The configuration's span processor, and which traces carry evidence (every
    n-th).  A queue as large as the run: nothing is dropped, so end-to-end counts all."""
    if config == DURABLE:
        from spanproof.exporter import EvidenceSpanProcessor

        return EvidenceSpanProcessor(out_dir, seal_grace=0.05, signing_key=_key(),
                                     queue_size=queue), 1
    exporter, every = _make(config, sink, out_dir)
    return BatchSpanProcessor(exporter, max_queue_size=queue, max_export_batch_size=512), every


def run_once(config: str, sink: Sink, traces: int, queue: int) -> tuple[float, float]:
    """Return (app-thread spans/s, end-to-end spans/s) for one configuration."""
    out_dir = tempfile.mkdtemp(prefix="spanproof-bench-out-")
    try:
        processor, every = _span_processor(config, sink, out_dir, queue)
        provider = TracerProvider(resource=Resource.create({"service.name": "bench"}))
        provider.add_span_processor(processor)
        gc.collect()
        start = time.perf_counter()
        spans = workload(provider, traces, every)
        app_done = time.perf_counter()
        provider.shutdown()  # flushes the processor, then shuts the exporter down
        end = time.perf_counter()
        _check_bundles(config, out_dir, len(range(0, traces, every)))
        return spans / (app_done - start), spans / (end - start)
    finally:
        # Let the disk settle (this run's writeback), so the next configuration
        # does not pay for this one's files.  The files stay until the harness ends.
        os.sync()


def _check_bundles(config: str, out_dir: str, evidence_traces: int) -> None:
    """Check, after the timed window, that a configuration that certifies had every
    evidence trace's bundle on disk when its end-to-end time was taken: a figure that
    did not wait for them would not be end-to-end.

    Raises:
        RuntimeError: another number of bundles is there.
    """
    if config in ("noop", "otlp-grpc", SELECTION_ONLY, UNSENT):
        return  # nothing is certified
    found = sum(1 for name in os.listdir(out_dir) if name.endswith(".spanproof.json"))
    if found != evidence_traces:
        raise RuntimeError(f"{config}: {found} bundle(s) on disk when its run ended, not "
                           f"{evidence_traces}: its end-to-end figure did not wait for them")


def target_met(measured: float, needed: float, unit: str) -> bool:
    """Whether *measured* meets a target: below *needed* for unit ``<``, else at
    least *needed* (a ratio ``x``, or a rate ``>``)."""
    return measured < needed if unit == "<" else measured >= needed


def _round_ratios(values: Sequence[float], baseline: Sequence[float]) -> list[float]:
    """Each round's value against the baseline measured in the same round."""
    return [v / b for v, b in zip(values, baseline, strict=True)]


def _paired_ratio(values: Sequence[float], baseline: Sequence[float]) -> float:
    """The median of per-round ratios, so a machine whose speed drifts between
    rounds does not pair one round's value with another round's baseline."""
    return statistics.median(_round_ratios(values, baseline))


def _middle_half(ratios: Sequence[float]) -> tuple[float, float]:
    """The first and third quartiles of *ratios*: where the middle half of the
    rounds fell."""
    if len(ratios) < 2:
        return ratios[0], ratios[0]
    q1, _, q3 = statistics.quantiles(ratios, n=4, method="inclusive")
    return q1, q3


class AppResult(NamedTuple):
    """One configuration of the app section: median spans/s, and its per-round
    ratios to the no-op exporter (app-thread) and the OTLP exporter (end-to-end)."""

    app: float
    e2e: float
    app_ratios: list[float]
    e2e_ratios: list[float]

    @property
    def app_ratio(self) -> float:
        """The median of the app-thread ratios."""
        return statistics.median(self.app_ratios)

    @property
    def e2e_ratio(self) -> float:
        """The median of the end-to-end ratios."""
        return statistics.median(self.e2e_ratios)


def section_app(reps: int, traces: int) -> dict[str, AppResult]:
    """Per configuration: median app-thread and end-to-end spans/s, and the
    per-round ratios against the no-op exporter (app-thread) and the OTLP exporter
    (end-to-end)."""
    configs = ["noop", "otlp-grpc", "spanproof-100%", "spanproof-10%",
               "spanproof-100%" + PROCESS, "spanproof-10%" + PROCESS,
               "spanproof-100%" + PROCESSES, "spanproof-10%" + PROCESSES, NO_FSYNC,
               SELECTION_ONLY, UNSENT, DURABLE]
    app: dict[str, list[float]] = {c: [] for c in configs}
    e2e: dict[str, list[float]] = {c: [] for c in configs}
    with Sink() as sink:
        for r in range(reps):
            # Alternate within the run, each round in its own (seeded) random order:
            # a configuration can leave work behind (a process exiting, memory to
            # return), and in a fixed cyclic order each would always follow the same
            # one and carry that one's after-effects in every round.
            order = list(configs)
            random.Random(r).shuffle(order)
            for config in order:
                a, e = run_once(config, sink, traces, queue=max(traces * 5 + 1, 512))
                app[config].append(a)
                e2e[config].append(e)
    return {
        c: AppResult(statistics.median(app[c]), statistics.median(e2e[c]),
                     _round_ratios(app[c], app["noop"]), _round_ratios(e2e[c], e2e["otlp-grpc"]))
        for c in configs
    }


def section_canonical(reps: int, n: int) -> tuple[float, float, float]:
    """Median records/s of ours and of ``rfc8785``, and the median per-round ratio."""
    import rfc8785

    from spanproof.verifier.canonical import canonicalize

    records = [_sample_record(i) for i in range(n)]
    ours: list[float] = []
    theirs: list[float] = []
    for round_ in range(reps):
        # The two in a seeded random order each round, as the app section does.
        pair = [(canonicalize, ours), (rfc8785.dumps, theirs)]
        random.Random(round_).shuffle(pair)
        for fn, sink_list in pair:
            start = time.perf_counter()
            for r in records:
                fn(r)
            sink_list.append(n / (time.perf_counter() - start))
    for i, r in enumerate(records):
        if canonicalize(r) != rfc8785.dumps(r):  # not an assert: python -O skips those
            raise RuntimeError(f"record {i}: canonical bytes differ from rfc8785's")
    return statistics.median(ours), statistics.median(theirs), _paired_ratio(ours, theirs)


def _sample_record(i: int) -> dict[str, Any]:
    tid = f"{i + 1:032x}"
    return {
        "mediaType": "application/vnd.spanproof.cer.v1+json",
        "seq": str(i),
        "prev": "sha256:" + "ab" * 32,
        "span": {
            "traceId": tid, "spanId": f"{i + 1:016x}", "parentSpanId": "", "traceState": "",
            "name": "chat classify", "kind": "SPAN_KIND_CLIENT",
            "startTimeUnixNano": "1764331200000000000", "endTimeUnixNano": "1764331200500000000",
            "status": {"code": "STATUS_CODE_UNSET", "message": ""},
            "attributes": {
                "gen_ai.operation.name": {"stringValue": "chat"},
                "gen_ai.request.model": {"stringValue": "local-model-1"},
                "gen_ai.usage.input_tokens": {"intValue": "412"},
                "app.prompt": {"stringValue": LONG_TEXT},
                "app.completion": {"stringValue": LONG_TEXT + "é\u2028"},
            },
            "droppedAttributesCount": "0", "events": [], "droppedEventsCount": "0",
            "links": [], "droppedLinksCount": "0",
        },
        "resource": {"attributes": {"service.name": {"stringValue": "bench"}},
                     "droppedAttributesCount": "0", "schemaUrl": ""},
        "scope": {"name": "bench", "version": "1.0", "attributes": {},
                  "droppedAttributesCount": "0", "schemaUrl": ""},
    }


def _trace_bodies(trace_id: str, size: int) -> list[dict[str, Any]]:
    """The record bodies of a trace of *size* sample spans."""
    bodies = []
    for i in range(size):
        r = _sample_record(i)
        r["span"]["traceId"] = trace_id
        bodies.append({"span": r["span"], "resource": r["resource"], "scope": r["scope"]})
    return bodies


def section_seal(reps: int, n: int) -> dict[int, tuple[float, float]]:
    """Sealing cost per trace (one bundle: chain, statement, Ed25519 signature) for
    traces of 1, 5 and 50 spans: median microseconds per trace, and the signature's
    share of it."""
    from datetime import datetime, timezone

    from spanproof.exporter.keys import SigningKey
    from spanproof.exporter.sealing import ChainPosition, seal
    from spanproof.verifier.statement import Producer

    key = SigningKey.from_seed(bytes(32))
    producer = Producer("bench", "0", "00")
    at = datetime(2026, 1, 1, tzinfo=timezone.utc)
    result = {}
    for size in (1, 5, 50):
        tid = f"{size:032x}"
        bodies = _trace_bodies(tid, size)
        position = ChainPosition.genesis(tid)
        seal_us, sign_us = [], []
        for _ in range(reps):
            start = time.perf_counter()
            for _ in range(n):
                seal(tid, bodies, position, signer=key, producer=producer, sealed_at=at,
                     reason="root_ended")
            seal_us.append((time.perf_counter() - start) / n * 1e6)
            start = time.perf_counter()
            for _ in range(n):
                key.sign_envelope(b"x" * 700)  # a statement is ~700 bytes
            sign_us.append((time.perf_counter() - start) / n * 1e6)
        result[size] = (statistics.median(seal_us), statistics.median(sign_us))
    return result


#: The seal-bursts section: traces sealed per burst, and the sleep between bursts.
BURST_TRACES = 7
BURST_SLEEP_S = 0.02


def section_seal_bursts(reps: int, n: int) -> tuple[float, float, float]:
    """CPU microseconds per span sealing *n* distinct 5-span traces in bursts of
    ``BURST_TRACES`` with ``BURST_SLEEP_S`` between them, and in one go (medians), and
    the median of each round's ratio of the two."""
    from datetime import datetime, timezone

    from spanproof.exporter.keys import SigningKey
    from spanproof.exporter.sealing import ChainPosition, seal
    from spanproof.verifier.statement import Producer

    key = SigningKey.from_seed(bytes(32))
    producer = Producer("bench", "0", "00")
    at = datetime(2026, 1, 1, tzinfo=timezone.utc)
    traces = [(f"{i:032x}", _trace_bodies(f"{i:032x}", 5)) for i in range(n)]

    def cpu_per_span(burst: int, sleep: float) -> float:
        spent = 0.0
        for first in range(0, n, burst):
            start = time.thread_time()
            for tid, bodies in traces[first:first + burst]:
                seal(tid, bodies, ChainPosition.genesis(tid), signer=key, producer=producer,
                     sealed_at=at, reason="root_ended")
            spent += time.thread_time() - start
            time.sleep(sleep)
        return spent / (n * 5) * 1e6

    bursts: list[float] = []
    whole: list[float] = []
    for _ in range(reps):
        bursts.append(cpu_per_span(BURST_TRACES, BURST_SLEEP_S))
        whole.append(cpu_per_span(n, 0.0))
    return statistics.median(bursts), statistics.median(whole), _paired_ratio(bursts, whole)


def write_trace_bundle(path: str, records: int, key: Any) -> None:
    """Write one signed bundle of *records* records, streaming (no record is kept).

    The records go to a side file while their chain is hashed; once the head is
    known the statement is signed and the bundle is framed around the side file.
    """
    from datetime import datetime, timezone

    from spanproof.exporter.sealing import build_record
    from spanproof.verifier.bundle import iter_bundle_chunks
    from spanproof.verifier.canonical import canonicalize
    from spanproof.verifier.records import genesis_hash, record_hash
    from spanproof.verifier.statement import Completeness, Producer, Statement

    tid = "0af7651916cd43dd8448eb211c80319c"
    start = head = genesis_hash(tid)
    side = path + ".records"
    with open(side, "wb") as f:
        for i in range(records):
            r = _sample_record(i)
            r["span"]["traceId"] = tid
            raw = canonicalize(build_record(r, i, head))
            head = record_hash(raw)
            f.write(raw + b"\n")
    statement = Statement(
        trace_id=tid, segment_index=0, first_seq=0, start=start, previous_statement="",
        record_count=records, head=head, seal_reason="shutdown",
        sealed_at=datetime(2026, 1, 1, tzinfo=timezone.utc),
        producer=Producer("bench", "0", "00"), completeness=Completeness(),
    )
    envelope = key.sign_envelope(statement.to_payload())
    with open(side, "rb") as lines, open(path, "wb") as out:
        for chunk in iter_bundle_chunks(envelope, (line[:-1] for line in lines)):
            out.write(chunk)
    os.unlink(side)


# The verifier runs in a child of a small wrapper process, whose
# RUSAGE_CHILDREN.ru_maxrss is then the verifier's peak RSS alone (the harness's own
# children, such as the OTLP sink, and its own memory cannot leak into the figure).
_VERIFY_CHILD = """
import sys, time
from spanproof.verifier import TrustRoot, check_bundle
trust = TrustRoot.from_pem_files([sys.argv[2]])
start = time.perf_counter()
report = check_bundle(sys.argv[1], trust)
elapsed = time.perf_counter() - start
if not report.ok:  # not an assert: python -O would time a failed verification
    raise SystemExit(f"verification failed: {report.reason}")
print(elapsed)
"""
_RSS_WRAPPER = """
import resource, subprocess, sys
out = subprocess.run([sys.executable, "-c", sys.argv[1], *sys.argv[2:]], check=True,
                     capture_output=True, text=True).stdout
print(out.strip(), resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""


def section_verify(records: int) -> tuple[float, float, float]:
    """Write one trace of *records* records, then verify it in a child process.

    Returns (records/s, the child's peak RSS in MiB, seconds spent writing the bundle).
    """
    from spanproof.exporter.keys import SigningKey

    key = SigningKey.from_seed(bytes(32))
    d = tempfile.mkdtemp(prefix="spanproof-bench-verify-")
    path = os.path.join(d, "t.spanproof.json")
    start = time.perf_counter()
    write_trace_bundle(path, records, key)
    written = time.perf_counter() - start
    pub = os.path.join(d, "k.pub")
    with open(pub, "wb") as f:
        f.write(key.public_pem())
    out = subprocess.run(
        [sys.executable, "-c", _RSS_WRAPPER, _VERIFY_CHILD, path, pub],
        capture_output=True, text=True, check=True,
    ).stdout.split()
    return records / float(out[0]), int(out[1]) * 1024 / _MIB, written  # ru_maxrss: KiB


def section_verify_many(reps: int, bundles: int) -> tuple[float, float, float, int]:
    """Seal *bundles* 5-span traces into one directory, then verify it with
    ``spanproof verify``, one process (``--jobs 1``) against the default (a worker
    per usable CPU), alternating, each run a fresh command.

    Returns (bundles/s with one process, bundles/s by default, the median of the
    per-round ratios, the default's worker count).
    """
    from spanproof.exporter.keys import SigningKey
    from spanproof.verifier._jobs import workers_for

    key = SigningKey.from_seed(bytes(32))
    d = tempfile.mkdtemp(prefix="spanproof-bench-verify-many-")
    pub = os.path.join(d, "k.pub")
    with open(pub, "wb") as f:
        f.write(key.public_pem())
    out_dir = os.path.join(d, "bundles")
    _sealed_bundles(out_dir, bundles, 0, key)
    command = [sys.executable, "-m", "spanproof.verifier", "verify", "--key", pub, out_dir]
    rates: dict[str, list[float]] = {"one": [], "default": []}
    for _ in range(reps):
        for config, extra in (("one", ["--jobs", "1"]), ("default", [])):
            start = time.perf_counter()
            subprocess.run(command + extra, check=True, stdout=subprocess.DEVNULL)
            rates[config].append(bundles / (time.perf_counter() - start))
    ratio = _paired_ratio(rates["default"], rates["one"])
    return (statistics.median(rates["one"]), statistics.median(rates["default"]), ratio,
            workers_for(None, bundles)[0])


# ------------------------------------------------------------------ receiver


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _otlp_requests(traces: int, per_request: int) -> tuple[list[Any], list[str]]:
    """Export requests carrying *traces* evidence traces (root + 4 children), and
    the traces' ids (hex)."""
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
    from opentelemetry.proto.common.v1 import common_pb2
    from opentelemetry.proto.trace.v1 import trace_pb2

    def kv(key: str, value: Any) -> common_pb2.KeyValue:
        if isinstance(value, int):
            return common_pb2.KeyValue(key=key, value=common_pb2.AnyValue(int_value=value))
        return common_pb2.KeyValue(key=key, value=common_pb2.AnyValue(string_value=value))

    spans = []
    trace_ids = []
    base = int.from_bytes(os.urandom(8), "big") << 64
    for t in range(traces):
        trace_id = (base + t + 1).to_bytes(16, "big")
        trace_ids.append(trace_id.hex())
        root = (t * 8 + 1).to_bytes(8, "big")
        for i, name in enumerate(("handle_case", "chat classify", "chat retrieve",
                                  "chat policy", "chat draft")):
            span = trace_pb2.Span(
                trace_id=trace_id, span_id=(t * 8 + 1 + i).to_bytes(8, "big"), name=name,
                kind=trace_pb2.Span.SPAN_KIND_INTERNAL,
                start_time_unix_nano=1_700_000_000_000_000_000 + i,
                end_time_unix_nano=1_700_000_000_100_000_000 + i,
                parent_span_id=b"" if i == 0 else root,
            )
            span.attributes.extend([
                kv("gen_ai.operation.name", "chat"), kv("gen_ai.request.model", "local-model-1"),
                kv("gen_ai.usage.input_tokens", 412), kv("gen_ai.usage.output_tokens", 96),
                kv("app.prompt", LONG_TEXT), kv("app.completion", LONG_TEXT),
            ])
            spans.append(span)
    requests = []
    for start in range(0, len(spans), per_request):
        req = trace_service_pb2.ExportTraceServiceRequest()
        rs = req.resource_spans.add()
        rs.resource.attributes.append(kv("service.name", "bench"))
        ss = rs.scope_spans.add()
        ss.scope.name = "bench"
        ss.spans.extend(spans[start:start + per_request])
        requests.append(req)
    return requests, trace_ids


def _wait_for_bundles(out: str, trace_ids: Sequence[str], deadline: float) -> None:
    """Return once every trace of *trace_ids* has its first bundle in *out*.

    Each check looks up only the next name not yet seen.  Counting the directory's
    bundles instead cost this process ~7 ms of CPU per listing at 10,000 files:
    polled every 10 ms, a third of a core taken from the processes measured.
    """
    from spanproof.verifier.bundle import BUNDLE_SUFFIX

    pending = list(trace_ids)
    suffix = None
    while True:
        if suffix is None:
            # <trace id>-<segment>-<producer instance>.spanproof.json; one receiver,
            # one producer instance.
            found = [n for n in os.listdir(out) if n.endswith(BUNDLE_SUFFIX)]
            if found:
                suffix = f"-0000-{found[0].split('-')[2]}"
        if suffix is not None:
            while pending and os.path.exists(os.path.join(out, pending[-1] + suffix)):
                pending.pop()
            if not pending:
                return
        if time.monotonic() > deadline:
            missing = len(pending) if suffix is None else sum(
                not os.path.exists(os.path.join(out, t + suffix)) for t in pending
            )
            raise RuntimeError(f"{missing} of {len(trace_ids)} traces were not sealed")
        time.sleep(0.01)


def _send_all(endpoint: str, requests: list[Any], threads: int = 4) -> None:
    import concurrent.futures

    import grpc
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc

    channel = grpc.insecure_channel(endpoint)
    stub = trace_service_pb2_grpc.TraceServiceStub(channel)  # type: ignore[no-untyped-call]

    def send(req: Any) -> None:
        for _ in range(600):
            try:
                stub.Export(req, timeout=30)
                return
            except grpc.RpcError as e:
                if e.code() is not grpc.StatusCode.UNAVAILABLE:
                    raise
                time.sleep(0.05)
        raise RuntimeError("receiver stayed unavailable")

    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        list(pool.map(send, requests))
    channel.close()


def _rotel_agent() -> str:
    import importlib.util

    spec = importlib.util.find_spec("rotel")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("rotel is not installed (pip install rotel)")
    return os.path.join(next(iter(spec.submodule_search_locations)), "rotel-agent")


def rotel_env() -> dict[str, str]:
    """The environment to start ``rotel-agent`` in.  The binary links the libpython
    of the Python version its wheel is for and finds it on the system's library
    path; the running interpreter's own library directory is searched first, so an
    interpreter installed apart from the system's (pyenv, a build of one's own)
    serves too."""
    env = dict(os.environ)
    libdir = sysconfig.get_config_var("LIBDIR")
    if sysconfig.get_config_var("Py_ENABLE_SHARED") and libdir:
        env["LD_LIBRARY_PATH"] = os.pathsep.join(
            [libdir, *filter(None, [env.get("LD_LIBRARY_PATH")])])
    return env


def _start_logged(args: Sequence[str], log_path: str,
                  env: dict[str, str] | None = None) -> subprocess.Popen[Any]:
    """Start a server process whose output goes to *log_path* (for
    :func:`_wait_listening` to quote if it dies at start)."""
    with open(log_path, "wb") as log:
        return subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env)


def _wait_listening(port: int, proc: subprocess.Popen[Any], log_path: str | None = None) -> None:
    import socket

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            said = ""
            if log_path is not None and os.path.exists(log_path):
                with open(log_path, "rb") as f:
                    said = f.read()[-600:].decode("utf-8", "replace").strip()
            name = os.path.basename(str(proc.args[0] if isinstance(proc.args, list)
                                        else proc.args))
            raise RuntimeError(f"{name} exited at start with code {proc.returncode}"
                               + (f": {said}" if said else ""))
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port}")


#: ``--sealing-processes`` of the receiver's third configuration: one per core here.
RECEIVER_WORKERS = 2
#: The receiver section sends this many times the run's traces: rotel forwards
#: batches of up to 8,192 spans, so 2,000 traces (10,000 spans) were little more than
#: one batch, and the figure mostly the time to fill and drain the pipeline.
RECEIVER_TRACES_FACTOR = 5


def _cpu_seconds(pid: int) -> float:
    """User and system CPU seconds *pid* used so far (``/proc/<pid>/stat``)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _child_pids(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    parent = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            if parent == pid:
                found.append(int(entry))
    return found


def receiver_once(
    traces: int, via_rotel: bool, sealing_processes: int = 0
) -> tuple[float, dict[str, float]]:
    """Certified spans/s, from the first request until every trace's bundle is on
    disk, and each process's CPU microseconds per span meanwhile (the receiver, its
    seal workers together, rotel, this process as the load generator; empty without
    ``/proc``)."""
    from spanproof.exporter import SigningKey

    work = tempfile.mkdtemp(prefix="spanproof-bench-recv-")
    out = os.path.join(work, "out")
    procs: list[subprocess.Popen[Any]] = []
    try:
        key, _ = SigningKey.generate().write(os.path.join(work, "keys"))
        port = _free_port()
        receiver_log = os.path.join(work, "receiver.log")
        procs.append(_start_logged(
            [sys.executable, "-m", "spanproof.verifier", "receiver", "--no-http",
             "--grpc", f"127.0.0.1:{port}", "--out", out, "--key", key,
             "--seal-grace-ms", "50", "--max-pending-traces", "50000",
             "--sealing-processes", str(sealing_processes)], receiver_log))
        _wait_listening(port, procs[-1], receiver_log)
        endpoint = f"127.0.0.1:{port}"
        if via_rotel:
            rotel_port = _free_port()
            rotel_log = os.path.join(work, "rotel.log")
            procs.append(_start_logged(
                [_rotel_agent(), "start", "--otlp-grpc-endpoint", f"127.0.0.1:{rotel_port}",
                 "--otlp-http-endpoint", f"127.0.0.1:{_free_port()}", "--exporter", "otlp",
                 "--otlp-exporter-endpoint", f"http://{endpoint}",
                 "--otlp-exporter-protocol", "grpc", "--traces-batch-timeout", "50ms"],
                rotel_log, rotel_env()))
            _wait_listening(rotel_port, procs[-1], rotel_log)
            endpoint = f"127.0.0.1:{rotel_port}"
        requests, trace_ids = _otlp_requests(traces, per_request=500)
        roles: dict[str, list[int]] = {}
        if os.path.isdir("/proc/self"):
            roles = {"receiver": [procs[0].pid], "seal workers": _child_pids(procs[0].pid)}
            if via_rotel:
                roles["rotel"] = [procs[1].pid]
        before = {role: sum(map(_cpu_seconds, pids)) for role, pids in roles.items()}
        gc.collect()
        client = time.process_time()
        start = time.perf_counter()
        _send_all(endpoint, requests)
        _wait_for_bundles(out, trace_ids, time.monotonic() + 600)
        rate = traces * 5 / (time.perf_counter() - start)
        per_span = 1e6 / (traces * 5)
        cpu = {role: (sum(map(_cpu_seconds, pids)) - before[role]) * per_span
               for role, pids in roles.items() if pids}
        if roles:
            cpu["load generator"] = (time.process_time() - client) * per_span
        return rate, cpu
    finally:
        for proc in reversed(procs):
            proc.terminate()
            proc.wait(60)
        # Let this run's writeback finish, so the next run does not pay for it (as
        # run_once does).  The files stay until the harness ends.
        os.sync()


def section_receiver_cost(reps: int, traces: int) -> tuple[float, float]:
    """The receiver's CPU cost per span without a transport: median microseconds per
    span to ingest (decode, select, normalize, fingerprint, journal with fsync) and
    to seal and write (all traces sealed at once at shutdown), with the garbage
    collector set as ``spanproof receiver`` sets it."""
    from spanproof.exporter import SigningKey
    from spanproof.exporter.receiver import Receiver
    from spanproof.verifier._gc import collecting_rarely

    requests, _ = _otlp_requests(traces, per_request=500)
    spans = traces * 5
    ingest, sealing = [], []
    for _ in range(reps):
        work = tempfile.mkdtemp(prefix="spanproof-bench-recv-cost-")
        try:
            with collecting_rarely():
                receiver = Receiver(work, signing_key=SigningKey.from_seed(bytes(32)),
                                    seal_grace=3600, max_pending_traces=50_000)
                receiver.start()
                start = time.perf_counter()
                for request in requests:
                    receiver(request.resource_spans)
                ingested = time.perf_counter()
                if not receiver.shutdown(600):
                    raise RuntimeError("the receiver did not seal everything")
                ingest.append((ingested - start) / spans * 1e6)
                sealing.append((time.perf_counter() - ingested) / spans * 1e6)
        finally:
            os.sync()
    return statistics.median(ingest), statistics.median(sealing)


#: The receiver's configurations: (through rotel, seal workers).
RECEIVER_CONFIGS = {
    "direct": (False, 0),
    "rotel": (True, 0),
    f"rotel, {RECEIVER_WORKERS} seal workers": (True, RECEIVER_WORKERS),
}


def section_receiver(
    reps: int, traces: int
) -> tuple[dict[str, float], dict[str, dict[str, float]], float]:
    """Median certified spans/s of each configuration, the median CPU microseconds
    per span of each process in it, and the median of the per-round ratios of the
    seal workers' configuration to plain rotel."""
    results: dict[str, list[float]] = {config: [] for config in RECEIVER_CONFIGS}
    cpus: dict[str, dict[str, list[float]]] = {config: {} for config in RECEIVER_CONFIGS}
    for r in range(reps):
        # Alternate, each round in its own (seeded) random order, as the app section
        # does: every run leaves 10,000 files' writeback behind.
        order = list(RECEIVER_CONFIGS)
        random.Random(r).shuffle(order)
        for config in order:
            via_rotel, workers = RECEIVER_CONFIGS[config]
            rate, cpu = receiver_once(traces, via_rotel, workers)
            results[config].append(rate)
            for role, us in cpu.items():
                cpus[config].setdefault(role, []).append(us)
    return ({c: statistics.median(v) for c, v in results.items()},
            {c: {role: statistics.median(v) for role, v in roles.items()}
             for c, roles in cpus.items()},
            _paired_ratio(results[f"rotel, {RECEIVER_WORKERS} seal workers"],
                          results["rotel"]))


def _sealed_bundles(directory: str, count: int, run: int, key: Any) -> list[str]:
    """Write *count* sealed bundles of 5-span traces into a new *directory*, with new
    trace ids for each *run* (so that every witness submission is a new log entry);
    return their paths."""
    from datetime import datetime, timezone

    from spanproof.exporter.sealing import ChainPosition, seal
    from spanproof.verifier.statement import Producer

    os.makedirs(directory)
    producer = Producer("bench", "0", "00")
    at = datetime(2026, 1, 1, tzinfo=timezone.utc)
    paths = []
    for i in range(count):
        tid = f"{run + 1:08x}{i:024x}"
        bundle = seal(tid, _trace_bodies(tid, 5), ChainPosition.genesis(tid), signer=key,
                      producer=producer, sealed_at=at, reason="root_ended")
        path = os.path.join(directory, bundle.file_name)
        with open(path, "wb") as f:
            f.write(bundle.data)
        paths.append(path)
    return paths


def _submit_all(url: str, queue: str, paths: Sequence[str], key: Any, concurrency: int,
                batch_size: int, witness_keys: Sequence[Any] = ()) -> tuple[float, float]:
    """The producer-side submitter delivering *paths* to the witness: receipts/s, and
    this process's CPU microseconds per submission (the submitter's threads: queue
    files, HTTP, receipt checks and files)."""
    from spanproof.exporter.submit import WitnessSubmitter

    sub = WitnessSubmitter(url, queue, producer_key=key.private_key.public_key(),
                           witness_keys=witness_keys, concurrency=concurrency,
                           batch_size=batch_size, start=False)
    start, cpu = time.perf_counter(), time.process_time()
    for path in paths:
        sub.submit(path)
    deadline = time.monotonic() + 600
    while (wait := sub.process_due()) is not None:
        if time.monotonic() > deadline:
            raise RuntimeError("the witness did not take every submission")
        time.sleep(wait)
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    sub.close()
    return len(paths) / elapsed, cpu / len(paths) * 1e6


#: ``<requests in flight> x <submissions per request>``, then one that verifies each
#: receipt, and the witness's own ``submit()``.
WITNESS_CONFIGS = ("4x16", "4x1", "1x1", "4x16 pinned", "direct")


def section_witness(reps: int, bundles: int) -> tuple[dict[str, tuple[float, float]], float]:
    """Witness receipts/s for bundles of 5-span traces, alternated within the run:
    through the producer-side submitter to ``spanproof witness serve`` on loopback
    (pinning the producer's key, as the in-process witness does): 4 requests in
    flight of up to 16 submissions each (the default), 4 of one each, one of one
    (the baseline), and the default verifying each receipt against the pinned
    witness key; and the witness's own ``Witness.submit`` without HTTP.  Returns,
    per configuration, the median receipts/s and the producer's median CPU
    microseconds per submission (0 for ``direct``), and the median per-round ratio
    of "4x16" to "4x1"."""
    from spanproof.exporter import SigningKey
    from spanproof.verifier import TrustRoot
    from spanproof.verifier.checkpoint import WitnessKey
    from spanproof.witness.service import Witness
    from spanproof.witness.signing import CheckpointSigner, generate_key_file
    from spanproof.witness.store import Store

    work = tempfile.mkdtemp(prefix="spanproof-bench-witness-")
    key = SigningKey.from_seed(bytes(32))
    producer_pub = os.path.join(work, "producer.pub")
    with open(producer_pub, "wb") as f:
        f.write(key.public_pem())
    origin = "bench.example/witness"
    witness_key = os.path.join(work, "witness.key")
    generate_key_file(witness_key)
    signer = CheckpointSigner.load(witness_key, origin)
    pinned = [WitnessKey.from_pem(signer.key.public_pem())]
    port = _free_port()
    witness_log = os.path.join(work, "witness.log")
    server = _start_logged(
        [sys.executable, "-m", "spanproof.verifier", "witness", "serve",
         "--listen", f"127.0.0.1:{port}", "--db", os.path.join(work, "served.db"),
         "--key", witness_key, "--origin", origin, "--producer-key", producer_pub],
        witness_log)
    rates: dict[str, list[float]] = {c: [] for c in WITNESS_CONFIGS}
    cpus: dict[str, list[float]] = {c: [] for c in WITNESS_CONFIGS}
    try:
        _wait_listening(port, server, witness_log)
        url = f"http://127.0.0.1:{port}"
        store = Store(os.path.join(work, "direct.db"))
        # As `witness serve` keeps it: rewritten after every append.
        witness = Witness(store, signer,
                          producer_trust=TrustRoot.from_pem_files([producer_pub]),
                          signed_file=os.path.join(work, "direct.checkpoint"))
        run = 0
        for r in range(reps):
            shift = r % len(WITNESS_CONFIGS)
            for config in WITNESS_CONFIGS[shift:] + WITNESS_CONFIGS[:shift]:
                run += 1
                paths = _sealed_bundles(os.path.join(work, f"b{run}"), bundles, run, key)
                if config == "direct":
                    start = time.perf_counter()
                    for path in paths:
                        with open(path, "rb") as f:
                            witness.submit(f.read())
                    rates[config].append(bundles / (time.perf_counter() - start))
                    cpus[config].append(0.0)
                else:
                    concurrency, batch = (int(n) for n in config.split()[0].split("x"))
                    rate, cpu = _submit_all(
                        url, os.path.join(work, f"q{run}"), paths, key, concurrency, batch,
                        pinned if "pinned" in config else ())
                    rates[config].append(rate)
                    cpus[config].append(cpu)
        store.close()
    finally:
        server.terminate()
        server.wait(60)
    medians = {c: (statistics.median(rates[c]), statistics.median(cpus[c]))
               for c in WITNESS_CONFIGS}
    return medians, _paired_ratio(rates["4x16"], rates["4x1"])


SECTIONS = ("app", "seal", "seal-bursts", "canonical", "verify", "verify-1m", "verify-many",
            "receiver", "receiver-cost", "witness")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (smoke run)")
    parser.add_argument("--reps", type=int, default=None)
    parser.add_argument("--app-reps", type=int, default=None,
                        help="rounds of the app section (default: 3 x --reps)")
    parser.add_argument("--traces", type=int, default=None)
    parser.add_argument("--work-dir", default=None,
                        help="where bundles, journals and other files are written "
                             "(default: the system's temporary directory)")
    parser.add_argument("--only", default=",".join(SECTIONS),
                        help=f"comma-separated sections (default: all of {', '.join(SECTIONS)})")
    args = parser.parse_args(argv)
    reps = args.reps or (1 if args.quick else 5)
    # The app section's runs are short (~0.3 s) and this kind of machine's speed
    # changes between consecutive runs by tens of percent: its per-round ratios
    # spread over 0.6-1.6, so its medians need more rounds than the other sections.
    app_reps = args.app_reps or reps * 3
    traces = args.traces or (20 if args.quick else 2000)
    sections = set(args.only.split(","))
    unknown = sections - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections: {', '.join(sorted(unknown))}")
    if args.work_dir is not None:
        os.makedirs(args.work_dir, exist_ok=True)
    # Every file of the run goes under one directory, deleted only when the run ends:
    # on a filesystem without a journal (ext4 -O ^has_journal), creating a file skips,
    # one by one, every inode freed in the last minute, so deleting one configuration's
    # bundles would slow the next configuration's file creation.
    scratch = tempfile.mkdtemp(prefix="spanproof-bench-", dir=args.work_dir)
    previous_tempdir = tempfile.tempdir
    tempfile.tempdir = scratch  # every mkdtemp below
    try:
        with _without_otel_variables(print):
            return _run(sections, reps, app_reps, traces, quick=args.quick)
    finally:
        tempfile.tempdir = previous_tempdir
        deleted = _count_files(scratch)
        shutil.rmtree(scratch, ignore_errors=True)
        if not args.quick and deleted >= DELETION_MARK_MIN_FILES:
            _mark_deletion(os.path.dirname(scratch))


@contextlib.contextmanager
def _without_otel_variables(out: Callable[[str], None]) -> Iterator[None]:
    """Unset every ``OTEL_*`` variable while the harness runs (and print their names),
    so it measures the configurations as it builds them.  ``OTEL_SDK_DISABLED=true``
    made every provider a no-op and the spanproof exporter a disabled one;
    ``OTEL_TRACES_SAMPLER``, ``OTEL_BSP_*`` or ``OTEL_EXPORTER_SPANPROOF_*`` (a setting
    no configuration gives) changed what was measured without a word."""
    saved = {name: value for name, value in os.environ.items()
             if name.upper().startswith("OTEL_")}
    if saved:
        out(f"(ignoring the OTEL_* variables set here: {', '.join(sorted(saved))})")
    for name in saved:
        del os.environ[name]
    try:
        yield
    finally:
        os.environ.update(saved)


#: Creating a small file costs tens of microseconds on a quiet filesystem; more means
#: the inode allocator is still skipping recently freed inodes (see ``main``).
QUIET_FILE_CREATION_US = 60.0
SETTLE_LIMIT_S = 420.0
#: How long after a run deleted its files the next run in the same place waits: the
#: allocator skips an inode freed in the last 60 seconds once its inode table block
#: is written (the run syncs after deleting), and the probe below can miss that.
DELETION_QUIET_S = 75.0
DELETION_MARK = ".spanproof-bench-deleted"
#: A run that deleted fewer files (the probe of file creation leaves 1,000: ``--only
#: canonical``, say) leaves no mark; the next run's probe still checks the allocator.
DELETION_MARK_MIN_FILES = 2000


def _count_files(directory: str) -> int:
    """How many files are under *directory* (what deleting it will free)."""
    return sum(len(files) for _, _, files in os.walk(directory))


def _mark_deletion(directory: str) -> None:
    """Record, in *directory*, that a run has just deleted its files there."""
    os.sync()  # written inode tables: the allocator's 60-second window, not 360
    with open(os.path.join(directory, DELETION_MARK), "w") as f:
        f.write(repr(time.time()))


def _since_deletion(directory: str) -> float | None:
    """Seconds since a run last deleted its files in *directory*, or None."""
    try:
        with open(os.path.join(directory, DELETION_MARK)) as f:
            return max(0.0, time.time() - float(f.read()))
    except (OSError, ValueError):
        return None


def settle(directory: str, out: Callable[[str], None],
           sleep: Callable[[float], None] = time.sleep) -> float:
    """Wait (at most ``SETTLE_LIMIT_S``) until creating a file in *directory* costs
    under ``QUIET_FILE_CREATION_US``, so the figures do not include the effect of
    files deleted shortly before the run (by an earlier run or a test suite); return
    the last cost measured.  When an earlier run deleted its files beside *directory*
    less than ``DELETION_QUIET_S`` ago, wait that out first."""
    deadline = time.monotonic() + SETTLE_LIMIT_S
    since = _since_deletion(os.path.dirname(directory))
    if since is not None and since < DELETION_QUIET_S:
        out(f"(the previous run deleted its files here {since:,.0f} s ago: waiting "
            f"{DELETION_QUIET_S - since:,.0f} s before measuring)")
        sleep(DELETION_QUIET_S - since)
    cost = file_creation_us(directory)
    while cost > QUIET_FILE_CREATION_US and time.monotonic() < deadline:
        out(f"(creating a file costs {cost:,.0f} us: waiting for files deleted "
            "before this run to stop slowing file creation)")
        sleep(15)
        cost = file_creation_us(directory)
    return cost


def file_creation_us(directory: str, files: int = 500) -> float:
    """Median microseconds to create, write (6 KB) and close a new file in *directory*
    (printed with the figures: it varies by filesystem and by its recent deletions)."""
    d = tempfile.mkdtemp(prefix="probe-", dir=directory)
    data = bytes(6000)
    times = []
    for i in range(files):
        start = time.perf_counter()
        fd = os.open(os.path.join(d, str(i)), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.write(fd, data)
        os.close(fd)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e6


def _run(sections: set[str], reps: int, app_reps: int, traces: int, *, quick: bool) -> int:
    out: Callable[[str], None] = print
    # (target, measured, needed, unit, and for a paired ratio its per-round ratios)
    targets: list[tuple[str, float, float, str, Sequence[float]]] = []
    work = tempfile.gettempdir()
    create_us = file_creation_us(work) if quick else settle(work, out)
    out(f"spanproof benchmark: python {sys.version.split()[0]}, {os.cpu_count()} cores, "
        f"reps={reps} (app: {app_reps}), traces={traces} (x5 spans), files in {work} "
        f"(creating a 6 KB file: {create_us:,.0f} us); medians")
    if "app" in sections:
        apps = section_app(app_reps, traces)
        out(f"{'config':<30}{'app spans/s':>14}{'x noop':>9}{'(middle half)':>15}"
            f"{'e2e spans/s':>14}{'x otlp':>9}{'(middle half)':>15}")
        for config, r in apps.items():
            line = (f"{config:<30}{r.app:>14,.0f}{r.app_ratio:>9.2f}"
                    f"{_spread(r.app_ratios):>15}")
            if config == UNSENT:  # nothing is sealed: no end-to-end figure
                out(f"{line}{'-':>14}{'-':>9}")
            else:
                out(f"{line}{r.e2e:>14,.0f}{r.e2e_ratio:>9.2f}{_spread(r.e2e_ratios):>15}")
        out("  (spans/s: medians; ratios: medians of each round's ratio to the baseline "
            "run in the same round; middle half: the first to the third quartile of "
            "those per-round ratios)")
        out(f"  ({NO_FSYNC}: bundles written without fsync; {SELECTION_ONLY}: selection "
            "and root tracking only, nothing certified; information only)")
        out(f"  ({UNSENT}: the sealing process at 10%, every span frame built and "
            "dropped, so the child seals nothing; information only)")
        out(f"  ({DURABLE}: EvidenceSpanProcessor, which journals every evidence span "
            "(fsynced) before sealing it, instead of the batch processor; information only)")
        for mode, suffix in (("in-process", ""), ("sealing process", PROCESS),
                             ("2 sealing processes", PROCESSES)):
            full, tenth = apps["spanproof-100%" + suffix], apps["spanproof-10%" + suffix]
            targets += [
                (f"app-thread, 100% selected, {mode}, x no-op",
                 full.app_ratio, 0.75, "x", full.app_ratios),
                (f"app-thread, 10% selected, {mode}, x no-op",
                 tenth.app_ratio, 0.95, "x", tenth.app_ratios),
                (f"end-to-end, 100% selected, {mode}, x OTLP/gRPC",
                 full.e2e_ratio, 2.0, "x", full.e2e_ratios),
            ]
    if "seal" in sections:
        for size, (seal_us, sign_us) in section_seal(reps, 20 if quick else 400).items():
            out(f"seal: {size:>2}-span trace {seal_us:,.0f} us per bundle "
                f"({seal_us / size:,.0f} us per span; Ed25519 signature {sign_us:,.0f} us)")
    if "seal-bursts" in sections:
        n = 14 if quick else 700
        bursts, whole, ratio = section_seal_bursts(reps, n)
        out(f"seal in bursts: {n:,} 5-span traces, {BURST_TRACES} at a time with "
            f"{BURST_SLEEP_S * 1000:.0f} ms sleeps between {bursts:,.1f} us CPU per span, "
            f"all at once {whole:,.1f}: {ratio:.2f}x (median of each round's ratio)")
    if "canonical" in sections:
        ours, theirs, ratio = section_canonical(reps, 200 if quick else 5000)
        out(f"canonical: spanproof {ours:,.0f} records/s, rfc8785 {theirs:,.0f} records/s, "
            f"ratio {ratio:.2f}x (median of each round's ratio; byte-identical)")
        targets.append(("canonical encoding, x rfc8785", ratio, 5.0, "x", ()))
    if "verify" in sections:
        n = 500 if quick else 100_000
        rate, rss, _ = section_verify(n)
        out(f"verify: {n:,} records at {rate:,.0f} records/s, peak RSS {rss:,.0f} MiB")
    if "verify-1m" in sections:
        n = 2_000 if quick else 1_000_000
        rate, rss, written = section_verify(n)
        out(f"verify: {n:,} records at {rate:,.0f} records/s ({n / rate:,.0f} s), "
            f"peak RSS {rss:,.0f} MiB (bundle written in {written:,.0f} s)")
        # The target is 300 MB (10^6 bytes), the RSS measured in MiB.
        targets.append((f"verify {n:,} records, peak RSS MB", rss * _MIB / 1e6, 300.0, "<",
                        ()))
    if "verify-many" in sections:
        n = 100 if quick else 4_000
        one, default, ratio, workers = section_verify_many(reps, n)
        how = f"{workers} worker processes" if workers else "one process"
        out(f"verify: {n:,} bundles of 5-span traces with `spanproof verify`, one process "
            f"{one:,.0f} bundles/s, default ({how}) {default:,.0f} bundles/s, "
            f"{ratio:.2f}x (median of each round's ratio)")
    # ------------------------------------------------------------ receiver
    if "receiver" in sections:
        receiver_traces = traces * RECEIVER_TRACES_FACTOR
        rates, cpus, gain = section_receiver(reps, receiver_traces)
        for config, rate in rates.items():
            out(f"receiver over OTLP/gRPC ({config}): {rate:,.0f} certified spans/s "
                f"({receiver_traces:,} traces x 5 spans)")
            if cpus[config]:
                shares = ", ".join(f"{role} {us:,.0f}" for role, us in cpus[config].items())
                out(f"  CPU us per span: {shares}")
        out(f"receiver through rotel, {RECEIVER_WORKERS} seal workers against none: "
            f"{gain:.2f}x (median of the per-round ratios)")
        for config in ("rotel", f"rotel, {RECEIVER_WORKERS} seal workers"):
            targets.append((f"receiver ({config}), certified spans/s", rates[config],
                            20_000.0, ">", ()))
    if "receiver-cost" in sections:
        ingest_us, seal_us = section_receiver_cost(reps, traces)
        out(f"receiver cost without a transport: ingest {ingest_us:,.0f} us per span, "
            f"seal and write {seal_us:,.0f} us per span (5-span traces)")
    if "witness" in sections:
        n = 10 if quick else 500
        res, ratio = section_witness(reps, n)
        out(f"witness: {n:,} bundles of 5-span traces; receipts/s, and the producer's CPU "
            "per submission (queue file, HTTP, receipt checks and file)")
        for config, (rate, cpu) in res.items():
            label = {"4x16": "4 requests of 16 (the default)",
                     "4x1": "4 requests of 1",
                     "1x1": "1 request of 1",
                     "4x16 pinned": "4 of 16, receipts verified",
                     "direct": "the witness's own submit(), no HTTP"}[config]
            shown = f", {cpu:,.0f} us CPU per submission" if config != "direct" else ""
            out(f"  {label:<36}{rate:>8,.0f} receipts/s{shown}")
        out(f"  (batches of 16 against one submission per request: {ratio:.2f}x)")
    # ------------------------------------------------------------ targets
    out(f"creating a 6 KB file at the end: {file_creation_us(work):,.0f} us")
    if targets:
        out("targets:")
    for name, measured, needed, unit, rounds in targets:
        met = target_met(measured, needed, unit)
        want = f"< {needed:,.0f}" if unit == "<" else (
            f">= {needed:,.0f}" if unit == ">" else f">= {needed:.2f}x")
        shown = f"{measured:.3f}x" if unit == "x" else f"{measured:,.0f}"
        if rounds:  # a paired ratio: how its rounds fell around the target
            shown += (f", middle half {_spread(rounds)}, "
                      f"{sum(1 for x in rounds if x >= needed)} of {len(rounds)} rounds met")
        out(f"  {'PASS' if met else 'MISS'}  {name}: {shown} (target {want})")
    return 0


def _spread(ratios: Sequence[float]) -> str:
    low, high = _middle_half(ratios)
    return f"{low:.2f}-{high:.2f}"


if __name__ == "__main__":
    raise SystemExit(main())
