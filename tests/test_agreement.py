"""Agreement statistics and the agreement command on tiny synthetic ED/ES pairs."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import disc_labels, image_from_labels, write_nifti
from typer.testing import CliRunner

from cardioseg.cli.main import app
from cardioseg.evaluation.agreement import agreement_stats


def test_agreement_stats_by_hand():
    s = agreement_stats(np.array([10.0, 20.0, 33.0, 41.0]), np.array([12.0, 18.0, 30.0, 40.0]))
    d = np.array([-2.0, 2.0, 3.0, 1.0])
    assert s["n"] == 4 and s["bias"] == pytest.approx(1.0)
    assert s["sd"] == pytest.approx(d.std(ddof=1))
    assert s["loa_high"] == pytest.approx(1.0 + 1.96 * d.std(ddof=1))
    assert s["mae"] == pytest.approx(2.0) and s["median_ae"] == pytest.approx(2.0)
    assert 0.9 < s["r"] <= 1.0
    assert agreement_stats(np.array([np.nan]), np.array([1.0]))["n"] == 0


def test_agreement_stats_bias_confidence_interval_and_pearson():
    """The bias's 95 % CI is the one-sample t interval of the differences (scipy's own t test
    here), r is Pearson's (scipy), and under three pairs r is not given."""
    from scipy import stats

    pred = np.array([101.0, 95.0, 130.0, 88.0, 142.0, 120.0])
    ref = np.array([98.0, 97.0, 121.0, 85.0, 140.0, 111.0])
    s = agreement_stats(pred, ref)
    ci = stats.ttest_1samp(pred - ref, 0.0).confidence_interval(0.95)
    assert (s["bias_ci_low"], s["bias_ci_high"]) == pytest.approx((ci.low, ci.high))
    assert s["bias"] == pytest.approx(4.0)  # (3 - 2 + 9 + 3 + 2 + 9) / 6
    assert s["r"] == pytest.approx(stats.pearsonr(pred, ref)[0])
    two = agreement_stats(pred[:2], ref[:2])
    assert np.isnan(two["r"]) and np.isfinite(two["bias_ci_low"])
    one = agreement_stats(pred[:1], ref[:1])
    assert np.isnan(one["bias_ci_low"]) and np.isnan(one["bias_ci_high"])


def test_agreement_command(tmp_path):
    ed = disc_labels((48, 40, 6), r_lv=9, r_myo=12)
    es = disc_labels((48, 40, 6), r_lv=6, r_myo=10)
    for ph, lab in (("ED", ed), ("ES", es)):
        write_nifti(tmp_path / "ds" / f"s1_{ph}.nii.gz", image_from_labels(lab))
        write_nifti(tmp_path / "ds" / f"s1_{ph}_gt.nii.gz", lab)
        write_nifti(tmp_path / "pred" / f"s1_{ph}.nii.gz", lab)
    res = CliRunner().invoke(
        app,
        [
            "agreement",
            "--dataset",
            str(tmp_path / "ds"),
            "--predictions",
            str(tmp_path / "pred"),
            "-o",
            str(tmp_path / "ag"),
        ],
    )
    assert res.exit_code == 0, res.output
    text = (tmp_path / "ag" / "agreement.md").read_text()
    assert "| lv_ef_pct | 1 | +0.0 |" in text  # identical labels: zero bias
    assert (tmp_path / "ag" / "agreement.png").stat().st_size > 1000
    # a figure for a paper: a vector copy, a PNG of at least 150 dpi, the statistics defined
    from PIL import Image

    with Image.open(tmp_path / "ag" / "agreement.png") as im:
        assert min(im.info["dpi"]) >= 150, im.info
    assert (tmp_path / "ag" / "agreement.pdf").read_bytes().startswith(b"%PDF")
    assert "limits of agreement: bias ± 1.96 SD of the differences (sample SD" in text
    assert "| index | n | bias | 95 % limits of agreement | bias 95 % CI | r |" in text
    assert "| lv_ef_pct | 1 | +0.0 | n/a (one subject) | n/a | n/a |" in text  # no r from one


@pytest.mark.parametrize(("flag", "tta"), [([], False), (["--tta"], True)])
def test_agreement_runs_the_model_with_or_without_tta(tmp_path, monkeypatch, flag, tta):
    """Without ``--predictions`` the command segments with the model; ``--tta`` segments as
    ``analyze`` does its ED and ES frames (the indices it reports)."""
    import types

    import cardioseg.inference

    lab = disc_labels((48, 40, 6), r_lv=9, r_myo=12)
    for ph in ("ED", "ES"):
        write_nifti(tmp_path / "ds" / f"s1_{ph}.nii.gz", image_from_labels(lab))
        write_nifti(tmp_path / "ds" / f"s1_{ph}_gt.nii.gz", lab)
    built = []

    class Recorder:
        def __init__(self, checkpoint=None, **options):
            built.append(options)

        def predict(self, volume, properties):
            return types.SimpleNamespace(labels=lab)

    monkeypatch.setattr(cardioseg.inference, "Segmenter", Recorder)
    args = ["agreement", "--dataset", str(tmp_path / "ds"), "-o", str(tmp_path / "ag"), *flag]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert built == [{"roi": None, "tta": tta}]
    assert "| lv_edv_ml | 1 | +0.0 |" in (tmp_path / "ag" / "agreement.md").read_text()


def test_agreement_on_analyze_batch_reports(tmp_path):
    """``--analyzed`` compares the indices the reports give (what ``analyze`` tells the reader)
    with those of the reference labels; subjects without a report are left out."""
    import json

    from cardioseg.clinical.indices import compute_indices

    ed = disc_labels((48, 40, 6), r_lv=9, r_myo=12)
    es = disc_labels((48, 40, 6), r_lv=6, r_myo=10)
    for subject in ("s1", "s2"):
        for ph, lab in (("ED", ed), ("ES", es)):
            write_nifti(tmp_path / "ds" / f"{subject}_{ph}.nii.gz", image_from_labels(lab))
            write_nifti(tmp_path / "ds" / f"{subject}_{ph}_gt.nii.gz", lab)
    reference = compute_indices(ed, es, (1.0, 1.0, 1.0))
    report = {k: v for k, v in reference.items() if isinstance(v, float)}
    report["lv_edv_ml"] += 5.0  # the report over-estimates LVEDV by 5 mL
    (tmp_path / "batch" / "s1").mkdir(parents=True)
    (tmp_path / "batch" / "s1" / "report.json").write_text(json.dumps(report))
    base = ["agreement", "--dataset", str(tmp_path / "ds"), "-o", str(tmp_path / "ag")]
    res = CliRunner().invoke(app, [*base, "--analyzed", str(tmp_path / "batch")])
    assert res.exit_code == 0, res.output
    text = (tmp_path / "ag" / "agreement.md").read_text()
    assert "1 subjects" in text  # s2 has no report
    assert "| lv_edv_ml | 1 | +5.0 |" in text and "| lv_esv_ml | 1 | +0.0 |" in text
    res = CliRunner().invoke(app, [*base, "--analyzed", str(tmp_path / "nothing")])
    assert res.exit_code != 0 and "not a folder of analyze-batch results" in res.output


def _pair_dataset(root, subjects=("s1", "s2")):
    """Reference ED/ES pairs, and the same labels as predictions in the ACDC convention."""
    for i, subject in enumerate(subjects):
        ed = disc_labels((48, 40, 6), r_lv=9 + i, r_myo=12 + i)
        es = disc_labels((48, 40, 6), r_lv=6 + i, r_myo=10 + i)
        for ph, lab in (("ED", ed), ("ES", es)):
            write_nifti(root / "ds" / f"{subject}_{ph}.nii.gz", image_from_labels(lab))
            write_nifti(root / "ds" / f"{subject}_{ph}_gt.nii.gz", lab)
            acdc = np.where(lab == 1, 3, np.where(lab == 3, 1, lab)).astype(np.uint8)  # LV 3, RV 1
            write_nifti(root / "acdc" / f"{subject}_{ph}.nii.gz", acdc)


def test_agreement_prediction_labels_geometry_and_missing_subjects(tmp_path):
    _pair_dataset(tmp_path)
    base = ["agreement", "--dataset", str(tmp_path / "ds"), "--predictions", str(tmp_path / "acdc")]
    res = CliRunner().invoke(app, [*base, "--prediction-labels", "acdc", "-o", str(tmp_path / "a")])
    assert res.exit_code == 0, res.output
    assert "| lv_edv_ml | 2 | +0.0 |" in (tmp_path / "a" / "agreement.md").read_text()
    # one subject's prediction missing: left out and named, the other one measured
    (tmp_path / "acdc" / "s2_ES.nii.gz").unlink()
    res = CliRunner().invoke(app, [*base, "--prediction-labels", "acdc", "-o", str(tmp_path / "b")])
    assert res.exit_code == 0, res.output
    assert "1 subject(s) without predictions left out: s2" in res.output
    text = (tmp_path / "b" / "agreement.md").read_text()
    assert "| lv_edv_ml | 1 | +0.0 | n/a (one subject) |" in text
    # a prediction on another grid is refused, not measured with the image's voxel size
    half = np.zeros((24, 20, 6), np.uint8)
    write_nifti(tmp_path / "acdc" / "s1_ED.nii.gz", half, np.diag([2.0, 2.0, 1.0, 1.0]))
    res = CliRunner().invoke(app, [*base, "--prediction-labels", "acdc", "-o", str(tmp_path / "c")])
    assert res.exit_code != 0 and "s1_ED.nii.gz" in res.output and "does not match" in res.output
    res = CliRunner().invoke(app, [*base, "--prediction-labels", "nope", "-o", str(tmp_path / "d")])
    assert res.exit_code != 0 and "unknown --prediction-labels 'nope'" in res.output


def test_agreement_stats_of_one_pair_have_no_limits():
    s = agreement_stats(np.array([5.0]), np.array([3.0]))
    assert s["bias"] == 2.0 and np.isnan(s["loa_low"]) and np.isnan(s["loa_high"])


def test_agreement_4d_predictions_must_be_4d_on_the_image_grid(tmp_path):
    """M&Ms-style 4D files: a prediction must be 4D with the image's affine (a 3D file would be
    used for both phases; a shifted one measured on the wrong place)."""
    ed = disc_labels((48, 40, 6), r_lv=9, r_myo=12)
    es = disc_labels((48, 40, 6), r_lv=6, r_myo=10)
    labels = np.stack([ed, es], -1).astype(np.uint8)
    image = np.stack([image_from_labels(ed), image_from_labels(es, seed=2)], -1)
    ds = tmp_path / "mnms"
    write_nifti(ds / "A1" / "A1_sa.nii.gz", image)
    mnms = np.where(labels == 1, 1, np.where(labels == 3, 3, labels)).astype(np.uint8)
    write_nifti(ds / "A1" / "A1_sa_gt.nii.gz", mnms)
    (ds / "mnms_info.csv").write_text("External code,VendorName,ED,ES\nA1,X,0,1\n")
    base = ["agreement", "--dataset", str(ds), "--layout", "mnms", "--predictions"]

    def run():
        return CliRunner().invoke(app, [*base, str(tmp_path / "pred"), "-o", str(tmp_path / "o")])

    write_nifti(tmp_path / "pred" / "A1_sa.nii.gz", labels)
    res = run()
    assert res.exit_code == 0, res.output
    assert "| lv_ef_pct | 1 | +0.0 |" in (tmp_path / "o" / "agreement.md").read_text()
    shifted = np.eye(4)
    shifted[0, 3] = 50.0
    write_nifti(tmp_path / "pred" / "A1_sa.nii.gz", labels, shifted)
    res = run()
    assert res.exit_code != 0 and "affine does not match" in res.output, res.output
    write_nifti(tmp_path / "pred" / "A1_sa.nii.gz", labels[..., 0])
    res = run()
    assert res.exit_code != 0 and "a 4D prediction" in res.output, res.output
