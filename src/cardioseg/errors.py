"""User-facing errors: the CLI prints them as one line and exits non-zero."""

from __future__ import annotations

from pathlib import Path


class CardiosegError(Exception):
    """An error about user input, reported without a traceback.

    Args:
        path: The file the problem is about (may be ``None``).
        problem: A short human-readable description.
    """

    def __init__(self, path: str | Path | None, problem: str):
        self.path = None if path is None else str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}" if self.path else problem)
