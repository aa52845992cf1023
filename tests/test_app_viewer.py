"""Viewer cache: the WebGL display volumes are oriented like the rendered PNG slices."""

from __future__ import annotations

import io

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from cardioseg.app.viewer import build_viewer_cache, display_volume, render_slice, viewer_meta


def _volumes(shape=(40, 30, 5, 3)):
    rng = np.random.default_rng(0)
    image = rng.normal(100, 10, size=shape).astype(np.float32)
    labels = np.zeros(shape, np.uint8)
    # a block of LV near voxel (0, 0) and of RV near (X, Y) of every slice and frame
    labels[2:8, 3:9] = 1
    labels[-9:-3, -8:-2] = 3
    return image, labels


def test_display_volumes_match_the_png_slices(tmp_path):
    image, labels = _volumes()
    folder = build_viewer_cache(tmp_path / "viewer", image, labels, (1.5, 1.25, 8.0), 0, 2)
    meta = viewer_meta(folder)
    vol = nib.load(str(display_volume(folder, "labels")))
    assert vol.shape == (meta["cols"], meta["rows"], meta["n_slices"], meta["n_frames"])
    zooms = vol.header.get_zooms()[:3]
    assert zooms == pytest.approx((*meta["pixel_spacing_mm"], meta["slice_spacing_mm"]))
    assert meta["slice_spacing_mm"] == 8.0
    assert np.allclose(vol.affine, np.diag([*zooms, 1.0]))

    data = np.asarray(vol.dataobj)
    png = Image.open(io.BytesIO(render_slice(folder, 1, 2, layer="labels")))
    rgba = np.asarray(png.resize((meta["cols"], meta["rows"]), Image.Resampling.NEAREST))
    for label, rgb in ((1, (228, 87, 46)), (3, (46, 134, 222))):
        rows, cols = np.nonzero((rgba[..., :3] == rgb).all(-1) & (rgba[..., 3] > 0))
        i, j = np.nonzero(data[:, :, 2, 1] == label)
        # NIfTI voxel (i, j): column i from the left, row j from the bottom of the PNG
        from_png = zip(cols.tolist(), (meta["rows"] - 1 - rows).tolist(), strict=True)
        assert sorted(from_png) == sorted(zip(i.tolist(), j.tolist(), strict=True))
    img = np.asarray(nib.load(str(display_volume(folder, "image"))).dataobj)
    assert img.dtype == np.uint8 and img.shape == data.shape and img.max() == 255


def test_display_volume_names_are_checked(tmp_path):
    image, labels = _volumes((8, 8, 2, 1))
    folder = build_viewer_cache(tmp_path / "viewer", image, labels, (1.0, 1.0, 5.0), 0, 0)
    with pytest.raises(ValueError, match="unknown volume"):
        display_volume(folder, "../labels")
    (folder / "labels.nii.gz").unlink()
    with pytest.raises(FileNotFoundError):
        display_volume(folder, "labels")


def test_heart_box_frames_every_label_of_the_png_slices(tmp_path):
    shape = (120, 100, 4, 3)  # 1.5 x 1.25 mm pixels: 180 x 125 mm
    image = np.random.default_rng(1).normal(100, 10, size=shape).astype(np.float32)
    labels = np.zeros(shape, np.uint8)
    labels[50:62, 40:52, 1:3, 0] = 1  # one frame only: the box covers every frame
    labels[64:70, 44:50, 2, 2] = 3
    folder = build_viewer_cache(tmp_path / "viewer", image, labels, (1.5, 1.25, 8.0), 0, 2)
    meta = viewer_meta(folder)
    x0, y0, x1, y1 = meta["heart_box"]
    assert 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1
    assert (x1 - x0, y1 - y0) != (1, 1)  # a zoom, not the whole field of view
    # square in millimetres (the displayed slice is width x height in proportion to mm)
    assert (x1 - x0) * meta["width"] == pytest.approx((y1 - y0) * meta["height"], rel=0.05)
    for t, s in ((0, 1), (0, 2), (2, 2)):
        png = Image.open(io.BytesIO(render_slice(folder, t, s, layer="labels")))
        alpha = np.asarray(png)[..., 3] > 0
        rows, cols = np.nonzero(alpha)
        h, w = alpha.shape
        assert x0 * w <= cols.min() and cols.max() < x1 * w
        assert y0 * h <= rows.min() and rows.max() < y1 * h
    empty = build_viewer_cache(tmp_path / "empty", image, labels * 0, (1.5, 1.25, 8.0), 0, 2)
    assert viewer_meta(empty)["heart_box"] is None


def test_overlay_opacities_are_not_confused_in_the_png_cache(tmp_path):
    image, labels = _volumes()
    folder = build_viewer_cache(tmp_path / "viewer", image, labels, (1.5, 1.25, 8.0), 0, 2)
    pngs = {a: render_slice(folder, 0, 2, layer="overlay", alpha=a) for a in (0.28, 0.29)}
    assert pngs[0.28] != pngs[0.29]  # 0.29 * 100 is 28.999...: it once shared 0.28's file
    assert render_slice(folder, 0, 2, layer="overlay", alpha=0.29) == pngs[0.29]
