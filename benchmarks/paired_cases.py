"""Paired per-case comparison of two per-case metric tables (e.g. two ``acdc_cv.py`` runs).

Usage (from the repository root):

    python benchmarks/paired_cases.py REFERENCE.csv OTHER.csv -o OUT.md [--by phase group]
    python benchmarks/paired_cases.py REF.csv OTHER.csv -o OUT.md --key subject --by \
        --indices lv_ef_pct lv_edv_ml lv_esv_ml rv_ef_pct
    python benchmarks/paired_cases.py CASES.csv CASES.csv -o OUT.md --methods A B --dataset mnms

Both CSVs need ``case_id`` (or the ``--key`` column) and ``mean_dice`` (and the ``--by``
columns); the cases they share are paired. Writes a Markdown table: per group, the two means
(over cases), the median paired difference (other − reference), how many pairs improved, and the
Wilcoxon signed-rank p-value, for mean Dice and per structure. The pairs are subjects: a
subject's differences over its cases (ED and ES) are averaged, since two volumes of one subject
are not independent pairs (``--unit case`` pairs cases, as before 2026-12-02). The subject is
the ``subject`` column, else the ``case_id`` without its last ``/<phase>`` part.

With ``--indices`` the tables are per-study clinical indices with ``<index>_pred`` and
``<index>_ref`` columns (``cardioseg agreement``'s ``agreement_cases.csv``, the clinical
benchmark's per-study QC table) and the metric is each index's absolute error: the table gives
the two mean and median absolute errors, and a case counts as better when its error is smaller
(the paired difference is reference error − other error). The two tables must share the
reference values.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np

from cardioseg.benchmark.report import compare_paired, subject_differences

METRICS = ("mean_dice", "LV_dice", "MYO_dice", "RV_dice")


def _read(
    path: Path, key: str, dataset: str | None, method: str | None = None
) -> dict[str, dict[str, str]]:
    """Rows by case; with ``method``, only that method's rows of a table holding several
    (``segmentation_benchmark.py``'s), their ``<method>:`` case-id prefix dropped."""
    try:
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(fh))
        out = {}
        for r in rows:
            if dataset is not None and r.get("dataset") != dataset:
                continue
            if method is not None and r.get("method") != method:
                continue
            case = r[key]
            if method is not None and case.startswith(f"{method}:"):
                case = case[len(method) + 1 :]
            out[case] = r
        return out
    except (OSError, KeyError) as exc:
        sys.exit(f"error: {path}: cannot read a per-case table with {key} ({exc})")


def _subject(row: dict[str, str], case: str) -> str:
    """The subject a case belongs to: its ``subject`` column, else ``case`` without a last
    ``/<phase>`` part (``acdc/patient001/ED`` -> ``acdc/patient001``)."""
    if row.get("subject"):
        return row["subject"]
    head, _, last = case.rpartition("/")
    return head if head and last == row.get("phase") else case


def _abs_error(row: dict[str, str], index: str) -> float:
    return abs(float(row[f"{index}_pred"] or "nan") - float(row[f"{index}_ref"] or "nan"))


def _index_rows(name, members, ref, other, indices: list[str]) -> list[str]:
    lines = []
    for m in indices:
        a = np.array([_abs_error(ref[c], m) for c in members])
        b = np.array([_abs_error(other[c], m) for c in members])
        refs = [(float(ref[c][f"{m}_ref"]), float(other[c][f"{m}_ref"])) for c in members]
        if not all(np.isclose(x, y) or (np.isnan(x) and np.isnan(y)) for x, y in refs):
            sys.exit(f"error: the two tables have different reference values of {m}")
        ok = np.isfinite(a) & np.isfinite(b)
        t = compare_paired(list(a[ok] - b[ok]))
        lines.append(
            f"| {name} | abs. error {m} | {t['n']} | {a[ok].mean():.2f} / {np.median(a[ok]):.2f}"
            f" | {b[ok].mean():.2f} / {np.median(b[ok]):.2f} | {-t['median_diff']:+.2f} | "
            f"{t['n_better']} of {t['n']} | {t['p_value']:.2g} |"
        )
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("reference", type=Path)
    ap.add_argument("other", type=Path)
    ap.add_argument("-o", "--output", type=Path, required=True)
    ap.add_argument("--by", nargs="*", default=["phase"], help="columns to group by")
    ap.add_argument("--key", default="case_id", help="column naming a case")
    ap.add_argument("--dataset", help="only rows whose dataset column has this value")
    ap.add_argument(
        "--indices", nargs="+", help="compare these indices' absolute errors instead of Dice"
    )
    ap.add_argument(
        "--methods",
        nargs=2,
        metavar=("REFERENCE", "OTHER"),
        help="compare these two methods' rows (a table with a method column, e.g. "
        "segmentation_benchmark.py's; the same file may be given twice)",
    )
    ap.add_argument(
        "--unit",
        choices=("subject", "case"),
        default="subject",
        help="what a pair is: a subject (its cases' differences averaged) or a case",
    )
    args = ap.parse_args()
    ref_method, other_method = args.methods or (None, None)
    ref = _read(args.reference, args.key, args.dataset, ref_method)
    other = _read(args.other, args.key, args.dataset, other_method)
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
    if not args.indices:
        pairs = (
            "subjects (the differences over a subject's cases averaged)"
            if args.unit == "subject"
            else "cases"
        )
        lines.insert(4, f"Pairs: {pairs}; n counts pairs, the means are over cases.\n")
    if args.indices:
        lines[-2] = lines[-2].replace(
            "reference | other", "reference mean / median | other mean / median"
        )
        lines.insert(
            4, "Absolute errors; a case is better where the other table's error is smaller.\n"
        )
    for name, members in groups.items():
        if args.indices:
            lines += _index_rows(name, members, ref, other, args.indices)
            continue

        def unit(case: str) -> str:
            return _subject(ref[case], case) if args.unit == "subject" else case

        for m in METRICS:
            a = np.array([float(ref[c][m]) for c in members])
            b = np.array([float(other[c][m]) for c in members])
            ok = np.isfinite(a) & np.isfinite(b)
            t = compare_paired(
                subject_differences(
                    {c: float(other[c][m]) for c in members},
                    {c: float(ref[c][m]) for c in members},
                    unit,
                )
            )
            lines.append(
                f"| {name} | {m} | {t['n']} | {a[ok].mean():.4f} | {b[ok].mean():.4f} | "
                f"{t['median_diff']:+.4f} | {t['n_better']} of {t['n']} | {t['p_value']:.2g} |"
            )
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
