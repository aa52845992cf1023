"""The preprocessing pipeline and its exact inverse."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from cardioseg.preprocessing.geometry import (
    channel_argmax,
    check_inplane_geometry,
    from_slices,
    inplane_size,
    is_mirrored_view,
    pad_to_multiple,
    resample_inplane,
    slice_axis,
    to_slices,
    unpad,
)
from cardioseg.preprocessing.intensity import normalize_intensity


@dataclass
class PreprocessState:
    """Everything needed to map network outputs back to the native voxel grid."""

    axis: int
    native_shape: tuple[int, int, int]
    inplane_native: tuple[int, int]
    inplane_resampled: tuple[int, int]
    pad: tuple[int, int, int, int]
    mirrored: bool = False


@dataclass
class Preprocessor:
    """Volume → stack of normalised 2D slices at a fixed in-plane spacing, and back.

    Args:
        target_spacing: In-plane spacing in mm of the network's input.
        pad_multiple: Pad height/width to a multiple of this (network stride).
        histogram_reference: Optional intensity reference (``{"levels", "values"}``, as in the
            checkpoint fingerprint); when given, normalised volumes are histogram-matched to it.
        canonical_handedness: Flip the columns of stacks whose affine shows them mirrored
            against the canonical short-axis view (:func:`~cardioseg.preprocessing.geometry.
            is_mirrored_view`); the inverse flips back. Needs the affine in :meth:`forward`.

    Example:
        >>> pre = Preprocessor(1.25)
        >>> x, state = pre.forward(np.random.rand(100, 90, 8), (1.5, 1.5, 8.0))
        >>> x.shape[0], x.shape[1]
        (8, 1)
        >>> probs = torch.rand(8, 4, *x.shape[-2:])
        >>> pre.inverse_labels(probs, state).shape
        (100, 90, 8)
    """

    target_spacing: float = 1.25
    pad_multiple: int = 16
    lower_percentile: float = 0.5
    upper_percentile: float = 99.5
    histogram_reference: dict[str, Any] | None = None
    canonical_handedness: bool = True

    def __post_init__(self) -> None:
        if self.target_spacing <= 0:
            raise ValueError(f"target_spacing must be > 0, got {self.target_spacing}")
        if self.pad_multiple < 1:
            raise ValueError(f"pad_multiple must be >= 1, got {self.pad_multiple}")

    def forward(
        self,
        volume: np.ndarray,
        spacing: tuple[float, float, float],
        affine: np.ndarray | None = None,
    ) -> tuple[torch.Tensor, PreprocessState]:
        """Return a ``(Z, 1, H, W)`` float tensor and the state for :meth:`inverse`.

        ``affine`` (voxel-to-world, RAS+) lets mirrored stacks be flipped to the canonical view;
        without it the slices keep their stored orientation.

        Raises:
            CardiosegError: The in-plane field of view cannot hold a heart, or is implausibly
                large (:func:`~cardioseg.preprocessing.geometry.check_inplane_geometry`).
        """
        if volume.ndim != 3:
            raise ValueError(f"expected a 3D volume, got shape {volume.shape}")
        check_inplane_geometry(volume.shape, spacing)
        axis = slice_axis(spacing, volume.shape)
        norm = normalize_intensity(volume, self.lower_percentile, self.upper_percentile)
        if self.histogram_reference is not None:
            from cardioseg.adaptation.harmonization import HistogramReference, match_histogram

            norm = match_histogram(norm, HistogramReference.from_dict(self.histogram_reference))
        slices = to_slices(norm, axis)
        mirrored = bool(
            self.canonical_handedness and affine is not None and is_mirrored_view(affine, axis)
        )
        if mirrored:
            slices = slices[..., ::-1]
        inplane_sp = tuple(s for i, s in enumerate(spacing[:3]) if i != axis)
        native = tuple(slices.shape[1:])
        size = inplane_size(native, inplane_sp, self.target_spacing)  # type: ignore[arg-type]
        x = torch.from_numpy(np.ascontiguousarray(slices))[:, None]
        x = resample_inplane(x, size)
        x, pad = pad_to_multiple(x, self.pad_multiple, value=float(x.min()))
        state = PreprocessState(axis, tuple(volume.shape), native, size, pad, mirrored)  # type: ignore[arg-type]
        return x.contiguous(), state

    def inverse_probabilities(self, probs: torch.Tensor, state: PreprocessState) -> torch.Tensor:
        """Map ``(Z, C, H, W)`` probabilities back to ``(Z, C, *native in-plane)``."""
        probs = unpad(probs, state.pad)
        if state.mirrored:
            probs = probs.flip(-1)
        return resample_inplane(probs, state.inplane_native)

    def inverse_labels(self, probs: torch.Tensor, state: PreprocessState) -> np.ndarray:
        """Map ``(Z, C, H, W)`` probabilities/logits to a native-geometry label volume."""
        return self.native_labels(self.inverse_probabilities(probs.float(), state), state)

    @staticmethod
    def native_labels(native: torch.Tensor, state: PreprocessState) -> np.ndarray:
        """The label volume of ``(Z, C, *native in-plane)`` probabilities already mapped back
        (:meth:`inverse_probabilities`)."""
        labels = channel_argmax(native).numpy().astype(np.uint8)
        return from_slices(labels, state.axis)
