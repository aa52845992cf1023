"""Hand-computed checks of the evaluation metrics and the accumulator."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest

from cardioseg.evaluation import (
    MetricAccumulator,
    compute_metrics,
    compute_overlap,
    compute_surface_distances,
)


def _cube(shape, lo, hi) -> np.ndarray:
    m = np.zeros(shape, bool)
    m[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))] = True
    return m


# --- overlap -------------------------------------------------------------------------------------


def test_overlap_hand_computed_2d():
    pred = np.zeros((3, 4), np.uint8)
    ref = np.zeros((3, 4), np.uint8)
    pred[0, 0:4] = 2  # 4 voxels
    ref[0, 1:4] = 2  # 3 of them overlap
    ref[1, 0:3] = 2  # 6 voxels in total
    m = compute_overlap(pred, ref, 2)
    assert m["dice"] == pytest.approx(0.6)
    assert m["jaccard"] == pytest.approx(3 / 7)
    assert m["precision"] == pytest.approx(3 / 4)
    assert m["recall"] == pytest.approx(3 / 6)
    # Other labels are ignored: both empty for label 1.
    assert compute_overlap(pred, ref, 1)["dice"] == 1.0


def test_overlap_empty_conventions():
    empty = np.zeros((2, 2, 2), np.uint8)
    full = np.ones((2, 2, 2), np.uint8)
    both = compute_overlap(empty, empty, 1)
    assert both == {"dice": 1.0, "jaccard": 1.0, "precision": 1.0, "recall": 1.0}
    missed = compute_overlap(empty, full, 1)
    assert missed["dice"] == 0.0 and missed["jaccard"] == 0.0 and missed["recall"] == 0.0
    assert math.isnan(missed["precision"])
    spurious = compute_overlap(full, empty, 1)
    assert spurious["dice"] == 0.0 and spurious["precision"] == 0.0
    assert math.isnan(spurious["recall"])


def test_overlap_shape_mismatch():
    with pytest.raises(ValueError):
        compute_overlap(np.zeros((2, 2)), np.zeros((2, 3)), 1)


# --- surface distances ---------------------------------------------------------------------------


def test_cubes_offset_along_z_anisotropic():
    a = _cube((8, 8, 10), (1, 1, 2), (6, 6, 5))
    b = _cube((8, 8, 10), (1, 1, 3), (6, 6, 6))
    d = compute_surface_distances(a, b, (1.0, 1.0, 10.0))
    assert d["hd"] == pytest.approx(10.0)
    # 25 of the 66 surface voxels of each cube are 10 mm away: above the 5 % tail.
    assert d["hd95"] == pytest.approx(10.0)
    # Same masks, isotropic spacing: the offset is now 1 mm.
    assert compute_surface_distances(a, b, (1.0, 1.0, 1.0))["hd"] == pytest.approx(1.0)


def test_single_voxels_anisotropic_2d_and_3d():
    a = np.zeros((1, 1, 2), bool)
    b = a.copy()
    a[0, 0, 0], b[0, 0, 1] = True, True
    d = compute_surface_distances(a, b, (1.25, 1.25, 10.0))
    assert d == pytest.approx({"hd": 10.0, "hd95": 10.0, "assd": 10.0})
    p = np.zeros((4, 5), bool)
    r = p.copy()
    p[0, 0], r[3, 4] = True, True
    assert compute_surface_distances(p, r, (1.0, 1.0))["hd"] == pytest.approx(5.0)
    assert compute_surface_distances(p, r, (2.0, 0.5))["hd"] == pytest.approx(math.sqrt(40.0))


def test_hd95_is_max_of_directed_percentiles_and_assd_pooled():
    pred = np.zeros((3, 4), bool)
    ref = pred.copy()
    pred[1, 1:3] = True  # two pixels, both on the surface
    ref[1, 1] = True
    d = compute_surface_distances(pred, ref, (1.0, 1.0))
    # pred->ref: [0, 1]; ref->pred: [0]
    assert d["hd"] == pytest.approx(1.0)
    assert d["hd95"] == pytest.approx(0.95)  # max(p95([0, 1]), p95([0])); pooled p95 would be 0.9
    assert d["assd"] == pytest.approx(1 / 3)  # mean of pooled [0, 1, 0]


def test_array_border_voxels_are_surface():
    full = np.ones((3, 3, 3), bool)
    centre = np.zeros((3, 3, 3), bool)
    centre[1, 1, 1] = True
    d = compute_surface_distances(full, centre, (1.0, 1.0, 1.0))
    # 26 border voxels: 6 faces at 1, 12 edges at sqrt(2), 8 corners at sqrt(3); centre->border 1.
    assert d["hd"] == pytest.approx(math.sqrt(3))
    assert d["assd"] == pytest.approx((6 + 12 * math.sqrt(2) + 8 * math.sqrt(3) + 1) / 27)


def test_identical_masks_zero_distance():
    m = _cube((6, 6, 4), (1, 1, 1), (5, 4, 3))
    d = compute_surface_distances(m, m, (1.25, 1.25, 10.0))
    assert d == {"hd": 0.0, "hd95": 0.0, "assd": 0.0}


def test_surface_empty_conventions_and_validation():
    empty = np.zeros((3, 3, 3), bool)
    one = empty.copy()
    one[1, 1, 1] = True
    assert compute_surface_distances(empty, empty, (1, 1, 1)) == {
        "hd": 0.0,
        "hd95": 0.0,
        "assd": 0.0,
    }
    for a, b in ((empty, one), (one, empty)):
        assert all(math.isnan(v) for v in compute_surface_distances(a, b, (1, 1, 1)).values())
    with pytest.raises(ValueError):
        compute_surface_distances(one, one, (1.0, 1.0))
    with pytest.raises(ValueError):
        compute_surface_distances(one, one, (1.0, 0.0, 1.0))


# --- compute_metrics -----------------------------------------------------------------------------


def test_compute_metrics_keys_volume_and_mean_dice():
    ref = np.zeros((6, 6, 3), np.uint8)
    ref[1:3, 1:3, :] = 1  # 12 LV voxels
    ref[3:5, 1:3, :] = 2  # 12 MYO voxels
    pred = ref.copy()
    pred[3:5, 1:3, 2] = 0  # MYO loses 4 voxels: dice 2*8/20
    m = compute_metrics(pred, ref, (2.0, 2.0, 5.0))
    for s in ("LV", "MYO", "RV"):
        for k in (
            "dice",
            "jaccard",
            "precision",
            "recall",
            "hd",
            "hd95",
            "assd",
            "vol_pred_ml",
            "vol_ref_ml",
        ):
            assert isinstance(m[f"{s}_{k}"], float)
    assert m["LV_dice"] == 1.0 and m["LV_hd"] == 0.0
    assert m["LV_vol_ref_ml"] == pytest.approx(12 * 20 / 1000)
    assert m["MYO_vol_pred_ml"] == pytest.approx(8 * 20 / 1000)
    assert m["MYO_dice"] == pytest.approx(0.8)
    assert m["MYO_hd"] == pytest.approx(5.0)  # the removed slice is one 5 mm step away
    assert m["RV_dice"] == 1.0 and m["RV_hd95"] == 0.0  # absent in both
    assert m["mean_dice"] == pytest.approx((1.0 + 0.8 + 1.0) / 3)


def test_compute_metrics_custom_labels_and_validation():
    a = np.zeros((4, 4), np.uint8)
    a[1, 1] = 5
    m = compute_metrics(a, a, (1.0, 1.0), labels={"X": 5})
    assert set(m) == {
        "X_dice",
        "X_jaccard",
        "X_precision",
        "X_recall",
        "X_hd",
        "X_hd95",
        "X_assd",
        "X_vol_pred_ml",
        "X_vol_ref_ml",
        "mean_dice",
    }
    with pytest.raises(ValueError):
        compute_metrics(a, np.zeros((4, 5), np.uint8), (1.0, 1.0))
    with pytest.raises(ValueError):
        compute_metrics(a, a, (1.0, -1.0))


# --- accumulator ---------------------------------------------------------------------------------


def _filled() -> MetricAccumulator:
    acc = MetricAccumulator()
    acc.add("a_ED", {"LV_dice": 0.9, "LV_hd95": 2.0, "mean_dice": 0.9}, phase="ED", vendor="A")
    acc.add("a_ES", {"LV_dice": 0.7, "LV_hd95": 4.0, "mean_dice": 0.7}, phase="ES", vendor="A")
    acc.add(
        "b_ED",
        {"LV_dice": 0.8, "LV_hd95": float("nan"), "mean_dice": 0.8},
        phase="ED",
        vendor="Siemens",
    )
    return acc


def test_accumulator_summary_mean_std_per_group():
    acc = _filled()
    (overall,) = acc.summary()
    assert overall["n"] == 3
    assert overall["LV_dice_mean"] == pytest.approx(0.8)
    # sample SD (ddof=1) by hand: deviations 0.1, -0.1, 0 -> sqrt(0.02 / 2) = 0.1
    assert overall["LV_dice_std"] == pytest.approx(0.1)
    assert overall["LV_hd95_mean"] == pytest.approx(3.0)  # nan skipped
    # HD95 2 and 4: sqrt((1 + 1) / 1); 2 finite values of 3 cases
    assert overall["LV_hd95_std"] == pytest.approx(math.sqrt(2.0))
    assert (overall["LV_hd95_n"], overall["LV_dice_n"]) == (2, 3)
    by_phase = {g["phase"]: g for g in acc.summary(["phase"])}
    assert by_phase["ED"]["n"] == 2 and by_phase["ES"]["n"] == 1
    assert by_phase["ED"]["LV_dice_mean"] == pytest.approx(0.85)
    assert by_phase["ED"]["LV_dice_std"] == pytest.approx(math.sqrt(0.005))  # 0.05 * sqrt(2)
    assert math.isnan(by_phase["ES"]["LV_dice_std"])  # one case: no spread
    assert by_phase["ED"]["LV_hd95_mean"] == pytest.approx(2.0)
    assert math.isnan(acc.summary(["vendor"])[1]["LV_hd95_mean"])  # Siemens: only nan


def test_accumulator_rejects_key_clash():
    acc = MetricAccumulator()
    with pytest.raises(ValueError):
        acc.add("x", {"phase": 1.0}, phase="ED")


def test_accumulator_markdown(tmp_path):
    acc = _filled()
    path = acc.to_markdown(tmp_path / "out" / "summary.md", by=["phase", "vendor", "centre"])
    text = path.read_text(encoding="utf-8")
    assert "| group | n | LV Dice | LV HD95 (mm) | Mean Dice |" in text
    assert "## By phase" in text and "## By vendor" in text
    assert "## By centre" not in text  # no row has a centre
    for name in ("ED", "ES", "Siemens"):
        assert f"| {name} |" in text
    assert "| all | 3 | 0.800 ± 0.100 | 3.00 ± 1.41 (1 without) |" in text  # sample SD
    assert "| Siemens | 1 | 0.800 | n/a (1 without) |" in text  # one case: no SD
    assert "mean ± SD over cases (sample SD" in text
    assert not list((tmp_path / "out").glob(".*tmp*"))  # atomic write left no temp file


def test_accumulator_csv_round_trip(tmp_path):
    acc = _filled()
    path = acc.to_csv(tmp_path / "metrics.csv")
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["case_id"] for r in rows] == ["a_ED", "a_ES", "b_ED"]
    assert list(rows[0]) == ["case_id", "phase", "vendor", "LV_dice", "LV_hd95", "mean_dice"]
    assert rows[2]["vendor"] == "Siemens"
    assert float(rows[1]["LV_dice"]) == pytest.approx(0.7)
    assert math.isnan(float(rows[2]["LV_hd95"]))
    assert len(acc.rows()) == 3 and acc.rows()[0]["phase"] == "ED"


def test_evaluate_records_shows_progress_only_when_asked(tmp_path, capsys):
    from conftest import disc_labels, image_from_labels, write_nifti

    from cardioseg.data.datasets import discover
    from cardioseg.evaluation.runner import evaluate_records

    lab = disc_labels()
    for i in range(2):
        write_nifti(tmp_path / "ds" / f"c{i}.nii.gz", image_from_labels(lab, seed=i))
        write_nifti(tmp_path / "ds" / f"c{i}_gt.nii.gz", lab)
    records = discover(tmp_path / "ds", "folder")
    acc = evaluate_records(records, predict=lambda v, p: lab, progress=True)
    assert len(acc) == 2 and "cases" in capsys.readouterr().err
    evaluate_records(records, predict=lambda v, p: lab)
    assert capsys.readouterr().err == ""
