"""Accuracy and speed of cardioseg vs. peers on the same volumes, in one run.

Usage (from the repository root):

    pip download --no-deps myopari -d benchmarks/peers   # optional peer
    python benchmarks/segmentation_benchmark.py --data ../shared/data -o benchmarks/results

Writes ``<out>/segmentation_cases.csv`` (one row per method and volume) and
``<out>/segmentation_summary.md``. Times are wall-clock per 3D volume including pre- and
post-processing (file reading excluded), median of ``--repeats`` runs, with ``--threads`` threads.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from roi_option import add_roi_argument, roi_value  # noqa: E402

from cardioseg.benchmark.report import compare_paired, subject_differences  # noqa: E402
from cardioseg.data.datasets import discover, load_case  # noqa: E402
from cardioseg.errors import CardiosegError  # noqa: E402
from cardioseg.evaluation.metrics import MetricAccumulator, compute_metrics  # noqa: E402
from cardioseg.inference import Segmenter  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default="../shared/data")
    ap.add_argument("-o", "--output", default="benchmarks/results")
    ap.add_argument("--datasets", nargs="+", default=["mnms", "mscmr_lge"])
    ap.add_argument("--model", default=None, help="checkpoint (default: shipped)")
    ap.add_argument("--peers-dir", default="benchmarks/peers")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--tta", action="store_true")
    ap.add_argument(
        "--variants",
        nargs="*",
        default=[],
        choices=["tta", "tent", "histogram", "bf16", "roi", "roi-tta", "full", "full-tta", "torch"],
        help="also run the model with test-time augmentation, TENT, histogram matching, "
        "bfloat16 inference, in a heart-centred window (roi; roi-tta with TTA), on the whole "
        "image (full; full-tta with TTA) or with PyTorch running the network (torch; the "
        "default on a CPU in float32 is ONNX Runtime)",
    )
    ap.add_argument(
        "--ensemble",
        nargs="*",
        default=[],
        help="checkpoints averaged as one more method, 'cardioseg-ensemble' (e.g. the CV folds)",
    )
    ap.add_argument(
        "--compare",
        nargs="*",
        default=[],
        metavar="NAME=CHECKPOINT",
        help="more single models run side by side, each as method 'cardioseg[NAME]' "
        "(a packaged model name or a checkpoint file), each also with --variants",
    )
    ap.add_argument(
        "--precision",
        default=None,
        choices=["auto", "float32", "bfloat16"],
        help="network precision of the cardioseg methods (default: each model's, i.e. auto)",
    )
    add_roi_argument(ap)
    ap.add_argument("--tag", default="", help="suffix for output file names")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", category=FutureWarning)  # the peer's scikit-image calls
    data = Path(args.data)
    if not data.exists():
        sys.exit(f"skip: {data} not found (needs ../shared/data)")
    # the variants override these
    p = {"precision": args.precision, "roi": roi_value(args)}
    methods: dict[str, object] = {"cardioseg": Segmenter(args.model, tta=args.tta, **p)}
    variant_kwargs = {
        "tta": {"tta": True},
        "tent": {"adaptation": "tent"},
        "histogram": {"harmonization": "histogram"},
        "bf16": {"precision": "bfloat16"},
        "roi": {"roi": True},
        "roi-tta": {"roi": True, "tta": True},
        "full": {"roi": False},
        "full-tta": {"roi": False, "tta": True},
        "torch": {"backend": "torch"},
    }
    for v in args.variants:
        methods[f"cardioseg+{v}"] = Segmenter(args.model, **{**p, **variant_kwargs[v]})
    if args.ensemble:
        methods["cardioseg-ensemble"] = Segmenter(args.ensemble, **p)
    for spec in args.compare:
        name, sep, ckpt = spec.partition("=")
        if not sep or not name or not ckpt:
            sys.exit(f"--compare expects NAME=CHECKPOINT, got {spec!r}")
        methods[f"cardioseg[{name}]"] = Segmenter(ckpt, **p)
        for v in args.variants:
            methods[f"cardioseg[{name}]+{v}"] = Segmenter(ckpt, **{**p, **variant_kwargs[v]})
    from peers import MyopariPeer, find_myopari

    pkg = find_myopari(args.peers_dir)
    if pkg is not None:
        methods["myopari"] = MyopariPeer(pkg, threads=args.threads)
    else:
        print(f"peer myopari not found in {args.peers_dir}; running cardioseg only")

    acc = MetricAccumulator()
    skipped: list[str] = []
    for ds in args.datasets:
        for r in [r for r in discover(data / ds) if r.label]:
            try:
                image, ref, props = load_case(r)
            except CardiosegError as exc:  # e.g. a label whose header disagrees with its image
                print(f"skip {r.case_id}: {exc}", flush=True)
                skipped.append(f"{r.case_id} ({exc})")
                continue
            for name, m in methods.items():
                times = []
                for _ in range(args.repeats):
                    t0 = time.perf_counter()
                    pred = (
                        m.predict(image, props).labels
                        if name.startswith("cardioseg")
                        else m.predict_volume(image, props.spacing)
                    )
                    times.append(time.perf_counter() - t0)
                met = compute_metrics(pred, ref, props.spacing)
                met["seconds"] = statistics.median(times)
                met["n_slices"] = int(min(image.shape))
                acc.add(
                    f"{name}:{r.case_id}",
                    met,
                    method=name,
                    dataset=ds,
                    subject=r.subject,
                    phase=r.phase,
                    vendor=r.vendor,
                )
                print(
                    f"{name:10s} {r.case_id:28s} dice {met['mean_dice']:.3f} "
                    f"LV {met['LV_dice']:.3f} MYO {met['MYO_dice']:.3f} RV {met['RV_dice']:.3f} "
                    f"HD95 {np.nanmean([met['LV_hd95'], met['MYO_hd95'], met['RV_hd95']]):.1f} "
                    f"{met['seconds']:.2f}s",
                    flush=True,
                )
    out = Path(args.output)
    tag = f"_{args.tag}" if args.tag else ""
    acc.to_csv(out / f"segmentation_cases{tag}.csv")
    rows = acc.rows()
    lines = [
        f"# Segmentation benchmark{tag}",
        "",
        f"Command: `python benchmarks/segmentation_benchmark.py {' '.join(sys.argv[1:])}`",
        f"Machine: {platform.processor() or platform.machine()}, torch threads {args.threads},"
        f" {args.repeats} repeats (median).",
        "",
        "| dataset | method | n | mean Dice | LV | MYO | RV | mean HD95 (mm) | s / volume |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for ds in args.datasets:
        for name in methods:
            rs = [r for r in rows if r["dataset"] == ds and r["method"] == name]
            if not rs:
                continue
            f = lambda k, rs=rs: float(np.nanmean([r[k] for r in rs]))  # noqa: E731
            hd = float(np.nanmean([[r["LV_hd95"], r["MYO_hd95"], r["RV_hd95"]] for r in rs]))
            lines.append(
                f"| {ds} | {name} | {len(rs)} | {f('mean_dice'):.3f} | "
                f"{f('LV_dice'):.3f} | {f('MYO_dice'):.3f} | {f('RV_dice'):.3f} | "
                f"{hd:.1f} | {statistics.median(r['seconds'] for r in rs):.3f} |"
            )
    engines = [
        f"{n}: {m.backend}, {m.precision}" for n, m in methods.items() if hasattr(m, "backend")
    ]
    lines += ["", "Network backend and precision: " + "; ".join(engines)]
    roi = [f"{n} {m.roi_counts}" for n, m in methods.items() if getattr(m, "roi", False)]
    if roi:
        lines += ["", "Heart-window outcomes (volumes x repeats): " + "; ".join(roi)]
    if skipped:
        lines += ["", "Cases that could not be loaded (left out): " + "; ".join(skipped)]
    reference = next(iter(methods))
    lines += [
        "",
        f"Paired per subject against `{reference}` (mean Dice, averaged over a subject's "
        "volumes: ED and ES of one subject are not independent pairs; Wilcoxon signed-rank; "
        "n counts subjects):",
        "",
        "| dataset | method | n | median difference | better on | p |",
        "|---|---|---|---|---|---|",
    ]
    for ds in args.datasets:

        def dice_by_case(method: str, ds: str = ds) -> dict[tuple, float]:
            return {
                (r["subject"], r["phase"]): r["mean_dice"]
                for r in rows
                if r["dataset"] == ds and r["method"] == method
            }

        ref = dice_by_case(reference)
        for name in list(methods)[1:]:
            own = dice_by_case(name)
            if not set(ref) & set(own):
                continue
            t = compare_paired(subject_differences(own, ref, lambda case: case[0]))
            lines.append(
                f"| {ds} | {name} | {t['n']} | {t['median_diff']:+.3f} | "
                f"{t['n_better']} of {t['n']} | {t['p_value']:.2g} |"
            )
    lines += [
        "",
        "Per vendor (M&Ms):",
        "",
        "| method | vendor | mean Dice | LV | MYO | RV |",
        "|---|---|---|---|---|---|",
    ]
    for name in methods:
        for v in sorted({r["vendor"] for r in rows if r["dataset"] == "mnms"}):
            rs = [
                r
                for r in rows
                if r["dataset"] == "mnms" and r["method"] == name and r["vendor"] == v
            ]
            f = lambda k, rs=rs: float(np.nanmean([r[k] for r in rs]))  # noqa: E731
            lines.append(
                f"| {name} | {v} | {f('mean_dice'):.3f} | {f('LV_dice'):.3f} | "
                f"{f('MYO_dice'):.3f} | {f('RV_dice'):.3f} |"
            )
    (out / f"segmentation_summary{tag}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
