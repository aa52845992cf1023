"""Evaluate 5-fold cross-validation runs on ACDC in native geometry (3D metrics per structure).

Train the folds first (background, resumable):

    for f in 0 1 2 3 4; do cardioseg train -c configs/acdc_cv.yaml --set train.fold=$f \
        --set output_dir=runs/acdc_cv/fold$f; done
    python benchmarks/acdc_cv.py --runs runs/acdc_cv -o benchmarks/results

Writes ``acdc_cv_cases.csv`` and ``acdc_cv_summary.md`` and the held-out predictions
(``<runs>/predictions/<image name>``) for agreement analyses. ``--tta`` evaluates the same folds
with test-time augmentation (``cardioseg segment --tta``) and writes
``acdc_cv_{cases,summary}_tta.*`` and ``<runs>/predictions_tta/`` instead; ``--tag NAME``
inserts ``_NAME`` into the output file names (``acdc_cv_cases_NAME.csv``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from roi_option import add_roi_argument, roi_value

from cardioseg.data.datasets import load_case
from cardioseg.evaluation.metrics import MetricAccumulator, compute_metrics
from cardioseg.inference import Segmenter
from cardioseg.io.nifti import ImageProperties, write_label
from cardioseg.training.config import load_config
from cardioseg.training.trainer import collect_records, split_records


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", default="runs/acdc_cv")
    ap.add_argument("-o", "--output", default="benchmarks/results")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tta", action="store_true", help="test-time augmentation")
    add_roi_argument(ap)
    ap.add_argument("--tag", default="", help="suffix for the output file names (e.g. wide)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    runs = Path(args.runs)
    suffix = "_tta" if args.tta else ""
    tag = f"_{args.tag}" if args.tag else ""
    acc = MetricAccumulator()
    folds_done = []
    for fold_dir in sorted(runs.glob("fold*")):
        ckpt = fold_dir / "best.pt"
        if not ckpt.exists():
            print(f"skip {fold_dir}: no best.pt")
            continue
        cfg = load_config(fold_dir / "config.yaml")
        _, val = split_records(collect_records(cfg), cfg)
        seg = Segmenter(ckpt, tta=args.tta, roi=roi_value(args))
        folds_done.append(fold_dir.name)
        for r in val:
            image, ref, props = load_case(r)
            pred = seg.predict(image, props).labels
            write_label(
                runs
                / f"predictions{suffix}{'_roi' if args.roi == 'on' else ''}"
                / Path(r.image).name,
                pred,
                ImageProperties(props.affine, props.spacing, pred.shape, r.image),
            )
            m = compute_metrics(pred, ref, props.spacing)
            acc.add(r.case_id, m, fold=fold_dir.name, phase=r.phase, group=r.group, vendor=r.vendor)
            print(f"{fold_dir.name} {r.case_id} {m['mean_dice']:.3f}", flush=True)
        if seg.roi:
            print(f"{fold_dir.name} heart-window outcomes: {seg.roi_counts}", flush=True)
    if not folds_done:
        sys.exit("no finished folds")
    out = Path(args.output)
    acc.to_csv(out / f"acdc_cv_cases{tag}{suffix}.csv")
    acc.to_markdown(out / f"acdc_cv_summary{tag}{suffix}.md", by=["fold", "phase", "group"])
    rows = acc.rows()
    print("folds:", folds_done, "n volumes:", len(rows))
    for s in ("LV", "MYO", "RV"):
        print(s, round(float(np.nanmean([r[f"{s}_dice"] for r in rows])), 4))
    print("mean", round(float(np.nanmean([r["mean_dice"] for r in rows])), 4))


if __name__ == "__main__":
    main()
