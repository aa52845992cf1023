"""Test-time augmentation of the Segmenter follows what the model saw in training."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cardioseg.errors import CardiosegError
from cardioseg.inference import Segmenter
from cardioseg.models import ModelConfig, build_model, save_checkpoint
from cardioseg.training.config import TrainingConfig


def _checkpoint(path, orientation: bool | None, seed: int = 0, channels=(4, 8, 16)):
    torch.manual_seed(seed)
    cfg = TrainingConfig()
    cfg.model = ModelConfig(channels=list(channels), strides=[2, 2], num_res_units=0)
    config = cfg.to_dict()
    if orientation is None:  # a checkpoint written before the option existed
        config["train"].pop("orientation_augmentation")
    else:
        config["train"]["orientation_augmentation"] = orientation
    save_checkpoint(
        path,
        {
            "model_state": build_model(cfg.model).state_dict(),
            "config": config,
            "fingerprint": {},
            "format": "cardioseg-checkpoint-v1",
        },
    )
    return path


def _blob(h: int = 48, w: int = 64) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    r2 = ((yy - 20.0) / 9) ** 2 + ((xx - 36.0) / 13) ** 2
    return torch.exp(-r2)[None, None].repeat(2, 1, 1, 1)


@pytest.mark.parametrize("orientation", [True, None])
def test_flip_tta_for_models_trained_with_turns_and_flips(tmp_path, orientation):
    seg = Segmenter(_checkpoint(tmp_path / "m.pt", orientation), tta=True)
    assert seg.flip_invariant
    x = _blob()
    views = seg._tta_views(x)
    assert len(views) == 3
    for view, back in views:
        assert not torch.equal(view, x)  # each view is a real flip of the blob
        assert torch.equal(back(view), x)  # ... and mapping it back is exact


def test_rotation_tta_for_upright_models(tmp_path):
    seg = Segmenter(_checkpoint(tmp_path / "m.pt", False), tta=True)
    assert not seg.flip_invariant
    x = _blob()
    views = seg._tta_views(x)
    assert len(views) == 3
    for view, back in views:
        # rotated about the centre: moved, but mass and shape are kept (not flipped, not sheared)
        assert (view - x).abs().max() > 0.05
        assert view.sum().item() == pytest.approx(x.sum().item(), rel=0.05)
        # a flip would move the blob's centre to the other side; a small rotation barely does
        cy = (view[0, 0].sum(1) * torch.arange(48)).sum() / view[0, 0].sum()
        assert abs(cy.item() - 20.0) < 4
        assert (back(view) - x).abs().max() < 0.1
    vol = np.random.default_rng(0).normal(size=(40, 36, 3)).astype(np.float32)
    labels, probs = seg.predict_volume(vol, (1.5, 1.5, 8.0), return_probabilities=True)
    assert labels.shape == vol.shape and probs.shape == (4, *vol.shape)
    assert np.allclose(probs.sum(0), 1.0, atol=1e-3)


def test_segmenter_predicts_a_mirrored_file_like_its_canonical_twin(tiny_checkpoint):
    """A stack stored mirrored (affine says so) gets the mirrored labels of its canonical twin;
    a checkpoint trained with ``canonical_handedness: false`` keeps the stored orientation."""
    from test_preprocessing import _mirror_pair

    from cardioseg.io.nifti import ImageProperties

    img, _, aff, mimg, _, maff = _mirror_pair(seed=3)
    # no post-processing: a random model's equal-sized fragments make "largest component" ties
    # float32: a random model has near-ties that bfloat16 rounding could break either way
    seg = Segmenter(tiny_checkpoint, num_threads=1, postprocess=False, precision="float32")
    a = seg.predict(img, ImageProperties(aff, (1.4, 1.4, 8.0), img.shape)).labels
    b = seg.predict(mimg, ImageProperties(maff, (1.4, 1.4, 8.0), mimg.shape)).labels
    assert len(np.unique(a)) > 1  # the random model predicts something non-trivial
    np.testing.assert_array_equal(b, a[:, ::-1])
    seg.preprocessor.canonical_handedness = False
    raw = seg.predict(mimg, ImageProperties(maff, (1.4, 1.4, 8.0), mimg.shape)).labels
    assert not np.array_equal(raw, a[:, ::-1])


def test_ensemble_averages_the_members_probabilities(tmp_path):
    paths = [_checkpoint(tmp_path / f"m{i}.pt", False, seed=i) for i in range(2)]
    vol = np.random.default_rng(1).normal(size=(40, 36, 3)).astype(np.float32)
    single = [
        Segmenter(p, postprocess=False).predict_volume(vol, (1.5, 1.5, 8.0), True)[1] for p in paths
    ]
    assert np.abs(single[0] - single[1]).max() > 1e-3  # two different networks
    ens = Segmenter(paths, postprocess=False)
    assert len(ens.models) == 2
    labels, probs = ens.predict_volume(vol, (1.5, 1.5, 8.0), True)
    np.testing.assert_allclose(probs, (single[0] + single[1]) / 2, atol=1e-5)
    assert np.array_equal(labels, probs.argmax(0))
    # members of different widths average fine; a different input (total stride) is refused
    wide = _checkpoint(tmp_path / "wide.pt", False, channels=(8, 8, 16))
    mixed = Segmenter([paths[0], wide], postprocess=False)
    sizes = [sum(p.numel() for p in m.parameters()) for m in mixed.models]
    assert sizes[0] < sizes[1]  # each member built with its own width
    w = Segmenter(wide, postprocess=False).predict_volume(vol, (1.5, 1.5, 8.0), True)[1]
    np.testing.assert_allclose(
        mixed.predict_volume(vol, (1.5, 1.5, 8.0), True)[1], (single[0] + w) / 2, atol=1e-5
    )
    deeper = tmp_path / "deeper.pt"
    torch.manual_seed(0)
    cfg = TrainingConfig()
    cfg.model = ModelConfig(channels=[4, 8, 16, 32], strides=[2, 2, 2], num_res_units=0)
    save_checkpoint(
        deeper,
        {
            "model_state": build_model(cfg.model).state_dict(),
            "config": cfg.to_dict(),
            "fingerprint": {},
            "format": "cardioseg-checkpoint-v1",
        },
    )
    with pytest.raises(CardiosegError, match="differs .* in preprocessing"):
        Segmenter([paths[0], deeper])
    with pytest.raises(ValueError, match="not available for an ensemble"):
        Segmenter(paths, adaptation="tent")


def test_bfloat16_precision_follows_float32(tmp_path):
    """bfloat16 autocast changes the probabilities only by rounding; the option is validated
    and a checkpoint's ``inference.precision`` is the default."""
    path = _checkpoint(tmp_path / "m.pt", False)
    vol = np.random.default_rng(2).normal(size=(40, 36, 3)).astype(np.float32)
    ref = Segmenter(path, postprocess=False, precision="float32")
    ref = ref.predict_volume(vol, (1.5, 1.5, 8.0), True)[1]
    seg = Segmenter(path, postprocess=False, precision="bfloat16")
    assert seg.precision == "bfloat16"
    probs = seg.predict_volume(vol, (1.5, 1.5, 8.0), True)[1]
    assert probs.dtype == ref.dtype and np.allclose(probs.sum(0), 1.0, atol=1e-3)
    diff = np.abs(probs - ref)
    assert 0 < diff.max() < 0.05  # bfloat16 really ran, and only rounded
    with pytest.raises(ValueError, match="precision must be one of"):
        Segmenter(path, precision="int8")
    ck = torch.load(path, weights_only=False)
    ck["config"]["inference"]["precision"] = "bfloat16"
    torch.save(ck, tmp_path / "bf16.pt")
    assert Segmenter(tmp_path / "bf16.pt").precision == "bfloat16"
    assert Segmenter(tmp_path / "bf16.pt", precision="float32").precision == "float32"


def test_auto_precision_resolves_per_device(tmp_path, monkeypatch):
    from cardioseg.inference import segmenter as module

    path = _checkpoint(tmp_path / "m.pt", False)
    monkeypatch.setattr(module, "native_bfloat16", lambda device: True)
    assert Segmenter(path, precision="auto").precision == "bfloat16"
    monkeypatch.setattr(module, "native_bfloat16", lambda device: False)
    assert Segmenter(path, precision="auto").precision == "float32"
    assert Segmenter(path, precision="bfloat16").precision == "bfloat16"  # asked: always


class _PixelNet(torch.nn.Module):
    """Logits from each pixel's intensity, plus ``tilt`` times its column position: with
    ``tilt=0`` a flipped image gets the flipped prediction (the TTA views agree), otherwise
    the views disagree where the tilt moves a pixel across the decision boundary."""

    def __init__(self, tilt: float = 0.0) -> None:
        super().__init__()
        self.tilt = tilt

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ramp = torch.linspace(-1, 1, x.shape[-1]).expand_as(x[:, 0])
        fg = 4 * (x[:, 0] - 0.5) + self.tilt * ramp
        zero = torch.zeros_like(fg)
        return torch.stack([-fg, fg, zero, zero], 1)


def _square_volume() -> np.ndarray:
    vol = np.zeros((64, 64, 3), np.float32)
    vol[20:44, 16:48] = 1.0
    return vol


@pytest.mark.parametrize("tilt", [0.0, 3.0])
def test_disagreement_of_the_tta_views(tmp_path, tilt):
    """The disagreement map is the views' mutual information: 0 where they agree, > 0 where
    they do not; ``None`` without TTA (a single prediction)."""
    seg = Segmenter(_checkpoint(tmp_path / "m.pt", True), tta=True, postprocess=False, roi=False)
    seg.models = [_PixelNet(tilt)]
    vol = _square_volume()
    labels, probs, spread = seg.predict_volume(
        vol, (1.5, 1.5, 8.0), return_probabilities=True, return_disagreement=True
    )
    assert spread.shape == labels.shape == vol.shape and probs.shape == (4, *vol.shape)
    assert spread.min() >= 0.0 and spread.max() <= 1.0
    if tilt == 0.0:
        assert spread.max() < 1e-4
    else:
        assert spread.max() > 0.05
        # the tilt pushes the left and right halves opposite ways: the views disagree there
        cols = spread[:, :, 1].mean(0)
        assert cols[:8].mean() > 10 * cols[28:36].mean()
    seg.tta = False
    out = seg.predict_volume(vol, (1.5, 1.5, 8.0), return_disagreement=True)
    assert len(out) == 3 and out[2] is None and out[1] is None
    assert len(seg.predict_volume(vol, (1.5, 1.5, 8.0))) == 2


def test_predict_frames_returns_what_predict_volume_does(tmp_path):
    """With TTA, probabilities and disagreement: each frame's three outputs are those of
    predict_volume (mapped back once for the labels and the probabilities); with test-time
    adaptation the frames are segmented one by one, with the same outputs."""
    seg = Segmenter(_checkpoint(tmp_path / "m.pt", True), tta=True, roi=False)
    seg.models = [_PixelNet(3.0)]
    vols = [_square_volume(), np.roll(_square_volume(), 5, axis=1)]
    expected = [seg.predict_volume(v, (1.5, 1.5, 8.0), True, None, True) for v in vols]
    got = seg.predict_frames(
        iter(vols), (1.5, 1.5, 8.0), return_probabilities=True, return_disagreement=True
    )
    for g, e in zip(got, expected, strict=True):
        np.testing.assert_array_equal(g[0], e[0])
        np.testing.assert_allclose(g[1], e[1])
        np.testing.assert_allclose(g[2], e[2])
    assert got[1][2].max() > 0.05  # the tilted views really disagree
    plain = seg.predict_frames(iter(vols), (1.5, 1.5, 8.0))
    assert all(p is None and d is None for _, p, d in plain)
    tent = Segmenter(_checkpoint(tmp_path / "t.pt", False), adaptation="tent", roi=False)
    out = tent.predict_frames(iter(vols), (1.5, 1.5, 8.0), return_probabilities=True)
    assert len(out) == 2 and all(p.shape == (4, *vols[0].shape) and d is None for _, p, d in out)


def test_disagreement_in_the_heart_window_is_zero_outside_it(tmp_path):
    """Outside the heart window nothing is predicted, so nothing disagrees; on the whole image
    the tilted stand-in's views disagree in the far corners too."""
    vol = np.zeros((160, 160, 3), np.float32)
    vol[70:90, 60:100] = 1.0
    spreads = {}
    for roi in (True, False):
        seg = Segmenter(_checkpoint(tmp_path / "m.pt", True), tta=True, postprocess=False, roi=roi)
        seg.models = [_PixelNet(3.0)]
        seg.roi_size = 16
        spreads[roi] = seg.predict_volume(vol, (1.5, 1.5, 8.0), return_disagreement=True)[2]
        assert seg.roi_counts["window"] == int(roi)
    corners = (slice(0, 10), slice(0, 10))
    assert spreads[False][corners].min() > 0.05
    assert spreads[True][corners].max() == 0.0
    assert spreads[True].max() > 0.05  # inside the window it is measured
