"""The Python API refuses wrong arguments with clear errors, and its entry points are exported."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import cardioseg
from cardioseg.augmentation import Compose, Gamma, RandomGamma, RandomGhosting
from cardioseg.clinical import assess_quality, compute_indices, volume_curve
from cardioseg.evaluation import compute_metrics
from cardioseg.io import ImageProperties
from cardioseg.labels import check_canonical_labels


def _labels(shape=(16, 16, 3)) -> np.ndarray:
    lab = np.zeros(shape, np.uint8)
    lab[4:10, 4:10] = 1
    lab[2:4, 4:10] = 2
    lab[10:13, 4:10] = 3
    return lab


def test_public_entry_points_are_exported():
    import cardioseg.clinical as clinical
    import cardioseg.data as data
    import cardioseg.io as io
    import cardioseg.models as models
    import cardioseg.training as training

    assert cardioseg.CardiosegError.__module__ == "cardioseg.errors"
    assert cardioseg.DATASET_LABEL_MAPS["acdc"][3] == 1  # ACDC's 3 (LV) is canonical 1
    for module, names in [
        (clinical, ["analyze_study", "load_study", "Study"]),
        (data, ["make_cine", "make_phantom", "PhantomConfig", "Cine", "Phantom"]),
        (io, ["DATASET_LABEL_MAPS"]),
        (models, ["describe_checkpoint"]),
        (training, ["config_from_dict"]),
    ]:
        for name in names:
            assert name in module.__all__ and hasattr(module, name), (module.__name__, name)


def test_checkpoint_config_round_trips_to_a_training_config():
    from cardioseg.models import load_checkpoint
    from cardioseg.training import TrainingConfig, config_from_dict

    ckpt = load_checkpoint("default")
    cfg = config_from_dict(ckpt["config"])
    assert isinstance(cfg, TrainingConfig)
    assert cfg.data.target_spacing == ckpt["fingerprint"]["target_spacing"]


def test_check_canonical_labels():
    check_canonical_labels(_labels())
    check_canonical_labels(_labels().astype(np.float32))  # integral floats are labels
    check_canonical_labels(np.array([], np.int64))
    with pytest.raises(ValueError, match=r"ref must hold canonical labels.*\[4, 5\]"):
        check_canonical_labels(np.array([0, 4, 5]), "ref")
    with pytest.raises(ValueError, match=r"\[-1\]"):
        check_canonical_labels(np.array([0, -1], np.int16))
    with pytest.raises(ValueError, match="probabilities"):
        check_canonical_labels(np.array([0.0, 0.25, 1.0]))


def test_metrics_refuse_missing_spacing_and_non_canonical_labels():
    lab = _labels()
    with pytest.raises(ValueError, match="spacing must be the voxel size"):
        compute_metrics(lab, lab, None)
    with pytest.raises(ValueError, match="pred must hold canonical labels"):
        compute_metrics(lab * 5, lab, (1.0, 1.0, 8.0))
    with pytest.raises(ValueError, match="ref must hold canonical labels"):
        compute_metrics(lab, lab + 0.5, (1.0, 1.0, 8.0))
    # an explicit label mapping may use other values (no canonical check)
    m = compute_metrics(lab * 5, lab * 5, (1.0, 1.0, 8.0), labels={"LV": 5})
    assert m["LV_dice"] == 1.0 and m["mean_dice"] == 1.0


def test_clinical_functions_refuse_wrong_arguments():
    lab = _labels()
    with pytest.raises(ValueError, match=r"spacing must be three positive numbers.*None"):
        compute_indices(lab, lab, None)
    with pytest.raises(ValueError, match="spacing must be three positive numbers"):
        compute_indices(lab, lab, (1.0, 1.0))
    with pytest.raises(ValueError, match=r"expected 3D ED and ES label volumes.*volume_curve"):
        compute_indices(lab[..., None], lab[..., None], (1.0, 1.0, 8.0))
    with pytest.raises(ValueError, match="es_label must hold canonical labels"):
        compute_indices(lab, lab * 7, (1.0, 1.0, 8.0))
    with pytest.raises(ValueError, match=r"spacing must be three positive numbers.*None"):
        volume_curve(lab, None)
    with pytest.raises(ValueError, match="spacing must be three positive numbers"):
        assess_quality(lab, lab, (1.0, 1.0))
    # valid input still gives the indices: LV 36 voxels x 3 slices x 8 mm^3
    out = compute_indices(lab, lab, (1.0, 1.0, 8.0))
    assert out["lv_edv_ml"] == pytest.approx(36 * 3 * 8 / 1000)
    assert out["lv_ef_pct"] == 0.0


@pytest.fixture(scope="module")
def segmenter():
    from cardioseg.inference import Segmenter

    return Segmenter(num_threads=1, backend="torch", roi=False, precision="float32")


def test_segmenter_refuses_wrong_inputs(segmenter):
    vol = np.random.default_rng(0).random((64, 64, 3), dtype=np.float32)
    sp = (1.5, 1.5, 8.0)
    with pytest.raises(ValueError, match="expected a 3D volume"):
        segmenter.predict_volume(vol[..., 0], sp)
    with pytest.raises(ValueError, match="4D cine: use Segmenter.predict"):
        segmenter.predict_volume(vol[..., None], sp)
    with pytest.raises(ValueError, match="must be a numpy array"):
        segmenter.predict_volume(torch.from_numpy(vol), sp)
    with pytest.raises(ValueError, match=r"spacing must be the voxel size.*None"):
        segmenter.predict_volume(vol, None)
    with pytest.raises(ValueError, match="spacing must be three positive numbers"):
        segmenter.predict_volume(vol, (1.5, 1.5))
    with pytest.raises(ValueError, match="spacing must be three positive numbers"):
        segmenter.predict_volume(vol, (1.5, -1.5, 8.0))
    bad = vol.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN or infinite"):
        segmenter.predict_volume(bad, sp)
    with pytest.raises(ValueError, match="frame holds NaN"):
        segmenter.predict_frames([vol, bad], sp)
    with pytest.raises(ValueError, match="properties must be an ImageProperties"):
        segmenter.predict(vol, sp)
    props = ImageProperties(np.eye(4), sp, (65, 64, 3))
    with pytest.raises(ValueError, match="does not match properties.shape"):
        segmenter.predict(vol, props)
    # valid input: labels in the input's shape
    ok = segmenter.predict(vol, ImageProperties(np.eye(4), sp, vol.shape))
    assert ok.labels.shape == vol.shape and ok.labels.dtype == np.uint8


def test_segmenter_refuses_an_unknown_device():
    from cardioseg.inference import Segmenter

    with pytest.raises(ValueError, match="device must be"):
        Segmenter(device="gpu")


def test_augmentation_refuses_a_volume_that_is_not_a_slice_batch():
    vol = torch.rand(16, 16, 3)
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\).*permute\(2, 0, 1\)"):
        RandomGamma(p=1.0)(vol)  # used to broadcast silently into a (16, 16, 16, 3) result
    with pytest.raises(ValueError, match="must be a torch.Tensor"):
        RandomGhosting(p=1.0)(vol.numpy())
    with pytest.raises(ValueError, match="floating-point"):
        Gamma(torch.zeros(2))(torch.zeros(2, 1, 8, 8, dtype=torch.long))
    x = torch.rand(2, 1, 8, 8)
    with pytest.raises(ValueError, match=r"label must have shape \(B, H, W\)"):
        Compose([RandomGamma(p=1.0)], seed=0)(x, torch.zeros(2, 1, 8, 8, dtype=torch.long))


def test_augmentation_params_replay_on_a_volume():
    vol = np.random.default_rng(1).random((24, 20, 4), dtype=np.float32)
    x = torch.from_numpy(vol).permute(2, 0, 1)[:, None]
    aug = Compose([RandomGamma(p=1.0)], seed=7)
    y, _ = aug(x)
    (det,) = aug.applied
    assert det.params["log_gamma"].shape == (4,)
    assert torch.equal(Gamma(det.params["log_gamma"])(x)[0], y)
    assert y[:, 0].permute(1, 2, 0).shape == vol.shape
