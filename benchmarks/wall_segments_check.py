"""Wall thickness per AHA segment: is the septum's anterior side right, and do the automatic
segments agree with the experts'?

Two checks on the labelled volumes of one or more datasets:

1. **Orientation** (expert labels, every volume whose affine carries a real orientation; ACDC's
   identity affines are skipped). ``cardioseg.clinical.segments`` puts the anterior wall 90°
   from the septum on the side the stored layout implies (canonical or mirrored view). Here that
   direction is compared, slice by slice, with the patient's anterior direction (RAS +y)
   projected into the slice plane. The anterior LV wall faces anterior-left-superior, so some
   tens of degrees are expected; the other side would be 180° further, beyond 90°.
2. **Agreement** (every labelled ED/ES pair; a dataset with one volume per subject, such as
   MS-CMRSeg LGE, counts it as ED): per AHA segment, the automatic ED thickness and systolic
   thickening against the experts'.

    python benchmarks/wall_segments_check.py --dataset ../shared/data/mnms \\
        --dataset ../shared/data/mscmr_lge -o benchmarks/results/wall_segments_check.md
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
from commands import command_line, write_lines

from cardioseg.clinical.segments import (
    SEGMENT_NAMES,
    aha_segments,
    patient_anterior_angle,
    septal_direction,
)
from cardioseg.data.datasets import discover, load_case
from cardioseg.errors import CardiosegError
from cardioseg.preprocessing import slice_axis
from cardioseg.preprocessing.geometry import is_mirrored_view


def _wrap(deg: np.ndarray) -> np.ndarray:
    return (np.asarray(deg, dtype=float) + 180.0) % 360.0 - 180.0


def anterior_offsets(label: np.ndarray, affine: np.ndarray, spacing) -> list[float]:
    """Per slice with a septum: angle (degrees) from the segment model's anterior direction to
    the patient's anterior direction in the slice plane; empty without a real orientation."""
    axis = slice_axis(tuple(float(s) for s in spacing), label.shape)
    patient_anterior = patient_anterior_angle(affine, axis)
    if patient_anterior is None:
        return []
    sp = [float(spacing[i]) for i in range(3) if i != axis]
    sense = -1.0 if is_mirrored_view(affine, axis) else 1.0
    out = []
    for sl in np.moveaxis(label, axis, 0):
        septum = septal_direction(sl, sp)
        if septum is not None:
            out.append(float(_wrap(septum + sense * 90.0 - patient_anterior)))
    return out


def _agreement_lines(
    dataset: str,
    ed_err: dict[int, list[float]],
    thick_err: dict[int, list[float]],
    peaks: list[tuple[str, int, int]],
) -> list[str]:
    """The agreement table of one dataset."""
    lines = [
        "",
        f"### {dataset}",
        "",
        "| segment | n | ED thickness: bias (mm) | ED: median abs. (mm) | n (ES) | "
        "thickening: bias (pp) | thickening: median abs. (pp) |",
        "|---|---|---|---|---|---|---|",
    ]
    for s, name in SEGMENT_NAMES.items():
        e, t = np.array(ed_err.get(s, [])), np.array(thick_err.get(s, []))
        ed_txt = f"{e.mean():+.2f} | {np.median(np.abs(e)):.2f}" if e.size else "– | –"
        th_txt = f"{t.mean():+.1f} | {np.median(np.abs(t)):.1f}" if t.size else "– | –"
        lines.append(f"| {s} {name} | {e.size} | {ed_txt} | {t.size} | {th_txt} |")
    all_ed = np.concatenate([np.asarray(v) for v in ed_err.values()] or [np.zeros(0)])
    all_th = np.concatenate([np.asarray(v) for v in thick_err.values()] or [np.zeros(0)])
    same = sum(r == p for _, r, p in peaks)
    summary = (
        f"All segments: ED thickness bias {all_ed.mean():+.2f} mm, median absolute difference "
        f"{np.median(np.abs(all_ed)):.2f} mm (n = {all_ed.size})"
        if all_ed.size
        else "No segment measured in both"
    )
    if all_th.size:
        summary += (
            f"; thickening bias {all_th.mean():+.1f} pp, median absolute difference "
            f"{np.median(np.abs(all_th)):.1f} pp (n = {all_th.size})"
        )
    return lines + [
        "",
        summary + ".",
        "",
        f"Thickest point at ED in the same segment as the experts': {same} of {len(peaks)} "
        f"({', '.join(f'{n}: {r} vs {p}' for n, r, p in peaks)}; experts vs automatic).",
    ]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", action="append", required=True, help="dataset folder (repeat)")
    ap.add_argument("--model", default=None, help="checkpoint (default: the shipped model)")
    ap.add_argument("-o", "--output", required=True, help="Markdown file to write")
    args = ap.parse_args(argv)
    from cardioseg.inference.segmenter import Segmenter

    command = command_line("wall_segments_check.py", argv)
    segmenter = Segmenter(args.model)
    offsets: dict[str, list[float]] = {}
    # per dataset: segment -> differences; (subject, experts' thickest, automatic's)
    ed_err: dict[str, dict[int, list[float]]] = {}
    thick_err: dict[str, dict[int, list[float]]] = {}
    peaks: dict[str, list[tuple[str, int, int]]] = {}
    unmeasured = 0
    skipped: list[str] = []
    for folder in args.dataset:
        records = [r for r in discover(folder) if r.label]
        by_subject: dict[tuple[str, str], dict[str, object]] = {}
        for r in records:
            # one volume per subject (LGE) counts as the diastolic one: no thickening
            by_subject.setdefault((r.dataset, r.subject), {})["ES" if r.phase == "ES" else "ED"] = r
        for (dataset, subject), phases in sorted(by_subject.items()):
            labels: dict[str, tuple[np.ndarray, np.ndarray]] = {}
            spacing = affine = None
            for phase in ("ED", "ES"):
                if phase not in phases:
                    continue
                try:
                    image, ref, props = load_case(phases[phase])
                except CardiosegError as err:  # e.g. a label file whose affine differs
                    skipped.append(f"{dataset}/{subject} {phase}: {err.problem}")
                    continue
                pred, _ = segmenter.predict_volume(image, props.spacing, affine=props.affine)
                labels[phase] = (ref, pred)
                spacing, affine = props.spacing, props.affine
                offsets.setdefault(dataset, []).extend(anterior_offsets(ref, affine, spacing))
            if "ED" not in labels:
                continue
            mirrored = is_mirrored_view(affine, slice_axis(tuple(spacing), labels["ED"][0].shape))
            es = labels.get("ES")
            ref_seg = aha_segments(labels["ED"][0], es[0] if es else None, spacing, mirrored)
            pred_seg = aha_segments(labels["ED"][1], es[1] if es else None, spacing, mirrored)
            if ref_seg is None or pred_seg is None:
                unmeasured += 1
                continue
            for r_row, p_row in zip(ref_seg["segments"], pred_seg["segments"], strict=True):
                s = r_row["segment"]
                if r_row["ed_mm"] is not None and p_row["ed_mm"] is not None:
                    ed_err.setdefault(dataset, {}).setdefault(s, []).append(
                        p_row["ed_mm"] - r_row["ed_mm"]
                    )
                rt, pt = r_row.get("thickening_pct"), p_row.get("thickening_pct")
                if rt is not None and pt is not None:
                    thick_err.setdefault(dataset, {}).setdefault(s, []).append(pt - rt)
            peaks.setdefault(dataset, []).append(
                (subject, ref_seg["max_ed"]["segment"], pred_seg["max_ed"]["segment"])
            )
            print(f"{dataset}/{subject}: done", file=sys.stderr)
    lines = [
        "# LV wall per AHA segment: orientation and agreement with the experts",
        "",
        f"Command: `{command}`",
        "",
        "## Orientation of the segment model (expert labels, real affines)",
        "",
        "Angle from the model's anterior direction (90° from the septum, on the side the stored "
        "layout implies) to the patient's anterior direction in the slice plane, over the "
        "slices with a septum. Taking the other side would move each angle by 180°, so an "
        "angle under 90° means the side is the patient's anterior one.",
        "",
        "| dataset | slices | median abs. angle (°) | 90th percentile (°) | max (°) | "
        "slices where the other side is closer |",
        "|---|---|---|---|---|---|",
    ]
    for dataset, values in sorted(offsets.items()):
        if not values:
            lines.append(f"| {dataset} | 0 | identity affine: not checked | | | |")
            continue
        a = np.abs(values)
        lines.append(
            f"| {dataset} | {a.size} | {np.median(a):.0f} | {np.percentile(a, 90):.0f} | "
            f"{a.max():.0f} | {int((a > 90).sum())} |"
        )
    lines += [
        "",
        "## Automatic against expert segments",
        "",
        f"{sum(map(len, peaks.values()))} subjects measured ({unmeasured} without a septum in "
        "one of the two"
        + (f"; not readable: {'; '.join(skipped)}" if skipped else "")
        + "). Differences automatic − experts; thickening only where ES is labelled.",
    ]
    for dataset in sorted(peaks):
        lines += _agreement_lines(
            dataset, ed_err.get(dataset, {}), thick_err.get(dataset, {}), peaks[dataset]
        )
    write_lines(args.output, lines)


if __name__ == "__main__":
    main()
