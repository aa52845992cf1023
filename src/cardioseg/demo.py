"""``cardioseg demo``: the main job end to end on an embedded default (or a real dataset)."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np

from cardioseg.data.datasets import CaseRecord, discover, load_case
from cardioseg.errors import CardiosegError
from cardioseg.evaluation.metrics import MetricAccumulator, compute_metrics
from cardioseg.io.nifti import ImageProperties, write_label
from cardioseg.reporting.overlays import foreground_window, overlay_montage

log = logging.getLogger("cardioseg.demo")

DEMO_VENDORS = ("siemens", "philips", "ge")


def synthetic_records(folder: Path, seed: int = 0) -> list[CaseRecord]:
    """Write one synthetic ED/ES study per vendor style into ``folder`` and index it."""
    from cardioseg.data.synthetic import PhantomConfig, make_phantom, write_phantom

    records = []
    for i, vendor in enumerate(DEMO_VENDORS):
        ph = make_phantom(PhantomConfig(seed=seed * 100 + i, vendor=vendor))
        name = f"phantom_{vendor}"
        paths = write_phantom(ph, folder, name=name)
        for phase in ph.images:
            img = paths[f"{name}_{phase}"]
            records.append(
                CaseRecord(
                    "synthetic",
                    name,
                    phase,
                    str(img),
                    str(paths[f"{name}_{phase}_gt"]),
                    "canonical",
                    vendor=vendor,
                    spacing=tuple(ph.spacing),
                    shape=ph.images[phase].shape,
                )
            )
    return records


def run_demo(
    output: str | Path,
    data: str | Path | None = None,
    seed: int = 0,
    max_cases: int = 6,
    model: str | Path | None = None,
) -> str:
    """Segment, evaluate and illustrate; returns the Markdown summary.

    Writes into ``output``: ``images/`` (synthetic inputs), ``masks/`` (predictions, native
    geometry), ``overlays/`` (PNG montages), ``metrics.csv`` and ``summary.md``.
    """
    from cardioseg.inference import Segmenter

    out = Path(output)
    if out.exists() and not out.is_dir():
        raise CardiosegError(out, "output exists and is not a folder")
    # the model is loaded and the dataset's cases found before anything is written, and a demo
    # that fails removes the folders it created (a mistyped --model left the synthetic images,
    # a missing --data folder an empty output folder)
    seg = Segmenter(model)
    created = [p for p in (out, *out.parents) if not p.exists()]
    try:
        return _run(out, seg, data, seed, max_cases)
    except BaseException:
        if created:
            shutil.rmtree(created[-1], ignore_errors=True)
        raise


def _run(out: Path, seg, data: str | Path | None, seed: int, max_cases: int) -> str:
    """:func:`run_demo`'s work, with the segmenter loaded."""
    if data is None:
        out.mkdir(parents=True, exist_ok=True)
        records = synthetic_records(out / "images", seed)
    else:
        records = [r for r in discover(data) if r.label]
        if not records:
            raise CardiosegError(data, "no labelled cases found")
        # spread the cases over vendors/groups where possible
        by_key: dict[str, list[CaseRecord]] = {}
        for r in records:
            by_key.setdefault(r.vendor or r.group or "", []).append(r)
        picked: list[CaseRecord] = []
        while len(picked) < min(max_cases, len(records)):
            for k in sorted(by_key):
                if by_key[k] and len(picked) < max_cases:
                    picked.append(by_key[k].pop(0))
        records = picked
        out.mkdir(parents=True, exist_ok=True)
    acc = MetricAccumulator()
    for r in records:
        image, ref, props = load_case(r)
        pred = seg.predict(image, props).labels
        stem = f"{r.subject}_{r.phase}"
        write_label(
            out / "masks" / f"{stem}_seg.nii.gz",
            pred,
            ImageProperties(props.affine, props.spacing, pred.shape, props.path),
        )
        m = compute_metrics(pred, ref, props.spacing)
        acc.add(
            r.case_id,
            m,
            dataset=r.dataset,
            subject=r.subject,
            phase=r.phase,
            vendor=r.vendor,
            group=r.group,
        )
        overlay_montage(
            image,
            pred,
            out / "overlays" / f"{stem}.png",
            props.spacing,
            reference=ref,
            window=foreground_window([pred, ref], props.spacing),
            title=f"{r.case_id}  Dice LV {m['LV_dice']:.2f} "
            f"MYO {m['MYO_dice']:.2f} RV {m['RV_dice']:.2f}",
        )
    acc.to_csv(out / "metrics.csv")
    acc.to_markdown(out / "summary.md", by=["phase", "vendor"])
    rows = acc.rows()
    means = {s: float(np.nanmean([r[f"{s}_dice"] for r in rows])) for s in ("LV", "MYO", "RV")}
    lines = [
        f"cardioseg demo: {len(rows)} volumes -> {out}",
        "mean Dice  " + "  ".join(f"{k} {v:.3f}" for k, v in means.items()),
        f"masks: {out / 'masks'}  overlays: {out / 'overlays'}  table: {out / 'summary.md'}",
    ]
    return "\n".join(lines)
