"""ACDC cross-validation through `analyze`: every held-out study analysed by its fold's model.

`acdc_cv.py` segments the held-out volumes one by one; this runs the clinical analysis itself
(`analyze-batch` on each fold's held-out patient folders, with that fold's model), so the indices
compared with the reference labels are exactly those the reports give (ED/ES from Info.cfg,
TTA labels, post-processing, heart window). Then compare them with

    cardioseg agreement --dataset ../shared/data/acdc --layout acdc \
        --analyzed OUT/batch -o benchmarks/results/agreement_acdc_cv_analyzed

Usage (from the repository root; about 2 s per study on 2 cores):

    python benchmarks/acdc_cv_analyze.py --runs runs/acdc_cv_full90 --roi on -o runs/acdc_cv_analyze
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from roi_option import add_roi_argument, roi_value

from cardioseg.clinical.batch import run_batch
from cardioseg.training.config import load_config
from cardioseg.training.trainer import collect_records, split_records


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", default="runs/acdc_cv_full90", help="folder of fold*/ runs")
    ap.add_argument("-o", "--output", type=Path, default=Path("runs/acdc_cv_analyze"))
    ap.add_argument("--threads", type=int, default=2)
    add_roi_argument(ap)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    folds = [d for d in sorted(Path(args.runs).glob("fold*")) if (d / "best.pt").exists()]
    if not folds:
        sys.exit(f"error: {args.runs}: no fold*/best.pt")
    for fold_dir in folds:
        cfg = load_config(fold_dir / "config.yaml")
        _, val = split_records(collect_records(cfg), cfg)
        studies = args.output / "studies" / fold_dir.name  # the held-out patient folders
        studies.mkdir(parents=True, exist_ok=True)
        for folder in sorted({Path(r.image).parent for r in val}):
            link = studies / folder.name
            if not link.exists():
                link.symlink_to(folder.resolve(), target_is_directory=True)
        table = run_batch(
            studies,
            args.output / "batch",
            model=str(fold_dir / "best.pt"),
            progress=False,
            roi=roi_value(args),
        )
        print(f"{fold_dir.name}: {len(list(studies.iterdir()))} studies -> {table}", flush=True)


if __name__ == "__main__":
    main()
