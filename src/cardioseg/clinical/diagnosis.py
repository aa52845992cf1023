"""Diagnosis assistance: ACDC group suggestion from shape features (research use only).

**Research use only, not a diagnosis.** The classifier suggests which ACDC group (NOR normal,
DCM dilated cardiomyopathy, HCM hypertrophic cardiomyopathy, MINF previous myocardial
infarction, RV abnormal right ventricle) a study's measurements most resemble. It was trained on
the reference segmentations of a small public research dataset (one scanner vendor, one
centre); it has not been validated clinically, knows no other diseases, and must never replace
the judgement of a qualified clinician.

The model is a standardised multinomial logistic regression. Training uses scikit-learn
(``pip install scikit-learn``); the fitted model is plain JSON (feature names, means, standard
deviations, coefficients, intercepts, classes; no pickle) and :func:`predict` needs only numpy.
Missing or non-finite features are replaced by the training mean (i.e. contribute nothing) and
listed in the result.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from cardioseg.errors import CardiosegError
from cardioseg.io.nifti import atomic_write

DISCLAIMER = (
    "Research use only, not a diagnosis: an automatic suggestion of the ACDC research group "
    "whose measurements this study most resembles, from a small model trained on one public "
    "dataset. It must not be used for clinical decisions."
)

MODEL_FORMAT = "cardioseg-diagnosis-logreg"
MODEL_VERSION = 1

#: Name of the shipped model in ``cardioseg/weights``.
DEFAULT_MODEL = "diagnosis_acdc.json"

#: Display names of the ACDC groups.
GROUP_NAMES: dict[str, str] = {
    "NOR": "normal",
    "DCM": "dilated cardiomyopathy",
    "HCM": "hypertrophic cardiomyopathy",
    "MINF": "previous myocardial infarction",
    "RV": "abnormal right ventricle",
}

#: Features used by default, chosen a priori after the ACDC group definitions (BSA-indexed
#: volumes and LV mass, ejection fractions, RV/LV ratio, wall thickness and thickening).
DEFAULT_FEATURES: tuple[str, ...] = (
    "lvedv_index_ml_m2",
    "lvesv_index_ml_m2",
    "rvedv_index_ml_m2",
    "rvesv_index_ml_m2",
    "lv_ef_pct",
    "rv_ef_pct",
    "lv_mass_index_g_m2",
    "rv_lv_edv_ratio",
    "lv_mass_edv_ratio_g_ml",
    "myo_thickness_max_ed_mm",
    "myo_thickness_mean_ed_mm",
    "myo_thickness_cv_ed",
    "myo_thickening_pct",
)


def _matrix(rows: Sequence[Mapping[str, Any]], names: Sequence[str]) -> np.ndarray:
    """Rows of feature dicts as a float matrix; missing or non-numeric values become ``nan``."""
    x = np.full((len(rows), len(names)), np.nan, dtype=np.float64)
    for i, row in enumerate(rows):
        for j, name in enumerate(names):
            value = row.get(name)
            try:
                x[i, j] = float(value) if value is not None else np.nan
            except (TypeError, ValueError):
                pass
    x[~np.isfinite(x)] = np.nan
    return x


def _check_rows(rows: Sequence[Mapping[str, Any]], labels: Sequence[str]) -> None:
    if len(rows) != len(labels):
        raise ValueError(f"{len(rows)} feature rows but {len(labels)} labels")
    if len(rows) == 0:
        raise ValueError("no training rows")
    if len(set(labels)) < 2:
        raise ValueError("need at least two classes to train a classifier")


def train_classifier(
    rows: Sequence[Mapping[str, Any]],
    labels: Sequence[str],
    feature_names: Sequence[str] | None = None,
    c: float = 1.0,
) -> dict[str, Any]:
    """Fit the standardised multinomial logistic regression (research use only).

    Missing values are imputed with the training mean, then every feature is standardised
    (population standard deviation; a constant feature keeps scale 1) and an L2-regularised
    logistic regression (lbfgs) is fitted. The classes are exactly the labels present in
    ``labels``: the model can only suggest groups it was trained on.

    Args:
        rows: One feature dict per patient (e.g. from
            :func:`cardioseg.clinical.features.shape_features`).
        labels: Group of each row.
        feature_names: Features to use (default :data:`DEFAULT_FEATURES`).
        c: Inverse L2 regularisation strength.

    Returns:
        The model as a JSON-serialisable dict (see :func:`predict`), with a ``disclaimer``.

    Raises:
        ValueError: Mismatched inputs, fewer than two classes, or a feature missing in every row.
    """
    from sklearn.linear_model import LogisticRegression

    _check_rows(rows, labels)
    names = list(DEFAULT_FEATURES if feature_names is None else feature_names)
    x = _matrix(rows, names)
    empty = [n for n, col in zip(names, x.T, strict=True) if np.isnan(col).all()]
    if empty:
        raise ValueError(f"features missing in every training row: {', '.join(empty)}")
    fill = np.nanmean(x, axis=0)
    x = np.where(np.isnan(x), fill, x)
    means = x.mean(axis=0)
    stds = x.std(axis=0)
    stds[~(stds > 1e-12)] = 1.0
    clf = LogisticRegression(C=float(c), max_iter=10000, tol=1e-10)
    clf.fit((x - means) / stds, np.asarray(labels, dtype=object))
    import sklearn

    return {
        "format": MODEL_FORMAT,
        "version": MODEL_VERSION,
        "disclaimer": DISCLAIMER,
        "model": "standardised multinomial logistic regression (L2)",
        "feature_names": names,
        "means": means.tolist(),
        "stds": stds.tolist(),
        "coefficients": clf.coef_.tolist(),
        "intercepts": clf.intercept_.tolist(),
        "classes": [str(k) for k in clf.classes_],
        "training": {
            "n_samples": len(rows),
            "class_counts": dict(sorted(Counter(str(k) for k in labels).items())),
            "C": float(c),
            "sklearn_version": sklearn.__version__,
        },
    }


def _as_model(model_json: Mapping[str, Any] | str | Path) -> Mapping[str, Any]:
    if isinstance(model_json, Path):
        return load_model(model_json)
    if isinstance(model_json, str):
        return json.loads(model_json)
    return model_json


def _validate_model(model: Mapping[str, Any]) -> None:
    if model.get("format") != MODEL_FORMAT:
        raise ValueError(f"not a {MODEL_FORMAT} model (format={model.get('format')!r})")
    n_feat = len(model["feature_names"])
    coef = np.asarray(model["coefficients"], dtype=np.float64)
    n_cls = len(model["classes"])
    if len(model["means"]) != n_feat or len(model["stds"]) != n_feat:
        raise ValueError("model means/stds do not match its feature names")
    rows_expected = 1 if n_cls == 2 else n_cls
    if coef.shape != (rows_expected, n_feat) or len(model["intercepts"]) != rows_expected:
        raise ValueError(
            f"model coefficients have shape {coef.shape}, expected ({rows_expected}, {n_feat})"
        )


def predict_proba(model_json: Mapping[str, Any] | str | Path, x: np.ndarray) -> np.ndarray:
    """Class probabilities for a feature matrix, numpy only (research use only).

    Args:
        model_json: Model dict from :func:`train_classifier` (or its JSON text, or a path).
        x: ``(n, n_features)`` matrix in the model's feature order; ``nan`` means missing.

    Returns:
        ``(n, n_classes)`` probabilities in the order of ``model["classes"]``.
    """
    model = _as_model(model_json)
    _validate_model(model)
    x = np.atleast_2d(np.asarray(x, dtype=np.float64))
    z = (x - np.asarray(model["means"])) / np.asarray(model["stds"])
    z[~np.isfinite(z)] = 0.0  # missing -> training mean
    logits = z @ np.asarray(model["coefficients"], dtype=np.float64).T + np.asarray(
        model["intercepts"], dtype=np.float64
    )
    if len(model["classes"]) == 2:  # binary models store one coefficient row (sklearn)
        logits = np.concatenate([np.zeros_like(logits), logits], axis=1)
    logits -= logits.max(axis=1, keepdims=True)
    p = np.exp(logits)
    return p / p.sum(axis=1, keepdims=True)


def predict(
    model_json: Mapping[str, Any] | str | Path, features: Mapping[str, Any]
) -> dict[str, Any]:
    """Suggest the ACDC group of one study (research use only, not a diagnosis).

    Args:
        model_json: Model dict from :func:`train_classifier` / :func:`load_default_model`
            (or its JSON text, or a path to it).
        features: Feature dict of the study (extra keys are ignored).

    Returns:
        ``top_class``, ``top_class_name``, ``top_probability``, ``probabilities`` (class →
        probability, summing to 1), ``missing_features`` (imputed with the training mean),
        ``classes`` (the only groups the model can suggest) and ``disclaimer``.

    Example:
        >>> m = load_default_model()
        >>> r = predict(m, {"lv_ef_pct": 60.0})
        >>> r["top_class"] in m["classes"], round(sum(r["probabilities"].values()), 6)
        (True, 1.0)
    """
    model = _as_model(model_json)
    names = list(model["feature_names"])
    x = _matrix([features], names)
    p = predict_proba(model, x)[0]
    classes = [str(k) for k in model["classes"]]
    top = int(np.argmax(p))
    return {
        "top_class": classes[top],
        "top_class_name": GROUP_NAMES.get(classes[top], classes[top]),
        "top_probability": float(p[top]),
        "probabilities": {k: float(v) for k, v in zip(classes, p, strict=True)},
        "missing_features": [n for n, v in zip(names, x[0], strict=True) if np.isnan(v)],
        "classes": classes,
        "disclaimer": DISCLAIMER,
    }


def suggestion_text(result: Mapping[str, Any]) -> str:
    """One-line, clearly marked text of a :func:`predict` result for reports.

    Example:
        >>> suggestion_text({"top_class": "DCM", "top_probability": 0.8, "missing_features": []})
        'Research-use suggestion, NOT a diagnosis: measurements most similar to ACDC group DCM \
(dilated cardiomyopathy), model probability 0.80.'
    """
    cls = str(result["top_class"])
    text = (
        "Research-use suggestion, NOT a diagnosis: measurements most similar to ACDC group "
        f"{cls} ({GROUP_NAMES.get(cls, cls)}), model probability {result['top_probability']:.2f}."
    )
    missing = list(result.get("missing_features") or [])
    if missing:
        text += f" {len(missing)} feature(s) missing and imputed: {', '.join(missing)}."
    return text


#: A feature further than this many training standard deviations from the training mean is
#: outside what the model has seen: no suggestion is made.
MAX_ABS_Z = 6.0

#: Features that need the body surface area (height and weight).
_INDEXED = ("_index_",)


def suggest(
    features: Mapping[str, Any],
    qc_status: str | None = None,
    model_json: Mapping[str, Any] | str | Path | None = None,
) -> dict[str, Any]:
    """The research-use group suggestion a report shows, or why there is none.

    A suggestion is made only where it can mean something: every feature of the model is
    measured (the BSA-indexed ones need height and weight; a missing one is not imputed here),
    each lies within :data:`MAX_ABS_Z` training standard deviations of the training mean, and
    the QC verdict is not ``fail``.

    Args:
        features: :func:`~cardioseg.clinical.features.shape_features` of the study.
        qc_status: The study's QC status (``ok`` / ``review`` / ``fail``).
        model_json: The model (default: :func:`load_default_model`).

    Returns:
        ``shown`` (bool); when shown, :func:`predict`'s keys and ``text``
        (:func:`suggestion_text`); otherwise ``reason``. Always ``disclaimer``.

    Example:
        >>> suggest({"lv_ef_pct": 60.0})["reason"].split(" (")[0]
        "needs the patient's height and weight"
    """
    model = load_default_model() if model_json is None else _as_model(model_json)
    names = list(model["feature_names"])
    x = _matrix([features], names)[0]
    missing = [n for n, v in zip(names, x, strict=True) if not np.isfinite(v)]
    z = (x - np.asarray(model["means"])) / np.asarray(model["stds"])
    far = [n for n, v in zip(names, z, strict=True) if np.isfinite(v) and abs(v) > MAX_ABS_Z]
    reason = None
    if qc_status == "fail":
        reason = "the quality control failed"
    elif any(any(t in n for t in _INDEXED) for n in missing):
        reason = (
            "needs the patient's height and weight (the model uses volumes and mass indexed "
            "to body surface area)"
        )
    elif missing:
        reason = f"cannot be measured on this segmentation: {', '.join(missing)}"
    elif far:
        reason = f"outside the range of the training data: {', '.join(far)}"
    if reason is not None:
        return {"shown": False, "reason": reason, "disclaimer": DISCLAIMER}
    result = predict(model, features)
    return {"shown": True, **result, "text": suggestion_text(result)}


def cross_validate(
    rows: Sequence[Mapping[str, Any]],
    labels: Sequence[str],
    folds: int = 5,
    seed: int = 0,
    feature_names: Sequence[str] | None = None,
    c: float = 1.0,
    test_rows: Sequence[Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """Stratified k-fold cross-validation of :func:`train_classifier` (research use only).

    Rows must be one per patient, so that folds are patient-level.

    Args:
        rows: One feature dict per patient (used for training).
        labels: Group of each row.
        folds: Number of stratified folds (shuffled with ``seed``).
        seed: Shuffling seed.
        feature_names: Features to use (default :data:`DEFAULT_FEATURES`).
        c: Inverse L2 regularisation strength.
        test_rows: Optional alternative features of the same patients (same order), used for
            the held-out fold instead of ``rows``: e.g. train on reference-label features and
            test on features of predicted masks.

    Returns:
        ``accuracy``, ``balanced_accuracy``, ``per_class_recall``, ``confusion_matrix`` (rows =
        true class, columns = predicted, in ``classes`` order), ``classes``, ``n_samples``,
        ``folds``, ``seed``, ``predicted`` (held-out prediction of every row) and
        ``disclaimer``.

    Raises:
        ValueError: When the smallest class has fewer members than ``folds``.
    """
    from sklearn.model_selection import StratifiedKFold

    _check_rows(rows, labels)
    if test_rows is not None and len(test_rows) != len(rows):
        raise ValueError(f"{len(test_rows)} test rows for {len(rows)} training rows")
    y = np.asarray([str(k) for k in labels], dtype=object)
    classes = sorted(set(y.tolist()))
    smallest = min(Counter(y.tolist()).values())
    if smallest < folds:
        raise ValueError(f"the smallest class has {smallest} rows, fewer than {folds} folds")
    held_out = test_rows if test_rows is not None else rows
    predicted = np.empty(len(rows), dtype=object)
    skf = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    for train_idx, test_idx in skf.split(np.zeros((len(y), 1)), y):
        model = train_classifier([rows[i] for i in train_idx], y[train_idx], feature_names, c)
        p = predict_proba(model, _matrix([held_out[i] for i in test_idx], model["feature_names"]))
        predicted[test_idx] = np.asarray(model["classes"], dtype=object)[np.argmax(p, axis=1)]
    out = classification_summary(y.tolist(), predicted.tolist(), classes)
    out.update({"folds": folds, "seed": seed, "predicted": [str(p) for p in predicted]})
    return out


def classification_summary(
    labels: Sequence[str], predicted: Sequence[str], classes: Sequence[str] | None = None
) -> dict[str, Any]:
    """Accuracy, per-class recall and confusion matrix of predicted groups.

    Args:
        labels: True group of each study.
        predicted: Predicted group of each study.
        classes: Row/column order (default: sorted union of both).

    Returns:
        ``accuracy``, ``balanced_accuracy`` (mean recall over classes with true members),
        ``per_class_recall`` (``nan`` for a class without true members), ``confusion_matrix``
        (rows = true, columns = predicted), ``classes``, ``n_samples`` and ``disclaimer``.

    Example:
        >>> classification_summary(["NOR", "DCM"], ["NOR", "NOR"])["confusion_matrix"]
        [[0, 1], [0, 1]]
    """
    if len(labels) != len(predicted):
        raise ValueError(f"{len(labels)} labels but {len(predicted)} predictions")
    classes = sorted({str(k) for k in (*labels, *predicted)}) if classes is None else classes
    index = {str(k): i for i, k in enumerate(classes)}
    cm = np.zeros((len(classes), len(classes)), dtype=int)
    for t, p in zip(labels, predicted, strict=True):
        cm[index[str(t)], index[str(p)]] += 1
    recall = {
        k: float(cm[i, i] / cm[i].sum()) if cm[i].sum() else float("nan") for k, i in index.items()
    }
    finite = [r for r in recall.values() if np.isfinite(r)]
    return {
        "accuracy": float(np.trace(cm) / cm.sum()) if cm.sum() else float("nan"),
        "balanced_accuracy": float(np.mean(finite)) if finite else float("nan"),
        "per_class_recall": recall,
        "confusion_matrix": cm.tolist(),
        "classes": [str(k) for k in classes],
        "n_samples": int(cm.sum()),
        "disclaimer": DISCLAIMER,
    }


def save_model(model: Mapping[str, Any], path: str | Path) -> Path:
    """Write a model as indented JSON (atomic)."""
    path = Path(path)
    with atomic_write(path) as tmp:
        tmp.write_text(json.dumps(model, indent=1, allow_nan=False) + "\n")
    return path


def load_model(path: str | Path) -> dict[str, Any]:
    """Read and validate a model JSON file (research use only, not a diagnosis)."""
    path = Path(path)
    try:
        model = json.loads(path.read_text())
    except FileNotFoundError:
        raise CardiosegError(path, "diagnosis model not found") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise CardiosegError(path, f"cannot read diagnosis model: {exc}") from None
    try:
        _validate_model(model)
    except (KeyError, TypeError, ValueError) as exc:
        raise CardiosegError(path, f"invalid diagnosis model: {exc}") from None
    return model


def load_default_model() -> dict[str, Any]:
    """The shipped ACDC group model ``cardioseg/weights/diagnosis_acdc.json``.

    Research use only, not a diagnosis. Built by ``python benchmarks/diagnosis_acdc.py``; its
    ``classes`` are the groups present in the training data and ``cross_validation`` holds the
    cross-validated accuracy.
    """
    ref = resources.files("cardioseg") / "weights" / DEFAULT_MODEL
    with resources.as_file(ref) as path:
        return load_model(path)
