"""gevent patched in a forked worker after the SDK and spanproof were set up.

``gunicorn -k gevent --preload`` (and ``opentelemetry-instrument gunicorn -k
gevent``) builds the tracer provider and spanproof in the master, forks, and the
worker calls ``monkey.patch_all()``: spanproof's at-fork hooks made real locks
before the patch, and its threads, started later, were greenlets.  The exporter's
sealer, started by an export on the batch processor's (real) thread, waited on a
lock that thread held; the processor's journal worker started under a real lock
another greenlet then waited on.  Every evidence span was lost without a word,
the sealing process could not start ("child watchers are only available on the
default loop", the spans of that export lost), and the worker hung at exit until
killed.  Now spanproof starts no thread there (one warning says so) and seals on
the threads that call it: every span is certified and the worker exits at once.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from exporter_support import SEED, trust_root, verified

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
gevent = pytest.importorskip("gevent")

# Seconds the worker is given to end its spans and exit; without the fix it hung
# until killed at this bound.
_BOUND = 15.0
_SPANS = 20

# Builds the SDK and spanproof (argv: kind, output directory, "early" to patch
# first, the key's seed), forks a worker that patches gevent (unless patched first)
# and ends evidence spans in greenlets, two batches apart (one batch for the
# witness), then exits through atexit (the provider's shutdown); prints the
# worker's exit status and how long it ran.
_SCRIPT = textwrap.dedent("""
    import json, os, sys, time
    kind, out, when = sys.argv[1:4]
    if when == "early":
        from gevent import monkey; monkey.patch_all()
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from spanproof.exporter import EvidenceSpanProcessor, SigningKey, SpanproofSpanExporter
    settings = dict(signing_key=SigningKey.from_seed(bytes.fromhex(sys.argv[4])),
                    seal_grace=0.05)
    if kind == "witness":  # served from this process's thread, for the worker
        import asyncio, socket, threading, uvicorn
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
        from spanproof.verifier.keys import TrustedKey, TrustRoot
        from spanproof.witness.app import create_app
        from spanproof.witness.service import Witness
        from spanproof.witness.signing import CheckpointSigner
        from spanproof.witness.store import Store
        producer = settings["signing_key"].private_key.public_key()
        witness = Witness(Store(out + ".witness.db"),
                          CheckpointSigner(Ed25519PrivateKey.generate(), "test/witness"),
                          producer_trust=TrustRoot((TrustedKey.from_public_key(producer),)))
        served = create_app(witness)
        answered = []

        async def app(scope, receive, send):
            if not answered:  # the first answer is late: the rest queue up meanwhile,
                answered.append(scope)  # and go in one delivery of many (helpers)
                await asyncio.sleep(0.5)
            await served(scope, receive, send)

        listening = socket.socket()
        listening.bind(("127.0.0.1", 0))
        server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
        threading.Thread(target=server.run, kwargs={"sockets": [listening]},
                         daemon=True).start()
        while not server.started:
            time.sleep(0.01)
        settings["witness_url"] = "http://127.0.0.1:%d" % listening.getsockname()[1]
    provider = TracerProvider()
    if kind == "processor":
        provider.add_span_processor(EvidenceSpanProcessor(out, **settings))
    else:
        exporter = SpanproofSpanExporter(out, sealing_process=kind == "sealing_process",
                                         **settings)
        provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=50))
    trace.set_tracer_provider(provider)
    pid = os.fork()
    if pid == 0:
        if when != "early":
            from gevent import monkey; monkey.patch_all()
        import gevent
        tracer = trace.get_tracer("t")
        def request(i):
            with tracer.start_as_current_span(f"request-{i}",
                                              attributes={"spanproof.evidence": True}):
                gevent.sleep(0.01)
        # The witness's case: every bundle sealed at the exit, for a delivery of many.
        batch = SPANS if kind == "witness" else SPANS // 2
        for first in range(0, SPANS, batch):
            gevent.joinall([gevent.spawn(request, i) for i in range(first, first + batch)])
            gevent.sleep(0.3)  # the batch processor exports them meanwhile
        sys.exit(0)
    start = time.monotonic()
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() - start > BOUND:
            os.kill(pid, 9)
            _, status = os.waitpid(pid, 0)
            break
        time.sleep(0.02)
    print(json.dumps({"status": status, "seconds": time.monotonic() - start}))
    os._exit(0)
""").replace("BOUND", repr(_BOUND)).replace("SPANS", repr(_SPANS))


def _run_worker(kind: str, out: Path, when: str = "late") -> tuple[dict[str, float], str]:
    done = subprocess.run(
        [sys.executable, "-c", _SCRIPT, kind, str(out), when, SEED.hex()],
        capture_output=True, text=True, timeout=_BOUND + 30,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1]), done.stderr


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["exporter", "sealing_process", "processor"])
def test_a_worker_that_patches_gevent_after_the_fork_certifies_every_span_and_exits(
    tmp_path: Path, kind: str,
) -> None:
    out = tmp_path / "out"
    worker, log = _run_worker(kind, out)
    assert worker["status"] == 0, log  # (9: killed at the bound, hung)
    assert worker["seconds"] < 5.0, log
    reports = verified(out, trust_root(tmp_path))
    names = sorted(r["span"]["name"] for report in reports for r in report.records or ())
    assert names == sorted(f"request-{i}" for i in range(_SPANS)), log
    # Said once, not per span or per thread not started.
    assert log.count("gevent patched the threading module after spanproof") == 1, log
    if kind == "sealing_process":
        assert "cannot start the sealing process: gevent patched" in log
    assert "Traceback" not in log, log


@pytest.mark.timeout(60)
def test_the_witness_submitter_of_such_a_worker_delivers_every_bundle_and_exits(
    tmp_path: Path,
) -> None:
    # Its thread, started at the fork, was real; the delivery helpers it started
    # after the patch were greenlets of it, blocking it on their job queue: one
    # receipt of 20, and the worker hung at exit.  It now delivers alone.
    out = tmp_path / "out"
    worker, log = _run_worker("witness", out)
    assert worker["status"] == 0, log
    assert worker["seconds"] < 5.0, log
    bundles = sorted(out.glob("*.spanproof.json"))
    assert len(bundles) == _SPANS, log
    receipts = sorted(out.glob("*.receipt.json"))
    assert [r.name.removesuffix(".receipt.json") for r in receipts] == [
        b.name.removesuffix(".spanproof.json") for b in bundles], log


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["exporter", "processor"])
def test_gevent_patched_before_the_sdk_keeps_spanproof_s_threads(
    tmp_path: Path, kind: str,
) -> None:
    out = tmp_path / "out"
    worker, log = _run_worker(kind, out, "early")
    assert worker["status"] == 0, log
    reports = verified(out, trust_root(tmp_path))
    assert sum(len(report.records or ()) for report in reports) == _SPANS
    assert "gevent patched the threading module" not in log, log
