"""Short-axis geometry: keep the acquisition's slice axis as the stacking axis.

Vendors store short-axis stacks with very different affines (LPS, PIR, ARI, ...). Reorienting the
whole volume to a canonical world frame can move the slice axis into the image plane, turning every
2D slice into a long-axis cut. We therefore never reorient across axes: the slice axis is detected
from the voxel spacing and kept. In-plane rotations are left to augmentation; mirror images (a
stack whose row/column axes show the heart as seen from the other side) are undone from the affine
with :func:`is_mirrored_view`, because a network that learned the septum's side cannot rotate its
way out of a mirror image.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from cardioseg.errors import CardiosegError

#: Smallest in-plane field of view (mm) along either axis that can hold a heart's short-axis
#: section (LV and RV together span about 100 mm); smaller images are refused.
MIN_FIELD_OF_VIEW_MM = 40.0
#: Largest in-plane field of view (mm): a whole adult torso is about 500 mm wide, so larger values
#: come from a wrong spacing (e.g. metres written as millimetres), which would also make the
#: resampled image too large to segment.
MAX_FIELD_OF_VIEW_MM = 2000.0


def slice_axis(spacing: tuple[float, float, float], shape: tuple[int, ...] | None = None) -> int:
    """Index of the through-plane (stacking) axis.

    The axis whose spacing is clearly the largest; for near-isotropic data, the axis with the fewest
    voxels; otherwise the last axis (NIfTI convention for slice stacks).

    Example:
        >>> slice_axis((1.25, 1.25, 8.0))
        2
        >>> slice_axis((10.0, 1.4, 1.4))
        0
    """
    sp = np.asarray(spacing[:3], dtype=float)
    order = np.argsort(sp)
    if sp[order[2]] > 1.2 * sp[order[1]]:
        return int(order[2])
    if shape is not None:
        sh = np.asarray(shape[:3])
        if sh.min() * 2 <= np.sort(sh)[1]:
            return int(np.argmin(sh))
    return 2


#: Base-to-apex direction of the heart's long axis in RAS+ world coordinates: towards the
#: patient's left, anterior and inferior (unit vector).
APEX_DIRECTION_RAS = np.array([-1.0, 1.0, -1.0]) / np.sqrt(3.0)


def check_inplane_geometry(
    shape: tuple[int, ...], spacing: tuple[float, float, float], path: str | Path | None = None
) -> None:
    """Refuse a volume whose in-plane field of view cannot be a short-axis image of a heart.

    The in-plane axes are those left by :func:`slice_axis`; their field of view (voxels x
    spacing) must lie within :data:`MIN_FIELD_OF_VIEW_MM` and :data:`MAX_FIELD_OF_VIEW_MM`.

    Args:
        shape: The volume's spatial shape (3 axes; further axes, e.g. time, are ignored).
        spacing: Voxel spacing (mm) of the three spatial axes.
        path: The file or study the volume came from, named in the error.

    Raises:
        CardiosegError: The field of view is too small or too large.

    Example:
        >>> check_inplane_geometry((256, 256, 10), (1.4, 1.4, 8.0))
        >>> check_inplane_geometry((4, 4, 2), (1.5, 1.5, 8.0), "tiny.nii.gz")
        Traceback (most recent call last):
        ...
        cardioseg.errors.CardiosegError: tiny.nii.gz: in-plane field of view 6 x 6 mm is too \
small for a short-axis image of the heart (at least 40 mm)
    """
    shape3 = tuple(int(n) for n in shape[:3])
    axis = slice_axis(spacing, shape3)
    fov = [n * float(s) for i, (n, s) in enumerate(zip(shape3, spacing, strict=True)) if i != axis]
    text = " x ".join(f"{v:.3g}" for v in fov)
    if min(fov) < MIN_FIELD_OF_VIEW_MM:
        raise CardiosegError(
            path,
            f"in-plane field of view {text} mm is too small for a short-axis image of the heart "
            f"(at least {MIN_FIELD_OF_VIEW_MM:.0f} mm)",
        )
    if max(fov) > MAX_FIELD_OF_VIEW_MM:
        raise CardiosegError(
            path,
            f"in-plane field of view {text} mm is implausibly large (at most "
            f"{MAX_FIELD_OF_VIEW_MM:.0f} mm): check the voxel spacing",
        )


def unit_axes(affine: np.ndarray) -> np.ndarray | None:
    """The world directions (RAS+) of the three array axes as unit columns of a 3×3 matrix, or
    ``None`` when an axis has no length (a degenerate affine)."""
    rot = np.asarray(affine, dtype=float)[:3, :3]
    norms = np.linalg.norm(rot, axis=0)
    if np.any(norms < 1e-8):
        return None
    return rot / norms


def is_mirrored_view(affine: np.ndarray, axis: int, threshold: float = 0.3) -> bool:
    """Whether the in-plane axes show a short-axis stack mirrored against the canonical view.

    The slices are read with their two in-plane array axes in order (rows, columns). Their world
    directions ``r`` and ``c`` define the normal ``r × c``; the canonical view (ACDC arrays, and
    the M&Ms Siemens, Philips and GE and Sunnybrook GE files) has that normal pointing away from
    the apex. A normal pointing towards the apex (``(r × c) · apex > threshold``; MS-CMRSeg LGE
    files store their slices this way) means that every slice is the mirror image of what a model
    trained on the canonical view has seen. An affine that says nothing (identity, as in ACDC)
    or a plane far from short-axis (|dot| <= threshold) is left alone.

    Args:
        affine: 4x4 voxel-to-world matrix (RAS+).
        axis: The slice (stacking) axis, as from :func:`slice_axis`.
        threshold: Minimal ``|cos|`` between the normal and the long axis to decide.

    Example:
        >>> is_mirrored_view(np.eye(4), 2)
        False
        >>> is_mirrored_view(np.diag([1.0, -1.0, 1.0, 1.0]), 2)  # columns run posterior
        True
    """
    rot = unit_axes(affine)
    if rot is None:
        return False
    rows, cols = (rot[:, i] for i in range(3) if i != axis)
    return float(np.cross(rows, cols) @ APEX_DIRECTION_RAS) > threshold


def to_slices(volume: np.ndarray, axis: int) -> np.ndarray:
    """Move ``axis`` first: (X, Y, Z) with axis 2 → (Z, X, Y)."""
    return np.moveaxis(volume, axis, 0)


def from_slices(slices: np.ndarray, axis: int) -> np.ndarray:
    """Inverse of :func:`to_slices`."""
    return np.moveaxis(slices, 0, axis)


def inplane_size(
    shape: tuple[int, int], spacing: tuple[float, float], target: float
) -> tuple[int, int]:
    """Array size after resampling ``shape`` from ``spacing`` to ``target`` mm."""
    sizes = (max(1, int(round(n * s / target))) for n, s in zip(shape, spacing, strict=True))
    return tuple(sizes)  # type: ignore[return-value]


def resample_inplane(
    slices: torch.Tensor, size: tuple[int, int], mode: str = "bilinear"
) -> torch.Tensor:
    """Resample a ``(N, C, H, W)`` stack in-plane to ``size``.

    ``mode`` is ``bilinear`` (images, probabilities) or ``nearest`` (labels).
    """
    if tuple(slices.shape[-2:]) == tuple(size):
        return slices
    if mode == "nearest":
        return F.interpolate(slices, size=size, mode="nearest-exact")
    return F.interpolate(slices, size=size, mode=mode, align_corners=False)


def channel_argmax(scores: torch.Tensor) -> torch.Tensor:
    """Index of the largest value along axis 1 (the classes of ``(N, C, H, W)`` scores).

    The same as ``scores.argmax(1)`` (ties go to the first class), but much faster on CPUs
    where torch's argmax over a non-innermost axis takes a slow path (the 2-core AMD EPYC
    development machine of 2026-12-01).

    Example:
        >>> channel_argmax(torch.tensor([[[[0.2]], [[0.7]], [[0.7]]]])).tolist()
        [[[1]]]
    """
    return scores.max(1).indices


def resample_labels(labels: np.ndarray, size: tuple[int, int], num_classes: int = 4) -> np.ndarray:
    """Resample a ``(N, H, W)`` label stack via one-hot interpolation (smoother than nearest)."""
    t = torch.from_numpy(labels.astype(np.int64))
    onehot = F.one_hot(t, num_classes).permute(0, 3, 1, 2).float()
    return channel_argmax(resample_inplane(onehot, size)).numpy().astype(np.uint8)


def pad_to_multiple(
    x: torch.Tensor, multiple: int, value: float = 0.0
) -> tuple[torch.Tensor, tuple[int, int, int, int]]:
    """Pad the last two dims symmetrically up to a multiple; return the padding (l, r, t, b)."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    pad = (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2)
    if ph or pw:
        x = F.pad(x, pad, value=value)
    return x, pad


def unpad(x: torch.Tensor, pad: tuple[int, int, int, int]) -> torch.Tensor:
    """Undo :func:`pad_to_multiple`."""
    left, right, top, bottom = pad
    h, w = x.shape[-2:]
    return x[..., top : h - bottom, left : w - right]


def crop_or_pad(
    image: np.ndarray, center: tuple[float, float], size: tuple[int, int], value: float = 0.0
) -> np.ndarray:
    """Extract a ``size`` window of the last two dims centred at ``center`` (pads outside)."""
    h, w = image.shape[-2:]
    top = int(round(center[0] - size[0] / 2))
    left = int(round(center[1] - size[1] / 2))
    out = np.full(image.shape[:-2] + tuple(size), value, dtype=image.dtype)
    sy0, sx0 = max(top, 0), max(left, 0)
    sy1, sx1 = min(top + size[0], h), min(left + size[1], w)
    if sy1 > sy0 and sx1 > sx0:
        out[..., sy0 - top : sy1 - top, sx0 - left : sx1 - left] = image[..., sy0:sy1, sx0:sx1]
    return out
