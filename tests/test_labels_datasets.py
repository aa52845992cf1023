"""Label remapping per dataset and the dataset readers on fake official layouts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import disc_labels, image_from_labels, write_nifti

from cardioseg.data import discover, kfold_split, load_case, read_index, write_index
from cardioseg.labels import DATASET_LABEL_MAPS, remap_labels


@pytest.mark.parametrize(
    "dataset,raw_lv,raw_rv", [("acdc", 3, 1), ("mscmr", 3, 1), ("mnms", 1, 3), ("mnms2", 1, 3)]
)
def test_remap(dataset, raw_lv, raw_rv):
    raw = np.array([0, raw_lv, 2, raw_rv])
    np.testing.assert_array_equal(remap_labels(raw, DATASET_LABEL_MAPS[dataset]), [0, 1, 2, 3])


def _canon_to(dataset, lab):
    inv = {v: k for k, v in DATASET_LABEL_MAPS[dataset].items()}
    return np.vectorize(inv.get)(lab).astype(np.uint8)


def test_acdc_layout(tmp_path):
    lab = disc_labels()
    for pid, group in [("patient001", "DCM"), ("patient061", "NOR")]:
        d = tmp_path / "training" / pid
        for frame in (1, 12):
            write_nifti(d / f"{pid}_frame{frame:02d}.nii.gz", image_from_labels(lab))
            write_nifti(d / f"{pid}_frame{frame:02d}_gt.nii.gz", _canon_to("acdc", lab))
        (d / "Info.cfg").write_text(f"ED: 1\nES: 12\nGroup: {group}\nHeight: 170\nWeight: 70\n")
    recs = discover(tmp_path)
    assert len(recs) == 4 and {r.phase for r in recs} == {"ED", "ES"}
    assert {r.group for r in recs} == {"DCM", "NOR"}
    _, label, _ = load_case(recs[0])
    np.testing.assert_array_equal(label, lab)  # ACDC 3=LV became 1


def test_acdc_frame_numbers_written_as_decimals(tmp_path):
    """``ED: 1.0`` is frame 1 (it was refused as not a frame number); ``12.0`` frame 12."""
    lab = disc_labels()
    d = tmp_path / "training" / "patient001"
    for frame in (1, 12):
        write_nifti(d / f"patient001_frame{frame:02d}.nii.gz", image_from_labels(lab))
        write_nifti(d / f"patient001_frame{frame:02d}_gt.nii.gz", _canon_to("acdc", lab))
    (d / "Info.cfg").write_text("ED: 1.0\nES: 12.0\nGroup: NOR\n")
    recs = discover(tmp_path)
    assert {(r.phase, Path(r.image).name) for r in recs} == {
        ("ED", "patient001_frame01.nii.gz"),
        ("ES", "patient001_frame12.nii.gz"),
    }


def test_mnms_3d_and_4d_layouts(tmp_path):
    lab = disc_labels()
    (tmp_path / "mnms_info.csv").write_text(
        "External code,Vendor,VendorName,Centre,ED,ES\nAAA111,B,Philips,2,0,2\nBBB222,C,GE,4,0,1\n"
    )
    d = tmp_path / "AAA111"
    for ph in ("ED", "ES"):
        write_nifti(d / f"AAA111_sa_{ph}.nii.gz", image_from_labels(lab))
        write_nifti(d / f"AAA111_sa_{ph}_gt.nii.gz", lab)
    cine = np.stack([image_from_labels(lab, seed=t) for t in range(3)], -1)
    labs = np.stack([lab, np.zeros_like(lab), lab], -1)
    write_nifti(tmp_path / "BBB222" / "BBB222_sa.nii.gz", cine)
    write_nifti(tmp_path / "BBB222" / "BBB222_sa_gt.nii.gz", labs)
    recs = discover(tmp_path)
    by = {(r.subject, r.phase): r for r in recs}
    assert by[("AAA111", "ED")].vendor == "Philips" and by[("AAA111", "ED")].centre == "2"
    assert by[("BBB222", "ES")].frame == 1
    img, label, props = load_case(by[("BBB222", "ES")])
    assert img.shape == lab.shape and label.max() == 0
    _, label_ed, _ = load_case(by[("BBB222", "ED")])
    np.testing.assert_array_equal(label_ed, lab)


def test_mnms2_mscmr_and_folder(tmp_path):
    lab = disc_labels()
    m2 = tmp_path / "m2" / "001"
    for ph in ("ED", "ES"):
        write_nifti(m2 / f"001_SA_{ph}.nii.gz", image_from_labels(lab))
        write_nifti(m2 / f"001_SA_{ph}_gt.nii.gz", lab)
    assert len(discover(tmp_path / "m2")) == 2
    ms = tmp_path / "ms"
    write_nifti(ms / "images" / "subject3_DE.nii.gz", image_from_labels(lab))
    write_nifti(ms / "labels" / "subject3_DE_manual.nii.gz", _canon_to("mscmr", lab))
    (rec,) = discover(ms)
    assert rec.phase == "LGE"
    np.testing.assert_array_equal(load_case(rec)[1], lab)
    fo = tmp_path / "fo"
    write_nifti(fo / "caseA.nii.gz", image_from_labels(lab))
    write_nifti(fo / "caseA_gt.nii.gz", lab)
    write_nifti(fo / "caseB.nii.gz", image_from_labels(lab))
    recs = discover(fo)
    assert [bool(r.label) for r in recs] == [True, False]
    idx = write_index(recs, tmp_path / "index.csv")
    back = read_index(idx)
    assert [r.case_id for r in back] == [r.case_id for r in recs]
    assert back[0].shape == lab.shape


def test_kfold_is_patient_level_and_seeded():
    subjects = [f"p{i:03d}" for i in range(20)] * 2  # two phases each
    folds = kfold_split(subjects, 5, seed=1)
    vals = [set(v) for _, v in folds]
    assert sum(len(v) for v in vals) == 20 and len(set().union(*vals)) == 20
    for tr, va in folds:
        assert not set(tr) & set(va)
    assert folds == kfold_split(subjects, 5, seed=1)
    assert folds != kfold_split(subjects, 5, seed=2)


def test_a_folder_of_several_datasets_is_not_read_as_one(tmp_path):
    """The parent of ACDC and M&Ms: one reader would silently leave the other dataset out."""
    from cardioseg.data.datasets import detect_layout
    from cardioseg.errors import CardiosegError

    (tmp_path / "acdc" / "patient001").mkdir(parents=True)
    (tmp_path / "acdc" / "patient001" / "Info.cfg").write_text("ED: 1\nES: 2\n")
    (tmp_path / "mnms" / "A1").mkdir(parents=True)
    (tmp_path / "mnms" / "A1" / "A1_sa_ED.nii.gz").write_bytes(b"")
    assert detect_layout(tmp_path / "acdc") == "acdc"
    assert detect_layout(tmp_path / "mnms") == "mnms"
    with pytest.raises(CardiosegError, match=r"holds several datasets \(acdc, mnms\)"):
        detect_layout(tmp_path)


def test_acdc_files_without_info_cfg_are_not_read_with_canonical_labels(tmp_path):
    """ACDC numbers RV 1 and LV 3: read as a generic folder they would swap LV and RV."""
    from cardioseg.errors import CardiosegError

    lab = disc_labels()
    pdir = tmp_path / "patient001"
    write_nifti(pdir / "patient001_frame01.nii.gz", image_from_labels(lab))
    write_nifti(pdir / "patient001_frame01_gt.nii.gz", _canon_to("acdc", lab))
    with pytest.raises(CardiosegError, match="named like an ACDC label.*no Info.cfg"):
        discover(tmp_path)
    # nnU-Net's conversion of ACDC keeps its label numbers too
    nnunet = tmp_path.parent / f"{tmp_path.name}_nnunet"
    write_nifti(nnunet / "imagesTr" / "patient001_frame01_0000.nii.gz", image_from_labels(lab))
    write_nifti(nnunet / "labelsTr" / "patient001_frame01.nii.gz", _canon_to("acdc", lab))
    with pytest.raises(CardiosegError, match="named like an ACDC label"):
        discover(nnunet, "folder")
    (pdir / "Info.cfg").write_text("ED: 1\nES: 12\n")
    (record,) = discover(tmp_path)
    assert record.dataset == "acdc" and record.phase == "ED"
    np.testing.assert_array_equal(load_case(record)[1], lab)


def test_a_split_made_of_links_to_patient_folders_is_read(tmp_path):
    lab = disc_labels()
    for pid in ("patient001", "patient002"):
        d = tmp_path / "all" / pid
        for frame in (1, 12):
            write_nifti(d / f"{pid}_frame{frame:02d}.nii.gz", image_from_labels(lab))
            write_nifti(d / f"{pid}_frame{frame:02d}_gt.nii.gz", _canon_to("acdc", lab))
        (d / "Info.cfg").write_text("ED: 1\nES: 12\nGroup: NOR\n")
    split = tmp_path / "fold0"
    split.mkdir()
    (split / "patient002").symlink_to(tmp_path / "all" / "patient002", target_is_directory=True)
    (split / "loop").symlink_to(split, target_is_directory=True)  # must not recurse for ever
    recs = discover(split)
    assert {(r.subject, r.phase) for r in recs} == {("patient002", "ED"), ("patient002", "ES")}


def test_index_spacing_is_the_spacing_the_image_is_read_with(tmp_path):
    import nibabel as nib

    lab = disc_labels()
    img = nib.Nifti1Image(image_from_labels(lab), np.diag([1.5, 1.5, 8.0, 1.0]))
    header = img.header.copy()
    header.set_qform(None, code=0)
    header["pixdim"][1:4] = [1.0, 1.0, 1.0]  # pixdim disagrees with the sform
    (tmp_path / "fo").mkdir()
    nib.Nifti1Image(np.asarray(img.dataobj), None, header).to_filename(tmp_path / "fo" / "a.nii.gz")
    (rec,) = discover(tmp_path / "fo")
    _, _, props = load_case(rec)
    np.testing.assert_allclose(rec.spacing, props.spacing)
    np.testing.assert_allclose(rec.spacing, (1.5, 1.5, 8.0))


def _mnms_4d(root, csv_row, label_affine=None):
    lab = disc_labels()
    (root / "mnms_info.csv").parent.mkdir(parents=True, exist_ok=True)
    (root / "mnms_info.csv").write_text(
        f"External code,Vendor,VendorName,Centre,ED,ES\n{csv_row}\n"
    )
    cine = np.stack([image_from_labels(lab, seed=t) for t in range(3)], -1)
    write_nifti(root / "CCC333" / "CCC333_sa.nii.gz", cine)
    write_nifti(
        root / "CCC333" / "CCC333_sa_gt.nii.gz", np.stack([lab] * 3, -1), affine=label_affine
    )


@pytest.mark.parametrize(
    ("row", "needle"),
    [
        ("CCC333,A,Siemens,1,0,two", "ES frame for this file is not a whole number: 'two'"),
        ("CCC333,A,Siemens,1,0,5", "ES frame 5 (counted from 0) is not among its 3 frame(s)"),
    ],
)
def test_mnms_csv_frames_that_cannot_be_used_name_the_file(tmp_path, row, needle):
    """A non-numeric or out-of-range ED/ES frame in the CSV is named with the cine it is for
    (it was an unnamed int() ValueError, or an IndexError when the case was loaded)."""
    from cardioseg.errors import CardiosegError

    _mnms_4d(tmp_path, row)
    with pytest.raises(CardiosegError) as err:
        discover(tmp_path)
    assert "CCC333_sa.nii.gz" in str(err.value) and needle in str(err.value)


def test_a_cine_label_with_another_affine_is_refused(tmp_path):
    """A 4D label is checked against its cine's affine, as a 3D label is against its image."""
    from cardioseg.errors import CardiosegError

    _mnms_4d(tmp_path, "CCC333,A,Siemens,1,0,2", label_affine=np.diag([1.0, 1.0, 2.0, 1.0]))
    rec = next(r for r in discover(tmp_path) if r.phase == "ES")
    with pytest.raises(CardiosegError, match="label affine does not match the image affine"):
        load_case(rec)
    assert load_case(rec, with_label=False)[1] is None
