"""``cardioseg explore``: report, figures, animations and domain separability on synthetic vendors;
bad input; a quick look at the real M&Ms subset when present."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from conftest import shared_or_skip
from typer.testing import CliRunner

from cardioseg.cli.main import app
from cardioseg.data.synthetic import PhantomConfig, make_cine, make_phantom, write_phantom
from cardioseg.exploration import explore_datasets
from cardioseg.exploration.explore import domain_separability

runner = CliRunner()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("explore")
    for vendor, seeds in (("siemens", (0, 1, 2)), ("ge", (10, 11, 12))):
        for s in seeds:
            cfg = PhantomConfig(seed=s, shape=(56, 56), spacing=3.5, n_slices=4, vendor=vendor)
            write_phantom(make_phantom(cfg), root / vendor, name=f"{vendor}{s}")
    cine = make_cine(PhantomConfig(seed=5, shape=(48, 48), spacing=4.0, n_slices=3), 6)
    (root / "cine").mkdir()
    nib.save(nib.Nifti1Image(cine.image, cine.affine), str(root / "cine" / "study.nii.gz"))
    return root


def test_explore_writes_report_figures_and_animations(tmp_path, data):
    out = tmp_path / "out"
    report = explore_datasets(
        [data / "siemens", data / "ge", data / "cine"], out, domain_key="dataset"
    )
    text = report.read_text()
    for section in (
        "## Cases",
        "## Geometry",
        "## Intensities",
        "## Mid-ventricular slices",
        "## Animations",
        "## Domain separability",
    ):
        assert section in text
    assert "| siemens | 3 | 6 | 6 |" in text and "| ge | 3 | 6 | 6 |" in text
    from PIL import Image

    for f in ("histograms_raw.png", "histograms_normalised.png", "montage_mid_slices.png"):
        assert (out / "figures" / f).stat().st_size > 1000
        assert f"figures/{f}" in text
        with Image.open(out / "figures" / f) as im:  # legible in print
            assert min(im.info["dpi"]) >= 150, (f, im.info)
        pdf = (out / "figures" / f).with_suffix(".pdf")
        assert pdf.read_bytes().startswith(b"%PDF")  # a vector copy for a paper
    gifs = sorted(p.name for p in (out / "animations").glob("*.gif"))
    assert "cine_study.gif" in gifs and any(g.startswith("ed_es_") for g in gifs)
    from PIL import Image

    with Image.open(out / "animations" / "cine_study.gif") as im:
        assert im.n_frames == 6
    stats = json.loads((out / "stats.json").read_text())
    sep = stats["separability"]
    assert sep["classes"] == ["ge", "siemens"] and sep["left_out"] == ["cine"]
    assert set(sep["results"]) == {"raw intensity", "normalised intensity", "geometry", "all"}
    assert sep["results"]["raw intensity"]["mean"] > 0.5  # vendors differ in stored range
    assert (out / "cases.csv").read_text().count("\n") == 1 + 13  # header + volumes


def test_explore_counts_volumes_stored_mirrored(tmp_path):
    """The same phantom stored canonically and as a mirror image (columns reversed, affine
    saying so): the report counts the mirrored domain's volumes."""
    from dataclasses import replace

    ph = make_phantom(PhantomConfig(seed=4, shape=(48, 48), spacing=3.5, n_slices=4))
    write_phantom(ph, tmp_path / "canonical", name="p")
    flip = np.eye(4)
    flip[1, 1], flip[1, 3] = -1.0, ph.images["ED"].shape[1] - 1
    mirrored = replace(
        ph,
        images={k: v[:, ::-1].copy() for k, v in ph.images.items()},
        labels={k: v[:, ::-1].copy() for k, v in ph.labels.items()},
        affine=ph.affine @ flip,
    )
    write_phantom(mirrored, tmp_path / "mirrored", name="p")
    text = explore_datasets(
        [tmp_path / "canonical", tmp_path / "mirrored"],
        tmp_path / "out",
        domain_key="dataset",
        max_animations=0,
    ).read_text()
    rows = {
        line.split("|")[1].strip(): line.split("|")[-2].strip()
        for line in text.splitlines()
        if line.startswith("| canonical |") or line.startswith("| mirrored |")
    }
    assert rows == {"canonical": "0 of 2", "mirrored": "2 of 2"}, rows


def test_domain_separability_handles_small_data():
    rng = np.random.default_rng(0)
    feats = {"f": [rng.normal(i % 2 * 3, 1, 4) for i in range(8)]}
    doms = ["a" if i % 2 == 0 else "b" for i in range(8)]
    res = domain_separability(feats, doms, [f"s{i}" for i in range(8)])
    assert res["chance"] == 0.5 and res["results"]["f"]["mean"] > 0.8
    res = domain_separability(feats, ["a"] * 7 + ["b"], [f"s{i}" for i in range(8)])
    assert "note" in res and res["left_out"] == ["b"]


def test_explore_cli_bad_input(tmp_path, data):
    r = runner.invoke(app, ["explore", str(tmp_path / "missing"), "-o", str(tmp_path / "o")])
    assert r.exit_code == 1 and "dataset folder not found" in r.output
    r = runner.invoke(
        app, ["explore", str(data / "ge"), "-o", str(tmp_path / "o"), "--by", "scanner"]
    )
    assert r.exit_code == 1 and "unknown domain key" in r.output
    assert len(r.output.strip().splitlines()) == 1 and "Traceback" not in r.output


@pytest.mark.integration
def test_explore_real_mnms(tmp_path):
    mnms = shared_or_skip("mnms")
    r = runner.invoke(app, ["explore", str(mnms), "-o", str(tmp_path), "--by", "vendor"])
    assert r.exit_code == 0, r.output
    text = (tmp_path / "report.md").read_text()
    for vendor in ("Philips", "Siemens", "GE"):
        assert f"| {vendor} | 1 | 2 | 2 |" in text
    assert len(list((tmp_path / "animations").glob("ed_es_*.gif"))) == 3


def test_explore_figures_label_their_axes_and_show_the_lv_contour(tmp_path, monkeypatch):
    """Every histogram panel has both axis labels; in the montage the LV contour (the MYO's
    inner border) is drawn after the MYO's, so that it is seen, and a legend names the
    colours."""
    import matplotlib.colors as mcolors

    from cardioseg.exploration import explore as ex

    figs = []
    monkeypatch.setattr(ex, "_save", lambda fig, path: figs.append(fig) or path)
    rng = np.random.default_rng(0)
    samples = {"A": {"raw": [rng.random(500)], "norm": [rng.normal(size=500)]}}
    ex._histograms(samples, tmp_path)
    for fig in figs:
        for ax in fig.axes:
            if ax.get_visible() and ax.axison:
                assert ax.get_xlabel() and ax.get_ylabel(), ax.get_title()
    lab = np.zeros((20, 20), np.uint8)
    lab[4:16, 4:16] = 2
    lab[7:13, 7:13] = 1
    lab[15:19, 2:8] = 3
    figs.clear()
    ex._montage({"A": [("s1 ED", np.zeros((20, 20), np.uint8), lab, 1.0)]}, tmp_path)
    (fig,) = figs
    colours = [
        mcolors.to_hex(c.get_edgecolor()[0])
        for c in fig.axes[0].collections
        if len(c.get_edgecolor())
    ]
    red, green = mcolors.to_hex("r"), mcolors.to_hex("g")
    assert colours.index(red) > colours.index(green), colours
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["LV", "MYO", "RV"]
