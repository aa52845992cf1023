"""The ``--roi on|off`` option shared by the benchmark scripts that run a model.

Measurements made before 2026-11-30 segmented the whole image; ``--roi off`` reproduces them
(the packaged models now segment a heart-centred window, see ``Segmenter(roi=...)``).
"""

from __future__ import annotations

import argparse


def add_roi_argument(parser: argparse.ArgumentParser) -> None:
    """Add ``--roi on|off`` (default: each model's own setting)."""
    parser.add_argument(
        "--roi",
        choices=["on", "off"],
        default=None,
        help="segment in a heart-centred window (on) or the whole image (off); default: the "
        "model's (measurements before 2026-11-30 ran the whole image)",
    )


def roi_value(args: argparse.Namespace) -> bool | None:
    """``Segmenter(roi=...)`` for the parsed ``--roi``."""
    return None if args.roi is None else args.roi == "on"
