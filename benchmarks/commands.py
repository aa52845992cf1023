"""The command line a benchmark result file quotes, so that it can be run again as written,
and the writing of a Markdown result."""

from __future__ import annotations

import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from cardioseg.io.nifti import atomic_write


def write_lines(path: str | Path, lines: Sequence[str]) -> Path:
    """Write ``lines`` to ``path`` (its folder created, the file atomically) and print them."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return path


def command_line(script: str, argv: Sequence[str] | None = None) -> str:
    """``python benchmarks/<script> <arguments>``, each argument shell-quoted.

    Args:
        script: The script's file name (``"wall_thickness_check.py"``).
        argv: The arguments as given to the script's ``main`` (``None``: ``sys.argv[1:]``).

    Example:
        >>> command_line("x.py", ["-o", "a b.md"])
        "python benchmarks/x.py -o 'a b.md'"
    """
    args = sys.argv[1:] if argv is None else argv
    return " ".join(["python", f"benchmarks/{script}", *(shlex.quote(a) for a in args)])
