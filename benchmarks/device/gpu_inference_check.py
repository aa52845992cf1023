"""Inference on a CUDA GPU: CPU/GPU agreement of the shipped model and seconds per volume.

Segments ACDC volumes with the packaged default model on the GPU in float32 and bfloat16 (and
float32 with TTA), checks that the GPU's float32 labels match the CPU's on a few volumes (same
model, same preprocessing: only floating-point summation order differs), and writes a markdown
table. Needs a CUDA device and the ACDC training folder (``acdc_pack.py unpack`` gives one).

Usage:
    python benchmarks/device/gpu_inference_check.py --data /tmp/data/acdc -o $OUT/gpu_inference.md
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from cardioseg.data.datasets import load_case, read_acdc
from cardioseg.evaluation.metrics import compute_overlap
from cardioseg.inference.segmenter import Segmenter


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("-n", type=int, default=40, help="volumes to time")
    ap.add_argument("--n-cpu", type=int, default=3, help="volumes to compare with the CPU")
    ap.add_argument("-o", "--output", type=Path, required=True)
    ap.add_argument("--device", default="cuda", help="cpu only to try the script out")
    a = ap.parse_args()
    if a.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device")
    sync = torch.cuda.synchronize if a.device == "cuda" else (lambda: None)
    records = read_acdc(a.data)[: a.n]
    cases = [load_case(r) for r in records]
    rows, labels = [], {}
    for name, kw in [
        ("float32", {"precision": "float32"}),
        ("bfloat16", {"precision": "bfloat16"}),
        ("float32 + TTA", {"precision": "float32", "tta": True}),
    ]:
        seg = Segmenter(device=a.device, **kw)
        for image, _, props in cases[:2]:  # warm-up (cuDNN autotuning, allocator)
            seg.predict_volume(image, props.spacing, affine=props.affine)
        sync()
        t0, out = time.perf_counter(), []
        for image, _, props in cases:
            out.append(seg.predict_volume(image, props.spacing, affine=props.affine)[0])
        sync()
        dt = (time.perf_counter() - t0) / len(cases)
        pairs = [(p, lab) for p, (_, lab, _) in zip(out, cases, strict=True)]
        d = [np.mean([compute_overlap(p, lab, k)["dice"] for p, lab in pairs]) for k in (1, 2, 3)]
        labels[name] = out
        rows.append((name, dt, *d))
        print(name, f"{dt:.4f} s/vol", [round(x, 4) for x in d], flush=True)
    cpu = Segmenter(device="cpu", precision="float32")
    agree = []
    for (image, _, props), g in zip(cases[: a.n_cpu], labels["float32"][: a.n_cpu], strict=True):
        c = cpu.predict_volume(image, props.spacing, affine=props.affine)[0]
        agree.append(float((c == g).mean()))
    lines = [
        f"# Inference on {torch.cuda.get_device_name() if a.device == 'cuda' else 'CPU'} "
        f"(torch {torch.__version__})",
        "",
        f"Packaged default model, {len(cases)} ACDC volumes (training data of the model: a speed "
        "and CPU/GPU agreement check, not an accuracy result). Time per volume: preprocessing, "
        "network, inverse resampling and post-processing, arrays already in memory.",
        "",
        "| precision | s per volume | Dice LV | Dice MYO | Dice RV |",
        "|---|---|---|---|---|",
        *[f"| {n} | {t:.4f} | {lv:.3f} | {m:.3f} | {rv:.3f} |" for n, t, lv, m, rv in rows],
        "",
        f"GPU float32 vs CPU float32 labels on {len(agree)} volumes: voxel agreement "
        + ", ".join(f"{x:.6f}" for x in agree),
        "",
    ]
    a.output.write_text("\n".join(lines))


if __name__ == "__main__":
    main()
