"""Wall thickness per AHA segment: is the septum's anterior side right, and do the automatic
segments agree with the experts'?

Four checks on the labelled volumes of one or more datasets:

1. **Orientation** (expert labels, every volume whose affine carries a real orientation; ACDC's
   identity affines are skipped). ``cardioseg.clinical.segments`` puts the anterior wall 90°
   from the septum on the side the stored layout implies (canonical or mirrored view). Here that
   direction is compared, slice by slice, with the patient's anterior direction (RAS +y)
   projected into the slice plane. The anterior LV wall faces anterior-left-superior, so some
   tens of degrees are expected; the other side would be 180° further, beyond 90°.
2. **Agreement** (every labelled ED/ES pair; a dataset with one volume per subject, such as
   MS-CMRSeg LGE, counts it as ED): per AHA segment, the automatic ED thickness and systolic
   thickening against the experts'.
3. **RV insertion points** (every labelled phase): on the slices where both the experts' and
   the automatic labels give insertion points, the angular differences of the anterior and
   inferior insertion points and of their bisector (the septum's middle).
4. **Apical cap** (segment 17): how many label files, the experts' and the automatic ones,
   have myocardium-only slices beyond the apical cavity.

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
    _circular_mean_deg,
    _contact_angles,
    aha_segments,
    apical_cap,
    insertion_points,
    patient_anterior_angle,
    septum_bisector,
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
        septum = septum_bisector(sl, sp)
        if septum is not None:
            out.append(float(_wrap(septum + sense * 90.0 - patient_anterior)))
    return out


def contact_mean(sl: np.ndarray, sp) -> float:
    """The previous method's septal direction: the mean direction (degrees) of all myocardium
    touching the RV (defined wherever insertion points are)."""
    return _circular_mean_deg(np.radians(_contact_angles(sl, sp)))


def insertion_differences(
    ref: np.ndarray, pred: np.ndarray, spacing, mirrored: bool
) -> tuple[list[tuple[float, float, float]], int, int]:
    """Per slice where both label maps give RV insertion points: the automatic − expert angle
    (degrees) of the anterior and inferior insertion points, of the septum's middle and of the
    previous method's middle (:func:`contact_mean`); and
    the numbers of slices with the experts' points only and with the automatic ones only."""
    axis = slice_axis(tuple(float(s) for s in spacing), ref.shape)
    sp = [float(spacing[i]) for i in range(3) if i != axis]
    diffs, ref_only, pred_only = [], 0, 0
    for r_sl, p_sl in zip(np.moveaxis(ref, axis, 0), np.moveaxis(pred, axis, 0), strict=True):
        r, p = insertion_points(r_sl, sp), insertion_points(p_sl, sp)
        ref_only += r is not None and p is None
        pred_only += r is None and p is not None
        if r is None or p is None:
            continue
        (ra, ri), (pa, pi) = r.anterior_inferior(mirrored), p.anterior_inferior(mirrored)
        diffs.append(
            (
                float(_wrap(pa - ra)),
                float(_wrap(pi - ri)),
                float(_wrap(p.bisector_deg - r.bisector_deg)),
                float(_wrap(contact_mean(p_sl, sp) - contact_mean(r_sl, sp))),
            )
        )
    return diffs, ref_only, pred_only


def _insertion_lines(insertion: dict[str, list], apex: dict[str, list]) -> list[str]:
    """The tables of the RV insertion points and of the apical cap."""
    lines = [
        "",
        "## RV insertion points: automatic against experts (all labelled phases)",
        "",
        "Angles around the LV centre of each slice, automatic − experts, on the slices where "
        "both give insertion points (`cardioseg.clinical.segments.insertion_points`: ends of "
        "the largest arc of myocardium touching the RV, gaps up to 30° bridged). The septum's "
        "middle, their bisector, anchors the segments; the previous method's middle (mean "
        "direction of all RV contact) is compared on the same slices.",
        "",
        "| dataset | slices | anterior: median abs. (°) | inferior: median abs. (°) | "
        "septum's middle: median abs. (°) | 90th pct (°) | previous method: median abs. / 90th "
        "pct (°) | "
        "experts' only | automatic only |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for dataset, items in sorted(insertion.items()):
        diffs = np.array([d for ds, _, _ in items for d in ds]).reshape(-1, 4)
        ref_only, pred_only = sum(i[1] for i in items), sum(i[2] for i in items)
        if not diffs.size:
            lines.append(f"| {dataset} | 0 | – | – | – | – | – | {ref_only} | {pred_only} |")
            continue
        a = np.abs(diffs)
        med = np.median(a, axis=0)
        lines.append(
            f"| {dataset} | {len(a)} | {med[0]:.1f} | {med[1]:.1f} | {med[2]:.1f} | "
            f"{np.percentile(a[:, 2], 90):.1f} | {med[3]:.1f} / {np.percentile(a[:, 3], 90):.1f} | "
            f"{ref_only} | {pred_only} |"
        )
    lines += [
        "",
        "## Apical cap (segment 17)",
        "",
        "Label files (one per labelled phase) with myocardium-only slices beyond the most "
        "apical slice with an LV cavity (`cardioseg.clinical.segments.apical_cap`). Segment 17 "
        "is reported as "
        "present or not, never measured.",
        "",
        "| dataset | label files | experts' with a cap | automatic with a cap | both | "
        "experts' cap slices | experts' cap myocardium (mL, median where present) |",
        "|---|---|---|---|---|---|---|",
    ]
    for dataset, pairs in sorted(apex.items()):
        ref_caps = [r for r, _ in pairs if r["present"]]
        both = sum(r["present"] and p["present"] for r, p in pairs)
        ml = f"{np.median([r['myocardium_ml'] for r in ref_caps]):.2f}" if ref_caps else "–"
        lines.append(
            f"| {dataset} | {len(pairs)} | {len(ref_caps)} | "
            f"{sum(p['present'] for _, p in pairs)} | {both} | "
            f"{sum(r['slices'] for r in ref_caps)} | {ml} |"
        )
    return lines


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
    insertion: dict[str, list] = {}
    apex: dict[str, list] = {}
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
                mirrored = is_mirrored_view(affine, slice_axis(tuple(spacing), ref.shape))
                insertion.setdefault(dataset, []).append(
                    insertion_differences(ref, pred, spacing, mirrored)
                )
                apex.setdefault(dataset, []).append(
                    (apical_cap(ref, spacing), apical_cap(pred, spacing))
                )
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
        "slices with RV insertion points (the septum's middle: their bisector). Taking the "
        "other side would move each angle by 180°, so an angle under 90° means the side is the "
        "patient's anterior one.",
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
    lines += _insertion_lines(insertion, apex)
    write_lines(args.output, lines)


if __name__ == "__main__":
    main()
