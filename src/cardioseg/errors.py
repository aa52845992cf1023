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
