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


#: Size (pixels) of the square cell each slice of a montage is drawn in, and of its title strip.
CELL_PX = 184
TITLE_PX = 16
CHECK_COLOR = "#d35400"  # slice titles the QC asks the reader to look at first
HEAT_RGB = (255, 217, 0)  # yellow


def _rgb(color: str) -> np.ndarray:
    return np.array([int(color[i : i + 2], 16) for i in (1, 3, 5)], dtype=np.float32)


def _font(size: int):  # PIL's own font: nothing to find on the machine
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: one size only
        return ImageFont.load_default()


def _slice_tile(
    image: np.ndarray,
    labels: np.ndarray,
    reference: np.ndarray | None,
    heat: np.ndarray | None,
    heat_max: float,
    window: tuple[float, float],
    inplane: Sequence[float],
) -> np.ndarray:
    """One slice as an RGB ``uint8`` tile: square pixels, at most :data:`CELL_PX` a side, in
    the orientation of ``imshow(slice.T, origin="lower")``; contours of each structure (the
    reference's dashed), the heat map in yellow under them."""
    from PIL import Image
    from scipy import ndimage

    h_mm, w_mm = image.shape[1] * inplane[1], image.shape[0] * inplane[0]
    k = CELL_PX / max(h_mm, w_mm)
    size = (max(1, round(w_mm * k)), max(1, round(h_mm * k)))  # PIL: (width, height)

    def shown(a: np.ndarray, resample) -> np.ndarray:
        return np.asarray(Image.fromarray(np.ascontiguousarray(a.T[::-1])).resize(size, resample))

    lo, hi = window
    grey = np.clip((image.astype(np.float32) - lo) / max(hi - lo, 1e-6), 0.0, 1.0)
    rgb = np.repeat(shown(grey, Image.Resampling.BILINEAR)[..., None], 3, axis=2) * 255.0
    if heat is not None:
        level = np.clip(shown(heat.astype(np.float32), Image.Resampling.BILINEAR) / heat_max, 0, 1)
        alpha = (0.9 * level)[..., None]
        rgb = rgb * (1.0 - alpha) + np.array(HEAT_RGB, np.float32) * alpha
    big_labels = shown(labels.astype(np.uint8), Image.Resampling.NEAREST)
    big_ref = (
        None if reference is None else shown(reference.astype(np.uint8), Image.Resampling.NEAREST)
    )
    yy, xx = np.indices(big_labels.shape)
    dashes = ((yy + xx) // 4) % 2 == 0
    for value in (2, 3, 1):  # the LV contour last: it would hide under the MYO's inner edge
        color = _rgb(COLORS[value])
        for lab, pattern in ((big_labels, None), (big_ref, dashes)):
            if lab is None:
                continue
            mask = lab == value
            if not mask.any():
                continue
            edge = mask & ~ndimage.binary_erosion(mask, iterations=2, border_value=0)
            if pattern is not None:
                edge &= pattern
            rgb[edge] = color
    return np.clip(rgb, 0, 255).astype(np.uint8)


def overlay_montage(
    image: np.ndarray,
    label: np.ndarray,
    path: str | Path | None,
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0),
    reference: np.ndarray | None = None,
    title: str = "",
    max_slices: int = 12,
    heat: np.ndarray | None = None,
    heat_max: float = 0.1,
    window: tuple[slice, slice] | None = None,
    marked: Sequence[int] = (),
) -> Path | np.ndarray:
    """Write a PNG montage: each slice with predicted contours (and reference dashed).

    Drawn with numpy and Pillow (much faster than a matplotlib figure of 12 panels): each
    slice in a square cell, its title above, at most six a row.

    Args:
        image, label: 3D arrays of equal shape.
        path: Output PNG (written atomically); ``None`` writes nothing and returns the
            montage as an RGB ``uint8`` array.
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

    Returns:
        ``path``, or the montage array when ``path`` is ``None``.
    """
    from PIL import Image, ImageDraw

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
    lo, hi = (float(v) for v in np.percentile(img, [0.5, 99.5]))
    sp = [s for i, s in enumerate(spacing[:3]) if i != axis]
    pad, head = 6, 22 if title or ref is not None else 4
    cell_h = CELL_PX + TITLE_PX
    canvas = Image.new(
        "RGB", (cols * (CELL_PX + pad) + pad, head + rows * (cell_h + pad)), (255, 255, 255)
    )
    draw = ImageDraw.Draw(canvas)
    small, large = _font(11), _font(12)
    for i, z in enumerate(zs):
        tile = _slice_tile(
            img[z],
            lab[z],
            None if ref is None else ref[z],
            None if hot is None else hot[z],
            heat_max,
            (lo, hi),
            sp,
        )
        r, c = divmod(i, cols)
        x0 = pad + c * (CELL_PX + pad)
        y0 = head + r * (cell_h + pad)
        th, tw = tile.shape[:2]
        canvas.paste(
            Image.fromarray(tile),
            (x0 + (CELL_PX - tw) // 2, y0 + TITLE_PX + (CELL_PX - th) // 2),
        )
        text, color = (f"slice {z}: check", CHECK_COLOR) if z in marked else (f"slice {z}", "#000")
        width = draw.textlength(text, font=small)
        draw.text((x0 + (CELL_PX - width) / 2, y0 + 1), text, fill=color, font=small)
    heading = title + ("  (solid: prediction, dashed: reference)" if ref is not None else "")
    if heading:
        width = draw.textlength(heading, font=large)
        draw.text(((canvas.width - width) / 2, 4), heading, fill="#000", font=large)
    if path is None:
        return np.asarray(canvas)
    path = Path(path)
    with atomic_write(path) as tmp:
        canvas.save(tmp, format="PNG")
    return path
