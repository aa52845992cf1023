"""Shared by the fuzzing benchmarks: run trials under a time limit, tally, write the summary."""

from __future__ import annotations

import argparse
import signal
import sys
import time
import traceback
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from cardioseg.errors import CardiosegError


def fuzz_parser(doc: str, limit: float, limit_help: str) -> argparse.ArgumentParser:
    """The fuzzers' common options: ``--trials``, ``--seed``, ``--limit`` (seconds, default
    ``limit``) and ``-o/--output``; the description is the first line of ``doc``."""
    ap = argparse.ArgumentParser(description=doc.split("\n")[0])
    ap.add_argument("--trials", type=int, default=300)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--limit", type=float, default=limit, help=limit_help)
    ap.add_argument("-o", "--output", type=Path, help="Markdown summary")
    return ap


class _TooSlow(Exception):
    pass


def _alarm(*_: object) -> None:
    raise _TooSlow


class Trials:
    """Run trials, each under ``limit`` seconds; a trial passes when it returns (counted as
    ``passed``) or raises a :class:`CardiosegError` (the one-line error the CLI prints).

    Args:
        limit: Seconds a trial may take.
        passed: Name of the outcome of a trial that returns.
    """

    def __init__(self, limit: float, passed: str):
        self.limit, self.passed = limit, passed
        self.outcomes: Counter[str] = Counter()
        self.failures: list[str] = []
        self.slowest = 0.0
        signal.signal(signal.SIGALRM, _alarm)

    def run(self, label: str, trial: Callable[[], object]) -> None:
        """Run one trial; ``label`` describes it in the list of failures."""
        t0 = time.perf_counter()
        signal.setitimer(signal.ITIMER_REAL, self.limit)
        try:
            trial()
            self.outcomes[self.passed] += 1
        except CardiosegError:
            self.outcomes["refused with a one-line error"] += 1
        except Exception as exc:
            kind = "too slow" if isinstance(exc, _TooSlow) else "crashed"
            self.outcomes[kind] += 1
            text = "".join(traceback.format_exception_only(exc)).strip().splitlines()[-1]
            self.failures.append(f"{label}: {kind}: {text[:300]}")
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        self.slowest = max(self.slowest, time.perf_counter() - t0)

    def report(self, title: str, output: Path | None) -> int:
        """Print (and write to ``output``) the Markdown summary; the exit status (1: failures)."""
        lines = [
            f"# {title}",
            "",
            f"Command: `python {sys.argv[0]} {' '.join(sys.argv[1:])}`",
            "",
            "| outcome | trials |",
            "|---|---|",
            *(f"| {k} | {v} |" for k, v in sorted(self.outcomes.items())),
            "",
            f"Slowest trial: {self.slowest:.2f} s (limit {self.limit:g} s).",
            *([""] + self.failures if self.failures else []),
        ]
        text = "\n".join(lines) + "\n"
        print(text)
        if output:
            output.parent.mkdir(parents=True, exist_ok=True)
            output.write_text(text)
        return 1 if self.failures else 0
