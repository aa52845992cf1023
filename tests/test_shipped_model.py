"""The shipped default model on the project's synthetic phantom (no external data needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cardioseg.data.synthetic import PhantomConfig, make_phantom
from cardioseg.evaluation.metrics import compute_metrics
from cardioseg.models import (
    PACKAGED_ENSEMBLES,
    PACKAGED_MODELS,
    checkpoint_members,
    default_checkpoint_path,
    resolve_checkpoint,
)


@pytest.fixture(scope="module", params=sorted(PACKAGED_MODELS) + sorted(PACKAGED_ENSEMBLES))
def segmenter(request):
    from cardioseg.inference import Segmenter

    for path in checkpoint_members(request.param):
        assert path.exists(), "shipped weights missing from the package"
    return Segmenter(request.param)


@pytest.mark.parametrize("vendor", ["siemens", "philips", "ge"])
def test_shipped_model_segments_phantom(segmenter, vendor):
    """Trained on real ACDC only, each packaged model (and ensemble) segments the
    vendor-styled phantom (Dice >= 0.80)."""
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
    with pytest.raises(
        CardiosegError, match="packaged models: contrast, default, v3; .*: ensemble"
    ):
        load_checkpoint(tmp_path / "nonexistent")


def test_packaged_ensemble_averages_its_members(tmp_path, monkeypatch):
    """``ensemble`` stands for its packaged members, its output is their mean, it cannot be
    loaded as one checkpoint, and a local file of that name still wins."""
    import torch

    from cardioseg.cli.main import MODEL_HELP
    from cardioseg.errors import CardiosegError
    from cardioseg.inference import Segmenter
    from cardioseg.models import load_checkpoint

    for name in [*PACKAGED_MODELS, *PACKAGED_ENSEMBLES]:
        assert name in MODEL_HELP
    members = PACKAGED_ENSEMBLES["ensemble"]
    assert checkpoint_members("ensemble") == [resolve_checkpoint(m) for m in members]
    assert len(checkpoint_members(["default", "ensemble"])) == 1 + len(members)
    ens = Segmenter("ensemble", tta=False)
    assert len(ens.models) == len(members)
    x = torch.from_numpy(np.random.default_rng(0).normal(size=(2, 1, 96, 96)).astype(np.float32))
    singles = [Segmenter(m, tta=False)._forward(x) for m in members]
    torch.testing.assert_close(ens._forward(x), sum(singles) / len(singles))
    with pytest.raises(CardiosegError, match="ensemble"):
        load_checkpoint("ensemble")
    with pytest.raises(ValueError, match="ensemble"):
        Segmenter("ensemble", adaptation="tent")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ensemble").write_text("x")
    assert checkpoint_members("ensemble") == [Path("ensemble")]


def test_analysis_shares_one_window_and_measures_the_tta_disagreement(tmp_path):
    """``analyze_study`` (the shipped model, a phantom cine) finds the heart window once for
    the whole study, the ED/ES pass with test-time augmentation included, and passes the
    disagreement of its test-time predictions to the QC, which reports it per study and per
    slice."""
    import nibabel as nib

    from cardioseg.clinical.analysis import analyze_study
    from cardioseg.data.synthetic import make_cine
    from cardioseg.inference import Segmenter

    cine = make_cine(PhantomConfig(seed=5, n_slices=6), n_frames=4)
    path = tmp_path / "cine.nii.gz"
    nib.save(nib.Nifti1Image(cine.image.astype(np.float32), cine.affine), str(path))
    seg = Segmenter(roi=True)
    probes = []
    find = seg._heart_window

    def spy(x):
        probes.append(tuple(x.shape))
        return find(x)

    seg._heart_window = spy
    report = analyze_study(tmp_path / "out", study=path, segmenter=seg, write_pdf=False)
    assert len(probes) == 1
    assert report["meta"]["heart_window"] == {"window": 4 + 2, "full": 0, "fallback": 0}
    qc = report["qc"]
    assert 0.0 <= qc["metrics"]["disagreement"] < 1.0
    measured = [r for r in qc["per_slice"] if r["disagreement"] is not None]
    assert {r["phase"] for r in measured} == {"ED", "ES"}
    assert max(r["disagreement"] for r in measured) > 0.0
    # the maps are written next to the masks, in their geometry
    mask = nib.load(str(tmp_path / "out" / "mask_ED.nii.gz"))
    for phase in ("ED", "ES"):
        spread = nib.load(str(tmp_path / "out" / f"disagreement_{phase}.nii.gz"))
        assert spread.shape == mask.shape
        np.testing.assert_allclose(spread.affine, mask.affine, atol=1e-5)
        values = np.asarray(spread.dataobj)
        assert 0.0 <= values.min() and 0.0 < values.max() <= 1.0
    # ... and shown in the report's overlay montage
    html = (tmp_path / "out" / "report.html").read_text()
    assert "Yellow: where the test-time predictions" in html
