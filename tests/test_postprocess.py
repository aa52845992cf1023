"""Post-processing of predicted label maps (canonical labels: 1 LV, 2 MYO, 3 RV)."""

from __future__ import annotations

import numpy as np

from cardioseg.inference.postprocess import (
    basal_end,
    drop_open_basal_slices,
    drop_rv_without_myocardium,
    fill_holes,
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


def _tapered(n_slices: int = 7, axis: int = 2, open_base: int = 1) -> np.ndarray:
    """A ventricle that narrows from the base (slice 0) to the apex; the first ``open_base``
    slices have the LV with myocardium on one side only (outflow tract / atrium)."""
    yy, xx = np.mgrid[:48, :48]
    r = np.hypot(yy - 24, xx - 26)
    r_rv = np.hypot(yy - 24, xx - 8)
    lab = np.zeros((n_slices, 48, 48), np.uint8)
    for z in range(n_slices):
        k = 1 - 0.08 * z
        sl = lab[z]
        sl[(r >= 7 * k) & (r < 10 * k)] = 2
        sl[r < 7 * k] = 1
        sl[(r_rv < 8 * k) & (r >= 10 * k)] = 3
        if z < open_base:  # myocardium left of the LV only: encloses about a quarter
            sl[(sl == 2) & (xx > 22)] = 1
    return np.moveaxis(lab, 0, axis)


def test_open_basal_slices_are_dropped_at_the_base_only():
    for axis in (0, 2):
        lab = _tapered(axis=axis, open_base=2)
        assert basal_end(lab, axis) == 0
        out = np.moveaxis(drop_open_basal_slices(lab, axis), axis, 0)
        ref = np.moveaxis(lab, axis, 0)
        for z in (0, 1):  # no LV or myocardium left on the open basal slices; RV kept here
            assert not np.isin(out[z], (1, 2)).any() and (out[z] == 3).sum() > 50
        np.testing.assert_array_equal(out[2:], ref[2:])
        # the full post-processing also removes the RV there (no myocardium left)
        full = np.moveaxis(postprocess(lab, axis), axis, 0)
        assert not full[:2].any() and (full[2:] > 0).sum() > 0
    # closed rings everywhere: nothing changes
    closed = _tapered(open_base=0)
    np.testing.assert_array_equal(drop_open_basal_slices(closed), closed)
    # the stack reversed (base last): the basal end is found at the other side
    flipped = _tapered(open_base=1)[..., ::-1]
    assert basal_end(flipped) == 6
    assert not np.isin(drop_open_basal_slices(flipped)[..., 6], (1, 2)).any()
    # an open ring at the apical end is left alone (the apex is not the base)
    apex_open = _tapered(open_base=0)
    apex = apex_open[..., 6]
    apex[(apex == 2) & (np.mgrid[:48, :48][1] > 22)] = 1
    np.testing.assert_array_equal(drop_open_basal_slices(apex_open), apex_open)
    # at most max_drop slices go, and a short stack keeps its minimum of LV slices
    three_open = _tapered(open_base=3)
    out = drop_open_basal_slices(three_open, max_drop=2)
    assert np.isin(out[..., 2], (1, 2)).any() and not np.isin(out[..., :2], (1, 2)).any()
    short = _tapered(n_slices=3, open_base=1)
    np.testing.assert_array_equal(drop_open_basal_slices(short), short)


def test_postprocess_on_the_heart_box_equals_the_whole_volume_chain():
    """postprocess() works inside the heart's bounding box; the result must be what the rules
    give on the whole volume (holes, fragments and an open base included)."""
    rng = np.random.default_rng(3)
    for axis in (0, 2):
        lab = np.moveaxis(_tapered(axis=2, open_base=1), 2, axis).copy()
        noisy = lab.copy()
        flip = rng.random(lab.shape) < 0.02
        noisy[flip] = rng.integers(0, 4, size=int(flip.sum()))  # holes and specks
        edge = [slice(None)] * 3
        edge[(axis + 1) % 3] = slice(0, 2)
        noisy[tuple(edge)] = 3  # a detached strip at the image border
        whole = fill_holes(
            drop_rv_without_myocardium(
                drop_open_basal_slices(keep_largest_components(keep_heart(noisy)), axis), axis
            ),
            axis,
        )
        np.testing.assert_array_equal(postprocess(noisy, axis), whole)
    empty = np.zeros((5, 6, 7), np.uint8)
    np.testing.assert_array_equal(postprocess(empty), empty)
