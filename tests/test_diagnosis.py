"""Shape features and the research-use ACDC group classifier."""

from __future__ import annotations

import importlib.util
import json
import math

import numpy as np
import pytest

from cardioseg.clinical.diagnosis import (
    DEFAULT_FEATURES,
    DISCLAIMER,
    GROUP_NAMES,
    classification_summary,
    cross_validate,
    load_default_model,
    load_model,
    predict,
    predict_proba,
    save_model,
    suggestion_text,
    train_classifier,
)
from cardioseg.clinical.features import THICKNESS_FEATURES, shape_features, wall_thickness

needs_sklearn = pytest.mark.skipif(
    importlib.util.find_spec("sklearn") is None, reason="training needs scikit-learn"
)


def ring_labels(r_in: float, r_out: float, size: int = 64, slices: int = 4, rv: bool = True):
    """LV disc of radius ``r_in`` inside a MYO ring up to ``r_out`` (pixels), plus an RV disc."""
    x, y = np.mgrid[:size, :size]
    c = size / 2 - 0.3
    d = np.hypot(x - c, y - c)
    sl = np.zeros((size, size), np.uint8)
    if rv:
        sl[np.hypot(x - c + r_out + 8, y - c) < 8] = 3
    sl[(d >= r_in) & (d < r_out)] = 2
    sl[d < r_in] = 1
    return np.repeat(sl[:, :, None], slices, axis=2)


def test_ring_wall_thickness_isotropic():
    t = wall_thickness(ring_labels(10, 14), (1.0, 1.0, 8.0))
    assert t["n_slices"] == 4
    assert t["max_mm"] == pytest.approx(4.0, abs=1.0)
    assert t["mean_mm"] == pytest.approx(4.0, abs=1.0)
    assert 0 <= t["cv"] < 0.2


def test_ring_wall_thickness_uses_inplane_spacing_and_slice_axis():
    lab = ring_labels(20, 28, size=96)  # 8 px at 0.5 mm = 4 mm
    t = wall_thickness(lab, (0.5, 0.5, 8.0))
    assert t["max_mm"] == pytest.approx(4.0, abs=1.0)
    moved = np.moveaxis(lab, 2, 0)  # slices on the first axis
    t0 = wall_thickness(moved, (8.0, 0.5, 0.5))
    assert t0["max_mm"] == pytest.approx(t["max_mm"])


def test_wall_thickness_names_the_slice_of_its_maximum():
    lab = ring_labels(10, 14)
    lab[:, :, 2] = ring_labels(8, 16, slices=1)[:, :, 0]  # a thicker wall (8 px) on slice 2
    t = wall_thickness(lab, (1.0, 1.0, 8.0))
    assert t["max_slice"] == 2 and t["max_mm"] == pytest.approx(8.0, abs=1.0)
    assert wall_thickness(np.zeros((8, 8, 3), np.uint8), (1.0, 1.0, 8.0))["max_slice"] == -1


def test_shape_features_ratios_and_thickening():
    ed = ring_labels(10, 14)
    es = ring_labels(8, 14)  # thicker wall at ES: 6 px
    f = shape_features(ed, es, (1.0, 1.0, 8.0), "180", 80.0)
    assert f["myo_thickness_max_ed_mm"] == pytest.approx(4.0, abs=1.0)
    assert f["myo_thickness_mean_es_mm"] == pytest.approx(6.0, abs=1.0)
    expected = (f["myo_thickness_mean_es_mm"] / f["myo_thickness_mean_ed_mm"] - 1) * 100
    assert f["myo_thickening_pct"] == pytest.approx(expected)
    assert f["myo_thickening_pct"] > 20
    assert f["rv_lv_edv_ratio"] == pytest.approx(f["rv_edv_ml"] / f["lv_edv_ml"])
    assert f["lv_mass_edv_ratio_g_ml"] == pytest.approx(f["lv_mass_g"] / f["lv_edv_ml"])
    assert f["bsa_m2"] == pytest.approx(2.0)
    assert f["lvedv_index_ml_m2"] == pytest.approx(f["lv_edv_ml"] / 2.0)
    assert all(isinstance(v, float) for v in f.values())


def test_shape_features_interpolate_missing_slices_like_the_indices():
    ed, es = ring_labels(10, 14, slices=5), ring_labels(8, 14, slices=5)
    full = shape_features(ed, es, (1.0, 1.0, 8.0))
    ed[:, :, 2] = es[:, :, 2] = 0  # no images at slice 2
    gapped = shape_features(ed, es, (1.0, 1.0, 8.0), missing_slices=[2])
    assert gapped["lv_edv_ml"] == pytest.approx(full["lv_edv_ml"])
    assert gapped["lv_mass_g"] == pytest.approx(full["lv_mass_g"])
    assert shape_features(ed, es, (1.0, 1.0, 8.0))["lv_edv_ml"] < full["lv_edv_ml"] * 0.9


def test_shape_features_take_a_given_ed_thickness():
    ed, es = ring_labels(10, 14), ring_labels(8, 14)
    given = {"max_mm": 9.0, "max_slice": 0.0, "mean_mm": 7.0, "cv": 0.1, "n_slices": 4.0}
    f = shape_features(ed, es, (1.0, 1.0, 8.0), ed_thickness=given)
    assert f["myo_thickness_max_ed_mm"] == 9.0 and f["myo_thickness_mean_ed_mm"] == 7.0
    assert f["myo_thickness_max_es_mm"] == pytest.approx(6.0, abs=1.0)  # measured


@pytest.mark.parametrize(
    "ed",
    [
        np.zeros((32, 32, 3), np.uint8),  # everything empty
        np.full((32, 32, 3), 2, np.uint8),  # myocardium without cavity
        np.full((32, 32, 3), 1, np.uint8),  # cavity without myocardium
        np.full((32, 32, 3), 3, np.uint8),  # RV only
    ],
)
def test_shape_features_empty_structures_give_nan(ed):
    f = shape_features(ed, np.zeros_like(ed), (1.5, 1.5, 10.0), None, "bad")
    assert "bsa_m2" not in f
    for name in THICKNESS_FEATURES:
        assert math.isnan(f[name])
    assert f["lv_esv_ml"] == 0.0


def _blobs(n_per_class=20, n_features=6, seed=0, sep=4.0):
    rng = np.random.default_rng(seed)
    classes = ["A", "B", "C"]
    centres = rng.normal(0, sep, (len(classes), n_features))
    x = np.concatenate([rng.normal(c, 1.0, (n_per_class, n_features)) for c in centres])
    x *= np.arange(1, n_features + 1) * 10.0  # different scales, standardisation matters
    y = [k for k in classes for _ in range(n_per_class)]
    names = [f"f{i}" for i in range(n_features)]
    rows = [dict(zip(names, map(float, r), strict=True)) for r in x]
    return rows, y, names, x


@needs_sklearn
def test_cross_validation_on_separable_data():
    rows, y, names, _ = _blobs()
    cv = cross_validate(rows, y, folds=5, seed=0, feature_names=names)
    assert cv["accuracy"] > 0.9
    assert cv["classes"] == ["A", "B", "C"]
    assert np.asarray(cv["confusion_matrix"]).sum() == len(rows)
    assert set(cv["per_class_recall"]) == {"A", "B", "C"}
    assert cv["disclaimer"] == DISCLAIMER
    again = cross_validate(rows, y, folds=5, seed=0, feature_names=names)
    assert again["predicted"] == cv["predicted"]


@needs_sklearn
def test_cross_validation_needs_enough_rows_per_class():
    rows, y, names, _ = _blobs(n_per_class=3)
    with pytest.raises(ValueError, match="fewer than 5 folds"):
        cross_validate(rows, y, folds=5, feature_names=names)


@needs_sklearn
def test_cross_validation_with_test_rows():
    rows, y, names, _ = _blobs()
    same = cross_validate(rows, y, feature_names=names, test_rows=rows)
    assert same["predicted"] == cross_validate(rows, y, feature_names=names)["predicted"]
    shifted = [{k: v + 1e6 for k, v in r.items()} for r in rows]
    assert cross_validate(rows, y, feature_names=names, test_rows=shifted)["accuracy"] < 0.9


def _sklearn_pipeline(x, y, c=1.0):
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    pipe = make_pipeline(
        SimpleImputer(strategy="mean"),
        StandardScaler(),
        LogisticRegression(C=c, max_iter=10000, tol=1e-10),
    )
    return pipe.fit(x, y)


@needs_sklearn
@pytest.mark.parametrize("n_classes", [3, 2])
def test_numpy_predict_matches_sklearn(n_classes):
    rows, y, names, x = _blobs(sep=1.0)  # overlapping: probabilities away from 0 and 1
    keep = [i for i, k in enumerate(y) if k in "ABC"[:n_classes]]
    rows, y, x = [rows[i] for i in keep], [y[i] for i in keep], x[keep].copy()
    x[0, 1] = np.nan  # one missing value: imputed with the training mean
    rows[0]["f1"] = float("nan")
    model = train_classifier(rows, y, feature_names=names)
    pipe = _sklearn_pipeline(x, y)
    x_test = x.copy()
    x_test[3, 2] = np.nan
    expected = pipe.predict_proba(x_test)
    assert list(pipe.classes_) == model["classes"]
    np.testing.assert_allclose(predict_proba(model, x_test), expected, atol=1e-6)
    # the stored coefficients are exactly sklearn's
    lr = pipe[-1]
    np.testing.assert_allclose(model["coefficients"], lr.coef_, atol=1e-5)
    row = dict(zip(names, x_test[3], strict=True))
    r = predict(model, row)
    assert r["missing_features"] == ["f2"]
    np.testing.assert_allclose(list(r["probabilities"].values()), expected[3], atol=1e-6)
    assert r["top_class"] == pipe.predict(x_test[3:4])[0]


@needs_sklearn
def test_model_json_round_trip(tmp_path):
    rows, y, names, x = _blobs()
    model = train_classifier(rows, y, feature_names=names)
    text = json.dumps(model)  # plain JSON, no numpy types
    path = save_model(model, tmp_path / "m.json")
    loaded = load_model(path)
    assert loaded == json.loads(text)
    np.testing.assert_array_equal(predict_proba(loaded, x), predict_proba(model, x))
    assert predict(text, rows[0]) == predict(model, rows[0])
    assert model["disclaimer"] == DISCLAIMER


def test_load_model_rejects_invalid(tmp_path):
    from cardioseg.errors import CardiosegError

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(CardiosegError):
        load_model(bad)
    with pytest.raises(CardiosegError):
        load_model(tmp_path / "missing.json")


def test_shipped_model_predicts_valid_class():
    model = load_default_model()
    assert model["feature_names"] == list(DEFAULT_FEATURES)
    assert set(model["classes"]) <= set(GROUP_NAMES)
    assert len(model["classes"]) >= 2
    assert "not a diagnosis" in model["disclaimer"]
    assert 0.0 < model["cross_validation"]["accuracy"] <= 1.0
    # A clearly dilated, poorly contracting LV.
    ed = ring_labels(22, 26, size=96, slices=8)
    es = ring_labels(20, 25, size=96, slices=8)
    feats = shape_features(ed, es, (1.5, 1.5, 10.0), 175, 75)
    r = predict(model, feats)
    assert r["top_class"] in model["classes"]
    assert sum(r["probabilities"].values()) == pytest.approx(1.0, abs=1e-9)
    assert all(0.0 <= p <= 1.0 for p in r["probabilities"].values())
    assert r["missing_features"] == []
    assert r["disclaimer"] == DISCLAIMER
    assert "NOT a diagnosis" in suggestion_text(r)
    # Missing features are imputed, never an error.
    empty = predict(model, {})
    assert sorted(empty["missing_features"]) == sorted(DEFAULT_FEATURES)
    assert sum(empty["probabilities"].values()) == pytest.approx(1.0, abs=1e-9)


def test_classification_summary():
    s = classification_summary(["A", "A", "B"], ["A", "B", "B"], ["A", "B", "C"])
    assert s["confusion_matrix"] == [[1, 1, 0], [0, 1, 0], [0, 0, 0]]
    assert s["accuracy"] == pytest.approx(2 / 3)
    assert s["per_class_recall"]["A"] == 0.5
    assert math.isnan(s["per_class_recall"]["C"])
    assert s["balanced_accuracy"] == pytest.approx(0.75)


def test_suggestion_is_made_only_where_it_can_mean_something():
    from cardioseg.clinical.diagnosis import MAX_ABS_Z, suggest

    model = load_default_model()
    typical = dict(zip(model["feature_names"], model["means"], strict=True))
    shown = suggest(typical, "ok", model)
    assert shown["shown"] and shown["top_class"] in model["classes"]
    assert shown["text"].startswith("Research-use suggestion, NOT a diagnosis")
    assert shown["disclaimer"] == DISCLAIMER
    # no height and weight: the indexed volumes are missing, nothing is imputed
    no_bsa = {k: v for k, v in typical.items() if "_index_" not in k}
    assert "height and weight" in suggest(no_bsa, "ok", model)["reason"]
    # a failed QC, a feature that cannot be measured, one far outside the training data
    assert suggest(typical, "fail", model)["reason"] == "the quality control failed"
    lost = {**typical, "myo_thickening_pct": float("nan")}
    assert suggest(lost, "review", model)["reason"].endswith(": myo_thickening_pct")
    i = model["feature_names"].index("lv_ef_pct")
    far = {**typical, "lv_ef_pct": model["means"][i] + (MAX_ABS_Z + 1) * model["stds"][i]}
    assert suggest(far, "ok", model)["reason"].endswith(": lv_ef_pct")
    assert not any(r["shown"] for r in (suggest(no_bsa), suggest(far), suggest(lost)))
