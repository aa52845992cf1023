"""Inference: the :class:`Segmenter` API used by the CLI and the web app."""

from cardioseg.inference.postprocess import (
    fill_holes,
    keep_heart,
    keep_largest_components,
    postprocess,
)
from cardioseg.inference.segmenter import Segmentation, Segmenter

__all__ = [
    "Segmentation",
    "Segmenter",
    "fill_holes",
    "keep_heart",
    "keep_largest_components",
    "postprocess",
]
