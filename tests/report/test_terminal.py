"""Terminal output: ``spanproof show`` in colour on a terminal and plain when piped
(``NO_COLOR``, ``FORCE_COLOR``), and the progress bar of ``spanproof verify`` that
appears only on a terminal's stderr, never with ``--json``, never on stdout."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from cli_support import ROOT, TRACE, Keys, MakeBundle, flip_in_record, span_body
from look_alike import IGNORABLE_RANGES, reads_as

from spanproof.verifier._cli import main
from spanproof.verifier._term import (
    PROGRESS_THRESHOLD,
    Progress,
    Style,
    colour_enabled,
    printable,
)

ESC = "\x1b["


class FakeTTY(io.StringIO):
    """A text stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True


def fake_terminal(monkeypatch: pytest.MonkeyPatch) -> tuple[FakeTTY, FakeTTY]:
    """Replace stdout and stderr by fake terminals.  Call it in the test body: pytest
    re-installs its own capture streams between a fixture's setup and the test."""
    out, err = FakeTTY(), FakeTTY()
    monkeypatch.setattr("sys.stdout", out)
    monkeypatch.setattr("sys.stderr", err)
    return out, err


@pytest.fixture(autouse=True)
def _no_colour_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("NO_COLOR", "FORCE_COLOR", "TERM"):
        monkeypatch.delenv(name, raising=False)


# --------------------------------------------------------------------------- colour


def test_colour_enabled_rules():
    tty, pipe = FakeTTY(), io.StringIO()
    assert colour_enabled(tty, {}) and not colour_enabled(pipe, {})
    assert not colour_enabled(tty, {"NO_COLOR": "1"})
    assert colour_enabled(tty, {"NO_COLOR": ""})  # empty counts as unset
    assert colour_enabled(pipe, {"FORCE_COLOR": "1"})
    assert not colour_enabled(pipe, {"FORCE_COLOR": "0"})
    assert not colour_enabled(pipe, {"FORCE_COLOR": "1", "NO_COLOR": "1"})  # NO_COLOR wins
    assert not colour_enabled(tty, {"TERM": "dumb"})
    assert Style(False).paint("FAIL", "FAIL") == "FAIL"
    assert Style(True).paint("FAIL", "FAIL") == "\x1b[1;31mFAIL\x1b[0m"
    assert Style(True).paint("no-such-role", "x") == "x"


def test_show_is_coloured_on_a_terminal(monkeypatch, keys: Keys, make_bundle: MakeBundle):
    out, _ = fake_terminal(monkeypatch)
    path, _ = make_bundle()
    assert main(["show", "--key", str(keys.pub), str(path)]) == 0
    text = out.getvalue()
    assert "verdict   \x1b[1;32mOK\x1b[0m: verified by key" in text
    assert "\x1b[1mhandle_support_case\x1b[0m [SERVER, \x1b[32mOK\x1b[0m, 12.000 ms]" in text
    assert "\x1b[31mERROR: no account for customer CUST-4040\x1b[0m" in text
    assert "checks    9 of 9 checks passed" in text


def test_show_of_a_tampered_bundle_is_red_on_a_terminal(
    monkeypatch, keys: Keys, make_bundle: MakeBundle
):
    out, _ = fake_terminal(monkeypatch)
    path, _ = make_bundle()
    flip_in_record(path, 3)
    assert main(["show", "--key", str(keys.pub), str(path)]) == 1
    text = out.getvalue()
    assert "verdict   \x1b[1;31mFAIL\x1b[0m: \x1b[31mrecord 4: previous-hash mismatch" in text
    assert "checks    5 passed, 1 FAILED (step 7 chain), 3 skipped" in text


def test_show_is_plain_when_piped_or_with_no_color(
    capsys, monkeypatch: pytest.MonkeyPatch, keys: Keys, make_bundle: MakeBundle
):
    path, _ = make_bundle()
    assert main(["show", "--key", str(keys.pub), str(path)]) == 0
    piped = capsys.readouterr().out
    assert ESC not in piped and "verdict   OK: verified by key" in piped
    monkeypatch.setenv("NO_COLOR", "1")
    tty = FakeTTY()
    monkeypatch.setattr("sys.stdout", tty)
    assert main(["show", "--key", str(keys.pub), str(path)]) == 0
    assert tty.getvalue() == piped  # byte for byte the piped output


def test_force_color_colours_piped_output(
    capsys, monkeypatch: pytest.MonkeyPatch, keys: Keys, make_bundle: MakeBundle
):
    path, _ = make_bundle()
    monkeypatch.setenv("FORCE_COLOR", "1")
    assert main(["show", str(path)]) == 0
    out = capsys.readouterr().out
    assert "verdict   \x1b[1;33mUNVERIFIED\x1b[0m (no --key given)" in out


def test_control_sequences_from_the_bundle_stay_escaped_in_colour(
    monkeypatch, keys: Keys, make_bundle: MakeBundle
):
    out, _ = fake_terminal(monkeypatch)
    path, _ = make_bundle(bodies=[span_body(TRACE, ROOT, "", "evil\x1b[2J")])
    assert main(["show", "--key", str(keys.pub), str(path)]) == 0
    assert "\x1b[2J" not in out.getvalue() and "evil\\x1b[2J" in out.getvalue()


def test_what_renders_as_nothing_is_printed_as_its_escape():
    # Python counts U+034F, variation selectors and Hangul fillers as printable: a
    # terminal showed "approve" for "approve" and a U+034F.
    hidden = [chr(code) for low, high in IGNORABLE_RANGES for code in range(low, high + 1)]
    for ch in hidden:
        shown = printable(f"a{ch}b")
        assert shown.isascii() and reads_as(shown) != "ab", ascii(ch)
    assert printable("approve\u034f") == "approve\\u034f"
    assert printable("approve\ufe0f") == "approve\\ufe0f"
    assert printable("tag\U000e0041") == "tag\\U000e0041"


def test_a_character_drawn_as_a_blank_cell_is_printed_as_its_escape():
    # U+2800 BRAILLE PATTERN BLANK is printable and no white space: a key of
    # "customer.email" and it was printed bare, reading as customer.email.
    from spanproof.verifier._visible import key_text, name_text

    assert printable("customer.email\u2800") == "customer.email\\u2800"
    assert key_text("customer.email\u2800") == '"customer.email\u2800"'
    assert name_text("refund\u2800approve") == '"refund\u2800approve"'
    assert printable("\u2801") == "\u2801"  # a braille pattern with a dot is drawn


def test_combining_marks_of_text_not_in_nfc_are_printed_as_their_escape():
    assert printable("cafe\u0301") == "cafe\\u0301"
    assert printable("\u212b") == "\\u212b"  # ANGSTROM SIGN: NFC makes it U+00C5
    assert printable("\u0301abc") == "\\u0301abc"  # nothing to sit on
    for text in ("caf\u00e9", "na\u00efve", "\u0928\u092e\u0938\u094d\u0924\u0947",
                 "\u0645\u0631\u062d\u0628\u0627", "\ud55c\uad6d\uc5b4"):
        assert printable(text) == text


# ------------------------------------------------------------------------- progress


def _many(make_bundle: MakeBundle, tmp_path: Path, n: int) -> Path:
    folder = tmp_path / f"many-{n}"
    for i in range(n):
        make_bundle(f"case-{i:03d}", directory=folder, trace_id=f"{n:016x}{i + 1:016x}")
    return folder


def test_progress_bar_on_a_terminal_only(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, keys: Keys, make_bundle: MakeBundle
):
    folder = _many(make_bundle, tmp_path, PROGRESS_THRESHOLD + 1)
    out, err = fake_terminal(monkeypatch)
    assert main(["verify", "--key", str(keys.pub), str(folder)]) == 0
    bar = err.getvalue()
    assert f"\r[{'#' * 30}] {PROGRESS_THRESHOLD + 1}/{PROGRESS_THRESHOLD + 1} bundles checked" \
        in bar
    assert bar.endswith("\r\x1b[K")  # erased before the results are printed
    tty_out = out.getvalue()
    assert "\r" not in tty_out and "#" not in tty_out
    assert len(tty_out.splitlines()) == PROGRESS_THRESHOLD + 1

    # Piped: no bar, and stdout is byte for byte the same.
    piped_out, piped_err = io.StringIO(), io.StringIO()
    monkeypatch.setattr("sys.stdout", piped_out)
    monkeypatch.setattr("sys.stderr", piped_err)
    assert main(["verify", "--key", str(keys.pub), str(folder)]) == 0
    assert piped_err.getvalue() == ""
    assert piped_out.getvalue() == tty_out


def test_no_progress_bar_with_json_or_few_bundles(
    monkeypatch, tmp_path: Path, keys: Keys, make_bundle: MakeBundle
):
    folder = _many(make_bundle, tmp_path, PROGRESS_THRESHOLD + 1)
    few = _many(make_bundle, tmp_path, PROGRESS_THRESHOLD)
    _, err = fake_terminal(monkeypatch)
    assert main(["verify", "--json", "--key", str(keys.pub), str(folder)]) == 0
    assert err.getvalue() == ""
    assert main(["verify", "--key", str(keys.pub), str(few)]) == 0
    assert err.getvalue() == ""


def test_progress_redraws_only_when_it_moves():
    stream = FakeTTY()
    with Progress(1000, stream) as progress:
        for _ in range(1000):
            progress.advance()
    drawn = stream.getvalue().count("\r[")
    assert drawn == 101  # once per percent (0 to 100), not once per bundle
    assert Progress(1000, io.StringIO()).active is False
    assert Progress(1000, FakeTTY(), enabled=False).active is False
