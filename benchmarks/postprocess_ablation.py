"""Ablation of the post-processing rules on held-out predictions.

Runs models *without* post-processing and applies the rules of
:mod:`cardioseg.inference.postprocess` cumulatively, scoring each stage against the reference
labels: ``none`` → ``components`` (largest heart and per-structure components) → ``+rv`` (RV only
on slices with myocardium) → ``+basal`` (basal slices without a myocardial ring dropped; the
shipped chain, with hole filling in every stage after ``none``).

ACDC with the held-out model of each cross-validation fold (``--cv-runs``), other datasets with
one model (``--model``, default the shipped one)::

    python benchmarks/postprocess_ablation.py --cv-runs runs/acdc_cv -o benchmarks/results
    python benchmarks/postprocess_ablation.py --dataset ../shared/data/mnms --layout mnms \\
        --tag mnms -o benchmarks/results
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from roi_option import add_roi_argument, roi_value

from cardioseg.data.datasets import discover, load_case
from cardioseg.evaluation.metrics import compute_overlap
from cardioseg.inference import Segmenter
from cardioseg.inference.postprocess import (
    drop_open_basal_slices,
    drop_rv_without_myocardium,
    fill_holes,
    keep_heart,
    keep_largest_components,
    postprocess,
)
from cardioseg.preprocessing import slice_axis
from cardioseg.training.config import load_config
from cardioseg.training.trainer import collect_records, split_records

STRUCTURES = {"LV": 1, "MYO": 2, "RV": 3}


def _chain(rv: bool, basal: bool) -> Callable[[np.ndarray, int], np.ndarray]:
    """Largest heart and per-structure components, optionally the basal and RV rules (in the
    shipped order), then hole filling."""

    def run(lab: np.ndarray, axis: int) -> np.ndarray:
        lab = keep_largest_components(keep_heart(lab))
        if basal:
            lab = drop_open_basal_slices(lab, axis)
        if rv:
            lab = drop_rv_without_myocardium(lab, axis)
        return fill_holes(lab, axis)

    return run


#: stage -> (function, the stage it is compared with).
STAGES: dict[str, tuple[Callable[[np.ndarray, int], np.ndarray], str]] = {
    "none": (lambda lab, axis: lab, ""),
    "components": (_chain(rv=False, basal=False), "none"),
    "components + rv": (_chain(rv=True, basal=False), "components"),
    "components + rv + basal (shipped)": (postprocess, "components + rv"),
    "components + basal": (_chain(rv=False, basal=True), "components"),
}


def _jobs(args) -> list[tuple[Segmenter, list, str]]:
    """(segmenter without post-processing, records, model name) pairs."""
    if args.cv_runs:
        jobs = []
        for fold_dir in sorted(Path(args.cv_runs).glob("fold*")):
            if not (fold_dir / "best.pt").exists():
                continue
            cfg = load_config(fold_dir / "config.yaml")
            _, val = split_records(collect_records(cfg), cfg)
            jobs.append(
                (
                    Segmenter(fold_dir / "best.pt", postprocess=False, roi=roi_value(args)),
                    val,
                    fold_dir.name,
                )
            )
        return jobs
    recs = [r for r in discover(args.dataset, args.layout) if r.label]
    if args.exclude:
        recs = [r for r in recs if r.subject not in set(args.exclude)]
    return [(Segmenter(args.model, postprocess=False, roi=roi_value(args)), recs, "model")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cv-runs", help="cross-validation runs (fold*/best.pt, config.yaml)")
    ap.add_argument("--dataset", help="dataset folder (with --layout), when no --cv-runs")
    ap.add_argument("--layout", default="auto")
    ap.add_argument("--exclude", nargs="*", default=["subject43"], help="subjects left out")
    ap.add_argument("--model", default=None, help="checkpoint (default: shipped)")
    ap.add_argument("--tag", default="acdc_cv")
    ap.add_argument("-o", "--output", default="benchmarks/results")
    ap.add_argument("--threads", type=int, default=2)
    add_roi_argument(ap)
    args = ap.parse_args()
    if not args.cv_runs and not args.dataset:
        sys.exit("give --cv-runs or --dataset")
    torch.set_num_threads(args.threads)
    jobs = _jobs(args)
    if not jobs:
        sys.exit(f"skip: no finished folds in {args.cv_runs}")
    rows = []
    for seg, recs, name in jobs:
        for rec in recs:
            image, ref, props = load_case(rec)
            raw, _ = seg.predict_volume(image, props.spacing, affine=props.affine)
            axis = slice_axis(props.spacing, image.shape)
            for stage, (fn, _) in STAGES.items():
                lab = fn(raw, axis)
                d = {s: compute_overlap(lab, ref, v)["dice"] for s, v in STRUCTURES.items()}
                rows.append(
                    {"model": name, "case": rec.case_id, "phase": rec.phase, "stage": stage, **d}
                )
            print(name, rec.case_id, flush=True)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / f"postprocess_ablation_{args.tag}.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    n = len(rows) // len(STAGES)
    lines = [
        f"# Post-processing ablation ({args.tag}, {n} volumes)",
        "",
        f"Command: `python benchmarks/postprocess_ablation.py {' '.join(sys.argv[1:])}`",
        "",
        "| stage | LV | MYO | RV | mean | compared with | volumes better / worse |",
        "|---|---|---|---|---|---|---|",
    ]
    means = {}
    for stage, (_, ref_stage) in STAGES.items():
        sel = np.array([[r[s] for s in STRUCTURES] for r in rows if r["stage"] == stage], float)
        means[stage] = np.nanmean(sel, 1)
        change = ""
        if ref_stage:
            diff = means[stage] - means[ref_stage]
            change = f"{int((diff > 1e-9).sum())} / {int((diff < -1e-9).sum())}"
        lines.append(
            f"| {stage} | "
            + " | ".join(f"{x:.4f}" for x in np.nanmean(sel, 0))
            + f" | {np.nanmean(means[stage]):.4f} | {ref_stage or '-'} | {change} |"
        )
    lines += ["", "Every stage after `none` also fills holes, as the shipped chain does."]
    (out / f"postprocess_ablation_{args.tag}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
