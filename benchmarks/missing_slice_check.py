"""What a missing slice costs the indices: the Sunnybrook DICOM cine with one slice left out.

For every interior slice position of the real GE study in ``../shared/data/sunnybrook``, the
study is copied without that position's images and analysed (``analyze_study``, shipped model);
the indices are compared with those of the whole study. The loader leaves the position empty
on a regular grid and the volumes interpolate its area from the neighbouring slices.

    python benchmarks/missing_slice_check.py -o benchmarks/results/missing_slice_check.md
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import pydicom
from commands import command_line

from cardioseg.clinical.analysis import analyze_study
from cardioseg.clinical.indices import compute_indices
from cardioseg.inference import Segmenter
from cardioseg.io.nifti import atomic_write, read_image

REPO = Path(__file__).resolve().parents[1]
DEFAULT_STUDY = REPO.parent / "shared" / "data" / "sunnybrook" / "dicoms" / "SCD0000101"
KEYS = ("lv_edv_ml", "lv_esv_ml", "lv_ef_pct", "lv_mass_g")


def _position_key(path: Path) -> float | None:
    """The image's position along its slice normal (mm), or ``None`` for a non-image file."""
    try:
        ds = pydicom.dcmread(str(path), stop_before_pixels=True)
        iop = np.array(ds.ImageOrientationPatient, float)
        normal = np.cross(iop[:3], iop[3:])
        return round(float(np.dot(normal, np.array(ds.ImagePositionPatient, float))), 1)
    except Exception:
        return None


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--study", default=str(DEFAULT_STUDY), help="DICOM cine folder")
    ap.add_argument("-o", "--output", required=True, help="Markdown file to write")
    args = ap.parse_args(argv)
    study = Path(args.study)
    if not study.is_dir():
        sys.exit(f"{study}: not found (the Sunnybrook study of ../shared/data)")
    command = command_line("missing_slice_check.py", argv)
    files = sorted(p for p in study.rglob("*") if p.is_file())
    where = {p: _position_key(p) for p in files}
    positions = sorted({v for v in where.values() if v is not None})
    segmenter = Segmenter()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        full = analyze_study(Path(tmp) / "full", study=study, segmenter=segmenter, write_pdf=False)
        for k in range(1, len(positions) - 1):
            copy = Path(tmp) / f"without{k}"
            for p in files:
                if where[p] != positions[k]:
                    target = copy / p.relative_to(study)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy(p, target)
            out = Path(tmp) / f"out{k}"
            rep = analyze_study(out, study=copy, segmenter=segmenter, write_pdf=False)
            # the same masks with the empty slice counted as nothing (before interpolation)
            masks = [read_image(out / f"mask_{ph}.nii.gz") for ph in ("ED", "ES")]
            rep["left_out"] = compute_indices(masks[0][0], masks[1][0], masks[0][1].spacing)
            results[k] = rep
            print(k, {key: round(rep[key] - full[key], 1) for key in KEYS}, flush=True)
    lines = [
        "# A missing slice: Sunnybrook without one interior slice position",
        "",
        f"Command: `{command}`",
        "",
        f"Whole study: LVEDV {full['lv_edv_ml']:.1f} mL, LVESV {full['lv_esv_ml']:.1f} mL, "
        f"LVEF {full['lv_ef_pct']:.1f} %, LV mass {full['lv_mass_g']:.1f} g "
        f"({len(positions)} slice positions).",
        "",
        "Differences from the whole study; in brackets, the same masks with the empty slice "
        "counted as nothing (no interpolation).",
        "",
        "| slice left out | QC | ED/ES frames | "
        + " | ".join(f"{k} (difference)" for k in KEYS)
        + " |",
        "|---|---|---|" + "---|" * len(KEYS),
    ]
    for k, rep in results.items():
        cells = [
            f"{rep[key] - full[key]:+.1f} ({rep['left_out'][key] - full[key]:+.1f})" for key in KEYS
        ]
        lines.append(
            f"| {k} | {rep['qc']['status']} | {rep['ed_frame']}/{rep['es_frame']} | "
            + " | ".join(cells)
            + " |"
        )
    for key in KEYS:
        diffs = np.array([abs(rep[key] - full[key]) for rep in results.values()])
        before = np.array([abs(rep["left_out"][key] - full[key]) for rep in results.values()])
        lines.append("")
        lines.append(
            f"{key}: median absolute difference {np.median(diffs):.1f}, largest "
            f"{diffs.max():.1f} (counted as nothing: {np.median(before):.1f}, {before.max():.1f})"
        )
    out = Path(args.output)
    with atomic_write(out) as tmp_out:
        tmp_out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
