"""Preprocessing: slice axis detection and exact inverse to native geometry."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import disc_labels, image_from_labels

from cardioseg.preprocessing import Preprocessor, normalize_intensity, slice_axis


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
