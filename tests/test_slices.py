"""Slice-by-slice volumes and reader exclusions (``cardioseg.clinical.slices``), and how the
report shows them."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_clinical import SPACING, VOXEL_ML, synthetic_heart

from cardioseg.clinical import assess_quality, compute_indices, write_report
from cardioseg.clinical.slices import SliceExclusion, apply_exclusions, slice_volumes


@pytest.fixture(scope="module")
def pair() -> tuple[np.ndarray, np.ndarray]:
    return synthetic_heart(), synthetic_heart(es=True)


def test_slice_volumes_sum_to_the_indices_and_list_base_first(pair):
    ed, es = pair
    rows = slice_volumes(ed, es, SPACING)
    idx = compute_indices(ed, es, SPACING)
    assert sum(r["lv_ed_ml"] for r in rows) == pytest.approx(idx["lv_edv_ml"], abs=1e-2)
    assert sum(r["lv_es_ml"] for r in rows) == pytest.approx(idx["lv_esv_ml"], abs=1e-2)
    assert sum(r["rv_es_ml"] for r in rows) == pytest.approx(idx["rv_esv_ml"], abs=1e-2)
    assert sum(r["myo_ed_ml"] for r in rows) * 1.05 == pytest.approx(idx["lv_mass_g"], abs=1e-2)
    # the synthetic heart fills slices 1..8 and tapers towards slice 8 (the apex)
    assert [r["slice"] for r in rows] == list(range(1, 9))
    assert rows[0]["position"] == "base" and rows[-1]["position"] == "apex"
    assert {r["position"] for r in rows[1:-1]} == {""}
    # the same heart stored the other way up is listed from the other end, still base first
    flipped = slice_volumes(ed[..., ::-1], es[..., ::-1], SPACING)
    assert [r["slice"] for r in flipped] == list(range(8, 0, -1))
    assert flipped[0]["lv_ed_ml"] == rows[0]["lv_ed_ml"]
    # a slice beyond the base with RV only (outflow tract) does not turn the order round
    ed_rv, es_rv = ed[..., ::-1].copy(), es[..., ::-1].copy()
    ed_rv[10:20, 10:20, 9] = 3
    beyond = slice_volumes(ed_rv, es_rv, SPACING)
    assert [r["slice"] for r in beyond] == list(range(9, 0, -1))
    assert beyond[1]["position"] == "base" and beyond[0]["rv_ed_ml"] > 0
    # an empty slice is listed only when asked for (a reader's exclusion stays visible)
    listed = slice_volumes(ed, es, SPACING, include=[0])
    assert [r["slice"] for r in listed] == list(range(9))  # slice 0 lies above the base
    assert listed[0]["lv_ed_ml"] == 0.0 and listed[0]["position"] == ""
    assert listed[1]["position"] == "base"


def test_slice_volumes_along_another_axis(pair):
    ed, es = pair
    rows = slice_volumes(np.moveaxis(ed, 2, 0), np.moveaxis(es, 2, 0), SPACING[::-1], 0)
    assert [r["lv_ed_ml"] for r in rows] == [r["lv_ed_ml"] for r in slice_volumes(ed, es, SPACING)]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("ES:8", SliceExclusion("ES", 8, "all")),
        ("ed:0:lv", SliceExclusion("ED", 0, "LV")),
        (" ES : 3 : RV ", SliceExclusion("ES", 3, "RV")),
    ],
)
def test_parse_exclusion(text, expected):
    parsed = SliceExclusion.parse(text)
    assert parsed == expected
    assert SliceExclusion.parse(str(parsed)) == parsed


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("ES", "PHASE:SLICE"),
        ("XX:1", "PHASE:SLICE"),
        ("ES:a", "whole number"),
        ("ES:-1", "0 or more"),
        ("ES:1:MYO", "LV, RV or all"),
        ("ES:1:LV:2", "PHASE:SLICE"),
    ],
)
def test_parse_exclusion_rejects(text, needle):
    with pytest.raises(ValueError, match=needle):
        SliceExclusion.parse(text)


def test_apply_exclusions_removes_only_what_is_named(pair):
    ed, es = pair
    out = apply_exclusions({"ED": ed, "ES": es}, ["ES:1:LV", "ES:2:RV", "ED:3"])
    assert not np.isin(out["ES"][..., 1], (1, 2)).any()
    assert (out["ES"][..., 1] == 3).sum() == (es[..., 1] == 3).sum()  # RV kept on slice 1
    assert not (out["ES"][..., 2] == 3).any() and (out["ES"][..., 2] == 1).any()
    assert not out["ED"][..., 3].any()
    untouched = [z for z in range(ed.shape[2]) if z != 3]
    np.testing.assert_array_equal(out["ED"][..., untouched], ed[..., untouched])
    np.testing.assert_array_equal(es, synthetic_heart(es=True))  # inputs are not modified
    lv_es = compute_indices(out["ED"], out["ES"], SPACING)["lv_esv_ml"]
    removed = (es[..., 1] == 1).sum() * VOXEL_ML
    assert lv_es == pytest.approx(compute_indices(ed, es, SPACING)["lv_esv_ml"] - removed)
    with pytest.raises(ValueError, match="out of range 0..9"):
        apply_exclusions({"ED": ed, "ES": es}, ["ES:10"])


def test_report_shows_slices_and_exclusions(tmp_path, pair):
    ed, es = pair
    edited = apply_exclusions({"ED": ed, "ES": es}, ["ES:1:LV"])
    rows = slice_volumes(edited["ED"], edited["ES"], SPACING)
    files = write_report(
        tmp_path / "r",
        compute_indices(edited["ED"], edited["ES"], SPACING),
        assess_quality(edited["ED"], edited["ES"], SPACING),
        slices=rows,
        exclusions=["ES:1:LV"],
    )
    report = json.loads(files["json"].read_text())
    assert report["excluded_slices"] == ["ES:1:LV"]
    assert [r["slice"] for r in report["slices"]] == list(range(1, 9))
    assert report["slices"][0]["lv_es_ml"] == 0.0 and report["slices"][0]["lv_ed_ml"] > 0
    html_text = files["html"].read_text()
    assert "Slice-by-slice volumes" in html_text and "ES LV" in html_text
    assert f"{rows[1]['lv_ed_ml']:.1f}" in html_text
    assert files["pdf"].read_bytes().startswith(b"%PDF")


def test_report_slice_table_points_at_slices_where_the_predictions_disagree(tmp_path, pair):
    """Slices whose test-time predictions disagree beyond the per-slice note level are named,
    with their phase, in the table's Check column; the others are not."""
    from cardioseg.clinical.qc import DISAGREEMENT_SLICE_NOTE, slices_to_check
    from cardioseg.clinical.report import _slice_table

    ed, es = pair
    spread = np.zeros(es.shape, np.float32)
    spread[..., 1] = 2 * DISAGREEMENT_SLICE_NOTE  # the basal slice, at ES only
    qc = assess_quality(ed, es, SPACING, disagreement={"ES": spread})
    marked = [(r["phase"], r["slice"]) for r in qc.per_slice if "disagreement" in r["flags"]]
    assert marked == [("ES", 1)]
    assert slices_to_check(qc) == ["ES:1"] == slices_to_check(qc.to_dict())
    assert SliceExclusion.parse(slices_to_check(qc)[0]).slice == 1  # what --exclude takes
    assert qc.status == "ok"  # a hint for the reader, not a QC issue
    files = write_report(
        tmp_path / "r",
        compute_indices(ed, es, SPACING),
        qc,
        slices=slice_volumes(ed, es, SPACING),
        write_pdf=False,
    )
    report = json.loads(files["json"].read_text())
    header, cells = _slice_table(report)
    check = {int(c[0]): c[header.index("Check")] for c in cells}
    assert check[1] == "ES" and not any(v for z, v in check.items() if z != 1)
    assert "Check" in files["html"].read_text()
