"""Fixtures for the command-line tests (helpers live in ``cli_support``)."""

from __future__ import annotations

from pathlib import Path

import pytest
from cli_support import Keys, MakeBundle, bundle_maker, write_keys


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    """The fixed test key pair, written to files under *tmp_path*."""
    return write_keys(tmp_path / "keys")


@pytest.fixture
def make_bundle(tmp_path: Path, keys: Keys) -> MakeBundle:
    """Seal bodies into a bundle file under *tmp_path*/bundles; returns ``(path, sealed)``."""
    return bundle_maker(tmp_path / "bundles", keys.signer)
