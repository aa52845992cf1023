"""Intensity normalisation robust to vendor ranges (0–170 vs 0–1300 vs [0, 1])."""

from __future__ import annotations

import numpy as np


def normalize_intensity(volume: np.ndarray, lower: float = 0.5, upper: float = 99.5) -> np.ndarray:
    """Clip to percentiles of the volume, then z-score.

    Args:
        volume: Any-shape array (one volume).
        lower, upper: Percentiles for clipping.

    Returns:
        ``float32`` array with mean 0 and standard deviation 1 (constant input → zeros).

    Example:
        >>> x = normalize_intensity(np.arange(100.0))
        >>> abs(round(float(x.mean()), 6)), round(float(x.std()), 3)
        (0.0, 1.0)
    """
    v = np.asarray(volume, dtype=np.float32)
    lo, hi = (float(q) for q in np.percentile(v, [lower, upper]))
    v = np.clip(v, np.float32(lo), np.float32(hi))
    std = float(v.std())
    if std < 1e-8:
        return np.zeros(v.shape, np.float32)
    return ((v - float(v.mean())) / std).astype(np.float32)


def intensity_fingerprint(volume: np.ndarray) -> dict[str, float]:
    """Percentiles and moments of a volume (used in the dataset fingerprint)."""
    v = np.asarray(volume, dtype=np.float32)
    p = np.percentile(v, [0.5, 50, 99.5])
    return {
        "p00_5": float(p[0]),
        "p50": float(p[1]),
        "p99_5": float(p[2]),
        "mean": float(v.mean()),
        "std": float(v.std()),
    }
