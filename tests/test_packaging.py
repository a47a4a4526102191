"""Packaging rules from the design: the verifier stands alone, names live under
``spanproof.``.

* An auditor installs and runs the verifier without OpenTelemetry, gRPC, protobuf or PyNaCl
  (``pip install .`` brings only what the verifier imports; the producer's packages are
  the ``exporter`` extra), and the verifier never builds a network client (SPEC, DESIGN
  "The parts").
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
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

_IMPORT_ALL = """
import importlib, json, pkgutil, sys
before = set(sys.modules)  # what the interpreter loaded at start (site, .pth files)
names = []
for top in sys.argv[1].split(","):
    package = importlib.import_module(top)
    names += sorted(
        info.name for info in pkgutil.walk_packages(package.__path__, package.__name__ + ".")
        if info.name not in sys.argv[2].split(",")
    )
for name in names:
    importlib.import_module(name)
added = set(sys.modules) - before
files = sorted(f for f in (getattr(sys.modules[n], "__file__", None) for n in added) if f)
print(json.dumps({"submodules": names, "loaded": sorted(sys.modules), "files": files}))
"""

_FIND_SPECS = """
import importlib.util, json, sys
names = ["verifier", "exporter", "witness", "examples", "spanproof.verifier"]
print(json.dumps({name: importlib.util.find_spec(name) is not None for name in names}))
"""

FORBIDDEN_PREFIXES = ("opentelemetry", "grpc", "google.protobuf", "nacl")
NETWORK_CLIENTS = ("urllib.request", "http.client", "requests", "httpx", "urllib3", "aiohttp")


def _run(code: str, cwd: Path, *args: str) -> dict[str, object]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONSTARTUP")}
    result = subprocess.run(
        [sys.executable, "-c", code, *args],
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
    return _run(_IMPORT_ALL, tmp_path_factory.mktemp("import-verifier"), "spanproof.verifier", "")


#: The witness's module that needs the ``witness`` extra (its web stack): all the others
#: serve ``witness submit``, ``witness keygen`` and ``monitor``, which the plain install runs.
WEB_MODULES = ("spanproof.witness.app",)


@pytest.fixture(scope="module")
def imported_commands(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """What the verifier and the witness's commands but ``serve`` import."""
    return _run(_IMPORT_ALL, tmp_path_factory.mktemp("import-commands"),
                "spanproof.verifier,spanproof.witness", ",".join(WEB_MODULES))


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


def _installed_spanproof() -> metadata.Distribution:
    """The installed distribution's metadata, not a build's egg-info in the checkout."""
    (dist,) = metadata.distributions(name="spanproof", path=[sysconfig.get_path("purelib")])
    return dist


def _installs(extras: frozenset[str]) -> set[str]:
    """The distributions ``pip install .[extras]`` brings in this environment: the
    requirements of spanproof (with *extras*), of those, and so on (canonical names)."""
    found: set[str] = set()
    todo: list[tuple[metadata.Distribution, frozenset[str]]] = [(_installed_spanproof(), extras)]
    while todo:
        dist, wanted = todo.pop()
        for line in dist.requires or ():
            req = Requirement(line)
            if req.marker is not None and not any(
                req.marker.evaluate({"extra": extra}) for extra in wanted | {""}
            ):
                continue
            name = canonicalize_name(req.name)
            if name == "spanproof":  # an extra that names others (test: exporter, witness)
                todo.append((_installed_spanproof(), frozenset(req.extras)))
                continue
            if name in found:
                continue
            found.add(name)
            try:
                todo.append((metadata.distribution(name), frozenset(req.extras)))
            except metadata.PackageNotFoundError:
                pass  # not installed here (a requirement for another platform)
    return found


#: The distributions of the packages FORBIDDEN_PREFIXES names.
PRODUCER_DISTRIBUTIONS = {"opentelemetry-sdk", "opentelemetry-api", "opentelemetry-proto",
                          "opentelemetry-exporter-otlp", "grpcio", "protobuf", "pynacl"}


def test_the_plain_install_brings_none_of_the_producer_s_packages() -> None:
    base = _installs(frozenset())
    assert "cryptography" in base  # the walk is not vacuous
    assert base & PRODUCER_DISTRIBUTIONS == set()
    assert base & {"starlette", "uvicorn"} == set()


def test_the_exporter_extra_brings_the_producer_s_packages() -> None:
    # What the exporter imports is installed by asking for it, and the suite's own
    # extra asks for it (and for the witness's web stack).
    assert PRODUCER_DISTRIBUTIONS <= _installs(frozenset({"exporter"}))
    assert PRODUCER_DISTRIBUTIONS | {"starlette", "uvicorn"} <= _installs(frozenset({"test"}))


def test_the_witness_client_commands_import_no_producer_package(
    imported_commands: dict[str, object],
) -> None:
    submodules = imported_commands["submodules"]
    loaded = imported_commands["loaded"]
    assert isinstance(submodules, list) and isinstance(loaded, list)
    assert {"spanproof.witness.client", "spanproof.witness.monitor",
            "spanproof.witness._cli"} <= set(submodules)  # not vacuous
    offending = sorted(name for name in loaded if name.startswith(FORBIDDEN_PREFIXES))
    assert offending == [], f"the witness's commands pulled in producer packages: {offending}"
    assert not any(name.startswith("spanproof.exporter") for name in loaded)


@pytest.mark.parametrize("which", ["verifier", "witness-commands"])
def test_every_package_the_verifier_imports_comes_with_the_plain_install(
    imported: dict[str, object], imported_commands: dict[str, object], which: str,
) -> None:
    # The verifier's commands, and the witness's but `serve` (README, "Verifying
    # bundles"), run on `pip install .`.
    files = (imported if which == "verifier" else imported_commands)["files"]
    assert isinstance(files, list)
    # Each module file the verifier loaded from an installed distribution, by the
    # top-level name it sits under (the standard library's, and this checkout's in an
    # editable install, sit elsewhere).
    sites = {Path(sysconfig.get_path(key)).resolve() for key in ("purelib", "platlib")}
    tops: set[str] = set()
    for name in files:
        path = Path(name).resolve()
        for site in sites:
            if path.is_relative_to(site):
                tops.add(path.relative_to(site).parts[0].partition(".")[0])
    tops.discard("spanproof")
    assert "orjson" in tops  # the check below is not vacuous
    owners = metadata.packages_distributions()
    unowned = tops - owners.keys()
    assert unowned == set(), f"the verifier loaded files no distribution installs: {unowned}"
    brought = {canonicalize_name(dist) for top in tops for dist in owners[top]}
    missing = brought - _installs(frozenset())
    assert missing == set(), f"`pip install .` does not bring what the verifier imports: {missing}"
