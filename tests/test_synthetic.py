"""The synthetic short-axis phantom: determinism, label sanity, anatomy, geometry, vendor styles."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from cardioseg.data.synthetic import (
    VENDOR_STYLES,
    PhantomConfig,
    contraction_curve,
    make_cine,
    make_phantom,
    write_phantom,
)


def small(**kw) -> PhantomConfig:
    """A quick phantom: coarse in-plane grid, few thick slices (still base to apex)."""
    base = dict(seed=3, shape=(97, 84), spacing=3.0, n_slices=6, slice_spacing=12.0)
    base.update(kw)
    return PhantomConfig(**base)


@pytest.fixture(scope="module")
def phantom():
    return make_phantom(small())


def test_deterministic_for_a_seed_and_different_across_seeds():
    a, b = make_phantom(small(seed=11)), make_phantom(small(seed=11))
    c = make_phantom(small(seed=12))
    for phase in ("ED", "ES"):
        np.testing.assert_array_equal(a.images[phase], b.images[phase])
        np.testing.assert_array_equal(a.labels[phase], b.labels[phase])
        assert not np.array_equal(a.images[phase], c.images[phase])
        assert not np.array_equal(a.labels[phase], c.labels[phase])
    np.testing.assert_array_equal(a.affine, b.affine)
    assert a.meta == b.meta


@pytest.mark.parametrize("vendor", [*VENDOR_STYLES, "random"])
def test_shapes_dtypes_and_label_values(vendor):
    cfg = small(vendor=vendor, seed=5)
    ph = make_phantom(cfg)
    assert set(ph.images) == set(ph.labels) == {"ED", "ES"}
    for phase in ph.images:
        img, lab = ph.images[phase], ph.labels[phase]
        # the stored array keeps the configured shape whatever the vendor's in-plane turn
        assert img.shape == lab.shape == (*cfg.shape, cfg.n_slices)
        assert img.dtype == np.float32 and lab.dtype == np.uint8
        assert np.isfinite(img).all() and img.min() >= 0
        assert set(np.unique(lab).tolist()) <= {0, 1, 2, 3}
        for k in (1, 2, 3):  # LV, MYO, RV in every phase
            assert (lab == k).sum() > 20, (phase, k)


def test_volumes_and_ejection_fraction(phantom):
    voxel_ml = float(np.prod(phantom.spacing)) / 1000.0
    lv = {p: (phantom.labels[p] == 1).sum() * voxel_ml for p in ("ED", "ES")}
    rv = {p: (phantom.labels[p] == 3).sum() * voxel_ml for p in ("ED", "ES")}
    assert lv["ED"] > lv["ES"] and rv["ED"] > rv["ES"]
    lvef = 100.0 * (lv["ED"] - lv["ES"]) / lv["ED"]
    assert 45.0 <= lvef <= 75.0
    assert 60.0 <= lv["ED"] <= 200.0  # a plausible adult LV
    assert phantom.meta["lvef"] == pytest.approx(lvef, abs=0.01)
    assert phantom.meta["lv_volume_ml"]["ED"] == pytest.approx(lv["ED"], abs=0.01)
    myo = {p: (phantom.labels[p] == 2).sum() * voxel_ml for p in ("ED", "ES")}
    assert myo["ES"] == pytest.approx(myo["ED"], rel=0.2)  # roughly conserved


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_anatomy_lv_enclosed_by_myo_and_rv_wall_unlabelled(seed):
    ph = make_phantom(small(seed=seed, n_slices=8, slice_spacing=9.0))
    for phase in ("ED", "ES"):
        lab = ph.labels[phase]
        mid = lab[..., lab.shape[2] // 2]
        lv = mid == 1
        assert lv.any()
        padded = np.pad(mid, 1)
        neighbours = [padded[2:, 1:-1], padded[:-2, 1:-1], padded[1:-1, 2:], padded[1:-1, :-2]]
        for nb in neighbours:  # LV touches only LV or MYO: the myocardium encloses it
            assert set(np.unique(nb[lv]).tolist()) <= {1, 2}
        # the RV is not enclosed by myocardium: its free wall is background
        rv = mid == 3
        assert any((nb[rv] == 0).any() for nb in neighbours)
        # RV sits beside the LV (shares the septum) rather than around it
        assert any((nb[rv] == 2).any() for nb in neighbours)


def test_heart_shrinks_towards_apex(phantom):
    lab = phantom.labels["ED"]
    lv_area = [(lab[..., z] == 1).sum() for z in range(lab.shape[2])]
    rv_area = [(lab[..., z] == 3).sum() for z in range(lab.shape[2])]
    assert lv_area[-1] < max(lv_area) / 3  # apical slices: LV small or absent
    assert rv_area[-1] < max(rv_area) / 3
    assert int(np.argmax(rv_area)) <= 2  # the RV is largest near the base


@pytest.mark.parametrize("orientation", ["RAS", "LPS", "PIR"])
def test_affine_is_valid_with_spacing_in_column_norms(orientation):
    ph = make_phantom(small(orientation=orientation, n_slices=2, slice_spacing=30.0))
    aff = ph.affine
    assert aff.shape == (4, 4)
    np.testing.assert_allclose(aff[3], [0, 0, 0, 1])
    np.testing.assert_allclose(np.linalg.norm(aff[:3, :3], axis=0), ph.spacing, rtol=1e-6)
    assert ph.spacing == (3.0, 3.0, 30.0)
    assert "".join(nib.aff2axcodes(aff)) == orientation == ph.meta["axcodes"]
    if orientation == "RAS":
        np.testing.assert_allclose(aff, np.diag([3.0, 3.0, 30.0, 1.0]))
    else:  # oblique, with a translation, like vendor exports
        off_diag = aff[:3, :3] - np.diag(np.diag(aff[:3, :3]))
        assert np.abs(off_diag).max() > 0.1 and np.abs(aff[:3, 3]).max() > 0


def test_vendor_styles_differ_in_intensity_range():
    imgs = {v: make_phantom(small(vendor=v, seed=4)).images["ED"] for v in VENDOR_STYLES}
    assert 0.99 <= imgs["siemens"].max() <= 1.0  # min–max scaled floats, like ACDC
    assert 80 <= imgs["philips"].max() <= 600  # integer-like, hundreds
    assert imgs["ge"].max() > 800  # integer-like, thousands
    for v in ("philips", "ge"):
        np.testing.assert_array_equal(imgs[v], np.round(imgs[v]))
    # named styles keep the ACDC in-plane layout (as the real vendor data do) with other affines
    metas = [make_phantom(small(vendor=v, n_slices=1)).meta for v in VENDOR_STYLES]
    assert all(m["turn"] == 0 and not m["flip"] for m in metas)
    assert len({m["axcodes"] for m in metas}) == len(VENDOR_STYLES)
    # the random style turns/flips the stored array
    rand = [make_phantom(small(vendor="random", seed=s, n_slices=1)).meta for s in range(8)]
    assert len({(m["turn"], m["flip"]) for m in rand}) > 1


def test_bssfp_contrast(phantom):
    img, lab = phantom.images["ED"], phantom.labels["ED"]
    lv, myo, rv = (float(np.median(img[lab == k])) for k in (1, 2, 3))
    assert lv > 2.0 * myo and rv > 1.8 * myo  # bright blood, dark myocardium
    assert np.median(img) < lv / 2  # background/lungs mostly darker than blood


def test_cine_frames_and_volume_curve():
    cfg = small(seed=8, shape=(80, 72), spacing=3.5, n_slices=5, slice_spacing=14.0)
    cine = make_cine(cfg, n_frames=12)
    assert cine.image.shape == cine.labels.shape == (80, 72, 5, 12)
    assert cine.image.dtype == np.float32 and cine.labels.dtype == np.uint8
    lv = np.asarray(cine.meta["lv_volume_ml"])
    assert len(lv) == 12 and cine.meta["ed_frame"] == 0
    assert abs(int(np.argmin(lv)) - cine.meta["es_frame"]) <= 1
    assert cine.meta["es_frame"] == round(cfg.es_fraction * 12)
    assert lv[0] >= lv.max() - 1e-6  # ED is the largest
    np.testing.assert_array_equal(cine.labels[..., 0], make_phantom(cfg).labels["ED"])


def test_contraction_curve_is_smooth_with_es_peak():
    c = contraction_curve(30, 0.4)
    assert c[0] == 0.0 and int(np.argmax(c)) == 12 and c.max() == pytest.approx(1.0)
    assert np.abs(np.diff(c)).max() < 0.25


def test_write_phantom_roundtrip(tmp_path, phantom):
    paths = write_phantom(phantom, tmp_path / "out", name="case")
    assert set(paths) == {"case_ED", "case_ED_gt", "case_ES", "case_ES_gt"}
    img = nib.load(str(paths["case_ES"]))
    gt = nib.load(str(paths["case_ES_gt"]))
    assert img.get_data_dtype() == np.float32 and gt.get_data_dtype() == np.uint8
    np.testing.assert_allclose(img.affine, phantom.affine, atol=1e-4)
    np.testing.assert_allclose(img.header.get_zooms(), phantom.spacing, rtol=1e-5)
    np.testing.assert_array_equal(np.asarray(gt.dataobj), phantom.labels["ES"])
    np.testing.assert_array_equal(np.asarray(img.dataobj), phantom.images["ES"])


@pytest.mark.parametrize(
    "kw",
    [
        {"vendor": "canon"},
        {"orientation": "XYZ"},
        {"phases": ("ED", "late")},
        {"shape": (8, 64)},
        {"n_slices": 0},
        {"spacing": 0.0},
    ],
)
def test_invalid_config_raises(kw):
    with pytest.raises(ValueError):
        PhantomConfig(**kw)
