"""User-facing errors: the CLI prints them as one line and exits non-zero."""

from __future__ import annotations

import re
from pathlib import Path

_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")


def one_line(text: str) -> str:
    """``text`` with line breaks and other control characters shown as one space (a file name
    or a DICOM description may hold them), so that a message stays one line.

    Example:
        >>> one_line("cine\\nSAX\\t2")
        'cine SAX 2'
    """
    return _CONTROL.sub(" ", text)


class CardiosegError(Exception):
    """An error about user input, reported without a traceback.

    Args:
        path: The file the problem is about (may be ``None``).
        problem: A short human-readable description.
    """

    def __init__(self, path: str | Path | None, problem: str):
        self.path = None if path is None else str(path)
        self.problem = problem
        message = f"{self.path}: {problem}" if self.path else problem
        super().__init__(one_line(message))


def read_text(path: str | Path) -> str:
    """The text of a user's file (a config, a protocol, an ``Info.cfg``) as UTF-8, whatever
    the locale; a file that is not such text is a :class:`CardiosegError` naming it.

    Example:
        >>> import tempfile
        >>> f = Path(tempfile.mkdtemp()) / "bin.yaml"
        >>> _ = f.write_bytes(b"\\xff\\xfe")
        >>> read_text(f)
        Traceback (most recent call last):
        ...
        cardioseg.errors.CardiosegError: .../bin.yaml: not a text file (not UTF-8)
    """
    try:
        return Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise CardiosegError(path, "not a text file (not UTF-8)") from None
