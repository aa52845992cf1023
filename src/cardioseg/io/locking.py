"""An exclusive lock on a folder, so that two processes never write one output folder."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from cardioseg.errors import CardiosegError

#: The lock file a locked folder holds.
LOCK_NAME = ".lock"


def lock_folder(folder: str | Path, in_use: str) -> Any:
    """Take an exclusive lock on ``folder`` (a ``.lock`` file in it, created if missing) for as
    long as the returned handle stays open; the operating system drops it when the process ends,
    however it ends.

    Args:
        folder: An existing folder.
        in_use: The error message when another process holds the lock.

    Raises:
        CardiosegError: Another process holds it.

    Example:
        >>> import tempfile
        >>> folder = tempfile.mkdtemp()
        >>> held = lock_folder(folder, "in use")
        >>> lock_folder(folder, "in use")  # doctest: +IGNORE_EXCEPTION_DETAIL
        Traceback (most recent call last):
        cardioseg.errors.CardiosegError: ...: in use
        >>> held.close()
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX: no lock
        return io.BytesIO()
    fh = open(Path(folder) / LOCK_NAME, "a+")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        fh.close()
        raise CardiosegError(folder, in_use) from None
    return fh
