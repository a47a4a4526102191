"""The exception hierarchy (``spanproof.verifier.errors``): callers branch on it."""

from __future__ import annotations

import inspect

import pytest

from spanproof.verifier import errors
from spanproof.verifier.errors import (
    CanonicalizationError,
    ChainError,
    IncompleteBundle,
    InvalidBundle,
    InvalidKey,
    SignatureError,
    SpanproofError,
    TransportError,
    TrustError,
    VerificationError,
)


@pytest.mark.parametrize(
    ("cls", "bases"),
    [
        (InvalidBundle, (SpanproofError,)),
        (CanonicalizationError, (InvalidBundle, ValueError, SpanproofError)),
        (InvalidKey, (SpanproofError, ValueError)),
        (VerificationError, (SpanproofError,)),
        (SignatureError, (VerificationError, SpanproofError)),
        (TrustError, (VerificationError, SpanproofError)),
        (ChainError, (VerificationError, SpanproofError)),
        (IncompleteBundle, (VerificationError, SpanproofError)),
        (TransportError, (SpanproofError,)),
        (SpanproofError, (Exception,)),
    ],
    ids=lambda value: value.__name__ if isinstance(value, type) else None,
)
def test_hierarchy(cls: type[Exception], bases: tuple[type[Exception], ...]) -> None:
    for base in bases:
        assert issubclass(cls, base), f"{cls.__name__} must subclass {base.__name__}"


@pytest.mark.parametrize(
    ("cls", "not_a"),
    [
        (InvalidBundle, VerificationError),
        (InvalidBundle, ValueError),
        (VerificationError, InvalidBundle),
        (VerificationError, ValueError),
        (SignatureError, TrustError),
        (ChainError, SignatureError),
        (IncompleteBundle, ChainError),
        (TransportError, VerificationError),
        (TransportError, InvalidBundle),
    ],
)
def test_causes_stay_apart(cls: type[Exception], not_a: type[Exception]) -> None:
    # Bad input, failed checks and transport trouble are distinct causes.
    assert not issubclass(cls, not_a)


def test_every_public_error_is_a_spanproof_error() -> None:
    exported = {name: getattr(errors, name) for name in errors.__all__}
    assert {
        "CanonicalizationError", "ChainError", "IncompleteBundle", "InvalidBundle",
        "InvalidKey", "SignatureError", "SpanproofError", "TransportError", "TrustError",
        "VerificationError",
    } <= exported.keys()
    for name, cls in exported.items():
        assert inspect.isclass(cls) and issubclass(cls, SpanproofError), name
        assert cls.__doc__, f"{name} needs a docstring"
    # And nothing in the module defines an error outside the list.
    defined = {
        name
        for name, obj in vars(errors).items()
        if inspect.isclass(obj)
        and issubclass(obj, BaseException)
        and obj.__module__ == errors.__name__
    }
    assert defined == exported.keys()


def test_package_reexports_the_verifier_errors() -> None:
    import spanproof.verifier as verifier

    for name in ("CanonicalizationError", "ChainError", "IncompleteBundle", "InvalidBundle",
                 "InvalidKey", "SignatureError", "SpanproofError", "TransportError",
                 "TrustError", "VerificationError"):
        assert getattr(verifier, name) is getattr(errors, name)
        assert name in verifier.__all__


def test_one_except_clause_catches_every_verifier_failure() -> None:
    for cls in (CanonicalizationError, InvalidBundle, SignatureError, TrustError, ChainError,
                IncompleteBundle, InvalidKey):
        with pytest.raises(SpanproofError):
            raise cls("x")
