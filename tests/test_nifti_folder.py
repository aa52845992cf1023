"""Study folders of NIfTI files (M&Ms-, ACDC- and dcm2niix-style) for analyze and analyze-batch."""

from __future__ import annotations

import csv
import json

import nibabel as nib
import numpy as np
import pytest
from test_dicom import siemens_like
from typer.testing import CliRunner

from cardioseg.cli.main import app
from cardioseg.clinical.analysis import load_study
from cardioseg.clinical.nifti_folder import find_nifti_study
from cardioseg.data.synthetic import PhantomConfig, make_cine, make_phantom, write_phantom
from cardioseg.errors import CardiosegError

runner = CliRunner()


def _pair_folder(folder, name="G1K1V3_sa", seed=2):
    """M&Ms layout: <name>_ED / _ES images next to their _gt labels."""
    ph = make_phantom(PhantomConfig(seed=seed, shape=(64, 64), spacing=3.0, n_slices=4))
    return write_phantom(ph, folder, name=name)


def _acdc_folder(folder, ed=1, es=3, n_frames=4, with_cine=False):
    """ACDC layout: patientNNN_frameYY(_gt) files and an Info.cfg naming ED, ES, height, weight."""
    cine = make_cine(PhantomConfig(seed=3, shape=(64, 64), spacing=3.0, n_slices=4), n_frames)
    folder.mkdir(parents=True)
    for t in (ed, es):
        for suffix, arr in (("", cine.image[..., t - 1]), ("_gt", cine.labels[..., t - 1])):
            img = nib.Nifti1Image(np.asarray(arr, np.float32), cine.affine)
            nib.save(img, str(folder / f"patient001_frame{t:02d}{suffix}.nii.gz"))
    if with_cine:
        img = nib.Nifti1Image(cine.image.astype(np.float32), cine.affine)
        nib.save(img, str(folder / "patient001_4d.nii.gz"))
    info = f"ED: {ed}\nES: {es}\nGroup: NOR\nHeight: 180.0\nNbFrame: {n_frames}\nWeight: 81.0\n"
    (folder / "Info.cfg").write_text(info)
    return cine


def test_finds_an_ed_es_pair_and_ignores_labels(tmp_path):
    _pair_folder(tmp_path / "s")
    found = find_nifti_study(tmp_path / "s")
    assert found.kind == "pair" and found.info == {}
    assert (found.ed.name, found.es.name) == ("G1K1V3_sa_ED.nii.gz", "G1K1V3_sa_ES.nii.gz")


def test_finds_acdc_frames_from_info_cfg(tmp_path):
    _acdc_folder(tmp_path / "p", ed=1, es=3)
    found = find_nifti_study(tmp_path / "p")
    assert found.kind == "pair"
    assert found.ed.name == "patient001_frame01.nii.gz"
    assert found.es.name == "patient001_frame03.nii.gz"
    assert found.info == {"height_cm": 180.0, "weight_kg": 81.0}


def test_a_4d_cine_wins_and_takes_the_info_cfg_frames(tmp_path):
    _acdc_folder(tmp_path / "p", ed=1, es=3, with_cine=True)
    found = find_nifti_study(tmp_path / "p")
    assert found.kind == "nifti4d" and found.cine.name == "patient001_4d.nii.gz"
    assert found.frames == (0, 2)
    st = load_study(tmp_path / "p")
    assert st.kind == "nifti4d" and st.given_ed_es == (0, 2) and st.image.shape[-1] == 4
    assert st.source == str(tmp_path / "p") and st.meta["height_cm"] == 180.0


def test_info_cfg_frames_written_as_decimals(tmp_path):
    """Info.cfg's ``ED: 1.0`` names frame 1; ``ES: 2.5`` names no frame and is not used (it
    was cut to frame 2), so ED and ES then come from the volume curve."""
    _acdc_folder(tmp_path / "p", ed=1, es=3, with_cine=True)
    info = tmp_path / "p" / "Info.cfg"
    info.write_text(info.read_text().replace("ED: 1\n", "ED: 1.0\n").replace("ES: 3", "ES: 3.0"))
    assert find_nifti_study(tmp_path / "p").frames == (0, 2)
    info.write_text(info.read_text().replace("ES: 3.0", "ES: 2.5"))
    assert find_nifti_study(tmp_path / "p").frames is None


def test_folders_that_are_not_nifti_studies(tmp_path):
    (tmp_path / "dicom").mkdir()
    (tmp_path / "dicom" / "IM0001").write_bytes(b"\0" * 200)
    assert find_nifti_study(tmp_path / "dicom") is None  # left to the DICOM reader
    _pair_folder(tmp_path / "amb", name="a")
    _pair_folder(tmp_path / "amb", name="b", seed=4)  # two ED and two ES images
    with pytest.raises(CardiosegError, match=r"4 NIfTI image\(s\) .* no ED/ES pair"):
        find_nifti_study(tmp_path / "amb")
    with pytest.raises(CardiosegError, match="no ED/ES pair"):  # the reason, not "no DICOM"
        load_study(tmp_path / "amb")
    # NIfTI files that form no study next to a DICOM cine: the DICOM cine is analysed
    siemens_like(tmp_path / "amb")
    assert load_study(tmp_path / "amb").kind == "dicom"


def test_analyze_a_pair_folder_uses_info_cfg_body_size(tmp_path, tiny_checkpoint):
    _acdc_folder(tmp_path / "patient001")
    out = tmp_path / "out"
    args = ["analyze", tmp_path / "patient001", "-o", out, "--model", tiny_checkpoint, "--no-pdf"]
    res = runner.invoke(app, [str(a) for a in args])
    assert res.exit_code == 0, res.output
    report = json.loads((out / "report.json").read_text())
    assert report["meta"]["source_kind"] == "pair"
    assert report["bsa_m2"] == pytest.approx(np.sqrt(180.0 * 81.0 / 3600), abs=0.01)


def test_analyze_batch_over_nifti_study_folders(tmp_path, tiny_checkpoint):
    studies = tmp_path / "studies"
    _pair_folder(studies / "A1", name="A1_sa")
    _acdc_folder(studies / "patient001", with_cine=True)
    out = tmp_path / "batch"
    args = ["analyze-batch", studies, "-o", out, "--model", tiny_checkpoint, "--no-progress"]
    res = runner.invoke(app, [str(a) for a in args])
    assert res.exit_code == 0, res.output
    rows = {r["study"]: r for r in csv.DictReader(open(out / "results.csv"))}
    assert rows["A1"]["status"] == rows["patient001"]["status"] == "done", rows
    # a pair of volumes has no frame numbers; a cine's come from Info.cfg
    assert (rows["A1"]["ed_frame"], rows["A1"]["es_frame"]) == ("", "")
    assert rows["A1"]["frames_from"] == "the two given volumes"
    assert (rows["patient001"]["ed_frame"], rows["patient001"]["es_frame"]) == ("0", "2")
    assert rows["patient001"]["frames_from"] == "Info.cfg"
    # Info.cfg's height and weight give the indexed values, in the table as in the report
    report = json.loads((out / "patient001" / "report.json").read_text())
    for key in ("bsa_m2", "lvedv_index_ml_m2", "lv_mass_index_g_m2"):
        assert float(rows["patient001"][key]) == pytest.approx(report[key]), key


@pytest.mark.parametrize("nested", [True, False])
def test_a_zip_of_a_nifti_study_folder(tmp_path, nested):
    import zipfile

    _acdc_folder(tmp_path / "patient001")
    archive = tmp_path / "p.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for f in (tmp_path / "patient001").iterdir():
            zf.write(f, f"patient001/{f.name}" if nested else f.name)
    st = load_study(archive)
    assert st.kind == "pair" and st.given_ed_es == (0, 1)
    assert st.source == str(archive) and st.properties.path == str(archive)
    assert st.meta == {"height_cm": 180.0, "weight_kg": 81.0}
    expected = nib.load(str(tmp_path / "patient001" / "patient001_frame03.nii.gz")).get_fdata()
    np.testing.assert_allclose(st.image[..., 1], expected, rtol=1e-6)


def test_a_zip_with_a_broken_nifti_names_the_member(tmp_path):
    import zipfile

    _acdc_folder(tmp_path / "patient001")
    es = tmp_path / "patient001" / "patient001_frame03.nii.gz"
    es.write_bytes(es.read_bytes()[:3000])  # cut short
    archive = tmp_path / "p.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for f in (tmp_path / "patient001").iterdir():
            zf.write(f, f"patient001/{f.name}")
    with pytest.raises(CardiosegError, match="truncated or corrupt") as info:
        load_study(archive)
    assert info.value.path == f"{archive}/patient001/patient001_frame03.nii.gz"
