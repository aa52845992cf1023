"""The shipped default model on the project's synthetic phantom (no external data needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cardioseg.data.synthetic import PhantomConfig, make_phantom
from cardioseg.evaluation.metrics import compute_metrics
from cardioseg.models import PACKAGED_MODELS, default_checkpoint_path, resolve_checkpoint


@pytest.fixture(scope="module", params=sorted(PACKAGED_MODELS))
def segmenter(request):
    from cardioseg.inference import Segmenter

    assert resolve_checkpoint(request.param).exists(), "shipped weights missing from the package"
    return Segmenter(request.param)


@pytest.mark.parametrize("vendor", ["siemens", "philips", "ge"])
def test_shipped_model_segments_phantom(segmenter, vendor):
    """Trained on real ACDC only, each packaged model segments the vendor-styled phantom
    (Dice >= 0.80)."""
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


def test_packaged_models_by_name(tmp_path, monkeypatch):
    """Names resolve to distinct packaged files; a file of that name wins; unknown names fail."""
    from cardioseg.errors import CardiosegError
    from cardioseg.models import load_checkpoint

    assert resolve_checkpoint(None) == resolve_checkpoint("default") == default_checkpoint_path()
    files = {name: resolve_checkpoint(name) for name in PACKAGED_MODELS}
    assert len(set(files.values())) == len(files)
    for path in files.values():
        assert path.is_file() and path.stat().st_size < 5e6
    contrast = load_checkpoint("contrast")["config"]["train"]
    default = load_checkpoint("default")["config"]["train"]
    assert contrast["extra_augmentation"] and not default.get("extra_augmentation")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "contrast").write_text("x")
    assert resolve_checkpoint("contrast") == Path("contrast")
    with pytest.raises(CardiosegError, match="packaged models: contrast, default"):
        load_checkpoint(tmp_path / "nonexistent")
