"""Helpers of the witness tests: keys, bundles, vectors, live witness servers.

Imported by ``conftest.py`` and the test modules (a unique module name, so it never
clashes with other test folders' helpers)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from spanproof.exporter.keys import SigningKey
from spanproof.exporter.sealing import ChainPosition, SealedBundle, seal
from spanproof.verifier.statement import Producer

ROOT = Path(__file__).resolve().parents[2]
VECTORS = ROOT / ".." / "shared" / "vectors"

PRODUCER_SEED = bytes(range(100, 132))
OTHER_PRODUCER_SEED = bytes(range(140, 172))
WITNESS_SEED = bytes(range(1, 33))
OTHER_WITNESS_SEED = bytes(range(40, 72))
ORIGIN = "witness.test/spanproof"
SEALED_AT = datetime(2026, 3, 2, 9, 30, 0, tzinfo=timezone.utc)
INSTANCE = "5f3c9a0e7d1b2468"


def vectors_dir(name: str) -> Path:
    """The shared vector folder *name*; skip when absent, fail under ``CI=true``."""
    path = VECTORS / name
    if not path.is_dir():
        message = f"public test vectors not found at {path} (expected ../shared/vectors)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


def body(trace_id: str, n: int, name: str | None = None) -> dict[str, Any]:
    """A valid CER body (span, resource, scope) for span number *n*."""
    span = {
        "traceId": trace_id,
        "spanId": f"{n + 1:016x}",
        "parentSpanId": "",
        "traceState": "",
        "name": name or f"step {n}",
        "kind": "SPAN_KIND_INTERNAL",
        "startTimeUnixNano": str(1772443798000000000 + n * 1000),
        "endTimeUnixNano": str(1772443798000000500 + n * 1000),
        "status": {"code": "STATUS_CODE_OK", "message": ""},
        "attributes": {},
        "droppedAttributesCount": "0",
        "events": [],
        "droppedEventsCount": "0",
        "links": [],
        "droppedLinksCount": "0",
    }
    resource = {"attributes": {}, "droppedAttributesCount": "0", "schemaUrl": ""}
    scope = {
        "name": "tests",
        "version": "1",
        "attributes": {},
        "droppedAttributesCount": "0",
        "schemaUrl": "",
    }
    return {"span": span, "resource": resource, "scope": scope}


def trace_id(n: int) -> str:
    """A distinct valid trace id."""
    return f"{n + 1:032x}"


def make_bundle(
    trace: str,
    *,
    records: int = 2,
    key: SigningKey | None = None,
    instance: str = INSTANCE,
    name: str | None = None,
    sealed_at: datetime = SEALED_AT,
) -> SealedBundle:
    """Seal a segment-0 bundle of *records* records."""
    return seal(
        trace,
        [body(trace, i, name) for i in range(records)],
        ChainPosition.genesis(trace),
        signer=key or SigningKey.from_seed(PRODUCER_SEED),
        producer=Producer("spanproof", "0.1.0", instance),
        sealed_at=sealed_at,
        reason="root_ended",
    )


_RECORDS_OPEN = b',"records":[\n'
#: The largest bundle header (SPEC §8 step 1 item 4's H) a witness takes (SPEC §12.9).
MAX_HEADER_BYTES = 1024 * 1024


def padded(data: bytes, receipts: bytes) -> bytes:
    """The bundle *data* with *receipts* (JSON) as its header's ``receipts`` member."""
    line, rest = data.split(b"\n", 1)
    head = line[: -len(_RECORDS_OPEN) + 1]
    return head + b',"receipts":' + receipts + _RECORDS_OPEN + rest


def header_size(data: bytes) -> int:
    """The size of the bundle *data*'s header H (SPEC §8 step 1 item 4)."""
    return data.index(b"\n") + 1 - len(_RECORDS_OPEN) + 1


def write_bundle(directory: Path, sealed: SealedBundle) -> Path:
    """Write *sealed* under its standard file name; return the path."""
    path = directory / sealed.file_name
    path.write_bytes(sealed.data)
    return path


def write_private_key(path: Path, key: Ed25519PrivateKey) -> Path:
    """Write a PKCS#8 PEM private key (mode 0600) and its ``.pub``."""
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)
    Path(str(path) + ".pub").write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return path


class FakeClock:
    """A settable UTC clock."""

    def __init__(self) -> None:
        self.now = datetime(2026, 3, 2, 10, 0, 0, tzinfo=timezone.utc)

    def __call__(self) -> datetime:
        self.now += timedelta(milliseconds=1)
        return self.now


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until_up(
    url: str, deadline_s: float = 20.0, proc: subprocess.Popen[bytes] | None = None
) -> None:
    """Poll ``GET url/v1/checkpoint`` until it answers (bounded)."""
    deadline = time.monotonic() + deadline_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            out = proc.stdout.read().decode() if proc.stdout else ""
            raise AssertionError(f"witness exited with {proc.returncode}: {out}")
        try:
            with urllib.request.urlopen(url + "/v1/checkpoint", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError as e:
            last = e
        time.sleep(0.05)
    raise AssertionError(f"witness at {url} did not come up: {last}")


@dataclass
class ThreadServer:
    """A uvicorn server running an app in a background thread."""

    url: str
    server: Any
    thread: threading.Thread

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        assert not self.thread.is_alive(), "uvicorn did not stop"


def start_thread_server(app: Any, port: int | None = None) -> ThreadServer:
    """Serve *app* on 127.0.0.1 in a thread; return once it accepts requests."""
    import uvicorn

    port = port or free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise AssertionError("uvicorn did not start")
        time.sleep(0.02)
    return ThreadServer(url, server, thread)


def witness_command(*args: str) -> list[str]:
    """``python -m spanproof.witness ARGS`` with the test interpreter."""
    return [sys.executable, "-m", "spanproof.witness", *args]


def chromium_path() -> str | None:
    """Debian's chromium, if installed."""
    return shutil.which("chromium") or shutil.which("chromium-browser")
