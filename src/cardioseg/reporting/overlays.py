"""Overlay montages of LV/MYO/RV contours on short-axis slices."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from cardioseg.io.nifti import atomic_write
from cardioseg.preprocessing.geometry import slice_axis as _slice_axis

COLORS = {1: "#e4572e", 2: "#29bf12", 3: "#2e86de"}  # LV red, MYO green, RV blue


def foreground_window(
    labels: Sequence[np.ndarray],
    spacing: tuple[float, float, float],
    margin_mm: float = 25.0,
    min_size_mm: float = 90.0,
    axis: int | None = None,
) -> tuple[slice, slice] | None:
    """In-plane window around the labelled structures of one or more volumes.

    The window is square in millimetres: the larger in-plane extent of the foreground (over
    all slices of all volumes) plus ``margin_mm`` on each side, at least ``min_size_mm`` wide,
    clipped to the image. Use it to show the heart rather than the whole field of view.

    Args:
        labels: 3D label volumes of the same shape (e.g. ED and ES).
        spacing: Voxel spacing; the slice axis is the one with the largest spacing.
        margin_mm: Margin around the foreground.
        min_size_mm: Smallest window width.
        axis: The slice axis, if known (default: the one with the largest spacing).

    Returns:
        ``(slice, slice)`` over the two in-plane axes (in array order, the slice axis left
        out), or ``None`` when no volume has any foreground.

    Example:
        >>> lab = np.zeros((100, 120, 4), np.uint8)
        >>> lab[40:60, 50:70, 1:3] = 1
        >>> foreground_window([lab], (1.0, 1.0, 8.0))
        (slice(5, 95, None), slice(15, 105, None))
    """
    if not labels:
        return None
    shape = labels[0].shape
    axis = _slice_axis(spacing, shape) if axis is None else axis
    fg = np.zeros([n for i, n in enumerate(shape) if i != axis], bool)
    for lab in labels:
        fg |= (np.moveaxis(np.asarray(lab), axis, 0) > 0).any(axis=0)
    if not fg.any():
        return None
    sp = [float(s) for i, s in enumerate(spacing[:3]) if i != axis]
    bounds = []
    for d in range(2):
        idx = np.flatnonzero(fg.any(axis=1 - d))
        bounds.append((idx[0], idx[-1] + 1))
    half_mm = max(
        max((hi - lo) * sp[d] / 2.0 for d, (lo, hi) in enumerate(bounds)) + margin_mm,
        min_size_mm / 2.0,
    )
    window = []
    for d, (lo, hi) in enumerate(bounds):
        centre, half = (lo + hi) / 2.0, half_mm / sp[d]
        start = max(0, int(np.floor(centre - half)))
        window.append(slice(start, min(fg.shape[d], int(np.ceil(centre + half)))))
    return window[0], window[1]


def montage_slices(n_slices: int, max_slices: int, marked: Sequence[int] = ()) -> list[int]:
    """The slices a montage shows: up to ``max_slices`` evenly spaced, and every marked one.

    Example:
        >>> montage_slices(16, 12)
        [0, 1, 2, 4, 5, 6, 8, 9, 10, 12, 13, 15]
        >>> montage_slices(16, 12, marked=[3, 14])
        [0, 1, 2, 3, 4, 5, 6, 8, 9, 10, 12, 13, 14, 15]
    """
    even = np.linspace(0, n_slices - 1, min(max_slices, n_slices)).astype(int)
    return sorted({int(z) for z in even} | {int(z) for z in marked if 0 <= z < n_slices})


def overlay_montage(
    image: np.ndarray,
    label: np.ndarray,
    path: str | Path,
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0),
    reference: np.ndarray | None = None,
    title: str = "",
    max_slices: int = 12,
    heat: np.ndarray | None = None,
    heat_max: float = 0.1,
    window: tuple[slice, slice] | None = None,
    marked: Sequence[int] = (),
) -> Path:
    """Write a PNG montage: each slice with predicted contours (and reference dashed).

    Args:
        image, label: 3D arrays of equal shape.
        path: Output PNG (written atomically).
        spacing: Voxel spacing (the slice axis is the largest spacing).
        reference: Optional reference labels drawn as dashed contours.
        title: Figure title.
        max_slices: Show this many slices, evenly chosen, and every marked one.
        heat: Optional map of the same shape (e.g. the disagreement of the test-time
            predictions) shown in yellow, transparent at 0 and most opaque from ``heat_max``.
        heat_max: Value of full heat colour.
        window: Show only this in-plane region (two slices over the in-plane axes, slice
            axis left out), e.g. from :func:`foreground_window`; default: the whole image.
        marked: Slices to point out (e.g. where the QC asks the reader to look first): their
            title says "check" and is drawn in orange.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    axis = _slice_axis(spacing, image.shape)
    img = np.moveaxis(image, axis, 0)
    lab = np.moveaxis(label, axis, 0)
    ref = np.moveaxis(reference, axis, 0) if reference is not None else None
    hot = np.moveaxis(np.asarray(heat, np.float32), axis, 0) if heat is not None else None
    if window is not None:
        img, lab = img[:, window[0], window[1]], lab[:, window[0], window[1]]
        ref = ref[:, window[0], window[1]] if ref is not None else None
        hot = hot[:, window[0], window[1]] if hot is not None else None
    zs = montage_slices(img.shape[0], max_slices, marked)
    cols = min(6, len(zs))
    rows = int(np.ceil(len(zs) / cols))
    # constrained layout keeps each slice's title clear of the row above (tight_layout let
    # the images of one row cover the titles of the next)
    fig, axes = plt.subplots(
        rows, cols, figsize=(2.4 * cols, 2.5 * rows + 0.4), squeeze=False, layout="constrained"
    )
    lo, hi = np.percentile(img, [0.5, 99.5])
    sp = [s for i, s in enumerate(spacing[:3]) if i != axis]
    for ax in axes.flat:
        ax.axis("off")
    for ax, z in zip(axes.flat, zs, strict=False):
        ax.imshow(img[z].T, cmap="gray", vmin=lo, vmax=hi, origin="lower", aspect=sp[1] / sp[0])
        if hot is not None:  # yellow, more opaque where higher (apart from the contours' colours)
            level = np.clip(hot[z].T / heat_max, 0.0, 1.0)
            rgba = np.zeros((*level.shape, 4), np.float32)
            rgba[..., :3] = (1.0, 0.85, 0.0)
            rgba[..., 3] = 0.9 * level
            ax.imshow(rgba, origin="lower", aspect=sp[1] / sp[0])
        for value in (2, 3, 1):  # the LV contour last: it would hide under the MYO's inner edge
            color = COLORS[value]
            if (lab[z] == value).any():
                ax.contour(
                    (lab[z] == value).T.astype(float), levels=[0.5], colors=color, linewidths=1.0
                )
            if ref is not None and (ref[z] == value).any():
                ax.contour(
                    (ref[z] == value).T.astype(float),
                    levels=[0.5],
                    colors=color,
                    linewidths=0.8,
                    linestyles="dashed",
                )
        if z in marked:
            ax.set_title(f"slice {z}: check", fontsize=8, color="#d35400", weight="bold")
        else:
            ax.set_title(f"slice {z}", fontsize=8)
    fig.suptitle(
        title + ("  (solid: prediction, dashed: reference)" if ref is not None else ""), fontsize=9
    )
    path = Path(path)
    with atomic_write(path) as tmp:
        fig.savefig(tmp, dpi=80, format="png")
    plt.close(fig)
    return path
