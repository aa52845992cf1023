"""End-to-end clinical analysis (``analyze``, ``analyze-batch``) and ``demo`` through the CLI."""

from __future__ import annotations

import csv
import json
import logging
import os
import re
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from conftest import REPORT_KEYS
from test_dicom import new_study, write_image
from typer.testing import CliRunner

from cardioseg.cli.main import app
from cardioseg.clinical.batch import _analyze_one as _REAL_ANALYZE_ONE
from cardioseg.data.synthetic import PhantomConfig, make_cine, make_phantom, write_phantom
from cardioseg.errors import CardiosegError

runner = CliRunner()


def _run(args: list) -> object:
    return runner.invoke(app, [str(a) for a in args])


def _small_cine(seed: int = 1, frames: int = 6):
    return make_cine(
        PhantomConfig(seed=seed, shape=(64, 56), spacing=3.0, n_slices=4, slice_spacing=10.0),
        frames,
    )


def _write_cine(path: Path, seed: int = 1, frames: int = 6) -> tuple[Path, np.ndarray]:
    cine = _small_cine(seed, frames)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(cine.image.astype(np.float32), cine.affine), str(path))
    return path, cine.affine


def _assert_clean_failure(res, *needles: str) -> None:
    assert res.exit_code != 0
    text = res.output.strip()
    assert "Traceback" not in text
    assert len(text.splitlines()) == 1, text
    for n in needles:
        assert n in text, text


def test_analyze_4d_nifti(tmp_path, tiny_checkpoint):
    cine_path, affine = _write_cine(tmp_path / "cine.nii.gz")
    out = tmp_path / "out"
    res = _run(["analyze", cine_path, "-o", out, "--model", tiny_checkpoint, "--no-pdf"])
    assert res.exit_code == 0, res.output
    report = json.loads((out / "report.json").read_text())
    assert REPORT_KEYS <= set(report)
    assert report["qc"]["status"] in ("ok", "review", "fail")
    assert isinstance(report["qc"]["reasons"], list)
    assert 0 <= report["ed_frame"] < 6 and 0 <= report["es_frame"] < 6
    masks = nib.load(str(out / "masks_cine.nii.gz"))
    assert masks.shape == (64, 56, 4, 6)
    np.testing.assert_allclose(masks.affine, affine, atol=1e-4)
    assert set(np.unique(np.asarray(masks.dataobj))) <= {0, 1, 2, 3}
    assert (out / "report.html").exists() and (out / "mask_ED.nii.gz").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]  # no temp left
    # the summary line shows the indices to one decimal, as they are reported clinically
    shown = re.search(r"LVEF (\S+) %  LVEDV (\S+) mL", res.output)
    assert shown and shown.group(2) == f"{report['lv_edv_ml']:.1f}", res.output
    # processing details are readable: spacing to 4 significant digits, in-plane and between
    # the slices (along the slice axis), not a JSON dump
    html = (out / "report.html").read_text()
    axis = report["meta"]["slice_axis"]
    spacing = report["meta"]["spacing_mm"]
    inplane = " × ".join(f"{v:.4g}" for k, v in enumerate(spacing) if k != axis)
    voxel = f"{inplane} mm in-plane; slices {spacing[axis]:.4g} mm apart"
    assert f"<td>voxel size</td><td>{voxel}</td>" in html
    assert "<td>input</td><td>4D cine (NIfTI)</td>" in html
    # which model produced the result, and that its QC thresholds are another model's
    assert report["meta"]["model"].startswith("tiny.pt (sha256 ")
    assert f"<td>model</td><td>{report['meta']['model']}</td>" in html
    from cardioseg.inference import Segmenter

    ran = Segmenter(tiny_checkpoint)  # what the CLI loaded: its backend and precision here
    assert report["meta"]["network_runtime"] == f"{ran.backend}, {ran.precision}"
    runtime = {"torch": "PyTorch", "onnxruntime": "ONNX Runtime"}[ran.backend]
    assert f"<td>neural network run by</td><td>{runtime}, in {ran.precision} precision" in html
    assert report["meta"]["qc_calibration"].startswith("none for this model")
    assert report["qc"]["reasons"][-1].startswith("the uncertainty thresholds were calibrated")


def test_analyze_ed_es_pair_with_bsa(tmp_path, tiny_checkpoint):
    ph = make_phantom(PhantomConfig(seed=2, shape=(64, 64), spacing=3.0, n_slices=4))
    paths = write_phantom(ph, tmp_path / "in", name="p")
    out = tmp_path / "pair"
    res = _run(
        [
            "analyze",
            "--ed",
            paths["p_ED"],
            "--es",
            paths["p_ES"],
            "-o",
            out,
            "--height",
            175,
            "--weight",
            70,
            "--model",
            tiny_checkpoint,
            "--no-pdf",
        ]
    )
    assert res.exit_code == 0, res.output
    report = json.loads((out / "report.json").read_text())
    assert (report["ed_frame"], report["es_frame"]) == (0, 1)
    assert report["bsa_m2"] == pytest.approx(np.sqrt(175 * 70 / 3600), rel=1e-3)
    # the research-use group suggestion (or why there is none) is in every report
    sugg = report["diagnosis_suggestion"]
    assert "not a diagnosis" in (sugg["text"] if sugg["shown"] else sugg["disclaimer"]).lower()
    assert "Research-use group suggestion (not a diagnosis)" in (out / "report.html").read_text()
    assert not (out / "masks_cine.nii.gz").exists()  # a pair has no cine


def _dicom_phantom_cine(
    folder: Path, without_slice: int | None = None, places=None, **study_kw
) -> dict:
    """A 4-slice x 5-phase DICOM cine of the synthetic phantom (Siemens style); with
    ``without_slice`` the files of that slice are left out (a gap in the stack); ``places``
    puts slice k at ``places[k]`` slice steps (uneven gaps); ``study_kw`` go to
    :func:`new_study` (e.g. ``age="012Y"``)."""
    cine = _small_cine(seed=3, frames=5)
    study = new_study(vendor="SIEMENS", **study_kw)
    uid = pydicom.uid.generate_uid()
    scaled = cine.image / cine.image.max() * 1000.0
    n = 0
    for k in range(cine.image.shape[2]):
        if k == without_slice:
            continue
        for t in range(cine.image.shape[3]):
            n += 1
            pixels = np.clip(scaled[:, :, k, t].T, 0, 4000).astype(np.uint16)
            write_image(
                folder / f"IM{n:04d}",
                study,
                k=k if places is None else places[k],
                t=t,
                series_uid=uid,
                instance=n,
                trigger=40.0 * t,
                pixels=pixels,
            )
    return study


def test_analyze_batch_lists_input_warnings(tmp_path, tiny_checkpoint):
    _dicom_phantom_cine(tmp_path / "studies" / "clean")
    _dicom_phantom_cine(tmp_path / "studies" / "damaged")
    victim = sorted((tmp_path / "studies" / "damaged").iterdir())[2]
    victim.write_bytes(victim.read_bytes()[:300])  # a truncated image: left out, with a warning
    out = tmp_path / "batch"
    args = ["analyze-batch", tmp_path / "studies", "-o", out, "--model", tiny_checkpoint]
    res = _run([*args, "--no-pdf", "--no-progress"])
    assert res.exit_code == 0, res.output
    rows = {r["study"]: r for r in csv.DictReader(open(out / "results.csv"))}
    assert rows["clean"]["input_warnings"] == ""
    assert "1 DICOM file(s) could not be read" in rows["damaged"]["input_warnings"]
    assert rows["damaged"]["status"] == "done"


class _SeesNothing:
    """A segmenter that finds no heart anywhere (wraps a real one for everything else)."""

    def __init__(self, inner):
        self._inner = inner

    def predict_volume(self, *args, **kwargs):
        out = self._inner.predict_volume(*args, **kwargs)
        if isinstance(out, tuple):
            return (np.zeros_like(out[0]), *out[1:])
        return np.zeros_like(out)

    def __getattr__(self, name):
        return getattr(self._inner, name)


def test_analyze_dicom_where_nothing_is_segmented(tmp_path, tiny_checkpoint):
    """No heart found: the analysis still ends with a report whose QC fails, and no DICOM-SEG
    (a SEG without any segment is not valid DICOM; it used to abort the whole analysis)."""
    from cardioseg.clinical.analysis import analyze_study
    from cardioseg.inference import Segmenter

    _dicom_phantom_cine(tmp_path / "dcm")
    seg = _SeesNothing(Segmenter(tiny_checkpoint))
    report = analyze_study(tmp_path / "out", study=tmp_path / "dcm", segmenter=seg, write_pdf=False)
    assert report["qc"]["status"] == "fail"
    assert report["lv_edv_ml"] == 0.0
    assert (tmp_path / "out" / "report.html").exists()
    assert not list((tmp_path / "out").glob("segmentation*.dcm"))


def test_analyze_dicom_with_a_missing_slice(tmp_path, tiny_checkpoint):
    """No images at one position of the stack: the masks keep every slice in its place, the
    empty slice is labelled nothing, the QC asks for review and names it, and the SEG
    references only images that exist."""
    import nibabel as nib

    _dicom_phantom_cine(tmp_path / "dcm", without_slice=2)
    out = tmp_path / "out"
    res = _run(["analyze", tmp_path / "dcm", "-o", out, "--model", tiny_checkpoint, "--no-pdf"])
    assert res.exit_code == 0, res.output
    report = json.loads((out / "report.json").read_text())
    assert report["meta"]["n_slices"] == 4
    assert any("no images at slice position 2" in w for w in report["meta"]["warnings"])
    assert report["qc"]["status"] != "ok"
    assert any(r.startswith("no images at slice 2 (a gap") for r in report["qc"]["reasons"])
    # the empty slice is not reported as a missing structure as well, nor does the gap split
    # the heart into "fragments"
    assert not any("slice 2:" in r for r in report["qc"]["reasons"]), report["qc"]["reasons"]
    assert not any("fragment" in r for r in report["qc"]["reasons"]), report["qc"]["reasons"]
    for phase in ("ED", "ES"):
        img = nib.load(str(out / f"mask_{phase}.nii.gz"))
        mask = np.asarray(img.dataobj)
        assert mask.shape[2] == 4 and not mask[:, :, 2].any() and mask.any()
        # the volumes count the empty slice as the mean of its neighbours' areas
        voxel = float(np.prod(img.header.get_zooms()[:3])) / 1000
        lv = [np.count_nonzero(mask[:, :, k] == 1) for k in range(4)]
        expected = (sum(lv) + (lv[1] + lv[3]) / 2) * voxel
        assert report[f"lv_{phase.lower()}v_ml"] == pytest.approx(expected, abs=1e-3)
    sources = {
        pydicom.dcmread(str(p), stop_before_pixels=True).SOPInstanceUID
        for p in (tmp_path / "dcm").iterdir()
    }
    segs = sorted(out.glob("segmentation*.dcm"))
    assert [f.name for f in segs] == ["segmentation_ED.dcm", "segmentation_ES.dcm"]
    for f in segs:
        refs = {
            item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
            for item in pydicom.dcmread(str(f)).PerFrameFunctionalGroupsSequence
        }
        assert refs <= sources
    # the missing slice cannot be taken out by the reader
    res = _run(
        ["analyze", tmp_path / "dcm", "-o", tmp_path / "x", "--model", tiny_checkpoint]
        + ["--no-pdf", "--exclude", "ES:2"]
    )
    _assert_clean_failure(res, "slice 2 has no images to take out")


def test_analyze_dicom_with_uneven_slice_gaps_weights_each_slice(tmp_path, tiny_checkpoint):
    """Gaps of 1, 1 and 1.75 steps (not a grid with a missing slice): each slice's disc is half
    the distance to each neighbour; the slice table adds up to the volumes; the QC says so."""
    import nibabel as nib

    from cardioseg.clinical.indices import slice_weights

    places = [0.0, 1.0, 2.0, 3.75]
    _dicom_phantom_cine(tmp_path / "dcm", places=places)
    out = tmp_path / "out"
    res = _run(["analyze", tmp_path / "dcm", "-o", out, "--model", tiny_checkpoint, "--no-pdf"])
    assert res.exit_code == 0, res.output
    report = json.loads((out / "report.json").read_text())
    assert any("the volumes weight each slice" in r for r in report["qc"]["reasons"])
    weights = slice_weights(places, 1.0)
    assert weights == [1.0, 1.0, 1.375, 1.375]
    img = nib.load(str(out / "mask_ED.nii.gz"))
    mask = np.asarray(img.dataobj)
    voxel = float(np.prod(img.header.get_zooms()[:3])) / 1000
    lv = [np.count_nonzero(mask[:, :, k] == 1) for k in range(4)]
    assert lv[3] > 0, "the test needs LV on the last (heaviest) slice"
    assert report["lv_edv_ml"] == pytest.approx(
        sum(n * w for n, w in zip(lv, weights, strict=True)) * voxel, abs=1e-3
    )
    assert report["qc"]["metrics"]["lv_edv_ml"] == pytest.approx(report["lv_edv_ml"], abs=1e-3)
    assert sum(r["lv_ed_ml"] for r in report["slices"]) == pytest.approx(
        report["lv_edv_ml"], abs=0.01
    )


def test_a_child_by_dicom_age_is_told_the_ranges_are_adults(tmp_path, tiny_checkpoint, caplog):
    """PatientAge under 18 (a child of adult height, 172 cm here): the report notes that the
    adult normal ranges do not apply; the age itself is written nowhere (notes are logged)."""
    from cardioseg.clinical.analysis import analyze_study
    from cardioseg.inference import Segmenter

    _dicom_phantom_cine(tmp_path / "dcm", age="012Y")
    with caplog.at_level(logging.DEBUG):
        report = analyze_study(
            tmp_path / "out",
            study=tmp_path / "dcm",
            segmenter=Segmenter(tiny_checkpoint),
            write_pdf=False,
        )
    note = "PatientAge under 18 years: the adult normal ranges do not apply to a child"
    assert any(w.startswith(note) for w in report["meta"]["warnings"])
    # the adult ranges are shown but judge nothing; no adult group is suggested
    assert report["normal_flags"] == {} and report["normal_ranges_applied"] is False
    assert report["diagnosis_suggestion"]["shown"] is False
    assert "adults" in report["diagnosis_suggestion"]["reason"]
    for text in (json.dumps(report), caplog.text):
        assert "012Y" not in text and "12 years" not in text and "age_years" not in text


def test_an_adult_of_short_height_is_judged_as_an_adult(tmp_path, tiny_checkpoint):
    """A DICOM age of 30 years wins over a height under 140 cm: the adult ranges apply, and no
    note says otherwise."""
    from cardioseg.clinical.analysis import analyze_study
    from cardioseg.inference import Segmenter

    _dicom_phantom_cine(tmp_path / "dcm", age="030Y")
    report = analyze_study(
        tmp_path / "out",
        study=tmp_path / "dcm",
        segmenter=Segmenter(tiny_checkpoint),
        write_pdf=False,
        height_cm=135,
        weight_kg=40,
    )
    assert report["normal_ranges_applied"] is True and report["normal_flags"]
    assert not any("child" in w for w in report["meta"].get("warnings", []))


def test_analyze_dicom_writes_dicom_seg(tmp_path, tiny_checkpoint):
    study = _dicom_phantom_cine(tmp_path / "dcm")
    out = tmp_path / "dout"
    res = _run(["analyze", tmp_path / "dcm", "-o", out, "--model", tiny_checkpoint, "--no-pdf"])
    assert res.exit_code == 0, res.output
    report = json.loads((out / "report.json").read_text())
    seg_files = sorted(out.glob("segmentation*.dcm"))
    assert report["ed_frame"] != report["es_frame"]
    # one instance per phase, named by phase, in one SEG series
    assert [f.name for f in seg_files] == ["segmentation_ED.dcm", "segmentation_ES.dcm"]
    referenced = set()
    series_uids = set()
    for f, name in zip(seg_files, ("ED", "ES"), strict=True):
        seg = pydicom.dcmread(str(f))
        assert seg.Modality == "SEG"
        assert seg.StudyInstanceUID == study["study_uid"]
        frame = report[f"{name.lower()}_frame"]
        assert seg.ContentDescription == f"LV/MYO/RV, {name} (cardiac phase {frame})"
        series_uids.add(seg.SeriesInstanceUID)
        referenced |= {
            ref.ReferencedSOPInstanceUID
            for item in seg.ReferencedSeriesSequence
            for ref in item.ReferencedInstanceSequence
        }
    sources = {
        pydicom.dcmread(str(p), stop_before_pixels=True).SOPInstanceUID
        for p in (tmp_path / "dcm").iterdir()
    }
    assert referenced and referenced <= sources
    assert len(series_uids) == 1
    # ED and ES are the largest and smallest LV volume of the curve the report shows
    curve = report["volume_curve"]["lv_ml"]
    assert (report["ed_frame"], report["es_frame"]) == (
        int(np.argmax(curve)),
        int(np.argmin(curve)),
    )
    assert report["meta"]["source_kind"] == "dicom"
    # height and weight from the DICOM headers (PatientSize 1.72 m, PatientWeight 68 kg)
    assert report["bsa_m2"] == pytest.approx(np.sqrt(172 * 68 / 3600), abs=0.01)
    # the heart rate from the R-R interval (857 ms), for the cardiac output
    assert report["heart_rate_bpm"] == pytest.approx(60000 / 857, abs=1e-3)
    assert report["lv_co_l_min"] == pytest.approx(report["lv_sv_ml"] * 60 / 857, abs=0.01)
    # and the sex (PatientSex F) for the normal ranges
    assert report["normal_ranges_for"] == "women"
    assert report["normal_ranges"]["lv_edv_ml"]["high"] == 178.0
    # every frame, plus ED and ES again with TTA, went through the heart window or the whole image
    window = report["meta"]["heart_window"]
    assert sum(window.values()) == report["meta"]["n_frames"] + 2


def test_dicom_seg_of_every_phase_and_the_batch_that_asks_for_it(tmp_path, tiny_checkpoint):
    """``seg_phases="all"`` exports every segmented phase into the one SEG series (ED and ES
    keep their names); a batch asking for it analyses again a DICOM study whose SEG holds ED
    and ES only, and one asking for ED and ES keeps a result that holds every phase."""
    from cardioseg.clinical.batch import run_batch

    study = _dicom_phantom_cine(tmp_path / "studies" / "dcm")
    kw = {"model": str(tiny_checkpoint), "progress": False, "write_pdf": False}
    out = tmp_path / "out" / "dcm"
    run_batch(tmp_path / "studies", tmp_path / "out", **kw)
    report = json.loads((out / "report.json").read_text())
    assert report["meta"]["dicom_seg_phases"] == "ed-es"
    assert sorted(f.name for f in out.glob("*.dcm")) == [
        "segmentation_ED.dcm",
        "segmentation_ES.dcm",
    ]
    run_batch(tmp_path / "studies", tmp_path / "out", seg_phases="all", **kw)
    report = json.loads((out / "report.json").read_text())
    assert report["meta"]["dicom_seg_phases"] == "all"
    html = (out / "report.html").read_text()
    assert "<td>phases in the DICOM-SEG</td><td>every frame</td>" in html
    cine = nib.load(str(out / "masks_cine.nii.gz")).get_fdata()
    segmented = [t for t in range(cine.shape[-1]) if cine[..., t].any()]
    names = {report["ed_frame"]: "ED", report["es_frame"]: "ES"}
    expected = sorted(f"segmentation_{names.get(t, f't{t:02d}')}.dcm" for t in segmented)
    files = sorted(out.glob("*.dcm"))
    assert [f.name for f in files] == expected and len(files) > 2
    headers = [pydicom.dcmread(str(f), stop_before_pixels=True) for f in files]
    assert len({h.SeriesInstanceUID for h in headers}) == 1
    assert {h.StudyInstanceUID for h in headers} == {study["study_uid"]}
    assert {h.ContentDescription for h in headers} >= {
        f"LV/MYO/RV, cardiac phase {t}" for t in segmented if t not in names
    }
    stamp = (out / "report.json").stat().st_mtime_ns
    run_batch(tmp_path / "studies", tmp_path / "out", **kw)  # ED and ES only: already there
    assert (out / "report.json").stat().st_mtime_ns == stamp
    with pytest.raises(CardiosegError, match="seg_phases must be one of ed-es, all"):
        run_batch(tmp_path / "studies", tmp_path / "out", seg_phases="every", **kw)


def _dicom_cine_3x3(folder: Path, pixels) -> Path:
    """A 3-slice x 3-phase DICOM cine of 20 x 24 images (30 x 30 mm), ``pixels()`` each."""
    study, uid = new_study(), pydicom.uid.generate_uid()
    for k in range(3):
        for t in range(3):
            write_image(
                folder / f"IM{k}{t}",
                study,
                k=k,
                t=t,
                series_uid=uid,
                instance=3 * k + t + 1,
                trigger=40.0 * t,
                pixels=pixels(),
            )
    return folder


@pytest.mark.parametrize("kind", ["missing", "no_cine", "three_d", "corrupt_zip", "blank_dicom"])
def test_analyze_bad_input(tmp_path, tiny_checkpoint, kind):
    if kind == "missing":
        target = tmp_path / "nope"
    elif kind == "no_cine":
        target = tmp_path / "folder"
        target.mkdir()
        (target / "notes.txt").write_text("not a DICOM file\n")
    elif kind == "three_d":
        ph = make_phantom(PhantomConfig(seed=4, shape=(32, 32), spacing=4.0, n_slices=3))
        target = write_phantom(ph, tmp_path / "in", name="v")["v_ED"]
    elif kind == "blank_dicom":
        target = _dicom_cine_3x3(tmp_path / "blank", lambda: np.zeros((20, 24), np.uint16))
    else:
        target = tmp_path / "study.zip"
        target.write_bytes(b"PK\x03\x04" + b"\x00" * 40)
    out = tmp_path / "out"
    res = _run(["analyze", target, "-o", out, "--model", tiny_checkpoint, "--no-pdf"])
    _assert_clean_failure(res, target.name)
    assert not out.exists()


def test_analyze_refuses_a_field_of_view_no_heart_fits(tmp_path, tiny_checkpoint):
    # a DICOM cine whose 20 x 24 images cover 30 x 30 mm: refused before any segmentation
    rng = np.random.default_rng(0)
    target = _dicom_cine_3x3(
        tmp_path / "small", lambda: rng.integers(0, 500, (20, 24)).astype(np.uint16)
    )
    out = tmp_path / "out"
    res = _run(["analyze", target, "-o", out, "--model", tiny_checkpoint, "--no-pdf"])
    _assert_clean_failure(res, "small", "field of view 30 x 30 mm is too small")
    assert not out.exists()


def test_analyze_reader_exclusion(tmp_path, tiny_checkpoint):
    ph = make_phantom(PhantomConfig(seed=2, shape=(64, 64), spacing=3.0, n_slices=4))
    paths = write_phantom(ph, tmp_path / "in", name="p")
    base = ["analyze", "--ed", paths["p_ED"], "--es", paths["p_ES"], "--model", tiny_checkpoint]
    res = _run([*base, "-o", tmp_path / "plain", "--no-pdf"])
    assert res.exit_code == 0, res.output
    plain = json.loads((tmp_path / "plain" / "report.json").read_text())
    assert plain["excluded_slices"] == []
    slices = {r["slice"]: r for r in plain["slices"]}
    assert sum(r["lv_es_ml"] for r in slices.values()) == pytest.approx(
        plain["lv_esv_ml"], abs=0.01
    )
    k = max(slices, key=lambda z: slices[z]["lv_es_ml"] + slices[z]["rv_es_ml"])
    assert slices[k]["lv_es_ml"] + slices[k]["rv_es_ml"] > 0, "the model labelled nothing"
    res = _run([*base, "-o", tmp_path / "cut", "--no-pdf", "--exclude", f"es:{k}"])
    assert res.exit_code == 0, res.output
    assert f"excluded by the reader: ES:{k}" in res.output
    cut = json.loads((tmp_path / "cut" / "report.json").read_text())
    assert cut["excluded_slices"] == [f"ES:{k}"]
    assert cut["lv_esv_ml"] == pytest.approx(plain["lv_esv_ml"] - slices[k]["lv_es_ml"], abs=0.01)
    assert cut["rv_esv_ml"] == pytest.approx(plain["rv_esv_ml"] - slices[k]["rv_es_ml"], abs=0.01)
    assert cut["lv_edv_ml"] == plain["lv_edv_ml"]
    mask_es = np.asarray(nib.load(str(tmp_path / "cut" / "mask_ES.nii.gz")).dataobj)
    assert not mask_es[..., k].any()
    assert "ES" in (tmp_path / "cut" / "report.html").read_text()


@pytest.mark.parametrize(("value", "needle"), [("ES:x", "whole number"), ("ES:9", "out of range")])
def test_analyze_bad_exclusion(tmp_path, tiny_checkpoint, value, needle):
    ph = make_phantom(PhantomConfig(seed=2, shape=(32, 32), spacing=4.0, n_slices=4))
    paths = write_phantom(ph, tmp_path / "in", name="p")
    out = tmp_path / "out"
    res = _run(
        ["analyze", "--ed", paths["p_ED"], "--es", paths["p_ES"], "-o", out, "--no-pdf"]
        + ["--model", tiny_checkpoint, "--exclude", value]
    )
    _assert_clean_failure(res, needle, value)
    assert not out.exists()


def test_analyze_sex_and_heart_rate_options(tmp_path, tiny_checkpoint):
    ph = make_phantom(PhantomConfig(seed=2, shape=(32, 32), spacing=4.0, n_slices=4))
    paths = write_phantom(ph, tmp_path / "in", name="p")
    base = ["analyze", "--ed", paths["p_ED"], "--es", paths["p_ES"], "--no-pdf"]
    base += ["--model", tiny_checkpoint]
    res = _run([*base, "-o", tmp_path / "bad", "--sex", "unknown"])
    _assert_clean_failure(res, "sex must be M or F", "unknown")
    assert not (tmp_path / "bad").exists()
    res = _run([*base, "-o", tmp_path / "bad", "--heart-rate", "500"])
    _assert_clean_failure(res, "heart rate must lie between 20 and 250")
    assert not (tmp_path / "bad").exists()
    res = _run([*base, "-o", tmp_path / "m", "--sex", "m", "--heart-rate", "64", "--height", 180])
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "m" / "report.json").read_text())
    assert "bsa_m2" not in report or report["bsa_m2"] is None
    assert report["meta"]["warnings"] == [
        "height given without weight: the volumes and mass are not indexed to body surface area"
    ]
    assert report["normal_ranges_for"] == "men"
    # the thickest point of the ED myocardium, with the slice it is on
    assert report["lv_max_wall_thickness_ed_mm"] > 0
    assert 0 <= report["meta"]["lv_max_wall_thickness_slice"] < report["meta"]["n_slices"]
    html = (tmp_path / "m" / "report.html").read_text()
    assert "LV max wall thickness (ED)" in html and "≥ 15: hypertrophy (ESC)" in html
    assert "lv_max_wall_thickness_ed_mm" not in report["normal_flags"]
    assert report["lv_co_l_min"] == pytest.approx(report["lv_sv_ml"] * 64 / 1000, abs=0.01)
    assert "LV cardiac output" in (tmp_path / "m" / "report.html").read_text()
    assert report["normal_ranges"]["lv_mass_g"] == {
        "low": 92.0,
        "high": 176.0,
        "unit": "g",
        "source": "Kawel-Boehm et al., JCMR 2015;17:29",
    }
    # a child's height: the adult ranges are still shown, with a note that they do not apply
    res = _run([*base, "-o", tmp_path / "c", "--height", 110, "--weight", 18])
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "c" / "report.json").read_text())
    assert report["meta"]["warnings"] == [
        "height 110 cm: the adult normal ranges do not apply to a child; no index is flagged "
        "and no group is suggested"
    ]


def test_analyze_batch_records_failures_and_resumes(tmp_path, tiny_checkpoint):
    studies = tmp_path / "studies"
    _write_cine(studies / "a.nii.gz", seed=5, frames=4)
    _write_cine(studies / "b.nii.gz", seed=6, frames=4)
    (studies / "broken.nii.gz").write_bytes(b"\x1f\x8b\x08\x00garbage")
    out = tmp_path / "batch"
    args = ["analyze-batch", studies, "-o", out, "--model", tiny_checkpoint, "--no-progress"]
    res = _run(args)
    assert res.exit_code == 2, res.output  # ran to its end, one study failed
    assert "2 done, 1 failed" in res.output and "Traceback" not in res.output
    rows = {r["study"]: r for r in csv.DictReader(open(out / "results.csv"))}
    assert set(rows) == {"a", "b", "broken"}
    assert rows["a"]["status"] == rows["b"]["status"] == "done"
    assert rows["broken"]["status"] == "failed" and "broken.nii.gz" in rows["broken"]["error"]
    assert float(rows["a"]["lv_edv_ml"]) >= 0
    # no height, weight or heart rate for a bare NIfTI: those columns stay empty
    assert rows["a"]["bsa_m2"] == rows["a"]["lv_co_l_min"] == ""
    assert rows["a"]["normal_ranges_for"] == "sex-pooled"
    qc = json.loads((out / "a" / "report.json").read_text())["qc"]
    assert float(rows["a"]["qc_score"]) == pytest.approx(qc["score"])
    for key in ("heart_entropy", "disagreement"):  # the uncertainties, to rank a batch by
        assert rows["a"][f"qc_{key}"] == str(qc["metrics"].get(key, ""))
    from cardioseg.clinical.qc import slices_to_check

    assert rows["a"]["qc_check_slices"] == " ".join(slices_to_check(qc))
    stamp = (out / "a" / "report.json").stat().st_mtime_ns
    res = _run(args)  # resume: finished studies are skipped, the failed one is retried
    assert res.exit_code == 2, res.output
    assert (out / "a" / "report.json").stat().st_mtime_ns == stamp
    rows2 = list(csv.DictReader(open(out / "results.csv")))
    assert len(rows2) == 3
    assert rows2[0]["model"].startswith("tiny.pt (sha256 ")
    # each report carries its study name; a cine's frames say where they come from
    assert json.loads((out / "a" / "report.json").read_text())["patient_label"] == "a"
    assert rows2[0]["frames_from"].startswith("the LV volume curve")
    assert {"lvsv_index_ml_m2", "rvsv_index_ml_m2", "normal_flags"} <= set(rows2[0])
    assert rows2[0]["normal_ranges_applied"] == "True"


def test_analyze_batch_rerun_writes_the_pdfs_an_earlier_run_left_out(tmp_path, tiny_checkpoint):
    studies = tmp_path / "studies"
    _write_cine(studies / "a.nii.gz", seed=5, frames=4)
    (studies / "notes.txt").write_text("not a study")
    out = tmp_path / "batch"
    args = ["analyze-batch", studies, "-o", out, "--model", tiny_checkpoint, "--no-progress"]
    res = _run([*args, "--no-pdf"])
    assert res.exit_code == 0, res.output
    assert not (out / "a" / "report.pdf").exists()
    stamp = (out / "a" / "report.json").stat().st_mtime_ns
    assert _run([*args, "--no-pdf"]).exit_code == 0  # nothing asked for that is missing
    assert (out / "a" / "report.json").stat().st_mtime_ns == stamp
    res = _run(args)  # now with PDFs: the study is analysed again to write it
    assert res.exit_code == 0, res.output
    assert (out / "a" / "report.pdf").read_bytes().startswith(b"%PDF")
    # exclusions naming studies that are not there: named in the error
    bad = tmp_path / "x.csv"
    bad.write_text("study,exclude\nnope,ES:1\n")
    res = _run([*args, "--exclusions", bad])
    _assert_clean_failure(res, "not in the folder: nope")
    # a re-analysis that fails keeps the earlier result, and its row says so
    bad.write_text("study,exclude\na,ES:99\n")
    res = _run([*args, "--exclusions", bad])
    assert res.exit_code == 2, res.output
    row = next(csv.DictReader(open(out / "results.csv")))
    assert row["status"] == "failed" and "out of range" in row["error"]
    assert "the earlier result in a/ was left as it was" in row["error"]
    assert (out / "a" / "report.pdf").exists()
    res = _run(["analyze-batch", tmp_path / "nowhere", "-o", out, "--model", tiny_checkpoint])
    _assert_clean_failure(res, "not found")
    res = _run([*args, "--seg-phases", "every"])  # refused before any study is looked at
    _assert_clean_failure(res, "--seg-phases must be one of ed-es, all; got 'every'")


def test_analyze_batch_survives_odd_names_damaged_reports_and_partial_folders(
    tmp_path, tiny_checkpoint
):
    """A file name that is not UTF-8 (or holds a line break) stopped the whole batch when the
    table was written; a truncated report.json of an earlier run stopped it on resume; the
    half-written folders of a killed run stayed; a second batch could write the same folder."""
    import os

    from cardioseg.io.locking import lock_folder

    studies = tmp_path / "studies"
    _write_cine(studies / "a.nii.gz", seed=5, frames=4)
    odd = os.fsdecode(bytes(studies) + b"/bad\xffna\nme.nii.gz")
    _write_cine(Path(odd), seed=6, frames=4)
    out = tmp_path / "batch"
    args = ["analyze-batch", studies, "-o", out, "--model", tiny_checkpoint, "--no-progress"]
    res = _run([*args, "--no-pdf"])
    assert res.exit_code == 0, res.output
    text = (out / "results.csv").read_text(encoding="utf-8")
    assert len(text.splitlines()) == 3  # header and one line per study
    rows = {r["study"]: r for r in csv.DictReader(open(out / "results.csv", encoding="utf-8"))}
    assert set(rows) == {"a", "bad\\xffna\\x0ame"}
    assert rows["bad\\xffna\\x0ame"]["input"] == "bad\\xffna\\x0ame.nii.gz"
    # a truncated report and a killed run's partial folder; the odd study is kept as done
    (out / "a" / "report.json").write_text('{"lv_edv')
    (out / ".a.k1ll3d").mkdir()
    stamp = (out / "bad\\xffna\\x0ame" / "report.json").stat().st_mtime_ns
    res = _run([*args, "--no-pdf"])
    assert res.exit_code == 0, res.output
    assert json.loads((out / "a" / "report.json").read_text())["lv_edv_ml"] >= 0
    assert not (out / ".a.k1ll3d").exists()
    assert (out / "bad\\xffna\\x0ame" / "report.json").stat().st_mtime_ns == stamp
    # one batch at a time per output folder
    held = lock_folder(out, "held by the test")
    try:
        res = _run([*args, "--no-pdf"])
        _assert_clean_failure(res, "output folder in use by another analyze-batch")
    finally:
        held.close()


def test_analyze_batch_records_the_failure_of_a_study_whose_name_is_not_utf8(
    tmp_path, tiny_checkpoint
):
    """A broken study whose file name is not UTF-8 stopped the whole batch: its error names
    the path, whose undecodable byte could not be written to results.csv (UnicodeEncodeError,
    and the same on every re-run). Its row now says why it failed, in one line of UTF-8."""
    import os

    studies = tmp_path / "studies"
    _write_cine(studies / "a.nii.gz", seed=5, frames=3)
    Path(os.fsdecode(bytes(studies) + b"/bad\xffname.nii.gz")).write_bytes(b"not a NIfTI")
    out = tmp_path / "batch"
    args = ["analyze-batch", studies, "-o", out, "--model", tiny_checkpoint, "--no-progress"]
    res = _run([*args, "--no-pdf"])
    assert res.exit_code == 2, res.output
    assert "UnicodeEncodeError" not in res.output
    text = (out / "results.csv").read_text(encoding="utf-8")
    assert len(text.splitlines()) == 3  # header and one line per study
    rows = {r["study"]: r for r in csv.DictReader(open(out / "results.csv", encoding="utf-8"))}
    assert rows["a"]["status"] == "done"
    bad = rows["bad\\xffname"]
    assert bad["status"] == "failed"
    assert "bad\\xffname.nii.gz" in bad["error"] and "NIfTI" in bad["error"]


def test_analyze_batch_under_a_locale_that_is_not_utf8(tmp_path, tiny_checkpoint):
    """report.json was written in the locale's encoding (ensure_ascii=False): under a locale
    that is not UTF-8 (LANG=C without Python's UTF-8 mode; Windows' cp1252) every study failed
    (UnicodeEncodeError on the report's '\u2212'), and results.csv, read as UTF-8, could not have
    read it back. It is written and read as UTF-8 whatever the locale."""
    import subprocess
    import sys

    studies = tmp_path / "studies"
    _write_cine(studies / "a.nii.gz", seed=5, frames=3)
    out = tmp_path / "batch"
    cmd = [sys.executable, "-c", "from cardioseg.cli.main import main; main()"]
    cmd += ["analyze-batch", str(studies), "-o", str(out), "--model", str(tiny_checkpoint)]
    cmd += ["--no-pdf", "--no-progress"]
    env = {**os.environ, "LC_ALL": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0"}
    env.pop("PYTHONIOENCODING", None)
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    (row,) = csv.DictReader(open(out / "results.csv", encoding="utf-8"))
    assert row["status"] == "done", row["error"]
    report = json.loads((out / "a" / "report.json").read_text(encoding="utf-8"))
    assert report["lv_edv_ml"] >= 0


def test_analyze_batch_stops_on_sigterm(tmp_path, tiny_checkpoint):
    """SIGTERM (a workflow manager's stop) or Ctrl-C: the batch drops its queue instead of
    analysing every study first, writes results.csv with every finished study, exits 130, and
    leaves no worker behind."""
    import signal
    import subprocess
    import sys

    studies = tmp_path / "studies"
    for i in range(60):
        _write_cine(studies / f"s{i:02d}.nii.gz", seed=i, frames=3)
    out = tmp_path / "batch"
    cmd = [sys.executable, "-c", "from cardioseg.cli.main import main; main()"]
    cmd += ["analyze-batch", str(studies), "-o", str(out)]
    cmd += ["--model", str(tiny_checkpoint), "--workers", "2", "--no-pdf", "--no-progress"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    t0 = time.monotonic()
    while not list(out.glob("s*/report.json")) and time.monotonic() - t0 < 120:
        assert proc.poll() is None, proc.communicate()[0]
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, output
    assert "error: interrupted" in output and "Traceback" not in output
    done = {p.parent.name for p in out.glob("s*/report.json")}
    assert 0 < len(done) < 60
    rows = list(csv.DictReader(open(out / "results.csv", encoding="utf-8")))
    assert {r["study"] for r in rows} == done
    leftover = subprocess.run(["pgrep", "-f", str(out)], capture_output=True, text=True)
    assert leftover.stdout.strip() == "", "worker processes left behind"


def test_a_study_that_fails_now_is_not_shown_with_an_earlier_result(tmp_path, tiny_checkpoint):
    """The name "a" now stands for a broken zip: its row says failed, not the old cine's
    volumes (the end-of-batch sweep for studies finished while stopping took any report)."""
    studies = tmp_path / "studies"
    _write_cine(studies / "a.nii.gz", seed=5, frames=3)
    out = tmp_path / "batch"
    args = ["analyze-batch", studies, "-o", out, "--model", tiny_checkpoint, "--no-progress"]
    assert _run([*args, "--no-pdf"]).exit_code == 0
    (studies / "a.nii.gz").unlink()
    (studies / "a.zip").write_bytes(b"PK\x03\x04 not really a zip")
    res = _run([*args, "--no-pdf"])
    assert res.exit_code == 2, res.output
    (row,) = csv.DictReader(open(out / "results.csv", encoding="utf-8"))
    assert (row["study"], row["input"], row["status"]) == ("a", "a.zip", "failed")
    assert row["lv_edv_ml"] in ("", None)


def test_analyze_batch_spaces_its_table_writes(tmp_path, tiny_checkpoint, monkeypatch):
    """results.csv was rewritten after every study (a cost that grows with the square of the
    batch); it is written when the batch starts, at most every TABLE_WRITE_S, and at the end."""
    from cardioseg.clinical import batch

    studies = tmp_path / "studies"
    for i in range(3):
        _write_cine(studies / f"s{i}.nii.gz", seed=i, frames=3)
    writes = []
    real = batch._write_table
    monkeypatch.setattr(batch, "TABLE_WRITE_S", 1e9)
    monkeypatch.setattr(
        batch, "_write_table", lambda path, rows: (writes.append(len(rows)), real(path, rows))
    )
    batch.run_batch(
        studies, tmp_path / "out", model=str(tiny_checkpoint), progress=False, write_pdf=False
    )
    assert writes == [0, 3]
    rows = list(csv.DictReader(open(tmp_path / "out" / "results.csv", encoding="utf-8")))
    assert [r["status"] for r in rows] == ["done"] * 3


def test_analyze_batch_goes_on_when_its_table_cannot_be_written_for_now(
    tmp_path, tiny_checkpoint, monkeypatch
):
    """A full disk while results.csv was rewritten mid-batch (the studies in progress hold
    space for a moment) stopped the whole batch with OSError; the studies go on, and the table
    is written whole at the end."""
    import errno

    from cardioseg.clinical import batch

    studies = tmp_path / "studies"
    for i in range(3):
        _write_cine(studies / f"s{i}.nii.gz", seed=i, frames=3)
    calls = []
    real = batch._write_table

    def write(path, rows):
        calls.append(len(rows))
        if len(calls) == 2:  # the first write while the batch runs
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(path, rows)

    monkeypatch.setattr(batch, "TABLE_WRITE_S", 0.0)
    monkeypatch.setattr(batch, "_write_table", write)
    table = batch.run_batch(
        studies, tmp_path / "out", model=str(tiny_checkpoint), progress=False, write_pdf=False
    )
    assert len(calls) >= 3
    rows = list(csv.DictReader(open(table, encoding="utf-8")))
    assert [r["status"] for r in rows] == ["done"] * 3


def test_batch_workers_end_when_the_batch_process_is_gone(tmp_path):
    """A pool worker whose parent was killed (or stopped by a workflow manager that signals
    only it) ends itself instead of waiting for work forever, holding its model."""
    import subprocess
    import sys

    script = tmp_path / "orphan.py"
    script.write_text(
        "import os, sys, time\n"
        "from cardioseg.clinical.batch import _watch_parent\n"
        "if os.fork() == 0:\n"
        "    _watch_parent(os.getppid(), every_s=0.05)\n"
        "    sys.stdout.write(f'{os.getpid()}\\n'); sys.stdout.flush()\n"
        "    time.sleep(30)\n"
        "    sys.stdout.write('still here\\n')\n"
        "else:\n"
        "    time.sleep(0.5)\n"
        "    os._exit(0)\n"
    )
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert "still here" not in proc.stdout  # it ended, within the 30 s it would have waited
    child = int(proc.stdout.split()[0])
    for _ in range(100):
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        pytest.fail(f"worker {child} outlived its parent")


def test_analyze_batch_resumed_with_another_model_analyses_again(tmp_path, tiny_checkpoint):
    """One table, one model: finished studies that another model analysed are not kept when
    the batch is resumed with a different model."""
    import shutil

    studies = tmp_path / "studies"
    _write_cine(studies / "a.nii.gz", seed=5, frames=4)
    out = tmp_path / "batch"
    args = ["analyze-batch", studies, "-o", out, "--no-progress", "--no-pdf"]
    assert _run([*args, "--model", tiny_checkpoint]).exit_code == 0
    stamp = (out / "a" / "report.json").stat().st_mtime_ns
    other = tmp_path / "other" / "tiny_copy.pt"  # same weights, another file: another model
    other.parent.mkdir()
    shutil.copy(tiny_checkpoint, other)
    res = _run([*args, "--model", other])
    assert res.exit_code == 0, res.output
    assert (out / "a" / "report.json").stat().st_mtime_ns != stamp
    (row,) = csv.DictReader(open(out / "results.csv"))
    assert row["model"].startswith("tiny_copy.pt (sha256 ")
    assert json.loads((out / "a" / "report.json").read_text())["meta"]["model"] == row["model"]


def test_analyze_batch_one_worker_keeps_every_thread(tmp_path, tiny_checkpoint):
    """One in-process worker analyses with torch's thread count as it was (every core), not one
    thread; worker processes get one thread each."""
    import torch

    studies = tmp_path / "studies"
    _write_cine(studies / "a.nii.gz", seed=5, frames=3)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        args = ["analyze-batch", studies, "-o", tmp_path / "batch", "--model", tiny_checkpoint]
        res = _run([*args, "--no-progress"])
        assert res.exit_code == 0, res.output
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("workers", ["1", "2"])
def test_analyze_batch_no_pdf_reaches_every_worker(tmp_path, tiny_checkpoint, workers):
    studies = tmp_path / "studies"
    _write_cine(studies / "a.nii.gz", seed=5, frames=3)
    _write_cine(studies / "b.nii.gz", seed=6, frames=3)
    args = ["analyze-batch", studies, "--model", tiny_checkpoint, "--no-progress"]
    for out, extra in ((tmp_path / "no_pdf", ["--no-pdf"]), (tmp_path / "pdf", [])):
        res = _run([*args, "-o", out, "--workers", workers, *extra])
        assert res.exit_code == 0, res.output
        for name in ("a", "b"):
            assert (out / name / "report.html").exists()
            assert (out / name / "report.pdf").exists() is not bool(extra)


@pytest.mark.parametrize(("flag", "roi"), [("--whole-image", False), ("--roi", True)])
def test_analyze_batch_heart_window_option(tmp_path, tiny_checkpoint, flag, roi):
    """``--roi/--whole-image`` reaches the batch workers' segmenter."""
    from cardioseg.clinical import batch

    studies = tmp_path / "studies"
    _write_cine(studies / "a.nii.gz", seed=5, frames=3)
    args = ["analyze-batch", studies, "-o", tmp_path / "batch", "--model", tiny_checkpoint]
    res = _run([*args, "--no-progress", flag])
    assert res.exit_code == 0, res.output
    assert batch._SEGMENTER.roi is roi


def test_analyze_batch_reader_exclusions(tmp_path, tiny_checkpoint):
    studies = tmp_path / "studies"
    _write_cine(studies / "a.nii.gz", seed=5, frames=4)
    _write_cine(studies / "b.nii.gz", seed=6, frames=4)
    out = tmp_path / "batch"
    args = ["analyze-batch", studies, "-o", out, "--model", tiny_checkpoint, "--no-progress"]
    assert _run(args).exit_code == 0
    plain = json.loads((out / "a" / "report.json").read_text())
    stamp_b = (out / "b" / "report.json").stat().st_mtime_ns
    k = max(plain["slices"], key=lambda r: r["lv_es_ml"] + r["rv_es_ml"])["slice"]
    table = tmp_path / "exclusions.csv"
    table.write_text(f"study,exclude\na,es:{k}\nb,\n")
    res = _run([*args, "--exclusions", table])
    assert res.exit_code == 0, res.output
    cut = json.loads((out / "a" / "report.json").read_text())
    assert cut["excluded_slices"] == [f"ES:{k}"]
    assert cut["lv_esv_ml"] < plain["lv_esv_ml"] or cut["rv_esv_ml"] < plain["rv_esv_ml"]
    assert (out / "b" / "report.json").stat().st_mtime_ns == stamp_b  # unchanged: skipped
    rows = {r["study"]: r for r in csv.DictReader(open(out / "results.csv"))}
    assert rows["a"]["excluded_slices"] == f"ES:{k}" and rows["b"]["excluded_slices"] == ""
    assert float(rows["a"]["lv_esv_ml"]) == pytest.approx(cut["lv_esv_ml"])
    stamp_a = (out / "a" / "report.json").stat().st_mtime_ns
    assert _run([*args, "--exclusions", table]).exit_code == 0  # same decisions: nothing to do
    assert (out / "a" / "report.json").stat().st_mtime_ns == stamp_a
    table.write_text("study,exclude\n")  # the reader withdrew the exclusion
    assert _run([*args, "--exclusions", table]).exit_code == 0
    assert json.loads((out / "a" / "report.json").read_text())["excluded_slices"] == []


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        ("study,exclude\nzz,ES:1\n", "not in the folder"),
        ("study,exclude\na,ES:x\n", "row 2"),
        ("study,exclude\na,ES:1\na,ES:2\n", "listed twice"),
        ("name,slices\na,ES:1\n", "columns"),
    ],
)
def test_analyze_batch_bad_exclusions(tmp_path, tiny_checkpoint, content, needle):
    studies = tmp_path / "studies"
    _write_cine(studies / "a.nii.gz", seed=5, frames=3)
    table = tmp_path / "exclusions.csv"
    table.write_text(content)
    out = tmp_path / "batch"
    res = _run(
        ["analyze-batch", studies, "-o", out, "--model", tiny_checkpoint, "--no-progress"]
        + ["--exclusions", table]
    )
    _assert_clean_failure(res, needle)
    assert not (out / "a").exists()  # refused before any analysis


def test_analyze_batch_ray_local(tmp_path, tiny_checkpoint):
    pytest.importorskip("ray", reason="optional extra 'ray' not installed")
    studies = tmp_path / "studies"
    _write_cine(studies / "a.nii.gz", seed=7, frames=3)
    (studies / "bad.zip").write_bytes(b"not a zip")
    out = tmp_path / "rb"
    res = _run(
        [
            "analyze-batch",
            studies,
            "-o",
            out,
            "--model",
            tiny_checkpoint,
            "--ray",
            "local",
            "--workers",
            1,
            "--no-progress",
        ]
    )
    assert res.exit_code == 2, res.output  # ran to its end, one study failed
    assert "1 done, 1 failed" in res.output and "Traceback" not in res.output
    rows = {r["study"]: r for r in csv.DictReader(open(out / "results.csv"))}
    assert rows["a"]["status"] == "done" and float(rows["a"]["lv_edv_ml"]) > 0
    assert rows["bad"]["status"] == "failed" and "bad.zip" in rows["bad"]["error"]
    # resumable on Ray as well: the finished study is kept, the failed one tried again
    stamp = (out / "a" / "report.json").stat().st_mtime_ns
    res = _run(
        ["analyze-batch", studies, "-o", out, "--model", tiny_checkpoint, "--ray", "local"]
        + ["--workers", 1, "--no-progress"]
    )
    assert res.exit_code == 2, res.output
    assert (out / "a" / "report.json").stat().st_mtime_ns == stamp


@pytest.mark.parametrize("address", ["unreachable", "no-port-given", "missing-extra"])
def test_analyze_batch_refuses_a_ray_address_that_cannot_work(
    tmp_path, tiny_checkpoint, monkeypatch, address
):
    """A mistyped or unreachable ``--ray`` address (Ray itself retries for minutes), or the
    extra not installed: one line, exit 1, in seconds, and no output folder left behind."""
    import importlib.util
    import socket

    studies = tmp_path / "studies"
    _write_cine(studies / "a.nii.gz", seed=7, frames=3)
    if address == "unreachable":
        with socket.socket() as sock:  # a port where nothing listens
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        given, needle = f"127.0.0.1:{port}", f"--ray 127.0.0.1:{port}: cannot reach"
    elif address == "no-port-given":
        given, needle = "headnode", "give 'local', 'auto' or a cluster's HOST:PORT"
    else:
        real = importlib.util.find_spec
        monkeypatch.setattr(
            importlib.util, "find_spec", lambda name, *a: None if name == "ray" else real(name, *a)
        )
        given, needle = "local", "pip install 'cardioseg[ray]'"
    out = tmp_path / "rb"
    res = _run(["analyze-batch", studies, "-o", out, "--model", tiny_checkpoint, "--ray", given])
    _assert_clean_failure(res, needle)
    assert not out.exists()


def test_demo_synthetic(tmp_path, tiny_checkpoint):
    out = tmp_path / "demo"
    res = _run(["demo", "-o", out, "--model", tiny_checkpoint])
    assert res.exit_code == 0, res.output
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert len(rows) == 6  # three vendor styles x ED/ES
    assert {r["vendor"] for r in rows} == {"siemens", "philips", "ge"}
    assert len(list((out / "overlays").glob("*.png"))) == 6
    assert len(list((out / "masks").glob("*.nii.gz"))) == 6
    assert "mean Dice" in res.output


def test_a_demo_that_cannot_run_leaves_no_output(tmp_path, tiny_checkpoint, monkeypatch):
    """A missing model or dataset, or a failure half-way, leaves none of the folders the demo
    created (a mistyped --model left the synthetic images behind, a missing --data folder an
    empty output folder); a folder that was there is kept."""
    import cardioseg.demo

    out = tmp_path / "new" / "demo"
    res = _run(["demo", "-o", out, "--model", tmp_path / "nope.pt"])
    assert res.exit_code == 1 and "nope.pt: model checkpoint not found" in res.output
    res = _run(["demo", "-o", out, "--data", tmp_path / "nodata", "--model", tiny_checkpoint])
    assert res.exit_code == 1 and "nodata: dataset folder not found" in res.output
    assert not (tmp_path / "new").exists()

    def broken(*args, **kwargs):
        raise OSError(28, "No space left on device", str(out / "overlays" / "x.png"))

    monkeypatch.setattr(cardioseg.demo, "overlay_montage", broken)
    res = _run(["demo", "-o", out, "--model", tiny_checkpoint])
    assert res.exit_code == 1 and "No space left on device" in res.output
    assert not (tmp_path / "new").exists()
    (tmp_path / "kept").mkdir()
    res = _run(["demo", "-o", tmp_path / "kept", "--model", tmp_path / "nope.pt"])
    assert res.exit_code == 1 and (tmp_path / "kept").is_dir()


def test_analyze_prints_the_slices_to_check_first(tmp_path, tiny_checkpoint, monkeypatch):
    """The command's summary names the slices where the test-time predictions disagree, in
    the form ``--exclude`` takes."""
    import cardioseg.clinical.analysis

    def fake(outdir, **kwargs):
        return {
            "lv_ef_pct": 55.0,
            "ed_frame": 0,
            "es_frame": 3,
            "qc": {
                "status": "ok",
                "reasons": [],
                "per_slice": [
                    {"phase": "ES", "slice": 8, "flags": ["disagreement"]},
                    {"phase": "ED", "slice": 9, "flags": ["uncertain", "disagreement"]},
                    {"phase": "ED", "slice": 4, "flags": []},
                ],
            },
        }

    monkeypatch.setattr(cardioseg.clinical.analysis, "analyze_study", fake)
    cine_path, _ = _write_cine(tmp_path / "cine.nii.gz")
    res = _run(["analyze", cine_path, "-o", tmp_path / "out", "--model", tiny_checkpoint])
    assert res.exit_code == 0, res.output
    assert "check first (unstable outlines): ED:9, ES:8" in res.output


def test_analyze_never_replaces_the_input_or_unrelated_files(
    tmp_path, tiny_checkpoint, monkeypatch
):
    ph = make_phantom(PhantomConfig(seed=2, shape=(32, 32), spacing=4.0, n_slices=4))
    study = tmp_path / "study"
    paths = write_phantom(ph, study, name="p")  # p_ED / p_ES: a pair folder
    before = sorted(p.name for p in study.iterdir())
    base = ["--model", tiny_checkpoint, "--no-pdf"]
    # the input folder itself, a folder holding it, a folder inside it
    for out, needle in (
        (study, "holds the input"),
        (tmp_path, "holds the input"),
        (study / "result", "lies inside the input"),
    ):
        res = _run(["analyze", study, "-o", out, *base])
        _assert_clean_failure(res, "output folder", needle)
    res = _run(["analyze", "--ed", paths["p_ED"], "--es", paths["p_ES"], "-o", study, *base])
    _assert_clean_failure(res, "holds the input")
    assert sorted(p.name for p in study.iterdir()) == before
    # a folder of other files is not replaced; an empty one or a previous result is
    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    res = _run(["analyze", study, "-o", other, *base])
    _assert_clean_failure(res, "not empty and holds no previous cardioseg result")
    assert (other / "keep.txt").read_text() == "mine"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert _run(["analyze", study, "-o", empty, *base]).exit_code == 0
    res = _run(["analyze", study, "-o", empty, *base])  # a previous result: replaced
    assert res.exit_code == 0, res.output
    # the current folder is never the output folder
    monkeypatch.chdir(empty)
    res = _run(["analyze", study, "-o", ".", *base])
    _assert_clean_failure(res, "would replace the current folder")
    (empty / "sub").mkdir()
    monkeypatch.chdir(empty / "sub")  # nor a folder holding it (a previous result, here)
    res = _run(["analyze", study, "-o", "..", *base])
    _assert_clean_failure(res, "would replace the current folder (or one holding it)")
    assert (empty / "report.json").exists()


@pytest.mark.parametrize(
    ("option", "needle"),
    [
        (["--height", "1.75", "--weight", "70"], "height must lie between 30 and 272 cm, got 1.75"),
        (["--height", "175", "--weight", "0"], "weight must lie between 1 and 400 kg, got 0"),
        (["--height", "nan", "--weight", "70"], "height must lie between"),
        (["--ed-frame", "2", "--es-frame", "2"], "the ED and ES frames are the same (2)"),
        (["--es-frame", "9"], "ES frame 9 out of range 0..5"),
        (["--seg-phases", "ES"], "--seg-phases must be one of ed-es, all; got 'ES'"),
    ],
)
def test_analyze_refuses_implausible_options_before_segmenting(
    tmp_path, tiny_checkpoint, monkeypatch, option, needle
):
    from cardioseg.clinical import analysis

    def fail(*_a, **_k):
        raise AssertionError("segmented before the options were checked")

    monkeypatch.setattr(analysis, "_segment_frames", fail)
    cine, _ = _write_cine(tmp_path / "cine.nii.gz")
    out = tmp_path / "out"
    res = _run(["analyze", cine, "-o", out, "--model", tiny_checkpoint, "--no-pdf", *option])
    _assert_clean_failure(res, needle)
    assert not out.exists()


def test_analyze_refuses_a_stack_too_short_for_volumes(tmp_path, tiny_checkpoint):
    ph = make_phantom(PhantomConfig(seed=2, shape=(32, 32), spacing=4.0, n_slices=4))
    paths = write_phantom(ph, tmp_path / "in", name="p")
    short = {}
    for phase in ("ED", "ES"):
        img = nib.load(str(paths[f"p_{phase}"]))
        data = np.asarray(img.dataobj)[..., 1:3]
        short[phase] = tmp_path / f"short_{phase}.nii.gz"
        nib.save(nib.Nifti1Image(data, img.affine), str(short[phase]))
    out = tmp_path / "out"
    res = _run(
        ["analyze", "--ed", short["ED"], "--es", short["ES"], "-o", out]
        + ["--model", tiny_checkpoint, "--no-pdf"]
    )
    _assert_clean_failure(res, "a stack of 2 short-axis slices cannot measure ventricular volumes")
    res = _run(["analyze", "--ed", short["ED"], "--es", short["ED"], "-o", out])
    _assert_clean_failure(res, "ED and ES are the same file")
    assert not out.exists()


def test_cine_masks_keep_the_time_between_frames(tmp_path, tiny_checkpoint):
    cine, _ = _write_cine(tmp_path / "cine.nii.gz")
    img = nib.load(str(cine))
    img.header.set_zooms((*img.header.get_zooms()[:3], 32.5))
    img.header.set_xyzt_units("mm", "msec")
    nib.save(img, str(cine))
    out = tmp_path / "out"
    res = _run(["analyze", cine, "-o", out, "--model", tiny_checkpoint, "--no-pdf"])
    assert res.exit_code == 0, res.output
    masks = nib.load(str(out / "masks_cine.nii.gz"))
    assert masks.header.get_zooms()[3] == pytest.approx(32.5)
    assert masks.header.get_xyzt_units() == ("mm", "msec")
    html = (out / "report.html").read_text()
    assert "(frames counted from 0; chosen by: the LV volume curve)" in html


def test_analyze_batch_keeps_studies_apart_and_its_output_out_of_the_studies(
    tmp_path, tiny_checkpoint
):
    studies = tmp_path / "studies"
    _write_cine(studies / "x.nii.gz", seed=5, frames=3)
    _write_cine(studies / "x" / "cine.nii.gz", seed=6, frames=4)  # a folder of the same name
    out = studies / "results"  # inside the studies folder: not a study itself
    args = ["analyze-batch", studies, "-o", out, "--model", tiny_checkpoint, "--no-progress"]
    for _ in range(2):  # the re-run skips both and does not take results/ for a study
        res = _run(args)
        assert res.exit_code == 0, res.output
        rows = {r["study"]: r for r in csv.DictReader(open(out / "results.csv"))}
        assert set(rows) == {"x", "x.nii.gz"}
        assert {r["status"] for r in rows.values()} == {"done"}
    frames = {
        name: json.loads((out / name / "report.json").read_text())["meta"]["n_frames"]
        for name in rows
    }
    assert frames == {"x": 4, "x.nii.gz": 3}
    res = _run(["analyze-batch", studies, "-o", studies, "--model", tiny_checkpoint])
    _assert_clean_failure(res, "the output folder is the studies folder")


def _analyze_or_crash(name, *args, **kwargs):
    """The batch's per-study function, except that study "crash" kills its worker process."""
    import os

    if name == "crash":
        if kwargs.get("started"):  # as the real one: known to have started
            Path(kwargs["started"]).touch()
        os._exit(3)
    return _REAL_ANALYZE_ONE(name, *args, **kwargs)


def test_analyze_batch_survives_a_worker_that_dies(tmp_path, tiny_checkpoint, monkeypatch):
    """A study that kills its worker process (out of memory, a crash) is recorded as failed;
    the studies that were in flight with it are analysed again, and the batch goes on."""
    import multiprocessing

    from cardioseg.clinical import batch

    if multiprocessing.get_start_method() != "fork":
        pytest.skip("the crashing worker is patched in by forking this process")
    monkeypatch.setattr(batch, "_analyze_one", _analyze_or_crash)
    studies = tmp_path / "studies"
    for i, name in enumerate(("a", "crash", "b")):
        _write_cine(studies / f"{name}.nii.gz", seed=5 + i, frames=3)
    out = tmp_path / "batch"
    table = batch.run_batch(studies, out, workers=2, model=str(tiny_checkpoint), progress=False)
    rows = {r["study"]: r for r in csv.DictReader(open(table))}
    assert rows["a"]["status"] == rows["b"]["status"] == "done"
    assert rows["crash"]["status"] == "failed" and rows["crash"]["error"] == batch.WORKER_DIED
    # a study removed from the folder leaves the table at the next run
    monkeypatch.undo()  # (that run analyses in this process)
    (studies / "b.nii.gz").unlink()
    table = batch.run_batch(studies, out, workers=1, model=str(tiny_checkpoint), progress=False)
    assert {r["study"] for r in csv.DictReader(open(table))} == {"a", "crash"}


def test_analyze_refuses_an_unusable_output_or_info_cfg_before_segmenting(
    tmp_path, tiny_checkpoint, monkeypatch
):
    from cardioseg.clinical import analysis

    def fail(*_a, **_k):
        raise AssertionError("segmented before the inputs were checked")

    monkeypatch.setattr(analysis, "_segment_frames", fail)
    study = tmp_path / "patient"
    _write_cine(study / "patient_4d.nii.gz", frames=3)
    (study / "Info.cfg").write_text("ED: 1\nES: 12\nHeight: 170\nWeight: 70\n")
    base = ["--model", tiny_checkpoint, "--no-pdf"]
    res = _run(["analyze", study, "-o", tmp_path / "out", *base])
    _assert_clean_failure(res, "Info.cfg names ES frame 12 (counted from 1)", "3 frames")
    (tmp_path / "afile").write_text("x")
    res = _run(["analyze", study, "-o", tmp_path / "afile" / "sub", *base, "--es-frame", "2"])
    _assert_clean_failure(res, f"cannot make a folder here: {tmp_path / 'afile'} is a file")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("raised", "note"),
    [
        ("ours", "no DICOM-SEG written: cannot build DICOM SEG for phase 0: broken"),
        ("highdicom", "no DICOM-SEG written (AttributeError in highdicom)"),
    ],
)
def test_analysis_stands_when_the_dicom_seg_cannot_be_written(
    tmp_path, tiny_checkpoint, monkeypatch, raised, note
):
    from cardioseg.clinical import dicom_seg
    from cardioseg.errors import CardiosegError

    def refuse(*_a, **_k):
        if raised == "highdicom":  # e.g. a source without SliceThickness
            raise AttributeError("'FileDataset' object has no attribute 'SliceThickness'")
        raise CardiosegError("segmentation.dcm", "cannot build DICOM SEG for phase 0: broken")

    monkeypatch.setattr(dicom_seg, "write_dicom_seg", refuse)
    _dicom_phantom_cine(tmp_path / "dcm")
    out = tmp_path / "dout"
    res = _run(["analyze", tmp_path / "dcm", "-o", out, "--model", tiny_checkpoint, "--no-pdf"])
    assert res.exit_code == 0, res.output
    report = json.loads((out / "report.json").read_text())
    assert note in report["meta"]["warnings"]
    assert (out / "mask_ED.nii.gz").exists() and not list(out.glob("*.dcm"))


def test_analyze_batch_rerun_after_a_clashing_study_is_added(tmp_path, tiny_checkpoint):
    """A name that now stands for another input is analysed again, not reused."""
    studies = tmp_path / "studies"
    _write_cine(studies / "x.nii.gz", seed=5, frames=3)
    out = tmp_path / "out"
    args = ["analyze-batch", studies, "-o", out, "--model", tiny_checkpoint, "--no-progress"]
    assert _run(args).exit_code == 0
    _write_cine(studies / "x" / "cine.nii.gz", seed=6, frames=4)
    res = _run(args)
    assert res.exit_code == 0, res.output
    rows = {r["study"]: r for r in csv.DictReader(open(out / "results.csv"))}
    assert {n: r["input"] for n, r in rows.items()} == {"x": "x", "x.nii.gz": "x.nii.gz"}
    frames = {
        n: json.loads((out / n / "report.json").read_text())["meta"]["n_frames"] for n in rows
    }
    assert frames == {"x": 4, "x.nii.gz": 3}
    # an output folder that is one of the studies is refused
    res = _run(["analyze-batch", studies, "-o", studies / "x", "--model", tiny_checkpoint])
    _assert_clean_failure(res, "the output folder is one of the studies")


def test_analyze_frames_and_body_size_from_the_study(tmp_path, tiny_checkpoint, monkeypatch):
    ph = make_phantom(PhantomConfig(seed=2, shape=(32, 32), spacing=4.0, n_slices=4))
    paths = write_phantom(ph, tmp_path / "in", name="p")
    pair = ["--ed", paths["p_ED"], "--es", paths["p_ES"], "--model", tiny_checkpoint, "--no-pdf"]
    res = _run(["analyze", *pair, "-o", tmp_path / "o1", "--ed-frame", "1"])
    _assert_clean_failure(res, "--ed-frame/--es-frame choose frames of a cine")
    # a cine whose Info.cfg names ED 1: --es-frame 0 is that same frame
    study = tmp_path / "patient"
    _write_cine(study / "patient_4d.nii.gz", frames=4)
    (study / "Info.cfg").write_text("ED: 1\nES: 3\nHeight: 1.84\nWeight: 70\n")
    base = ["analyze", study, "--model", tiny_checkpoint, "--no-pdf"]
    res = _run([*base, "-o", tmp_path / "o2", "--es-frame", "0"])
    _assert_clean_failure(res, "the ED and ES frames are the same (0)")
    # Info.cfg's height in metres is not used, and the reader is told
    res = _run([*base, "-o", tmp_path / "o3"])
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "o3" / "report.json").read_text())
    assert report.get("bsa_m2") is None
    assert any(
        "height must lie between 30 and 272 cm, got 1.84" in w and "not used" in w
        for w in report["meta"]["warnings"]
    )
    assert report["meta"]["frames_from"] == "Info.cfg"
    assert report["meta"]["body_size"] == "70 kg (from the study)"
    # a height given with the study's weight: both shown with their sources, the mix noted;
    # a frame given: said so in the report
    res = _run([*base, "-o", tmp_path / "o4", "--height", "172", "--es-frame", "3"])
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "o4" / "report.json").read_text())
    assert report["meta"]["body_size"] == "172 cm (given), 70 kg (from the study)"
    assert any("two sources" in w for w in report["meta"]["warnings"])
    assert report["meta"]["frames_from"] == "ES given (--es-frame); ED from Info.cfg"
    html = (tmp_path / "o4" / "report.html").read_text()
    assert "chosen by: ES given (--es-frame); ED from Info.cfg" in html
    assert "172 cm (given), 70 kg (from the study)" in html


def test_analyze_label_child_height_and_study_with_pair(tmp_path, tiny_checkpoint):
    ph = make_phantom(PhantomConfig(seed=2, shape=(32, 32), spacing=4.0, n_slices=4))
    paths = write_phantom(ph, tmp_path / "in", name="p")
    pair = ["--ed", paths["p_ED"], "--es", paths["p_ES"], "--model", tiny_checkpoint]
    # a STUDY and --ed/--es: refused, not one of them silently ignored
    res = _run(["analyze", tmp_path / "in", *pair, "-o", tmp_path / "o0", "--no-pdf"])
    _assert_clean_failure(res, "give either a STUDY or --ed/--es, not both")
    assert not (tmp_path / "o0").exists()
    out = tmp_path / "o1"
    res = _run(["analyze", *pair, "-o", out, "--label", "Study 12/03", "--height", "130"])
    assert res.exit_code == 0, res.output
    report = json.loads((out / "report.json").read_text())
    assert report["patient_label"] == "Study 12/03"
    assert "<b>Study label:</b> Study 12/03" in (out / "report.html").read_text()
    assert report["meta"]["frames_from"] == "the two given volumes"
    # 130 cm: a child; the adult ranges judge nothing
    assert report["normal_flags"] == {} and report["normal_ranges_applied"] is False
    assert "not applied: not for a child" in (out / "report.html").read_text()
    assert (out / "report.pdf").read_bytes().startswith(b"%PDF")


def test_analyze_output_through_a_link_writes_its_target(tmp_path, tiny_checkpoint):
    ph = make_phantom(PhantomConfig(seed=2, shape=(32, 32), spacing=4.0, n_slices=4))
    paths = write_phantom(ph, tmp_path / "in", name="p")
    pair = ["--ed", paths["p_ED"], "--es", paths["p_ES"], "--model", tiny_checkpoint, "--no-pdf"]
    (tmp_path / "results").mkdir()
    link = tmp_path / "latest"
    link.symlink_to(tmp_path / "results" / "r1")  # dangling until written
    res = _run(["analyze", *pair, "-o", link])
    assert res.exit_code == 0, res.output
    assert link.is_symlink() and (tmp_path / "results" / "r1" / "report.json").is_file()
    res = _run(["analyze", *pair, "-o", link])  # again: the target is replaced, the link kept
    assert res.exit_code == 0, res.output
    assert link.is_symlink() and (link / "report.json").is_file()


def test_qc_sets_aside_only_slices_taken_out_whole(tmp_path, tiny_checkpoint, monkeypatch):
    """ES:1:RV leaves the slice's LV and myocardium counted: their QC issues stay."""
    from cardioseg.clinical import qc

    seen = {}
    real = qc.assess_quality

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(qc, "assess_quality", spy)  # analyze_study imports it when it runs
    ph = make_phantom(PhantomConfig(seed=2, shape=(32, 32), spacing=4.0, n_slices=4))
    paths = write_phantom(ph, tmp_path / "in", name="p")
    res = _run(
        ["analyze", "--ed", paths["p_ED"], "--es", paths["p_ES"], "-o", tmp_path / "o"]
        + ["--model", tiny_checkpoint, "--no-pdf", "--exclude", "ES:1:RV", "--exclude", "ES:2"]
    )
    assert res.exit_code == 0, res.output
    assert seen["excluded"] == {"ES": [2]}
    assert set(seen["counted"]) == {"ED", "ES"}


def test_analyze_batch_rerun_analyses_a_different_study_saved_under_a_finished_name(
    tmp_path, tiny_checkpoint
):
    """A resumed batch keeps a finished study by name only while its files are the same ones."""
    import shutil

    studies = tmp_path / "studies"
    _write_cine(studies / "a.nii.gz", seed=5, frames=3)
    _write_cine(studies / "b.nii.gz", seed=6, frames=3)
    out = tmp_path / "out"
    args = ["analyze-batch", studies, "-o", out, "--model", tiny_checkpoint, "--no-progress"]
    args += ["--no-pdf"]
    assert _run(args).exit_code == 0
    signature = json.loads((out / "a" / "report.json").read_text())["meta"]["input_signature"]
    stamps = {n: (out / n / "report.json").stat().st_mtime_ns for n in "ab"}
    # the same files copied elsewhere (new times) keep their signature: nothing is redone
    moved = tmp_path / "moved"
    shutil.copytree(studies, moved)
    for f in moved.iterdir():
        os.utime(f, (1, 1))
    res = _run(["analyze-batch", moved, *args[2:]])
    assert res.exit_code == 0, res.output
    assert {n: (out / n / "report.json").stat().st_mtime_ns for n in "ab"} == stamps
    # another study saved as a.nii.gz: analysed again, b kept
    _write_cine(moved / "a.nii.gz", seed=7, frames=4)
    res = _run(["analyze-batch", moved, *args[2:]])
    assert res.exit_code == 0, res.output
    report = json.loads((out / "a" / "report.json").read_text())
    assert report["meta"]["n_frames"] == 4
    assert report["meta"]["input_signature"] != signature
    assert (out / "b" / "report.json").stat().st_mtime_ns == stamps["b"]
    rows = {r["study"]: r for r in csv.DictReader(open(out / "results.csv"))}
    assert rows["a"]["status"] == rows["b"]["status"] == "done"
    # a report from before signatures were recorded is kept as it is
    del report["meta"]["input_signature"]
    (out / "a" / "report.json").write_text(json.dumps(report))
    _write_cine(moved / "a.nii.gz", seed=8, frames=3)
    stamp = (out / "a" / "report.json").stat().st_mtime_ns
    assert _run(["analyze-batch", moved, *args[2:]]).exit_code == 0
    assert (out / "a" / "report.json").stat().st_mtime_ns == stamp
