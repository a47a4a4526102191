"""``OTEL_SDK_DISABLED=true``: spanproof's SDK components are built disabled.

OpenTelemetry's configurator builds every exporter ``OTEL_TRACES_EXPORTER`` names
even when the SDK is disabled, for a provider whose tracers make no span.  Built
normally, the spanproof exporter would generate and write a key, recover an earlier
run's journals, start sealing processes and submit old bundles to a witness, for an
application whose telemetry was switched off.  :class:`BuiltDisabled` makes the
class that names a ``_disabled_kind`` build that kind instead, which does nothing.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Mapping
from typing import Any, ClassVar, TypeVar, cast

__all__ = ["SDK_DISABLED_VAR", "BuiltDisabled", "sdk_disabled"]

#: OpenTelemetry's switch for the whole SDK.
SDK_DISABLED_VAR = "OTEL_SDK_DISABLED"

_T = TypeVar("_T", bound="BuiltDisabled")


def sdk_disabled(environ: Mapping[str, str] | None = None) -> bool:
    """Whether *environ* (default :data:`os.environ`) disables the OpenTelemetry SDK:
    ``OTEL_SDK_DISABLED`` is ``true`` in any case, blanks around it ignored, the test
    the SDK's ``TracerProvider`` makes."""
    env = os.environ if environ is None else environ
    return env.get(SDK_DISABLED_VAR, "").lower().strip() == "true"


class BuiltDisabled:
    """A base whose subclass that sets ``_disabled_kind`` builds an instance of that
    kind (a subclass of it, doing nothing) while the SDK is disabled.

    The arguments are bound to the class's own ``__init__`` first, so a misspelled
    or extra argument raises ``TypeError`` as it would with the SDK enabled; their
    values are not checked.  Only the class that sets it is switched: its own
    subclasses (the sealing process's exporter, which runs with
    ``OTEL_SDK_DISABLED=true``; the demo's) are built as they are.  The switch is
    ``__new__`` here, in a base, so that ``inspect.signature`` still reads the
    class's own ``__init__``.
    """

    _disabled_kind: ClassVar[type[Any] | None] = None

    def __new__(cls: type[_T], *args: Any, **kwargs: Any) -> _T:
        kind = cls.__dict__.get("_disabled_kind")
        if kind is not None and sdk_disabled():
            # Arguments by name and number are checked as an enabled build checks them,
            # so a misspelled keyword fails the same way either way; values are not.
            try:
                cls._bind_arguments(args, kwargs)
            except TypeError as e:
                raise TypeError(f"{cls.__name__}(): {e}") from None
            return cast(_T, object.__new__(kind))
        return object.__new__(cls)

    @classmethod
    def _bind_arguments(cls, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """Bind *args* and *kwargs* to the class's ``__init__``.

        Raises:
            TypeError: they do not fit it (a misspelled keyword, too many).
        """
        inspect.signature(cls.__init__).bind(None, *args, **kwargs)
