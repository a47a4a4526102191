"""``spanproof witness {keygen,submit}`` and ``spanproof monitor`` against live witnesses
(uvicorn on 127.0.0.1 in a thread)."""

from __future__ import annotations

import base64
import errno
import io
import json
import os
import stat
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from witness_helpers import (
    MAX_HEADER_BYTES,
    ORIGIN,
    OTHER_WITNESS_SEED,
    FakeClock,
    free_port,
    header_size,
    make_bundle,
    padded,
    trace_id,
    write_bundle,
    write_private_key,
)

from spanproof.exporter.keys import SigningKey
from spanproof.verifier.checkpoint import WitnessKey
from spanproof.verifier.keys import TrustRoot
from spanproof.verifier.receipt import receipt_path, verify_receipt
from spanproof.verifier.verify import check_bundle
from spanproof.witness._cli import main, parse_listen, server_stack
from spanproof.witness.monitor import MONITOR_EVIDENCE_MEDIA_TYPE, find_receipts
from spanproof.witness.service import Witness
from spanproof.witness.signing import CheckpointSigner, generate_key_file
from spanproof.witness.store import Store


@pytest.fixture
def files(
    tmp_path: Path, witness_private: Ed25519PrivateKey, producer_key: SigningKey
) -> dict[str, Path]:
    key = write_private_key(tmp_path / "witness.key", witness_private)
    producer_pub = tmp_path / "producer.pub"
    producer_pub.write_bytes(producer_key.public_pem())
    bundles = tmp_path / "bundles"
    bundles.mkdir()
    return {
        "key": key,
        "pub": Path(str(key) + ".pub"),
        "producer": producer_pub,
        "bundles": bundles,
    }


@pytest.fixture
def open_witness(tmp_path: Path, producer_trust: TrustRoot) -> Iterator[Callable[..., Witness]]:
    """Factory: a Witness on a named database (closed at teardown)."""
    stores: list[Store] = []

    def make(name: str = "w.db", key: Ed25519PrivateKey | None = None) -> Witness:
        store = Store(str(tmp_path / name))
        stores.append(store)
        signer = CheckpointSigner(
            key or Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33))), ORIGIN
        )
        return Witness(store, signer, producer_trust=producer_trust, clock=FakeClock())

    yield make
    for store in stores:
        store.close()


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    status = main(argv)
    out, err = capsys.readouterr()
    return status, out, err


def test_parse_listen() -> None:
    assert parse_listen("127.0.0.1:8080") == ("127.0.0.1", 8080)
    assert parse_listen("[::1]:9") == ("::1", 9)
    assert parse_listen(":80") == ("127.0.0.1", 80)
    for bad in ("localhost", "h:x", "h:70000", "h:\u00b2", "h:\u0668\u0660", "h:+80", "h:8_0"):
        with pytest.raises(ValueError, match="--listen must be HOST:PORT"):
            parse_listen(bad)


@pytest.mark.parametrize("value", ["0", "86401", "1e3", "inf", "nan", "1_0", "\u0663", "-1"])
def test_timeout_is_a_plain_number_of_seconds(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], value: str
) -> None:
    # float() takes "1e3", "1_0" and "٣": a typo would pass as a number.
    from spanproof.verifier._cli import main as spanproof_main

    status = spanproof_main(["witness", "submit", str(tmp_path / "b.spanproof.json"),
                             "--url", "http://127.0.0.1:9", "--timeout", value])
    err = capsys.readouterr().err
    assert status == 2
    assert (f"argument --timeout: must be a number of seconds above 0 and at most 86400, "
            f"not {value!r}") in err


def test_server_stack_prefers_the_c_parser_and_loop_and_falls_back_without_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert server_stack() == ("httptools", "uvloop")  # installed with the witness extra
    import importlib.util

    real = importlib.util.find_spec

    def without(name: str, *args: Any) -> Any:
        return None if name in ("httptools", "uvloop") else real(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", without)
    assert server_stack() == ("h11", "asyncio")


def test_keygen(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key = tmp_path / "new.key"
    status, out, _ = _run(
        ["witness", "keygen", "--key", str(key), "--origin", "w.example/log"], capsys
    )
    assert status == 0 and (key.stat().st_mode & 0o777) == 0o600
    vkey = next(
        line.split(": ", 1)[1] for line in out.splitlines() if line.startswith("verifier key")
    )
    pinned = WitnessKey.from_vkey(vkey)
    assert pinned.name == "w.example/log"
    assert WitnessKey.load(str(key) + ".pub").public_key == pinned.public_key
    status, _, err = _run(["witness", "keygen", "--key", str(key)], capsys)
    assert status == 2 and "refusing to overwrite" in err


def test_keygen_shows_control_characters_of_the_key_path_escaped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = tmp_path / "wk\x1b[31m.key"
    status, out, _ = _run(["witness", "keygen", "--key", str(key)], capsys)
    assert status == 0 and key.exists()
    assert "\x1b" not in out
    assert "wk\\x1b[31m.key (private, mode 0600)" in out


def test_a_key_generated_for_an_origin_is_served_under_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # 'keygen --origin' printed a verifier key naming that origin, and 'serve'
    # without --origin started a log of another origin (derived from the key): every
    # receipt then failed against the key auditors had pinned.
    key = tmp_path / "w.key"
    status, out, _ = _run(["witness", "keygen", "--key", str(key), "--origin", "w.example/log"],
                          capsys)
    assert status == 0 and f"{key}.origin" in out
    assert (tmp_path / "w.key.origin").read_text() == "w.example/log\n"
    assert CheckpointSigner.load(key).origin == "w.example/log"
    assert CheckpointSigner.load(key, "w.example/log").origin == "w.example/log"
    status, _, err = _run(["witness", "serve", "--key", str(key), "--origin", "other/log",
                           "--db", str(tmp_path / "w.db"), "--listen", "127.0.0.1:0"], capsys)
    assert status == 2
    assert "was generated for origin 'w.example/log'" in err
    assert not (tmp_path / "w.db").exists()


def test_a_key_generated_without_an_origin_keeps_the_derived_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = tmp_path / "w.key"
    status, out, _ = _run(["witness", "keygen", "--key", str(key)], capsys)
    assert status == 0 and not (tmp_path / "w.key.origin").exists()
    origin = next(line.split(": ", 1)[1] for line in out.splitlines()
                  if line.startswith("origin"))
    assert CheckpointSigner.load(key).origin == origin
    assert CheckpointSigner.load(key, "chosen/log").origin == "chosen/log"


@pytest.mark.parametrize("content", [b"", b"a\nb\n", b"\xff\n"])
def test_a_damaged_origin_file_is_refused_by_name(tmp_path: Path, content: bytes) -> None:
    key = tmp_path / "w.key"
    generate_key_file(key)
    (tmp_path / "w.key.origin").write_bytes(content)
    with pytest.raises(ValueError, match=r"w\.key\.origin"):
        CheckpointSigner.load(key)


def test_output_that_cannot_be_written_is_said_to_be_standard_output(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    class FullStream(io.StringIO):
        def write(self, text: str) -> int:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr("sys.stdout", FullStream())
    status = main(["witness", "keygen", "--key", str(tmp_path / "new.key")])
    err = capsys.readouterr().err
    assert status == 1
    assert err == (f"spanproof: error: cannot write to standard output: "
                   f"{os.strerror(errno.ENOSPC)}\n")


def test_submit_writes_verified_receipts_beside_the_bundles(
    files: dict[str, Path],
    open_witness: Any,
    serve_witness: Any,
    producer_trust: TrustRoot,
    capsys: pytest.CaptureFixture[str],
) -> None:
    srv = serve_witness(open_witness())
    paths = [write_bundle(files["bundles"], make_bundle(trace_id(i))) for i in range(3)]
    args = [
        "witness",
        "submit",
        str(files["bundles"]),
        "--url",
        srv.url,
        "--producer-key",
        str(files["producer"]),
        "--witness-key",
        str(files["pub"]),
    ]
    status, out, _ = _run(args, capsys)
    assert status == 0, out
    assert out.count("OK ") == 3 and "receipt verified" in out
    keys = [WitnessKey.load(str(files["pub"]))]
    for path in paths:
        verify_receipt(
            Path(receipt_path(path)).read_bytes(), check_bundle(path, producer_trust), keys
        )
    status, out, _ = _run(args, capsys)
    assert status == 0 and out.count("already logged") == 3
    # A tampered bundle is refused before it is sent.
    bad = files["bundles"] / ("f" * 32 + "-0000-x.spanproof.json")
    bad.write_bytes(paths[0].read_bytes().replace(b"step 1", b"step X"))
    status, out, _ = _run([*args[:2], str(bad), *args[3:]], capsys)
    assert status == 1 and out.startswith("FAIL") and "not submitted" in out
    # Without a local key check the witness itself refuses it (HTTP 422).
    status, out, _ = _run(["witness", "submit", str(bad), "--url", srv.url], capsys)
    assert status == 1 and "HTTP 422" in out


def test_a_bundle_whose_name_has_no_place_for_a_receipt_is_not_submitted(
    files: dict[str, Path], open_witness: Any, serve_witness: Any,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # The name was checked once the witness had logged the bundle: "FAIL ...: receipt
    # not written", said of a bundle that was in the log.
    witness = open_witness()
    srv = serve_witness(witness)
    bundle = write_bundle(files["bundles"], make_bundle(trace_id(0)))
    odd = bundle.with_name("odd.json")
    bundle.rename(odd)
    status, out, _ = _run(["witness", "submit", str(odd), "--url", srv.url], capsys)
    assert status == 1
    assert out == (f"FAIL {odd}: not submitted: the file name does not end in "
                   ".spanproof.json, so its receipt would have no place beside it "
                   "(SPEC §12.6); rename it\n")
    assert witness.size == 0


def test_a_receipt_that_cannot_be_written_is_named_and_a_usage_error(
    files: dict[str, Path], open_witness: Any, serve_witness: Any,
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A read-only directory: exit 1 and "[Errno 30] ...: '.X.receipt.json.bddf0a0a.tmp'",
    # the hidden temporary file, not the receipt, and not a word that it was logged.
    import errno

    from spanproof.witness import _cli

    def read_only(path: str, data: bytes) -> None:
        raise OSError(errno.EROFS, "Read-only file system", f".{path}.0123abcd.tmp")

    monkeypatch.setattr(_cli, "write_atomic", read_only)
    srv = serve_witness(open_witness())
    bundle = write_bundle(files["bundles"], make_bundle(trace_id(0)))
    status, out, _ = _run(["witness", "submit", str(bundle), "--url", srv.url], capsys)
    assert status == 2
    assert out == (f"FAIL {bundle}: logged at index 0, but its receipt cannot be written "
                   f"to {receipt_path(bundle)} (Read-only file system)\n")


class RequestLog:
    """Records the path of every request ``witness submit`` sends; *refuse* maps a
    path to the HTTP status the witness answers it with instead."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, refuse: dict[str, int] | None = None):
        from spanproof.witness.client import HTTPStatusError, WitnessClient

        self.paths: list[str] = []
        real = WitnessClient.request
        refuse = refuse or {}

        def request(client: WitnessClient, method: str, path: str, **kw: Any) -> Any:
            self.paths.append(path)
            if path in refuse:
                raise HTTPStatusError(refuse[path], "refused by the test")
            return real(client, method, path, **kw)

        monkeypatch.setattr(WitnessClient, "request", request)


def _served_bundles(files: dict[str, Path], open_witness: Any, serve_witness: Any,
                    count: int) -> tuple[str, list[Path]]:
    """A served witness's URL, and *count* new bundles in the bundles folder, sorted."""
    srv = serve_witness(open_witness())
    paths = sorted(write_bundle(files["bundles"], make_bundle(trace_id(i))) for i in range(count))
    return srv.url, paths


def _submit_args(files: dict[str, Path], url: str, *paths: Path) -> list[str]:
    return ["witness", "submit", *(str(p) for p in paths or [files["bundles"]]), "--url", url,
            "--producer-key", str(files["producer"]), "--witness-key", str(files["pub"])]


def test_submit_sends_a_bundle_larger_than_the_witness_takes_as_its_envelope(
    files: dict[str, Path], open_witness: Any, serve_witness: Any,
    producer_trust: TrustRoot, capsys: pytest.CaptureFixture[str],
) -> None:
    # A 413 was a FAIL: a bundle over the witness's --max-body (a segment cut at
    # 64 MiB of values is, under the default) could never be witnessed.
    import io
    import json

    from spanproof.verifier.bundle import BundleReader

    paths = [write_bundle(files["bundles"], make_bundle(trace_id(i))) for i in range(2)]
    envelope = max(len(json.dumps(BundleReader(io.BytesIO(p.read_bytes())).read_header()[0]
                                  .to_json(), separators=(",", ":"))) for p in paths)
    assert envelope + 64 < min(p.stat().st_size for p in paths)
    srv = serve_witness(open_witness(), max_body=envelope + 64)
    status, out, _ = _run(["witness", "submit", str(files["bundles"]), "--url", srv.url,
                           "--producer-key", str(files["producer"]),
                           "--witness-key", str(files["pub"])], capsys)
    assert status == 0, out
    assert out.count("OK ") == 2
    assert out.count("sent as its DSSE envelope alone, its records not checked") == 2
    keys = [WitnessKey.load(str(files["pub"]))]
    for path in paths:
        verify_receipt(
            Path(receipt_path(path)).read_bytes(), check_bundle(path, producer_trust), keys
        )


def test_submit_sends_a_bundle_whose_header_the_witness_refuses_as_its_envelope(
    files: dict[str, Path], open_witness: Any, serve_witness: Any,
    producer_trust: TrustRoot, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A witness refuses a bundle header over 1 MiB unverified (413, SPEC §12.9): a
    # bundle with receipts in its header is still witnessed, as its envelope alone
    # past that, and as the bundle it is below it.
    witness = open_witness()
    srv = serve_witness(witness)
    small, large = (make_bundle(trace_id(i)) for i in range(2))
    paths = [files["bundles"] / small.file_name, files["bundles"] / large.file_name]
    paths[0].write_bytes(padded(small.data, b'[{"receipt":"kept elsewhere"}]'))
    paths[1].write_bytes(padded(large.data, b'"' + b"x" * MAX_HEADER_BYTES + b'"'))
    assert header_size(paths[1].read_bytes()) > MAX_HEADER_BYTES
    log = RequestLog(monkeypatch)
    status, out, _ = _run(_submit_args(files, srv.url), capsys)
    assert status == 0, out
    lines = sorted(out.splitlines())
    assert [line.split(":")[0] for line in lines] == [f"OK {p}" for p in sorted(paths)]
    alone = "sent as its DSSE envelope alone, its records not checked"
    assert [alone in line for line in out.splitlines()] == [
        str(p) == str(paths[1]) for p in sorted(paths)]
    # The batch refused whole, then each alone, the large one again as its envelope.
    assert log.paths == ["/v1/submit-batch", "/v1/submit", "/v1/submit", "/v1/submit"]
    assert sorted(e.checked for e, _, _ in (witness.lookup(index=i)[0] for i in range(2))
                  ) == ["bundle", "envelope"]
    keys = [WitnessKey.load(str(files["pub"]))]
    for path in paths:
        verify_receipt(
            Path(receipt_path(path)).read_bytes(), check_bundle(path, producer_trust), keys
        )


def test_submit_sends_bundles_in_batches(
    files: dict[str, Path], open_witness: Any, serve_witness: Any,
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    url, paths = _served_bundles(files, open_witness, serve_witness, 20)
    log = RequestLog(monkeypatch)
    status, out, _ = _run(_submit_args(files, url), capsys)
    assert status == 0, out
    assert log.paths == ["/v1/submit-batch", "/v1/submit-batch"]  # 16, then 4
    lines = out.splitlines()
    assert [line.split(":")[0] for line in lines] == [f"OK {p}" for p in paths]
    assert all("receipt verified" in line for line in lines)
    assert sorted(int(line.split("at index ")[1].split(",")[0]) for line in lines) == list(
        range(20))
    # A receipt file is the witness's receipt, byte for byte: the last batch's are
    # against the latest checkpoint, as /v1/receipt answers.
    from spanproof.witness.client import WitnessClient

    for path in paths[16:]:
        index = int(next(line for line in lines if str(path) in line)
                    .split("at index ")[1].split(",")[0])
        served = WitnessClient(url).request("GET", "/v1/receipt",
                                                query={"index": index}).body
        assert Path(receipt_path(path)).read_bytes() == served


def test_submit_to_a_witness_without_batches_goes_one_by_one(
    files: dict[str, Path], open_witness: Any, serve_witness: Any,
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    url, _ = _served_bundles(files, open_witness, serve_witness, 18)
    log = RequestLog(monkeypatch, refuse={"/v1/submit-batch": 404})
    status, out, _ = _run(_submit_args(files, url), capsys)
    assert status == 0, out
    assert out.count("OK ") == 18
    # Asked once; the second group goes one by one without asking again.
    assert log.paths == ["/v1/submit-batch"] + ["/v1/submit"] * 18


@pytest.mark.parametrize(("refusal", "status", "sent"), [
    (413, 0, "one by one"), (400, 0, "one by one"), (503, 3, "nothing"),
    # A rate limit or a timeout said "not now": the bundles were not refused (exit 1),
    # and sending them one by one would only ask again at once.
    (429, 3, "nothing"), (408, 3, "nothing"), (302, 3, "nothing"),
])
def test_a_batch_refused_whole(
    files: dict[str, Path], open_witness: Any, serve_witness: Any,
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
    refusal: int, status: int, sent: str,
) -> None:
    url, _ = _served_bundles(files, open_witness, serve_witness, 3)
    log = RequestLog(monkeypatch, refuse={"/v1/submit-batch": refusal})
    code, out, _ = _run([*_submit_args(files, url), "--retry-for", "0"], capsys)
    assert code == status
    if sent == "one by one":  # each gets its own answer; batches stay on
        assert out.count("OK ") == 3
        assert log.paths == ["/v1/submit-batch"] + ["/v1/submit"] * 3
    else:  # the witness is unavailable: every bundle fails, and says why
        assert out.count(f"witness answered HTTP {refusal}: refused by the test") == 3
        assert log.paths == ["/v1/submit-batch"]


@pytest.mark.parametrize("refusal", [429, 408, 503, 307])
def test_a_bundle_the_witness_cannot_take_now_is_unavailable_not_failed(
    files: dict[str, Path], open_witness: Any, serve_witness: Any,
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, refusal: int,
) -> None:
    url, paths = _served_bundles(files, open_witness, serve_witness, 1)
    log = RequestLog(monkeypatch, refuse={"/v1/submit": refusal})
    code, out, err = _run([*_submit_args(files, url), "--retry-for", "0"], capsys)
    assert (code, log.paths, err) == (3, ["/v1/submit"], "")  # retries off: no word of them
    assert out.startswith(f"FAIL {paths[0]}: witness answered HTTP {refusal}: ")


class Refusals:
    """Records the path of every request ``witness submit`` sends, and answers those
    to a path in *script* with its HTTP errors in turn, ``(status, Retry-After or
    None)``, before passing them on to the witness."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch,
                 script: dict[str, list[tuple[int, str | None]]]) -> None:
        from spanproof.witness.client import HTTPStatusError, WitnessClient

        self.paths: list[str] = []
        real = WitnessClient.request

        def request(client: WitnessClient, method: str, path: str, **kw: Any) -> Any:
            self.paths.append(path)
            if script.get(path):
                status, retry_after = script[path].pop(0)
                raise HTTPStatusError(status, "not now (the test)", retry_after=retry_after)
            return real(client, method, path, **kw)

        monkeypatch.setattr(WitnessClient, "request", request)


@pytest.fixture
def waits(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The waits ``witness submit`` takes before trying again (not slept), with the
    backoff's jitter at its top: 1, 2, 4, 8, 8... seconds."""
    from spanproof.witness import _cli

    taken: list[float] = []
    monkeypatch.setattr(_cli, "_sleep", taken.append)
    monkeypatch.setattr(_cli.random, "random", lambda: 1.0)
    return taken


def test_submit_sends_again_what_a_busy_witness_did_not_take_when_it_asks(
    files: dict[str, Path], open_witness: Any, serve_witness: Any,
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, waits: list[float],
) -> None:
    # A busy witness answers 503 with Retry-After: 1 (SPEC §12.9); a command that
    # gave up at once (exit 3) left a by-hand submit to be run again by hand.
    url, paths = _served_bundles(files, open_witness, serve_witness, 20)
    log = Refusals(monkeypatch, {"/v1/submit-batch": [(503, "3")]})
    status, out, err = _run(_submit_args(files, url), capsys)
    assert status == 0, out
    assert waits == [3.0]  # the Retry-After, longer than the first backoff (1 s)
    assert log.paths == ["/v1/submit-batch"] * 3  # 16 refused, the 16 again, then 4
    assert [line.split(":")[0] for line in out.splitlines()] == [f"OK {p}" for p in paths]
    assert ("16 bundle(s) not taken now (witness answered HTTP 503: not now (the test)); "
            "trying again in 3.0 s") in err


def test_submit_backs_off_between_tries_without_a_retry_after(
    files: dict[str, Path], open_witness: Any, serve_witness: Any,
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, waits: list[float],
) -> None:
    url, _ = _served_bundles(files, open_witness, serve_witness, 3)
    # A 429 without Retry-After, one whose Retry-After is no number of seconds or date
    # (ignored), and a 408, whose Retry-After is not the wait a client is asked for.
    log = Refusals(monkeypatch, {"/v1/submit-batch": [(429, None), (503, "-5"), (408, "60")]})
    status, out, _ = _run(_submit_args(files, url), capsys)
    assert (status, out.count("OK ")) == (0, 3), out
    assert waits == [1.0, 2.0, 4.0]
    assert log.paths == ["/v1/submit-batch"] * 4


def test_submit_sends_again_only_the_bundles_not_taken(
    files: dict[str, Path], open_witness: Any, serve_witness: Any,
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, waits: list[float],
) -> None:
    url, paths = _served_bundles(files, open_witness, serve_witness, 3)
    paths[1].write_bytes(paths[1].read_bytes().replace(b"step 1", b"step X"))
    log = Refusals(monkeypatch, {"/v1/submit-batch": [(404, None)],
                                 "/v1/submit": [(502, None)]})
    # Without --producer-key nothing is checked before it is sent: the witness rejects
    # the altered bundle (422), which no new try changes.
    code, out, _ = _run(["witness", "submit", str(files["bundles"]), "--url", url], capsys)
    assert code == 1 and waits == [1.0]
    assert log.paths == ["/v1/submit-batch"] + ["/v1/submit"] * 4  # the first bundle twice
    lines = out.splitlines()
    assert lines[0].startswith(f"OK {paths[0]}: logged at index ")
    assert lines[1].startswith(f"FAIL {paths[1]}: witness answered HTTP 422: ")
    assert lines[2].startswith(f"OK {paths[2]}: logged at index ")


def test_submit_stops_trying_when_retry_for_runs_out(
    files: dict[str, Path], open_witness: Any, serve_witness: Any,
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, waits: list[float],
) -> None:
    url, paths = _served_bundles(files, open_witness, serve_witness, 2)
    log = Refusals(monkeypatch, {"/v1/submit-batch": [(503, None)] * 100})
    status, out, err = _run([*_submit_args(files, url), "--retry-for", "10"], capsys)
    assert status == 3
    assert waits == [1.0, 2.0, 4.0, 3.0]  # the last cut to what is left
    assert log.paths == ["/v1/submit-batch"] * 5
    assert err.endswith("; not trying again: --retry-for (10 s) has run out\n"), err
    assert out.splitlines() == [
        f"FAIL {p}: witness answered HTTP 503: not now (the test)" for p in paths]
    assert not any(Path(receipt_path(p)).exists() for p in paths)


def test_a_retry_after_beyond_retry_for_is_not_waited_for(
    files: dict[str, Path], open_witness: Any, serve_witness: Any,
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, waits: list[float],
) -> None:
    url, _ = _served_bundles(files, open_witness, serve_witness, 2)
    log = Refusals(monkeypatch, {"/v1/submit-batch": [(429, "31")]})
    status, out, err = _run(_submit_args(files, url), capsys)  # 30 s by default
    assert (status, waits, log.paths) == (3, [], ["/v1/submit-batch"])
    assert out.count("witness answered HTTP 429") == 2
    assert err == ("spanproof: 2 bundle(s) not taken now (witness answered HTTP 429: not now "
                   "(the test)); not trying again: the witness asks for 31 s, more than the "
                   "30 s left of --retry-for\n")


@pytest.mark.parametrize("not_taken", [2, 0])
def test_an_interrupted_wait_keeps_the_lines_of_bundles_already_logged(
    files: dict[str, Path], open_witness: Any, serve_witness: Any,
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, not_taken: int,
) -> None:
    # The lines were printed once the group's retries ended: Ctrl-C during a wait
    # lost the OK lines of bundles whose receipts were already written.
    from spanproof.witness import _cli

    url, paths = _served_bundles(files, open_witness, serve_witness, 3)
    from spanproof.witness.client import HTTPStatusError, WitnessClient

    Refusals(monkeypatch, {"/v1/submit-batch": [(404, None)]})  # one by one
    answers = iter([(503, "1") if i == not_taken else None for i in range(3)])
    real = WitnessClient.request

    def request(client: WitnessClient, method: str, path: str, **kw: Any) -> Any:
        answer = next(answers) if path == "/v1/submit" else None
        if answer is not None:
            raise HTTPStatusError(answer[0], "busy (the test)", retry_after=answer[1])
        return real(client, method, path, **kw)

    def interrupted(seconds: float) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(WitnessClient, "request", request)
    monkeypatch.setattr(_cli, "_sleep", interrupted)
    status, out, _ = _run(_submit_args(files, url), capsys)
    assert status == 130
    # Every line, in order: the bundle not taken with the failure it had.
    assert [line.split(":")[0] for line in out.splitlines()] == [
        f"{'FAIL' if i == not_taken else 'OK'} {p}" for i, p in enumerate(paths)]
    assert [Path(receipt_path(p)).exists() for p in paths] == [
        i != not_taken for i in range(3)]


def test_retry_for_is_spent_once_over_the_whole_command(
    files: dict[str, Path], capsys: pytest.CaptureFixture[str], waits: list[float],
) -> None:
    # A witness that stays down costs --retry-for once, not once per batch of 16.
    for i in range(20):
        write_bundle(files["bundles"], make_bundle(trace_id(i)))
    url = f"http://127.0.0.1:{free_port()}"
    status, out, _ = _run(["witness", "submit", str(files["bundles"]), "--url", url,
                           "--timeout", "2", "--retry-for", "4"], capsys)
    assert status == 3 and out.count("cannot reach witness") == 20
    assert waits == [1.0, 2.0, 1.0]  # the first batch's, then the second's


def test_submit_sends_again_when_a_kept_receipts_proof_cannot_be_given_now(
    files: dict[str, Path], open_witness: Any, serve_witness: Any,
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, waits: list[float],
) -> None:
    url, (first, second) = _served_bundles(files, open_witness, serve_witness, 2)
    assert _run(_submit_args(files, url, first), capsys)[0] == 0
    assert _run(_submit_args(files, url, second), capsys)[0] == 0
    Refusals(monkeypatch, {"/v1/proof/consistency": [(503, "2")]})
    code, out, _ = _run(_submit_args(files, url, first), capsys)
    assert code == 0 and "kept the receipt already beside it" in out, out
    assert waits == [2.0]  # the proof request's Retry-After
    assert not _conflicts(first)


@pytest.mark.parametrize("value", ["-1", "86401", "1e3", "inf", "nan", "1_0", "\u0663", "x"])
def test_retry_for_is_a_plain_number_of_seconds_up_to_a_day(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], value: str
) -> None:
    from spanproof.verifier._cli import main as spanproof_main

    status = spanproof_main(["witness", "submit", str(tmp_path / "b.spanproof.json"),
                             "--url", "http://127.0.0.1:9", "--retry-for", value])
    out, err = capsys.readouterr()
    assert (status, out) == (2, "")
    assert (f"argument --retry-for: must be a number of seconds from 0 to 86400, "
            f"not {value!r}") in err


def test_a_badly_answered_batch_is_sent_one_by_one(
    files: dict[str, Path], open_witness: Any, serve_witness: Any,
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    from spanproof.witness.client import MalformedAnswer, WitnessClient

    url, _ = _served_bundles(files, open_witness, serve_witness, 3)

    def malformed(client: WitnessClient, datas: Any, **kw: Any) -> Any:
        raise MalformedAnswer("witness answer to a batch of 3 does not hold one result each")

    monkeypatch.setattr(WitnessClient, "submit_batch", malformed)
    code, out, _ = _run(_submit_args(files, url), capsys)
    assert code == 0 and out.count("OK ") == 3


def test_a_rejected_bundle_in_a_batch_fails_alone(
    files: dict[str, Path], open_witness: Any, serve_witness: Any,
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    url, paths = _served_bundles(files, open_witness, serve_witness, 3)
    paths[1].write_bytes(paths[1].read_bytes().replace(b"step 1", b"step X"))
    log = RequestLog(monkeypatch)
    # Without --producer-key nothing is checked before it is sent.
    code, out, _ = _run(["witness", "submit", str(files["bundles"]), "--url", url], capsys)
    assert code == 1 and log.paths == ["/v1/submit-batch"]
    lines = out.splitlines()
    assert lines[0].startswith(f"OK {paths[0]}: logged at index ")
    assert lines[1].startswith(f"FAIL {paths[1]}: witness answered HTTP 422: bundle rejected: ")
    assert lines[2].startswith(f"OK {paths[2]}: logged at index ")
    assert not Path(receipt_path(paths[1])).exists()


def test_submit_to_an_unreachable_witness(
    files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_bundle(files["bundles"], make_bundle(trace_id(1)))
    url = f"http://127.0.0.1:{free_port()}"
    status, out, _ = _run(["witness", "submit", str(path), "--url", url, "--timeout", "2",
                           "--retry-for", "0"], capsys)
    assert status == 3 and "cannot reach witness" in out
    assert not Path(receipt_path(path)).exists()


@pytest.mark.timeout(60)  # the defect was a reader blocked forever on the pipe
def test_submit_refuses_a_named_pipe_named_like_a_bundle(
    files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    pipe = files["bundles"] / "pipe.spanproof.json"
    os.mkfifo(pipe)
    url = f"http://127.0.0.1:{free_port()}"
    status, out, _ = _run(["witness", "submit", str(pipe), "--url", url, "--timeout", "2"], capsys)
    assert status == 1
    assert out.startswith(f"FAIL {pipe}: ") and "not a regular file (a named pipe)" in out


@pytest.mark.timeout(60)
def test_submit_words_an_unreadable_bundle_as_verify_does(
    files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    # The line was Python's OSError text, "[Errno 22] not a regular file (a named
    # pipe): '<path>'", where README promises verify's "cannot read: ..." wording.
    pipe = files["bundles"] / "pipe.spanproof.json"
    os.mkfifo(pipe)
    url = f"http://127.0.0.1:{free_port()}"
    status, out, _ = _run(["witness", "submit", str(pipe), "--url", url, "--timeout", "2"], capsys)
    assert status == 1
    assert out == f"FAIL {pipe}: cannot read: not a regular file (a named pipe)\n"


@pytest.mark.timeout(60)  # the defect was a command blocked forever on the pipe
@pytest.mark.parametrize("option", ["--producer-key", "--witness-key"])
def test_submit_with_a_named_pipe_nobody_writes_as_a_key_fails_without_blocking(
    files: dict[str, Path], capsys: pytest.CaptureFixture[str], option: str
) -> None:
    write_bundle(files["bundles"], make_bundle(trace_id(3)))
    pipe = files["bundles"].parent / "key.pub"
    os.mkfifo(pipe)
    url = f"http://127.0.0.1:{free_port()}"
    status, out, err = _run(
        ["witness", "submit", str(files["bundles"]), "--url", url, option, str(pipe)], capsys
    )
    assert status == 2 and out == ""
    assert f"{pipe}: empty, no public key in it" in err


@pytest.mark.parametrize("option", ["--producer-key", "--witness-key"])
def test_submit_names_a_key_it_cannot_read(
    files: dict[str, Path], capsys: pytest.CaptureFixture[str], option: str
) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    missing = files["bundles"].parent / "missing.pub"
    status, out, err = _run(
        ["witness", "submit", str(files["bundles"]), "--url", url, option, str(missing)], capsys
    )
    what = "key file" if option == "--producer-key" else "witness key"
    assert status == 2 and out == ""
    assert err == f"spanproof: error: {missing}: cannot read {what} (No such file or directory)\n"


def test_submit_reads_a_producer_key_given_through_a_pipe_once(
    files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    # --producer-key <(...): a pipe can be read once; a second read finds it empty.
    path = write_bundle(files["bundles"], make_bundle(trace_id(3)))
    read_end, write_end = os.pipe()
    os.write(write_end, files["producer"].read_bytes())
    os.close(write_end)
    url = f"http://127.0.0.1:{free_port()}"
    try:
        status, out, err = _run(["witness", "submit", str(path), "--url", url, "--timeout",
                                 "2", "--retry-for", "0", "--producer-key",
                                 f"/dev/fd/{read_end}"], capsys)
    finally:
        os.close(read_end)
    # The key was accepted and the bundle checked against it: only the witness is missing.
    assert status == 3, err
    assert out.startswith(f"FAIL {path}: cannot reach witness {url}")


def test_submit_refuses_the_producer_key_pinned_as_the_witness_key(
    files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    # As verify: a receipt signed with the producer's own key would be kept as
    # the witness's, proving nothing the bundle's signature does not.
    path = write_bundle(files["bundles"], make_bundle(trace_id(3)))
    url = f"http://127.0.0.1:{free_port()}"
    status, out, err = _run(["witness", "submit", str(path), "--url", url,
                             "--producer-key", str(files["producer"]),
                             "--witness-key", str(files["producer"])], capsys)
    assert status == 2 and out == ""
    assert "the witness key is also a trusted producer key" in err
    assert not list(files["bundles"].glob("*.receipt*"))


@pytest.mark.timeout(30)  # without the refusal it would serve until stopped
def test_serve_refuses_its_own_key_as_a_producer_key(
    files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A witness that accepts bundles signed with its own key witnesses its own word.
    status, out, err = _run(["witness", "serve", "--key", str(files["key"]),
                             "--producer-key", str(files["pub"]),
                             "--db", str(tmp_path / "w.db"), "--listen", "127.0.0.1:0"], capsys)
    assert status == 2 and out == ""
    assert f"{files['key']}: the witness key is also a trusted producer key" in err
    assert not (tmp_path / "w.db").exists()


def test_submit_checks_the_bytes_it_sends_not_a_second_read_of_the_file(
    files: dict[str, Path], capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The file changes between the read that is sent and a second read that is
    # checked: only a check of the sent bytes refuses what would be sent.
    import io

    import spanproof.witness._cli as wcli

    path = write_bundle(files["bundles"], make_bundle(trace_id(3)))
    good = path.read_bytes()
    at = good.rindex(b'"name":"') + len(b'"name":"')  # in the last record
    tampered = good[:at] + b"X" + good[at + 1:]
    assert tampered != good

    def read_then_changed(name: Any) -> Any:
        return io.BytesIO(tampered if str(name) == str(path) else Path(name).read_bytes())

    monkeypatch.setattr(wcli, "open_regular", read_then_changed)
    url = f"http://127.0.0.1:{free_port()}"
    status, out, _ = _run(["witness", "submit", str(path), "--url", url, "--timeout", "2",
                           "--producer-key", str(files["producer"])], capsys)
    assert status == 1
    assert out.startswith(f"FAIL {path}: not submitted: ")


def test_submit_names_a_bundle_path_that_does_not_exist(
    files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    missing = files["bundles"] / "absent"
    url = f"http://127.0.0.1:{free_port()}"
    status, out, err = _run(["witness", "submit", str(missing), "--url", url], capsys)
    assert status == 2 and out == ""
    assert err == f"spanproof: error: {missing}: No such file or directory\n"


def test_serve_takes_producer_keys_from_key_files_and_a_trust_root(
    files: dict[str, Path], tmp_path: Path, producer_key: SigningKey
) -> None:
    from spanproof.verifier import TRUST_ROOT_MEDIA_TYPE
    from spanproof.verifier.errors import InvalidKey
    from spanproof.witness._cli import _producer_trust

    other = SigningKey.from_seed(bytes([7]) * 32)
    root = tmp_path / "producers.json"
    root.write_text(json.dumps({
        "mediaType": TRUST_ROOT_MEDIA_TYPE,
        "keys": [{"publicKey": other.public_pem().decode(),
                  "validFrom": "2026-01-01T00:00:00Z"}],
    }))
    trust = _producer_trust([str(files["producer"])], str(root))
    assert trust is not None
    assert [k.keyid for k in trust.keys] == [other.keyid, producer_key.keyid]
    assert _producer_trust(None, None) is None
    with pytest.raises(InvalidKey, match=r"missing\.json: cannot read trust root "
                                         r"\(No such file or directory\)"):
        _producer_trust(None, str(tmp_path / "missing.json"))


@pytest.mark.timeout(60)
def test_monitor_with_a_named_pipe_nobody_writes_fails_without_blocking(
    files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    pipe = tmp_path / "pipe"
    os.mkfifo(pipe)
    status, out = _monitor(url, tmp_path / "s.json", pipe, capsys)  # as the witness key
    assert status == 2 and out == ""
    # As the state file: a usage error (it read as empty, then failed as malformed
    # JSON, exit 1, the status of an alert), and left as it was.
    status, out, err = _run(["monitor", "--url", url, "--state", str(pipe),
                             "--witness-key", str(files["pub"])], capsys)
    assert (status, out) == (2, "")
    assert err == (f"spanproof: error: --state {pipe}: cannot read or write it (not a "
                   "regular file, which the state must be)\n")
    assert stat.S_ISFIFO(pipe.stat().st_mode)


def test_submit_stops_at_a_directory_it_cannot_list(
    files: dict[str, Path], capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    write_bundle(files["bundles"], make_bundle(trace_id(3)))
    locked = files["bundles"] / "locked"
    locked.mkdir()
    real_scandir = os.scandir

    def scandir(path: Any = ".") -> Any:  # the tests may run as root: simulated
        if os.fspath(path) == str(locked):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    url = f"http://127.0.0.1:{free_port()}"
    status, out, err = _run(["witness", "submit", str(files["bundles"]), "--url", url], capsys)
    assert status == 2 and out == ""
    assert "Permission denied" in err and str(locked) in err


def test_submit_escapes_control_characters_of_a_file_name(
    files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_bundle(files["bundles"], make_bundle(trace_id(2)))
    odd = path.with_name("x\x1b[2K\rOK-" + path.name)
    path.rename(odd)
    url = f"http://127.0.0.1:{free_port()}"
    status, out, _ = _run(["witness", "submit", str(odd), "--url", url, "--timeout", "2",
                           "--retry-for", "0"], capsys)
    assert status == 3 and "cannot reach witness" in out
    assert "\x1b" not in out and "\r" not in out
    assert out.startswith(f"FAIL {files['bundles']}/x\\x1b[2K\\rOK-")


def _monitor(
    url: str, state: Path, key: Path, capsys: pytest.CaptureFixture[str], *receipts: Path
) -> tuple[int, str]:
    status, out, _ = _run(
        [
            "monitor",
            "--url",
            url,
            "--state",
            str(state),
            "--witness-key",
            str(key),
            "--timeout",
            "5",
            *(arg for path in receipts for arg in ("--receipts", str(path))),
        ],
        capsys,
    )
    return status, out


def _evidence(state: Path) -> list[Path]:
    """The evidence files the monitor saved beside its state file, sorted."""
    return sorted(state.parent.glob(state.name + ".evidence-*.json"))


def _receipts(witness: Witness, directory: Path, traces: range) -> list[Path]:
    """Log one bundle per trace in one batch and write each one's receipt file."""
    directory.mkdir(exist_ok=True)
    bundles = [make_bundle(trace_id(t)) for t in traces]
    paths = []
    for sealed, result in zip(bundles, witness.submit_batch([b.data for b in bundles]),
                              strict=True):
        assert not isinstance(result, Exception)
        path = Path(receipt_path(write_bundle(directory, sealed)))
        path.write_bytes(result.receipt.to_bytes())
        paths.append(path)
    return paths


def test_monitor_checks_receipts_against_the_log_it_is_shown(
    files: dict[str, Path], open_witness: Any, serve_witness: Any, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    witness = open_witness()
    held = tmp_path / "held"
    _receipts(witness, held, range(2))  # checkpoint of size 2
    _receipts(witness, held / "later", range(2, 5))  # of size 5
    witness.submit(make_bundle(trace_id(9)).data)  # the log has grown since: size 6
    srv = serve_witness(witness)
    status, out = _monitor(srv.url, tmp_path / "m.json", files["pub"], capsys, held)
    assert status == 0, out
    assert out.splitlines()[-1] == (
        f"OK {ORIGIN}: 5 receipt(s), under 2 checkpoint(s), are consistent with tree size 6"
    )


@pytest.mark.parametrize(
    "shown_size, held_size, alert",
    [
        (3, 1, "fork: the tree of size 3 does not extend the tree of size 1"),
        (4, 4, "fork: two checkpoints of tree size 4 with different roots"),
        (3, 4, "rollback: the log now shows tree size 3, smaller than the size 4"),
    ],
    ids=["receipt_older", "same_size", "receipt_newer"],
)
def test_monitor_alerts_on_a_receipt_from_a_history_it_is_not_shown(
    files: dict[str, Path], open_witness: Any, serve_witness: Any, tmp_path: Path,
    capsys: pytest.CaptureFixture[str], shown_size: int, held_size: int, alert: str,
) -> None:
    # One witness key, two histories: monitors are served one, a producer got its
    # receipt from the other.  Offline the receipt verifies; only comparing the
    # checkpoints shows the split view.
    shown = open_witness("shown.db")
    for i in range(shown_size):
        shown.submit(make_bundle(trace_id(i)).data)
    hidden = open_witness("hidden.db")
    for i in range(held_size - 1):
        hidden.submit(make_bundle(trace_id(100 + i)).data)
    (forked,) = _receipts(hidden, tmp_path / "held", range(200, 201))
    srv = serve_witness(shown)
    state = tmp_path / "m.json"
    status, out = _monitor(srv.url, state, files["pub"], capsys, forked)
    last = out.splitlines()[-1]
    assert status == 1 and last.startswith(f"ALERT {srv.url}: receipt {forked}: {alert}")
    (saved,) = _evidence(state)
    assert last.endswith(f"evidence saved to {saved}")
    evidence = json.loads(saved.read_text())
    assert evidence["mediaType"] == MONITOR_EVIDENCE_MEDIA_TYPE
    assert evidence["previous"] == hidden.checkpoint(held_size).decode()
    assert evidence["current"] == shown.checkpoint(shown_size).decode()
    # The monitor's own state is the shown log's: a run without the receipt is OK.
    assert _monitor(srv.url, state, files["pub"], capsys)[0] == 0


def test_monitor_checks_the_conflict_receipt_witness_submit_kept(
    files: dict[str, Path], open_witness: Any, serve_witness: Any, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # witness submit keeps a receipt of another history beside the bundle's as
    # <name>.receipt.conflict-<hex>.json.  When the kept receipt is the monitored
    # log's, the conflict receipt is the one that shows the fork: skipped, the
    # monitor said OK with the signed evidence of a fork in the directory.
    from spanproof.verifier.receipt import conflict_receipt_path

    shown = open_witness("shown.db")
    shown.submit(make_bundle(trace_id(60)).data)
    hidden = open_witness("hidden.db")
    hidden.submit(make_bundle(trace_id(50)).data)
    held = tmp_path / "held"
    (kept,) = _receipts(shown, held, range(300, 301))
    (other,) = _receipts(hidden, tmp_path / "other", range(300, 301))
    conflict = Path(conflict_receipt_path(str(kept), other.read_bytes()))
    conflict.write_bytes(other.read_bytes())
    srv = serve_witness(shown)
    status, out = _monitor(srv.url, tmp_path / "m.json", files["pub"], capsys, held)
    assert status == 1, out
    assert out.splitlines()[-1].startswith(
        f"ALERT {srv.url}: receipt {conflict}: fork: two checkpoints of tree size 2 "
        "with different roots"), out


def test_monitor_checks_receipts_below_a_symlinked_directory(
    files: dict[str, Path], open_witness: Any, serve_witness: Any, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # A receipt of another history kept in a linked folder (an archive, say) is
    # checked like one in a plain folder: skipping it would hide the fork.
    shown = open_witness("shown.db")
    for i in range(3):
        shown.submit(make_bundle(trace_id(i)).data)
    hidden = open_witness("hidden.db")
    (forked,) = _receipts(hidden, tmp_path / "archive", range(200, 201))
    held = tmp_path / "held"
    _receipts(shown, held, range(300, 301))
    (held / "archived").symlink_to(tmp_path / "archive", target_is_directory=True)
    (held / "again").symlink_to(tmp_path / "archive", target_is_directory=True)
    (held / "archived" / "loop").symlink_to(held, target_is_directory=True)
    srv = serve_witness(shown)
    status, out = _monitor(srv.url, tmp_path / "m.json", files["pub"], capsys, held)
    lines = out.splitlines()
    seen = held / "again" / forked.name  # the first way to the folder, in sorted order
    assert status == 1 and lines[-1].startswith(
        f"ALERT {srv.url}: receipt {seen}: fork: the tree of size 4 does not extend"), out
    assert str(held / "archived") not in out  # the second way to the folder is not searched


@pytest.mark.parametrize(
    "change, why",
    [
        (lambda d: d.update(treeSize="7"), "receipt tree size 7 does not match"),
        (lambda d: d.update(origin="another.example/log"),
         "receipt origin 'another.example/log' does not match"),
        (lambda d: d.update(leafIndex="0"), "inclusion proof does not reach"),
    ],
    ids=["tree-size", "origin", "leaf-index"],
)
def test_monitor_does_not_count_a_receipt_that_does_not_describe_its_checkpoint(
    files: dict[str, Path], open_witness: Any, serve_witness: Any, tmp_path: Path,
    capsys: pytest.CaptureFixture[str], change: Any, why: str,
) -> None:
    # As spanproof verify refuses it: it is no receipt of that checkpoint.
    witness = open_witness()
    _, edited = _receipts(witness, tmp_path / "held", range(2))
    doc = json.loads(edited.read_bytes())
    change(doc)
    edited.write_text(json.dumps(doc))
    srv = serve_witness(witness)
    status, out = _monitor(srv.url, tmp_path / "m.json", files["pub"], capsys, tmp_path / "held")
    assert status == 1
    assert any(line.startswith(f"FAIL receipt {edited}: ") and why in line
               for line in out.splitlines()), out
    assert out.splitlines()[-1].startswith(f"OK {ORIGIN}: 1 receipt(s), under 1 checkpoint(s)")


def test_receipts_of_one_checkpoint_share_what_is_held(
    open_witness: Any, tmp_path: Path, files: dict[str, Path]
) -> None:
    # However each is padded with unchecked signature lines, one checkpoint is held once.
    from spanproof.verifier.checkpoint import load_witness_keys
    from spanproof.witness.monitor import read_receipt_checkpoints

    witness = open_witness()
    paths = _receipts(witness, tmp_path / "held", range(3))
    for i, path in enumerate(paths):
        doc = json.loads(path.read_bytes())
        doc["checkpoint"] += f"\u2014 cosigner{i} {base64.b64encode(bytes(68)).decode()}\n" * (
            30 * i)
        path.write_text(json.dumps(doc))
    held, unchecked = read_receipt_checkpoints([str(p) for p in paths],
                                               load_witness_keys([str(files["pub"])]))
    assert unchecked == []
    assert [p for p, _ in held] == [str(p) for p in paths]
    assert held[0][1] is held[1][1] is held[2][1]


def test_monitor_lists_receipts_it_cannot_check(
    files: dict[str, Path], open_witness: Any, serve_witness: Any, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    witness = open_witness()
    _, other = _receipts(witness, tmp_path / "held", range(2))
    other.write_text("not a receipt")
    stranger = open_witness("stranger.db", key=Ed25519PrivateKey.from_private_bytes(bytes(32)))
    (foreign,) = _receipts(stranger, tmp_path / "foreign", range(7, 8))
    empty = tmp_path / "empty"
    empty.mkdir()
    srv = serve_witness(witness)
    status, out = _monitor(srv.url, tmp_path / "m.json", files["pub"], capsys,
                           tmp_path / "held", foreign, empty)
    lines = out.splitlines()
    assert status == 1
    assert f"FAIL receipt {empty}: no receipts (*.receipt.json) found" in lines
    assert any(line.startswith(f"FAIL receipt {other}: receipt: invalid JSON") for line in lines)
    assert any(line.startswith(f"FAIL receipt {foreign}: checkpoint not signed by a pinned")
               for line in lines)
    assert lines[-1].startswith(f"OK {ORIGIN}: 1 receipt(s), under 1 checkpoint(s)")
    status, _, err = _run(["monitor", "--url", srv.url, "--state", str(tmp_path / "m.json"),
                           "--witness-key", str(files["pub"]),
                           "--receipts", str(tmp_path / "missing")], capsys)
    assert status == 2 and f"{tmp_path / 'missing'}: No such file or directory" in err


def test_a_receipt_signed_by_another_pinned_key_under_the_origin_is_no_fork_alert(
    files: dict[str, Path], open_witness: Any, serve_witness: Any, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # With two witness keys pinned, a second witness signing under the first one's
    # origin made the monitor raise a fork ALERT against the first, with "evidence"
    # pairing checkpoints two keys signed: proof against neither.
    shown = open_witness()
    shown.submit(make_bundle(trace_id(1)).data)
    other_key = Ed25519PrivateKey.from_private_bytes(bytes(32))
    other = open_witness("other.db", key=other_key)
    (foreign,) = _receipts(other, tmp_path / "held", range(7, 8))  # tree size 1, another root
    other_pub = tmp_path / "other.pub"
    other_pub.write_bytes(other_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    srv = serve_witness(shown)
    state = tmp_path / "m.json"
    status, out, _ = _run(["monitor", "--url", srv.url, "--state", str(state), "--witness-key",
                           str(files["pub"]), "--witness-key", str(other_pub), "--receipts",
                           str(foreign)], capsys)
    lines = out.splitlines()
    assert status == 1, out
    assert not any(line.startswith("ALERT") for line in lines) and not _evidence(state)
    signer = WitnessKey(other_key.public_key()).key_hash(ORIGIN).hex()
    assert any(line.startswith(f"FAIL receipt {foreign}: its checkpoint is signed by another "
                               f"pinned key ({signer}) than the log's (") for line in lines), out
    assert lines[-1].startswith(f"OK {ORIGIN}: 0 receipt(s)")


def test_monitor_follows_a_growing_log(
    files: dict[str, Path],
    open_witness: Any,
    serve_witness: Any,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    witness = open_witness()
    srv = serve_witness(witness)
    state = tmp_path / "monitor.json"
    status, out = _monitor(srv.url, state, files["pub"], capsys)
    assert status == 0 and "first checkpoint recorded (tree size 0" in out
    for i in range(3):
        witness.submit(make_bundle(trace_id(i)).data)
    status, out = _monitor(srv.url, state, files["pub"], capsys)
    assert status == 0 and "tree size 0 -> 3" in out
    for i in range(3, 8):
        witness.submit(make_bundle(trace_id(i)).data)
    status, out = _monitor(srv.url, state, files["pub"], capsys)
    assert status == 0 and "tree size 3 -> 8 is consistent" in out
    status, out = _monitor(srv.url, state, files["pub"], capsys)
    assert status == 0 and "unchanged at tree size 8" in out
    assert json.loads(state.read_text())["checkpoint"].startswith(ORIGIN + "\n8\n")


@pytest.mark.parametrize(
    "second_history, alert",
    [
        # Same key, same origin, same size, other entries: a split view.
        (lambda i: trace_id(100 + i), "fork: two checkpoints of tree size 4 with different roots"),
    ],
)
def test_monitor_detects_a_fork_at_equal_size(
    files: dict[str, Path],
    open_witness: Any,
    serve_witness: Any,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    second_history: Any,
    alert: str,
) -> None:
    port = free_port()
    honest = open_witness("honest.db")
    for i in range(4):
        honest.submit(make_bundle(trace_id(i)).data)
    srv = serve_witness(honest, port)
    state = tmp_path / "monitor.json"
    assert _monitor(srv.url, state, files["pub"], capsys)[0] == 0
    before = state.read_bytes()
    srv.stop()
    forked = open_witness("forked.db")
    for i in range(4):
        forked.submit(make_bundle(second_history(i)).data)
    srv = serve_witness(forked, port)
    status, out = _monitor(srv.url, state, files["pub"], capsys)
    assert status == 1 and out.startswith("ALERT") and alert in out
    assert state.read_bytes() == before  # the state keeps the honest checkpoint
    (saved,) = _evidence(state)
    evidence = json.loads(saved.read_text())
    assert evidence["mediaType"] == MONITOR_EVIDENCE_MEDIA_TYPE
    assert evidence["previous"] != evidence["current"]


def _forked_witness(open_witness: Any, serve_witness: Any, name: str, first: int,
                    port: int) -> Any:
    """A witness on *port* whose 4 entries are traces *first*... (one key, one origin:
    with other traces, another history of the same log)."""
    witness = open_witness(name)
    for i in range(first, first + 4):
        witness.submit(make_bundle(trace_id(i)).data)
    return serve_witness(witness, port)


def test_a_fork_is_alerted_even_when_its_evidence_cannot_be_saved(
    files: dict[str, Path], open_witness: Any, serve_witness: Any, tmp_path: Path,
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The evidence file's write error was reported as the state file's ("FAIL
    # monitor state ..."), and the fork it was the evidence of went unsaid.
    import spanproof.verifier._files as files_module

    port = free_port()
    state = tmp_path / "monitor.json"
    srv = _forked_witness(open_witness, serve_witness, "honest.db", 0, port)
    assert _monitor(srv.url, state, files["pub"], capsys)[0] == 0
    srv.stop()
    srv = _forked_witness(open_witness, serve_witness, "forked.db", 100, port)

    def disk_full(*args: Any, **kwargs: Any) -> str:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(files_module, "write_temp", disk_full)
    status, out = _monitor(srv.url, state, files["pub"], capsys)
    assert status == 1 and out.startswith(
        f"ALERT {srv.url}: fork: two checkpoints of tree size 4 with different roots; "
        f"evidence could not be saved to {state}.evidence-"
    ), out
    assert out.rstrip().endswith(f"({os.strerror(errno.ENOSPC)})")
    assert not _evidence(state)


def test_a_new_alert_never_overwrites_the_evidence_of_an_earlier_one(
    files: dict[str, Path], open_witness: Any, serve_witness: Any, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Every alert wrote <state>.evidence.json: a second fork replaced the first's
    # evidence.
    port = free_port()
    state = tmp_path / "monitor.json"
    srv = _forked_witness(open_witness, serve_witness, "honest.db", 0, port)
    assert _monitor(srv.url, state, files["pub"], capsys)[0] == 0
    srv.stop()
    srv = _forked_witness(open_witness, serve_witness, "fork-a.db", 100, port)
    status, out = _monitor(srv.url, state, files["pub"], capsys)
    (first,) = _evidence(state)
    saved = first.read_bytes()
    assert status == 1 and out.rstrip().endswith(f"evidence saved to {first}")
    # The same alert again (the state kept the honest checkpoint): the same file.
    status, out = _monitor(srv.url, state, files["pub"], capsys)
    assert status == 1 and out.rstrip().endswith(f"evidence saved to {first}")
    assert _evidence(state) == [first]
    srv.stop()
    srv = _forked_witness(open_witness, serve_witness, "fork-b.db", 200, port)
    status, out = _monitor(srv.url, state, files["pub"], capsys)
    assert status == 1 and len(_evidence(state)) == 2
    (second,) = set(_evidence(state)) - {first}
    assert out.rstrip().endswith(f"evidence saved to {second}")
    assert first.read_bytes() == saved
    docs = [json.loads(path.read_text()) for path in (first, second)]
    assert docs[0]["previous"] == docs[1]["previous"]  # the honest checkpoint, both times
    assert docs[0]["current"] != docs[1]["current"]


@pytest.mark.parametrize(("refusal", "alert"), [
    (404, True), (400, True), ("not a proof", True),
    # Unavailable, not a refusal: a 5xx, a 3xx, or an answer that is not JSON at
    # all (a proxy's page, or one cut short).
    (503, False), (300, False), ("page", False),
])
def test_monitor_alerts_when_the_witness_will_not_prove_a_checkpoint_extends_the_last(
    files: dict[str, Path], open_witness: Any, serve_witness: Any, tmp_path: Path,
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
    refusal: Any, alert: bool,
) -> None:
    # A forked witness answered the proof request with a 404, or a body that is no
    # proof: the monitor said it was unreachable (exit 3) and kept no evidence,
    # though it had just been served a newly signed checkpoint.
    from spanproof.verifier.errors import TransportError
    from spanproof.witness.client import HTTPStatusError, MalformedAnswer, WitnessClient

    witness = open_witness()
    for i in range(3):
        witness.submit(make_bundle(trace_id(i)).data)
    srv = serve_witness(witness)
    state = tmp_path / "monitor.json"
    assert _monitor(srv.url, state, files["pub"], capsys)[0] == 0
    before = state.read_bytes()
    for i in range(3, 5):
        witness.submit(make_bundle(trace_id(i)).data)

    def refuse(client: WitnessClient, size1: int, size2: int) -> list[bytes]:
        if isinstance(refusal, int):
            raise HTTPStatusError(refusal, "no")
        if refusal == "page":
            raise TransportError("witness answer to /v1/proof/consistency is not JSON")
        raise MalformedAnswer(refusal)

    monkeypatch.setattr(WitnessClient, "consistency_proof", refuse)
    status, out = _monitor(srv.url, state, files["pub"], capsys)
    assert state.read_bytes() == before  # the last checkpoint is kept either way
    if alert:
        assert status == 1 and out.startswith("ALERT")
        assert "signed tree size 5 but does not prove that it extends tree size 3" in out
        (saved,) = _evidence(state)
        doc = json.loads(saved.read_text())
        assert doc["previous"].startswith(ORIGIN + "\n3\n")
        assert doc["current"].startswith(ORIGIN + "\n5\n")
    else:  # unavailable: try again later
        assert status == 3 and not _evidence(state)


def test_monitor_detects_a_rewritten_history(
    files: dict[str, Path],
    open_witness: Any,
    serve_witness: Any,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    port = free_port()
    honest = open_witness("honest.db")
    for i in range(3):
        honest.submit(make_bundle(trace_id(i)).data)
    srv = serve_witness(honest, port)
    state = tmp_path / "monitor.json"
    assert _monitor(srv.url, state, files["pub"], capsys)[0] == 0
    srv.stop()
    # The same key serves a longer log whose first entries differ.
    rewritten = open_witness("rewritten.db")
    for i in [0, 2, 1, 3, 4]:
        rewritten.submit(make_bundle(trace_id(i)).data)
    srv = serve_witness(rewritten, port)
    status, out = _monitor(srv.url, state, files["pub"], capsys)
    assert status == 1 and "fork: the tree of size 5 does not extend the tree of size 3" in out


def test_monitor_detects_a_rollback(
    files: dict[str, Path],
    open_witness: Any,
    serve_witness: Any,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    port = free_port()
    honest = open_witness("honest.db")
    for i in range(5):
        honest.submit(make_bundle(trace_id(i)).data)
    srv = serve_witness(honest, port)
    state = tmp_path / "monitor.json"
    assert _monitor(srv.url, state, files["pub"], capsys)[0] == 0
    srv.stop()
    restored = open_witness("restored-from-backup.db")
    for i in range(2):
        restored.submit(make_bundle(trace_id(i)).data)
    srv = serve_witness(restored, port)
    status, out = _monitor(srv.url, state, files["pub"], capsys)
    assert status == 1 and "rollback: the log now shows tree size 2, smaller than the size 5" in out


def test_monitor_rejects_a_checkpoint_by_another_key(
    files: dict[str, Path],
    open_witness: Any,
    serve_witness: Any,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    impostor = open_witness(
        "impostor.db", key=Ed25519PrivateKey.from_private_bytes(OTHER_WITNESS_SEED)
    )
    srv = serve_witness(impostor)
    state = tmp_path / "monitor.json"
    status, out = _monitor(srv.url, state, files["pub"], capsys)
    assert status == 1 and "checkpoint not signed by a pinned witness key" in out
    assert not state.exists()


def test_monitor_unreachable(
    files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out = _monitor(
        f"http://127.0.0.1:{free_port()}", tmp_path / "s.json", files["pub"], capsys
    )
    assert status == 3 and "cannot reach witness" in out


def test_monitor_origin_pins_the_logs_origin(
    files: dict[str, Path], open_witness: Any, serve_witness: Any, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    srv = serve_witness(open_witness())
    state = tmp_path / "s.json"
    base = ["monitor", "--url", srv.url, "--state", str(state),
            "--witness-key", str(files["pub"]), "--timeout", "5"]
    status, out, _ = _run([*base, "--origin", "other.test/log"], capsys)
    assert status == 1
    assert out == (f"FAIL {srv.url}: checkpoint origin {ORIGIN!r} is not the pinned "
                   f"witness origin 'other.test/log'\n")
    assert not state.exists()
    status, out, _ = _run([*base, "--origin", ORIGIN], capsys)
    assert status == 0 and out.startswith(f"OK {ORIGIN}: first checkpoint recorded")


def test_monitor_hints_at_the_url_when_the_witness_has_no_checkpoint_there(
    files: dict[str, Path], open_witness: Any, serve_witness: Any, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    srv = serve_witness(open_witness())
    url = f"{srv.url}/v1"  # a path under the base URL: GET /v1/v1/checkpoint is a 404
    status, out = _monitor(url, tmp_path / "s.json", files["pub"], capsys)
    assert status == 3
    assert out == f"FAIL {url}: HTTP 404: Not Found (is --url the witness's base URL?)\n"
    assert not (tmp_path / "s.json").exists()


def test_monitor_escapes_what_a_witness_answers(
    files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A witness's error message is the witness's own text: it must not reach the
    # terminal as controls that could rewrite the FAIL line into an OK one.
    message = json.dumps({"error": "busy\x1b[2K\rOK log consistent"}).encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(500)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(message)))
            self.end_headers()
            self.wfile.write(message)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        status, out = _monitor(url, tmp_path / "s.json", files["pub"], capsys)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)
    assert status == 3
    assert out == f"FAIL {url}: HTTP 500: busy\\x1b[2K\\rOK log consistent\n"
    assert not (tmp_path / "s.json").exists()


def test_submit_groups_by_count_and_by_bytes(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    import spanproof.witness._cli as wcli

    sizes = [10] * 20 + [300, 10, 10]
    paths = []
    for n, size in enumerate(sizes):
        path = tmp_path / f"{n:02d}.spanproof.json"
        path.write_bytes(b"x" * size)
        paths.append(str(path))
    paths.append(str(tmp_path / "missing.spanproof.json"))  # read later, fails alone
    monkeypatch.setattr(wcli, "SUBMIT_BATCH_BYTES", 100)
    groups = wcli._groups(paths)
    # 16 a group at most; 100 bytes a group at most, but a larger bundle goes alone.
    assert [len(g) for g in groups] == [10, 10, 1, 3]
    assert [p for g in groups for p in g] == paths
    monkeypatch.setattr(wcli, "SUBMIT_BATCH_BYTES", 10_000)
    assert [len(g) for g in wcli._groups(paths)] == [16, 8]


def test_a_2xx_page_is_not_written_as_a_receipt(
    files: dict[str, Path], open_witness: Any, serve_witness: Any,
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A proxy's maintenance page answered 200: "OK ... already logged at index ?",
    # exit 0, and the page written beside the bundle as its receipt.
    from spanproof.witness.client import Response, WitnessClient

    url, paths = _served_bundles(files, open_witness, serve_witness, 1)

    def page(client: WitnessClient, data: bytes, **kw: Any) -> Response:
        return Response(200, {}, b"<html>down for maintenance</html>")

    monkeypatch.setattr(WitnessClient, "submit", page)
    code, out, _ = _run(["witness", "submit", str(files["bundles"]), "--url", url], capsys)
    assert code == 1 and out.startswith(f"FAIL {paths[0]}: receipt: ")
    assert not Path(receipt_path(paths[0])).exists()


def test_a_malformed_receipt_in_a_batch_answer_is_not_written(
    files: dict[str, Path], open_witness: Any, serve_witness: Any,
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    from spanproof.witness.client import WitnessClient

    url, paths = _served_bundles(files, open_witness, serve_witness, 2)
    real = WitnessClient.submit_batch

    def without_checkpoint(client: WitnessClient, datas: Any, **kw: Any) -> Any:
        results = real(client, datas, **kw)
        del results[1]["receipt"]["checkpoint"]
        return results

    monkeypatch.setattr(WitnessClient, "submit_batch", without_checkpoint)
    code, out, _ = _run(["witness", "submit", str(files["bundles"]), "--url", url], capsys)
    lines = out.splitlines()
    assert code == 1 and lines[0].startswith(f"OK {paths[0]}: logged")
    assert lines[1].startswith(f"FAIL {paths[1]}: receipt") and "checkpoint" in lines[1]
    assert Path(receipt_path(paths[0])).exists() and not Path(receipt_path(paths[1])).exists()


def test_a_batch_receipt_with_a_lone_surrogate_fails_its_bundle_without_a_crash(
    files: dict[str, Path], open_witness: Any, serve_witness: Any,
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A batch answer is read with a plain JSON reader, which lets "\ud800" through:
    # the receipt's checkpoint could not be encoded, and the command died with a
    # UnicodeEncodeError traceback (the producer's submitter retried it for ever).
    from spanproof.witness.client import WitnessClient

    url, paths = _served_bundles(files, open_witness, serve_witness, 2)
    real = WitnessClient.submit_batch

    def surrogate(client: WitnessClient, datas: Any, **kw: Any) -> Any:
        results = real(client, datas, **kw)
        results[1]["receipt"]["checkpoint"] += "\ud800"
        return results

    monkeypatch.setattr(WitnessClient, "submit_batch", surrogate)
    code, out, _ = _run(["witness", "submit", str(files["bundles"]), "--url", url], capsys)
    lines = out.splitlines()
    assert code == 1 and lines[0].startswith(f"OK {paths[0]}: logged")
    assert lines[1].startswith(f"FAIL {paths[1]}: receipt.checkpoint: a lone surrogate")
    assert Path(receipt_path(paths[0])).exists() and not Path(receipt_path(paths[1])).exists()


# --- a receipt already beside a bundle ----------------------------------------------------


def test_submit_keeps_the_receipt_already_beside_a_bundle(
    files: dict[str, Path], open_witness: Any, serve_witness: Any,
    capsys: pytest.CaptureFixture[str],
) -> None:
    url, (first,) = _served_bundles(files, open_witness, serve_witness, 1)
    assert _run(_submit_args(files, url, first), capsys)[0] == 0
    kept = Path(receipt_path(first)).read_bytes()
    # Another entry grows the log: the witness's next receipt for the first bundle
    # names a larger tree, and is not written over the one the bundle has.
    second = write_bundle(files["bundles"], make_bundle(trace_id(7)))
    assert _run(_submit_args(files, url, second), capsys)[0] == 0
    status, out, _ = _run(_submit_args(files, url, first), capsys)
    assert status == 0, out
    assert "already logged at index 0" in out and "kept the receipt already beside it" in out
    assert Path(receipt_path(first)).read_bytes() == kept


def test_submit_to_a_rolled_back_witness_fails_and_keeps_the_receipt(
    files: dict[str, Path], open_witness: Any, serve_witness: Any,
    capsys: pytest.CaptureFixture[str],
) -> None:
    url, paths = _served_bundles(files, open_witness, serve_witness, 2)
    assert _run(_submit_args(files, url), capsys)[0] == 0
    evidence = Path(receipt_path(paths[1])).read_bytes()
    # The same log (origin and key) started again on an empty database: a rollback.
    rolled_back = serve_witness(open_witness("rolled-back.db")).url
    status, out, _ = _run(_submit_args(files, rolled_back, paths[1]), capsys)
    assert status == 1, out
    assert out.startswith("FAIL") and "names index 1" in out and "rollback or a fork" in out
    assert Path(receipt_path(paths[1])).read_bytes() == evidence


def _conflicts(bundle: Path) -> list[Path]:
    """The receipts that contradicted the one beside *bundle*, kept beside it."""
    stem = receipt_path(bundle)[: -len(".json")]
    return sorted(Path(stem).parent.glob(Path(stem).name + ".conflict-*.json"))


def _log_of(open_witness: Any, serve_witness: Any, name: str, traces: list[int],
            port: int | None = None) -> Any:
    """A served witness (one key, one origin) whose entries are *traces*, in order."""
    witness = open_witness(name)
    for i in traces:
        witness.submit(make_bundle(trace_id(i)).data)
    return serve_witness(witness, port)


@pytest.mark.parametrize(("kept", "shown", "defect"), [
    ([0, 1, 2], [0, 5, 6], "fork: two checkpoints of tree size 3 with different roots"),
    ([0, 1, 2], [0, 1], "rollback: the log now shows tree size 2, smaller than the size 3"),
    ([0, 1], [0, 5, 6], "fork: the tree of size 3 does not extend the tree of size 2"),
], ids=["same-size", "kept-larger", "kept-smaller"])
def test_submit_to_a_witness_with_another_history_at_the_same_index_fails_and_keeps_both(
    files: dict[str, Path], open_witness: Any, serve_witness: Any,
    capsys: pytest.CaptureFixture[str], kept: list[int], shown: list[int], defect: str,
) -> None:
    # The bundle is entry 0 in both histories: only the index was compared, the new
    # receipt was dropped ("OK ... kept") and the split view with it.
    port = free_port()
    path = write_bundle(files["bundles"], make_bundle(trace_id(0)))
    srv = _log_of(open_witness, serve_witness, "kept.db", kept, port)
    assert _run(_submit_args(files, srv.url, path), capsys)[0] == 0
    evidence = Path(receipt_path(path)).read_bytes()
    srv.stop()
    srv = _log_of(open_witness, serve_witness, "shown.db", shown, port)
    status, out, _ = _run(_submit_args(files, srv.url, path), capsys)
    assert status == 1 and out.startswith(f"FAIL {path}: ") and defect in out, out
    (conflict,) = _conflicts(path)
    assert out.rstrip().endswith(f"the witness's new receipt is saved as {conflict}")
    assert Path(receipt_path(path)).read_bytes() == evidence
    new = json.loads(conflict.read_bytes())
    assert (new["leafIndex"], new["treeSize"]) == ("0", str(len(shown)))
    # A monitor checks both against the log it is shown: whichever that log does
    # not extend alerts.  (Only the kept one is the bundle's receipt for `verify`.)
    assert find_receipts(str(files["bundles"])) == (
        sorted([str(conflict), receipt_path(path)]), [])


def test_submit_proves_a_kept_receipt_of_a_smaller_tree_with_a_consistency_proof(
    files: dict[str, Path], open_witness: Any, serve_witness: Any,
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    url, (first, second) = _served_bundles(files, open_witness, serve_witness, 2)
    assert _run(_submit_args(files, url, first), capsys)[0] == 0
    assert _run(_submit_args(files, url, second), capsys)[0] == 0  # the log grew
    log = RequestLog(monkeypatch)
    status, out, _ = _run(_submit_args(files, url, first), capsys)
    assert status == 0 and "kept the receipt already beside it" in out, out
    assert "/v1/proof/consistency" in log.paths and not _conflicts(first)


@pytest.mark.parametrize(("status", "expected"), [(404, 1), (503, 3), (302, 3)])
def test_submit_to_a_witness_that_does_not_prove_a_kept_receipts_tree_grew(
    files: dict[str, Path], open_witness: Any, serve_witness: Any,
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
    status: int, expected: int,
) -> None:
    # As the monitor reads it (SPEC §12.7 step 6): a refusal is a fork, and the new
    # receipt is kept; a 5xx or a 3xx is the witness unavailable, try again later.
    url, (first, second) = _served_bundles(files, open_witness, serve_witness, 2)
    assert _run(_submit_args(files, url, first), capsys)[0] == 0
    kept = Path(receipt_path(first)).read_bytes()
    assert _run(_submit_args(files, url, second), capsys)[0] == 0
    RequestLog(monkeypatch, refuse={"/v1/proof/consistency": status})
    code, out, _ = _run([*_submit_args(files, url, first), "--retry-for", "0"], capsys)
    assert code == expected and out.startswith(f"FAIL {first}: "), out
    assert Path(receipt_path(first)).read_bytes() == kept
    if expected == 1:
        assert "does not prove that it extends tree size 1" in out
        assert len(_conflicts(first)) == 1
    else:
        assert "no consistency proof from tree size 1 to 2" in out and not _conflicts(first)


def test_submit_keeps_a_receipt_from_another_log(
    files: dict[str, Path], open_witness: Any, serve_witness: Any,
    capsys: pytest.CaptureFixture[str],
) -> None:
    url, (path,) = _served_bundles(files, open_witness, serve_witness, 1)
    assert _run(_submit_args(files, url, path), capsys)[0] == 0
    other = json.loads(Path(receipt_path(path)).read_bytes())
    other["origin"] = "another.example/log"
    foreign = (json.dumps(other) + "\n").encode()
    Path(receipt_path(path)).write_bytes(foreign)
    status, out, _ = _run(_submit_args(files, url, path), capsys)
    assert status == 0, out
    assert "from another log (another.example/log)" in out
    assert Path(receipt_path(path)).read_bytes() == foreign


def test_submit_keeps_a_receipt_for_another_statement(
    files: dict[str, Path], open_witness: Any, serve_witness: Any,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # It was replaced: it proves what the log held for that statement all the same.
    url, (path, other) = _served_bundles(files, open_witness, serve_witness, 2)
    assert _run(_submit_args(files, url, other), capsys)[0] == 0
    foreign = Path(receipt_path(other)).read_bytes()
    Path(receipt_path(path)).write_bytes(foreign)
    status, out, _ = _run(_submit_args(files, url, path), capsys)
    assert status == 0, out
    assert "for another statement or signer: move it away" in out
    assert Path(receipt_path(path)).read_bytes() == foreign


def test_submit_replaces_a_receipt_of_its_log_that_does_not_verify(
    files: dict[str, Path], open_witness: Any, serve_witness: Any, producer_trust: TrustRoot,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # An edited index: it was kept, and the witness accused of a rollback or fork on
    # the word of a file its key never signed.
    url, (path, other) = _served_bundles(files, open_witness, serve_witness, 2)
    assert _run(_submit_args(files, url, path, other), capsys)[0] == 0
    forged = json.loads(Path(receipt_path(path)).read_bytes())
    assert (forged["leafIndex"], forged["treeSize"]) == ("0", "2")
    forged["leafIndex"] = "1"  # well formed, for this statement: only its proof fails
    Path(receipt_path(path)).write_bytes((json.dumps(forged) + "\n").encode())
    status, out, _ = _run(_submit_args(files, url, path), capsys)
    assert status == 0 and "wrote" in out and "rollback" not in out, out
    verify_receipt(Path(receipt_path(path)).read_bytes(), check_bundle(path, producer_trust),
                   [WitnessKey.load(str(files["pub"]))])


def test_submit_keeps_a_receipt_file_it_cannot_read(
    files: dict[str, Path], open_witness: Any, serve_witness: Any,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # It was taken for no receipt at all, and replaced.
    url, (path,) = _served_bundles(files, open_witness, serve_witness, 1)
    os.mkfifo(receipt_path(path))
    status, out, _ = _run(_submit_args(files, url, path), capsys)
    assert status == 0 and "which cannot be read" in out, out
    assert stat.S_ISFIFO(os.stat(receipt_path(path)).st_mode)


def test_submit_replaces_a_file_that_is_not_a_receipt(
    files: dict[str, Path], open_witness: Any, serve_witness: Any, producer_trust: TrustRoot,
    capsys: pytest.CaptureFixture[str],
) -> None:
    url, (path,) = _served_bundles(files, open_witness, serve_witness, 1)
    Path(receipt_path(path)).write_bytes(b"not a receipt\n")
    status, out, _ = _run(_submit_args(files, url, path), capsys)
    assert status == 0 and "wrote" in out, out
    verify_receipt(Path(receipt_path(path)).read_bytes(), check_bundle(path, producer_trust),
                   [WitnessKey.load(str(files["pub"]))])


@pytest.mark.timeout(10)  # the defect was `witness serve` blocked forever on the pipe
def test_serve_with_a_named_pipe_as_the_keys_origin_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = tmp_path / "wk2"
    generate_key_file(key)
    os.mkfifo(tmp_path / "wk2.origin")
    started = time.monotonic()
    status, _, err = _run(["witness", "serve", "--key", str(key), "--db", str(tmp_path / "w.db"),
                           "--listen", "127.0.0.1:0"], capsys)
    assert time.monotonic() - started < 1
    assert status == 2, err
    assert (f"{tmp_path / 'wk2.origin'}: cannot read the key's origin (not a regular file "
            "(a named pipe))") in err
    assert not (tmp_path / "w.db").exists()
