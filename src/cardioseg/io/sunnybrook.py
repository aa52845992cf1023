"""Expert LV contours of the Sunnybrook Cardiac Data on the grid of the DICOM cine loader.

A Sunnybrook contour folder holds text files ``IM-0001-NNNN-{icontour,ocontour}-manual.txt``
(endocardium / epicardium; ``p1``/``p2`` papillary files are ignored) where ``NNNN`` is the
InstanceNumber of the annotated image. Each line is ``x y`` in pixel units with ``x`` the column
and ``y`` the row of the DICOM image (origin at the centre of the first pixel); contours run along
pixel edges (``.5`` coordinates). This was checked on SC-HF-I-1: with ``x`` = column the blood
pool inside the endocardial contour is about 2.5x brighter than the myocardial ring in the bSSFP
cine, clearly more than with the axes swapped.

Masks are returned on the :mod:`cardioseg.io.dicom` grid, ``mask[i, j]`` with ``i`` the column
and ``j`` the row, so that ``mask`` matches ``array[:, :, k, t]`` of :func:`load_cine`. A pixel
belongs to a contour when its centre lies inside the polygon.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from cardioseg.errors import CardiosegError

CONTOUR_RE = re.compile(r"IM-(\d+)-(\d+)-(icontour|ocontour)-manual\.txt$", re.IGNORECASE)


def _instance_map(source: Any) -> dict[int, tuple[int, int]]:
    if isinstance(source, dict):
        return {int(n): (int(k), int(t)) for n, (k, t) in source.items()}
    numbers = getattr(source, "instance_numbers", None)
    if numbers is None:
        raise TypeError("expected a CineMeta or a {InstanceNumber: (k, t)} mapping")
    out: dict[int, tuple[int, int]] = {}
    for k, row in enumerate(numbers):
        for t, n in enumerate(row):
            if n is None:
                continue
            if int(n) in out:
                raise CardiosegError(
                    None,
                    f"InstanceNumber {n} is not unique in this cine (merged series?); "
                    "pass an explicit {InstanceNumber: (slice, phase)} mapping",
                )
            out[int(n)] = (k, t)
    return out


def read_contour(path: str | Path) -> np.ndarray:
    """Read one Sunnybrook contour file as an ``(N, 2)`` array of ``(x=column, y=row)``.

    Raises:
        CardiosegError: Unreadable file or fewer than 3 points.
    """
    path = Path(path)
    try:
        pts = np.loadtxt(path, dtype=float, ndmin=2)
    except (OSError, ValueError) as exc:
        raise CardiosegError(path, f"cannot parse contour ({type(exc).__name__})") from None
    if pts.ndim != 2 or pts.shape[1] != 2 or len(pts) < 3 or not np.all(np.isfinite(pts)):
        raise CardiosegError(path, "a contour needs at least 3 finite 'x y' points")
    return pts


def rasterize_contour(points: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Pixels whose centre lies inside a polygon, on the loader grid.

    Args:
        points: ``(N, 2)`` array of ``(x=column, y=row)`` vertices.
        shape: ``(X, Y)`` = (columns, rows).

    Returns:
        Boolean mask of shape ``(X, Y)`` indexed ``[column, row]``.
    """
    from matplotlib.path import Path as PolygonPath

    n_x, n_y = shape
    ii, jj = np.meshgrid(np.arange(n_x), np.arange(n_y), indexing="ij")
    centres = np.column_stack([ii.ravel(), jj.ravel()]).astype(float)
    inside = PolygonPath(np.asarray(points, dtype=float)).contains_points(centres)
    return inside.reshape(n_x, n_y)


def load_sunnybrook_contours(
    contour_dir: str | Path,
    cine_meta_or_instance_map: Any,
    shape: tuple[int, int] | None = None,
    n_slices: int | None = None,
) -> dict[str, Any]:
    """Rasterise the expert endocardial and epicardial contours of one Sunnybrook case.

    Args:
        contour_dir: Case folder (e.g. ``contourfiles/SC-HF-I-1``), searched recursively for
            ``*-icontour-manual.txt`` and ``*-ocontour-manual.txt``.
        cine_meta_or_instance_map: The :class:`~cardioseg.io.dicom.CineMeta` of the loaded cine
            (its ``instance_numbers[k][t]``) or an explicit ``{InstanceNumber: (k, t)}`` mapping.
        shape: ``(X, Y)`` grid (columns, rows); taken from the CineMeta when omitted.
        n_slices: Number of slices for the per-phase label volumes; from the CineMeta when
            omitted (else the highest annotated slice + 1).

    Returns:
        A dict with

        - ``"endocardium"``: ``{(k, t): bool mask (X, Y)}`` (LV blood pool incl. papillary
          muscles, as drawn),
        - ``"epicardium"``: ``{(k, t): bool mask (X, Y)}``,
        - ``"myocardium"``: ``{(k, t): epicardium & ~endocardium}`` where both exist,
        - ``"phases"``: sorted phases with endocardial contours,
        - ``"epicardium_phases"``: sorted phases with epicardial contours,
        - ``"slices"``: ``{t: sorted annotated slices}`` (endocardium),
        - ``"labels"``: ``{t: uint8 (X, Y, Z)}`` with 1 = LV blood pool, 2 = myocardium where an
          epicardial contour exists, 0 elsewhere (also on slices without contours),
        - ``"instances"``: ``{(k, t): InstanceNumber}``,
        - ``"shape"``: ``(X, Y)``.

    Raises:
        CardiosegError: Missing folder, no contour files, unparsable files, or an InstanceNumber
            that is not part of the cine.
    """
    root = Path(contour_dir)
    if not root.is_dir():
        raise CardiosegError(root, "contour folder not found")
    inst_map = _instance_map(cine_meta_or_instance_map)
    if shape is None:
        shape = getattr(cine_meta_or_instance_map, "image_shape", None)
        if not shape or not all(shape):
            raise CardiosegError(root, "grid shape unknown: pass shape=(columns, rows)")
    shape = (int(shape[0]), int(shape[1]))
    if n_slices is None:
        n_slices = getattr(cine_meta_or_instance_map, "n_slices", None)

    found: dict[str, dict[tuple[int, int], np.ndarray]] = {"icontour": {}, "ocontour": {}}
    instances: dict[tuple[int, int], int] = {}
    files = sorted(p for p in root.rglob("*-manual.txt") if CONTOUR_RE.search(p.name))
    if not files:
        raise CardiosegError(root, "no Sunnybrook contour files (*-icontour-manual.txt)")
    for path in files:
        m = CONTOUR_RE.search(path.name)
        assert m is not None
        number, kind = int(m.group(2)), m.group(3).lower()
        if number not in inst_map:
            raise CardiosegError(path, f"image InstanceNumber {number} is not part of the cine")
        key = inst_map[number]
        mask = rasterize_contour(read_contour(path), shape)
        if not mask.any():
            raise CardiosegError(path, "contour covers no pixel centre of the image grid")
        found[kind][key] = mask
        instances[key] = number

    endo, epi = found["icontour"], found["ocontour"]
    myo = {key: epi[key] & ~endo[key] for key in epi if key in endo}
    phases = sorted({t for _, t in endo})
    epi_phases = sorted({t for _, t in epi})
    depth = int(n_slices) if n_slices else 1 + max(k for k, _ in instances)
    labels: dict[int, np.ndarray] = {}
    for t in sorted(set(phases) | set(epi_phases)):
        lab = np.zeros((*shape, depth), np.uint8)
        for (k, tt), mask in epi.items():
            if tt == t:
                lab[..., k][mask] = 2
        for (k, tt), mask in endo.items():
            if tt == t:
                lab[..., k][mask] = 1
        labels[t] = lab
    return {
        "endocardium": endo,
        "epicardium": epi,
        "myocardium": myo,
        "phases": phases,
        "epicardium_phases": epi_phases,
        "slices": {t: sorted(k for k, tt in endo if tt == t) for t in phases},
        "labels": labels,
        "instances": instances,
        "shape": shape,
    }


def endocardial_volumes_ml(
    contours: dict[str, Any], spacing: tuple[float, float, float]
) -> dict[int, float]:
    """LV blood-pool volume per annotated phase (sum of endocardial areas x slice spacing).

    Args:
        contours: Output of :func:`load_sunnybrook_contours`.
        spacing: Voxel size ``(column spacing, row spacing, slice spacing)`` in mm, as in
            ``ImageProperties.spacing`` of the loader.

    Returns:
        ``{phase: volume in ml}``. Only annotated slices contribute.
    """
    voxel_ml = float(np.prod(spacing)) / 1000.0
    out: dict[int, float] = {}
    for (_, t), mask in contours["endocardium"].items():
        out[t] = out.get(t, 0.0) + float(mask.sum()) * voxel_ml
    return dict(sorted(out.items()))
