"""Post-processing of predicted label maps (canonical labels: 1 LV, 2 MYO, 3 RV)."""

from __future__ import annotations

import numpy as np

from cardioseg.inference.postprocess import (
    drop_rv_without_myocardium,
    keep_heart,
    keep_largest_components,
    postprocess,
)


def _ventricles(n_slices: int = 6, axis: int = 2) -> np.ndarray:
    """LV disc + MYO ring + RV crescent on slices 1..n-2; slice 0 holds only 'RV' (atrium)."""
    yy, xx = np.mgrid[:40, :40]
    r = np.hypot(yy - 20, xx - 22)
    sl = np.zeros((40, 40), np.uint8)
    sl[r < 6] = 1
    sl[(r >= 6) & (r < 9)] = 2
    sl[(np.hypot(yy - 20, xx - 8) < 7) & (r >= 9)] = 3
    lab = np.stack([sl] * n_slices)
    lab[0] = 0
    lab[0][np.hypot(yy - 20, xx - 10) < 8] = 3  # atrium labelled as RV above the base
    lab[-1] = 0
    return np.moveaxis(lab, 0, axis)


def test_rv_dropped_only_where_there_is_no_myocardium():
    for axis in (0, 2):
        lab = _ventricles(axis=axis)
        out = np.moveaxis(drop_rv_without_myocardium(lab, axis), axis, 0)
        ref = np.moveaxis(lab, axis, 0)
        assert (ref[0] == 3).sum() > 100 and (out[0] == 3).sum() == 0
        np.testing.assert_array_equal(out[1:], ref[1:])  # ventricular slices untouched
    # a slice with a little myocardium (below the fraction) also loses its RV ...
    lab = _ventricles()
    lab[10:12, 10:12, 0] = 2
    assert (drop_rv_without_myocardium(lab)[..., 0] == 3).sum() == 0
    # ... but not with a lower fraction, and nothing happens without any myocardium
    assert (drop_rv_without_myocardium(lab, min_fraction=0.0)[..., 0] == 3).sum() > 0
    only_rv = (lab == 3).astype(np.uint8) * 3
    np.testing.assert_array_equal(drop_rv_without_myocardium(only_rv), only_rv)


def test_postprocess_removes_distant_blobs_and_fills_holes():
    lab = _ventricles()
    lab[35:38, 35:38, 2] = 1  # far-away false positive
    lab[20, 22, 3] = 0  # hole in the LV
    out = postprocess(lab)
    assert out[36, 36, 2] == 0 and out[20, 22, 3] == 1
    assert (out[..., 0] == 3).sum() == 0
    assert (keep_largest_components(lab) == 1).sum() < (lab == 1).sum()
    assert (keep_heart(lab)[35:38, 35:38, 2] == 0).all()
