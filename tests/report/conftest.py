"""Fixtures of the report and terminal tests.

Bundles are sealed by the producer's own code with fixed keys and a fixed clock,
through the command-line tests' helpers (``tests/cli/cli_support.py``).
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "cli"))

from cli_support import Keys, MakeBundle, bundle_maker, write_keys


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    """The fixed test key pair, written to files under *tmp_path*."""
    return write_keys(tmp_path / "keys")


@pytest.fixture
def make_bundle(tmp_path: Path, keys: Keys) -> MakeBundle:
    """Seal bodies into a bundle file under *tmp_path*/bundles; returns ``(path, sealed)``."""
    return bundle_maker(tmp_path / "bundles", keys.signer)


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's chromium; skipped when absent locally, a failure under ``CI=true``."""
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        message = "chromium is not installed (apt-get install chromium)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path
