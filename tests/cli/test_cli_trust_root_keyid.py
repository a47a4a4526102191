"""A trust root's ``keyid`` is the full key id, which ``verify --json`` gives as a
bundle's ``signerKeyid`` (README): the 16-digit short form ``verify`` prints is
refused, naming the full one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cli_support import Keys, MakeBundle

from spanproof.verifier import TRUST_ROOT_MEDIA_TYPE
from spanproof.verifier._cli import main


def _trust_root(path: Path, keys: Keys, keyid: str) -> Path:
    path.write_text(json.dumps({"mediaType": TRUST_ROOT_MEDIA_TYPE, "keys": [
        {"keyid": keyid, "publicKey": keys.pub.read_text()}]}))
    return path


def test_the_signer_keyid_verify_gives_is_the_one_a_trust_root_takes(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, keys: Keys, make_bundle: MakeBundle
) -> None:
    path, _ = make_bundle()
    assert main(["verify", "--json", "--key", str(keys.pub), str(path)]) == 0
    (bundle,) = json.loads(capsys.readouterr().out)["bundles"]
    full = bundle["signerKeyid"]
    assert len(full) == 64 and full == keys.signer.keyid
    root = _trust_root(tmp_path / "full.json", keys, full)
    assert main(["verify", "--trust-root", str(root), str(path)]) == 0
    out = capsys.readouterr().out
    assert f" key={full[:16]}" in out  # the short form the OK line prints
    root = _trust_root(tmp_path / "short.json", keys, full[:16])
    assert main(["verify", "--trust-root", str(root), str(path)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err == (f"spanproof: error: {root}: keys[0]: keyid '{full[:16]}' does not match "
                   f"the key ({full})\n")
