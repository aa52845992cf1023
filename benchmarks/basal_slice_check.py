"""Where do LV volume errors come from: the slice range (base and apex) or the contours?

For every labelled ED/ES volume of a dataset this compares the predicted LV with the reference
slice by slice, in the volume's own slice axis:

- the **slice range**: LV slices the prediction has beyond the reference's first or last LV slice
  (``extra``), or lacks inside it (``missing``), told apart at the base and at the apex;
- the **volume error** split into the part on those slices (``range``, mL) and the part on the
  slices both label (``contour``, mL);
- how many slices the basal LV slice moves towards the apex from ED to ES, in the reference
  and in the prediction (the through-plane motion of the base, as each labels it);
- the **LVEF** error as predicted, and with the prediction's LV restricted to the reference's
  slice range (a diagnostic only: it tells how much of the error is the choice of basal slice;
  no method sees the reference).

Predictions come from a folder of label files (``--predictions``, e.g. the held-out CV fold
predictions) or from a model run here (``--model``; the shipped default when neither is given).

    python benchmarks/basal_slice_check.py --dataset ../shared/data/mnms \\
        -o benchmarks/results --tag mnms
    python benchmarks/basal_slice_check.py --dataset ../shared/data/acdc \\
        --predictions runs/acdc_cv_full90/predictions -o benchmarks/results --tag acdc_cv
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
from pathlib import Path

import numpy as np
from roi_option import add_roi_argument, roi_value

from cardioseg.clinical.features import slice_thickness_samples
from cardioseg.clinical.indices import _ef
from cardioseg.data.datasets import discover, ed_es_pairs, load_case
from cardioseg.inference.postprocess import basal_end, myocardial_enclosure
from cardioseg.io.nifti import atomic_write, read_label
from cardioseg.preprocessing import slice_axis

LV = 1


def lv_slices(label: np.ndarray, axis: int) -> np.ndarray:
    """Indices of the slices (along ``axis``) that hold LV."""
    moved = np.moveaxis(label == LV, axis, 0)
    return np.flatnonzero(moved.reshape(moved.shape[0], -1).any(1))


def slice_range_row(
    pred: np.ndarray, ref: np.ndarray, spacing: tuple[float, float, float]
) -> dict[str, float | int | str]:
    """Slice-range and contour parts of the LV volume error of one volume (mL).

    Example:
        >>> ref = np.zeros((4, 4, 5), np.uint8); ref[1:3, 1:3, 1:4] = 1
        >>> pred = ref.copy(); pred[1:3, 1:3, 4] = 1  # one extra slice at the base (z = 4)
        >>> row = slice_range_row(pred, ref, (1.0, 1.0, 1000.0))
        >>> row["extra_base"], row["extra_apex"], row["range_ml"], row["contour_ml"]
        (1, 0, 4.0, 0.0)
    """
    axis = slice_axis(spacing, ref.shape)
    voxel_ml = float(np.prod(spacing)) / 1000.0
    p_sl, r_sl = lv_slices(pred, axis), lv_slices(ref, axis)
    row: dict[str, float | int | str] = {
        "pred_lv_ml": float((pred == LV).sum()) * voxel_ml,
        "ref_lv_ml": float((ref == LV).sum()) * voxel_ml,
        "extra_base": 0,
        "extra_apex": 0,
        "missing": 0,
        "range_ml": 0.0,
        "contour_ml": 0.0,
        "base_side": "",
        "pred_base_enclosure": float("nan"),
        "pred_base_wall_rel": float("nan"),
        "ref_base_slice": -1,
        "pred_base_slice": -1,
    }
    if r_sl.size == 0:
        return row
    base = basal_end(ref, axis)
    high_is_base = base == r_sl[-1]
    row["base_side"] = "high" if high_is_base else "low"
    lo, hi = r_sl[0], r_sl[-1]
    area = np.moveaxis(pred == LV, axis, 0).reshape(pred.shape[axis], -1).sum(1) * voxel_ml
    ref_area = np.moveaxis(ref == LV, axis, 0).reshape(ref.shape[axis], -1).sum(1) * voxel_ml
    above = [z for z in p_sl if z > hi]
    below = [z for z in p_sl if z < lo]
    row["extra_base"] = len(above if high_is_base else below)
    row["ref_base_slice"] = int(hi if high_is_base else lo)
    if p_sl.size:
        top = p_sl[-1] if high_is_base else p_sl[0]
        row["pred_base_slice"] = int(top)
        row["pred_base_enclosure"] = myocardial_enclosure(np.take(pred, top, axis=axis))
        # median local wall thickness per LV slice (pixels; only the ratio is reported)
        samples = [slice_thickness_samples(np.take(pred, z, axis=axis) == 2) for z in p_sl]
        walls = [float(np.median(v)) if v.size else 0.0 for v in samples]
        if np.median(walls) > 0:
            row["pred_base_wall_rel"] = walls[list(p_sl).index(top)] / float(np.median(walls))
    row["extra_apex"] = len(below if high_is_base else above)
    row["missing"] = int(sum(1 for z in range(lo, hi + 1) if area[z] == 0 and ref_area[z] > 0))
    outside = float(area[:lo].sum() + area[hi + 1 :].sum())
    row["range_ml"] = outside
    row["contour_ml"] = float(area[lo : hi + 1].sum() - ref_area[lo : hi + 1].sum())
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", type=Path, required=True)
    ap.add_argument("--layout", default="auto")
    ap.add_argument("--predictions", type=Path, help="folder of predicted label files")
    ap.add_argument("--model", default=None, help="packaged model name or checkpoint")
    ap.add_argument("-o", "--output", type=Path, default=Path("benchmarks/results"))
    ap.add_argument("--tag", default=None)
    add_roi_argument(ap)
    args = ap.parse_args()
    if not args.dataset.is_dir():
        sys.exit(f"error: {args.dataset}: no such dataset folder")
    segmenter = None
    if args.predictions is None:
        from cardioseg.inference.segmenter import Segmenter

        segmenter = Segmenter(args.model, roi=roi_value(args))

    rows = []
    for (dataset, subject), phases in ed_es_pairs(discover(args.dataset, args.layout)).items():
        per_phase = {}
        for ph, rec in phases.items():
            image, ref, props = load_case(rec)
            if args.predictions is not None:
                pred = read_label(args.predictions / Path(rec.image).name)
                if pred.ndim == 4 and rec.frame >= 0:
                    pred = pred[..., rec.frame]
            else:
                pred, _ = segmenter.predict_volume(image, props.spacing, affine=props.affine)
            row = slice_range_row(pred, ref, props.spacing)
            row.update(dataset=dataset, subject=subject, phase=ph)
            per_phase[ph] = row
            rows.append(row)
        ed, es = per_phase["ED"], per_phase["ES"]
        sign = 1 if ed["base_side"] == "high" else -1
        for who in ("ref", "pred"):
            descent = sign * (ed[f"{who}_base_slice"] - es[f"{who}_base_slice"])
            ed[f"{who}_base_descent"] = es[f"{who}_base_descent"] = int(descent)
        ref_ef = _ef(ed["ref_lv_ml"], es["ref_lv_ml"])
        for r in (ed, es):
            r["lvef_err_pp"] = _ef(ed["pred_lv_ml"], es["pred_lv_ml"]) - ref_ef
            r["lvef_err_in_range_pp"] = (
                _ef(
                    ed["pred_lv_ml"] - ed["range_ml"],
                    es["pred_lv_ml"] - es["range_ml"],
                )
                - ref_ef
            )
        print(
            f"{subject}: ED extra base {ed['extra_base']} ({ed['range_ml']:.1f} mL), "
            f"ES extra base {es['extra_base']} ({es['range_ml']:.1f} mL), "
            f"LVEF error {ed['lvef_err_pp']:+.1f} pp, in reference range "
            f"{ed['lvef_err_in_range_pp']:+.1f} pp"
        )

    tag = args.tag or args.dataset.name
    source = (
        f"--predictions {args.predictions}"
        if args.predictions
        else (f"--model {args.model}" if args.model else "shipped model")
    )
    lines = [
        f"# LV slice range vs. contours: {tag}",
        "",
        f"Command: `python benchmarks/basal_slice_check.py --dataset {args.dataset}"
        f"{' --predictions ' + str(args.predictions) if args.predictions else ''}"
        f"{' --model ' + args.model if args.model else ''} -o {args.output} --tag {tag}` "
        f"({source}).",
        "",
        "Per phase: volumes with LV on slices beyond the reference's basal / apical LV slice, "
        "volumes missing an LV slice inside the reference's range, and the mean LV volume "
        "error split into those slices (range) and the slices both label (contour). "
        "Prediction − reference.",
        "",
        "| phase | n | extra basal slice | extra apical slice | missing slice | "
        "mean LV error (mL) | of which range | of which contour |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for ph in ("ED", "ES"):
        sel = [r for r in rows if r["phase"] == ph]
        if not sel:
            continue
        err = np.mean([r["pred_lv_ml"] - r["ref_lv_ml"] for r in sel])
        lines.append(
            f"| {ph} | {len(sel)} | {sum(r['extra_base'] > 0 for r in sel)} | "
            f"{sum(r['extra_apex'] > 0 for r in sel)} | {sum(r['missing'] > 0 for r in sel)} | "
            f"{err:+.1f} | {np.mean([r['range_ml'] for r in sel]):+.1f} | "
            f"{np.mean([r['contour_ml'] for r in sel]):+.1f} |"
        )
    lines += [
        "",
        "Features of the predicted basal LV slice, for slices beyond the reference's base and "
        "within it: myocardial enclosure (fraction of its LV border on myocardium; the "
        "post-processing drops basal slices below 0.50) and wall thickness relative to the "
        "median over the volume's LV slices:",
        "",
        "| phase | feature | beyond the reference's base: n, min, median "
        "| within it: n, min, 5th pct, 10th pct |",
        "|---|---|---|---|",
    ]
    for ph in ("ED", "ES"):
        for key, name in (("pred_base_enclosure", "enclosure"), ("pred_base_wall_rel", "wall")):
            sel = [r for r in rows if r["phase"] == ph and np.isfinite(r[key])]
            extra = [r[key] for r in sel if r["extra_base"] > 0]
            inside = [r[key] for r in sel if r["extra_base"] == 0]
            e = f"{len(extra)}, {min(extra):.2f}, {np.median(extra):.2f}" if extra else "0"
            i = (
                f"{len(inside)}, {min(inside):.2f}, {np.percentile(inside, 5):.2f}, "
                f"{np.percentile(inside, 10):.2f}"
                if inside
                else "0"
            )
            lines.append(f"| {ph} | {name} | {e} | {i} |")
    ed_rows = [r for r in rows if r["phase"] == "ED"]
    lines += [
        "",
        "Slices the basal LV slice moves towards the apex from ED to ES (subjects per value):",
        "",
        "| labels | " + " | ".join(f"{d} slice(s)" for d in range(-1, 4)) + " |",
        "|---|" + "---|" * 5,
    ]
    for who in ("ref", "pred"):
        counts = [sum(r[f"{who}_base_descent"] == d for r in ed_rows) for d in range(-1, 4)]
        name = "reference" if who == "ref" else "prediction"
        lines.append(f"| {name} | " + " | ".join(str(c) for c in counts) + " |")
    e1 = np.abs([r["lvef_err_pp"] for r in ed_rows])
    e2 = np.abs([r["lvef_err_in_range_pp"] for r in ed_rows])
    lines += [
        "",
        f"LVEF median absolute error over {len(ed_rows)} subjects: **{np.median(e1):.1f} pp** as "
        f"predicted; {np.median(e2):.1f} pp with the predicted LV restricted to the reference's "
        "slice range (diagnostic: uses the reference).",
        "",
    ]
    args.output.mkdir(parents=True, exist_ok=True)
    md = args.output / f"basal_slice_check_{tag}.md"
    with atomic_write(md) as tmp:
        tmp.write_text("\n".join(lines))
    buf = io.StringIO()
    keys = [
        "dataset",
        "subject",
        "phase",
        *[k for k in rows[0] if k not in ("dataset", "subject", "phase")],
    ]
    w = csv.DictWriter(buf, fieldnames=keys)
    w.writeheader()
    for r in rows:
        w.writerow({k: (f"{v:.2f}" if isinstance(v, float) else v) for k, v in r.items()})
    with atomic_write(args.output / f"basal_slice_check_{tag}.csv") as tmp:
        tmp.write_text(buf.getvalue())
    print(md)


if __name__ == "__main__":
    main()
