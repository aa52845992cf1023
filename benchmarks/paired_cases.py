"""Paired per-case comparison of two per-case metric tables (e.g. two ``acdc_cv.py`` runs).

Usage (from the repository root):

    python benchmarks/paired_cases.py REFERENCE.csv OTHER.csv -o OUT.md [--by phase group]

Both CSVs need ``case_id`` and ``mean_dice`` (and the ``--by`` columns); the cases they share are
paired. Writes a Markdown table: per group, the two means, the median paired difference
(other − reference), how many cases improved, and the Wilcoxon signed-rank p-value, for mean
Dice and per structure.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np

from cardioseg.benchmark.report import compare_paired

METRICS = ("mean_dice", "LV_dice", "MYO_dice", "RV_dice")


def _read(path: Path) -> dict[str, dict[str, str]]:
    try:
        with open(path, newline="") as fh:
            return {r["case_id"]: r for r in csv.DictReader(fh)}
    except (OSError, KeyError) as exc:
        sys.exit(f"error: {path}: cannot read a per-case table with case_id ({exc})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("reference", type=Path)
    ap.add_argument("other", type=Path)
    ap.add_argument("-o", "--output", type=Path, required=True)
    ap.add_argument("--by", nargs="*", default=["phase"], help="columns to group by")
    args = ap.parse_args()
    ref, other = _read(args.reference), _read(args.other)
    cases = sorted(set(ref) & set(other))
    if not cases:
        sys.exit(f"error: {args.other}: no case in common with {args.reference}")
    groups: dict[str, list[str]] = {"all": cases}
    for col in args.by:
        for c in cases:
            groups.setdefault(f"{col} {ref[c].get(col, '?')}", []).append(c)
    lines = [
        f"# Paired: `{args.other}` against `{args.reference}`",
        "",
        f"Command: `python benchmarks/paired_cases.py {' '.join(sys.argv[1:])}`",
        "",
        "| group | metric | n | reference | other | median difference | better on | p |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, members in groups.items():
        for m in METRICS:
            a = np.array([float(ref[c][m]) for c in members])
            b = np.array([float(other[c][m]) for c in members])
            ok = np.isfinite(a) & np.isfinite(b)
            t = compare_paired(list(b[ok] - a[ok]))
            lines.append(
                f"| {name} | {m} | {t['n']} | {a[ok].mean():.4f} | {b[ok].mean():.4f} | "
                f"{t['median_diff']:+.4f} | {t['n_better']} of {t['n']} | {t['p_value']:.2g} |"
            )
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
