"""Evaluation: spacing-aware per-structure metrics, accumulation and dataset-level runs."""

from cardioseg.evaluation.metrics import (
    MetricAccumulator,
    compute_metrics,
    compute_overlap,
    compute_surface_distances,
)

__all__ = [
    "MetricAccumulator",
    "compute_metrics",
    "compute_overlap",
    "compute_surface_distances",
]
