"""Wall thickness per AHA segment (synthetic rings with a known RV side and thick wall)."""

from __future__ import annotations

import re

import numpy as np
import pytest

from cardioseg.clinical.segments import (
    GAP_DEG,
    SEGMENT_NAMES,
    aha_segments,
    apical_cap,
    insertion_points,
    largest_arc,
    segment_of,
    septum_bisector,
    why_no_segments,
)

SIZE = 80
C = SIZE / 2 - 0.3


def ring_slice(r_in=10.0, r_out=14.0, thick_at=None, thick_mm=5.0, rv=True):
    """One slice: LV disc, MYO ring, RV disc towards -axis1 (the septum at -90°).

    ``thick_at`` (degrees in the (axis0, axis1) frame) thickens the wall outwards by
    ``thick_mm`` over ±35° around that direction.
    """
    x, y = np.mgrid[:SIZE, :SIZE].astype(float)
    d = np.hypot(x - C, y - C)
    ang = np.degrees(np.arctan2(y - C, x - C))
    sl = np.zeros((SIZE, SIZE), np.uint8)
    if rv:
        sl[np.hypot(x - C, y - (C - r_out - 9)) < 9.5] = 3
    outer = np.full_like(d, r_out)
    if thick_at is not None:
        near = np.abs((ang - thick_at + 180) % 360 - 180) < 35
        outer[near] += thick_mm
    sl[(d >= r_in) & (d < outer)] = 2
    sl[d < r_in] = 1
    return sl


def stack(slices):
    return np.stack(slices, axis=2)


def by_segment(result, key="ed_mm"):
    return {row["segment"]: row[key] for row in result["segments"]}


def test_segment_numbers_cover_the_model():
    deg = np.arange(-179.5, 180, 1.0)
    got = set(segment_of(deg, "basal")) | set(segment_of(deg, "mid"))
    got |= set(segment_of(deg, "apical"))
    assert got == set(SEGMENT_NAMES)
    # the septum's middle separates anteroseptal from inferoseptal
    assert segment_of([0.5, -0.5], "mid").tolist() == [8, 9]
    with pytest.raises(ValueError):
        segment_of(0.0, "base")


def test_uniform_ring_is_uniform_and_a_thick_wall_lands_in_its_segments():
    # base: larger rings first; the anterior wall (+90° from the septum at -90°: 0°) thick
    slices = [ring_slice(12, 16, thick_at=0.0)] * 2 + [ring_slice(10, 14, thick_at=0.0)] * 4
    out = aha_segments(stack(slices), None, (1.0, 1.0, 8.0))
    ed = by_segment(out)
    assert set(ed) == set(SEGMENT_NAMES) and all(v is not None for v in ed.values())
    anterior = {1, 7, 13}
    thin = [v for s, v in ed.items() if s not in anterior]
    assert max(thin) == pytest.approx(4.0, abs=1.0)
    for s in anterior:
        assert ed[s] > max(thin) + 1.5, (s, ed)
    assert out["max_ed"]["segment"] in anterior
    assert out["max_ed"]["name"] == SEGMENT_NAMES[out["max_ed"]["segment"]]
    assert out["max_ed"]["mm"] == pytest.approx(9.0, abs=1.0)


def test_mirrored_view_swaps_anterior_and_inferior():
    slices = [ring_slice(thick_at=0.0)] * 6
    normal = by_segment(aha_segments(stack(slices), None, (1.0, 1.0, 8.0)))
    mirrored = by_segment(aha_segments(stack(slices), None, (1.0, 1.0, 8.0), mirrored=True))
    assert normal[7] > normal[10] + 1.5  # anterior thick
    assert mirrored[10] > mirrored[7] + 1.5  # the same wall read as inferior
    assert mirrored[10] == pytest.approx(normal[7])


def test_in_plane_rotation_and_mirroring_with_its_flag_give_the_same_values():
    lab = stack([ring_slice(12, 16, thick_at=60.0)] * 2 + [ring_slice(thick_at=60.0)] * 4)
    ref = by_segment(aha_segments(lab, None, (1.0, 1.0, 8.0)))
    turned = by_segment(aha_segments(np.rot90(lab, 1, axes=(0, 1)), None, (1.0, 1.0, 8.0)))
    flipped = by_segment(aha_segments(lab[::-1], None, (1.0, 1.0, 8.0), mirrored=True))
    for s in SEGMENT_NAMES:
        assert turned[s] == pytest.approx(ref[s], abs=0.6)
        assert flipped[s] == pytest.approx(ref[s], abs=0.6)


def test_slices_ordered_from_the_base_and_split_in_thirds():
    # apex first in storage: slices 0-1 small (apex), 4-5 large (base); apex thick all round
    slices = [ring_slice(6, 12)] * 2 + [ring_slice(10, 14)] * 2 + [ring_slice(12, 16)] * 2
    ed = by_segment(aha_segments(stack(slices), None, (1.0, 1.0, 8.0)))
    apical = [ed[s] for s in (13, 14, 15, 16)]
    others = [ed[s] for s in range(1, 13)]
    assert min(apical) > max(others) + 1.0


def test_thickening_from_ed_to_es():
    ed = stack([ring_slice(12, 16)] * 2 + [ring_slice(10, 14)] * 4)
    es = stack([ring_slice(9, 16)] * 2 + [ring_slice(7, 14)] * 4)  # 7 px walls at ES
    out = aha_segments(ed, es, (1.0, 1.0, 8.0))
    for row in out["segments"]:
        assert row["es_mm"] > row["ed_mm"]
        expected = (row["es_mm"] - row["ed_mm"]) / row["ed_mm"] * 100
        assert row["thickening_pct"] == pytest.approx(expected)
        assert 40 < row["thickening_pct"] < 110


def test_spacing_scales_the_thickness():
    lab = stack([ring_slice()] * 6)
    one = by_segment(aha_segments(lab, None, (1.0, 1.0, 8.0)))
    half = by_segment(aha_segments(lab, None, (0.5, 0.5, 8.0)))
    for s in SEGMENT_NAMES:
        assert half[s] == pytest.approx(one[s] / 2, abs=0.3)


def test_no_septum_or_too_few_slices_give_none():
    assert aha_segments(stack([ring_slice(rv=False)] * 6), None, (1.0, 1.0, 8.0)) is None
    assert aha_segments(stack([ring_slice()] * 2), None, (1.0, 1.0, 8.0)) is None
    assert aha_segments(np.zeros((8, 8, 4), np.uint8), None, (1.0, 1.0, 8.0)) is None


def test_slices_without_rv_take_the_stacks_septum():
    slices = [ring_slice(thick_at=0.0)] * 4 + [ring_slice(thick_at=0.0, rv=False)] * 2
    ed = by_segment(aha_segments(stack(slices), None, (1.0, 1.0, 8.0)))
    assert ed[13] > max(ed[14], ed[15], ed[16]) + 1.5  # apical (no RV there): still anterior


def test_report_shows_the_segments(tmp_path):
    import json

    from cardioseg.clinical import write_report

    ed = stack([ring_slice(12, 16, thick_at=0.0)] * 2 + [ring_slice(10, 14, thick_at=0.0)] * 4)
    es = stack([ring_slice(9, 16)] * 2 + [ring_slice(7, 14)] * 4)
    segments = aha_segments(ed, es, (1.0, 1.0, 8.0))
    files = write_report(tmp_path / "out", {"lv_ef_pct": 55.0}, None, segments=segments)
    assert files["segments"].name == "wall_segments.png" and files["segments"].stat().st_size
    report = json.loads(files["json"].read_text())
    stored = report["wall_segments"]
    assert [r["segment"] for r in stored["segments"]] == list(range(1, 17))
    assert stored["max_ed"]["segment"] in (1, 7, 13) and stored["model"].startswith("AHA")
    assert report["files"]["segments"] == "wall_segments.png"
    html = files["html"].read_text()
    assert "LV wall per AHA segment" in html and "basal anteroseptal" in html
    assert f"Thickest point at ED: {stored['max_ed']['mm']:.1f} mm" in html
    # how the septum was placed, per phase, and the apical cap (none here)
    assert {k: v for k, v in stored["septum"]["es"].items() if k != "slices"} == {
        "insertion_points": 6,
        "stack_mean": 0,
    }
    assert len(stored["septum"]["ed"]["slices"]) == 6
    assert stored["apex"] == {"present": False, "slices": 0, "myocardium_ml": 0.0}
    assert "Septum from the RV insertion points on 6 of 6 slices at ED, 6 of 6 slices at ES" in html
    assert "Apical cap (segment 17): no myocardium-only slice" in html
    # without segments: no section, no figure, one PDF page less
    plain = write_report(tmp_path / "plain", {"lv_ef_pct": 55.0}, None)
    assert "segments" not in plain
    assert "AHA segment" not in plain["html"].read_text()

    def pages(pdf) -> int:
        return int(re.search(rb"/Count (\d+)", pdf.read_bytes()).group(1))

    assert pages(files["pdf"]) == pages(plain["pdf"]) + 1


@pytest.fixture
def figure_text(monkeypatch) -> list[str]:
    """The text the report's figures are given (the PDF's own text is compressed)."""
    from matplotlib.figure import Figure

    drawn: list[str] = []
    original = Figure.text

    def record(self, x, y, s, *args, **kwargs):
        drawn.append(str(s))
        return original(self, x, y, s, *args, **kwargs)

    monkeypatch.setattr(Figure, "text", record)
    return drawn


def test_pdf_says_how_the_septum_was_placed(tmp_path, figure_text):
    """The PDF's segment page carries the HTML's line on the septum and the apical cap (the
    PDF's text is compressed: the text the figures are given is recorded instead)."""
    from cardioseg.clinical import write_report

    ed = stack([ring_slice(12, 16)] * 2 + [ring_slice(10, 14)] * 4)
    segments = aha_segments(ed, None, (1.0, 1.0, 8.0))
    write_report(tmp_path / "out", {"lv_ef_pct": 55.0}, None, segments=segments)
    text = " ".join(figure_text)
    assert "Septum from the RV insertion points on 6 of 6 slices at ED" in text
    assert "Apical cap (segment 17): no myocardium-only slice" in text


def test_es_slices_keep_their_ed_thirds():
    """At ES the apical cavity closes on two slices: the mid slices stay mid (re-splitting the
    four ES slices into thirds would call slice 3 apical and compare unlike slices)."""
    ed = stack([ring_slice(12, 16)] * 2 + [ring_slice(10, 14)] * 4)
    closed = ring_slice(0, 14)
    closed[closed == 1] = 2  # no cavity left
    es = stack([ring_slice(9, 16)] * 2 + [ring_slice(7, 14)] * 2 + [closed] * 2)
    out = aha_segments(ed, es, (1.0, 1.0, 8.0))
    rows = {r["segment"]: r for r in out["segments"]}
    for s in (13, 14, 15, 16):  # no ES slice with a cavity in the ED apical third
        assert rows[s]["es_mm"] is None and rows[s]["thickening_pct"] is None
    for s in range(7, 13):
        assert rows[s]["es_mm"] == pytest.approx(6.5, abs=1.0), rows[s]


def test_bullseye_puts_each_segment_in_its_conventional_place():
    """Anterior at the top, septum on the left, lateral on the right, inferior at the bottom;
    the base outside, the apex inside (each wedge's centre angle, counter-clockwise from the
    right, and its ring)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from cardioseg.reporting.bullseye import plot_bullseye

    fig, ax = plt.subplots()
    plot_bullseye(ax, {s: float(s) for s in SEGMENT_NAMES})
    where = {}
    for text in ax.texts:
        if text.get_text().replace(".", "").isdigit():
            x, y = text.get_position()
            where[int(float(text.get_text()))] = (
                round(np.degrees(np.arctan2(y, x))) % 360,
                np.hypot(x, y),
            )
    plt.close(fig)
    centre = {1: 90, 2: 150, 3: 210, 4: 270, 5: 330, 6: 30, 13: 90, 14: 180, 15: 270, 16: 0}
    for s in SEGMENT_NAMES:
        deg = centre.get(s, centre.get(s - 6))
        assert where[s][0] == deg, (s, where[s])
    assert all(where[s][1] > where[s + 6][1] > where[13][1] for s in range(1, 7))
    fig, polar = plt.subplots(subplot_kw={"projection": "polar"})
    with pytest.raises(ValueError, match="not polar"):
        plot_bullseye(polar, {1: 1.0})
    plt.close(fig)


def circ_diff(a, b):
    """Absolute angular difference in degrees."""
    return abs((a - b + 180.0) % 360.0 - 180.0)


def crescent_slice(
    first, last, holes=(), blob_at=None, thick_at=None, r_in=14.0, r_out=20.0, size=96
):
    """One slice: LV disc, MYO ring and an RV crescent on the epicardium from ``first`` to
    ``last`` degrees (increasing angle, in the (axis0, axis1) frame), tapering to its two ends:
    the insertion points. ``holes``: (from, to) angle ranges without RV; ``blob_at``: a small
    separate RV blob touching the wall at that angle; ``thick_at``: the wall 5 pixels thicker
    over ±35° around that angle."""
    c = size / 2 - 0.3
    x, y = np.mgrid[:size, :size].astype(float)
    d = np.hypot(x - c, y - c)
    ang = np.degrees(np.arctan2(y - c, x - c))
    width = (last - first) % 360
    t = (ang - first) % 360
    inside = t <= width
    rv = inside & (d >= r_out) & (d < r_out + 10 * np.sin(np.radians(t / width * 180)) + 1)
    for lo, hi in holes:
        rv &= ~((ang - lo) % 360 <= (hi - lo) % 360)
    if blob_at is not None:
        a = np.radians(blob_at)
        rv |= np.hypot(x - c - (r_out + 3) * np.cos(a), y - c - (r_out + 3) * np.sin(a)) < 3.5
    sl = np.zeros((size, size), np.uint8)
    sl[rv] = 3
    outer = np.full_like(d, r_out)
    if thick_at is not None:
        outer[np.abs((ang - thick_at + 180) % 360 - 180) < 35] += 5
    sl[(d >= r_in) & (d < outer)] = 2
    sl[d < r_in] = 1
    return sl


# the contact band (myocardium within two pixels of the RV) reaches about two pixels past the
# RV's ends: under 6° on this 20-pixel epicardium
TOL = 6.0
SP = (1.0, 1.0, 8.0)


@pytest.mark.parametrize("first,last", [(-150, -30), (-120, -20), (20, 140), (-60, 60)])
def test_insertion_points_of_a_crescent_rv(first, last):
    points = insertion_points(crescent_slice(first, last), (1.0, 1.0))
    assert circ_diff(points.first_deg, first) < TOL, points
    assert circ_diff(points.last_deg, last) < TOL, points
    middle = septum_bisector(crescent_slice(first, last), (1.0, 1.0))
    assert circ_diff(middle, (first + last) / 2) < 2
    # canonical view: the anterior insertion point is the end at the larger angle
    assert points.anterior_inferior() == (points.last_deg, points.first_deg)
    assert points.anterior_inferior(mirrored=True) == (points.first_deg, points.last_deg)


def test_insertion_points_across_the_wrap_at_180_degrees():
    points = insertion_points(crescent_slice(130, -130), (1.0, 1.0))  # through ±180°
    assert circ_diff(points.first_deg, 130) < TOL and circ_diff(points.last_deg, -130) < TOL
    assert points.width_deg == pytest.approx(100, abs=2 * TOL)
    assert circ_diff(points.bisector_deg, 180) < 2  # not 0°, the middle of min and max
    # the same in a bare list of angles that wraps
    arc = largest_arc(np.array([170.0, 178.0, -179.0, -172.0, -165.0]))
    assert arc == (170.0, -165.0) and arc.bisector_deg == pytest.approx(-177.5)


def test_small_gaps_are_bridged_and_large_ones_split_the_arc():
    bridged = insertion_points(crescent_slice(-150, -30, holes=[(-95, -80)]), (1.0, 1.0))
    assert circ_diff(bridged.first_deg, -150) < TOL and circ_diff(bridged.last_deg, -30) < TOL
    # a gap wider than GAP_DEG: the larger piece (-150 to -100) is the arc
    split = insertion_points(crescent_slice(-150, -30, holes=[(-100, -55)]), (1.0, 1.0))
    assert circ_diff(split.first_deg, -150) < TOL and circ_diff(split.last_deg, -100) < TOL
    assert largest_arc(np.array([0.0, GAP_DEG - 1, 100.0])) == (0.0, GAP_DEG - 1)
    assert largest_arc(np.array([0.0, GAP_DEG + 1, GAP_DEG + 10, 100.0])) == (
        GAP_DEG + 1,
        GAP_DEG + 10,
    )
    assert largest_arc(np.arange(-180.0, 180.0, 10.0)) is None  # contact all round: no ends
    assert largest_arc(np.array([])) is None


def test_a_separate_rv_contact_does_not_move_the_septum():
    """A small RV blob on the lateral wall (beyond GAP_DEG from the crescent) is not part of
    the septal arc; the mean direction of all contact would be pulled towards it."""
    sl = crescent_slice(-150, -30, blob_at=60)
    points = insertion_points(sl, (1.0, 1.0))
    assert circ_diff(points.first_deg, -150) < TOL and circ_diff(points.last_deg, -30) < TOL
    assert circ_diff(septum_bisector(sl, (1.0, 1.0)), -90) < 2


def test_no_rv_contact_gives_no_insertion_points_and_the_stack_mean():
    assert insertion_points(ring_slice(rv=False), (1.0, 1.0)) is None
    apart = ring_slice()
    apart[apart == 3] = 0
    apart[2:8, 2:8] = 3  # RV present but not touching the myocardium
    assert insertion_points(apart, (1.0, 1.0)) is None
    slices = [ring_slice(thick_at=0.0)] * 4 + [ring_slice(thick_at=0.0, rv=False), apart]
    out = aha_segments(stack(slices), stack(slices), (1.0, 1.0, 8.0))
    for phase in ("ed", "es"):
        record = out["septum"][phase]
        assert (record["insertion_points"], record["stack_mean"]) == (4, 2), record
        assert [r["slice"] for r in record["slices"]] == [0, 1, 2, 3]
        for r in record["slices"]:  # the RV disc touches the ring around -90°
            assert circ_diff(r["septum_deg"], -90) < 2
            assert circ_diff(r["anterior_deg"], -90) < 60 and r["anterior_deg"] > -90
            assert circ_diff(r["inferior_deg"], -90) < 60 and r["inferior_deg"] < -90


def test_segments_follow_the_insertion_points_bisector():
    """The segments are placed from the bisector: a small RV blob on the anterior wall, which
    pulls the mean direction of all RV contact by over 10°, does not move them. Every segment keeps
    its value with a thick lateral wall whose split between segments a moved septum would
    change."""
    from cardioseg.clinical.segments import _circular_mean_deg, _contact_angles

    with_blob = crescent_slice(-150, -30, blob_at=45, thick_at=90)
    pulled = _circular_mean_deg(np.radians(_contact_angles(with_blob, (1.0, 1.0))))
    assert circ_diff(pulled, -90) > 10
    out = aha_segments(stack([with_blob] * 6), None, SP)
    assert out["septum"]["ed"]["insertion_points"] == 6
    assert all(circ_diff(r["septum_deg"], -90) < 2 for r in out["septum"]["ed"]["slices"])
    ed = by_segment(out)
    assert ed[5] > ed[4] + 1.5 and ed[6] > ed[1] + 1.5
    ref = by_segment(aha_segments(stack([crescent_slice(-150, -30, thick_at=90)] * 6), None, SP))
    for s in SEGMENT_NAMES:
        assert ed[s] == pytest.approx(ref[s], abs=0.1), (s, ed[s], ref[s])


def test_apical_cap_with_and_without_a_myocardium_only_slice():
    base, mid, apex = ring_slice(12, 16), ring_slice(10, 14), ring_slice(6, 12)
    cap = ring_slice(0, 10)
    cap[cap == 1] = 2  # myocardium only: the apical cap
    none = apical_cap(stack([base, mid, apex, np.zeros_like(cap)]), (1.0, 1.0, 8.0))
    assert none == {"present": False, "slices": 0, "myocardium_ml": 0.0}
    spacing = (1.5, 1.5, 8.0)
    lab = stack([base, mid, apex, cap, cap, np.zeros_like(cap), cap])
    got = apical_cap(lab, spacing)
    expected_ml = 2 * int((cap == 2).sum()) * 1.5 * 1.5 * 8.0 / 1000
    assert got["present"] and got["slices"] == 2  # the slice after the gap is not counted
    assert got["myocardium_ml"] == pytest.approx(expected_ml, abs=1e-3)
    # apex first in storage: the cap is found at that end; a myocardium-only slice at the base
    # is not a cap
    flipped = apical_cap(lab[:, :, ::-1], spacing)
    assert flipped == got
    assert not apical_cap(stack([cap, base, mid, apex]), spacing)["present"]
    out = aha_segments(lab, None, spacing)
    assert out["apex"] == got
    assert [r["segment"] for r in out["segments"]] == list(range(1, 17))  # no segment 17 row


@pytest.mark.parametrize("es_kind", ["no RV", "no myocardium"])
def test_an_es_phase_whose_septum_cannot_be_placed_is_said_to_be_unmeasured(es_kind):
    """ES without RV (or without myocardium) gets no value: its septum record counts no slice
    (before: every ES slice was counted as taking the stack's mean direction, which did not
    exist) and the report's line says ES was not measured and why."""
    from cardioseg.clinical.report import segments_method_line

    ed = stack([ring_slice(12, 16)] * 2 + [ring_slice(10, 14)] * 4)
    if es_kind == "no RV":
        es = stack([ring_slice(9, 16, rv=False)] * 2 + [ring_slice(7, 14, rv=False)] * 4)
        why = "no RV touching the myocardium"
    else:
        es = ed.copy()
        es[es == 2] = 0
        why = "no slice with LV cavity and myocardium"
    out = aha_segments(ed, es, SP)
    assert all(r["es_mm"] is None and r["thickening_pct"] is None for r in out["segments"])
    record = out["septum"]["es"]
    assert (record["insertion_points"], record["stack_mean"]) == (0, 0), record
    assert record["not_measured"] == why
    assert "not_measured" not in out["septum"]["ed"]
    line = segments_method_line(out)
    assert line.startswith("Septum from the RV insertion points on 6 of 6 slices at ED (")
    assert f"ES not measured: {why}." in line and "at ES" not in line, line


def test_a_report_says_why_there_are_no_segments(tmp_path, figure_text):
    """Without segments (no RV at ED, too few LV slices) report.json, the HTML and the PDF say
    why, where the section was simply missing."""
    import json

    from cardioseg.clinical import write_report

    no_rv = stack([ring_slice(12, 16, rv=False)] * 2 + [ring_slice(10, 14, rv=False)] * 4)
    two = stack([ring_slice(12, 16)] * 2)
    assert aha_segments(no_rv, None, (1.0, 1.0, 8.0)) is None
    why = why_no_segments(no_rv, (1.0, 1.0, 8.0))
    assert why == "no RV touching the myocardium at ED, so the septum could not be placed"
    assert why_no_segments(two, (1.0, 1.0, 8.0)) == (
        "fewer than 3 slices with LV cavity and myocardium at ED (2)"
    )
    ok = stack([ring_slice(12, 16)] * 2 + [ring_slice(10, 14)] * 4)
    assert why_no_segments(ok, (1.0, 1.0, 8.0)) == ""

    out = tmp_path / "out"
    write_report(out, {"lv_ef_pct": 55.0}, None, segments=None, segments_not_measured=why)
    report = json.loads((out / "report.json").read_text())
    assert report["wall_segments_not_measured"] == why and "wall_segments" not in report
    assert f"Not measured: {why}." in (out / "report.html").read_text()
    assert f"Not measured: {why}." in " ".join(figure_text)
