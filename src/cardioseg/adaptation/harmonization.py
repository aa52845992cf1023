"""Histogram matching of test volumes to the training intensity reference (harmonisation).

The trainer stores the mean intensity quantiles of its (normalised) training volumes in the
checkpoint fingerprint (``fingerprint["intensity_reference"]``). At inference, a normalised test
volume is mapped through the piecewise-linear function that sends its own quantiles onto the
reference quantiles, so that its intensity distribution matches the training data.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

#: Percentile levels of the reference (0, 1, ..., 100).
DEFAULT_LEVELS: tuple[float, ...] = tuple(float(v) for v in np.linspace(0.0, 100.0, 101))


def volume_quantiles(volume: np.ndarray, levels: Iterable[float] = DEFAULT_LEVELS) -> np.ndarray:
    """Percentiles of all voxels of ``volume`` at ``levels`` (in %)."""
    return np.percentile(np.asarray(volume, dtype=np.float32), list(levels)).astype(np.float64)


@dataclass
class HistogramReference:
    """Reference intensity quantiles.

    Attributes:
        levels: Percentile levels in % (increasing).
        values: Intensity at each level (non-decreasing).

    Example:
        >>> ref = HistogramReference.from_volumes([np.arange(101.0)], levels=[0, 50, 100])
        >>> ref.values
        [0.0, 50.0, 100.0]
    """

    levels: list[float]
    values: list[float]

    def __post_init__(self) -> None:
        if len(self.levels) != len(self.values) or len(self.levels) < 2:
            raise ValueError("a histogram reference needs >= 2 levels and one value per level")

    @classmethod
    def from_volumes(
        cls, volumes: Iterable[np.ndarray], levels: Iterable[float] = DEFAULT_LEVELS
    ) -> HistogramReference:
        """Mean of the per-volume quantiles (each volume counts once, whatever its size)."""
        levels = [float(v) for v in levels]
        q = [volume_quantiles(v, levels) for v in volumes]
        if not q:
            raise ValueError("no volumes for the histogram reference")
        return cls(levels, [float(v) for v in np.mean(q, axis=0)])

    def to_dict(self) -> dict[str, Any]:
        return {"levels": list(self.levels), "values": list(self.values)}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> HistogramReference:
        return cls([float(v) for v in values["levels"]], [float(v) for v in values["values"]])


def match_histogram(volume: np.ndarray, reference: HistogramReference) -> np.ndarray:
    """Map ``volume`` so that its quantiles at ``reference.levels`` become ``reference.values``.

    Ties among the volume's quantiles (e.g. a large constant background) are merged and mapped to
    the mean of their reference values; values outside the volume's range are clamped.

    Args:
        volume: Any-shape array.
        reference: Target quantiles.

    Returns:
        ``float32`` array of the same shape.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> a = rng.normal(size=10000)
        >>> ref = HistogramReference.from_volumes([a])
        >>> b = match_histogram(3 * a + 5, ref)
        >>> bool(np.allclose(np.percentile(b, [10, 50, 90]), np.percentile(a, [10, 50, 90]),
        ...                  atol=1e-3))
        True
    """
    v = np.asarray(volume, dtype=np.float32)
    src = volume_quantiles(v, reference.levels)
    ref = np.asarray(reference.values, dtype=np.float64)
    xp, inverse = np.unique(src, return_inverse=True)
    fp = np.bincount(inverse, weights=ref) / np.bincount(inverse)
    if len(xp) == 1:  # constant volume: nothing to match, map to the reference median
        return np.full_like(v, float(np.median(ref)))
    return np.interp(v, xp, fp).astype(np.float32)
