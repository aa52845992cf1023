"""Canonical label convention and per-dataset remapping tables."""

from __future__ import annotations

import numpy as np

#: Canonical label values used everywhere inside cardioseg.
LABELS: dict[str, int] = {"background": 0, "LV": 1, "MYO": 2, "RV": 3}
#: Foreground structures in label order.
STRUCTURES: tuple[str, ...] = ("LV", "MYO", "RV")

#: Mapping from each dataset's label values to the canonical ones.
DATASET_LABEL_MAPS: dict[str, dict[int, int]] = {
    "acdc": {0: 0, 1: 3, 2: 2, 3: 1},  # ACDC: 1=RV, 2=MYO, 3=LV
    "mnms": {0: 0, 1: 1, 2: 2, 3: 3},  # M&Ms: 1=LV, 2=MYO, 3=RV
    "mnms2": {0: 0, 1: 1, 2: 2, 3: 3},  # M&Ms-2: same as M&Ms
    "mscmr": {0: 0, 1: 3, 2: 2, 3: 1},  # MS-CMRSeg (remapped release): 1=RV, 2=MYO, 3=LV
    "canonical": {0: 0, 1: 1, 2: 2, 3: 3},
}


class UnknownLabelError(ValueError):
    """Raised when a label map holds a value that the convention does not define."""


def remap_labels(label: np.ndarray, mapping: dict[int, int]) -> np.ndarray:
    """Remap integer labels with ``mapping``; unknown values raise :class:`UnknownLabelError`.

    Args:
        label: Integer (or integral float) label array of any shape.
        mapping: Source value to canonical value.

    Returns:
        ``uint8`` array of canonical labels.

    Example:
        >>> remap_labels(np.array([0, 1, 3]), DATASET_LABEL_MAPS["acdc"]).tolist()
        [0, 3, 1]
    """
    values = np.unique(label)
    if not np.all(np.isfinite(values)) or np.any(values != np.round(values)):
        raise UnknownLabelError("label map contains non-integer values")
    unknown = sorted(int(v) for v in values if int(v) not in mapping)
    if unknown:
        shown = ", ".join(map(str, unknown[:8])) + (", ..." if len(unknown) > 8 else "")
        hint = " (an image rather than a label map?)" if len(unknown) > 8 else ""
        raise UnknownLabelError(
            f"{len(unknown)} unknown label value(s) [{shown}]{hint}; expected {sorted(mapping)}"
        )
    lut = np.zeros(max(mapping) + 1, dtype=np.uint8)
    for src, dst in mapping.items():
        lut[src] = dst
    return lut[label.astype(np.int64)]


def check_canonical_labels(label: np.ndarray, name: str = "labels") -> None:
    """Refuse an array that does not hold canonical labels (integers 0..3).

    A reference in another dataset's convention (ACDC: 1=RV, 3=LV) cannot be told apart here;
    read it with :func:`cardioseg.io.read_label` and its ``label_map`` to remap it.

    Raises:
        ValueError: Values outside 0..3 (an image or probabilities rather than labels?).

    Example:
        >>> check_canonical_labels(np.array([0, 1, 2, 3]))
        >>> check_canonical_labels(np.array([0.0, 0.4]), "pred")
        Traceback (most recent call last):
        ...
        ValueError: pred must hold canonical labels 0 background, 1 LV, 2 MYO, 3 RV; found \
value(s) [0.4] (an image or probabilities rather than labels? remap another dataset's \
labels with cardioseg.io.read_label(..., label_map=...))
    """
    arr = np.asarray(label)
    if arr.size == 0:
        return
    if arr.dtype.kind in "biu":
        lo, hi = int(arr.min()), int(arr.max())
        if lo >= 0 and hi <= 3:
            return
    values = np.unique(arr)
    bad = [v for v in values.tolist() if v not in (0, 1, 2, 3)]
    if not bad:
        return
    shown = ", ".join(f"{v:g}" for v in bad[:8]) + (", ..." if len(bad) > 8 else "")
    raise ValueError(
        f"{name} must hold canonical labels 0 background, 1 LV, 2 MYO, 3 RV; found value(s) "
        f"[{shown}] (an image or probabilities rather than labels? remap another dataset's "
        "labels with cardioseg.io.read_label(..., label_map=...))"
    )
