"""Training-step and inference speed of the U-Net widths in float32 and bfloat16 mixed precision.

Usage (from the repository root, on an otherwise idle machine):

    python benchmarks/train_step_benchmark.py -o benchmarks/results

One training step = the shipped recipe's step: a batch of 16 patches of 160 x 160, forward,
Dice + cross-entropy loss, backward, gradient clipping and an AdamW update, exactly as
``cardioseg train`` runs it with ``train.amp: false`` (float32) or ``train.amp: bf16``.
Inference = one forward pass over a 10-slice stack of 192 x 192 in float32 (what ``cardioseg
segment`` runs). Synthetic tensors (timing does not depend on the values). Median of
``--repeats`` timed steps after two warm-up steps.

Writes ``<out>/train_step.md``.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from monai.losses import DiceCELoss

from cardioseg.inference.segmenter import native_bfloat16
from cardioseg.models.factory import ModelConfig, build_model

WIDTHS = {"16 (v3)": 16, "24 (v4, the default)": 24, "32": 32}


def _step_seconds(channels: list[int], dtype: torch.dtype | None, repeats: int) -> float:
    torch.manual_seed(0)
    model = build_model(ModelConfig(channels=channels))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True, batch=True)
    x = torch.randn(16, 1, 160, 160)
    y = torch.randint(0, 4, (16, 1, 160, 160))
    times = []
    for i in range(repeats + 2):
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            loss = loss_fn(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 12.0)
        opt.step()
        if i >= 2:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _inference_seconds(channels: list[int], repeats: int) -> float:
    model = build_model(ModelConfig(channels=channels)).eval()
    x = torch.randn(10, 1, 192, 192)
    times = []
    with torch.inference_mode():
        for i in range(repeats + 2):
            t0 = time.perf_counter()
            model(x)
            if i >= 2:
                times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-o", "--output", default="benchmarks/results")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=8)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    bf16_native = native_bfloat16(torch.device("cpu"))
    lines = [
        "# Training step and inference speed by network width and precision",
        "",
        f"Command: `python benchmarks/train_step_benchmark.py {' '.join(sys.argv[1:])}`",
        f"Machine: {platform.machine()}, torch {torch.__version__}, {args.threads} threads, "
        f"native bf16 kernels: {'yes' if bf16_native else 'no'}; median of {args.repeats} steps.",
        "",
        "| base channels | parameters (M) | train step fp32 (s) | train step bf16 (s) | speed-up "
        "| 14 000 iterations bf16 (min) | inference 10 x 192² fp32 (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, c in WIDTHS.items():
        channels = [c, 2 * c, 4 * c, 8 * c, 16 * c]
        n = sum(p.numel() for p in build_model(ModelConfig(channels=channels)).parameters())
        fp32 = _step_seconds(channels, None, args.repeats)
        bf16 = _step_seconds(channels, torch.bfloat16, args.repeats)
        inf = _inference_seconds(channels, args.repeats)
        row = (
            f"| {label} | {n / 1e6:.2f} | {fp32:.3f} | {bf16:.3f} | {fp32 / bf16:.2f}x "
            f"| {bf16 * 14000 / 60:.0f} | {inf:.3f} |"
        )
        print(row, flush=True)
        lines.append(row)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    (out / "train_step.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
