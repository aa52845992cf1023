"""Overlay montages: the window around the heart and the written figure."""

from __future__ import annotations

import numpy as np
import pytest

from cardioseg.reporting.overlays import foreground_window, overlay_montage


def _box(shape=(100, 120, 4), where=(slice(40, 60), slice(50, 70), slice(1, 3))) -> np.ndarray:
    lab = np.zeros(shape, np.uint8)
    lab[where] = 1
    return lab


def test_window_is_square_in_mm_around_the_foreground():
    # 20 x 20 voxels of 1 mm: 10 mm half extent + 25 mm margin -> 35 mm, below the 45 mm minimum
    assert foreground_window([_box()], (1.0, 1.0, 8.0)) == (slice(5, 95), slice(15, 105))
    # in-plane spacing differs between the axes: the window is square in millimetres
    lab = _box(where=(slice(40, 70), slice(50, 60), slice(0, 4)))
    w0, w1 = foreground_window([lab], (1.0, 2.0, 8.0), margin_mm=10.0, min_size_mm=0.0)
    assert (w0.stop - w0.start) * 1.0 == pytest.approx((w1.stop - w1.start) * 2.0, abs=2.0)
    assert w0.start <= 40 and w0.stop >= 70 and w1.start <= 50 and w1.stop >= 60


def test_window_covers_every_volume_and_is_clipped():
    ed = _box(where=(slice(2, 10), slice(5, 15), slice(0, 1)))  # at the image's edge
    es = _box(where=(slice(30, 40), slice(60, 80), slice(3, 4)))
    w0, w1 = foreground_window([ed, es], (1.5, 1.5, 10.0))
    assert w0.start == 0 and w0.stop >= 40  # clipped at 0, reaches the ES box
    assert w1.start <= 5 and w1.stop >= 80
    assert foreground_window([np.zeros((10, 10, 3), np.uint8)], (1.0, 1.0, 5.0)) is None
    assert foreground_window([], (1.0, 1.0, 5.0)) is None


def test_window_with_the_slice_axis_first():
    lab = np.moveaxis(_box(), 2, 0)  # (slices, x, y): the largest spacing says which is which
    assert foreground_window([lab], (8.0, 1.0, 1.0)) == (slice(5, 95), slice(15, 105))


def test_montage_in_the_window(tmp_path):
    import matplotlib.pyplot as plt

    rng = np.random.default_rng(0)
    image = rng.normal(size=(100, 120, 4)).astype(np.float32)
    label = _box()
    heat = np.zeros_like(image)
    window = foreground_window([label], (1.0, 1.0, 8.0))
    whole = overlay_montage(image, label, tmp_path / "whole.png", (1.0, 1.0, 8.0), heat=heat)
    cut = overlay_montage(
        image, label, tmp_path / "cut.png", (1.0, 1.0, 8.0), heat=heat, window=window
    )
    a, b = plt.imread(whole), plt.imread(cut)
    assert a.shape == b.shape  # the same panels, the same figure size
    assert not np.array_equal(a, b)  # but another field of view
    assert not list(tmp_path.glob(".*")), "temporary files left behind"


def test_volume_curve_marksreported_volumes_where_they_differ():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from cardioseg.clinical.report import _plot_curve, reported_volumes

    lv, rv = [70.0, 60.0, 40.0, 55.0], [60.0, 50.0, 45.0, 58.0]
    indices = {"lv_edv_ml": 70.0, "rv_edv_ml": 60.0, "lv_esv_ml": 46.5, "rv_esv_ml": 45.0}
    reported = reported_volumes(indices)
    assert reported == {"ED": (70.0, 60.0), "ES": (46.5, 45.0)}

    def diamonds(rep) -> tuple[list[tuple[float, float]], list[str]]:
        fig, ax = plt.subplots()
        _plot_curve(ax, lv, rv, 0, 2, rep)
        found = [
            (float(line.get_xdata()[0]), float(line.get_ydata()[0]))
            for line in ax.get_lines()
            if line.get_marker() == "D"
        ]
        legend = [t.get_text() for t in ax.get_legend().get_texts()]
        plt.close(fig)
        return found, legend

    found, legend = diamonds(reported)
    assert found == [(2.0, 46.5)]  # only the ES LV differs from the per-frame curve
    assert "as reported at ED/ES" in legend
    found, legend = diamonds(reported_volumes({"lv_edv_ml": 70.0, "lv_esv_ml": 40.0}))
    assert found == [] and "as reported at ED/ES" not in legend
    assert reported_volumes({"lv_edv_ml": float("nan")})["ED"] == (None, None)


def test_montage_marks_the_slices_to_check(tmp_path):
    import matplotlib.pyplot as plt

    image = np.random.default_rng(2).normal(size=(60, 60, 4)).astype(np.float32)
    label = _box((60, 60, 4), (slice(20, 40), slice(20, 40), slice(0, 4)))

    def orange_pixels(marked) -> int:
        path = overlay_montage(image, label, tmp_path / f"m{len(marked)}.png", marked=marked)
        rgb = (plt.imread(path)[..., :3] * 255).astype(int)
        near = np.abs(rgb - np.array([211, 84, 0])).max(axis=-1) < 25  # the "check" colour
        return int(near.sum())

    assert orange_pixels([]) == 0
    assert orange_pixels([2]) > 20


# --- the clinical report (report.html / report.pdf) -------------------------------------------

#: indices of a man of 175 cm and 80 kg (BSA 1.97 m²), with the longest range texts: the
#: absolute LV mass (not judged next to its index) and the wall thickness criterion
REPORT_INDICES = {
    "lv_edv_ml": 186.6,
    "lv_esv_ml": 132.0,
    "lv_sv_ml": 54.6,
    "lv_ef_pct": 29.3,
    "lv_mass_g": 117.8,
    "lv_max_wall_thickness_ed_mm": 10.6,
    "rv_edv_ml": 68.1,
    "rv_esv_ml": 20.9,
    "rv_sv_ml": 47.2,
    "rv_ef_pct": 69.4,
    "bsa_m2": 1.972,
    "lvedv_index_ml_m2": 94.6,
    "lv_mass_index_g_m2": 59.7,
    "heart_rate_bpm": 80.0,
    "lv_ci_l_min_m2": 2.2,
}


@pytest.mark.parametrize("sex", ["M", None])
def test_pdf_indices_table_text_fits_its_cells(tmp_path, sex):
    """The absolute LV mass's range ("92–176 (not judged: see the index)") was wider than its
    column on the PDF's first page and ran over the unit ("9g2–176"): every cell's text must
    lie inside its cell."""
    import json

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from cardioseg.clinical.report import _pdf_indices_table, report_table, write_report

    files = write_report(tmp_path, REPORT_INDICES, None, write_pdf=False, sex=sex)
    report = json.loads(files["json"].read_text())
    rows, _ = report_table(report)
    fig = plt.figure(figsize=(8.27, 11.69))  # the PDF page, the table where the page puts it
    height = 0.022 * (len(rows) + 1)
    tab = _pdf_indices_table(fig, report, rows, (0.07, 0.9 - height, 0.86, height))
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    overflowing = []
    for cell in tab.get_celld().values():
        box, text = cell.get_window_extent(renderer), cell.get_text()
        if not text.get_text():
            continue
        inside = text.get_window_extent(renderer)
        if inside.x0 < box.x0 - 0.5 or inside.x1 > box.x1 + 0.5:
            overflowing.append(text.get_text())
    plt.close(fig)
    assert "117.8" in [r["value"] for r in rows]
    assert overflowing == []


def test_each_normal_range_names_its_source(tmp_path):
    """The reports listed the four references of the normal ranges together, so a reader could
    not tell which one a range came from (the LVEF's and the LV volumes' differ): each range
    carries the number of its reference in the footnote, in the HTML and the PDF."""
    import html as html_lib
    import json
    import re

    from cardioseg.clinical.indices import NORMAL_RANGE_SOURCES
    from cardioseg.clinical.report import _provenance_lines, report_table, write_report

    files = write_report(tmp_path, REPORT_INDICES, None, sex="M")
    report = json.loads(files["json"].read_text())
    text = html_lib.unescape(files["html"].read_text())
    note = re.search(r"Normal ranges: adult men \(mean ± 2 SD\)(.*?)LV mass =", text, re.S)
    assert note, "the footnote of the indices table"
    listed = note.group(1).split(":", 1)[1].strip().rstrip(".")
    parts = re.split(r"(?:^|;\s+)\[(\d+)\]\s+", listed)[1:]
    numbered = dict(zip(parts[::2], parts[1::2], strict=True))
    assert len(numbered) >= 3
    cited = {}
    for key, name in (("lv_ef_pct", "ejection fraction"), ("lv_edv_ml", "end-diastolic vol")):
        cell = re.search(rf"LV {name}\w*</td>.*?</td>.*?</td><td>([^<]*)</td>", text)
        assert cell, name
        ref = re.search(r"\[(\d+)\]", cell.group(1))
        assert ref, f"the {name} range names no reference: {cell.group(1)!r}"
        cited[key] = numbered[ref.group(1)]
        assert cited[key] == NORMAL_RANGE_SOURCES[key] == report["normal_ranges"][key]["source"]
    assert cited["lv_ef_pct"] != cited["lv_edv_ml"]
    # the PDF's footnote numbers the references in the same order as its cells cite them
    rows, _ = report_table(report)
    pdf_note = " ".join(_provenance_lines(report, rows))
    for number, source in numbered.items():
        assert f"[{number}] {source}" in pdf_note


def test_an_ed_es_pair_is_not_reported_as_frames_of_a_cine(tmp_path, monkeypatch):
    """For an ED/ES pair of volumes (M&Ms, ACDC) the header said "the two given volumes", but
    the overlay was titled "ED (frame 0)", "ES (frame 1)" (ACDC patient001's are frames 1 and
    12) and the curve joined the two volumes as frames 0 and 1, explained as "ED is the frame
    with the largest LV volume". A cine keeps its frame numbers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    import cardioseg.reporting.overlays as overlays
    from cardioseg.clinical.report import _plot_curve, write_report

    titles: list[str] = []
    real = overlays.overlay_montage

    def spy(*args, **kwargs):
        titles.append(kwargs.get("title", ""))
        return real(*args, **kwargs)

    monkeypatch.setattr(overlays, "overlay_montage", spy)
    label = _box((40, 40, 3), (slice(10, 30), slice(10, 30), slice(0, 3)))
    image = label.astype(np.float32)
    indices = {"lv_edv_ml": 150.0, "lv_esv_ml": 60.0, "lv_ef_pct": 60.0}
    curve = {"lv_ml": [150.0, 60.0], "rv_ml": [140.0, 70.0]}
    common = {"images": {"ED": (image, label), "ES": (image, label)}, "write_pdf": False}
    texts = {}
    for kind in ("pair", "dicom"):
        titles.clear()
        files = write_report(
            tmp_path / kind, indices, None, curve, 0, 1, meta={"source_kind": kind}, **common
        )
        texts[kind] = (list(titles), files["html"].read_text())
    (pair_titles, pair_html), (cine_titles, cine_html) = texts["pair"], texts["dicom"]
    assert len(pair_titles) == 2 and not any("frame" in t for t in pair_titles)
    assert [t.split(":")[0] for t in pair_titles] == ["ED", "ES"]
    assert cine_titles[0].startswith("ED (frame 0)") and cine_titles[1].startswith("ES (frame 1)")
    assert "ED is the frame with the largest LV volume" in cine_html
    assert "ED is the frame" not in pair_html and "two given volumes" in pair_html

    def drawn(pair: bool) -> tuple[list[str], str, list[str]]:
        fig, ax = plt.subplots()
        _plot_curve(ax, curve["lv_ml"], curve["rv_ml"], 0, 1, None, pair)
        fig.canvas.draw()
        ticks = [t.get_text() for t in ax.get_xticklabels() if t.get_text()]
        styles = [
            line.get_linestyle() for line in ax.get_lines() if line.get_label() in ("LV", "RV")
        ]
        xlabel = ax.get_xlabel()
        plt.close(fig)
        return ticks, xlabel, styles

    ticks, xlabel, styles = drawn(True)
    assert ticks == ["ED", "ES"] and xlabel != "frame"
    assert styles and all(s in ("None", "none", "") for s in styles)  # two volumes, no curve
    ticks, xlabel, styles = drawn(False)
    assert xlabel == "frame" and "-" in styles


def test_every_pdf_page_is_a4_and_carries_the_label_and_the_disclaimer(tmp_path, monkeypatch):
    """The study label was on the first PDF page only, the slice table's and the volume curve's
    pages had no research-use disclaimer, and the curve's page was 8.27 × 5.8 in (not A4): a
    printed page read on its own did not say whose study it is, nor that it is not for
    clinical use."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.backends.backend_pdf import PdfPages

    from cardioseg.clinical.report import DISCLAIMER, write_report

    pages: list[tuple[tuple[float, float], list[str]]] = []
    real = PdfPages.savefig

    def spy(self, figure=None, **kwargs):
        pages.append(
            (
                tuple(round(float(v), 2) for v in figure.get_size_inches()),
                [t.get_text() for t in figure.texts],
            )
        )
        return real(self, figure, **kwargs)

    monkeypatch.setattr(PdfPages, "savefig", spy)
    label = _box((40, 40, 3), (slice(10, 30), slice(10, 30), slice(0, 3)))
    image = label.astype(np.float32)
    slices = [
        {
            "slice": z,
            "position": "",
            **dict.fromkeys(
                ("lv_ed_ml", "lv_es_ml", "myo_ed_ml", "myo_es_ml", "rv_ed_ml", "rv_es_ml"), 1.0
            ),
        }
        for z in range(3)
    ]
    files = write_report(
        tmp_path,
        REPORT_INDICES,
        None,
        {"lv_ml": [186.6, 150.0, 132.0], "rv_ml": [68.1, 40.0, 20.9]},
        0,
        2,
        images={"ED": (image, label), "ES": (image, label)},
        meta={"patient_label": "study 2026-041", "source_kind": "dicom"},
        slices=slices,
        segments_not_measured="fewer than 3 LV slices",
    )
    assert files["pdf"].exists()
    assert len(pages) >= 4  # indices, overlay, slice table, curve, AHA segments' note
    for k, (size, texts) in enumerate(pages, start=1):
        assert size == (8.27, 11.69), f"page {k} is not A4"
        assert any("study 2026-041" in t for t in texts), f"page {k} has no study label"
        joined = " ".join(" ".join(texts).split())  # page 1 wraps it over two lines
        assert DISCLAIMER in joined, f"page {k} has no disclaimer"


def test_html_says_research_use_and_the_body_size_before_the_numbers(tmp_path):
    """The HTML said "Research use only ..." only in its last box, under the figures and the
    processing details, and the height, weight and sex it used only in that table; the PDF
    says both at the top of its first page. The HTML now does too, above the indices."""
    import html as html_lib

    from cardioseg.clinical.report import DISCLAIMER, write_report

    meta = {"body_size": "175 cm (given), 80 kg (given)", "ranges_sex": "M (given)"}
    files = write_report(tmp_path, REPORT_INDICES, None, meta=meta, write_pdf=False, sex="M")
    text = html_lib.unescape(files["html"].read_text())
    first_number = text.index("<h2>Indices</h2>")
    assert -1 < text.find(DISCLAIMER) < first_number
    assert text.count(DISCLAIMER) == 2  # and still in the box at the end
    body = text.find("Height, weight: 175 cm (given), 80 kg (given); Sex: M (given)")
    assert -1 < body < first_number


@pytest.mark.parametrize(
    ("kind", "counts", "input_text", "window_text"),
    [
        (
            "dicom",
            {"window": 22, "full": 0, "fallback": 0},
            "DICOM series",
            "used for all 22 segmentations (every frame once, ED and ES a second time)",
        ),
        (
            "pair",
            {"window": 1, "full": 2, "fallback": 1},
            "ED and ES volumes (NIfTI)",
            "used for 1 of 4 segmentations (every frame once, ED and ES a second time);"
            " the whole image for 2 (no heart found on the middle slice);"
            " the whole image for 1 (the heart reached the window's edge)",
        ),
    ],
)
def test_processing_table_speaks_the_readers_language(
    tmp_path, kind, counts, input_text, window_text
):
    """The "Acquisition and processing" table read "input: dicom", "slice axis: 2" and "heart
    window ...: window: 22, full: 0, fallback: 0": the rows are now in words, every number
    kept, and report.json keeps the machine-readable keys and values."""
    import html as html_lib
    import json
    import re

    from cardioseg.clinical.report import write_report

    n_frames = 20 if kind == "dicom" else 2
    meta = {
        "source_kind": kind,
        "n_frames": n_frames,
        "spacing_mm": [10.000000244, 1.1824324052, 1.1824323976],  # slices along the first
        "slice_axis": 0,
        "seconds": 4.7234,
        "network_runtime": "onnxruntime, float32",
        "heart_window": counts,
    }
    files = write_report(tmp_path, REPORT_INDICES, None, meta=meta, write_pdf=False)
    text = html_lib.unescape(files["html"].read_text())
    table = text[text.index("<h2>Acquisition and processing</h2>") :]
    rows = dict(re.findall(r"<tr><td>([^<]*)</td><td>([^<]*)</td></tr>", table))
    assert rows == {
        "input": input_text,
        "frames": str(n_frames),
        "voxel size": "1.182 × 1.182 mm in-plane; slices 10 mm apart",
        "slice direction": "the image volume's 1st axis",
        "analysis time": "4.723 s",
        "neural network run by": "ONNX Runtime, in float32 precision",
        "heart window (the network segments a crop around the heart)": window_text,
    }
    assert json.loads(files["json"].read_text())["meta"] == meta


def test_text_from_the_input_is_escaped_in_the_reports(tmp_path):
    """The study label, the DICOM series description and vendor (free text a crafted study
    controls) and the input notes (which name files of the upload) are escaped in the HTML:
    a downloaded report.html opened from disk has no Content-Security-Policy to stop a
    script. The PDF takes the same text as it is, "$" included."""
    import html as html_lib
    import json

    from cardioseg.clinical.report import write_report

    payload = "<script>alert(1)</script><img src=x onerror=alert(2)>\"'</style>$\\x^$"
    meta = {
        "patient_label": "L " + payload,
        "series_description": "cine " + payload,
        "vendor": "vendor " + payload,
        "warnings": ["damaged file left out: study/" + payload + ".dcm"],
    }
    files = write_report(tmp_path, REPORT_INDICES, None, meta=meta, write_pdf=True)
    text = files["html"].read_text()
    assert "<script" not in text.lower() and "<img src=x" not in text
    assert text.count("</style>") == 1  # the report's own style sheet only
    for shown in ("L ", "cine ", "vendor ", "damaged file left out: study/"):
        assert html_lib.escape(shown + payload) in text, shown
    assert json.loads(files["json"].read_text())["patient_label"] == "L " + payload
    assert files["pdf"].read_bytes().startswith(b"%PDF")
