"""Augmentation invariants: label sets, determinism, identity at p=0, inverses."""

from __future__ import annotations

import pytest
import torch

from cardioseg.augmentation import (
    Compose,
    Orientation,
    RandomAffine,
    RandomBiasField,
    RandomBlur,
    RandomContrast,
    RandomElasticDeformation,
    RandomGamma,
    RandomLowResolution,
    RandomNoise,
    RandomOrientation,
    baseline_augmentation,
)


def _batch(n=4, s=48):
    g = torch.Generator().manual_seed(0)
    lab = torch.zeros(n, s, s, dtype=torch.long)
    lab[:, 10:30, 12:28] = 1
    lab[:, 14:22, 16:22] = 2
    lab[:, 30:40, 5:15] = 3
    img = lab.float()[:, None] * 0.3 + 0.05 * torch.rand(n, 1, s, s, generator=g)
    return img, lab


SPATIAL = [RandomOrientation(p=1), RandomAffine(p=1), RandomElasticDeformation(p=1)]
INTENSITY = [
    RandomGamma(p=1),
    RandomContrast(p=1),
    RandomBiasField(p=1),
    RandomBlur(p=1),
    RandomNoise(p=1),
    RandomLowResolution(p=1),
]


@pytest.mark.parametrize("t", SPATIAL + INTENSITY, ids=lambda t: type(t).__name__)
def test_labels_stay_valid_and_seeded(t):
    img, lab = _batch()
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    a_img, a_lab = t(img, lab, generator=g1)
    b_img, b_lab = t(img, lab, generator=g2)
    assert torch.equal(a_img, b_img) and torch.equal(a_lab, b_lab)
    assert a_img.shape == img.shape and a_lab.shape == lab.shape
    assert set(a_lab.unique().tolist()) <= {0, 1, 2, 3}
    assert torch.isfinite(a_img).all()
    if t in INTENSITY:
        assert torch.equal(a_lab, lab)  # intensity transforms never touch labels
        assert not torch.allclose(a_img, img)


@pytest.mark.parametrize("t", SPATIAL + INTENSITY, ids=lambda t: type(t).__name__)
def test_probability_zero_is_identity(t):
    t.p, p = 0.0, t.p
    img, lab = _batch()
    out_img, out_lab = t(img, lab, generator=torch.Generator().manual_seed(0))
    t.p = p
    assert torch.allclose(out_img, img, atol=1e-5) and torch.equal(out_lab, lab)


def test_orientation_inverse_and_record():
    img, lab = _batch()
    det = RandomOrientation(p=1).sample(4, torch.Generator().manual_seed(1))
    assert isinstance(det, Orientation) and set(det.params) == {"k", "flip"}
    o_img, o_lab = det(img, lab)
    r_img, r_lab = det.inverse()(o_img, o_lab)
    assert torch.equal(r_img, img) and torch.equal(r_lab, lab)


def test_compose_records_and_resumes():
    img, lab = _batch()
    aug = baseline_augmentation(seed=5)
    state = aug.state_dict()
    out1, _ = aug(img, lab)
    assert len(aug.applied) == len(aug.transforms)
    aug.load_state_dict(state)
    out2, _ = aug(img, lab)
    assert torch.equal(out1, out2)
    assert isinstance(Compose([], seed=0)(img, lab)[0], torch.Tensor)


def test_invalid_probability():
    with pytest.raises(ValueError):
        RandomGamma(p=1.5)
