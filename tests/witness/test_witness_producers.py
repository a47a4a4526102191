"""Receipts end to end: the exporter and the receiver submit sealed bundles to a live
witness in the background (the exporter also when the witness comes up late), and
``spanproof verify --witness-key`` checks the receipts offline."""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from witness_helpers import (
    ORIGIN,
    OTHER_WITNESS_SEED,
    FakeClock,
    free_port,
    make_bundle,
    trace_id,
    write_bundle,
    write_private_key,
)

from spanproof.exporter import SpanproofSpanExporter
from spanproof.exporter.keys import SigningKey
from spanproof.verifier._cli import main
from spanproof.verifier.keys import TrustRoot
from spanproof.verifier.receipt import receipt_path
from spanproof.witness.service import Witness
from spanproof.witness.signing import CheckpointSigner
from spanproof.witness.store import Store

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


@pytest.fixture
def open_witness(tmp_path: Path, witness_private: Ed25519PrivateKey,
                 producer_trust: TrustRoot) -> Iterator[Callable[[], Witness]]:
    """Factory: a Witness (the fixed witness key) on one database, closed at teardown."""
    stores: list[Store] = []

    def make() -> Witness:
        store = Store(str(tmp_path / "w.db"))
        stores.append(store)
        signer = CheckpointSigner(witness_private, ORIGIN)
        return Witness(store, signer, producer_trust=producer_trust, clock=FakeClock())

    yield make
    for store in stores:
        store.close()


@pytest.fixture
def keys(tmp_path: Path, witness_private: Ed25519PrivateKey,
         producer_key: SigningKey) -> dict[str, Path]:
    """Key files: producer private and public, witness public, another witness's public."""
    (tmp_path / "keys").mkdir()
    producer = tmp_path / "keys" / "producer.key"
    producer.write_bytes(producer_key.private_pem())
    producer.chmod(0o600)
    producer_pub = tmp_path / "keys" / "producer.pub"
    producer_pub.write_bytes(producer_key.public_pem())
    witness = write_private_key(tmp_path / "keys" / "witness.key", witness_private)
    other = write_private_key(tmp_path / "keys" / "other.key",
                              Ed25519PrivateKey.from_private_bytes(OTHER_WITNESS_SEED))
    return {"producer": producer, "producer_pub": producer_pub,
            "witness_pub": Path(f"{witness}.pub"), "other_pub": Path(f"{other}.pub")}


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    status = main(argv)
    out, err = capsys.readouterr()
    return status, out + err


def _verify_receipts(path: Path, keys: dict[str, Path], capsys: pytest.CaptureFixture[str],
                     *flags: str) -> tuple[int, str]:
    """``spanproof verify`` of *path* with the producer's and the witness's keys,
    every bundle required to carry a receipt; its exit status and output."""
    return _run(["verify", "--key", str(keys["producer_pub"]), "--witness-key",
                 str(keys["witness_pub"]), "--require-receipt", *flags, str(path)], capsys)


def _wait_for(paths: list[Path], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not all(p.exists() for p in paths):
        assert time.monotonic() < deadline, f"no receipt appeared for {paths}"
        time.sleep(0.05)


def _trace(exporter: SpanproofSpanExporter, name: str,
           before_shutdown: Callable[[], None] = lambda: None) -> None:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("producers-test")
    with tracer.start_as_current_span(f"{name}-root"):
        with tracer.start_as_current_span(name, attributes={"gen_ai.operation.name": "chat"}):
            pass
    before_shutdown()
    provider.shutdown()  # shuts the exporter down: seals and writes the bundle


def _witnessed_exporter(out: Path, keys: dict[str, Path], url: str,
                        **kwargs: Any) -> SpanproofSpanExporter:
    """An exporter that submits to the witness at *url* and checks its receipts."""
    return SpanproofSpanExporter(out, keys["producer"], witness_url=url,
                                 witness_key=str(keys["witness_pub"]), **kwargs)


def _bundles(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.spanproof.json"))


def test_exporter_submits_and_verify_checks_the_receipt(
    tmp_path: Path, keys: dict[str, Path], open_witness: Any, serve_witness: Any,
    capsys: pytest.CaptureFixture[str],
) -> None:
    srv = serve_witness(open_witness())
    out = tmp_path / "out"
    _trace(_witnessed_exporter(out, keys, srv.url), "answer")
    (bundle,) = _bundles(out)
    receipt = Path(receipt_path(bundle))
    _wait_for([receipt])

    trust = ["--key", str(keys["producer_pub"])]
    pinned = ["--witness-key", str(keys["witness_pub"])]
    status, text = _run(["verify", *trust, *pinned, "--require-receipt", "-v", str(out)], capsys)
    assert status == EXIT_OK, text
    assert "PASS  step 10 receipt" in text

    status, text = _run(["verify", *trust, "--witness-key", str(keys["other_pub"]),
                         str(bundle)], capsys)
    assert status == EXIT_FAILED and text.startswith("FAIL") and "receipt" in text, text

    status, text = _run(["verify", *trust, *pinned, "--witness-origin", "another.example/log",
                         str(bundle)], capsys)
    assert status == EXIT_FAILED and "origin" in text, text

    # Altering the stored receipt (its leaf index) makes it fail.
    doc = json.loads(receipt.read_bytes())
    assert (doc["leafIndex"], doc["treeSize"]) == ("0", "1"), doc
    doc["leafIndex"] = "1"
    receipt.write_bytes(json.dumps(doc).encode())
    status, text = _run(["verify", *trust, *pinned, "--require-receipt", str(bundle)], capsys)
    assert status == EXIT_FAILED and "receipt" in text, text


@pytest.mark.parametrize("sealing_processes", [0, 2], ids=["in-process", "seal-workers"])
def test_receiver_submits_every_bundle_and_verify_checks_the_receipts(
    tmp_path: Path, keys: dict[str, Path], open_witness: Any, serve_witness: Any,
    capsys: pytest.CaptureFixture[str], sealing_processes: int,
) -> None:
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
    from opentelemetry.proto.common.v1 import common_pb2

    from spanproof.exporter.receiver import Receiver

    srv = serve_witness(open_witness())
    out = tmp_path / "out"
    receiver = Receiver(out, keys["producer"], witness_url=srv.url,
                        witness_key=str(keys["witness_pub"]),
                        sealing_processes=sealing_processes)
    receiver.start()
    request = trace_service_pb2.ExportTraceServiceRequest()
    spans = request.resource_spans.add().scope_spans.add().spans
    for n in range(1, 5):  # four traces, each a root span with evidence
        span = spans.add(trace_id=bytes.fromhex(f"{n:032x}"), span_id=bytes.fromhex(f"{n:016x}"),
                         name="step", start_time_unix_nano=1, end_time_unix_nano=2)
        span.attributes.append(common_pb2.KeyValue(
            key="gen_ai.operation.name", value=common_pb2.AnyValue(string_value="chat")))
    receiver(request.resource_spans)
    assert receiver.shutdown()  # seals, writes and waits for the submissions
    bundles = _bundles(out)
    assert len(bundles) == 4
    _wait_for([Path(receipt_path(b)) for b in bundles])
    status, text = _verify_receipts(out, keys, capsys)
    assert status == EXIT_OK, text


def test_verify_fails_a_receipt_that_belongs_to_another_bundle(
    tmp_path: Path, keys: dict[str, Path], open_witness: Any, serve_witness: Any,
    capsys: pytest.CaptureFixture[str],
) -> None:
    srv = serve_witness(open_witness())
    bundles = tmp_path / "bundles"
    bundles.mkdir()
    first, second = (write_bundle(bundles, make_bundle(trace_id(i))) for i in range(2))
    status, text = _run(["witness", "submit", str(bundles), "--url", srv.url], capsys)
    assert status == EXIT_OK, text
    shutil.copyfile(receipt_path(first), receipt_path(second))
    status, text = _run(["verify", "--key", str(keys["producer_pub"]),
                         "--witness-key", str(keys["witness_pub"]), str(bundles)], capsys)
    assert status == EXIT_FAILED, text
    lines = text.splitlines()
    assert any(line.startswith(f"OK {first}") and line.endswith(" receipt=verified")
               for line in lines), text
    assert any(line.startswith(f"FAIL {second}") and "receipt" in line for line in lines), text


def test_require_receipt_fails_a_bundle_without_one(
    tmp_path: Path, keys: dict[str, Path], capsys: pytest.CaptureFixture[str],
) -> None:
    bundle = write_bundle(tmp_path, make_bundle(trace_id(7)))
    trust = ["--key", str(keys["producer_pub"]), "--witness-key", str(keys["witness_pub"])]
    status, text = _run(["verify", *trust, str(bundle)], capsys)
    assert status == EXIT_OK, text  # a missing receipt is only SKIPPED unless required
    # ... and said: the line read as a witnessed bundle's did.
    assert text.startswith(f"OK {bundle} ") and text.rstrip().endswith(" receipt=none"), text
    status, text = _run(["verify", "--key", str(keys["producer_pub"]), str(bundle)], capsys)
    assert status == EXIT_OK and "receipt=" not in text, text  # no witness key: not looked for
    status, text = _run(["verify", *trust, "--require-receipt", str(bundle)], capsys)
    assert status == EXIT_FAILED and "receipt" in text, text
    status, text = _run(["verify", "--key", str(keys["producer_pub"]), "--require-receipt",
                         str(bundle)], capsys)
    assert status == EXIT_USAGE and "--witness-key" in text, text


@pytest.fixture
def silent_witness() -> Iterator[str]:
    """The URL of a server on 127.0.0.1 that takes connections and requests and never
    answers (a witness hung, or a proxy holding requests); stopped at teardown."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.1)
    held: list[socket.socket] = []
    stop = threading.Event()

    def hold() -> None:
        while not stop.is_set():
            with contextlib.suppress(OSError):
                held.append(listener.accept()[0])

    thread = threading.Thread(target=hold, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    stop.set()
    thread.join(5)
    for conn in held:
        conn.close()
    listener.close()


def test_shutdown_waits_at_most_5_s_for_a_witness_that_does_not_answer(
    tmp_path: Path, keys: dict[str, Path], silent_witness: str
) -> None:
    # It waited for the delivery under way to end too: up to the submitter's own
    # 10 s timeout after the 5 s README promises, 10-18 s in all.
    out = tmp_path / "out"
    started = time.monotonic()
    _trace(SpanproofSpanExporter(out, keys["producer"], witness_url=silent_witness), "hung")
    assert time.monotonic() - started < 8.5
    (bundle,) = _bundles(out)
    assert not Path(receipt_path(bundle)).exists()
    assert list((out / "witness-queue").glob("*.json")), "the submission was not queued on disk"


def test_exporter_queues_while_the_witness_is_down_and_delivers_later(
    tmp_path: Path, keys: dict[str, Path], open_witness: Any, serve_witness: Any,
    capsys: pytest.CaptureFixture[str],
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    out = tmp_path / "out"
    started = time.monotonic()
    _trace(SpanproofSpanExporter(out, keys["producer"], witness_url=url), "while-down")
    assert time.monotonic() - started < 20, "a down witness held up the app's shutdown"
    (bundle,) = _bundles(out)
    assert not Path(receipt_path(bundle)).exists()
    assert list((out / "witness-queue").glob("*.json")), "the submission was not queued on disk"

    serve_witness(open_witness(), port)
    _trace(SpanproofSpanExporter(out, keys["producer"], witness_url=url), "after-restart")
    receipts = [Path(receipt_path(b)) for b in _bundles(out)]
    assert len(receipts) == 2
    # Both arrive: the new bundle, and the one queued while the witness was down
    # (its queue entry is delivered by the next exporter start).
    restart = SpanproofSpanExporter(out, keys["producer"], witness_url=url)
    try:
        _wait_for(receipts)
    finally:
        restart.shutdown()
    status, text = _verify_receipts(out, keys, capsys)
    assert status == EXIT_OK, text


def test_the_submitter_batches_to_a_served_witness_and_every_receipt_verifies(
    tmp_path: Path, keys: dict[str, Path], open_witness: Any, serve_witness: Any,
    producer_key: SigningKey, capsys: pytest.CaptureFixture[str],
) -> None:
    from spanproof.exporter.submit import WitnessSubmitter
    from spanproof.verifier.checkpoint import WitnessKey

    witness = open_witness()
    srv = serve_witness(witness)
    out = tmp_path / "bundles"
    out.mkdir()
    paths = [write_bundle(out, make_bundle(trace_id(i), key=producer_key)) for i in range(9)]
    sub = WitnessSubmitter(srv.url, tmp_path / "q",
                           producer_key=producer_key.private_key.public_key(),
                           witness_keys=[WitnessKey.load(str(keys["witness_pub"]))],
                           concurrency=2, batch_size=4, start=False)
    for p in paths:
        sub.submit(p)
    assert sub.process_due() is None and sub.pending == 0
    sub.close()
    assert witness.size == 9
    # The probe logged alone, the other eight in two batches: a checkpoint for each.
    assert len(witness._store.checkpoints()) == 1 + 1 + 2
    status, text = _verify_receipts(out, keys, capsys)
    assert status == EXIT_OK and text.count("OK") == 9, text


def test_a_dead_sealing_processs_declaration_sealed_at_shutdown_goes_to_the_witness(
    tmp_path: Path, keys: dict[str, Path], open_witness: Any, serve_witness: Any,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # The sealing process died holding a trace; shutdown() seals the declaration of
    # its loss in this process.  It went to no witness (the children submit their
    # own bundles, and this process had no submitter): an application that is not
    # started again left it without a receipt.
    srv = serve_witness(open_witness())
    out = tmp_path / "out"
    exporter = _witnessed_exporter(out, keys, srv.url, sealing_process=True, seal_grace=3600)
    assert exporter._remote is not None
    (process,) = exporter._remote.processes
    _trace(exporter, "answer", before_shutdown=process.kill)  # holding the trace
    (bundle,) = _bundles(out)  # the declaration, sealed here
    _wait_for([Path(receipt_path(bundle))], timeout=10)
    status, text = _verify_receipts(out, keys, capsys, "--allow-incomplete")
    assert status == EXIT_OK, text


@pytest.mark.parametrize("starting", ["processor", "exporter"])
def test_bundles_recovered_at_start_go_to_the_witness(
    tmp_path: Path, keys: dict[str, Path], open_witness: Any, serve_witness: Any,
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, starting: str,
) -> None:
    # An EvidenceSpanProcessor died with a trace journaled; the next start seals it
    # (recovered).  Only the scan of the output directory at start could queue that
    # bundle, and it runs on a thread of its own, started before the recovery: it
    # had listed the directory already, and the bundle got no receipt while the
    # application ran.
    from spanproof.exporter import EvidenceSpanProcessor
    from spanproof.exporter import _exporter as exporter_module

    out = tmp_path / "out"
    dead = EvidenceSpanProcessor(out, keys["producer"], seal_grace=3600, idle_timeout=3600)
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(dead)
    tracer = provider.get_tracer("producers-test")
    with tracer.start_as_current_span("request"):
        with tracer.start_as_current_span("step", attributes={"gen_ai.operation.name": "chat"}):
            pass
        assert dead.force_flush(10_000)
        dead.exporter._journal.forget_after_fork()  # type: ignore[attr-defined]  # killed
    monkeypatch.setattr(exporter_module, "_scan_quietly", lambda submitter, directory: None)
    srv = serve_witness(open_witness())
    if starting == "processor":
        started: Any = EvidenceSpanProcessor(out, keys["producer"], witness_url=srv.url,
                                             witness_key=str(keys["witness_pub"]))
    else:
        started = _witnessed_exporter(out, keys, srv.url)
    try:
        (bundle,) = _bundles(out)
        _wait_for([Path(receipt_path(bundle))], timeout=10)
    finally:
        started.shutdown()
    status, text = _verify_receipts(out, keys, capsys)
    assert status == EXIT_OK, text
