"""Fixtures shared by the whole test suite.  Keep this file small and generic."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# The public test vectors (RFC 8785, RFC 6962/9162 Merkle proofs, Wycheproof) sit
# beside the project checkout, never inside it: ``<checkout>/../shared/vectors``.
VECTORS_DIR = Path(__file__).resolve().parents[1] / ".." / "shared" / "vectors"


@pytest.fixture(scope="session")
def vectors_dir() -> Path:
    """The public test vectors folder; skipped when absent, but a failure on CI."""
    if not VECTORS_DIR.is_dir():
        message = (
            "public test vectors not found at ../shared/vectors "
            "(only present beside the project checkout)"
        )
        if os.environ.get("CI") == "true":
            pytest.fail(f"{message}; CI must never skip them", pytrace=False)
        pytest.skip(message)
    return VECTORS_DIR
