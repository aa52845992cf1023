"""Post-processing: largest connected component per structure and hole filling."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from cardioseg.labels import LABELS


def keep_largest_components(
    label: np.ndarray, structures: tuple[int, ...] = (1, 2, 3)
) -> np.ndarray:
    """Keep the largest 3D connected component of each structure (26-connectivity).

    Example:
        >>> lab = np.zeros((5, 5, 1), np.uint8); lab[0, 0] = 1; lab[2:5, 2:5] = 1
        >>> int(keep_largest_components(lab).sum())
        9
    """
    out = label.copy()
    structure = np.ones((3,) * label.ndim, dtype=bool)
    for s in structures:
        mask = label == s
        if not mask.any():
            continue
        comp, n = ndimage.label(mask, structure=structure)
        if n > 1:
            sizes = np.bincount(comp.ravel())
            sizes[0] = 0
            out[mask & (comp != sizes.argmax())] = 0
    return out


def keep_heart(label: np.ndarray) -> np.ndarray:
    """Keep only the largest 3D connected component of the whole heart (LV ∪ MYO ∪ RV).

    Removes false positives far from the heart (bowel, stomach, great vessels) even when they are
    larger than the true structure in one class, which a per-class largest component would keep.
    """
    fg = label > 0
    if not fg.any():
        return label
    comp, n = ndimage.label(fg, structure=np.ones((3,) * label.ndim, dtype=bool))
    if n <= 1:
        return label
    sizes = np.bincount(comp.ravel())
    sizes[0] = 0
    out = label.copy()
    out[comp != sizes.argmax()] = 0
    return out


def fill_holes(label: np.ndarray, slice_axis: int = 2) -> np.ndarray:
    """Fill holes slice by slice: holes in the LV become LV; other holes inside the heart take
    the label of the nearest labelled pixel."""
    out = np.moveaxis(label.copy(), slice_axis, 0)
    lv = LABELS["LV"]
    for z in range(out.shape[0]):
        sl = out[z]
        if not sl.any():
            continue
        lv_filled = ndimage.binary_fill_holes(sl == lv)
        sl[lv_filled & (sl == 0)] = lv
        fg = sl > 0
        holes = ndimage.binary_fill_holes(fg) & ~fg
        if holes.any():
            _, idx = ndimage.distance_transform_edt(~fg, return_indices=True)
            sl[holes] = sl[idx[0][holes], idx[1][holes]]
        out[z] = sl
    return np.moveaxis(out, 0, slice_axis)


def postprocess(label: np.ndarray, slice_axis: int = 2) -> np.ndarray:
    """Largest heart component, largest component per structure, then hole filling."""
    return fill_holes(keep_largest_components(keep_heart(label)), slice_axis)
