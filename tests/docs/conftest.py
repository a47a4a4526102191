"""Shared helpers for the documentation tests: paths and the worked-example generator."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
SPEC = DOCS / "SPEC.md"
EXAMPLE_DIR = DOCS / "example"


def _load_make_example() -> ModuleType:
    name = "spanproof_docs_make_example"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, EXAMPLE_DIR / "make_example.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def make_example() -> ModuleType:
    """The docs/example/make_example.py module."""
    return _load_make_example()


@pytest.fixture(scope="session")
def example(make_example: ModuleType):  # type: ignore[no-untyped-def]
    """The worked example, regenerated in memory."""
    return make_example.build()


@pytest.fixture(scope="session")
def spec_text() -> str:
    """The text of docs/SPEC.md."""
    return SPEC.read_text(encoding="utf-8")


@pytest.fixture(scope="session")
def example_dir() -> Path:
    """docs/example/."""
    return EXAMPLE_DIR


@pytest.fixture(scope="session")
def spec_section(spec_text: str):  # type: ignore[no-untyped-def]
    """A function returning the body of one top-level section of SPEC.md."""
    return lambda number: section(spec_text, number)


def section(text: str, number: str) -> str:
    """The body of the top-level section ``## <number> ...`` of SPEC.md."""
    lines = text.splitlines(keepends=True)
    out: list[str] = []
    inside = False
    for line in lines:
        if line.startswith("## "):
            if inside:
                break
            inside = line.startswith(f"## {number} ")
        if inside:
            out.append(line)
    assert out, f"SPEC.md has no section {number}"
    return "".join(out)
