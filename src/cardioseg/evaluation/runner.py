"""Evaluate predictions (from a folder or from a model) over a whole dataset."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from cardioseg.data.datasets import CaseRecord, load_case
from cardioseg.errors import CardiosegError
from cardioseg.evaluation.metrics import MetricAccumulator, compute_metrics
from cardioseg.io.nifti import ImageProperties, read_label

log = logging.getLogger("cardioseg.evaluate")


def prediction_path(record: CaseRecord, pred_dir: str | Path) -> Path:
    """Where ``cardioseg segment`` writes the prediction for ``record`` (its image file name)."""
    return Path(pred_dir) / Path(record.image).name


def evaluate_records(
    records: list[CaseRecord],
    predict: Callable[[np.ndarray, ImageProperties], np.ndarray] | None = None,
    pred_dir: str | Path | None = None,
    on_case: Callable[[CaseRecord, np.ndarray, np.ndarray, np.ndarray, dict], None] | None = None,
) -> MetricAccumulator:
    """Compute metrics for every labelled record.

    Args:
        records: Cases with labels.
        predict: ``(volume, properties) -> labels``; used when ``pred_dir`` is not given.
        pred_dir: Folder of predictions named like the images.
        on_case: Callback ``(record, image, prediction, reference, metrics)`` (e.g. overlays).
    """
    if predict is None and pred_dir is None:
        raise ValueError("give predict or pred_dir")
    acc = MetricAccumulator()
    for r in records:
        if not r.label:
            continue
        image, ref, props = load_case(r)
        t0 = time.perf_counter()
        if pred_dir is not None:
            p = prediction_path(r, pred_dir)
            pred = read_label(p)
            if pred.ndim == 4 and r.frame >= 0:
                pred = pred[..., r.frame]
            if pred.shape != ref.shape:
                raise CardiosegError(p, f"prediction shape {pred.shape} != reference {ref.shape}")
        else:
            pred = predict(image, props)
        seconds = time.perf_counter() - t0
        m = compute_metrics(pred, ref, props.spacing)
        m["seconds"] = seconds
        acc.add(
            r.case_id,
            m,
            dataset=r.dataset,
            subject=r.subject,
            phase=r.phase,
            vendor=r.vendor,
            centre=r.centre,
            group=r.group,
        )
        log.info("%s mean_dice=%.3f", r.case_id, m["mean_dice"])
        if on_case is not None:
            on_case(r, image, pred, ref, m)
    return acc
