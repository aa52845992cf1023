"""Vendor-robust preprocessing with an exact inverse to native geometry."""

from cardioseg.preprocessing.geometry import (
    check_inplane_geometry,
    from_slices,
    resample_inplane,
    slice_axis,
    to_slices,
)
from cardioseg.preprocessing.intensity import normalize_intensity
from cardioseg.preprocessing.pipeline import Preprocessor, PreprocessState

__all__ = [
    "PreprocessState",
    "Preprocessor",
    "check_inplane_geometry",
    "from_slices",
    "normalize_intensity",
    "resample_inplane",
    "slice_axis",
    "to_slices",
]
