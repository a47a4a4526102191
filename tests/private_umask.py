"""A producer run under a private umask (systemd ``UMask=0077``), and the modes of
what it leaves: the directories it creates are listable by anyone, as
``spanproof verify`` of the output directory needs, whatever the umask."""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator

#: The umask of a hardened service.
PRIVATE_UMASK = 0o077

#: The mode of a directory a producer creates.
LISTABLE = 0o755


@contextlib.contextmanager
def private_umask() -> Iterator[None]:
    """Run the body under :data:`PRIVATE_UMASK`, the umask restored after it."""
    old = os.umask(PRIVATE_UMASK)
    try:
        yield
    finally:
        os.umask(old)


def mode(path: str | os.PathLike[str]) -> int:
    """The permission bits of *path*."""
    return stat.S_IMODE(os.stat(path).st_mode)


def operators_directory(path: str | os.PathLike[str]) -> None:
    """Create *path* as an operator keeping it private would: mode 0700."""
    os.mkdir(path, 0o700)
    os.chmod(path, 0o700)
