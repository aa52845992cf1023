"""Shape features of a short-axis study (research use only, not a diagnosis).

Features combine the clinical indices of :func:`cardioseg.clinical.indices.compute_indices`
(volumes, ejection fractions, LV mass and their BSA-indexed versions) with ratios and
myocardial wall thickness measured on the short-axis slices. They feed the research-use
group classifier of :mod:`cardioseg.clinical.diagnosis`.

Wall thickness is measured per short-axis slice that holds both LV blood pool and myocardium
(apical caps without a cavity are cut tangentially and would overstate it): the Euclidean
distance transform (EDT, in mm, in-plane spacing) of the myocardium mask is sampled on the
mask's skeleton (its centre line), where ``2 × EDT`` is the local wall thickness. The EDT measures
to the centre of the nearest non-myocardium pixel, so ``2 × EDT`` overstates the thickness by
0 to 1 pixel (1 for odd, 0 for even pixel widths); half a pixel is subtracted, leaving an
error of at most ±0.5 pixel on straight walls.

Canonical labels: 1 LV blood pool, 2 myocardium, 3 RV blood pool.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import ndimage as ndi
from skimage.morphology import skeletonize

from cardioseg.clinical.indices import compute_indices
from cardioseg.preprocessing import slice_axis

LV, MYO, RV = 1, 2, 3

NAN = float("nan")

#: Names of the features :func:`shape_features` adds to the clinical indices.
THICKNESS_FEATURES = (
    "myo_thickness_max_ed_mm",
    "myo_thickness_mean_ed_mm",
    "myo_thickness_cv_ed",
    "myo_thickness_max_es_mm",
    "myo_thickness_mean_es_mm",
    "myo_thickening_pct",
)

#: Units of the features that are not clinical indices.
FEATURE_UNITS: dict[str, str] = {
    "rv_lv_edv_ratio": "",
    "rv_lv_esv_ratio": "",
    "lv_mass_edv_ratio_g_ml": "g/mL",
    "myo_thickness_max_ed_mm": "mm",
    "myo_thickness_mean_ed_mm": "mm",
    "myo_thickness_cv_ed": "",
    "myo_thickness_max_es_mm": "mm",
    "myo_thickness_mean_es_mm": "mm",
    "myo_thickening_pct": "%",
}


def _positive_or_none(value: float | str | None) -> float | None:
    """``value`` as a float when it is a finite positive number, else ``None``."""
    if value is None:
        return None
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) and v > 0 else None


def _ratio(num: float, den: float) -> float:
    if not (math.isfinite(num) and math.isfinite(den)) or den <= 0:
        return NAN
    return num / den


def thickness_points(
    myo: np.ndarray, inplane_spacing: Sequence[float] = (1.0, 1.0)
) -> tuple[np.ndarray, np.ndarray]:
    """Local wall thickness (mm) along the centre line of one 2D myocardium mask, with where.

    Args:
        myo: Boolean 2D mask of the myocardium on one short-axis slice.
        inplane_spacing: Pixel size in mm of the two axes of ``myo``.

    Returns:
        ``(coords, values)``: the centre line's pixel indices (``(N, 2)`` int array into
        ``myo``) and ``2 × EDT − 0.5 pixel`` at each (``float64``); both empty when the mask is
        empty.

    Example:
        >>> band = np.zeros((20, 20), bool); band[:, 5:9] = True
        >>> coords, values = thickness_points(band)
        >>> sorted(set(coords[:, 1].tolist())), float(np.median(values))
        ([6, 7], 3.5)
    """
    mask = np.asarray(myo, dtype=bool)
    if mask.ndim != 2:
        raise ValueError(f"expected a 2D mask, got shape {mask.shape}")
    if not mask.any():
        return np.zeros((0, 2), dtype=int), np.zeros(0, dtype=np.float64)
    sp = tuple(float(s) for s in inplane_spacing[:2])
    # Pad so that a mask touching the image border still has background around it.
    padded = np.pad(mask, 1)
    edt = ndi.distance_transform_edt(padded, sampling=sp)
    skel = skeletonize(padded)
    if not skel.any():
        skel = padded
    coords = np.argwhere(skel)
    values = 2.0 * edt[skel] - 0.5 * float(np.mean(sp))
    return coords - 1, values


def slice_thickness_samples(
    myo: np.ndarray, inplane_spacing: Sequence[float] = (1.0, 1.0)
) -> np.ndarray:
    """Local wall thickness (mm) along the centre line of one 2D myocardium mask.

    Args:
        myo: Boolean 2D mask of the myocardium on one short-axis slice.
        inplane_spacing: Pixel size in mm of the two axes of ``myo``.

    Returns:
        ``2 × EDT − 0.5 pixel`` at every skeleton pixel (``float64``; empty when the mask is
        empty); :func:`thickness_points` also gives where.

    Example:
        >>> band = np.zeros((20, 20), bool); band[:, 5:9] = True
        >>> float(np.median(slice_thickness_samples(band)))
        3.5
    """
    return thickness_points(myo, inplane_spacing)[1]


def wall_thickness(label: np.ndarray, spacing: Sequence[float]) -> dict[str, float]:
    """Maximal, mean and dispersion of the myocardial wall thickness of one 3D label volume.

    Only short-axis slices holding both LV blood pool and myocardium are measured.

    Args:
        label: Canonical 3D labels.
        spacing: Voxel size in mm of the three axes.

    Returns:
        ``max_mm`` (largest local thickness over all slices) and ``max_slice`` (the slice
        holding it, an index along the slice axis), ``mean_mm`` (mean over slices of the
        per-slice median), ``cv`` (mean over slices of the per-slice coefficient of variation,
        a measure of regional heterogeneity) and ``n_slices``; ``nan`` values (``max_slice``
        -1, ``n_slices`` 0) when no slice qualifies.
    """
    lab = np.asarray(label)
    out = {"max_mm": NAN, "max_slice": -1.0, "mean_mm": NAN, "cv": NAN, "n_slices": 0.0}
    if lab.ndim != 3:
        raise ValueError(f"expected a 3D label volume, got shape {lab.shape}")
    axis = slice_axis(tuple(float(s) for s in spacing[:3]), lab.shape)
    inplane = [float(spacing[i]) for i in range(3) if i != axis]
    slices = np.moveaxis(lab, axis, 0)
    maxima, medians, cvs, where = [], [], [], []
    for z, sl in enumerate(slices):
        myo = sl == MYO
        if not myo.any() or not (sl == LV).any():
            continue
        t = slice_thickness_samples(myo, inplane)
        t = t[np.isfinite(t)]
        if t.size == 0:
            continue
        maxima.append(float(t.max()))
        where.append(z)
        med = float(np.median(t))
        medians.append(med)
        mean = float(np.mean(t))
        cvs.append(float(np.std(t)) / mean if mean > 0 else NAN)
    if medians:
        out["max_mm"] = max(maxima)
        out["max_slice"] = float(where[int(np.argmax(maxima))])
        out["mean_mm"] = float(np.mean(medians))
        finite_cv = [c for c in cvs if math.isfinite(c)]
        out["cv"] = float(np.mean(finite_cv)) if finite_cv else NAN
        out["n_slices"] = float(len(medians))
    return out


def shape_features(
    ed_label: np.ndarray,
    es_label: np.ndarray,
    spacing: Sequence[float],
    height_cm: float | str | None = None,
    weight_kg: float | str | None = None,
    missing_slices: Sequence[int] = (),
    ed_thickness: dict[str, float] | None = None,
    slice_weights: Sequence[float] | None = None,
) -> dict[str, float]:
    """Indices and shape features of one study (research use only, not a diagnosis).

    Args:
        ed_label: Canonical 3D labels at end-diastole.
        es_label: Canonical 3D labels at end-systole (same shape).
        spacing: Voxel size in mm of the three axes.
        height_cm: Patient height; with ``weight_kg`` (both finite and positive) adds the BSA
            and the BSA-indexed values. Strings such as ``"184.0"`` are accepted.
        weight_kg: Patient weight.
        missing_slices: Slices the stack has no images for (empty in both labels); the
            volumes interpolate them as :func:`~cardioseg.clinical.indices.compute_indices`
            does, so that the features match the reported indices.
        ed_thickness: :func:`wall_thickness` of ``ed_label`` when the caller has it already
            (it is not measured again).
        slice_weights: Disc thickness per slice of an unevenly spaced stack, as for
            :func:`~cardioseg.clinical.indices.compute_indices`.

    Returns:
        Every key of :func:`~cardioseg.clinical.indices.compute_indices` plus
        ``rv_lv_edv_ratio``, ``rv_lv_esv_ratio``, ``lv_mass_edv_ratio_g_ml`` and
        :data:`THICKNESS_FEATURES` (``myo_thickening_pct`` is the relative change of the mean
        thickness from ED to ES). A quantity that cannot be measured (empty structure, zero
        denominator) is ``nan``; empty masks never raise.

    Example:
        >>> ed = np.zeros((40, 40, 3), np.uint8)
        >>> f = shape_features(ed, ed, (1.0, 1.0, 8.0))
        >>> f["lv_edv_ml"], math.isnan(f["myo_thickness_max_ed_mm"])
        (0.0, True)
    """
    ed = np.asarray(ed_label)
    es = np.asarray(es_label)
    h, w = _positive_or_none(height_cm), _positive_or_none(weight_kg)
    if h is None or w is None:
        h = w = None
    indices = compute_indices(
        ed, es, spacing, h, w, missing_slices=missing_slices, slice_weights=slice_weights
    )
    feats: dict[str, float] = {k: float(v) for k, v in indices.items()}
    feats["rv_lv_edv_ratio"] = _ratio(feats["rv_edv_ml"], feats["lv_edv_ml"])
    feats["rv_lv_esv_ratio"] = _ratio(feats["rv_esv_ml"], feats["lv_esv_ml"])
    feats["lv_mass_edv_ratio_g_ml"] = _ratio(feats["lv_mass_g"], feats["lv_edv_ml"])
    t_ed = ed_thickness if ed_thickness is not None else wall_thickness(ed, spacing)
    t_es = wall_thickness(es, spacing)
    feats["myo_thickness_max_ed_mm"] = t_ed["max_mm"]
    feats["myo_thickness_mean_ed_mm"] = t_ed["mean_mm"]
    feats["myo_thickness_cv_ed"] = t_ed["cv"]
    feats["myo_thickness_max_es_mm"] = t_es["max_mm"]
    feats["myo_thickness_mean_es_mm"] = t_es["mean_mm"]
    ratio = _ratio(t_es["mean_mm"] - t_ed["mean_mm"], t_ed["mean_mm"])
    feats["myo_thickening_pct"] = ratio * 100.0 if math.isfinite(ratio) else NAN
    return feats
