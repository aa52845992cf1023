"""Evaluate predictions (from a folder or from a model) over a whole dataset."""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cardioseg.data.datasets import CaseRecord, detect_layout, load_case
from cardioseg.errors import CardiosegError
from cardioseg.evaluation.metrics import MetricAccumulator, compute_metrics
from cardioseg.io.nifti import (
    ImageProperties,
    affines_match,
    atomic_write,
    read_geometry,
    read_label,
)

log = logging.getLogger("cardioseg.evaluate")


def prediction_path(record: CaseRecord, pred_dir: str | Path) -> Path:
    """Where ``cardioseg segment`` writes the prediction for ``record`` (its image file name)."""
    return Path(pred_dir) / Path(record.image).name


def _read_prediction(record: CaseRecord, pred_dir: str | Path, shape: tuple) -> np.ndarray:
    """The prediction for ``record`` in ``pred_dir``, checked against its reference label.

    Raises:
        CardiosegError: The prediction is missing or unreadable; its affine differs from the
            reference label's (another image's geometry, or resampled); the reference is a
            frame of a cine and the prediction is not a cine with that frame; or its shape
            differs from the reference's.
    """
    p = prediction_path(record, pred_dir)
    geometry = read_geometry(p)
    if not affines_match(geometry.affine, read_geometry(record.label).affine):
        raise CardiosegError(p, "prediction affine does not match the reference label's")
    if record.frame >= 0:
        frames = geometry.shape[3] if len(geometry.shape) == 4 else 1
        if len(geometry.shape) != 4 or frames <= record.frame:
            raise CardiosegError(
                p,
                f"prediction has {frames} frame(s), the reference is frame {record.frame} "
                "(counted from 0) of a cine",
            )
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
    progress: bool = False,
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
        progress: Show a progress bar (on stderr) over the labelled cases.

    Example:
        >>> skipped = []
        >>> acc = evaluate_records(records, predict=f, skipped=skipped)  # doctest: +SKIP
        >>> skipped  # doctest: +SKIP
        [('mscmr_lge/subject43/LGE', '.../subject43_DE_manual.nii.gz: label affine ...')]
    """
    if predict is None and pred_dir is None:
        raise ValueError("give predict or pred_dir")
    from tqdm import tqdm

    acc = MetricAccumulator()
    labelled = [r for r in records if r.label]
    for r in tqdm(labelled, desc="cases", unit="case", disable=not progress, leave=False):
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


def run_record(
    dataset: str | Path,
    layout: str,
    accumulator: MetricAccumulator,
    skipped: Sequence[tuple[str, str]] = (),
    segmenter: Any = None,
    pred_dir: str | Path | None = None,
    argv: Sequence[str] | None = None,
) -> dict[str, Any]:
    """The record of how a dataset evaluation was made (``run.json`` of ``cardioseg evaluate
    --dataset``), so that its metrics can be traced to what produced them.

    Args:
        dataset: The dataset folder.
        layout: Its layout as given (``auto`` is resolved as :func:`discover` resolves it).
        accumulator: The evaluated cases (:func:`evaluate_records`).
        skipped: The cases left out, ``(case_id, message)``.
        segmenter: The :class:`~cardioseg.inference.Segmenter` that predicted the cases, or
            ``None`` with ``pred_dir``.
        pred_dir: The folder of predictions, or ``None`` with ``segmenter``.
        argv: The command line (default ``sys.argv``).

    Returns:
        A JSON-ready dict: ``cardioseg_version``; ``created_utc``; ``command`` (``argv``
        joined, quoted where a shell needs it) and ``working_directory``; ``dataset``
        (``folder``, ``layout``); ``predictions`` (the folder, or ``None``); ``model``
        (``None`` with predictions, else ``description``: the checkpoint files with short
        SHA-256 digests, ``checkpoints``, and the inference settings as resolved: ``tta``,
        ``roi`` (the heart window), ``precision``, ``backend``, ``harmonization``,
        ``adaptation``, ``device``, and with ``roi`` the ``heart_window`` counts); ``cases``
        (``evaluated``, ``skipped`` and the ``subjects`` evaluated); ``training_overlap``: the
        evaluated subjects (``dataset/subject``) the model was trained on (``subjects``, ``n``,
        ``of``), or ``None`` where that is not known (predictions from a folder, checkpoints
        that do not list their training subjects).

    Example:
        >>> record = run_record("data/mnms", "auto", acc, segmenter=seg)  # doctest: +SKIP
        >>> record["training_overlap"]  # doctest: +SKIP
        {'subjects': [], 'n': 0, 'of': 3}
    """
    from cardioseg import __version__

    # the names a checkpoint lists its training subjects by (trainer.train_subjects)
    subjects = sorted({f"{r.get('dataset')}/{r.get('subject')}" for r in accumulator.rows()})
    model = overlap = None
    if segmenter is not None:
        model = model_record(segmenter)
        if segmenter.train_subjects is not None:
            trained = set(segmenter.train_subjects)
            seen = [s for s in subjects if s in trained]
            overlap = {"subjects": seen, "n": len(seen), "of": len(subjects)}
    return {
        "cardioseg_version": __version__,
        "created_utc": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": shlex.join(sys.argv if argv is None else argv),
        "working_directory": os.getcwd(),
        "dataset": {
            "folder": str(Path(dataset).resolve()),
            "layout": detect_layout(dataset) if layout == "auto" else layout,
        },
        "predictions": None if pred_dir is None else str(Path(pred_dir).resolve()),
        "model": model,
        "cases": {
            "evaluated": len(accumulator),
            "skipped": len(skipped),
            "subjects": len(subjects),
        },
        "training_overlap": overlap,
    }


def model_record(segmenter: Any) -> dict[str, Any]:
    """What a :class:`~cardioseg.inference.Segmenter` is and how it predicts, as resolved:
    ``description`` (checkpoint files with short SHA-256 digests), ``checkpoints``, ``tta``,
    ``roi`` (the heart window), ``precision``, ``backend``, ``harmonization``, ``adaptation``,
    ``device``, and with ``roi`` the ``heart_window`` counts so far (see
    :attr:`~cardioseg.inference.Segmenter.roi_counts`)."""
    model = {
        "description": segmenter.description,
        "checkpoints": [str(Path(p).resolve()) for p in segmenter.checkpoint_paths],
        "tta": bool(segmenter.tta),
        "roi": bool(segmenter.roi),
        "precision": segmenter.precision,
        "backend": segmenter.backend,
        "harmonization": segmenter.harmonization,
        "adaptation": segmenter.adaptation,
        "device": segmenter.device.type,
    }
    if segmenter.roi:
        model["heart_window"] = dict(segmenter.roi_counts)
    return model


def settings_text(model: dict[str, Any]) -> str:
    """A :func:`model_record`'s inference settings in words, e.g. ``"heart window on, TTA off,
    onnxruntime float32"`` (harmonization and adaptation named when used).

    Example:
        >>> settings_text({"roi": True, "tta": False, "backend": "onnxruntime",
        ...                "precision": "float32", "harmonization": "none", "adaptation": "none"})
        'heart window on, TTA off, onnxruntime float32'
    """
    settings = [
        f"heart window {'on' if model['roi'] else 'off'}",
        f"TTA {'on' if model['tta'] else 'off'}",
        f"{model['backend']} {model['precision']}",
    ]
    settings += [
        f"{key} {model[key]}" for key in ("harmonization", "adaptation") if model[key] != "none"
    ]
    return ", ".join(settings)


def overlap_warning(record: dict[str, Any]) -> str | None:
    """The warning for a :func:`run_record` whose cases include subjects the model was trained
    on (``None`` when none are, or when that is not known)."""
    overlap = record.get("training_overlap")
    if not overlap or not overlap["n"]:
        return None
    return (
        f"warning: {overlap['n']} of {overlap['of']} subjects were in the model's training data "
        "(its checkpoints list them; run.json names them): these metrics are not a held-out "
        "evaluation"
    )


def summary_notes(record: dict[str, Any]) -> list[str]:
    """Paragraphs heading ``summary.md``: what made the predictions, on which data, with which
    version, and whether the model was trained on some of the subjects, so that a table copied
    from it is not anonymous."""
    model = record["model"]
    if model is None:
        made = f"Predictions: `{record['predictions']}`."
    else:
        made = f"Model: {model['description']}; {settings_text(model)}."
    cases = record["cases"]
    notes = [
        made,
        f"Dataset: `{record['dataset']['folder']}` ({record['dataset']['layout']} layout); "
        f"{cases['evaluated']} cases evaluated, {cases['skipped']} skipped; "
        f"cardioseg {record['cardioseg_version']}, {record['created_utc']} (see run.json).",
    ]
    overlap = record.get("training_overlap")
    if overlap and overlap["n"]:
        notes.append(
            f"**Not a held-out evaluation:** {overlap['n']} of {overlap['of']} subjects were in "
            "the model's training data."
        )
    return notes


def write_run_record(path: str | Path, record: dict[str, Any]) -> Path:
    """Write a :func:`run_record` as JSON (atomic)."""
    path = Path(path)
    with atomic_write(path) as tmp:
        tmp.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return path
