"""Public keys, key ids and trust roots (SPEC §6).

The verifier trusts only the keys it is handed: PEM public key files, or a trust
root file listing keys with validity windows.  A key id is derived from the key
(SHA-256 of its DER SubjectPublicKeyInfo); a key id found in a bundle is only a
hint for choosing which trusted key to try first.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import os
import re
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ._files import read_named_file
from ._settings import refuse_string
from .canonical import parse_strict
from .errors import InvalidBundle, InvalidKey

_logger = logging.getLogger(__name__)

__all__ = [
    "TRUST_ROOT_MEDIA_TYPE",
    "TrustRoot",
    "TrustedKey",
    "format_time",
    "has_small_order",
    "key_id",
    "load_private_key",
    "load_public_key",
    "parse_time",
    "refuse_small_order",
]

TRUST_ROOT_MEDIA_TYPE = "application/vnd.spanproof.trust-root.v1+json"
# re.ASCII: without it \d also matches non-ASCII digits (e.g. U+FF12 FULLWIDTH TWO).
_RFC3339_UTC = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?Z\Z", re.ASCII
)


def key_id(public_key: Ed25519PublicKey) -> str:
    """Return the SPEC §6.1 key id: lowercase hex SHA-256 of the DER SPKI encoding."""
    der = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).hexdigest()


_PEM_BEGIN = "-----BEGIN PUBLIC KEY-----"
_PEM_END = "-----END PUBLIC KEY-----"
_BASE64_LINE = re.compile(r"[A-Za-z0-9+/=]+\Z", re.ASCII)


def _pem_der(pem: bytes, source: str) -> bytes:
    """The DER bytes of the one ``PUBLIC KEY`` block that *pem* must consist of.

    Exactly one block, only base64 lines inside it (no PEM headers), only blank lines
    around it; a line may end in spaces and tabs and in CR LF, and nothing else is
    ignored (SPEC §6.1).  A lenient reader would trust the first of two concatenated
    keys, or a key hidden after other text (SPEC §6.2).

    Raises:
        InvalidKey: anything else.
    """

    def refused(why: str) -> InvalidKey:
        return InvalidKey(f"{source}: not a PEM public key ({why})")

    try:
        text = pem.decode("ascii")
    except UnicodeDecodeError:
        raise refused("not ASCII text") from None
    # Trailing spaces and tabs are what hand-edited files carry, and OpenSSL reads
    # them; a line indented, or ending in another control character, is not a PEM line.
    lines = [line.rstrip(" \t\r") for line in text.split("\n")]
    begins = [line for line in lines if line.lstrip(" \t").startswith("-----BEGIN ")]
    if len(begins) > 1:
        raise refused(f"{len(begins)} PEM blocks; a key file holds exactly one")
    if _PEM_BEGIN not in lines:
        found = f"; found {begins[0][:40]!r}" if begins else ""
        raise refused(f"no {_PEM_BEGIN} line{found}")
    begin = lines.index(_PEM_BEGIN)
    if _PEM_END not in lines[begin + 1 :]:
        raise refused(f"no {_PEM_END} line after {_PEM_BEGIN}")
    end = lines.index(_PEM_END, begin + 1)
    if any(lines[:begin]):
        raise refused(f"text before {_PEM_BEGIN}; only blank lines may surround the block")
    if any(lines[end + 1 :]):
        raise refused(f"text after {_PEM_END}; only blank lines may surround the block")
    body = lines[begin + 1 : end]
    for number, line in enumerate(body, 1):
        if ":" in line:
            raise refused(
                f"a PEM header {line.split(':', 1)[0][:40]!r} in the block; a public key "
                "block holds base64 lines only"
            )
        if not _BASE64_LINE.match(line):
            raise refused(f"line {number} of the block is not base64")
    joined = "".join(body)
    try:
        der = base64.b64decode(joined, validate=True)
    except (binascii.Error, ValueError):
        raise refused("the block is not valid base64") from None
    if base64.b64encode(der).decode("ascii") != joined:
        raise refused("the block is not canonical padded base64")
    return der


_P = 2**255 - 19
_D = -121665 * pow(121666, _P - 2, _P) % _P


def _edwards_double(x: int, y: int) -> tuple[int, int]:
    # RFC 8032 §5.1.4 addition of a point to itself, in affine coordinates (complete
    # for edwards25519: the denominators are never zero).
    t = _D * x * x * y * y % _P
    return (2 * x * y * pow(1 + t, _P - 2, _P) % _P,
            (y * y + x * x) * pow(1 - t, _P - 2, _P) % _P)


def has_small_order(raw: bytes) -> bool:
    """True when the 32-byte Ed25519 public key *raw* is a point of order 1, 2, 4 or 8
    (SPEC §6.1).  Such a key verifies signatures nobody made: with the identity point,
    ``R`` = the identity and ``S`` = 0 verify for every message, under OpenSSL too.

    A key that is no point at all is not of small order (verification refuses it).
    """
    # RFC 8032 §5.1.3: y from the encoding (reduced, as a non-canonical y is read);
    # the sign of x does not matter, as P and -P have the same order.
    y = (int.from_bytes(raw, "little") & ((1 << 255) - 1)) % _P
    xx = (y * y - 1) * pow(_D * y * y + 1, _P - 2, _P) % _P
    x = pow(xx, (_P + 3) // 8, _P)
    if x * x % _P != xx:
        x = x * pow(2, (_P - 1) // 4, _P) % _P
    if x * x % _P != xx:
        return False
    for _ in range(3):
        x, y = _edwards_double(x, y)
    return (x, y) == (0, 1)


def load_public_key(pem: bytes, source: str = "public key") -> Ed25519PublicKey:
    """Load an Ed25519 public key from SPKI PEM: exactly one ``PUBLIC KEY`` block,
    with only blank lines around it (SPEC §6.1).

    Raises:
        InvalidKey: the data is empty or not such PEM, the key is not Ed25519, or it
            is of small order (:func:`has_small_order`).
    """
    if not pem.strip():
        raise InvalidKey(f"{source}: empty, no public key in it")
    der = _pem_der(pem, source)
    try:
        key = serialization.load_der_public_key(der)
    except (ValueError, TypeError) as e:
        raise InvalidKey(f"{source}: not a PEM public key ({e})") from e
    except UnsupportedAlgorithm as e:  # a key type or curve OpenSSL does not know
        raise InvalidKey(
            f"{source}: key is not Ed25519 (SPEC §6 allows only Ed25519; {e})"
        ) from e
    if not isinstance(key, Ed25519PublicKey):
        raise InvalidKey(f"{source}: key is not Ed25519 (SPEC §6 allows only Ed25519)")
    refuse_small_order(key, source)
    return key


def refuse_small_order(key: Ed25519PublicKey, source: str) -> None:
    """Refuse a key of small order (SPEC §6.1), which anyone can forge signatures for.

    Raises:
        InvalidKey: *key* has small order.
    """
    if has_small_order(raw_public_bytes(key)):
        raise InvalidKey(
            f"{source}: key is a point of small order, for which anyone can make "
            "signatures that verify (SPEC §6.1); it is no one's key"
        )


def parse_time(text: Any, where: str) -> datetime:
    """Parse an RFC 3339 UTC timestamp ending in ``Z`` (SPEC §5.3).

    Raises:
        InvalidBundle: *text* is not such a timestamp.
    """
    match = _RFC3339_UTC.match(text) if isinstance(text, str) else None
    if match is None:
        raise InvalidBundle(
            f"{where}: must be an RFC 3339 UTC time like 2026-01-31T12:00:00Z "
            "(optional fraction of up to 9 digits)"
        )
    year, month, day, hour, minute, second, fraction = match.groups()
    micro = int((fraction or "0")[:6].ljust(6, "0"))
    if second == "60" and (hour, minute) == ("23", "59"):
        # A leap second (RFC 3339 §5.7): read as the last microsecond before the next
        # day, which keeps its order against every instant a datetime can hold.
        second, micro = "59", 999_999
    try:
        return datetime(
            int(year), int(month), int(day), int(hour), int(minute), int(second), micro,
            tzinfo=timezone.utc,
        )
    except ValueError:
        raise InvalidBundle(f"{where}: {text!r} is not a valid date and time") from None


def format_time(value: datetime) -> str:
    """Format an aware datetime as RFC 3339 UTC with microseconds and ``Z``: the
    ``sealedAt`` form of SPEC §5.3, ``YYYY-MM-DDThh:mm:ss.ffffffZ``."""
    t = value.astimezone(timezone.utc)
    # Not strftime: its %Y gives "999", not "0999", for a year below 1000 on glibc,
    # and RFC 3339 §5.6 (and SPEC §5.3) have a four-digit year.
    return (
        f"{t.year:04d}-{t.month:02d}-{t.day:02d}T{t.hour:02d}:{t.minute:02d}:"
        f"{t.second:02d}.{t.microsecond:06d}Z"
    )


@dataclass(frozen=True)
class TrustedKey:
    """One trusted Ed25519 key and the window in which it may have signed.

    ``valid_from``/``valid_until`` bound the bundle's signed ``sealedAt`` time
    (``valid_from <= sealedAt < valid_until``); ``None`` leaves that side open.
    Each bound is an aware datetime, kept in UTC.  ``keyid`` is the key's own key id
    (:func:`key_id`): the key id a bundle names picks the key to try first, so one
    given another key's id would pick this key's window for that key's bundles.

    Raises:
        TypeError: *key* is not an Ed25519 public key, or a bound is not a datetime.
        InvalidKey: *key* is of small order (SPEC §6.1: it would make signatures
            nobody made verify), *keyid* is not its key id (SPEC §6.1: derived,
            never assigned), a bound has no time zone, or ``valid_from`` is not
            before ``valid_until`` (SPEC §6.2); the message names *source*.
    """

    key: Ed25519PublicKey
    keyid: str
    source: str
    valid_from: datetime | None = None
    valid_until: datetime | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.key, Ed25519PublicKey):
            raise TypeError(f"{self.source}: TrustedKey key must be an Ed25519PublicKey, "
                            f"not {type(self.key).__name__}")
        # SPEC §6.1: refused wherever it is given, the Python API included, not
        # only when read from a file.
        refuse_small_order(self.key, self.source)
        derived = key_id(self.key)
        if self.keyid != derived:
            raise InvalidKey(
                f"{self.source}: key id {self.keyid!r} is not the key's own ({derived}); "
                "a key id is derived from the key, never assigned (SPEC §6.1)")
        for field in ("valid_from", "valid_until"):
            object.__setattr__(self, field, _window_bound(getattr(self, field), field,
                                                          self.source))
        if (self.valid_from is not None and self.valid_until is not None
                and self.valid_from >= self.valid_until):
            raise InvalidKey(
                f"{self.source}: valid_from {format_time(self.valid_from)} is not before "
                f"valid_until {format_time(self.valid_until)}: the key would be valid at "
                "no time (SPEC §6.2)")

    @classmethod
    def from_public_key(cls, key: Ed25519PublicKey, source: str = "public key") -> TrustedKey:
        """Trust *key* with no validity window.

        Raises:
            InvalidKey: *key* is of small order (SPEC §6.1).
        """
        return cls(key=key, keyid=key_id(key), source=source)

    def verify(self, signature: bytes, message: bytes) -> bool:
        """True when *signature* is a valid Ed25519 signature of *message* by this key."""
        try:
            self.key.verify(signature, message)
        except InvalidSignature:
            return False
        return True

    def valid_at(self, when: datetime) -> bool:
        """True when *when* falls inside this key's validity window."""
        if self.valid_from is not None and when < self.valid_from:
            return False
        return not (self.valid_until is not None and when >= self.valid_until)

    def __reduce__(self) -> tuple[Any, ...]:
        # cryptography's key objects cannot be pickled, their 32 raw bytes can: the
        # processes of `spanproof verify --jobs` receive the trust root this way.
        return (_trusted_key, (raw_public_bytes(self.key), self.source, self.valid_from,
                               self.valid_until))


def _window_bound(value: object, field: str, source: str) -> datetime | None:
    """*value*, a bound of a key's validity window, in UTC (None: open).

    Raises:
        TypeError: *value* is not a datetime.
        InvalidKey: *value* has no time zone.
    """
    if value is None:
        return None
    if not isinstance(value, datetime):
        raise TypeError(f"{source}: TrustedKey {field} must be a datetime with a time "
                        f"zone or None, not {type(value).__name__}")
    if value.utcoffset() is None:
        # Compared with a bundle's sealedAt (UTC), a naive time would raise, or be
        # read in whatever zone the verifying machine is in.
        raise InvalidKey(f"{source}: {field} {value.isoformat()} has no time zone; give "
                         "an aware datetime (tzinfo=timezone.utc)")
    try:
        return value.astimezone(timezone.utc)
    except OverflowError:
        # The calendar's edge in another zone (datetime.max in New York): in UTC it is
        # past the edge, beyond every sealedAt, so that side of the window is open.
        return None


def raw_public_bytes(key: Ed25519PublicKey) -> bytes:
    """The 32 raw bytes of an Ed25519 public key (RFC 8032 encoding)."""
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _trusted_key(raw: bytes, source: str, valid_from: datetime | None,
                 valid_until: datetime | None) -> TrustedKey:
    """A :class:`TrustedKey` rebuilt from its pickled form (its key id derived again)."""
    key = Ed25519PublicKey.from_public_bytes(raw)
    return TrustedKey(key, key_id(key), source, valid_from, valid_until)


@dataclass(frozen=True)
class TrustRoot:
    """The set of keys a verifier trusts; nothing else is ever trusted.

    Raises:
        ValueError: no keys.
        TypeError: an entry is not a :class:`TrustedKey`.
        InvalidKey: one key appears twice, from one source or from two (SPEC §6.2:
            which entry's validity window applies would depend on their order).
    """

    keys: tuple[TrustedKey, ...]

    def __post_init__(self) -> None:
        if not self.keys:
            raise ValueError("a trust root needs at least one key")
        first: dict[bytes, TrustedKey] = {}
        for key in self.keys:
            if not isinstance(key, TrustedKey):
                raise TypeError(f"a trust root holds TrustedKey entries, not "
                                f"{type(key).__name__}")
            # By the key itself: the same key is the same key whatever it is called.
            raw = raw_public_bytes(key.key)
            if raw in first:
                raise InvalidKey(
                    f"key {key.keyid} is trusted twice, from {first[raw].source} and "
                    f"from {key.source}; give each key once (SPEC §6.2)"
                )
            first[raw] = key

    @classmethod
    def from_keys(cls, keys: Iterable[TrustedKey]) -> TrustRoot:
        """Build a trust root from trusted keys.

        Raises:
            ValueError: no keys.
            TypeError: an entry is not a :class:`TrustedKey`.
            InvalidKey: one key appears twice.
        """
        return cls(tuple(keys))

    @classmethod
    def from_pem_files(cls, paths: Sequence[str]) -> TrustRoot:
        """Trust each PEM public key file in *paths*, with no validity window.

        Raises:
            TypeError: *paths* is a ``str`` (a list of paths is expected).
            InvalidKey: a file cannot be read or is not an Ed25519 public key, or two
                files hold the same key.
        """
        refuse_string(paths, "TrustRoot.from_pem_files paths", "paths", "PEM file paths")
        keys = []
        for path in paths:
            try:
                pem, _ = read_named_file(path)
            except OSError as e:
                raise InvalidKey(f"{path}: cannot read key file ({e.strerror})") from e
            keys.append(TrustedKey.from_public_key(load_public_key(pem, path), path))
        return cls(tuple(keys))

    @classmethod
    def from_json_file(cls, path: str) -> TrustRoot:
        """Read and parse a SPEC §6.2 trust-root document from *path*.

        Raises:
            InvalidKey: the file cannot be read, or :meth:`from_json` refuses it.
        """
        try:
            data, _ = read_named_file(path)
        except OSError as e:
            raise InvalidKey(f"{path}: cannot read trust root ({e.strerror})") from e
        return cls.from_json(data, path)

    @classmethod
    def from_json(cls, data: bytes, source: str = "trust root") -> TrustRoot:
        """Parse a SPEC §6.2 trust-root document.

        Raises:
            InvalidKey: the document is malformed, of an unknown version, or a
                listed key id does not match its key.
        """
        try:
            doc = parse_strict(data, source)
        except InvalidBundle as e:
            raise InvalidKey(str(e)) from None
        if not isinstance(doc, dict) or doc.get("mediaType") != TRUST_ROOT_MEDIA_TYPE:
            raise InvalidKey(
                f"{source}: mediaType must be {TRUST_ROOT_MEDIA_TYPE!r} "
                f"(got {doc.get('mediaType') if isinstance(doc, dict) else None!r})"
            )
        unknown = set(doc) - {"mediaType", "keys", "comment"}
        if unknown:
            raise InvalidKey(f"{source}: unknown fields {sorted(unknown)}")
        if not isinstance(doc.get("comment", ""), str):
            raise InvalidKey(f"{source}: comment must be a string")
        entries = doc.get("keys")
        if not isinstance(entries, list) or not entries:
            raise InvalidKey(f"{source}: 'keys' must be a non-empty array")
        keys: list[TrustedKey] = []
        for i, entry in enumerate(entries):
            where = f"{source}: keys[{i}]"
            if not isinstance(entry, dict) or not isinstance(entry.get("publicKey"), str):
                raise InvalidKey(f"{where}: needs a 'publicKey' PEM string")
            allowed = {"keyid", "publicKey", "validFrom", "validUntil", "comment"}
            if set(entry) - allowed:
                raise InvalidKey(f"{where}: unknown fields {sorted(set(entry) - allowed)}")
            if not isinstance(entry.get("comment", ""), str):
                raise InvalidKey(f"{where}.comment: must be a string")
            key = load_public_key(entry["publicKey"].encode("ascii", "replace"), where)
            kid = key_id(key)
            if "keyid" in entry and entry["keyid"] != kid:
                raise InvalidKey(
                    f"{where}: keyid {entry['keyid']!r} does not match the key ({kid})"
                )
            try:
                valid_from = (
                    parse_time(entry["validFrom"], f"{where}.validFrom")
                    if "validFrom" in entry
                    else None
                )
                valid_until = (
                    parse_time(entry["validUntil"], f"{where}.validUntil")
                    if "validUntil" in entry
                    else None
                )
            except InvalidBundle as e:
                raise InvalidKey(str(e)) from None
            # Compared as every instant is (SPEC §5.3: to the microsecond, a leap
            # second read as 23:59:59.999999): a window shorter than that holds none.
            if valid_from is not None and valid_until is not None and valid_from >= valid_until:
                raise InvalidKey(
                    f"{where}: validFrom {entry['validFrom']} is not before validUntil "
                    f"{entry['validUntil']}: the key would be valid at no time"
                )
            keys.append(TrustedKey(key, kid, where, valid_from, valid_until))
        return cls(tuple(keys))

    def ordered_for(self, hint: str | None) -> list[TrustedKey]:
        """Keys to try for a signature whose envelope names key id *hint*.

        The hint only orders the search (SPEC §8 step 3); it never adds trust.
        """
        return sorted(self.keys, key=lambda k: k.keyid != hint)


def load_private_key(
    path: str | os.PathLike[str], what: str = "private key", *,
    made_by: str = "spanproof keygen",
) -> Ed25519PrivateKey:
    """Load a PKCS#8 PEM Ed25519 private key (a producer's or a witness's, named by
    *what* in messages, and written by the command *made_by*); warn when group or
    others can access the file.

    Another kind of file (a public key, an encrypted, OpenSSH, PKCS#1 or SEC1 private
    key, DER) is refused with a message naming what it holds, before the permission
    check: a public key is no secret, and a key refused is not used.  So is a file
    holding more than one private key: a reader taking the first would sign with a
    key its owner may believe replaced (a new key appended at rotation).

    Raises:
        InvalidKey: unreadable file, not an unencrypted PKCS#8 PEM key, more than one
            private key, or not Ed25519.
    """
    name = os.fspath(path)
    try:
        pem, mode = read_named_file(path)
    except OSError as e:
        raise InvalidKey(f"{name}: cannot read {what} ({e.strerror})") from e
    if not pem.strip():
        raise InvalidKey(f"{name}: empty, no {what} in it")
    expected = (f"an unencrypted PKCS#8 PEM Ed25519 private key ({_PKCS8_BEGIN}, as "
                f"`{made_by}` writes)")
    found = _other_than_pkcs8(pem)
    if found is not None:
        what_it_is, hint = found
        raise InvalidKey(f"{name}: {what_it_is}, where {expected} is expected"
                         + (f"; {hint}" if hint else ""))
    private_blocks = sum(1 for label in _PEM_LABEL.finditer(pem)
                         if label[1].endswith(b"PRIVATE KEY"))
    if private_blocks > 1:
        raise InvalidKey(f"{name}: {private_blocks} private keys in one file; which of "
                         f"them would sign is a guess: keep one {what} in the file")
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        _logger.warning("%s %s is accessible by group or others (mode %o); "
                        "restrict it with chmod 600", what, name, stat.S_IMODE(mode))
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as e:
        raise InvalidKey(f"{name}: its {_PKCS8_BEGIN} block cannot be read ({e}); "
                         f"expected {expected}") from e
    except UnsupportedAlgorithm as e:  # a key type or curve OpenSSL does not know
        raise InvalidKey(f"{name}: {what} is not Ed25519 ({e})") from e
    if not isinstance(key, Ed25519PrivateKey):
        raise InvalidKey(f"{name}: {what} is not Ed25519 (SPEC §6 allows only Ed25519)")
    return key


_PKCS8_BEGIN = "-----BEGIN PRIVATE KEY-----"
_PEM_LABEL = re.compile(rb"-----BEGIN ([A-Z0-9 ]{1,40})-----")
_ONLY_ED25519 = "SPEC §6 allows only Ed25519 keys"
# What a private key file holds instead, by the label of its PEM block, and what to do.
_OTHER_PEM = {
    "PUBLIC KEY": ("a public key", ""),
    "ENCRYPTED PRIVATE KEY": (
        "an encrypted private key",
        "spanproof reads no passphrase: decrypt it with "
        "`openssl pkey -in KEY -out KEY.plain`",
    ),
    "OPENSSH PRIVATE KEY": (
        "an OpenSSH private key",
        "ssh-keygen cannot write an Ed25519 key as PKCS#8; convert it as the README "
        "shows (\"Keys, trust roots and rotation\")",
    ),
    "RSA PRIVATE KEY": ("an RSA private key (PKCS#1)", _ONLY_ED25519),
    "EC PRIVATE KEY": ("an EC private key (SEC1)", _ONLY_ED25519),
    "DSA PRIVATE KEY": ("a DSA private key", _ONLY_ED25519),
    "CERTIFICATE": ("a certificate", ""),
}
_OPENSSH_PUBLIC = re.compile(rb"\s*(ssh-|ecdsa-sha2-|sk-)[a-z0-9@.-]* AAAA")


def _other_than_pkcs8(data: bytes) -> tuple[str, str] | None:
    """What *data* holds when it is plainly not a PKCS#8 PEM private key (by the label
    of its private key's PEM block, else of its first one; an OpenSSH public key line,
    DER), and what to do about it; None when its first PEM block is ``PRIVATE KEY``,
    for the key loader to judge."""
    labels = [label[1].decode("ascii") for label in _PEM_LABEL.finditer(data)]
    if labels:
        if labels[0] == "PRIVATE KEY":
            return None
        # `openssl ecparam -genkey` writes an EC PARAMETERS block before the key: what
        # the file holds is the key.
        text = next((label for label in labels
                     if label.endswith("PRIVATE KEY") and label in _OTHER_PEM), labels[0])
        what_it_is, hint = _OTHER_PEM.get(text, ("a PEM block of another kind", ""))
        return f"{what_it_is} (-----BEGIN {text}-----)", hint
    if _OPENSSH_PUBLIC.match(data):
        return "an OpenSSH public key line", ""
    if data.startswith(b"\x30"):  # an ASN.1 SEQUENCE, as DER keys start
        try:
            serialization.load_der_private_key(data, password=None)
        except (ValueError, TypeError, UnsupportedAlgorithm):
            pass
        else:
            return ("a DER (binary) private key",
                    "write it as PEM with `openssl pkey -inform DER -in KEY -out KEY.pem`")
        try:
            serialization.load_der_public_key(data)
        except (ValueError, TypeError, UnsupportedAlgorithm):
            pass
        else:
            return "a DER (binary) public key", ""
    return "no PEM block (no -----BEGIN line)", ""
