"""The report's LV max wall thickness (ED) on ACDC: experts' masks against automatic ones.

Reads the per-patient features that ``benchmarks/diagnosis_acdc.py --predictions ...`` writes
(``diagnosis_features.csv`` from the experts' labels, ``diagnosis_features_predicted.csv`` from
the held-out cross-validation predictions) and tabulates, per ACDC group, how many patients
reach the 15 mm hypertrophy criterion, plus the error of the automatic value.

    python benchmarks/wall_thickness_check.py benchmarks/results/diagnosis_predicted \
        -o benchmarks/results/wall_thickness_check.md
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np
from commands import command_line, write_lines

from cardioseg.clinical.indices import HYPERTROPHY_WALL_MM

KEY = "myo_thickness_max_ed_mm"  # the features' name of the report's LV max wall thickness


def _read(path: Path) -> dict[str, tuple[str, float]]:
    with open(path, newline="") as fh:
        return {r["subject"]: (r["group"], float(r[KEY])) for r in csv.DictReader(fh)}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", help="output folder of diagnosis_acdc.py --predictions")
    ap.add_argument("-o", "--output", required=True, help="Markdown file to write")
    args = ap.parse_args(argv)
    folder = Path(args.folder)
    files = [folder / "diagnosis_features.csv", folder / "diagnosis_features_predicted.csv"]
    missing = [f for f in files if not f.is_file()]
    if missing:
        sys.exit(f"{missing[0]}: not found (run benchmarks/diagnosis_acdc.py --predictions first)")
    command = command_line("wall_thickness_check.py", argv)
    ref, pred = _read(files[0]), _read(files[1])
    subjects = sorted(set(ref) & set(pred))
    limit = HYPERTROPHY_WALL_MM
    lines = [
        "# LV max wall thickness (ED) on ACDC",
        "",
        f"Command: `{command}`",
        "",
        f"Patients at or above {limit:g} mm (as shown, one decimal), per group, on the experts' "
        "masks and on the held-out automatic masks of the cross-validation; median per group.",
        "",
        "| group | n | experts: >= 15 mm | experts: median (mm) | automatic: >= 15 mm | "
        "automatic: median (mm) |",
        "|---|---|---|---|---|---|",
    ]
    for group in sorted({ref[s][0] for s in subjects}):
        r = np.array([ref[s][1] for s in subjects if ref[s][0] == group])
        p = np.array([pred[s][1] for s in subjects if ref[s][0] == group])
        lines.append(
            f"| {group} | {r.size} | {int((np.round(r, 1) >= limit).sum())} | "
            f"{np.median(r):.1f} | {int((np.round(p, 1) >= limit).sum())} | {np.median(p):.1f} |"
        )
    err = np.array([pred[s][1] - ref[s][1] for s in subjects])
    lines += [
        "",
        f"Automatic − experts over {err.size} patients: bias {err.mean():+.2f} mm, median "
        f"absolute error {np.median(np.abs(err)):.2f} mm, 90th percentile of the absolute error "
        f"{np.percentile(np.abs(err), 90):.2f} mm.",
    ]
    write_lines(args.output, lines)


if __name__ == "__main__":
    main()
