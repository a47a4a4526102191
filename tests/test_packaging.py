"""Packaging rules from the design: the verifier stands alone, names live under
``spanproof.``.

* An auditor installs and runs the verifier without OpenTelemetry, gRPC, protobuf or PyNaCl,
  and the verifier never builds a network client (SPEC, DESIGN "The parts").
* No generic top-level module (``verifier``, ``exporter``, ...) is installed.

Each check runs in a fresh interpreter, so modules other tests imported do not count.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from importlib import metadata
from pathlib import Path

import pytest

_IMPORT_ALL = """
import importlib, json, pkgutil, sys
import spanproof.verifier as package
names = sorted(
    info.name for info in pkgutil.walk_packages(package.__path__, package.__name__ + ".")
)
for name in names:
    importlib.import_module(name)
print(json.dumps({"submodules": names, "loaded": sorted(sys.modules)}))
"""

_FIND_SPECS = """
import importlib.util, json, sys
names = ["verifier", "exporter", "witness", "examples", "spanproof.verifier"]
print(json.dumps({name: importlib.util.find_spec(name) is not None for name in names}))
"""

FORBIDDEN_PREFIXES = ("opentelemetry", "grpc", "google.protobuf", "nacl")
NETWORK_CLIENTS = ("urllib.request", "http.client", "requests", "httpx", "urllib3", "aiohttp")


def _run(code: str, cwd: Path) -> dict[str, object]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONSTARTUP")}
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    data: dict[str, object] = json.loads(result.stdout.strip().splitlines()[-1])
    return data


@pytest.fixture(scope="module")
def imported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    return _run(_IMPORT_ALL, tmp_path_factory.mktemp("import-verifier"))


def test_all_verifier_submodules_import(imported: dict[str, object]) -> None:
    submodules = imported["submodules"]
    assert isinstance(submodules, list)
    for name in ("canonical", "values", "records", "statement", "dsse", "bundle", "verify",
                 "keys", "errors"):
        assert f"spanproof.verifier.{name}" in submodules


def test_verifier_imports_no_opentelemetry_grpc_or_protobuf(imported: dict[str, object]) -> None:
    loaded = imported["loaded"]
    assert isinstance(loaded, list)
    offending = sorted(
        name
        for name in loaded
        if name.startswith(FORBIDDEN_PREFIXES)
    )
    assert offending == [], f"the verifier pulled in producer-side dependencies: {offending}"
    assert not any(name.startswith("spanproof.exporter") for name in loaded)
    assert not any(name.startswith("spanproof.witness") for name in loaded)


def test_verifier_imports_no_network_client(imported: dict[str, object]) -> None:
    loaded = imported["loaded"]
    assert isinstance(loaded, list)
    present = sorted(set(NETWORK_CLIENTS) & set(loaded))
    assert present == [], f"the verifier imported network clients: {present}"


def test_no_generic_top_level_modules_are_installed(tmp_path: Path) -> None:
    # Run outside the checkout, where only the installed distribution is visible.
    found = _run(_FIND_SPECS, tmp_path)
    assert found["spanproof.verifier"] is True  # the check below is not vacuous
    assert {name for name, present in found.items() if present} == {"spanproof.verifier"}


def test_distribution_declares_only_the_spanproof_namespace() -> None:
    # The installed metadata, not a build's spanproof.egg-info in the checkout.
    (dist,) = metadata.distributions(name="spanproof", path=[sysconfig.get_path("purelib")])
    top_level = dist.read_text("top_level.txt")
    if top_level is not None:
        assert top_level.split() == ["spanproof"]
    for path in dist.files or ():
        parts = Path(str(path)).parts
        assert parts[0] not in {"verifier", "exporter", "witness", "examples"}, path
