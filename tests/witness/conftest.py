"""Fixtures of the witness tests (helpers live in ``witness_helpers.py``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from witness_helpers import PRODUCER_SEED, WITNESS_SEED, ThreadServer, start_thread_server

from spanproof.exporter.keys import SigningKey
from spanproof.verifier.keys import TrustedKey, TrustRoot


@pytest.fixture
def producer_key() -> SigningKey:
    """The producer's signing key (fixed seed)."""
    return SigningKey.from_seed(PRODUCER_SEED)


@pytest.fixture
def producer_trust(producer_key: SigningKey) -> TrustRoot:
    """A trust root holding only the producer key."""
    return TrustRoot((TrustedKey.from_public_key(producer_key.private_key.public_key()),))


@pytest.fixture
def witness_private() -> Ed25519PrivateKey:
    """The witness's checkpoint key (fixed seed)."""
    return Ed25519PrivateKey.from_private_bytes(WITNESS_SEED)


@pytest.fixture
def serve_witness(tmp_path: Path) -> Iterator[Any]:
    """Factory: start an in-thread witness server for a Witness (keyword arguments: the
    app's limits, see ``create_app``); stopped at teardown."""
    from spanproof.witness.app import create_app

    servers: list[ThreadServer] = []

    def start(witness: Any, port: int | None = None, **limits: Any) -> ThreadServer:
        srv = start_thread_server(create_app(witness, **limits), port)
        servers.append(srv)
        return srv

    yield start
    for srv in servers:
        if srv.thread.is_alive():
            srv.stop()
