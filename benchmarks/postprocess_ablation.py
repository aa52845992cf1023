"""Effect of the RV post-processing rule on saved cross-validation predictions.

Compares the held-out ACDC predictions written by ``benchmarks/acdc_cv.py`` (before
:func:`cardioseg.inference.postprocess.drop_rv_without_myocardium` existed) with the same
predictions after that rule, against the reference labels:

    python benchmarks/postprocess_ablation.py --data ../shared/data/acdc \
        --predictions runs/acdc_cv/predictions
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from cardioseg.data.datasets import discover, load_case
from cardioseg.evaluation.metrics import compute_overlap
from cardioseg.inference.postprocess import drop_rv_without_myocardium
from cardioseg.io.nifti import read_label
from cardioseg.preprocessing import slice_axis

STRUCTURES = {"LV": 1, "MYO": 2, "RV": 3}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default="../shared/data/acdc")
    ap.add_argument("--predictions", default="runs/acdc_cv/predictions")
    args = ap.parse_args()
    pred_dir = Path(args.predictions)
    if not pred_dir.exists():
        sys.exit(f"skip: {pred_dir} not found (run benchmarks/acdc_cv.py first)")
    before, after = [], []
    for rec in discover(args.data):
        path = pred_dir / Path(rec.image).name
        if not rec.label or not path.exists():
            continue
        _, ref, props = load_case(rec)
        pred = read_label(path)
        new = drop_rv_without_myocardium(pred, slice_axis(props.spacing, pred.shape))
        for out, p in ((before, pred), (after, new)):
            out.append([compute_overlap(p, ref, v)["dice"] for v in STRUCTURES.values()])
    b, a = np.array(before), np.array(after)
    d = a[:, 2] - b[:, 2]
    print(f"{len(b)} volumes; Dice before -> after (LV / MYO / RV, mean):")
    print(" / ".join(f"{x:.4f}" for x in b.mean(0)), f"-> mean {b.mean():.4f}")
    print(" / ".join(f"{x:.4f}" for x in a.mean(0)), f"-> mean {a.mean():.4f}")
    print(
        f"RV: {int((d > 1e-9).sum())} volumes better, {int((d < -1e-9).sum())} worse "
        f"(largest loss {d.min():.3f}, largest gain {d.max():.3f})"
    )


if __name__ == "__main__":
    main()
