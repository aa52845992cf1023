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


def _read_prediction(record: CaseRecord, pred_dir: str | Path, shape: tuple) -> np.ndarray:
    p = prediction_path(record, pred_dir)
    pred = read_label(p)
    if pred.ndim == 4 and record.frame >= 0:
        pred = pred[..., record.frame]
    if pred.shape != shape:
        raise CardiosegError(p, f"prediction shape {pred.shape} != reference {shape}")
    return pred


def evaluate_records(
    records: list[CaseRecord],
    predict: Callable[[np.ndarray, ImageProperties], np.ndarray] | None = None,
    pred_dir: str | Path | None = None,
    on_case: Callable[[CaseRecord, np.ndarray, np.ndarray, np.ndarray, dict], None] | None = None,
    skipped: list[tuple[str, str]] | None = None,
) -> MetricAccumulator:
    """Compute metrics for every labelled record.

    Args:
        records: Cases with labels.
        predict: ``(volume, properties) -> labels``; used when ``pred_dir`` is not given.
        pred_dir: Folder of predictions named like the images.
        on_case: Callback ``(record, image, prediction, reference, metrics)`` (e.g. overlays).
        skipped: If given, a case whose image, label or prediction cannot be used (a
            :class:`~cardioseg.errors.CardiosegError`, e.g. a label whose affine differs from
            its image's) is logged, appended to this list as ``(case_id, message)`` and the
            evaluation goes on; otherwise the error propagates.

    Example:
        >>> skipped = []
        >>> acc = evaluate_records(records, predict=f, skipped=skipped)  # doctest: +SKIP
        >>> skipped  # doctest: +SKIP
        [('mscmr_lge/subject43/LGE', '.../subject43_DE_manual.nii.gz: label affine ...')]
    """
    if predict is None and pred_dir is None:
        raise ValueError("give predict or pred_dir")
    acc = MetricAccumulator()
    for r in records:
        if not r.label:
            continue
        try:
            image, ref, props = load_case(r)
            pred = None
            if pred_dir is not None:
                pred = _read_prediction(r, pred_dir, ref.shape)
        except CardiosegError as exc:
            if skipped is None:
                raise
            log.warning("skipped %s: %s", r.case_id, exc)
            skipped.append((r.case_id, str(exc)))
            continue
        t0 = time.perf_counter()
        if pred is None:
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
