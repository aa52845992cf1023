"""Clinical layer: indices, ED/ES detection, quality control, reports and DICOM SEG export."""

from __future__ import annotations

import html
import json
import math
import re

import numpy as np
import pytest
from conftest import REPORT_KEYS, mr_cine_image

from cardioseg.clinical import (
    NORMAL_RANGES,
    QCResult,
    assess_quality,
    compare_to_normal,
    compute_indices,
    detect_ed_es,
    volume_curve,
    volume_ml,
    write_report,
)
from cardioseg.clinical.qc import (
    DISAGREEMENT_FAIL,
    DISAGREEMENT_REVIEW,
    MINOR_REVIEW_SCORE,
    REVIEW_SCORE,
    QCCalibration,
    calibration_for,
)
from cardioseg.errors import CardiosegError

SPACING = (1.5, 1.5, 8.0)
VOXEL_ML = 1.5 * 1.5 * 8.0 / 1000.0


# --- synthetic data -------------------------------------------------------------------------------


def synthetic_heart(
    shape: tuple[int, int, int] = (96, 96, 10),
    center: tuple[float, float] = (52.0, 48.0),
    r_lv: float = 14.0,
    r_rv: float = 14.0,
    es: bool = False,
) -> np.ndarray:
    """Concentric heart in slices 1..n-2: LV disc, MYO ring, RV crescent touching the ring.

    The apex (last two heart slices) tapers. At ES the LV shrinks, the wall thickens so that
    the myocardial volume stays about constant, and the RV shrinks.
    """
    nx, ny, nz = shape
    x, y = np.mgrid[:nx, :ny]
    cx, cy = center
    d = np.hypot(x - cx, y - cy)
    lab = np.zeros(shape, np.uint8)
    for z in range(1, nz - 1):
        taper = 1.0 if z < nz - 3 else (0.75 if z == nz - 3 else 0.5)
        r_ed = r_lv * taper
        r_endo = r_ed * (0.72 if es else 1.0)
        r_epi_ed = r_ed + 4
        r_epi = math.sqrt(r_endo**2 + r_epi_ed**2 - r_ed**2)
        rr = r_rv * taper
        d_rv = np.hypot(x - (cx - (r_epi_ed + rr - 8)), y - cy)
        sl = np.zeros((nx, ny), np.uint8)
        sl[(d_rv < rr * (0.8 if es else 1.0)) & (d >= r_epi)] = 3
        sl[d < r_epi] = 2
        sl[d < r_endo] = 1
        lab[:, :, z] = sl
    return lab


def image_for(label: np.ndarray, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    levels = np.array([20.0, 200.0, 60.0, 180.0], np.float32)
    return levels[label] + rng.normal(0, 5, label.shape).astype(np.float32)


@pytest.fixture(scope="module")
def heart_pair() -> tuple[np.ndarray, np.ndarray]:
    return synthetic_heart(), synthetic_heart(es=True)


# --- indices --------------------------------------------------------------------------------------


def test_indices_exact_on_boxes():
    ed = np.zeros((40, 40, 10), np.uint8)
    es = np.zeros_like(ed)
    ed[5:15, 5:15, 2:7] = 1  # 500 voxels LV
    ed[20:30, 5:15, 2:5] = 2  # 300 voxels MYO
    ed[5:15, 20:30, 2:6] = 3  # 400 voxels RV
    es[5:15, 5:15, 2:4] = 1  # 200 voxels LV
    es[5:15, 20:30, 2:4] = 3  # 200 voxels RV
    res = compute_indices(ed, es, SPACING, height_cm=180, weight_kg=80)
    assert res["lv_edv_ml"] == pytest.approx(500 * VOXEL_ML)
    assert res["lv_esv_ml"] == pytest.approx(200 * VOXEL_ML)
    assert res["lv_sv_ml"] == pytest.approx(300 * VOXEL_ML)
    assert res["lv_ef_pct"] == pytest.approx((500 - 200) / 500 * 100)
    assert res["rv_edv_ml"] == pytest.approx(400 * VOXEL_ML)
    assert res["rv_ef_pct"] == pytest.approx(50.0)
    assert res["lv_mass_g"] == pytest.approx(1.05 * 300 * VOXEL_ML)
    assert res["bsa_m2"] == pytest.approx(2.0)
    assert res["lvedv_index_ml_m2"] == pytest.approx(res["lv_edv_ml"] / 2.0)
    assert res["lv_mass_index_g_m2"] == pytest.approx(res["lv_mass_g"] / 2.0)
    assert volume_ml(ed, SPACING, 2) == pytest.approx(300 * VOXEL_ML)
    assert "bsa_m2" not in compute_indices(ed, es, SPACING)
    assert math.isnan(compute_indices(es * 0, es * 0, SPACING)["lv_ef_pct"])
    # with the heart rate: cardiac output = stroke volume x rate, index = output / BSA
    hr = compute_indices(ed, es, SPACING, height_cm=180, weight_kg=80, heart_rate_bpm=75.0)
    assert hr["heart_rate_bpm"] == 75.0
    assert hr["lv_co_l_min"] == pytest.approx(300 * VOXEL_ML * 75.0 / 1000.0)
    assert hr["lv_ci_l_min_m2"] == pytest.approx(hr["lv_co_l_min"] / 2.0)
    no_bsa = compute_indices(ed, es, SPACING, heart_rate_bpm=75.0)
    assert "lv_co_l_min" in no_bsa and "lv_ci_l_min_m2" not in no_bsa
    assert "lv_co_l_min" not in res


def test_volume_curve_and_ed_es_detection():
    frames = 20
    lv_ml = 100 + 40 * np.cos(2 * np.pi * (np.arange(frames) - 3) / frames)
    assert detect_ed_es(lv_ml) == (3, 13)
    # the same through labels: a box whose height (in voxels) follows the curve
    labels = np.zeros((20, 20, 80, frames), np.uint8)
    for t, v in enumerate(lv_ml):
        labels[5:10, 5:10, : int(round(v / 2)), t] = 1
    curve = volume_curve(labels, SPACING, 1)
    assert curve.shape == (frames,)
    assert curve[0] == pytest.approx(25 * round(lv_ml[0] / 2) * VOXEL_ML)
    assert detect_ed_es(curve) == (3, 13)
    with pytest.raises(ValueError):
        detect_ed_es([])


def test_indices_interpolate_a_missing_slice():
    """A slice the stack has no images for counts the mean area of its neighbours (the discs
    method's interpolation), not nothing (which cost Sunnybrook 18 % of its LVEDV)."""
    ed, es = synthetic_heart(), synthetic_heart(es=True)
    full = compute_indices(ed, es, SPACING, 175, 70)
    gap_ed, gap_es = ed.copy(), es.copy()
    gap_ed[:, :, 5] = gap_es[:, :, 5] = 0
    left_out = compute_indices(gap_ed, gap_es, SPACING, 175, 70)
    filled = compute_indices(gap_ed, gap_es, SPACING, 175, 70, missing_slices=[5])
    voxel = SPACING[0] * SPACING[1] * SPACING[2] / 1000
    per_slice = [np.count_nonzero(ed[:, :, k] == 1) for k in (4, 6)]
    assert filled["lv_edv_ml"] == pytest.approx(left_out["lv_edv_ml"] + np.mean(per_slice) * voxel)
    for key in ("lv_edv_ml", "lv_esv_ml", "rv_edv_ml", "lv_mass_g"):
        assert abs(filled[key] - full[key]) < abs(left_out[key] - full[key]), key
        assert abs(filled[key] - full[key]) < 0.03 * full[key], key
    # the indexed and derived values follow
    assert filled["lv_sv_ml"] == pytest.approx(filled["lv_edv_ml"] - filled["lv_esv_ml"])
    assert filled["lvedv_index_ml_m2"] == pytest.approx(filled["lv_edv_ml"] / filled["bsa_m2"])


def test_normal_ranges_and_flags():
    # LVEF: UK Biobank men 58 ± 5, women 61 ± 5 % (papillary muscles in the blood pool)
    assert NORMAL_RANGES["lv_ef_pct"] == (48.0, 71.0)
    # the thickest ED wall is shown with the hypertrophy criterion, not flagged (too noisy)
    assert compare_to_normal({"lv_max_wall_thickness_ed_mm": 22.0}) == {}
    flags = compare_to_normal({"lv_ef_pct": 35.0, "lv_edv_ml": 150.0, "rv_edv_ml": 400.0})
    assert flags == {"lv_ef_pct": "low", "lv_edv_ml": "normal", "rv_edv_ml": "high"}
    assert compare_to_normal({"lv_ef_pct": float("nan"), "unknown": 1.0}) == {}
    # a ventricle that was not found at one phase is not "low": none of its indices is flagged
    indices = compute_indices(*_pair_without_rv_at_es(), (1.5, 1.5, 8.0), 175, 80)
    assert indices["rv_esv_ml"] == 0 and indices["rv_ef_pct"] == 100
    flags = compare_to_normal(indices)
    assert not any(k.startswith("rv") for k in flags) and "lv_ef_pct" in flags
    # nearly empty (the QC's "not found", under 1 mL) counts the same
    flags = compare_to_normal({**indices, "rv_esv_ml": 0.4, "rv_ef_pct": 99.7})
    assert not any(k.startswith("rv") for k in flags)


def _pair_without_rv_at_es() -> tuple[np.ndarray, np.ndarray]:
    ed, es = synthetic_heart(), synthetic_heart(es=True)
    es[es == 3] = 0
    return ed, es


#: The sex-pooled ranges as published in the reports until sex-specific ranges were added: the
#: per-sex statistics must reproduce them exactly (their union).
POOLED_AS_SHIPPED = {
    "lv_edv_ml": (86.0, 214.0),
    "lv_esv_ml": (22.0, 82.0),
    "lv_sv_ml": (57.0, 144.0),
    "lv_ef_pct": (48.0, 71.0),
    "lv_mass_g": (56.0, 176.0),
    "lvedv_index_ml_m2": (56.0, 105.0),
    "lvesv_index_ml_m2": (14.0, 38.0),
    "lvsv_index_ml_m2": (38.0, 66.0),
    "lv_mass_index_g_m2": (28.0, 71.0),
    "rv_edv_ml": (78.0, 256.0),
    "rv_esv_ml": (20.0, 118.0),
    "rv_sv_ml": (54.0, 150.0),
    "rv_ef_pct": (47.0, 74.0),
    "rvedv_index_ml_m2": (48.0, 114.0),
}


def test_sex_specific_normal_ranges():
    from cardioseg.clinical.indices import normal_ranges, normalize_sex

    assert NORMAL_RANGES == normal_ranges() == normal_ranges(None) == POOLED_AS_SHIPPED
    men, women = normal_ranges("M"), normal_ranges("female")
    assert men["lv_edv_ml"] == (106.0, 214.0) and women["lv_edv_ml"] == (86.0, 178.0)
    assert men["rv_edv_ml"] == (124.0, 256.0) and women["rv_edv_ml"] == (78.0, 218.0)
    for k, (lo, hi) in POOLED_AS_SHIPPED.items():
        assert lo <= men[k][0] < men[k][1] <= hi and lo <= women[k][0] < women[k][1] <= hi
    # an LVEDV of 190 mL is normal for a man and too large for a woman
    assert compare_to_normal({"lv_edv_ml": 190.0}, sex="M") == {"lv_edv_ml": "normal"}
    assert compare_to_normal({"lv_edv_ml": 190.0}, sex="F") == {"lv_edv_ml": "high"}
    assert compare_to_normal({"lv_edv_ml": 95.0}, sex="M") == {"lv_edv_ml": "low"}
    assert [normalize_sex(v) for v in ("m", " F ", "female", "O", "", None, "x")] == [
        "M",
        "F",
        "F",
        None,
        None,
        None,
        None,
    ]


# --- quality control ------------------------------------------------------------------------------


def test_qc_clean_heart_is_ok(heart_pair):
    ed, es = heart_pair
    qc = assess_quality(ed, es, SPACING)
    assert isinstance(qc, QCResult)
    assert qc.status == "ok", qc.reasons
    assert qc.score < REVIEW_SCORE and qc.reasons == []
    mid = [r for r in qc.per_slice if r["phase"] == "ED" and r["slice"] == 4][0]
    assert mid["myo_enclosure"] == 1.0 and mid["rv_touches_myo"] is True
    assert len(qc.per_slice) == 2 * ed.shape[2]


def _gap(ed: np.ndarray, severe: bool = True) -> np.ndarray:
    """Cut the myocardium of slice 4: the whole lateral half (severe) or a short stretch."""
    bad = ed.copy()
    x, y = np.mgrid[: ed.shape[0], : ed.shape[1]]
    sl = bad[:, :, 4]
    cut = (x > 40) if severe else (x > 52) & (np.abs(y - 48) < 8)
    sl[cut & (sl == 2)] = 0
    return bad


def _fragment(ed: np.ndarray) -> np.ndarray:
    bad = ed.copy()
    bad[84:91, 84:91, 3] = 3
    return bad


def _lv_missing(ed: np.ndarray) -> np.ndarray:
    bad = ed.copy()
    sl = bad[:, :, 5]
    sl[sl == 1] = 0
    return bad


@pytest.mark.parametrize(
    ("breaker", "expected"),
    [
        (_gap, "does not enclose the LV"),
        (_fragment, "detached fragment"),
        (_lv_missing, "LV missing"),
        (None, "touches the image border"),
        (lambda ed: ed[..., :8], "apex may not be covered"),
    ],
    ids=["myo_gap", "far_fragment", "lv_missing", "border", "apex_cut"],
)
def test_qc_flags_broken_segmentations(heart_pair, breaker, expected):
    ed, es = heart_pair
    if breaker is None:  # shift the heart so that the RV runs into the image border
        ed = synthetic_heart(center=(28.0, 48.0))
        es = synthetic_heart(center=(28.0, 48.0), es=True)
    else:
        ed = breaker(ed)
        es = es[..., : ed.shape[2]]
    qc = assess_quality(ed, es, SPACING)
    assert qc.status in ("review", "fail")
    assert qc.score >= REVIEW_SCORE
    assert any(expected in r for r in qc.reasons), qc.reasons


def _without(label: np.ndarray, value: int) -> np.ndarray:
    out = label.copy()
    out[out == value] = 0
    return out


def _rv_nearly_gone(label: np.ndarray) -> np.ndarray:
    """An ES RV of 5 % of the ED one (RVEF about 95 %): more than a real heart empties (the
    remains are scattered, so the fragment checks may fail the study too)."""
    out = label.copy()
    rv = np.flatnonzero(synthetic_heart() == 3)
    keep = np.flatnonzero(out.ravel() == 3)[: max(60, rv.size // 20)]
    out[out == 3] = 0
    out.ravel()[keep] = 3
    return out


def _rv_grown(label: np.ndarray) -> np.ndarray:
    """The RV dilated into the background until it is larger than the given one."""
    from scipy import ndimage

    out = label.copy()
    out[ndimage.binary_dilation(label == 3, iterations=6) & (label == 0)] = 3
    return out


@pytest.mark.parametrize(
    ("phase", "breaker", "status", "expected"),
    [
        ("ES", lambda es: np.zeros_like(es), "fail", "no LV found at end-systole"),
        ("ES", lambda es: _without(es, 3), "review", "RV not found (or nearly empty) at end-sys"),
        ("ES", _rv_grown, "review", "RV end-systolic volume"),
        ("ED", lambda ed: _without(ed, 3), "review", "RV not found (or nearly empty) at end-dia"),
        ("ES", _rv_nearly_gone, ("review", "fail"), "RV ejection fraction 9"),
    ],
    ids=["es_empty", "rv_missing_es", "rv_esv_gt_edv", "rv_missing_ed", "rvef_over_90"],
)
def test_qc_checks_both_phases_and_the_rv(heart_pair, phase, breaker, status, expected):
    """A phase with nothing segmented fails; an RV missing at either phase, or larger at ES
    than at ED, asks for review (its EF would read 100 % or negative)."""
    ed, es = heart_pair
    ed, es = (breaker(ed), es) if phase == "ED" else (ed, breaker(es))
    qc = assess_quality(ed, es, SPACING)
    assert qc.status in ((status,) if isinstance(status, str) else status), qc.reasons
    assert any(r.startswith(expected) for r in qc.reasons), qc.reasons


def test_qc_asks_for_review_for_an_irregular_stack_or_a_missing_slice(heart_pair):
    """The masks' slice positions assume a regular stack: the DICOM loader's irregular gaps, or a
    slice with no images, must not pass as "ok"."""
    ed, es = heart_pair
    note = "irregular slice gaps (8.00, 8.00, 14.00 mm); the affine uses the median 8.00 mm"
    qc = assess_quality(ed, es, SPACING, irregular_stack=note)
    assert qc.status == "review"
    assert qc.reasons[0] == (
        f"{note}: the volumes weight each slice by its distance to its neighbours; the masks' "
        "slice positions assume the median spacing"
    )
    # as analyze gives it: the QC judges the stack with the gap filled by the nearest slice
    # (no split heart), the volumes come from the stack with the gap empty
    counted = {"ED": ed.copy(), "ES": es.copy()}
    for label in counted.values():
        label[:, :, 5] = 0
    qc = assess_quality(
        ed, es, SPACING, missing_slices=[5], excluded={"ED": [5], "ES": [5]}, counted=counted
    )
    assert qc.status == "review"
    assert qc.reasons[0] == (
        "no images at slice 5 (a gap in the stack): the volumes interpolate its area from the "
        "neighbouring slices"
    )
    gap_rows = [r for r in qc.per_slice if r["slice"] == 5]
    assert [r["flags"] for r in gap_rows] == [["no_images"]] * 2
    assert all(r["lv_mm2"] == 0 and r["mean_entropy"] is None for r in gap_rows)
    # no area change is measured across the gap: a jump from slice 4 to 6 is not a finding
    jump = {k: v.copy() for k, v in (("ED", ed), ("ES", es))}
    for label in jump.values():
        label[:, :, 6:][label[:, :, 6:] == 1] = 2  # the LV shrinks to nothing beyond the gap
    qc = assess_quality(
        jump["ED"], jump["ES"], SPACING, missing_slices=[5], excluded={"ED": [5], "ES": [5]}
    )
    assert not any("slices 5-6" in r for r in qc.reasons), qc.reasons


def test_qc_gap_reason_names_slice_and_fraction(heart_pair):
    qc = assess_quality(_gap(heart_pair[0]), heart_pair[1], SPACING)
    reason = [r for r in qc.reasons if "enclose" in r][0]
    assert reason.startswith("ED slice 4:") and "% of border" in reason


def test_qc_minor_notes_alone_do_not_ask_for_review(heart_pair):
    """A short myocardial gap on one slice is listed, but alone it is a minor note ..."""
    ed, es = heart_pair
    qc = assess_quality(_gap(ed, severe=False), es, SPACING)
    assert any("does not enclose the LV" in r for r in qc.reasons), qc.reasons
    assert qc.status == "ok" and 0 < qc.metrics["minor_score"] < MINOR_REVIEW_SCORE
    assert qc.metrics["major_score"] == 0 and qc.score == qc.metrics["minor_score"]
    # ... while the same gap on many slices adds up to a review
    bad = ed.copy()
    for z in range(2, 9):
        bad[..., z] = _gap(np.repeat(ed[..., 4:5], 5, axis=2), severe=False)[..., 4]
    qc = assess_quality(bad, es, SPACING)
    assert qc.status == "review" and qc.metrics["minor_score"] >= MINOR_REVIEW_SCORE


def test_qc_status_from_its_issues(heart_pair):
    """The status rule recomputed from a result's listed issues gives the result's status;
    leaving a kind out shows what it contributed."""
    from cardioseg.clinical.qc import status_from_issues

    ed, es = heart_pair
    spread = {"ED": np.full(ed.shape, 0.05, np.float32)}
    qc = assess_quality(_gap(ed, severe=False), es, SPACING, disagreement=spread)
    issues = [(i["kind"], i["weight"]) for i in qc.metrics["issues"]]
    assert status_from_issues(issues) == (
        qc.status,
        qc.metrics["major_score"],
        qc.metrics["minor_score"],
    )
    assert qc.status == "review"
    without = [(k, w) for k, w in issues if k != "disagreement_study"]
    assert status_from_issues(without)[0] == "ok"
    assert status_from_issues([("entropy_study", 0.8)])[0] == "fail"


def test_qc_uncertainty_from_probabilities(heart_pair):
    ed, es = heart_pair
    confident = np.stack([(ed == k).astype(np.float32) for k in range(4)])
    qc = assess_quality(ed, es, SPACING, probabilities={"ED": confident, "ES": None})
    assert qc.status == "ok" and qc.metrics["mean_entropy"] < 0.01
    assert qc.metrics["heart_entropy"] < 0.01
    flat = np.full((4, *ed.shape), 0.25, np.float32)
    qc = assess_quality(ed, es, SPACING, probabilities={"ED": flat})
    assert qc.status == "fail"
    assert qc.metrics["heart_entropy"] == pytest.approx(1.0, abs=1e-3)
    # uncertain only outside the predicted heart: the heart measure stays low, the band not
    edge = confident.copy()
    edge[:, ed == 0] = 0.25
    qc = assess_quality(ed, None, SPACING, probabilities=edge)
    assert qc.metrics["heart_entropy"] < 0.01 < qc.metrics["mean_entropy"]
    assert any("uncertain" in r for r in qc.reasons)
    with pytest.raises(ValueError):
        assess_quality(ed, es, SPACING, probabilities=flat[:, :10])
    # a model calibrated on its own held-out data passes its review threshold
    p = {"ED": confident}
    assert not any("uncertainty" in r for r in assess_quality(ed, es, SPACING, p).reasons)
    strict = assess_quality(ed, es, SPACING, p, calibration=QCCalibration(heart_entropy_review=0.0))
    assert strict.status == "review" and any("uncertainty" in r for r in strict.reasons)


def test_qc_disagreement_of_the_test_time_predictions(heart_pair):
    """A study whose test-time predictions disagree around the heart is sent to review (a
    major issue), more strongly the more they disagree; the threshold can be re-calibrated."""
    ed, es = heart_pair
    calm = {"ED": np.zeros(ed.shape, np.float32), "ES": np.zeros(es.shape, np.float32)}
    qc = assess_quality(ed, es, SPACING, disagreement=calm)
    assert qc.status == "ok" and qc.metrics["disagreement"] == 0.0
    # above the review level in ES only: the worst phase counts
    some = dict(calm, ES=np.full(es.shape, DISAGREEMENT_REVIEW * 1.5, np.float32))
    qc = assess_quality(ed, es, SPACING, disagreement=some)
    assert qc.status == "review" and qc.metrics["major_score"] >= REVIEW_SCORE
    assert qc.metrics["disagreement"] == pytest.approx(DISAGREEMENT_REVIEW * 1.5, abs=1e-4)
    assert any("disagree" in r for r in qc.reasons)
    rows = [r for r in qc.per_slice if r["phase"] == "ES" and r["lv_mm2"] > 0]
    assert rows and all(r["disagreement"] > 0 for r in rows)
    # only the heart and a band around it count: disagreement far away does not
    far = np.zeros(ed.shape, np.float32)
    far[:5, :5] = 1.0
    assert assess_quality(ed, None, SPACING, disagreement=far).status == "ok"
    # far above the fail level: a failed study
    wild = {"ED": np.full(ed.shape, DISAGREEMENT_FAIL * 2, np.float32)}
    assert assess_quality(ed, es, SPACING, disagreement=wild).status == "fail"
    lenient = assess_quality(
        ed, es, SPACING, disagreement=some, calibration=QCCalibration(disagreement_review=0.5)
    )
    assert lenient.status == "ok"
    with pytest.raises(ValueError, match="disagreement"):
        assess_quality(ed, es, SPACING, disagreement=np.zeros((4, 4, 4)))


def test_qc_uncertainty_reasons_speak_to_a_clinician(heart_pair):
    """The uncertainty reasons a report shows read "the test-time predictions disagree (mean
    disagreement 0.037 ...; 0.017 is exceeded by 1 in 10 held-out in-domain studies)" and
    "(mean entropy 0.16 ...)": words of the code and of machine learning. They say what was
    found in plain words, and what the score is compared with."""
    ed, es = heart_pair
    confident = np.stack([(ed == k).astype(np.float32) for k in range(4)])
    unsure = confident * 0.6 + 0.1  # every voxel 0.7 / 0.1 / 0.1 / 0.1: unsure everywhere
    spread = {"ED": np.full(ed.shape, DISAGREEMENT_REVIEW * 1.5, np.float32)}
    qc = assess_quality(
        ed,
        es,
        SPACING,
        probabilities={"ED": unsure},
        disagreement=spread,
        calibration=QCCalibration(heart_entropy_review=0.05),
    )
    kinds = {i["kind"] for i in qc.metrics["issues"]}
    assert {"entropy_study", "disagreement_study", "entropy_slice"} <= kinds
    jargon = ("entropy", "held-out", "in-domain", "test-time", "mean disagreement")
    texts = [r for r in qc.reasons if "uncertain" in r or "disagree" in r]
    assert len(texts) >= 3
    for text in texts:
        assert not [w for w in jargon if w in text], text
        assert re.search(r"score \d\.\d+", text), text  # a number is named as a score
    study = [t for t in texts if "1 in 10 studies" in t]
    assert len(study) == 2  # each study-level score with what it is compared with


def test_qc_calibration_per_model(heart_pair, tmp_path):
    """The packaged default model has its calibrated thresholds; a model with a ``.qc.json``
    next to it gets its own (the packaged contrast model and ensemble ship one); any other
    model gets the default's, and the QC says so without changing the status."""
    import json

    from cardioseg.models.checkpoint import checkpoint_members, default_checkpoint_path

    assert calibration_for([default_checkpoint_path()]) == QCCalibration()
    for name in ("contrast", "ensemble"):
        own = calibration_for(checkpoint_members(name))
        assert own.calibrated and own.heart_entropy_review != QCCalibration().heart_entropy_review
    other = calibration_for(checkpoint_members("v3"))
    assert not other.calibrated and "v3" in other.model
    assert other.heart_entropy_review == QCCalibration().heart_entropy_review
    assert not calibration_for(checkpoint_members(["default", "v3"])).calibrated
    assert not calibration_for(None).calibrated

    ckpt = tmp_path / "mine.pt"
    ckpt.write_bytes(b"")
    own = {"heart_entropy_review": 0.2, "disagreement_review": 0.03}
    (tmp_path / "mine.qc.json").write_text(json.dumps({**own, "disagreement_slice_note": 0.06}))
    mine = calibration_for([ckpt])
    assert mine.calibrated and mine.disagreement_slice_note == 0.06
    # an ensemble's calibration sits next to its first member, named after all members
    pair = [ckpt, tmp_path / "other" / "second.pt"]
    assert not calibration_for(pair).calibrated
    (tmp_path / "mine+second.qc.json").write_text(
        json.dumps({**own, "disagreement_slice_note": 0.07, "model": "mine + second"})
    )
    assert calibration_for(pair).calibrated and calibration_for(pair).model == "mine + second"
    (tmp_path / "mine.qc.json").write_text(json.dumps(own))  # the slice note is missing
    with pytest.raises(CardiosegError, match="mine.qc.json.*disagreement_slice_note"):
        calibration_for([ckpt])
    (tmp_path / "mine.qc.json").write_text("{not json")
    with pytest.raises(CardiosegError, match="invalid QC calibration"):
        calibration_for([ckpt])

    # the per-slice hint follows the model's own level; an uncalibrated model gets a note
    ed, es = heart_pair
    some = {"ED": np.full(ed.shape, 0.045, np.float32), "ES": np.zeros(es.shape, np.float32)}
    hinted = assess_quality(ed, es, SPACING, disagreement=some)
    assert any("disagreement" in r["flags"] for r in hinted.per_slice)
    assert hinted.metrics["calibration"]["calibrated"] is True
    assert not any("calibrated for" in r for r in hinted.reasons)
    quiet = assess_quality(ed, es, SPACING, disagreement=some, calibration=mine)
    assert not any("disagreement" in r["flags"] for r in quiet.per_slice)
    noted = assess_quality(ed, es, SPACING, disagreement=some, calibration=other)
    assert noted.status == hinted.status and noted.score == hinted.score
    assert noted.reasons[-1].startswith("the uncertainty thresholds were calibrated for")
    assert noted.metrics["calibration"]["calibrated"] is False


def test_report_heat_scale_follows_the_models_calibration(heart_pair):
    """The overlay's yellow saturates at twice the model's own per-slice hint level (an
    ensemble's disagreement runs higher), else at the default model's."""
    from cardioseg.clinical.report import _heat_max, _qc_dict

    ed, es = heart_pair
    own = QCCalibration(disagreement_slice_note=0.09)
    assert _heat_max(_qc_dict(assess_quality(ed, es, SPACING, calibration=own))) == 0.18
    default = 2 * QCCalibration().disagreement_slice_note
    assert _heat_max(_qc_dict(assess_quality(ed, es, SPACING))) == default
    assert _heat_max(_qc_dict(None)) == default


def test_qc_swapped_frames_fail(heart_pair):
    ed, es = heart_pair
    qc = assess_quality(es, ed, SPACING)
    assert qc.status == "fail"
    assert any("exceeds end-diastolic" in r for r in qc.reasons)


# --- report ---------------------------------------------------------------------------------------

REQUIRED_KEYS = REPORT_KEYS | {"normal_flags", "volume_curve", "software_version"}


def test_report_files(tmp_path, heart_pair):
    ed, es = _gap(heart_pair[0]), heart_pair[1]
    ed_crop, es_crop = ed[16:88, 12:84, 3:6], es[16:88, 12:84, 3:6]  # fast montage
    indices = compute_indices(ed, es, SPACING, 175, 70)
    qc = assess_quality(ed, es, SPACING)
    assert qc.status == "review"
    meta = {"PatientName": "Doe^Jane", "patient_id": "SECRET42", "vendor": "SIEMENS"}
    files = write_report(
        tmp_path / "out",
        indices,
        qc,
        curve={"lv_ml": [70.0, 60.0, 40.0, 55.0], "rv_ml": [60.0, 50.0, 45.0, 58.0]},
        ed_frame=0,
        es_frame=2,
        images={"ED": (image_for(ed_crop), ed_crop), "ES": (image_for(es_crop, 1), es_crop)},
        spacing=SPACING,
        meta=meta,
    )
    assert {"json", "html", "pdf", "overlay", "curve"} <= set(files)
    for path in files.values():
        assert path.exists() and path.stat().st_size > 0
    report = json.loads(files["json"].read_text())
    assert REQUIRED_KEYS <= set(report)
    assert {"status", "reasons", "score"} <= set(report["qc"])
    assert report["lv_ef_pct"] == pytest.approx(indices["lv_ef_pct"], abs=1e-3)
    assert report["qc"]["status"] == "review" and report["qc"]["reasons"] == qc.reasons
    assert report["ed_frame"] == 0 and report["es_frame"] == 2
    assert report["volume_curve"]["lv_ml"][2] == 40.0
    assert report["meta"] == {"vendor": "SIEMENS"}
    html_text = files["html"].read_text()
    assert f"{indices['lv_ef_pct']:.1f}" in html_text
    assert f'class="status">{qc.status}<' in html_text
    assert "does not enclose the LV" in html_text
    assert "data:image/png;base64," in html_text and "Research use only" in html_text
    assert files["pdf"].read_bytes().startswith(b"%PDF")
    for path in files.values():  # no identifiers anywhere
        data = path.read_bytes()
        assert b"Doe^Jane" not in data and b"SECRET42" not in data
    assert not list((tmp_path / "out").glob(".*")), "temporary files left behind"
    assert report["normal_ranges_for"] == "sex-pooled"
    assert "Normal range (adult, men or women)" in html_text
    assert "About the input" not in html_text  # no input warnings given


def test_report_shows_input_warnings_up_front(tmp_path):
    notes = ["the selected stack is a transverse plane, not the usual double-oblique short axis"]
    files = write_report(tmp_path, {"lv_ef_pct": 55.0}, None, meta={"warnings": notes})
    html_text = files["html"].read_text()
    box = html_text.index("About the input")
    assert html.escape(notes[0]) in html_text[box:]
    assert box < html_text.index("<h2>Indices</h2>")  # above the indices, not at the bottom
    assert files["pdf"].read_bytes().startswith(b"%PDF")


def test_report_with_sex_specific_ranges(tmp_path):
    from cardioseg.clinical.report import report_table

    indices = {"lv_edv_ml": 190.0, "lv_esv_ml": 70.0, "lv_sv_ml": 120.0, "lv_ef_pct": 63.2}
    written = {}
    for sex in ("F", "M", None):
        files = write_report(tmp_path / str(sex), indices, None, write_pdf=False, sex=sex)
        written[sex] = json.loads(files["json"].read_text()), files["html"].read_text()
    women, men = written["F"][0], written["M"][0]
    assert women["normal_ranges_for"] == "women" and men["normal_ranges_for"] == "men"
    assert women["normal_ranges"]["lv_edv_ml"]["high"] == 178.0
    assert men["normal_ranges"]["lv_edv_ml"]["high"] == 214.0
    assert women["normal_flags"]["lv_edv_ml"] == "high"
    assert men["normal_flags"]["lv_edv_ml"] == "normal"
    assert "Normal range (adult women)" in written["F"][1] and "86–178" in written["F"][1]
    # the web app's table of a stored report shows the report's own ranges
    rows, who = report_table(women)
    assert who == "adult women"
    assert [r["range"] for r in rows if r["key"] == "lv_edv_ml"] == ["86–178"]
    assert report_table(written[None][0])[1] == "adult, men or women"


def test_report_shows_where_the_predictions_disagree(tmp_path, heart_pair):
    """With disagreement maps the overlay montage shows them (in yellow) and the report says
    what the yellow means; without them it does not."""
    ed, es = heart_pair[0][16:88, 12:84, 3:6], heart_pair[1][16:88, 12:84, 3:6]
    images = {"ED": (image_for(ed), ed), "ES": (image_for(es, 1), es)}
    spread = np.zeros(ed.shape, np.float32)
    spread[20:40, 20:40] = 0.08
    common = {"images": images, "spacing": SPACING, "ed_frame": 0, "es_frame": 2}
    hint = "Yellow: where the test-time predictions"
    written = {}
    for name, maps in (("plain", None), ("yellow", {"ED": spread, "ES": spread})):
        qc = assess_quality(ed, es, SPACING, disagreement=maps)
        indices = compute_indices(ed, es, SPACING)
        written[name] = write_report(tmp_path / name, indices, qc, disagreement=maps, **common)
    from matplotlib.pyplot import imread

    plain, yellow = (imread(written[k]["overlay"])[..., :3] for k in ("plain", "yellow"))
    assert plain.shape == yellow.shape

    # yellow pixels (red and green high, blue low) appear only with the maps
    def n_yellow(img):
        return int(((img[..., 0] > 0.8) & (img[..., 1] > 0.6) & (img[..., 2] < 0.3)).sum())

    assert n_yellow(yellow) > n_yellow(plain) + 100
    assert hint in written["yellow"]["html"].read_text()
    assert hint not in written["plain"]["html"].read_text()
    assert written["yellow"]["pdf"].read_bytes().startswith(b"%PDF")


def test_report_patient_label_and_minimal_inputs(tmp_path):
    indices = {"lv_edv_ml": 150.0, "lv_esv_ml": 60.0, "lv_ef_pct": 60.0, "rv_ef_pct": float("nan")}
    qc = {"status": "review", "score": 0.4, "reasons": ["slice 3: something odd"]}
    files = write_report(
        tmp_path,
        indices,
        qc,
        ed_frame=1,
        es_frame=5,
        meta={"patient_label": "Study A"},
        write_pdf=False,
    )
    assert set(files) == {"json", "html"}
    report = json.loads(files["json"].read_text())
    assert report["patient_label"] == "Study A"
    assert report["rv_ef_pct"] is None and report["volume_curve"] is None
    html_text = files["html"].read_text()
    assert "Study A" in html_text and "slice 3: something odd" in html_text


# --- DICOM SEG ------------------------------------------------------------------------------------


def _mr_series(
    folder, rows: int, cols: int, n_slices: int, n_phases: int, series_per_slice: bool = False
) -> list[list]:
    """Tiny synthetic single-frame MR cine series written to ``folder``: files[k][t].

    ``series_per_slice`` stores every slice location as its own series (a Siemens habit).
    """
    from pydicom.uid import generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    study, series, frame_of_ref = generate_uid(), generate_uid(), generate_uid()
    files = []
    for k in range(n_slices):
        row = []
        if series_per_slice:
            series = generate_uid()
        for t in range(n_phases):
            ds = mr_cine_image(
                np.full((rows, cols), 100, np.uint16),
                k=k,
                t=t,
                n_phases=n_phases,
                study=study,
                series=series,
                frame_of_ref=frame_of_ref,
                pixel_spacing=1.5,
            )
            path = folder / f"img_{k}_{t}.dcm"
            ds.save_as(path, enforce_file_format=True)
            row.append(path)
        files.append(row)
    return files


def _check_seg(path, labels, files, phase):
    import highdicom as hd
    import pydicom

    uid_to_k = {
        pydicom.dcmread(f[phase], stop_before_pixels=True).SOPInstanceUID: k
        for k, f in enumerate(files)
    }
    seg = hd.seg.segread(path)
    assert len(seg.SegmentSequence) == 3
    assert [s.SegmentLabel for s in seg.SegmentSequence] == [
        "LV blood pool",
        "LV myocardium",
        "RV blood pool",
    ]
    pixels = seg.pixel_array.reshape(-1, *labels.shape[1::-1])
    checked = 0
    for i, item in enumerate(seg.PerFrameFunctionalGroupsSequence):
        sop = item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        number = item.SegmentIdentificationSequence[0].ReferencedSegmentNumber
        assert sop in uid_to_k, "frame references an image of another phase"
        expected = labels[:, :, uid_to_k[sop], phase].T == number
        np.testing.assert_array_equal(pixels[i].astype(bool), expected)
        checked += 1
    # every non-empty (slice, segment) of this phase is present
    n_expected = sum(
        int((labels[:, :, k, phase] == s).any()) for k in range(labels.shape[2]) for s in (1, 2, 3)
    )
    assert checked == n_expected > 0


def test_dicom_seg_round_trip(tmp_path):
    pytest.importorskip("highdicom")
    from cardioseg.clinical.dicom_seg import write_dicom_seg

    rows, cols, n_slices, n_phases = 20, 24, 3, 2
    files = _mr_series(tmp_path / "src", rows, cols, n_slices, n_phases)
    labels = np.zeros((cols, rows, n_slices, n_phases), np.uint8)  # [column, row, slice, phase]
    labels[3:12, 2:8, 0, 0] = 1  # asymmetric boxes catch a missing transpose
    labels[14:20, 10:18, 1, 0] = 2
    labels[5:9, 12:19, 2, 0] = 3
    labels[4:10, 3:7, :2, 1] = 1
    labels[15:22, 1:4, 1, 1] = 3
    out = write_dicom_seg(labels, files, tmp_path / "seg" / "segmentation.dcm")
    assert [p.name for p in out] == ["segmentation_t00.dcm", "segmentation_t01.dcm"]
    for t, path in enumerate(out):
        _check_seg(path, labels, files, t)
    assert not list((tmp_path / "seg").glob(".*")), "temporary files left behind"
    # a single phase (3D labels, flat file list) gives exactly the requested file
    single = write_dicom_seg(labels[..., 0], [f[0] for f in files], tmp_path / "one.dcm")
    assert single == [tmp_path / "one.dcm"]
    _check_seg(single[0], labels[..., :1], [[f[0]] for f in files], 0)


def test_dicom_seg_with_an_invalid_patient_sex(tmp_path):
    """A PatientSex outside M/F/O made highdicom refuse the SEG, with the value in the
    message (and so in the log): the SEG is written with it blank."""
    pytest.importorskip("highdicom")
    import pydicom

    from cardioseg.clinical.dicom_seg import write_dicom_seg

    files = _mr_series(tmp_path / "src", 16, 16, 2, 1)
    for row in files:
        ds = pydicom.dcmread(row[0])
        ds.PatientSex = "Zzqx"
        ds.save_as(row[0])
    labels = np.zeros((16, 16, 2, 1), np.uint8)
    labels[2:9, 3:7] = 1
    (out,) = write_dicom_seg(labels, files, tmp_path / "seg.dcm")
    assert pydicom.dcmread(out).PatientSex == ""


def test_dicom_seg_rejects_mismatched_grid(tmp_path):
    pytest.importorskip("highdicom")
    from cardioseg.clinical.dicom_seg import write_dicom_seg

    files = _mr_series(tmp_path / "src", 20, 24, 2, 1)
    labels = np.zeros((20, 24, 2, 1), np.uint8)  # rows/columns swapped
    labels[2:5, 2:5, 0, 0] = 1
    with pytest.raises(CardiosegError, match="rows x columns"):
        write_dicom_seg(labels, files, tmp_path / "bad.dcm")
    with pytest.raises(CardiosegError, match="no foreground"):
        write_dicom_seg(np.zeros((24, 20, 2, 1), np.uint8), files, tmp_path / "empty.dcm")
    assert not (tmp_path / "bad.dcm").exists()


def test_dicom_seg_one_instance_per_source_series(tmp_path):
    pytest.importorskip("highdicom")
    from cardioseg.clinical.dicom_seg import write_dicom_seg

    files = _mr_series(tmp_path / "src", 16, 16, 2, 2, series_per_slice=True)
    labels = np.zeros((16, 16, 2, 2), np.uint8)
    labels[2:9, 3:7, :, :] = 1
    labels[10:14, 3:12, 1, 1] = 3
    out = write_dicom_seg(labels, files, tmp_path / "seg.dcm", phases=[1])
    assert [p.name for p in out] == ["seg_t01_s00.dcm", "seg_t01_s01.dcm"]
    import pydicom

    segs = [pydicom.dcmread(p) for p in out]
    assert len({s.SeriesInstanceUID for s in segs}) == 1  # one SEG series
    for k, seg in enumerate(segs):
        refs = {
            item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
            for item in seg.PerFrameFunctionalGroupsSequence
        }
        assert refs == {pydicom.dcmread(files[k][1]).SOPInstanceUID}


def test_dicom_seg_anonymised_frames_of_reference_warn_once(tmp_path, caplog):
    """Every image with its own, invalid frame-of-reference UID (as one anonymiser of the
    Sunnybrook data wrote them): one log line, no pydicom warning flood, a valid SEG."""
    pytest.importorskip("highdicom")
    import warnings

    import pydicom

    from cardioseg.clinical.dicom_seg import write_dicom_seg

    files = _mr_series(tmp_path / "src", 16, 16, 2, 2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # writing the invalid UIDs warns here, not in the code
        for k, row in enumerate(files):
            for t, f in enumerate(row):
                ds = pydicom.dcmread(f)
                ds.FrameOfReferenceUID = f"2.16.124.113543.6006.99.0{k}{t}55"  # leading zero
                ds.save_as(f)
    labels = np.zeros((16, 16, 2, 2), np.uint8)
    labels[2:9, 3:7] = 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with caplog.at_level("WARNING", logger="cardioseg"):
            out = write_dicom_seg(labels, files, tmp_path / "seg.dcm")
    assert len(out) == 2
    assert sum("frames of reference" in r.getMessage() for r in caplog.records) == 1
    # one SEG series, one frame of reference (the first image's), in every instance
    fors = {pydicom.dcmread(p, stop_before_pixels=True).FrameOfReferenceUID for p in out}
    assert fors == {"2.16.124.113543.6006.99.00055"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # reading the sources back meets their invalid UIDs
        for t, path in enumerate(out):
            _check_seg(path, labels, files, t)


def test_dicom_seg_tolerates_rounded_orientations_and_names_a_lone_phase(tmp_path):
    """Scanners (Canon) write ImageOrientationPatient with rounding differences between the
    images of one series, which highdicom refuses unless they are made equal; a phase exported
    alone keeps its name."""
    pytest.importorskip("highdicom")
    import pydicom

    from cardioseg.clinical.dicom_seg import write_dicom_seg

    files = _mr_series(tmp_path / "src", 16, 16, 3, 2)
    for k, row in enumerate(files):
        for f in row:
            ds = pydicom.dcmread(f)
            ds.ImageOrientationPatient = [float(v) + 1e-6 * k for v in ds.ImageOrientationPatient]
            ds.save_as(f)
    labels = np.zeros((16, 16, 3, 2), np.uint8)
    labels[2:9, 3:7, :, 0] = 1  # nothing at phase 1: only the ED instance is written
    out = write_dicom_seg(
        labels, files, tmp_path / "segmentation.dcm", phase_names={0: "ED", 1: "ES"}
    )
    assert [p.name for p in out] == ["segmentation_ED.dcm"]
    _check_seg(out[0], labels, files, 0)


def test_dicom_seg_of_an_enhanced_multiframe_cine(tmp_path):
    """One multi-frame object holds every slice and phase: each SEG frame references the one
    source frame of its slice at its phase (not every phase at that position)."""
    pytest.importorskip("highdicom")
    import pydicom
    from test_dicom import enhanced_like

    from cardioseg.clinical.dicom_seg import write_dicom_seg
    from cardioseg.io.dicom import load_cine

    enhanced_like(tmp_path / "enh" / "cine.dcm")
    image, _, meta = load_cine(tmp_path / "enh")
    labels = np.zeros(image.shape, np.uint8)
    ed, es = 0, image.shape[3] - 1
    labels[3:10, 2:6, :, ed] = 1
    labels[12:18, 4:9, 1, es] = 3
    out = write_dicom_seg(
        labels,
        meta.source_headers,
        tmp_path / "segmentation.dcm",
        phases=[ed, es],
        phase_names={ed: "ED", es: "ES"},
        frame_numbers=meta.frame_numbers,
    )
    assert [p.name for p in out] == ["segmentation_ED.dcm", "segmentation_ES.dcm"]
    source = pydicom.dcmread(tmp_path / "enh" / "cine.dcm")
    for t, path in zip((ed, es), out, strict=True):
        seg = pydicom.dcmread(path)
        pixels = seg.pixel_array.reshape(-1, labels.shape[1], labels.shape[0])
        n_checked = 0
        for i, item in enumerate(seg.PerFrameFunctionalGroupsSequence):
            refs = item.DerivationImageSequence[0].SourceImageSequence
            assert len(refs) == 1
            f = int(refs[0].ReferencedFrameNumber)
            assert f in {meta.frame_numbers[k][t] for k in range(labels.shape[2])}
            k = [meta.frame_numbers[j][t] for j in range(labels.shape[2])].index(f)
            content = source.PerFrameFunctionalGroupsSequence[f - 1].FrameContentSequence[0]
            assert int(content.TemporalPositionIndex) == t + 1  # the right phase
            number = item.SegmentIdentificationSequence[0].ReferencedSegmentNumber
            np.testing.assert_array_equal(pixels[i].astype(bool), labels[:, :, k, t].T == number)
            n_checked += 1
        assert n_checked == sum(
            int((labels[:, :, k, t] == v).any()) for k in range(labels.shape[2]) for v in (1, 2, 3)
        )


def test_report_colours_minor_notes_grey():
    from cardioseg.clinical.report import STATUS_COLORS, _reason_color

    assert _reason_color({"kind": "fragment_slice_rv", "weight": 0.3}, "ok") == "#666666"
    assert (
        _reason_color({"kind": "enclosure_severe", "weight": 0.5}, "review")
        == STATUS_COLORS["fail"]
    )
    assert _reason_color({"kind": "border", "weight": 0.35}, "review") == STATUS_COLORS["review"]
    assert _reason_color(None, "review") == STATUS_COLORS["review"]


def test_qc_of_a_reader_exclusion_opens_no_gap(heart_pair):
    """A mid-ventricular slice taken out by the reader: the QC judges the segmentation as
    produced (no "LV missing" gap, no heart split in two) and its volumes are the counted ones."""
    from cardioseg.clinical.qc import assess_quality

    ed, es = heart_pair
    axis = int(np.argmax(SPACING))
    z = int(np.flatnonzero(np.any(np.moveaxis(es, axis, 0) == 1, axis=(1, 2))).mean())
    cut = np.moveaxis(es.copy(), axis, 0)
    cut[z] = 0
    cut = np.moveaxis(cut, 0, axis)
    naive = assess_quality(ed, cut, SPACING)
    assert any(f"ES slice {z}: LV missing" in r for r in naive.reasons)
    qc = assess_quality(ed, es, SPACING, excluded={"ES": [z]}, counted={"ED": ed, "ES": cut})
    assert not any(f"slice {z}" in r for r in qc.reasons), qc.reasons
    assert qc.metrics["lv_esv_ml"] == pytest.approx(compute_indices(ed, cut, SPACING)["lv_esv_ml"])
    assert any(row.get("excluded") for row in qc.per_slice if row["slice"] == z)


def test_report_views_show_and_flag_the_stored_value(tmp_path):
    """report.json keeps 3 decimals; the HTML, the CLI and the web app show one. Rounding the
    raw value for one view and the stored value for another made them differ (56.9496: HTML
    56.9 "low", web app 57.0)."""
    from cardioseg.clinical.indices import normal_ranges
    from cardioseg.clinical.report import report_table

    low = normal_ranges()["lv_ef_pct"][0]
    raw = low - 0.0504  # stored as low - 0.05, shown as the limit itself
    files = write_report(tmp_path, {"lv_ef_pct": raw, "lv_edv_ml": 150.0}, None, write_pdf=False)
    report = json.loads(files["json"].read_text())
    assert report["lv_ef_pct"] == round(raw, 3)
    shown = f"{report['lv_ef_pct']:.1f}"
    assert shown == f"{low:.1f}"
    assert report["normal_flags"]["lv_ef_pct"] == "normal"
    rows, _ = report_table(report)
    assert [(r["value"], r["flag"]) for r in rows if r["key"] == "lv_ef_pct"] == [(shown, "normal")]
    assert f'fraction</td><td class="num">{shown}</td>' in files["html"].read_text()


def test_pdf_never_leaves_out_the_input_notes(tmp_path):
    """With a long list of QC findings the first page had no room left for "About the input",
    and the notes were dropped from the PDF (they stayed in the HTML): they get a page."""
    import re

    ed, es = synthetic_heart(), synthetic_heart(es=True)
    indices = compute_indices(ed, es, SPACING, 175, 70, 64)
    long = "a finding that needs two lines of the report to say what it is about, " * 2
    qc = {"status": "review", "score": 0.5, "reasons": [f"{k}: {long}" for k in range(25)]}

    def pages(notes: list[str]) -> int:
        files = write_report(tmp_path / str(len(notes)), indices, qc, meta={"warnings": notes})
        return int(re.search(rb"/Count (\d+)", files["pdf"].read_bytes()).group(1))

    assert pages(["no images at slice 6 of a regular 8.00 mm stack"]) == pages([]) + 1


def test_pdf_names_what_produced_it(tmp_path):
    """The PDF's first page says what the HTML does at its foot: software, model, time, the
    normal ranges' sources and how mass is computed (a printed report stands alone)."""
    from cardioseg.clinical.report import _provenance_lines, report_table

    indices = {"lv_ef_pct": 55.0, "lv_edv_ml": 150.0, "lv_mass_g": 120.0}
    files = write_report(tmp_path, indices, None, meta={"model": "v4.pt (sha256 abc)"})
    report = json.loads(files["json"].read_text())
    text = " ".join(_provenance_lines(report, report_table(report)[0]))
    assert report["generated_utc"] in text and report["software_version"] in text
    assert "model v4.pt (sha256 abc)" in text and "1.05 g/mL" in text
    assert "Petersen" in text and "Kawel-Boehm" in text


def test_pdf_shows_user_text_as_it_is(tmp_path):
    """A label with dollar signs (mathematics to matplotlib) neither stops the report nor is
    typeset; a long one is wrapped. The absolute LV mass says why it is not flagged."""
    indices = {"lv_ef_pct": 55.0, "lv_mass_g": 160.0, "lv_mass_index_g_m2": 60.0, "bsa_m2": 2.0}
    label = "cost $\\x$ test " + "x" * 150
    files = write_report(tmp_path, indices, None, meta={"patient_label": label}, sex="M")
    assert files["pdf"].read_bytes().startswith(b"%PDF")
    report = json.loads(files["json"].read_text())
    assert report["patient_label"] == label
    assert "lv_mass_g" not in report["normal_flags"]
    assert "(not judged: see the index)" in files["html"].read_text()
