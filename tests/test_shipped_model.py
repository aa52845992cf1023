"""The shipped default model on the project's synthetic phantom (no external data needed)."""

from __future__ import annotations

import numpy as np
import pytest

from cardioseg.data.synthetic import PhantomConfig, make_phantom
from cardioseg.evaluation.metrics import compute_metrics
from cardioseg.models import default_checkpoint_path


@pytest.fixture(scope="module")
def segmenter():
    from cardioseg.inference import Segmenter

    assert default_checkpoint_path().exists(), "shipped weights missing from the package"
    return Segmenter()


@pytest.mark.parametrize("vendor", ["siemens", "philips", "ge"])
def test_shipped_model_segments_phantom(segmenter, vendor):
    """Trained on real ACDC only, the model segments the vendor-styled phantom (Dice >= 0.80)."""
    ph = make_phantom(PhantomConfig(seed=11, vendor=vendor))
    dice = []
    for phase in ph.images:
        pred, _ = segmenter.predict_volume(ph.images[phase], ph.spacing)
        assert pred.shape == ph.labels[phase].shape
        m = compute_metrics(pred, ph.labels[phase], ph.spacing)
        dice.append([m["LV_dice"], m["MYO_dice"], m["RV_dice"]])
    assert np.min(np.mean(dice, axis=0)) >= 0.80, dice


def test_shipped_checkpoint_is_self_contained():
    """Weights, config and data fingerprint travel together; the file stays small."""
    from cardioseg.models import load_checkpoint

    ck = load_checkpoint(default_checkpoint_path())
    assert default_checkpoint_path().stat().st_size < 5e6
    assert ck["config"]["data"]["target_spacing"] > 0
    assert "intensity_reference" in ck["fingerprint"]
    assert len(ck["fingerprint"]["train_subjects"]) == 80
