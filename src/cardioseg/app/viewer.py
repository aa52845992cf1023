"""Slice viewer support: display volumes written once per study, PNGs rendered per request.

After an analysis the worker writes ``viewer/`` with the image as ``uint8`` and the labels,
both already oriented for display as ``(frame, slice, rows, columns)``, plus ``meta.json``, and
the same two volumes as 4D NIfTI (``image.nii.gz``, ``labels.nii.gz``) for the browser's
interactive WebGL viewer (Niivue): voxel ``(i, j, s, t)`` is column ``i`` counted from the left,
row ``j`` counted from the bottom, slice ``s``, frame ``t``, with a diagonal affine holding the
voxel size, so that Niivue's axial view is the acquired short-axis plane shown exactly as the PNG
slices and its two other views are long-axis reconstructions.
The orientation follows the report's overlay montage: the slice (stacking) axis is the one
:func:`~cardioseg.preprocessing.slice_axis` finds, and a slice ``s`` is shown as
``s.T`` with the origin at the bottom. Each rendered PNG is cached on disk, so the memory used
per request is one slice.
"""

from __future__ import annotations

import io
import json
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from cardioseg.io.nifti import atomic_folder, atomic_write

#: Label colours (RGB) as in the report montage: LV red, MYO green, RV blue.
COLORS: dict[int, tuple[int, int, int]] = {1: (228, 87, 46), 2: (41, 191, 18), 3: (46, 134, 222)}
LAYERS = ("image", "labels", "overlay")
#: 4D NIfTI files of the interactive viewer, by name.
VOLUMES = {"image": "image.nii.gz", "labels": "labels.nii.gz"}
#: Long side in pixels of the rendered slices (small images are enlarged, never reduced).
MIN_LONG_SIDE = 384


def _lut() -> np.ndarray:
    lut = np.zeros((256, 4), np.uint8)
    for value, rgb in COLORS.items():
        lut[value, :3] = rgb
        lut[value, 3] = 255
    return lut


def _display_stack(vol: np.ndarray, axis: int) -> np.ndarray:
    """``(X, Y, Z, T)`` → ``(T, slices, rows, cols)`` with the slice axis chosen as ``axis``."""
    v = np.moveaxis(vol, axis, 2)  # (a, b, slices, T)
    v = np.transpose(v, (3, 2, 1, 0))  # (T, slices, b, a): shown as s.T
    return np.ascontiguousarray(v[:, :, ::-1, :])  # origin at the bottom


def build_viewer_cache(
    target: Path,
    image: np.ndarray,
    labels: np.ndarray,
    spacing: tuple[float, float, float],
    ed_frame: int,
    es_frame: int,
) -> Path:
    """Write the display volumes of one study into ``target`` (atomically, as a folder).

    Args:
        target: The ``viewer`` folder (replaced if it exists).
        image: ``(X, Y, Z, T)`` image.
        labels: ``(X, Y, Z, T)`` canonical labels, same shape.
        spacing: Voxel size in mm of the three spatial axes.
        ed_frame: End-diastolic frame.
        es_frame: End-systolic frame.

    Returns:
        ``target``.
    """
    from cardioseg.preprocessing import slice_axis

    if image.shape != labels.shape or image.ndim != 4:
        raise ValueError(f"image {image.shape} and labels {labels.shape} must be equal 4D shapes")
    axis = slice_axis(tuple(spacing), image.shape[:3])
    in_plane = [float(s) for i, s in enumerate(spacing[:3]) if i != axis]
    img = _display_stack(np.asarray(image, np.float32), axis)
    lab = _display_stack(np.asarray(labels, np.uint8), axis)
    sample = img[:, :, ::2, ::2] if img.size > 4_000_000 else img
    lo, hi = (float(v) for v in np.percentile(sample, [0.5, 99.5]))
    if hi <= lo:
        hi = lo + 1.0
    img8 = np.clip((img - lo) * (255.0 / (hi - lo)), 0, 255).round().astype(np.uint8)
    n_frames, n_slices, rows, cols = img8.shape
    width_mm, height_mm = cols * in_plane[0], rows * in_plane[1]
    long_px = max(MIN_LONG_SIDE, rows, cols)
    scale = long_px / max(width_mm, height_mm)
    meta = {
        "n_frames": int(n_frames),
        "n_slices": int(n_slices),
        "rows": int(rows),
        "cols": int(cols),
        "width": max(1, round(width_mm * scale)),
        "height": max(1, round(height_mm * scale)),
        "slice_axis": int(axis),
        "pixel_spacing_mm": in_plane,
        "ed_frame": int(ed_frame),
        "es_frame": int(es_frame),
        "labels_per_frame": [bool(lab[t].any()) for t in range(n_frames)],
        # new with every analysis: the browser asks for the slices and volumes with it, so a
        # re-analysis (e.g. with exclusions) is never shown from its cache of the previous one
        "version": uuid.uuid4().hex[:12],
        "slice_spacing_mm": float(spacing[axis]),
        "volumes": list(VOLUMES),
        "heart_box": _heart_box(lab, in_plane, float(spacing[axis])),
    }
    with atomic_folder(target) as tmp:
        np.save(tmp / "image.npy", img8)
        np.save(tmp / "labels.npy", lab)
        zooms = (in_plane[0], in_plane[1], float(spacing[axis]))
        _save_display_nifti(tmp / VOLUMES["image"], img8, zooms)
        _save_display_nifti(tmp / VOLUMES["labels"], lab, zooms)
        (tmp / "png").mkdir()
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
    return target


def _heart_box(
    labels: np.ndarray, in_plane: list[float], slice_spacing: float
) -> list[float] | None:
    """Where the slice view zooms: ``[left, top, right, bottom]`` as fractions of the displayed
    slice, the report montage's square window around every segmented voxel of every frame;
    ``None`` when nothing was segmented."""
    from cardioseg.reporting.overlays import foreground_window

    rows, cols = labels.shape[2:]
    # (slices, rows, cols): rows run along the second in-plane axis, columns along the first
    window = foreground_window(
        [labels.any(axis=0)], (slice_spacing, in_plane[1], in_plane[0]), axis=0
    )
    if window is None:
        return None
    r, c = window
    return [c.start / cols, r.start / rows, c.stop / cols, r.stop / rows]


def _save_display_nifti(path: Path, stack: np.ndarray, zooms: tuple[float, ...]) -> None:
    """Save a ``(frame, slice, rows, cols)`` display stack as ``(cols, rows↑, slice, frame)``."""
    import nibabel as nib

    data = np.ascontiguousarray(np.transpose(stack[:, :, ::-1, :], (3, 2, 1, 0)))
    affine = np.diag([*zooms, 1.0])
    img = nib.Nifti1Image(data, affine)
    img.header.set_xyzt_units("mm", "unknown")
    img.header.set_qform(affine, code=1)
    img.header.set_sform(affine, code=1)
    nib.save(img, str(path))


def display_volume(folder: Path, name: str) -> Path:
    """Path of one of the viewer's 4D NIfTI files (see :data:`VOLUMES`).

    Raises:
        ValueError: Unknown name.
        FileNotFoundError: Not written for this study (an analysis from an older version).
    """
    if name not in VOLUMES:
        raise ValueError(f"unknown volume '{name}'; use {' or '.join(VOLUMES)}")
    path = folder / VOLUMES[name]
    if not path.is_file():
        raise FileNotFoundError(name)
    return path


def viewer_meta(folder: Path) -> dict[str, Any] | None:
    """``meta.json`` of a viewer folder, ``None`` when absent."""
    try:
        return json.loads((folder / "meta.json").read_text())
    except (OSError, ValueError):
        return None


def _png(arr: np.ndarray, size: tuple[int, int], nearest: bool) -> bytes:
    from PIL import Image

    mode = "RGBA" if arr.ndim == 3 and arr.shape[2] == 4 else ("RGB" if arr.ndim == 3 else "L")
    im = Image.fromarray(arr, mode=mode)
    if im.size != size:
        im = im.resize(size, Image.Resampling.NEAREST if nearest else Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    im.save(buf, format="PNG", optimize=False, compress_level=3)
    return buf.getvalue()


def render_slice(
    folder: Path, frame: int, index: int, layer: str = "overlay", alpha: float = 0.45
) -> bytes:
    """PNG of one slice of one frame, from the cache when already rendered.

    Args:
        folder: The study's ``viewer`` folder.
        frame: Cardiac frame (0-based).
        index: Slice (0-based).
        layer: ``image`` (grey), ``labels`` (coloured labels on transparent background) or
            ``overlay`` (labels blended onto the image with ``alpha``).
        alpha: Opacity of the labels in ``overlay``.

    Raises:
        FileNotFoundError: No viewer data.
        IndexError: Frame or slice out of range.
        ValueError: Unknown layer or alpha outside [0, 1].
    """
    meta = viewer_meta(folder)
    if meta is None:
        raise FileNotFoundError("no viewer data")
    if layer not in LAYERS:
        raise ValueError(f"layer must be one of {', '.join(LAYERS)}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError("alpha must lie in [0, 1]")
    if not 0 <= frame < meta["n_frames"]:
        raise IndexError(f"frame {frame} out of range 0..{meta['n_frames'] - 1}")
    if not 0 <= index < meta["n_slices"]:
        raise IndexError(f"slice {index} out of range 0..{meta['n_slices'] - 1}")
    alpha = round(alpha, 2)
    tag = f"{layer}_{frame}_{index}" + (f"_{round(alpha * 100)}" if layer == "overlay" else "")
    cached = folder / "png" / f"{tag}.png"
    if cached.exists():
        return cached.read_bytes()
    size = (int(meta["width"]), int(meta["height"]))
    img = np.load(folder / "image.npy", mmap_mode="r")[frame, index]
    if layer == "image":
        data = _png(np.asarray(img), size, nearest=False)
    else:
        lab = np.asarray(np.load(folder / "labels.npy", mmap_mode="r")[frame, index])
        rgba = _lut()[lab]
        if layer == "labels":
            data = _png(rgba, size, nearest=True)
        else:
            from PIL import Image

            base = (
                Image.fromarray(np.asarray(img), mode="L")
                .resize(size, Image.Resampling.BILINEAR)
                .convert("RGB")
            )
            over = Image.fromarray(rgba, mode="RGBA").resize(size, Image.Resampling.NEAREST)
            base_arr = np.asarray(base, np.float32)
            over_arr = np.asarray(over, np.float32)
            a = (over_arr[..., 3:4] / 255.0) * alpha
            out = base_arr * (1 - a) + over_arr[..., :3] * a
            data = _png(out.round().astype(np.uint8), size, nearest=True)
    try:
        with atomic_write(cached) as tmp:
            tmp.write_bytes(data)
    except OSError:
        pass  # a full disk or a deleted study: serve without caching
    return data
