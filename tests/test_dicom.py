"""DICOM cine loading: synthetic vendor-style series, bad inputs, zips, and the Sunnybrook case."""

from __future__ import annotations

import logging
import os
import random
import shutil
import time
import zipfile
from pathlib import Path

import numpy as np
import pydicom
import pytest
from conftest import shared_or_skip
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from cardioseg.errors import CardiosegError
from cardioseg.io import read_image
from cardioseg.io.dicom import (
    CineMeta,
    cine_to_nifti,
    find_series,
    load_cine,
    select_short_axis_cine,
)

MR = "1.2.840.10008.5.1.4.1.1.4"
ENHANCED_MR = "1.2.840.10008.5.1.4.1.1.4.1"
ROWS, COLS = 20, 24
N_SLICES, N_PHASES = 4, 5
PIXEL_SPACING = (1.5, 1.25)  # (row spacing, column spacing) as DICOM stores it
STEP = 8.0  # true distance between slice positions
THICKNESS = 6.0  # what SliceThickness claims
ORIGIN = np.array([-31.0, 12.5, 54.0])


def _rotation(a: float = 0.5, b: float = -0.6, c: float = 1.0) -> np.ndarray:
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    return rz @ ry @ rx


ROT = _rotation()
ROW_DIR, COL_DIR, NORMAL = ROT[:, 0], ROT[:, 1], ROT[:, 2]
IOP = [float(v) for v in (*ROW_DIR, *COL_DIR)]
LAX_IOP = [float(v) for v in (*ROW_DIR, *NORMAL)]  # a plane perpendicular to the stack


def ipp(k: float) -> np.ndarray:
    """Patient (LPS) position of the first pixel of slice ``k`` (sorted along the normal)."""
    return ORIGIN + k * STEP * NORMAL


def stored(k: int, t: int, rows: int = ROWS, cols: int = COLS) -> np.ndarray:
    """Stored pixel values that encode slice, phase, row and column."""
    r, c = np.mgrid[:rows, :cols]
    return (k * 10000 + t * 1000 + r * cols + c).astype(np.uint16)


def expected(k: int, t: int, slope: float = 1.0, intercept: float = 0.0) -> np.ndarray:
    """What ``array[:, :, k, t]`` must hold: i = column, j = row."""
    return (stored(k, t).astype(np.float64) * slope + intercept).T


def _file_meta(sop_class: str, sop_uid: str) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return meta


def _base(ds: Dataset, study: dict, sop_class: str, sop_uid: str) -> None:
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.Modality = "MR"
    ds.Manufacturer = study.get("vendor", "SIEMENS")
    ds.MagneticFieldStrength = "1.5"
    ds.PatientName = "Doe^Jane"
    ds.PatientID = study.get("patient_id", "PID-0001")
    ds.PatientSize = "1.72"
    ds.PatientWeight = "68"
    ds.PatientSex = study.get("sex", "F")
    if "age" in study:
        ds.PatientAge = study["age"]
    ds.NominalInterval = "857"  # R-R interval (ms): 70 beats a minute
    ds.StudyInstanceUID = study["study_uid"]
    ds.FrameOfReferenceUID = study["for_uid"]
    ds.Rows, ds.Columns = ROWS, COLS
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0


def write_image(
    path: Path,
    study: dict,
    *,
    k: float,
    t: int,
    series_uid: str,
    description: str = "cine_retro_SAX",
    series_number: int = 10,
    instance: int | None = None,
    trigger: float | None = None,
    slope: float | None = None,
    intercept: float | None = None,
    orientation: list[float] | None = None,
    pixel_spacing: bool = True,
    pixels: np.ndarray | None = None,
    value_k: int | None = None,
    sop_uid: str | None = None,
    position: np.ndarray | None = None,
) -> Path:
    """Write one classic MR Image Storage file (at ``ipp(k)`` unless ``position`` is given)."""
    sop_uid = sop_uid or generate_uid()
    ds = FileDataset(str(path), Dataset(), file_meta=_file_meta(MR, sop_uid), preamble=b"\0" * 128)
    _base(ds, study, MR, sop_uid)
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = series_number
    ds.SeriesDescription = description
    if instance is not None:
        ds.InstanceNumber = instance
    if trigger is not None:
        ds.TriggerTime = f"{trigger:.3f}"
    ds.ImagePositionPatient = [f"{v:.4f}" for v in (ipp(k) if position is None else position)]
    ds.ImageOrientationPatient = [f"{v:.6f}" for v in (orientation or IOP)]
    if pixel_spacing:
        ds.PixelSpacing = [str(v) for v in PIXEL_SPACING]
    ds.SliceThickness = str(THICKNESS)
    if slope is not None:
        ds.RescaleSlope = str(slope)
        ds.RescaleIntercept = str(intercept or 0.0)
    arr = stored(int(k) if value_k is None else value_k, t) if pixels is None else pixels
    ds.Rows, ds.Columns = arr.shape
    ds.PixelData = arr.astype(np.uint16).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(str(path), enforce_file_format=True)
    return path


def new_study(**kw) -> dict:
    return {"study_uid": generate_uid(), "for_uid": generate_uid(), **kw}


def siemens_like(
    root: Path,
    study: dict | None = None,
    n_slices: int = N_SLICES,
    n_phases: int = N_PHASES,
    series_number: int = 10,
) -> dict:
    """One series, TriggerTime present, InstanceNumber unrelated to phase order, nested folders,
    shuffled file names, a README.txt."""
    study = study or new_study()
    uid = generate_uid()
    rng = random.Random(1)
    jobs = [(k, t) for k in range(n_slices) for t in range(n_phases)]
    rng.shuffle(jobs)
    for n, (k, t) in enumerate(jobs):
        sub = root / f"DICOM/{n % 3:02d}/{n % 2}"
        write_image(
            sub / f"IM{n:05d}",
            study,
            k=k,
            t=t,
            series_uid=uid,
            instance=n + 1,
            trigger=35.0 * t + 12.0,
            series_number=series_number,
        )
    (root / "docs").mkdir(parents=True, exist_ok=True)
    (root / "docs" / "README.txt").write_text("exported by a scanner\n")
    study["series_uid"] = uid
    return study


def ge_like(root: Path, study: dict | None = None) -> dict:
    """One series per slice location, TriggerTime with per-slice jitter, plus a 4CH cine."""
    study = study or new_study(vendor="GE MEDICAL SYSTEMS")
    # acquisition order apex -> base: series numbers run against the normal
    for k in range(N_SLICES):
        uid = generate_uid()
        for t in range(N_PHASES):
            write_image(
                root / f"s{k}" / f"{t}.dcm",
                study,
                k=k,
                t=t,
                series_uid=uid,
                series_number=100 + (N_SLICES - k),
                instance=t + 1,
                trigger=37.5 * t + 0.4 * k,
                description="FIESTA CINE",
            )
    lax = generate_uid()
    for t in range(N_PHASES):
        write_image(
            root / "lax" / f"{t}.dcm",
            study,
            k=1.5,
            t=t,
            series_uid=lax,
            series_number=90,
            instance=t + 1,
            trigger=37.5 * t,
            description="FIESTA CINE 4CH",
            orientation=LAX_IOP,
        )
    return study


def write_lax_cine(folder: Path, study: dict, *, k: float, description: str, **kwargs) -> None:
    """A long-axis cine: one position, one image per phase, 30 ms apart."""
    uid = generate_uid()
    for t in range(N_PHASES):
        write_image(
            folder / f"{t}",
            study,
            k=k,
            t=t,
            series_uid=uid,
            trigger=30.0 * t,
            description=description,
            orientation=LAX_IOP,
            **kwargs,
        )


def philips_like(root: Path, study: dict | None = None) -> dict:
    """No TriggerTime: phases follow InstanceNumber; RescaleSlope != 1."""
    study = study or new_study(vendor="Philips Medical Systems")
    uid = generate_uid()
    jobs = [(k, t) for k in range(N_SLICES) for t in range(N_PHASES)]
    random.Random(2).shuffle(jobs)
    for k, t in jobs:
        # slices numbered against the normal to check that sorting uses geometry
        inst = (N_SLICES - 1 - k) * N_PHASES + t + 1
        write_image(
            root / f"IM_{inst:04d}",
            study,
            k=k,
            t=t,
            series_uid=uid,
            instance=inst,
            slope=2.0,
            intercept=-5.0,
            description="sBTFE_BH SA",
        )
    return study


def canon_like(root: Path, study: dict | None = None) -> dict:
    """Canon (Toshiba) style: one series, no TriggerTime, InstanceNumber phase-major (every slice
    of phase 1, then phase 2, ...), orientation and position with rounding jitter, flat folder
    of files named by InstanceNumber."""
    study = study or new_study(vendor="CANON_MEC")
    uid = generate_uid()
    rng = np.random.default_rng(3)
    for t in range(N_PHASES):
        for k in range(N_SLICES):
            inst = t * N_SLICES + k + 1
            jitter = rng.uniform(-2e-6, 2e-6, 6)
            write_image(
                root / f"{inst:06d}.dcm",
                study,
                k=k + float(rng.uniform(-2e-4, 2e-4)),  # 1.6 micrometre position jitter
                t=t,
                series_uid=uid,
                instance=inst,
                value_k=k,
                orientation=[v + d for v, d in zip(IOP, jitter, strict=True)],
                description="Cine_SAX_BH",
            )
    return study


def enhanced_like(path: Path, study: dict | None = None) -> dict:
    """One Enhanced MR Image Storage object with all frames in shuffled order."""
    study = study or new_study(vendor="Philips")
    sop_uid = generate_uid()
    ds = FileDataset(
        str(path), Dataset(), file_meta=_file_meta(ENHANCED_MR, sop_uid), preamble=b"\0" * 128
    )
    _base(ds, study, ENHANCED_MR, sop_uid)
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesNumber = 501
    ds.SeriesDescription = "CINE SA enhanced"
    ds.InstanceNumber = 1
    jobs = [(k, t) for k in range(N_SLICES) for t in range(N_PHASES)]
    random.Random(3).shuffle(jobs)
    ds.NumberOfFrames = len(jobs)
    shared = Dataset()
    po = Dataset()
    po.ImageOrientationPatient = [f"{v:.6f}" for v in IOP]
    pm = Dataset()
    pm.PixelSpacing = [str(v) for v in PIXEL_SPACING]
    pm.SliceThickness = str(THICKNESS)
    pvt = Dataset()
    pvt.RescaleSlope = "1"
    pvt.RescaleIntercept = "0"
    shared.PlaneOrientationSequence = Sequence([po])
    shared.PixelMeasuresSequence = Sequence([pm])
    shared.PixelValueTransformationSequence = Sequence([pvt])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    items, frames = [], []
    for k, t in jobs:
        item = Dataset()
        pp = Dataset()
        pp.ImagePositionPatient = [f"{v:.4f}" for v in ipp(k)]
        cs = Dataset()
        cs.NominalCardiacTriggerDelayTime = 40.0 * t + 5.0
        fc = Dataset()
        fc.TemporalPositionIndex = t + 1
        fc.InStackPositionNumber = k + 1
        item.PlanePositionSequence = Sequence([pp])
        item.CardiacSynchronizationSequence = Sequence([cs])
        item.FrameContentSequence = Sequence([fc])
        items.append(item)
        frames.append(stored(k, t))
    ds.PerFrameFunctionalGroupsSequence = Sequence(items)
    ds.PixelData = np.stack(frames).astype(np.uint16).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(str(path), enforce_file_format=True)
    return study


def check_cine(img, props, meta, slope: float = 1.0, intercept: float = 0.0) -> None:
    assert img.shape == (COLS, ROWS, N_SLICES, N_PHASES)
    assert img.dtype == np.float32
    assert props.shape == img.shape
    # spacing: (column spacing, row spacing, true slice step), not SliceThickness
    np.testing.assert_allclose(props.spacing, (PIXEL_SPACING[1], PIXEL_SPACING[0], STEP), atol=1e-3)
    assert meta.slice_spacing_mm == pytest.approx(STEP, abs=1e-3)
    assert meta.slice_thickness_mm == pytest.approx(THICKNESS)
    assert (meta.n_slices, meta.n_phases) == (N_SLICES, N_PHASES)
    # affine: voxel (i, j, k) -> RAS of the true patient position of that pixel
    for i, j, k in [(0, 0, 0), (5, 3, 2), (COLS - 1, ROWS - 1, N_SLICES - 1)]:
        lps = ipp(k) + i * PIXEL_SPACING[1] * ROW_DIR + j * PIXEL_SPACING[0] * COL_DIR
        ras = lps * np.array([-1, -1, 1])
        np.testing.assert_allclose(props.affine @ [i, j, k, 1], [*ras, 1], atol=1e-3)
    # every (slice, phase) holds the right image, rescaled, with i = column and j = row
    for k in range(N_SLICES):
        for t in range(N_PHASES):
            np.testing.assert_allclose(img[:, :, k, t], expected(k, t, slope, intercept))
    assert len(meta.source_files) == N_SLICES
    assert all(len(row) == N_PHASES for row in meta.source_files)
    assert len({u for row in meta.sop_instance_uids for u in row}) >= 1
    assert meta.patient_height_m == pytest.approx(1.72)
    assert meta.patient_weight_kg == pytest.approx(68.0)
    assert meta.field_strength_t == pytest.approx(1.5)
    positions = np.asarray(meta.slice_positions_mm)
    np.testing.assert_allclose(np.diff(positions), STEP, atol=1e-3)
    assert not meta.warnings, meta.warnings


def test_siemens_like_nested_shuffled(tmp_path):
    study = siemens_like(tmp_path / "study")
    series = find_series(tmp_path / "study")
    assert len(series) == 1 and series.n_non_dicom == 1
    s = series[0]
    assert (s.n_images, s.n_positions, s.n_phases, s.modality) == (20, 4, 5, "MR")
    assert s.is_cine_sa and "PID" not in repr(s)
    img, props, meta = load_cine(tmp_path / "study")
    check_cine(img, props, meta)
    assert meta.phase_order == "TriggerTime"
    assert meta.trigger_times_ms == pytest.approx([35.0 * t + 12.0 for t in range(N_PHASES)])
    assert meta.series_uid == study["series_uid"]
    assert meta.vendor == "SIEMENS"
    # source bookkeeping points at the right files
    import pydicom

    ds = pydicom.dcmread(meta.source_files[2][3], stop_before_pixels=True)
    assert ds.SOPInstanceUID == meta.sop_instance_uids[2][3]
    assert meta.source_headers[2][3].SOPInstanceUID == ds.SOPInstanceUID
    assert "PixelData" not in meta.source_headers[2][3]
    assert "patient_height" not in repr(meta) and "patient_weight" not in repr(meta)


def test_ge_like_one_series_per_slice(tmp_path):
    ge_like(tmp_path / "ge")
    series = find_series(tmp_path / "ge")
    assert len(series) == N_SLICES + 1 and not any(s.is_cine_sa for s in series)
    chosen = select_short_axis_cine(series)
    assert len(chosen.merged_from) == N_SLICES and chosen.n_positions == N_SLICES
    img, props, meta = load_cine(tmp_path / "ge")
    check_cine(img, props, meta)
    assert len(set(meta.series_uids)) == N_SLICES
    assert sorted(meta.merged_series_uids) == sorted(meta.series_uids)
    assert meta.trigger_times_ms[1] == pytest.approx(37.5 + 0.6)  # median over slices


def test_philips_like_instance_order_and_rescale(tmp_path):
    philips_like(tmp_path / "ph")
    img, props, meta = load_cine(tmp_path / "ph")
    check_cine(img, props, meta, slope=2.0, intercept=-5.0)
    assert meta.phase_order == "InstanceNumber"
    assert meta.trigger_times_ms == [None] * N_PHASES


def test_canon_like_phase_major_numbering_without_trigger_time(tmp_path):
    canon_like(tmp_path / "canon")
    img, props, meta = load_cine(tmp_path / "canon")
    check_cine(img, props, meta)
    assert meta.phase_order == "InstanceNumber"
    assert meta.vendor == "CANON_MEC"


def test_enhanced_multiframe(tmp_path):
    enhanced_like(tmp_path / "enh" / "cine.dcm")
    img, props, meta = load_cine(tmp_path / "enh")
    check_cine(img, props, meta)
    assert meta.trigger_times_ms == pytest.approx([40.0 * t + 5.0 for t in range(N_PHASES)])
    assert len({u for row in meta.sop_instance_uids for u in row}) == 1
    frames = sorted(f for row in meta.frame_numbers for f in row)
    assert frames == list(range(1, N_SLICES * N_PHASES + 1))
    # a single multi-frame file works as input too
    img2, _, _ = load_cine(tmp_path / "enh" / "cine.dcm")
    np.testing.assert_array_equal(img, img2)


def test_selection_among_several_series(tmp_path):
    study = siemens_like(tmp_path / "s")
    root = tmp_path / "s"
    # long-axis cine (1 position), a single-phase LGE stack, a 3-plane localizer
    write_lax_cine(root / "lax", study, k=1.5, description="cine_4ch", series_number=5)
    lge = generate_uid()
    for k in range(8):
        write_image(
            root / "lge" / f"{k}",
            study,
            k=k,
            t=0,
            series_uid=lge,
            trigger=400.0,
            description="de_PSIR_SA",
            series_number=30,
            value_k=0,
        )
    loc = generate_uid()
    for n, ori in enumerate([IOP, LAX_IOP, [*NORMAL, *ROW_DIR]]):
        write_image(
            root / "loc" / f"{n}",
            study,
            k=0,
            t=0,
            series_uid=loc,
            description="localizer",
            orientation=[float(v) for v in ori],
            series_number=1,
        )
    series = find_series(root)
    assert len(series) == 4
    assert [s.uid for s in series if s.is_cine_sa] == [study["series_uid"]]
    assert select_short_axis_cine(series).uid == study["series_uid"]
    img, props, meta = load_cine(root)
    check_cine(img, props, meta)


def _partial_stack(
    folder: Path,
    study: dict,
    ks,
    series_number: int,
    value_k: int | None = None,
    orientation=None,
    positions=None,
) -> str:
    """One cine series holding the slices ``ks`` (e.g. one breath-hold's slices), at
    ``ipp(k)`` and the stack's orientation unless ``positions``/``orientation`` are given."""
    uid = generate_uid()
    for n, k in enumerate(ks):
        for t in range(N_PHASES):
            write_image(
                folder / f"{k}_{t}",
                study,
                k=k,
                t=t,
                series_uid=uid,
                trigger=35.0 * t + 12.0,
                series_number=series_number,
                orientation=None if orientation is None else [float(v) for v in orientation],
                position=None if positions is None else np.asarray(positions[n], dtype=float),
                value_k=value_k,
            )
    return uid


def _stack_with_geometry(
    folder: Path, study: dict, *, orientation, positions, series_number: int
) -> str:
    """A cine stack described like the real one, at the given orientation and positions."""
    return _partial_stack(
        folder,
        study,
        range(len(positions)),
        series_number,
        value_k=9,
        orientation=orientation,
        positions=positions,
    )


TRANSVERSE_IOP = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]


def test_selection_prefers_a_straight_oblique_stack(tmp_path):
    root = tmp_path / "s"
    study = siemens_like(root)
    # a transverse cine stack with more slices and the same description (it would win on counts)
    transverse = _stack_with_geometry(
        root / "tra",
        study,
        orientation=TRANSVERSE_IOP,
        positions=[ORIGIN + [0.0, 0.0, 8.0 * k] for k in range(8)],
        series_number=20,
    )
    # the real positions under a wrong (but oblique) orientation, exported later
    wrong = _rotation(a=1.0)
    fake = _stack_with_geometry(
        root / "fake",
        study,
        orientation=[*wrong[:, 0], *wrong[:, 1]],
        positions=[ipp(k) for k in range(N_SLICES)],
        series_number=30,
    )
    series = {s.uid: s for s in find_series(root)}
    assert series[transverse].plane == "transverse"
    assert series[transverse].is_cine_sa and "transverse plane" in series[transverse].reason
    assert series[fake].plane == "oblique"
    assert series[fake].inplane_shift_mm > 10.0 and "drift in-plane" in series[fake].reason
    assert series[study["series_uid"]].inplane_shift_mm < 0.01
    assert select_short_axis_cine(list(series.values())).uid == study["series_uid"]
    img, props, meta = load_cine(root)
    check_cine(img, props, meta)


def test_transverse_stack_alone_is_analysed_with_a_warning(tmp_path):
    study = new_study()
    uid = _stack_with_geometry(
        tmp_path / "tra",
        study,
        orientation=TRANSVERSE_IOP,
        positions=[ORIGIN + [0.0, 0.0, 8.0 * k] for k in range(N_SLICES)],
        series_number=20,
    )
    _, props, meta = load_cine(tmp_path / "tra")
    assert meta.series_uid == uid
    assert any("transverse plane" in w for w in meta.warnings), meta.warnings
    np.testing.assert_allclose(props.spacing[2], 8.0, atol=1e-3)


def test_equal_stacks_take_the_latest_series(tmp_path):
    root = tmp_path / "s"
    first = siemens_like(root / "a", series_number=7)
    repeat = siemens_like(root / "b", study=dict(first), series_number=12)
    assert repeat["series_uid"] != first["series_uid"]
    _, _, meta = load_cine(root)
    assert meta.series_uid == repeat["series_uid"]
    assert any(
        "2 short-axis cine series qualify equally (series numbers 7, 12)" in w
        for w in meta.warnings
    ), meta.warnings


def _recompressed(src: Path, dst: Path, syntax: str) -> None:
    """Copy a folder of DICOM files, re-encoding the pixel data with GDCM."""
    import gdcm

    for path in (p for p in src.rglob("*") if p.is_file() and p.suffix != ".txt"):
        reader = gdcm.ImageReader()
        reader.SetFileName(str(path))
        assert reader.Read(), path
        change = gdcm.ImageChangeTransferSyntax()
        change.SetTransferSyntax(gdcm.TransferSyntax(getattr(gdcm.TransferSyntax, syntax)))
        change.SetInput(reader.GetImage())
        assert change.Change(), syntax
        out = dst / path.relative_to(src)
        out.parent.mkdir(parents=True, exist_ok=True)
        writer = gdcm.ImageWriter()
        writer.SetFileName(str(out))
        writer.SetFile(reader.GetFile())
        writer.SetImage(change.GetOutput())
        assert writer.Write(), out


@pytest.mark.parametrize(
    "syntax, uid",
    [
        ("JPEGLosslessProcess14_1", "1.2.840.10008.1.2.4.70"),  # PACS exports, most often
        ("JPEGLSLossless", "1.2.840.10008.1.2.4.80"),
        ("JPEG2000Lossless", "1.2.840.10008.1.2.4.90"),
        ("RLELossless", "1.2.840.10008.1.2.5"),
    ],
)
def test_compressed_transfer_syntaxes(tmp_path, syntax, uid):
    siemens_like(tmp_path / "raw")
    _recompressed(tmp_path / "raw", tmp_path / "packed", syntax)
    one = next((tmp_path / "packed").rglob("IM*"))
    assert pydicom.dcmread(one, stop_before_pixels=True).file_meta.TransferSyntaxUID == uid
    img, props, meta = load_cine(tmp_path / "packed")
    check_cine(img, props, meta)  # the same pixels as the uncompressed images


def test_stack_acquired_as_several_multi_slice_series_is_merged(tmp_path):
    """Two breath-holds of two slices each, one series each: neither is a stack on its own."""
    study = new_study()
    a = _partial_stack(tmp_path / "s" / "bh1", study, [0, 1], 21)
    b = _partial_stack(tmp_path / "s" / "bh2", study, [2, 3], 22)
    img, props, meta = load_cine(tmp_path / "s")
    assert sorted(meta.merged_series_uids) == sorted([a, b])
    check_cine(img, props, meta)


def test_top_up_slices_complete_a_stack(tmp_path):
    """A full stack of 3 slices and a later series with the 4th (more coverage at the base):
    the merged stack of 4 wins over the stack of 3 alone."""
    study = new_study()
    full = _partial_stack(tmp_path / "s" / "main", study, [0, 1, 2], 30)
    extra = _partial_stack(tmp_path / "s" / "extra", study, [3], 31)
    img, props, meta = load_cine(tmp_path / "s")
    assert meta.merged_series_uids == [full, extra]
    check_cine(img, props, meta)


@pytest.mark.parametrize("extra_positions", [(5,), (5, 6)])
def test_single_slices_with_other_phase_counts_are_not_merged(tmp_path, extra_positions):
    """A stack of 4 slices (5 phases) next to single-slice cines of 12 phases (real-time cines,
    say) at other positions: they are not parts of the stack (before, with one of them, the
    median phase count dropped both series and the merge failed with an internal error)."""
    study = new_study()
    main = _partial_stack(tmp_path / "s" / "main", study, [0, 1, 2, 3], 10)
    for n, k in enumerate(extra_positions):
        uid = generate_uid()
        for t in range(12):
            write_image(
                tmp_path / "s" / f"rt{k}" / f"{t}",
                study,
                k=k,
                t=t,
                series_uid=uid,
                trigger=20.0 * t,
                series_number=50 + n,
                value_k=0,
            )
    img, props, meta = load_cine(tmp_path / "s")
    assert meta.series_uid == main and meta.merged_series_uids == []
    check_cine(img, props, meta)


def test_interleaved_stacks_are_not_merged(tmp_path):
    """A second full stack shifted by half a slice gap is another acquisition, not more
    slices of the first: the two are not combined into one stack."""
    study = new_study()
    _partial_stack(tmp_path / "s" / "a", study, [0, 1, 2, 3], 40)
    later = _partial_stack(tmp_path / "s" / "b", study, [0.5, 1.5, 2.5, 3.5], 41, value_k=0)
    _, _, meta = load_cine(tmp_path / "s")
    assert meta.merged_series_uids == [] and meta.series_uid == later
    assert meta.n_slices == N_SLICES


def test_series_with_two_orientations_is_split(tmp_path):
    root = tmp_path / "s"
    study = siemens_like(root)
    # long-axis images of two positions x all phases inside the same series (an export that
    # put the planning views in the cine series); before, the whole series was refused
    for k in (1, 2):
        for t in range(N_PHASES):
            write_image(
                root / "lax" / f"{k}_{t}",
                study,
                k=k,
                t=t,
                series_uid=study["series_uid"],
                trigger=35.0 * t + 12.0,
                orientation=LAX_IOP,
            )
    series = find_series(root)
    parts = [s for s in series if s.uid == study["series_uid"]]
    assert [p.part for p in parts] == [(1, 2), (2, 2)]
    assert [p.n_images for p in parts] == [N_SLICES * N_PHASES, 2 * N_PHASES]
    assert "orientation 1 of 2" in parts[0].summary()
    img, props, meta = load_cine(root)
    assert meta.series_uid == study["series_uid"]
    assert meta.warnings == [
        f"the series holds images in 2 orientations; analysed {N_SLICES * N_PHASES} parallel "
        f"images, ignored {2 * N_PHASES}"
    ]
    meta.warnings.clear()
    check_cine(img, props, meta)


def test_two_studies_of_one_patient_are_named_in_a_warning(tmp_path):
    first = siemens_like(tmp_path / "s" / "first", series_number=7)
    later = siemens_like(tmp_path / "s" / "follow-up", series_number=7)  # another study
    assert first["study_uid"] != later["study_uid"]
    _, _, meta = load_cine(tmp_path / "s")
    assert meta.study_uid in (first["study_uid"], later["study_uid"])
    assert any("the folder holds 2 studies of this patient" in w for w in meta.warnings)
    _, _, one = load_cine(tmp_path / "s" / "first")
    assert not one.warnings


def test_original_images_win_over_a_derived_copy(tmp_path):
    root = tmp_path / "s"
    original = siemens_like(root / "a", series_number=7)
    copy = siemens_like(root / "b", study=dict(original), series_number=12)  # later, so it
    for path in (root / "b").rglob("IM*"):  # would win the tie without the image type
        ds = pydicom.dcmread(str(path))
        ds.ImageType = ["DERIVED", "SECONDARY", "M"]
        ds.save_as(str(path), enforce_file_format=True)
    series = {s.uid: s for s in find_series(root)}
    assert "derived images" in series[copy["series_uid"]].reason
    _, _, meta = load_cine(root)
    assert meta.series_uid == original["series_uid"]
    assert not meta.warnings, meta.warnings  # not a tie: no "qualify equally" warning


def test_survey_and_series_command(tmp_path):
    from typer.testing import CliRunner

    from cardioseg.cli.main import app
    from cardioseg.io.dicom import survey_study

    ge_like(tmp_path / "ge")
    found, chosen, problem = survey_study(tmp_path / "ge")
    assert problem == "" and chosen is not None and len(chosen.merged_from) == N_SLICES
    assert sum(bool(s.merged_from) for s in found) == 1 and len(found) == N_SLICES + 2
    res = CliRunner().invoke(app, ["series", str(tmp_path / "ge")])
    assert res.exit_code == 0, res.output
    chosen_rows = [line for line in res.output.splitlines() if line.startswith("->")]
    assert (
        len(chosen_rows) == 1 and "merged" in chosen_rows[0] and f"{N_SLICES} x 5" in chosen_rows[0]
    )
    assert "description suggests a long-axis view" in res.output  # the 4CH series' verdict
    assert "slices x phases" in res.output.splitlines()[0]  # the table's header
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    found, chosen, problem = survey_study(tmp_path / "empty")
    assert chosen is None and "no DICOM images" in problem
    res = CliRunner().invoke(app, ["series", str(tmp_path / "empty")])
    assert res.exit_code == 1 and "no short-axis cine" in res.output
    assert "verdict" not in res.output  # no empty table before the verdict


def test_cine_to_nifti(tmp_path):
    siemens_like(tmp_path / "study")
    out = tmp_path / "out" / "cine.nii.gz"
    meta = cine_to_nifti(tmp_path / "study", out)
    assert isinstance(meta, CineMeta)
    arr, props = read_image(out)
    img, ref, _ = load_cine(tmp_path / "study")
    assert arr.shape == img.shape
    np.testing.assert_allclose(props.affine, ref.affine, atol=1e-4)
    np.testing.assert_allclose(arr, img)
    assert not list(out.parent.glob(".*tmp*"))


def _zipped(folder: Path) -> Path:
    """``folder`` as ``folder.zip`` next to it, its files under ``folder.name/``."""
    zpath = folder.with_suffix(".zip")
    with zipfile.ZipFile(zpath, "w", zipfile.ZIP_DEFLATED) as zf:
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                zf.write(p, p.relative_to(folder.parent).as_posix())
    return zpath


def test_zip_input(tmp_path):
    siemens_like(tmp_path / "study")
    zpath = _zipped(tmp_path / "study")
    img, props, meta = load_cine(zpath)
    check_cine(img, props, meta)
    assert all(f.startswith(f"{zpath}/study/DICOM/") for row in meta.source_files for f in row)
    assert meta.source_headers[0][0].SOPInstanceUID == meta.sop_instance_uids[0][0]


def test_extraction_folders_of_killed_runs_are_removed(tmp_path, monkeypatch):
    """A run killed while it analysed a zip leaves the study's images in the temporary folder;
    the next zip extraction removes them (only those whose process is gone)."""
    import subprocess
    import sys

    from cardioseg.io.dicom import archive

    monkeypatch.setattr(archive.tempfile, "tempdir", str(tmp_path))
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    dead = tmp_path / f"cardioseg-zip-{int(gone.stdout)}-abc"
    young = tmp_path / f"cardioseg-zip-{int(gone.stdout)}-new"  # maybe another PID namespace's
    alive = tmp_path / f"cardioseg-zip-{os.getpid()}-def"
    other = tmp_path / "cardioseg-zip-notapid"
    for folder in (dead, young, alive, other):
        (folder / "patient").mkdir(parents=True)
        (folder / "patient" / "IM1.dcm").write_bytes(b"x")
        if folder is not young:
            old = time.time() - archive.ORPHAN_AGE_S - 60
            os.utime(folder, (old, old))
    siemens_like(tmp_path / "study")
    load_cine(_zipped(tmp_path / "study"))
    assert not dead.exists() and young.exists() and alive.exists() and other.exists()
    assert sorted(p.name for p in tmp_path.glob("cardioseg-zip-*")) == sorted(
        [young.name, alive.name, other.name]
    )


# ----------------------------------------------------------------------------------------------
# warnings


def _stack_at(folder: Path, ks: list[float]) -> None:
    """One cine series with slices at ``ipp(k)`` for each ``k`` (steps of STEP mm); the
    pixels of slice ``k`` encode ``round(k)``."""
    study, uid = new_study(), generate_uid()
    for k_idx, k in enumerate(ks):
        for t in range(N_PHASES):
            write_image(
                folder / f"{k_idx}_{t}",
                study,
                k=k,
                t=t,
                series_uid=uid,
                instance=k_idx * 10 + t + 1,
                trigger=30.0 * t,
                value_k=round(k),
            )


def test_a_missing_slice_is_left_empty_on_a_regular_grid(tmp_path):
    """A stack with no images at one position (gaps 8, 8, 16, 8 mm): the slices after the gap
    keep their real place in the affine (they were one gap off), the missing one is empty."""
    _stack_at(tmp_path / "d", [0, 1, 2, 4, 5])
    img, props, meta = load_cine(tmp_path / "d")
    assert img.shape == (COLS, ROWS, 6, N_PHASES)
    assert meta.missing_slices == [3] and meta.n_slices == 6 and meta.irregular_gaps == ""
    assert "no images at slice position 3 of a regular 8.00 mm stack" in " ".join(meta.warnings)
    assert not img[:, :, 3].any()
    for k in (0, 1, 2, 4, 5):
        np.testing.assert_allclose(img[:, :, k, 1], expected(k, 1))
    # voxel (0, 0, k) of the affine is at the DICOM position of slice k (LPS -> RAS)
    ras = np.diag([-1.0, -1.0, 1.0])
    for k in (2, 4, 5):
        np.testing.assert_allclose(
            props.affine[:3, :3] @ [0, 0, k] + props.affine[:3, 3], ras @ ipp(k), atol=1e-3
        )
    assert meta.source_headers[3] == [None] * N_PHASES and meta.sop_instance_uids[3][0] is None
    assert meta.source_headers[4][0].ImagePositionPatient == pytest.approx(list(ipp(4)), abs=1e-3)


def test_an_off_grid_slice_is_not_taken_for_a_finer_grid(tmp_path):
    """Positions 0, 8, 16, 20, 28 mm: one slice off the 8 mm grid, not a 4 mm stack with three
    missing slices (which would halve every volume)."""
    _stack_at(tmp_path / "d", [0, 1, 2, 2.5, 3.5])
    img, _, meta = load_cine(tmp_path / "d")
    assert img.shape[2] == 5 and meta.missing_slices == []
    assert meta.slice_spacing_mm == pytest.approx(STEP, abs=1e-3)
    assert meta.irregular_gaps.startswith("irregular slice gaps")


def test_duplicates_irregular_gaps_and_phase_truncation(tmp_path):
    study = new_study()
    uid = generate_uid()
    root = tmp_path / "d"
    ks = [0, 1, 2, 3.75]  # last gap 14 mm instead of 8
    for k_idx, k in enumerate(ks):
        for t in range(N_PHASES if k_idx != 2 else N_PHASES - 1):
            write_image(
                root / f"{k_idx}_{t}",
                study,
                k=k,
                t=t,
                series_uid=uid,
                instance=k_idx * 10 + t,
                trigger=30.0 * t,
                value_k=k_idx,
            )
    # exact copy (same SOPInstanceUID) and a re-export (new UID) with the same position/trigger
    shutil.copy(root / "1_2", root / "copy_1_2")
    write_image(
        root / "reexport_0_1", study, k=0, t=1, series_uid=uid, instance=99, trigger=30.0, value_k=0
    )
    img, props, meta = load_cine(root)
    text = " | ".join(meta.warnings)
    assert img.shape == (COLS, ROWS, 4, N_PHASES - 1)
    assert "duplicate file" in text
    assert "same position and trigger time" in text
    assert "truncated to 4" in text
    assert "irregular slice gaps" in text
    assert meta.irregular_gaps.startswith("irregular slice gaps (8.00, 8.00, 14.00 mm)")
    assert meta.slice_spacing_mm == pytest.approx(STEP, abs=1e-3)
    np.testing.assert_allclose(np.diff(meta.slice_positions_mm), [8, 8, 14], atol=1e-3)
    np.testing.assert_allclose(img[:, :, 1, 2], expected(1, 2))
    np.testing.assert_allclose(img[:, :, 3, 3], expected(3, 3))


def test_missing_middle_phase_keeps_phases_aligned(tmp_path):
    study = new_study()
    uid = generate_uid()
    for k in range(N_SLICES):
        for t in range(N_PHASES):
            if (k, t) != (1, 2):
                write_image(
                    tmp_path / "m" / f"{k}_{t}",
                    study,
                    k=k,
                    t=t,
                    series_uid=uid,
                    trigger=30.0 * t + 0.2 * k,
                )
    img, _, meta = load_cine(tmp_path / "m")
    assert img.shape[-1] == N_PHASES - 1
    assert "matched by trigger time" in " ".join(meta.warnings)
    for k in range(N_SLICES):
        for t_out, t_in in enumerate([0, 1, 3, 4]):
            np.testing.assert_allclose(img[:, :, k, t_out], expected(k, t_in))


@pytest.mark.parametrize("numbering", ["phase-major", "slice-major", "temporal-position"])
def test_missing_image_without_trigger_times_keeps_phases_aligned(tmp_path, numbering):
    """No TriggerTime: the phase of each image comes from InstanceNumber (phase by phase, or
    slice by slice) or TemporalPositionIdentifier; slice 1 lacks phase 2 (an export lost it)."""
    study, uid = new_study(), generate_uid()
    for k in range(N_SLICES):
        for t in range(N_PHASES):
            if (k, t) == (1, 2):
                continue
            inst = t * N_SLICES + k + 1 if numbering == "phase-major" else k * N_PHASES + t + 1
            path = write_image(
                tmp_path / "m" / f"{inst:04d}", study, k=k, t=t, series_uid=uid, instance=inst
            )
            if numbering == "temporal-position":  # numbers that say nothing of the phase
                ds = pydicom.dcmread(path)
                ds.InstanceNumber = (7 * inst) % 101 + 1
                ds.TemporalPositionIdentifier = t + 1
                ds.save_as(path, enforce_file_format=True)
    img, _, meta = load_cine(tmp_path / "m")
    assert img.shape[-1] == N_PHASES - 1
    assert "matched by phase number" in " ".join(meta.warnings), meta.warnings
    assert meta.phase_order == "InstanceNumber"
    for k in range(N_SLICES):
        for t_out, t_in in enumerate([0, 1, 3, 4]):
            np.testing.assert_allclose(img[:, :, k, t_out], expected(k, t_in))


@pytest.mark.parametrize("keep_bytes", [150, 400])
def test_damaged_file_is_named_in_a_warning(tmp_path, keep_bytes, caplog):
    """A truncated image of the cine (no image left in it) is left out, and the user hears
    which file, instead of it being skipped like a README. The log (a server's too) does not
    name it: exports are often named after the patient."""
    siemens_like(tmp_path / "s")
    victim = sorted((tmp_path / "s").rglob("IM*"))[3]
    victim.write_bytes(victim.read_bytes()[:keep_bytes])
    with caplog.at_level(logging.WARNING, logger="cardioseg"):
        img, _, meta = load_cine(tmp_path / "s")
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "1 DICOM file(s) could not be read and were left out" in logged
    assert victim.name not in logged
    assert img.shape[-1] == N_PHASES - 1  # the slice lacking a phase: matched by trigger time
    assert meta.warnings[0] == (
        f"1 DICOM file(s) could not be read and were left out (first: {victim})"
    )
    assert not any("README" in w for w in meta.warnings)


def test_enhanced_object_whose_frame_count_disagrees_is_named_with_the_reason(tmp_path):
    """NumberOfFrames larger than the per-frame functional groups: the one file of the study
    cannot be used, and the message says why instead of "no DICOM images"."""
    path = tmp_path / "enh" / "cine.dcm"
    enhanced_like(path)
    ds = pydicom.dcmread(path)
    del ds.PerFrameFunctionalGroupsSequence[-3:]
    ds.save_as(path)
    with pytest.raises(CardiosegError) as info:
        load_cine(tmp_path / "enh")
    assert str(info.value) == (
        f"{tmp_path / 'enh'}: no readable DICOM images: 1 DICOM file(s) could not be read "
        f"(first: {path}: {N_SLICES * N_PHASES - 3} per-frame functional group(s) for "
        f"NumberOfFrames {N_SLICES * N_PHASES})"
    )


# ----------------------------------------------------------------------------------------------
# bad input


def _refused(path, match, **kw) -> CardiosegError:
    with pytest.raises(CardiosegError, match=match) as info:
        load_cine(path, **kw)
    return info.value


def _cine_30ms_apart(
    folder: Path,
    study: dict,
    *,
    rows: dict[int, int] | None = None,
    phases: dict[int, int] | None = None,
    **kwargs,
) -> None:
    """One cine series of N_SLICES x N_PHASES images (files ``{k}_{t}``), phases 30 ms apart.

    Args:
        folder: Where the files go.
        study: The study they belong to (:func:`new_study`).
        rows: The row count of the slices whose images are not ROWS rows high.
        phases: The phase count of the slices with fewer than N_PHASES images.
        **kwargs: More arguments of :func:`write_image`, for every image.
    """
    rows, phases = rows or {}, phases or {}
    uid = generate_uid()
    for k in range(N_SLICES):
        for t in range(phases.get(k, N_PHASES)):
            write_image(
                folder / f"{k}_{t}",
                study,
                k=k,
                t=t,
                series_uid=uid,
                trigger=30.0 * t,
                pixels=stored(k, t, rows=rows[k]) if k in rows else None,
                **kwargs,
            )


def test_no_dicom_and_missing(tmp_path):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "sub" / "README.txt").write_text("nothing here")
    _refused(tmp_path / "empty", "no DICOM images found")
    _refused(tmp_path / "nope", "not found")
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"\x01" * 500)
    _refused(junk, "not a DICOM file")


def test_single_image(tmp_path):
    write_image(
        tmp_path / "one" / "IM1", new_study(), k=0, t=0, series_uid=generate_uid(), trigger=0.0
    )
    _refused(tmp_path / "one", "a single image is not a cine")
    _refused(tmp_path / "one" / "IM1", "a single image is not a cine")


def test_mixed_patients_message_has_no_ids(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    study = siemens_like(tmp_path / "a", new_study(patient_id="PAT-A-123456"))
    study["patient_id"] = "PAT-B-987654"
    write_image(
        tmp_path / "a" / "other" / "x", study, k=0, t=0, series_uid=generate_uid(), trigger=0.0
    )
    err = _refused(tmp_path / "a", "different patients")
    for text in (str(err), caplog.text):
        assert "PAT-A" not in text and "PAT-B" not in text and "Doe" not in text
    # `cardioseg series` says the same instead of naming a series that analyze would refuse
    from cardioseg.io.dicom import survey_study

    _, chosen, problem = survey_study(tmp_path / "a")
    assert chosen is None and "different patients" in problem


def test_missing_pixel_spacing(tmp_path):
    _cine_30ms_apart(tmp_path / "m", new_study(), pixel_spacing=False)
    _refused(tmp_path / "m", "missing PixelSpacing")


def test_different_sizes_and_single_phase_slice(tmp_path):
    study = new_study()
    _cine_30ms_apart(tmp_path / "s", study, rows={2: ROWS + 2})
    _refused(tmp_path / "s", "different sizes")
    _cine_30ms_apart(tmp_path / "p", study, phases={1: 1})
    _refused(tmp_path / "p", "only 1 phase")


def test_corrupt_number_of_frames_skips_the_file(tmp_path):
    # NumberOfFrames = 1e9 in one classic image: that file is skipped (it cannot hold so many
    # frames), not described as a billion frames (which exhausted the memory)
    siemens_like(tmp_path / "s")
    bad = sorted((tmp_path / "s").rglob("IM*"))[0]
    ds = pydicom.dcmread(bad)
    ds.NumberOfFrames = "1e9"
    ds.save_as(bad)
    img, _, meta = load_cine(tmp_path / "s")
    assert img.shape == (COLS, ROWS, N_SLICES, N_PHASES - 1)
    assert any("truncated" in w for w in meta.warnings)


def test_long_axis_only(tmp_path):
    study = new_study()
    write_lax_cine(tmp_path / "lax", study, k=0, description="4CH")
    err = _refused(tmp_path / "lax", "no short-axis cine")
    assert "4CH" in str(err) and "1 position" in str(err)


def _zip_of(tmp_path: Path, names: list[str]) -> Path:
    src = write_image(
        tmp_path / "src" / "IM1", new_study(), k=0, t=0, series_uid=generate_uid(), trigger=0.0
    )
    zpath = tmp_path / "bad.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        for name in names:
            zf.writestr(zipfile.ZipInfo(name), src.read_bytes())
    return zpath


def test_zip_refusals(tmp_path):
    for name in ("../evil.dcm", "/abs/evil.dcm", "C:/evil.dcm", "a/../../evil.dcm"):
        _refused(_zip_of(tmp_path, ["ok/IM1", name]), "unsafe path in zip")
    assert not (tmp_path / "evil.dcm").exists()

    big = _zip_of(tmp_path, ["a/IM1", "a/IM2"])
    _refused(big, "zip too large", max_zip_bytes=1000)

    enc = _zip_of(tmp_path, ["a/IM1", "a/IM2"])
    raw = bytearray(enc.read_bytes())
    for sig, off in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        pos = raw.find(sig)
        while pos >= 0:
            raw[pos + off] |= 0x1
            pos = raw.find(sig, pos + 4)
    enc.write_bytes(bytes(raw))
    _refused(enc, "encrypted zip")

    fake = tmp_path / "fake.zip"
    fake.write_bytes(b"this is not a zip file at all")
    _refused(fake, "not a valid zip")

    corrupt = _zip_of(tmp_path, ["a/IM1", "a/IM2"])
    raw = bytearray(corrupt.read_bytes())
    raw[300:340] = b"\xff" * 40  # inside the first member's data: CRC mismatch
    corrupt.write_bytes(bytes(raw))
    _refused(corrupt, "corrupt zip")


# ----------------------------------------------------------------------------------------------
# real data: Sunnybrook SC-HF-I-1 (GE 1.5 T FIESTA cine)


@pytest.mark.integration
def test_sunnybrook_cine():
    folder = shared_or_skip("sunnybrook", "dicoms", "SCD0000101")
    img, props, meta = load_cine(folder)
    assert meta.n_phases == 20 and meta.n_slices == 240 // 20
    assert img.shape == (256, 256, 12, 20)
    assert 1.3 <= props.spacing[0] <= 1.5 and 1.3 <= props.spacing[1] <= 1.5
    assert 3.0 <= props.spacing[2] <= 10.5
    assert meta.vendor.startswith("GE") and not meta.warnings
    assert meta.phase_order == "TriggerTime"
    assert np.all(np.diff(meta.trigger_times_ms) > 0)


@pytest.mark.integration
def test_sunnybrook_contours_on_cine_grid():
    from cardioseg.io.sunnybrook import (
        endocardial_volumes_ml,
        load_sunnybrook_contours,
        rasterize_contour,
        read_contour,
    )

    folder = shared_or_skip("sunnybrook", "dicoms", "SCD0000101")
    cdir = shared_or_skip("sunnybrook", "contourfiles", "SC-HF-I-1")
    img, props, meta = load_cine(folder)
    c = load_sunnybrook_contours(cdir, meta)
    assert c["phases"] == [7, 18] and c["epicardium_phases"] == [18]
    assert c["slices"][18] == list(range(1, 10))
    assert c["labels"][18].shape == (256, 256, 12)
    # x = column, y = row: the blood pool is much brighter than the myocardial ring, and the
    # contrast is clearly lower when the axes are swapped
    contrast, swapped = [], []
    for (k, t), myo in c["myocardium"].items():
        frame = img[:, :, k, t]
        endo = c["endocardium"][(k, t)]
        contrast.append(frame[endo].mean() / frame[myo].mean())
        n = c["instances"][(k, t)]
        inner = read_contour(cdir / "i-contours" / f"IM-0001-{n:04d}-icontour-manual.txt")
        outer = read_contour(cdir / "o-contours" / f"IM-0001-{n:04d}-ocontour-manual.txt")
        s_endo = rasterize_contour(inner[:, ::-1], frame.shape)
        s_myo = rasterize_contour(outer[:, ::-1], frame.shape) & ~s_endo
        swapped.append(frame[s_endo].mean() / frame[s_myo].mean())
    assert len(contrast) == 9
    assert min(contrast) > 1.8
    assert np.median(contrast) > np.median(swapped) + 0.5
    vols = endocardial_volumes_ml(c, props.spacing)
    assert vols[18] > vols[7] > 10.0  # ED (phase 18) larger than ES (phase 7)


def test_phases_without_trigger_times_or_instance_numbers(tmp_path):
    """GE-style: every phase of a slice has one AcquisitionTime, and ContentTime (when the
    image was reconstructed) does not follow the phases. With nothing to order them, the file
    names in natural order (IM2 before IM10), with a warning."""
    study, uid = new_study(), generate_uid()
    root = tmp_path / "study"
    for k in range(N_SLICES):
        for t in range(N_PHASES):
            # file numbers follow the phases; the lexical order (IM1, IM10, IM11, ...) does not
            path = write_image(root / f"IM{k * N_PHASES + t + 1}", study, k=k, t=t, series_uid=uid)
            ds = pydicom.dcmread(str(path))
            ds.AcquisitionTime = f"{100000 + k:06d}.000"
            ds.ContentTime = f"{100000 + k:06d}.{100 * (N_PHASES - t):03d}"  # reversed
            ds.save_as(str(path))
    img, props, meta = load_cine(root)
    assert meta.phase_order == "file order"
    assert [w for w in meta.warnings if "no header orders the phases" in w] == meta.warnings
    for k in range(N_SLICES):
        for t in range(N_PHASES):
            np.testing.assert_allclose(img[:, :, k, t], expected(k, t))


def test_files_without_preamble_or_file_meta_load(tmp_path):
    """Old exporters write the data set alone (implicit VR, no 128-byte preamble, no file meta
    information): the series is found and its pixels decode."""
    from pydicom.filewriter import dcmwrite

    siemens_like(tmp_path / "study")
    for path in (tmp_path / "study" / "DICOM").rglob("IM*"):
        ds = pydicom.dcmread(str(path))
        ds.preamble = None
        del ds.file_meta
        dcmwrite(str(path), ds, implicit_vr=True, little_endian=True, enforce_file_format=False)
        assert path.read_bytes()[:2] == b"\x08\x00"  # starts with group 0008, no preamble
    img, props, meta = load_cine(tmp_path / "study")
    check_cine(img, props, meta)


def test_image_without_position_is_left_out_and_named(tmp_path):
    siemens_like(tmp_path / "study")
    files = sorted((tmp_path / "study" / "DICOM").rglob("IM*"))
    extra = tmp_path / "study" / "DICOM" / "extra_image"
    ds = pydicom.dcmread(str(files[0]))
    ds.SOPInstanceUID = generate_uid()
    del ds.ImagePositionPatient
    ds.save_as(str(extra))
    img, props, meta = load_cine(tmp_path / "study")
    assert img.shape == (COLS, ROWS, N_SLICES, N_PHASES)
    assert any("without ImagePositionPatient" in w and "extra_image" in w for w in meta.warnings)


def test_linked_folders_are_read_once(tmp_path):
    siemens_like(tmp_path / "data")
    study = tmp_path / "study"
    study.mkdir()
    (study / "images").symlink_to(tmp_path / "data" / "DICOM", target_is_directory=True)
    (study / "again").symlink_to(tmp_path / "data" / "DICOM", target_is_directory=True)
    (tmp_path / "data" / "DICOM" / "loop").symlink_to(study, target_is_directory=True)
    img, props, meta = load_cine(study)
    check_cine(img, props, meta)  # every image once: no duplicates warned about


def test_implausible_rows_and_columns_are_named_before_allocating(tmp_path):
    siemens_like(tmp_path / "study")
    for path in (tmp_path / "study" / "DICOM").rglob("IM*"):
        ds = pydicom.dcmread(str(path))
        ds.Rows = ds.Columns = 60000  # the pixel data stays small
        ds.save_as(str(path))
    err = _refused(tmp_path / "study", "are Rows/Columns right")
    assert "IM" in str(err) and "60000 x 60000 pixels" in str(err)


# ----------------------------------------------------------------------------------------------
# real-world quirks of scanner exports


def _edit_all(folder: Path, edit) -> list[Path]:
    """Apply ``edit(path, dataset)`` to every image file under ``folder`` (or to the file
    ``folder``) and save it."""
    files = [folder] if folder.is_file() else folder.rglob("*")
    paths = sorted(p for p in files if p.is_file() and p.suffix != ".txt")
    for path in paths:
        ds = pydicom.dcmread(str(path))
        edit(path, ds)
        ds.save_as(str(path))
    return paths


def _with_bits(bits: int, photometric: str = "MONOCHROME2"):
    """An edit storing the pixels in ``bits`` bits (shifted down) as ``photometric``; for
    MONOCHROME1 the values are inverted within that range, so that it displays the same."""

    def edit(_path: Path, ds) -> None:
        pix = ds.pixel_array.astype(np.int64) >> (16 - bits)
        if photometric == "MONOCHROME1":
            pix = (1 << bits) - 1 - pix
        ds.BitsStored, ds.HighBit = bits, bits - 1
        ds.PhotometricInterpretation = photometric
        ds.PixelData = pix.astype(np.uint16).tobytes()

    return edit


@pytest.mark.parametrize("bits", [16, 12])
def test_monochrome1_gives_the_monochrome2_image(tmp_path, bits):
    siemens_like(tmp_path / "m2")
    shutil.copytree(tmp_path / "m2", tmp_path / "m1")
    _edit_all(tmp_path / "m2", _with_bits(bits))
    _edit_all(tmp_path / "m1", _with_bits(bits, "MONOCHROME1"))
    one = next((tmp_path / "m1").rglob("IM*"))
    m1_stored = pydicom.dcmread(str(one)).pixel_array.astype(np.int64)
    twin = tmp_path / "m2" / one.relative_to(tmp_path / "m1")
    m2_stored = pydicom.dcmread(str(twin)).pixel_array.astype(np.int64)
    assert np.all(m1_stored + m2_stored == (1 << bits) - 1)  # the files store inverted values
    img1, _, _ = load_cine(tmp_path / "m1")
    img2, _, _ = load_cine(tmp_path / "m2")
    assert float(img2.std()) > 0
    np.testing.assert_array_equal(img1, img2)  # bright blood stays bright


def test_palette_colour_image_is_refused_with_its_file(tmp_path):
    siemens_like(tmp_path / "s")

    def palette(_path: Path, ds) -> None:
        ds.PhotometricInterpretation = "PALETTE COLOR"

    _edit_all(tmp_path / "s", palette)
    err = _refused(tmp_path / "s", "PhotometricInterpretation PALETTE COLOR is not supported")
    assert "/IM" in str(err)


@pytest.mark.parametrize(
    "bits, signed, photometric",
    [(16, True, "MONOCHROME2"), (12, True, "MONOCHROME2"), (12, False, "MONOCHROME2")]
    + [(12, True, "MONOCHROME1")],
)
def test_signed_and_12_bit_pixels(tmp_path, bits, signed, photometric):
    """Signed values (negative ones included) and 12 bits stored in 16 with other data in the
    unused high bits (some scanners keep overlays there) load as the values they encode."""
    shift, offset = 16 - bits, (1 << (bits - 1)) if signed else 0
    lo, hi = -offset, (1 << bits) - 1 - offset

    def edit(_path: Path, ds) -> None:
        value = (ds.pixel_array.astype(np.int64) >> shift) - offset
        raw = lo + hi - value if photometric == "MONOCHROME1" else value
        if bits < 16:
            raw = (raw & ((1 << bits) - 1)) | 0xA000  # bits 12-15 hold something else
        ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits - 1, int(signed)
        ds.PhotometricInterpretation = photometric
        ds.PixelData = (raw & 0xFFFF).astype(np.uint16).tobytes()

    siemens_like(tmp_path / "s")
    _edit_all(tmp_path / "s", edit)
    img, _, _ = load_cine(tmp_path / "s")
    assert (float(img.min()) < 0) == signed
    for k in range(N_SLICES):
        for t in range(N_PHASES):
            want = (stored(k, t).astype(np.int64) >> shift) - offset
            np.testing.assert_array_equal(img[:, :, k, t], want.T)


def _set_raw(ds, tag: int, text: str) -> None:
    """Store ``text`` as the DS element ``tag`` as it is, without pydicom's validation."""
    from pydicom.dataelem import RawDataElement
    from pydicom.tag import Tag

    raw = text.encode() + b" " * (len(text) % 2)
    ds[tag] = RawDataElement(Tag(tag), "DS", len(raw), raw, 0, False, True)


RESCALE_SLOPE, RESCALE_INTERCEPT, PIXEL_SPACING_TAG = 0x00281053, 0x00281052, 0x00280030


def test_rescale_given_in_some_files_only_is_applied_per_file_with_a_warning(tmp_path):
    philips_like(tmp_path / "ph")  # slope 2, intercept -5

    def drop_in_slices_2_and_3(_path: Path, ds) -> None:
        if float(np.dot(np.asarray(ds.ImagePositionPatient, float) - ORIGIN, NORMAL)) > 1.5 * STEP:
            del ds.RescaleSlope, ds.RescaleIntercept

    _edit_all(tmp_path / "ph", drop_in_slices_2_and_3)
    img, _, meta = load_cine(tmp_path / "ph")
    for k in range(N_SLICES):
        for t in range(N_PHASES):
            want = expected(k, t, 2.0, -5.0) if k < 2 else expected(k, t)
            np.testing.assert_allclose(img[:, :, k, t], want)
    assert [w for w in meta.warnings if "10 of 20 images have no RescaleSlope" in w]


@pytest.mark.parametrize("slope, problem", [("0", "RescaleSlope 0"), ("n/a", "not a number")])
def test_unusable_rescale_slope_is_named(tmp_path, slope, problem):
    """Among images without rescale: taken as the identity, with a warning naming the file;
    among rescaled images (which it cannot be scaled like): refused, naming the file."""
    siemens_like(tmp_path / "plain")
    philips_like(tmp_path / "scaled")
    firsts = {f: sorted((tmp_path / f).rglob("IM*"))[0] for f in ("plain", "scaled")}
    for first in firsts.values():
        _edit_all(first, lambda _p, ds: _set_raw(ds, RESCALE_SLOPE, slope))
    img, props, meta = load_cine(tmp_path / "plain")
    bad = [w for w in meta.warnings if problem in w]
    assert len(bad) == 1 and "in 1 image(s)" in bad[0] and firsts["plain"].name in bad[0]
    meta.warnings.remove(bad[0])
    check_cine(img, props, meta)  # the image is the stored values, not zeros
    err = _refused(tmp_path / "scaled", problem)
    assert firsts["scaled"].name in str(err)
    assert "other images of the series are rescaled" in str(err)


def test_enhanced_object_with_a_zero_rescale_slope_is_not_blanked(tmp_path):
    enhanced_like(tmp_path / "enh" / "cine.dcm")

    def zero_slope(_path: Path, ds) -> None:
        ds.SharedFunctionalGroupsSequence[0].PixelValueTransformationSequence[0].RescaleSlope = "0"

    _edit_all(tmp_path / "enh", zero_slope)
    img, props, meta = load_cine(tmp_path / "enh")
    assert len(meta.warnings) == 1 and "RescaleSlope 0" in meta.warnings[0]
    meta.warnings.clear()
    check_cine(img, props, meta)


def _write_object(path: Path, study: dict, sop_class: str, modality: str, **elements) -> Path:
    """A DICOM object of ``sop_class`` in a series of its own, with ``elements`` set."""
    sop_uid = generate_uid()
    ds = FileDataset(
        str(path), Dataset(), file_meta=_file_meta(sop_class, sop_uid), preamble=b"\0" * 128
    )
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = sop_class, sop_uid, modality
    ds.PatientName, ds.PatientID = "Doe^Jane", study.get("patient_id", "PID-0001")
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study["study_uid"], generate_uid()
    for name, value in elements.items():
        setattr(ds, name, value)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(str(path), enforce_file_format=True)
    return path


def _dicomdir(root: Path) -> None:
    """A DICOMDIR listing the files under ``root`` (no SOPClassUID in its data set, as
    written by media creators: the class is in the file meta information only)."""
    sop_uid = generate_uid()
    meta = _file_meta("1.2.840.10008.1.3.10", sop_uid)
    ds = FileDataset(str(root / "DICOMDIR"), Dataset(), file_meta=meta, preamble=b"\0" * 128)
    ds.FileSetID = "CARDIAC"
    ds.OffsetOfTheFirstDirectoryRecordOfTheRootDirectoryEntity = 0
    ds.OffsetOfTheLastDirectoryRecordOfTheRootDirectoryEntity = 0
    ds.FileSetConsistencyFlag = 0
    records = []
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p.suffix != ".txt"):
        rec = Dataset()
        rec.OffsetOfTheNextDirectoryRecord = 0
        rec.RecordInUseFlag = 0xFFFF
        rec.OffsetOfReferencedLowerLevelDirectoryEntity = 0
        rec.DirectoryRecordType = "IMAGE"
        rec.ReferencedFileID = [part.upper()[:8] for part in path.relative_to(root).parts]
        records.append(rec)
    ds.DirectoryRecordSequence = Sequence(records)
    ds.save_as(str(root / "DICOMDIR"), enforce_file_format=True)


def test_study_folder_with_everything_a_scanner_exports(tmp_path):
    """A DICOMDIR, a presentation state, a structured report, an RGB screenshot, a three-plane
    localizer and a long-axis cine beside the short-axis cine: that one is analysed, with no
    warning about the other files."""
    root = tmp_path / "study"
    study = siemens_like(root / "sax")
    write_lax_cine(root / "lax", study, k=1.5, description="cine_retro_4ch", series_number=7)
    loc = generate_uid()
    for n, ori in enumerate([IOP, LAX_IOP, [*NORMAL, *ROW_DIR]]):
        for k in range(3):  # three parallel slices per plane
            write_image(
                root / "loc" / f"{n}_{k}", study, k=k, t=0, series_uid=loc, series_number=1,
                description="AAHead_Survey", orientation=[float(v) for v in ori],
            )  # fmt: skip

    def localizer(_path: Path, ds) -> None:
        ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]

    _edit_all(root / "loc", localizer)
    _write_object(root / "pr" / "PS1", study, "1.2.840.10008.5.1.4.1.1.11.1", "PR")
    _write_object(
        root / "sr" / "SR1", study, "1.2.840.10008.5.1.4.1.1.88.22", "SR", ValueType="CONTAINER"
    )
    rgb = np.zeros((ROWS, COLS, 3), np.uint8)
    rgb[..., 0] = 200
    _write_object(
        root / "sc" / "SC1", study, "1.2.840.10008.5.1.4.1.1.7", "MR", SeriesDescription="SAX cine",
        Rows=ROWS, Columns=COLS, SamplesPerPixel=3, PhotometricInterpretation="RGB",
        PlanarConfiguration=0, BitsAllocated=8, BitsStored=8, HighBit=7, PixelRepresentation=0,
        PixelData=rgb.tobytes(),
    )  # fmt: skip
    _dicomdir(root)
    series = find_series(root)
    assert (series.n_non_image, series.unreadable) == (3, [])  # DICOMDIR, PR, SR
    assert [s.uid for s in series if s.is_cine_sa] == [study["series_uid"]]
    img, props, meta = load_cine(root)
    assert meta.series_uid == study["series_uid"]
    check_cine(img, props, meta)  # and no warning


def _apple_double() -> bytes:
    """What macOS puts in ``._name`` files (AppleDouble: extended attributes, Finder info)."""
    header = b"\x00\x05\x16\x07\x00\x02\x00\x00" + b"Mac OS X        " + b"\x00\x02"
    entries = b"\x00\x00\x00\x09\x00\x00\x00\x32\x00\x00\x0e\xb0"  # Finder info
    entries += b"\x00\x00\x00\x02\x00\x00\x0e\xe2\x00\x00\x01\x1e"  # resource fork
    body = header + entries + b"ATTR" + b"com.apple.quarantine\x00" + b"0083;65a1b2c3;Safari;"
    return body + b"\x00" * (4096 - len(body))


def test_mac_zip_with_upper_case_names_and_apple_double_files(tmp_path):
    """File names ``.DCM`` in upper case or without extension, ``._name`` AppleDouble files
    and ``.DS_Store`` beside them, and a ``__MACOSX/`` folder in the zip: the cine loads with
    no warning."""
    root = tmp_path / "study"
    siemens_like(root)
    for n, path in enumerate(sorted(root.rglob("IM*"))):
        if n % 2:
            path = path.rename(path.with_name(path.name + ".DCM"))
        (path.parent / f"._{path.name}").write_bytes(_apple_double())
    (root / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1" + b"\x00" * 200)
    zpath = _zipped(root)
    with zipfile.ZipFile(zpath, "a") as zf:
        for path in sorted(root.rglob("._*")):
            zf.writestr(f"__MACOSX/study/{path.relative_to(root).as_posix()}", _apple_double())
    n_files = len([p for p in root.rglob("*") if p.is_file()])
    series = find_series(root)
    assert series.n_non_dicom == n_files - N_SLICES * N_PHASES and not series.unreadable
    for source in (root, zpath):
        img, props, meta = load_cine(source)
        check_cine(img, props, meta)
    assert sum(f.endswith(".DCM") for row in meta.source_files for f in row) == 10


NAME, DESCRIPTION = "Müller^Jörg", "Cine kurze Achse ä"


def _with_text(folder: Path, charset: str | None, encoding: str) -> None:
    """Give every file under ``folder`` the PatientName :data:`NAME` and the description
    :data:`DESCRIPTION` as ``encoding`` bytes (whatever ``charset`` is declared: exports
    sometimes declare another), by patching the bytes of same-length placeholders."""
    name, desc = NAME.encode(encoding), DESCRIPTION.encode(encoding)

    def placeholders(_path: Path, ds) -> None:
        if charset:
            ds.SpecificCharacterSet = charset
        ds.PatientName, ds.SeriesDescription = "Q" * len(name), "Z" * len(desc)

    for path in _edit_all(folder, placeholders):
        raw = path.read_bytes()
        assert raw.count(b"Q" * len(name)) == raw.count(b"Z" * len(desc)) == 1
        path.write_bytes(raw.replace(b"Q" * len(name), name).replace(b"Z" * len(desc), desc))


@pytest.mark.parametrize(
    "charset, encoding",
    [("ISO_IR 100", "latin-1"), ("ISO_IR 192", "utf-8"), ("ISO_IR 192", "latin-1")]
    + [(None, "latin-1")],  # declared UTF-8 but Latin-1 bytes; undeclared
)
def test_non_ascii_names_and_descriptions(tmp_path, caplog, charset, encoding):
    caplog.set_level(logging.DEBUG)
    study = siemens_like(tmp_path / "sax")
    _with_text(tmp_path / "sax", charset, encoding)
    img, props, meta = load_cine(tmp_path / "sax")
    check_cine(img, props, meta)
    if charset and encoding == {"ISO_IR 100": "latin-1", "ISO_IR 192": "utf-8"}[charset]:
        assert meta.series_description == DESCRIPTION
    write_lax_cine(tmp_path / "lax", study, k=0, description="placeholder")
    _with_text(tmp_path / "lax", charset, encoding)
    err = _refused(tmp_path / "lax", "no short-axis cine")
    assert "Achse" in str(err)  # the description is named
    for text in (str(err), caplog.text):
        assert "ller^J" not in text and "PID-0001" not in text


def test_spaces_in_numbers_and_orientation_noise_between_slices(tmp_path):
    """PixelSpacing, ImagePositionPatient and ImageOrientationPatient written with spaces
    around the numbers, and an orientation that differs by up to 1e-5 between slices."""
    siemens_like(tmp_path / "s")
    noise = np.random.default_rng(5).uniform(-1e-5, 1e-5, (N_SLICES, 6))

    def spaced(_path: Path, ds) -> None:
        pos = np.asarray(ds.ImagePositionPatient, float)
        k = int(round(float(np.dot(pos - ORIGIN, NORMAL)) / STEP))
        _set_raw(ds, PIXEL_SPACING_TAG, " \\ ".join(f" {v} " for v in PIXEL_SPACING))
        _set_raw(ds, 0x00200032, "\\".join(f" {v:.4f}" for v in pos))
        _set_raw(ds, 0x00200037, "\\".join(f"{v:.8f} " for v in np.add(IOP, noise[k])))

    one = _edit_all(tmp_path / "s", spaced)[0]
    assert b" 1.5  \\  1.25 " in one.read_bytes()
    img, props, meta = load_cine(tmp_path / "s")
    check_cine(img, props, meta)


@pytest.mark.parametrize("spacing", ["1,5\\1,25", "1.5"])
def test_malformed_pixel_spacing_is_named(tmp_path, spacing):
    _cine_30ms_apart(tmp_path / "m", new_study())
    _edit_all(tmp_path / "m", lambda _p, ds: _set_raw(ds, PIXEL_SPACING_TAG, spacing))
    err = _refused(tmp_path / "m", "is not two numbers")
    assert f"PixelSpacing '{spacing}'" in str(err) and "/m/" in str(err)


def test_colour_image_in_the_cine_series_is_named(tmp_path):
    _cine_30ms_apart(tmp_path / "c", new_study())

    def rgb(_path: Path, ds) -> None:
        ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
        ds.PixelData = np.zeros((ROWS, COLS, 3), np.uint8).tobytes()

    _edit_all(tmp_path / "c" / "2_3", rgb)
    err = _refused(tmp_path / "c", "colour images are not supported")
    assert str(err).startswith(str(tmp_path / "c" / "2_3"))


def test_series_of_a_folder_without_images_names_it_in_one_error_line(tmp_path):
    """`series` on a folder without DICOM images printed 'no short-axis cine: ...' without the
    folder, unlike every other error."""
    from typer.testing import CliRunner

    from cardioseg.cli.main import app

    (tmp_path / "my study").mkdir()
    (tmp_path / "my study" / "notes.txt").write_text("no images here")
    res = CliRunner().invoke(app, ["series", str(tmp_path / "my study")])
    text = res.output.strip()
    assert res.exit_code == 1 and len(text.splitlines()) == 1, text
    assert text.startswith(f"error: {tmp_path / 'my study'}: ") and "no DICOM images" in text
