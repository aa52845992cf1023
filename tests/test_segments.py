"""Wall thickness per AHA segment (synthetic rings with a known RV side and thick wall)."""

from __future__ import annotations

import re

import numpy as np
import pytest

from cardioseg.clinical.segments import SEGMENT_NAMES, aha_segments, segment_of

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
    # without segments: no section, no figure, one PDF page less
    plain = write_report(tmp_path / "plain", {"lv_ef_pct": 55.0}, None)
    assert "segments" not in plain
    assert "AHA segment" not in plain["html"].read_text()

    def pages(pdf) -> int:
        return int(re.search(rb"/Count (\d+)", pdf.read_bytes()).group(1))

    assert pages(files["pdf"]) == pages(plain["pdf"]) + 1


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
