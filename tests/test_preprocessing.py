"""Preprocessing: slice axis detection and exact inverse to native geometry."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import disc_labels, image_from_labels

from cardioseg.errors import CardiosegError
from cardioseg.preprocessing import (
    Preprocessor,
    check_inplane_geometry,
    normalize_intensity,
    slice_axis,
)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_inverse_restores_labels(axis):
    lab = np.moveaxis(disc_labels((60, 52, 5)), 2, axis)
    spacing = [1.4, 1.1, 1.4]
    spacing[axis] = 8.0
    pre = Preprocessor(target_spacing=1.25, pad_multiple=16)
    x, state = pre.forward(image_from_labels(lab), tuple(spacing))
    assert state.axis == axis and x.shape[0] == lab.shape[axis]
    assert x.shape[-1] % 16 == 0 and x.shape[-2] % 16 == 0
    # one-hot labels pushed through the same resampling come back exactly (up to edge pixels)
    onehot = torch.nn.functional.one_hot(torch.from_numpy(np.moveaxis(lab, axis, 0)).long(), 4)
    onehot = onehot.permute(0, 3, 1, 2).float()
    from cardioseg.preprocessing.geometry import pad_to_multiple, resample_inplane

    fwd, _ = pad_to_multiple(resample_inplane(onehot, state.inplane_resampled), 16)
    back = pre.inverse_labels(fwd, state)
    assert back.shape == lab.shape
    assert (back == lab).mean() > 0.99


def test_slice_axis_and_normalisation():
    assert slice_axis((1.2, 1.2, 10)) == 2
    assert slice_axis((9.6, 1.3, 1.3)) == 0
    assert slice_axis((1.0, 1.0, 1.0), (100, 100, 8)) == 2
    a = normalize_intensity(np.random.default_rng(0).random((20, 20, 4)) * 1300)
    b = normalize_intensity(np.random.default_rng(0).random((20, 20, 4)))
    np.testing.assert_allclose(a, b, atol=1e-4)  # vendor scale removed
    assert abs(float(a.mean())) < 1e-5 and abs(float(a.std()) - 1) < 1e-3


def test_preprocessor_validates():
    with pytest.raises(ValueError):
        Preprocessor(target_spacing=0)
    with pytest.raises(ValueError):
        Preprocessor().forward(np.zeros((4, 4)), (1, 1, 1))
    with pytest.raises(CardiosegError, match="too small"):
        Preprocessor().forward(np.ones((6, 6, 3), np.float32), (1.5, 1.5, 8.0))


def test_inplane_geometry_bounds():
    # the in-plane axes are the two left by the slice axis, wherever it is
    check_inplane_geometry((200, 10, 180), (1.4, 10.0, 1.4))
    check_inplane_geometry((256, 256, 12, 25), (1.25, 1.25, 8.0), "cine.nii.gz")  # time ignored
    with pytest.raises(CardiosegError, match=r"small\.nii\.gz: .* 30 x 300 mm is too small"):
        check_inplane_geometry((20, 200, 8), (1.5, 1.5, 8.0), "small.nii.gz")
    with pytest.raises(CardiosegError, match="implausibly large .* check the voxel spacing"):
        check_inplane_geometry((256, 256, 10), (1400.0, 1400.0, 8000.0), "metres.nii.gz")
    with pytest.raises(CardiosegError) as info:  # an API call without a file names none
        check_inplane_geometry((4, 4, 2), (1.5, 1.5, 8.0))
    assert info.value.path is None


def _mirror_pair(seed: int = 0):
    """The same physical image stored twice: canonical, and with its columns reversed."""
    from conftest import oblique_affine

    lab = disc_labels((60, 52, 5), center=(28, 20))
    img = image_from_labels(lab, seed=seed)
    aff = oblique_affine(spacing=(1.4, 1.4, 8.0), angles=(0.0, 0.0, 0.0))  # normal +z: canonical
    mirrored_aff = aff @ np.array(
        [[1, 0, 0, 0], [0, -1, 0, lab.shape[1] - 1], [0, 0, 1, 0], [0, 0, 0, 1]], float
    )
    return img, lab, aff, img[:, ::-1].copy(), lab[:, ::-1].copy(), mirrored_aff


def test_is_mirrored_view_reads_the_affine():
    from conftest import oblique_affine

    from cardioseg.preprocessing.geometry import APEX_DIRECTION_RAS, is_mirrored_view

    img, lab, aff, _, _, maff = _mirror_pair()
    assert not is_mirrored_view(aff, 2) and is_mirrored_view(maff, 2)
    assert not is_mirrored_view(np.eye(4), 2)  # ACDC-style identity: left alone
    # a stack whose plane contains the long axis (normal ⟂ apex) is left alone either way
    e1 = np.cross(APEX_DIRECTION_RAS, [0.0, 0.0, 1.0])
    e1 /= np.linalg.norm(e1)
    side = np.eye(4)
    side[:3, :3] = np.stack([APEX_DIRECTION_RAS, np.cross(e1, APEX_DIRECTION_RAS), e1], 1)
    flipped = side @ np.diag([1.0, -1.0, 1.0, 1.0])
    assert not is_mirrored_view(side, 2) and not is_mirrored_view(flipped, 2)

    # the slice axis decides which two columns span the plane
    def slice_first(a):  # the same planes, stacked along axis 0
        out = a.copy()
        out[:3, :3] = a[:3, [2, 0, 1]]
        return out

    assert is_mirrored_view(slice_first(maff), 0) and not is_mirrored_view(slice_first(aff), 0)
    assert not is_mirrored_view(np.zeros((4, 4)), 2)  # degenerate affine
    assert is_mirrored_view(oblique_affine(flip=(1, -1, 1), angles=(0, 0, 0)), 2)


def test_preprocessor_undoes_a_mirrored_stack_and_maps_back():
    img, lab, aff, mimg, mlab, maff = _mirror_pair()
    pre = Preprocessor(target_spacing=1.25)
    x, st = pre.forward(img, (1.4, 1.4, 8.0), aff)
    mx, mst = pre.forward(mimg, (1.4, 1.4, 8.0), maff)
    assert not st.mirrored and mst.mirrored
    torch.testing.assert_close(x, mx)  # the network sees the same canonical slices
    # any per-pixel output maps back onto the stored (mirrored) voxel order
    onehot = torch.nn.functional.one_hot(torch.from_numpy(np.moveaxis(lab, 2, 0)).long(), 4)
    from cardioseg.preprocessing.geometry import pad_to_multiple, resample_inplane

    fwd, _ = pad_to_multiple(
        resample_inplane(onehot.permute(0, 3, 1, 2).float(), st.inplane_resampled), 16
    )
    assert (pre.inverse_labels(fwd, mst) == mlab).mean() > 0.99
    assert (pre.inverse_labels(fwd, st) == lab).mean() > 0.99
    # switched off, or without an affine, the stored orientation is kept
    off = Preprocessor(target_spacing=1.25, canonical_handedness=False)
    assert not off.forward(mimg, (1.4, 1.4, 8.0), maff)[1].mirrored
    assert not pre.forward(mimg, (1.4, 1.4, 8.0))[1].mirrored


def test_training_slices_use_the_same_canonical_view(tmp_path):
    from conftest import write_nifti

    from cardioseg.data.datasets import read_folder_pairs
    from cardioseg.training.slices import prepare_case

    img, lab, aff, mimg, mlab, maff = _mirror_pair()
    write_nifti(tmp_path / "a" / "case.nii.gz", img, aff)
    write_nifti(tmp_path / "a" / "case_gt.nii.gz", lab, aff)
    write_nifti(tmp_path / "b" / "case.nii.gz", mimg, maff)
    write_nifti(tmp_path / "b" / "case_gt.nii.gz", mlab, maff)
    a = prepare_case(read_folder_pairs(tmp_path / "a")[0], 1.25)
    b = prepare_case(read_folder_pairs(tmp_path / "b")[0], 1.25)
    np.testing.assert_array_equal(a.label, b.label)
    np.testing.assert_allclose(a.image.astype(np.float32), b.image.astype(np.float32), atol=1e-3)
    assert a.center == pytest.approx(b.center)
    raw = prepare_case(read_folder_pairs(tmp_path / "b")[0], 1.25, canonical_handedness=False)
    np.testing.assert_array_equal(raw.label, a.label[..., ::-1])
