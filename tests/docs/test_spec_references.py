"""The code cites SPEC.md by section and by verification step; every citation must
exist, and SPEC §8's step table must match the verifier's CHECKS order."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from spanproof.verifier import errors
from spanproof.verifier.receipt import RECEIPT_CHECK, RECEIPT_CHECK_STEP
from spanproof.verifier.verify import CHECKS

ROOT = Path(__file__).resolve().parents[2]
_SKIP_DIRS = {".venv", ".git", "build", "dist", "node_modules", "__pycache__"}

# "SPEC §8 step 3", "SPEC §8 steps 6-8", "SPEC §4.4, §8 step 11", "(SPEC §3, §8 step 1)"
_CITATION = re.compile(
    r"SPEC((?:\s*(?:,|and)?\s*§\d+(?:\.\d+)*(?:\s+steps?\s+\d+(?:\s*[-\u2013]\s*\d+)?)?)+)"
)
_SECTION = re.compile(r"§(\d+(?:\.\d+)*)")
_STEPS = re.compile(r"§8\s+steps?\s+(\d+)(?:\s*[-\u2013]\s*(\d+))?")

# Sections the code may cite before SPEC.md has them (none at present).
_PENDING_SECTIONS: tuple[str, ...] = ()


def _pending(number: str) -> bool:
    return any(number == p or number.startswith(p + ".") for p in _PENDING_SECTIONS)


def _sources() -> list[Path]:
    found = []
    for path in ROOT.rglob("*"):
        if any(part in _SKIP_DIRS or part.endswith(".egg-info") for part in path.parts):
            continue
        if path.suffix in (".py", ".md") and path.is_file() and path.name != "SPEC.md":
            found.append(path)
    return sorted(found)


def _citations() -> list[tuple[str, str]]:
    """(where, cited text) for every SPEC citation outside SPEC.md."""
    out = []
    for path in _sources():
        text = path.read_text(encoding="utf-8", errors="replace")
        for n, line in enumerate(text.splitlines(), 1):
            for match in _CITATION.finditer(line):
                out.append((f"{path.relative_to(ROOT)}:{n}", match.group(1)))
    return out


def _spec_sections(spec_text: str) -> set[str]:
    heads = re.findall(r"^#{2,4} (\d+(?:\.\d+)*) ", spec_text, re.MULTILINE)
    return set(heads)


def _spec_steps(spec_text: str) -> set[int]:
    steps: set[int] = set()
    for heading in re.findall(r"^### Step .*$", spec_text, re.MULTILINE):
        steps.update(int(n) for n in re.findall(r"[Ss]tep (\d+)", heading))
    return steps


def _expand(first: str, last: str | None) -> range:
    return range(int(first), int(last or first) + 1)


def test_code_cites_spec() -> None:
    assert _citations(), "no SPEC citations found; is the search broken?"


def test_every_cited_section_exists(spec_text: str) -> None:
    sections = _spec_sections(spec_text)
    missing = [
        (where, number)
        for where, cited in _citations()
        for number in _SECTION.findall(cited)
        if number not in sections and not _pending(number)
    ]
    assert not missing, f"code cites SPEC sections that do not exist: {missing}"


def test_pending_sections_are_still_missing(spec_text: str) -> None:
    # Once SPEC.md gains a pending section, drop it from _PENDING_SECTIONS so its
    # citations are checked too.
    sections = _spec_sections(spec_text)
    assert not [p for p in _PENDING_SECTIONS if p in sections]


def test_every_cited_verification_step_exists(spec_text: str) -> None:
    steps = _spec_steps(spec_text)
    assert steps == set(range(1, 12)), f"SPEC §8 should have steps 1..11, has {sorted(steps)}"
    missing = [
        (where, step)
        for where, cited in _citations()
        for first, last in _STEPS.findall(cited)
        for step in _expand(first, last)
        if step not in steps
    ]
    assert not missing, f"code cites SPEC §8 steps that do not exist: {missing}"


def test_step_table_matches_verifier_checks(spec_section) -> None:  # type: ignore[no-untyped-def]
    text = spec_section("8")
    table = dict(re.findall(r"^\| (\d+) \| `([a-z-]+)` \|", text, re.MULTILINE))
    # Steps 1-9 are the bundle's own checks; step 10 is the receipt's (SPEC §12.5).
    checks = {**{i + 1: n for i, n in enumerate(CHECKS)}, RECEIPT_CHECK_STEP: RECEIPT_CHECK}
    assert {int(k): v for k, v in table.items()} == checks
    for i, name in checks.items():
        assert re.search(rf"^### Step {i} — `{name}`|step {i} — `{name}`", text, re.MULTILINE), (
            f"SPEC §8 has no heading for step {i} `{name}`"
        )


# Where verify.py raises (or reports) each error class, by SPEC §8 step.
_RAISED_AT = {
    "InvalidBundle": {1, 2, 4, 6},
    "SignatureError": {3},
    "TrustError": {5},
    "ChainError": {7, 8},
    "IncompleteBundle": {9},
}


def test_error_classes_cite_the_steps_that_raise_them() -> None:
    wrong = {}
    for name, steps in _RAISED_AT.items():
        doc = getattr(errors, name).__doc__ or ""
        cited = {s for a, b in _STEPS.findall(doc) for s in _expand(a, b)}
        if cited and not cited <= steps:
            wrong[name] = sorted(cited)
    assert not wrong, f"error docstrings cite steps that do not raise them: {wrong}"


def test_receipt_check_uses_the_reserved_step(spec_section) -> None:  # type: ignore[no-untyped-def]
    receipt = pytest.importorskip("spanproof.verifier.receipt")
    text = spec_section("8")
    match = re.search(r"^### Step (\d+) — `receipt`", text, re.MULTILINE)
    assert match, "SPEC §8 has no receipt step"
    assert int(match.group(1)) == receipt.RECEIPT_CHECK_STEP
