"""DICOM cine input: find the short-axis cine in a study folder (or zip) and load it as 4D.

Array convention (used by every function here and by the DICOM SEG writer)::

    array[i, j, k, t]
        i: column index of the DICOM image (moves along ImageOrientationPatient[0:3], the row
           direction), spacing PixelSpacing[1]
        j: row index of the DICOM image (moves along ImageOrientationPatient[3:6], the column
           direction), spacing PixelSpacing[0]
        k: slice index, sorted by increasing position along the slice normal
           n = IOP[0:3] x IOP[3:6]
        t: cardiac phase, sorted by TriggerTime (fallbacks: InstanceNumber / temporal position
           index, then AcquisitionTime, then file order)

so the 2D DICOM pixel matrix of source image ``(k, t)`` (rows x columns) is ``array[:, :, k, t].T``.
The affine is a NIfTI RAS+ voxel-to-world matrix: DICOM patient (LPS) coordinates of pixel
``(i, j)`` of slice ``k`` are ``IPP_0 + i * dc * row_dir + j * dr * col_dir + k * dz * n``
(``dr, dc = PixelSpacing``, ``dz`` the median distance between sorted slice positions, ``IPP_0``
the ImagePositionPatient of slice 0) and RAS is LPS with the first two coordinates negated.

Patient identifiers are never logged nor put in error messages; PatientID is only compared (as a
hash) to refuse studies that mix patients.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import stat
import tempfile
import warnings
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from cardioseg.errors import CardiosegError
from cardioseg.io.nifti import ImageProperties, atomic_write

log = logging.getLogger(__name__)

MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
ENHANCED_MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4.1"
MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"

MIN_SLICES = 3
MIN_PHASES = 2
#: Frames closer than this along the slice normal belong to the same slice.
POSITION_TOL_MM = 0.1
#: Maximum difference of direction cosines for two images to count as parallel (~0.6 degrees).
ORIENTATION_TOL = 0.01
#: Relative deviation of a slice gap from the median gap that triggers a warning.
GAP_TOL = 0.10
#: Phase counts may differ by this fraction of the largest count (truncated to the minimum).
PHASE_COUNT_TOL = 0.25
MAX_ZIP_MEMBERS = 200_000

#: Description tokens (lower case) suggesting a short-axis stack.
SA_HINTS = ("sa", "sax", "short", "shortaxis", "short_axis")
#: Description tokens suggesting a bright-blood cine sequence.
CINE_HINTS = ("cine", "bssfp", "ssfp", "trufi", "fiesta", "balanced", "btfe")
#: Description tokens suggesting a long-axis view.
LAX_HINTS = ("2ch", "3ch", "4ch", "2cv", "3cv", "4cv", "lax", "la", "lvot", "hla", "vla", "long")
#: Description tokens suggesting a non-cine sequence.
NON_CINE_HINTS = (
    "perf",
    "perfusion",
    "lge",
    "psir",
    "molli",
    "shmolli",
    "t1map",
    "t2map",
    "mapping",
    "map",
    "flow",
    "tagging",
    "tag",
    "localizer",
    "localiser",
    "scout",
    "loc",
    "haste",
    "tse",
)


# --------------------------------------------------------------------------------------------
# data classes


@dataclass
class _Frame:
    """One 2D image: a single-frame file or one frame of a multi-frame object."""

    path: str
    frame: int | None  # 0-based frame index in a multi-frame object, None for single-frame files
    sop_uid: str
    series_uid: str
    series_number: int | None
    instance_number: int | None
    temporal_index: int | None
    position: np.ndarray | None  # ImagePositionPatient (LPS, mm)
    orientation: np.ndarray | None  # ImageOrientationPatient (6,)
    pixel_spacing: tuple[float, float] | None  # (row spacing, column spacing) in mm
    slice_thickness: float | None
    trigger_time: float | None  # ms
    acquisition_time: float | None  # seconds since midnight
    rows: int
    columns: int
    samples_per_pixel: int
    slope: float
    intercept: float


@dataclass
class SeriesInfo:
    """Summary of one DICOM series (or of several single-slice series merged into a stack).

    Attributes:
        uid: SeriesInstanceUID (of the first component for merged stacks).
        description: SeriesDescription.
        n_images: Number of 2D images (frames of multi-frame objects count individually).
        n_positions: Distinct slice positions along the slice normal.
        n_phases: Typical (median) number of phases per position.
        orientation: ImageOrientationPatient of the first image, or ``None``.
        modality: Modality, e.g. ``"MR"``.
        is_cine_sa: Whether the series qualifies as a short-axis cine stack.
        reason: Why (or why not) it qualifies.
        files: Source files.
        series_number: SeriesNumber.
        study_uid: StudyInstanceUID.
        frame_of_reference_uid: FrameOfReferenceUID.
        rows: Rows of the first image.
        columns: Columns of the first image.
        merged_from: Component SeriesInstanceUIDs when one series per slice was merged.
        score: Selection score (higher is better), meaningful only when ``is_cine_sa``.
    """

    uid: str
    description: str
    n_images: int
    n_positions: int
    n_phases: int
    orientation: tuple[float, ...] | None
    modality: str
    is_cine_sa: bool = False
    reason: str = ""
    files: list[str] = field(default_factory=list, repr=False)
    series_number: int | None = None
    study_uid: str = ""
    frame_of_reference_uid: str = ""
    rows: int = 0
    columns: int = 0
    merged_from: list[str] = field(default_factory=list)
    score: float = 0.0
    _frames: list[_Frame] = field(default_factory=list, repr=False, compare=False)
    _header: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
    _patient_keys: set[str] = field(default_factory=set, repr=False, compare=False)
    _problems: list[str] = field(default_factory=list, repr=False, compare=False)

    def summary(self) -> str:
        """One line for error messages: description, modality, positions x phases, verdict."""
        desc = self.description or "(no description)"
        kind = f"{len(self.merged_from)} merged single-slice series, " if self.merged_from else ""
        return (
            f"'{desc}' {self.modality or '?'} {kind}{self.n_positions} position(s) x "
            f"{self.n_phases} phase(s): {self.reason}"
        )


class SeriesList(list):
    """``list[SeriesInfo]`` that also remembers the folder and the files that were skipped.

    Attributes:
        folder: The folder (or file) that was scanned.
        n_non_dicom: Files that are not DICOM (silently skipped).
        n_non_image: DICOM files without image data (DICOMDIR, SR, presentation states...).
    """

    def __init__(self, items=(), folder: str = "", n_non_dicom: int = 0, n_non_image: int = 0):
        super().__init__(items)
        self.folder = folder
        self.n_non_dicom = n_non_dicom
        self.n_non_image = n_non_image


@dataclass
class CineMeta:
    """What the loader learnt about the cine besides the pixels.

    Nested lists are indexed ``[k][t]`` like the array (slice, phase). Patient height and weight
    are kept for body-surface-area indexing in the report; they are hidden from ``repr`` and
    must never be logged.

    Attributes:
        series_uid: SeriesInstanceUID (first component series for merged stacks).
        series_description: SeriesDescription.
        n_slices: Number of slices (Z).
        n_phases: Number of phases (T).
        trigger_times_ms: Per phase, the median trigger time over slices (``None`` if unknown).
        slice_positions_mm: Per slice, the position along the slice normal (mm, LPS projection).
        warnings: Human-readable warnings (irregular gaps, duplicates, truncated phases...).
        source_files: ``[k][t]`` file of each source image. For zip input these are display
            names ``<zip path>/<member>`` that do not exist on disk; use ``source_headers``.
        sop_instance_uids: ``[k][t]`` SOPInstanceUID of each source image.
        frame_numbers: ``[k][t]`` 1-based frame number in multi-frame objects, else ``None``.
        instance_numbers: ``[k][t]`` InstanceNumber (``None`` when absent).
        series_uids: ``[k]`` SeriesInstanceUID of each slice (differs for merged stacks).
        merged_series_uids: Component series when one series per slice was merged.
        study_uid: StudyInstanceUID.
        frame_of_reference_uid: FrameOfReferenceUID.
        pixel_spacing_mm: PixelSpacing as stored: (row spacing, column spacing).
        slice_spacing_mm: Median distance between sorted slice positions.
        slice_thickness_mm: SliceThickness (informative only; not used for geometry).
        image_shape: (X, Y) = (columns, rows).
        phase_order: What ordered the phases: ``"TriggerTime"``, ``"InstanceNumber"``, ...
        vendor: Manufacturer.
        model: ManufacturerModelName.
        field_strength_t: MagneticFieldStrength in tesla.
        rr_interval_ms: NominalInterval (R-R interval) if present.
        patient_height_m: PatientSize in metres, if present and plausible.
        patient_weight_kg: PatientWeight in kg, if present and plausible.
        source_headers: ``[k][t]`` pydicom datasets without pixel data (for DICOM SEG).
    """

    series_uid: str
    series_description: str
    n_slices: int
    n_phases: int
    trigger_times_ms: list[float | None]
    slice_positions_mm: list[float]
    warnings: list[str] = field(default_factory=list)
    source_files: list[list[str]] = field(default_factory=list, repr=False)
    sop_instance_uids: list[list[str]] = field(default_factory=list, repr=False)
    frame_numbers: list[list[int | None]] = field(default_factory=list, repr=False)
    instance_numbers: list[list[int | None]] = field(default_factory=list, repr=False)
    series_uids: list[str] = field(default_factory=list, repr=False)
    merged_series_uids: list[str] = field(default_factory=list)
    study_uid: str = ""
    frame_of_reference_uid: str = ""
    pixel_spacing_mm: tuple[float, float] = (1.0, 1.0)
    slice_spacing_mm: float = 1.0
    slice_thickness_mm: float | None = None
    image_shape: tuple[int, int] = (0, 0)
    phase_order: str = "TriggerTime"
    vendor: str = ""
    model: str = ""
    field_strength_t: float | None = None
    rr_interval_ms: float | None = None
    patient_height_m: float | None = field(default=None, repr=False)
    patient_weight_kg: float | None = field(default=None, repr=False)
    source_headers: list[list[Any]] = field(default_factory=list, repr=False, compare=False)


# --------------------------------------------------------------------------------------------
# small helpers


@contextlib.contextmanager
def _quiet_pydicom() -> Iterator[None]:
    """Silence pydicom validation warnings: they can quote element values (patient names)."""
    from pydicom import config

    old = config.settings.reading_validation_mode
    config.settings.reading_validation_mode = config.IGNORE
    pd_logger = logging.getLogger("pydicom")
    old_disabled = pd_logger.disabled
    pd_logger.disabled = True
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        config.settings.reading_validation_mode = old
        pd_logger.disabled = old_disabled


def _float(value: Any) -> float | None:
    try:
        if value is None or value == "":
            return None
        out = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return out if np.isfinite(out) else None


def _int(value: Any) -> int | None:
    try:
        if value is None or value == "":
            return None
        return int(float(value))
    except (TypeError, ValueError, OverflowError):
        return None


def _floats(value: Any, n: int) -> np.ndarray | None:
    try:
        arr = np.asarray([float(v) for v in value], dtype=float)
    except (TypeError, ValueError, OverflowError):
        return None
    if arr.shape != (n,) or not np.all(np.isfinite(arr)):
        return None
    return arr


def _str(value: Any) -> str:
    return "" if value is None else str(value).strip()


def _tm_seconds(value: Any) -> float | None:
    """DICOM TM (``HHMMSS.ffffff``) or DT (``YYYYMMDDHHMMSS...``) to seconds since midnight."""
    s = _str(value).replace(":", "")
    if len(s) >= 14 and s[:14].isdigit():  # DT: drop the date
        s = s[8:]
    s = s.split("+")[0].split("-")[0]
    m = re.match(r"^(\d{2})(\d{2})?(\d{2})?(\.\d+)?$", s)
    if not m:
        return None
    h, mi, sec, frac = m.groups()
    return int(h) * 3600 + int(mi or 0) * 60 + int(sec or 0) + float(frac or 0.0)


def _tokens(description: str) -> set[str]:
    low = description.lower()
    toks = set(t for t in re.split(r"[^a-z0-9]+", low) if t)
    # glued forms such as "cine_sax4ch" or "shortaxis"
    for hint in ("short", "sax", "2ch", "3ch", "4ch", "lax", "cine", "fiesta", "trufi", "bssfp"):
        if hint in low:
            toks.add(hint)
    if "b-tfe" in low or "btfe" in low:
        toks.add("btfe")
    return toks


def _patient_key(ds: Any) -> str:
    pid = _str(ds.get("PatientID", ""))
    return hashlib.sha256(pid.encode("utf-8", "replace")).hexdigest() if pid else ""


def _item(seq: Any, index: int = 0) -> Any:
    try:
        return seq[index] if seq is not None and len(seq) > index else None
    except (TypeError, IndexError):
        return None


def _group_attr(per_frame: Any, shared: Any, seq_name: str, attr: str) -> Any:
    """Value of ``attr`` in functional group ``seq_name`` (per-frame first, then shared)."""
    for container in (per_frame, shared):
        if container is None:
            continue
        inner = _item(container.get(seq_name))
        if inner is not None and attr in inner:
            return inner.get(attr)
    return None


# --------------------------------------------------------------------------------------------
# header reading


def _dcmread(path: Path, stop_before_pixels: bool) -> Any:
    """Read a DICOM file or return ``None`` if it is not DICOM (never raises pydicom errors)."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(str(path), stop_before_pixels=stop_before_pixels, force=False)
    except InvalidDicomError:
        pass
    except Exception:
        return None
    # Files without the 128-byte preamble (old exporters) start directly with group 0x0002/0x0008
    try:
        with open(path, "rb") as fh:
            head = fh.read(4)
        if len(head) == 4 and head[1] == 0 and head[0] in (0x02, 0x08) and head[3] == 0:
            ds = pydicom.dcmread(str(path), stop_before_pixels=stop_before_pixels, force=True)
            if "SOPClassUID" in ds or "Rows" in ds:
                return ds
    except Exception:
        return None
    return None


def _frames_from_dataset(ds: Any, path: str) -> list[_Frame]:
    """All 2D frames described by a header (classic single-frame or enhanced multi-frame)."""
    n_frames = max(1, _int(ds.get("NumberOfFrames", 1)) or 1)
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    shared = _item(ds.get("SharedFunctionalGroupsSequence"))
    sop_class = _str(ds.get("SOPClassUID", ""))
    has_plane = per_frame is not None and any("PlanePositionSequence" in it for it in per_frame)
    # Some classic exports (e.g. Sunnybrook/OsiriX) carry an empty per-frame sequence: only
    # objects whose functional groups hold the plane geometry are treated as enhanced.
    enhanced = (
        per_frame is not None
        and len(per_frame) == n_frames
        and (has_plane or (shared is not None and "PlanePositionSequence" in shared))
    )
    if sop_class == ENHANCED_MR_IMAGE_STORAGE and not enhanced:
        log.debug("enhanced MR object without plane functional groups: %s", path)
    common = dict(
        path=path,
        sop_uid=_str(ds.get("SOPInstanceUID", "")),
        series_uid=_str(ds.get("SeriesInstanceUID", "")),
        series_number=_int(ds.get("SeriesNumber")),
        instance_number=_int(ds.get("InstanceNumber")),
        rows=_int(ds.get("Rows")) or 0,
        columns=_int(ds.get("Columns")) or 0,
        samples_per_pixel=_int(ds.get("SamplesPerPixel", 1)) or 1,
    )
    top_pos = _floats(ds.get("ImagePositionPatient"), 3)
    top_ori = _floats(ds.get("ImageOrientationPatient"), 6)
    top_ps = _floats(ds.get("PixelSpacing"), 2)
    top_slope = _float(ds.get("RescaleSlope"))
    top_inter = _float(ds.get("RescaleIntercept"))
    top_tt = _float(ds.get("TriggerTime"))
    if top_tt is None:
        top_tt = _float(ds.get("NominalCardiacTriggerDelayTime"))
    top_acq = _tm_seconds(ds.get("AcquisitionTime")) or _tm_seconds(ds.get("ContentTime"))
    top_thick = _float(ds.get("SliceThickness"))
    frames = []
    if enhanced:
        for f in range(n_frames):
            pf = per_frame[f]
            pos = _floats(
                _group_attr(pf, shared, "PlanePositionSequence", "ImagePositionPatient"), 3
            )
            ori = _floats(
                _group_attr(pf, shared, "PlaneOrientationSequence", "ImageOrientationPatient"), 6
            )
            ps = _floats(_group_attr(pf, shared, "PixelMeasuresSequence", "PixelSpacing"), 2)
            thick = _float(_group_attr(pf, shared, "PixelMeasuresSequence", "SliceThickness"))
            tt = _float(
                _group_attr(
                    pf, shared, "CardiacSynchronizationSequence", "NominalCardiacTriggerDelayTime"
                )
            )
            slope = _float(
                _group_attr(pf, shared, "PixelValueTransformationSequence", "RescaleSlope")
            )
            inter = _float(
                _group_attr(pf, shared, "PixelValueTransformationSequence", "RescaleIntercept")
            )
            tpi = _int(_group_attr(pf, None, "FrameContentSequence", "TemporalPositionIndex"))
            acq = _tm_seconds(
                _group_attr(pf, None, "FrameContentSequence", "FrameAcquisitionDateTime")
            )
            frames.append(
                _Frame(
                    frame=f,
                    temporal_index=tpi,
                    position=pos if pos is not None else top_pos,
                    orientation=ori if ori is not None else top_ori,
                    pixel_spacing=tuple(ps)
                    if ps is not None
                    else (tuple(top_ps) if top_ps is not None else None),
                    slice_thickness=thick if thick is not None else top_thick,
                    trigger_time=tt,
                    acquisition_time=acq if acq is not None else top_acq,
                    slope=slope if slope is not None else (top_slope or 1.0),
                    intercept=inter if inter is not None else (top_inter or 0.0),
                    **common,
                )
            )
        return frames
    # classic image; legacy multi-frame without functional groups = one position, many phases
    frame_time = _float(ds.get("FrameTime"))
    for f in range(n_frames):
        tt = top_tt
        if n_frames > 1:
            tt = None if frame_time is None else (top_tt or 0.0) + f * frame_time
        frames.append(
            _Frame(
                frame=f if n_frames > 1 else None,
                temporal_index=f + 1 if n_frames > 1 else None,
                position=top_pos,
                orientation=top_ori,
                pixel_spacing=tuple(top_ps) if top_ps is not None else None,
                slice_thickness=top_thick,
                trigger_time=tt,
                acquisition_time=top_acq,
                slope=top_slope or 1.0,  # a zero slope is invalid: treat as 1
                intercept=0.0 if top_inter is None else top_inter,
                **common,
            )
        )
    return frames


def _header_values(ds: Any) -> dict[str, Any]:
    """Non-identifying series-level values kept for the report."""
    return {
        "description": _str(ds.get("SeriesDescription", "")),
        "modality": _str(ds.get("Modality", "")).upper(),
        "study_uid": _str(ds.get("StudyInstanceUID", "")),
        "for_uid": _str(ds.get("FrameOfReferenceUID", "")),
        "vendor": _str(ds.get("Manufacturer", "")),
        "model": _str(ds.get("ManufacturerModelName", "")),
        "field_strength": _float(ds.get("MagneticFieldStrength")),
        "rr_interval": _float(ds.get("NominalInterval")),
        "height": _float(ds.get("PatientSize")),
        "weight": _float(ds.get("PatientWeight")),
        "image_type": [str(v).upper() for v in (ds.get("ImageType") or [])],
    }


def _iter_files(root: Path) -> Iterator[Path]:
    if root.is_file():
        yield root
        return
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames.sort()
        for name in sorted(filenames):
            p = Path(dirpath) / name
            with contextlib.suppress(OSError):
                if stat.S_ISREG(p.stat().st_mode):
                    yield p


def find_series(folder: str | Path) -> SeriesList:
    """Scan a folder recursively (or one file) and group DICOM images by SeriesInstanceUID.

    Only headers are read. Non-DICOM files are skipped silently and counted
    (``result.n_non_dicom``); DICOM objects without an image (DICOMDIR, reports...) are counted in
    ``result.n_non_image``. Single-slice series of one study that can be merged into a stack
    are NOT merged here (see :func:`select_short_axis_cine`).

    Args:
        folder: Study folder (any nesting) or a single DICOM file.

    Returns:
        A :class:`SeriesList` (a ``list[SeriesInfo]``) sorted by SeriesNumber.

    Raises:
        CardiosegError: The folder does not exist.
    """
    root = Path(folder)
    if not root.exists():
        raise CardiosegError(root, "not found")
    n_non_dicom = n_non_image = 0
    groups: dict[str, SeriesInfo] = {}
    with _quiet_pydicom():
        for path in _iter_files(root):
            ds = _dcmread(path, stop_before_pixels=True)
            if ds is None:
                n_non_dicom += 1
                continue
            try:
                sop_class = _str(ds.get("SOPClassUID", ""))
                uid = _str(ds.get("SeriesInstanceUID", ""))
                if sop_class == MEDIA_STORAGE_DIRECTORY or not uid or "Rows" not in ds:
                    n_non_image += 1
                    continue
                frames = _frames_from_dataset(ds, str(path))
                header = _header_values(ds)
                pkey = _patient_key(ds)
            except Exception as exc:  # malformed elements: treat the file as unreadable
                log.debug("skipping %s: %s", path, type(exc).__name__)
                n_non_dicom += 1
                continue
            info = groups.get(uid)
            if info is None:
                info = groups[uid] = SeriesInfo(
                    uid=uid,
                    description=header["description"],
                    n_images=0,
                    n_positions=0,
                    n_phases=0,
                    orientation=None,
                    modality=header["modality"],
                    series_number=frames[0].series_number,
                    study_uid=header["study_uid"],
                    frame_of_reference_uid=header["for_uid"],
                    rows=frames[0].rows,
                    columns=frames[0].columns,
                    _header=header,
                )
            info.files.append(str(path))
            info._frames.extend(frames)
            if pkey:
                info._patient_keys.add(pkey)
    out = SeriesList(folder=str(root), n_non_dicom=n_non_dicom, n_non_image=n_non_image)
    for info in groups.values():
        _classify(info)
        out.append(info)
    out.sort(key=lambda s: (s.series_number if s.series_number is not None else 1 << 30, s.uid))
    log.debug(
        "%s: %d series, %d non-DICOM files, %d non-image DICOM",
        root,
        len(out),
        n_non_dicom,
        n_non_image,
    )
    return out


# --------------------------------------------------------------------------------------------
# geometry of a set of frames


@dataclass
class _Stack:
    row: np.ndarray
    col: np.ndarray
    normal: np.ndarray
    slices: list[list[_Frame]]  # sorted along the normal
    positions: list[float]  # projection of IPP on the normal, per slice


class _GeometryProblem(Exception):
    pass


def _direction_cosines(iop: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    row = iop[:3] / max(np.linalg.norm(iop[:3]), 1e-12)
    col = iop[3:] - np.dot(iop[3:], row) * row
    col = col / max(np.linalg.norm(col), 1e-12)
    return row, col, np.cross(row, col)


def _stack(frames: list[_Frame]) -> _Stack:
    """Group frames into slices sorted along the slice normal.

    Raises:
        _GeometryProblem: Missing or degenerate position/orientation, or non-parallel images.
    """
    if not frames:
        raise _GeometryProblem("no images")
    if any(f.orientation is None or f.position is None for f in frames):
        raise _GeometryProblem("missing ImagePositionPatient/ImageOrientationPatient")
    ref = frames[0].orientation
    assert ref is not None
    if (
        np.linalg.norm(ref[:3]) < 0.5
        or np.linalg.norm(ref[3:]) < 0.5
        or abs(np.dot(ref[:3], ref[3:])) > 0.1
    ):
        raise _GeometryProblem("invalid ImageOrientationPatient")
    for f in frames:
        if np.max(np.abs(f.orientation - ref)) > ORIENTATION_TOL:  # type: ignore[operator]
            raise _GeometryProblem("images with different orientations")
    row, col, normal = _direction_cosines(ref)
    d = np.array([float(np.dot(f.position, normal)) for f in frames])  # type: ignore[arg-type]
    order = np.argsort(d, kind="stable")
    slices: list[list[int]] = []
    start = None
    for idx in order:
        if start is None or d[idx] - start > POSITION_TOL_MM:
            start = d[idx]
            slices.append([])
        slices[-1].append(int(idx))
    positions = [float(np.mean(d[s])) for s in slices]
    return _Stack(row, col, normal, [[frames[i] for i in s] for s in slices], positions)


def _dedupe_sop(frames: list[_Frame]) -> tuple[list[_Frame], int]:
    seen: set[tuple[str, int | None]] = set()
    out = []
    for f in frames:
        key = (f.sop_uid or f"{f.path}", f.frame)
        if key in seen:
            continue
        seen.add(key)
        out.append(f)
    return out, len(frames) - len(out)


def _use_trigger_time(frames: list[_Frame]) -> bool:
    tts = [f.trigger_time for f in frames]
    return all(t is not None for t in tts) and any(t != 0.0 for t in tts)


def _phase_count(slice_frames: list[_Frame], trigger: bool) -> int:
    if trigger:
        return len({round(float(f.trigger_time), 2) for f in slice_frames})  # type: ignore[arg-type]
    return len(slice_frames)


def _classify(info: SeriesInfo) -> None:
    """Fill n_images / n_positions / n_phases / orientation / is_cine_sa / reason / score."""
    frames, _ = _dedupe_sop(info._frames)
    info.n_images = len(frames)
    if frames and frames[0].orientation is not None:
        info.orientation = tuple(float(v) for v in frames[0].orientation)
    problems: list[str] = []
    try:
        st = _stack(frames)
        trigger = _use_trigger_time(frames)
        counts = [_phase_count(s, trigger) for s in st.slices]
        info.n_positions = len(st.slices)
        info.n_phases = int(np.median(counts)) if counts else 0
    except _GeometryProblem as exc:
        problems.append(str(exc))
        info.n_positions = len(
            {tuple(np.round(f.position, 1)) for f in frames if f.position is not None}
        )
        info.n_phases = 0
    if info.modality != "MR":
        problems.append(f"modality {info.modality or 'unknown'}, not MR")
    if not problems and info.n_phases < MIN_PHASES:
        problems.append(f"not a cine ({info.n_phases} phase per position)")
    if not problems and info.n_positions < MIN_SLICES:
        problems.append(f"only {info.n_positions} slice position(s), need >= {MIN_SLICES}")
    if any(
        t in ("LOCALIZER", "T1 MAP", "T2 MAP", "T2* MAP")
        for t in info._header.get("image_type", [])
    ):
        problems.append("image type " + "\\".join(info._header["image_type"]))
    toks = _tokens(info.description)
    sa, cine = bool(toks & set(SA_HINTS)), bool(toks & set(CINE_HINTS))
    lax, non_cine = bool(toks & set(LAX_HINTS)), bool(toks & set(NON_CINE_HINTS))
    if lax and not sa:
        problems.append("description suggests a long-axis view")
    if non_cine and not cine:
        problems.append("description suggests a non-cine sequence")
    info._problems = problems
    info.is_cine_sa = not problems
    info.reason = "; ".join(problems) if problems else "short-axis cine candidate"
    info.score = (
        3.0 * sa
        + 2.0 * cine
        - 3.0 * lax
        - 2.0 * non_cine
        + min(info.n_positions, 20) / 10.0
        + min(info.n_phases, 40) / 40.0
        - 0.5 * bool(info.merged_from)
    )


# --------------------------------------------------------------------------------------------
# selection


def _single_slice_cine(info: SeriesInfo) -> bool:
    """A series that could be one slice of a one-series-per-slice stack."""
    if info.modality != "MR" or info.n_positions != 1 or info.n_phases < MIN_PHASES:
        return False
    # the lack of other slices must be the only objection (no long-axis/non-cine description)
    return (
        info.orientation is not None
        and len(info._problems) == 1
        and info._problems[0].startswith("only 1 slice")
    )


def _same_spacing(a: tuple[float, float] | None, b: tuple[float, float] | None) -> bool:
    if a is None or b is None:
        return a is b
    return bool(np.allclose(a, b, rtol=1e-3, atol=1e-4))


def _merge_single_slice_series(series: list[SeriesInfo]) -> list[SeriesInfo]:
    """Merge single-slice cine series of one study with parallel planes into stacks."""
    singles = [s for s in series if _single_slice_cine(s)]
    groups: list[list[SeriesInfo]] = []
    for s in singles:
        ori = np.asarray(s.orientation)
        for g in groups:
            ref = g[0]
            if (
                ref.study_uid == s.study_uid
                and ref.frame_of_reference_uid == s.frame_of_reference_uid
                and (ref.rows, ref.columns) == (s.rows, s.columns)
                and _same_spacing(ref._frames[0].pixel_spacing, s._frames[0].pixel_spacing)
                and np.max(np.abs(np.asarray(ref.orientation) - ori)) <= ORIENTATION_TOL
            ):
                g.append(s)
                break
        else:
            groups.append([s])
    merged = []
    for g in groups:
        med = float(np.median([s.n_phases for s in g]))
        g = [s for s in g if abs(s.n_phases - med) <= max(1.0, PHASE_COUNT_TOL * med)]
        # one series per position: a repeated slice keeps its latest acquisition
        by_pos: dict[float, SeriesInfo] = {}
        _, _, normal = _direction_cosines(np.asarray(g[0].orientation, dtype=float))
        for s in sorted(g, key=lambda x: (x.series_number or 0, x.uid)):
            p = s._frames[0].position
            if p is None:
                continue
            key = round(float(np.dot(p, normal)) / POSITION_TOL_MM) * POSITION_TOL_MM
            near = [k for k in by_pos if abs(k - key) <= POSITION_TOL_MM]
            for k in near:
                del by_pos[k]
            by_pos[key] = s
        comps = [by_pos[k] for k in sorted(by_pos)]
        if len(comps) < MIN_SLICES:
            continue
        first = comps[0]
        descs = {c.description for c in comps}
        info = SeriesInfo(
            uid=first.uid,
            description=descs.pop() if len(descs) == 1 else first.description,
            n_images=0,
            n_positions=0,
            n_phases=0,
            orientation=first.orientation,
            modality=first.modality,
            series_number=first.series_number,
            study_uid=first.study_uid,
            frame_of_reference_uid=first.frame_of_reference_uid,
            rows=first.rows,
            columns=first.columns,
            merged_from=[c.uid for c in comps],
            files=[f for c in comps for f in c.files],
            _frames=[f for c in comps for f in c._frames],
            _header=dict(first._header),
            _patient_keys=set().union(*(c._patient_keys for c in comps)),
        )
        _classify(info)
        if len(comps) < len(g):
            info._header["merge_note"] = (
                f"{len(g) - len(comps)} repeated single-slice series ignored "
                "(kept the latest at each position)"
            )
        merged.append(info)
    return merged


def _summary(series: list[SeriesInfo], n_non_dicom: int = 0, limit: int = 6) -> str:
    if not series:
        text = "no DICOM images"
    else:
        parts = [s.summary() for s in series[:limit]]
        if len(series) > limit:
            parts.append(f"... and {len(series) - limit} more")
        text = f"found {len(series)} series: " + "; ".join(parts)
    if n_non_dicom:
        text += f"; {n_non_dicom} non-DICOM file(s) skipped"
    return text


def select_short_axis_cine(
    series: list[SeriesInfo], folder: str | Path | None = None
) -> SeriesInfo:
    """Choose the short-axis cine stack among the series of a study.

    A candidate is an MR series with >= 3 parallel slice positions and >= 2 phases whose
    description does not suggest a long-axis view (2ch/3ch/4ch/lax/la...) or a non-cine sequence
    (perfusion, LGE, mapping...) unless it also carries a short-axis (resp. cine) hint.
    Single-slice cine series of one study with the same orientation and image size (one series
    per slice location, common on GE/Siemens) are merged into one stack. Among candidates the
    highest score wins: short-axis hints (sa, sax, short) and cine hints (cine, bssfp, trufi,
    fiesta, balanced) add, long-axis hints subtract, more slices and phases add a little, and
    merged stacks lose a little against a genuine multi-slice series.

    Args:
        series: Output of :func:`find_series`.
        folder: Path used in error messages (defaults to the scanned folder).

    Returns:
        The chosen series (a merged :class:`SeriesInfo` with ``merged_from`` for per-slice
        series).

    Raises:
        CardiosegError: No candidate; the message summarises what was found.
    """
    where = folder if folder is not None else getattr(series, "folder", None)
    candidates = [s for s in series if s.is_cine_sa]
    candidates += [m for m in _merge_single_slice_series(list(series)) if m.is_cine_sa]
    if not candidates:
        n_skipped = getattr(series, "n_non_dicom", 0)
        raise CardiosegError(
            where, f"no short-axis cine series found ({_summary(list(series), n_skipped)})"
        )
    best = max(candidates, key=lambda s: (s.score, s.n_positions, s.n_images))
    log.info(
        "selected series %r: %d positions x %d phases (%d candidates)",
        best.description,
        best.n_positions,
        best.n_phases,
        len(candidates),
    )
    return best


# --------------------------------------------------------------------------------------------
# zip input


def _safe_member(name: str) -> PurePosixPath | None:
    """Normalised relative path of a zip member, ``None`` for directories.

    Raises:
        ValueError: Absolute paths, drive letters, ``..`` components or NUL bytes.
    """
    n = name.replace("\\", "/")
    if "\x00" in n or n.startswith("/") or re.match(r"^[A-Za-z]:", n):
        raise ValueError(name)
    parts = [p for p in n.split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise ValueError(name)
    return PurePosixPath(*parts) if parts else None


@contextlib.contextmanager
def _extracted_zip(path: Path, max_bytes: int) -> Iterator[tuple[Path, Callable[[str], str]]]:
    """Extract a zip safely into a temporary folder; yield it and a path-to-display mapper."""
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError):
        raise CardiosegError(path, "not a valid zip archive (corrupt or truncated)") from None
    with zf, tempfile.TemporaryDirectory(prefix="cardioseg-zip-") as tmp:
        dest = Path(tmp).resolve()
        try:
            infos = zf.infolist()
        except Exception:
            raise CardiosegError(path, "corrupt zip archive") from None
        if len(infos) > MAX_ZIP_MEMBERS:
            raise CardiosegError(path, f"zip too large ({len(infos)} members)")
        members: list[tuple[zipfile.ZipInfo, PurePosixPath]] = []
        for info in infos:
            if info.flag_bits & 0x1:
                raise CardiosegError(
                    path, "encrypted zip (password-protected archives are not supported)"
                )
            try:
                rel = _safe_member(info.filename)
            except ValueError:
                raise CardiosegError(
                    path, "unsafe path in zip (member outside the archive folder)"
                ) from None
            if rel is None or info.is_dir():
                continue
            if stat.S_ISLNK(info.external_attr >> 16):
                continue  # symbolic links are never followed nor created
            members.append((info, rel))
        total = sum(i.file_size for i, _ in members)
        if total > max_bytes:
            raise CardiosegError(
                path, f"zip too large ({total} bytes uncompressed, limit {max_bytes})"
            )
        display: dict[str, str] = {}
        written = 0
        try:
            for info, rel in members:
                target = dest.joinpath(*rel.parts)
                if not target.resolve().is_relative_to(dest):
                    raise CardiosegError(path, "unsafe path in zip")
                if target.exists():
                    continue  # duplicate member name: keep the first
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(target, "xb") as dst:
                    while chunk := src.read(1 << 20):
                        written += len(chunk)
                        if written > max_bytes:
                            raise CardiosegError(
                                path, f"zip too large (more than {max_bytes} bytes uncompressed)"
                            )
                        dst.write(chunk)
                display[str(target)] = f"{path}/{rel}"
        except CardiosegError:
            raise
        except NotImplementedError:
            raise CardiosegError(path, "unsupported zip compression method") from None
        except RuntimeError:  # zipfile raises RuntimeError for encrypted members
            raise CardiosegError(path, "encrypted zip") from None
        except (zipfile.BadZipFile, zlib.error, EOFError, ValueError) as exc:
            raise CardiosegError(path, f"corrupt zip archive ({type(exc).__name__})") from None
        except OSError as exc:
            raise CardiosegError(path, f"cannot extract zip ({exc.strerror or exc})") from None

        def to_display(p: str) -> str:
            return display.get(p, p)

        yield dest, to_display


# --------------------------------------------------------------------------------------------
# loading


def _phase_key(mode: str) -> Callable[[_Frame], tuple]:
    if mode == "TriggerTime":
        return lambda f: (f.trigger_time, f.instance_number or 0, f.path, f.frame or 0)
    if mode == "InstanceNumber":
        return lambda f: (f.instance_number or 0, f.temporal_index or 0, f.frame or 0, f.path)
    if mode == "AcquisitionTime":
        return lambda f: (f.acquisition_time, f.path, f.frame or 0)
    return lambda f: (f.path, f.frame or 0)


def _phase_mode(frames: list[_Frame]) -> str:
    if _use_trigger_time(frames):
        return "TriggerTime"
    if all(f.instance_number is not None or f.temporal_index is not None for f in frames):
        return "InstanceNumber"
    if all(f.acquisition_time is not None for f in frames):
        return "AcquisitionTime"
    return "file order"


def _order_phases(st: _Stack, where: str, warn: list[str]) -> tuple[list[list[_Frame]], str]:
    """Sort each slice's frames into phases, drop duplicates, equalise the phase count."""
    all_frames = [f for s in st.slices for f in s]
    mode = _phase_mode(all_frames)
    key = _phase_key(mode)
    ordered: list[list[_Frame]] = []
    n_dupes = 0
    for frames in st.slices:
        frames = sorted(frames, key=key)
        if mode == "TriggerTime":
            kept: dict[float, _Frame] = {}
            for f in sorted(frames, key=lambda x: (-(x.series_number or 0), x.path, x.frame or 0)):
                tt = round(float(f.trigger_time), 2)  # type: ignore[arg-type]
                if tt in kept:
                    n_dupes += 1
                    continue
                kept[tt] = f
            frames = sorted(kept.values(), key=key)
        ordered.append(frames)
    if n_dupes:
        warn.append(f"{n_dupes} duplicate image(s) with the same position and trigger time ignored")
    counts = [len(s) for s in ordered]
    nmin, nmax = min(counts), max(counts)
    if nmin < MIN_PHASES:
        k = counts.index(nmin)
        raise CardiosegError(
            where,
            f"slice {k} (at {st.positions[k]:.1f} mm) has only {nmin} phase; a cine needs "
            f"at least {MIN_PHASES} phases per slice",
        )
    if nmax != nmin:
        if nmax - nmin > max(1.0, PHASE_COUNT_TOL * nmax):
            raise CardiosegError(
                where, f"inconsistent number of phases per slice ({nmin} to {nmax})"
            )
        if mode == "TriggerTime":
            # keep, in each longer slice, the frames that best match the trigger times of the
            # shortest slices, so that a phase missing in the middle does not shift later phases
            ref = np.median(
                [[f.trigger_time for f in s] for s in ordered if len(s) == nmin], axis=0
            )
            ordered = [s if len(s) == nmin else _match_trigger_times(s, ref) for s in ordered]
            how = "matched by trigger time"
        else:
            ordered = [s[:nmin] for s in ordered]
            how = "last phases dropped"
        warn.append(f"slices have {nmin} to {nmax} phases: truncated to {nmin} ({how})")
    return ordered, mode


def _match_trigger_times(frames: list[_Frame], ref: np.ndarray) -> list[_Frame]:
    """Order-preserving choice of ``len(ref)`` frames minimising the trigger-time mismatch."""
    tt = np.array([float(f.trigger_time) for f in frames])  # type: ignore[arg-type]
    n, m = len(tt), len(ref)
    cost = np.full((n + 1, m + 1), np.inf)
    cost[:, 0] = 0.0
    for a in range(1, n + 1):
        for b in range(1, min(a, m) + 1):
            cost[a, b] = min(cost[a - 1, b], cost[a - 1, b - 1] + abs(tt[a - 1] - ref[b - 1]))
    chosen, a, b = [], n, m
    while b > 0:
        if cost[a, b] == cost[a - 1, b - 1] + abs(tt[a - 1] - ref[b - 1]):
            chosen.append(a - 1)
            b -= 1
        a -= 1
    return [frames[i] for i in reversed(chosen)]


def _check_consistency(frames: list[_Frame], where: str, show: Callable[[str], str]) -> None:
    sizes = sorted({(f.rows, f.columns) for f in frames})
    if len(sizes) > 1:
        shown = ", ".join(f"{r}x{c}" for r, c in sizes[:4])
        raise CardiosegError(
            where, f"images of different sizes across slices ({shown} rows x columns)"
        )
    if sizes[0][0] < 2 or sizes[0][1] < 2:
        raise CardiosegError(where, f"invalid image size {sizes[0][0]}x{sizes[0][1]}")
    missing = [f for f in frames if f.pixel_spacing is None]
    if missing:
        raise CardiosegError(show(missing[0].path), "missing PixelSpacing")
    ps = np.array([f.pixel_spacing for f in frames], dtype=float)
    if np.any(ps <= 0):
        raise CardiosegError(where, "zero or negative PixelSpacing")
    if np.max(np.abs(ps - ps[0])) > 1e-3 * max(1.0, float(ps[0].max())):
        raise CardiosegError(where, "different PixelSpacing across slices")
    if any(f.samples_per_pixel != 1 for f in frames):
        raise CardiosegError(where, "colour images are not supported (SamplesPerPixel != 1)")


def _read_pixels(
    frames: list[list[_Frame]], shape: tuple[int, int], show: Callable[[str], str]
) -> tuple[np.ndarray, list[list[Any]]]:
    """Read, rescale and transpose the pixel data into ``(X, Y, Z, T)``; also keep headers."""
    cols, rows = shape
    n_z, n_t = len(frames), len(frames[0])
    out = np.empty((cols, rows, n_z, n_t), dtype=np.float32)
    headers: list[list[Any]] = [[None] * n_t for _ in range(n_z)]
    wanted: dict[str, list[tuple[int, int, _Frame]]] = {}
    for k in range(n_z):
        for t in range(n_t):
            f = frames[k][t]
            wanted.setdefault(f.path, []).append((k, t, f))
    with _quiet_pydicom():
        for path, uses in wanted.items():
            ds = _dcmread(Path(path), stop_before_pixels=False)
            if ds is None:
                raise CardiosegError(show(path), "cannot read DICOM file")
            try:
                pix = np.asarray(ds.pixel_array)
            except Exception as exc:
                ts = _str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", ""))
                raise CardiosegError(
                    show(path),
                    f"cannot decode pixel data (transfer syntax {ts or 'unknown'}, "
                    f"{type(exc).__name__})",
                ) from None
            n_frames = max(1, _int(ds.get("NumberOfFrames", 1)) or 1)
            if pix.size != n_frames * rows * cols:
                raise CardiosegError(
                    show(path),
                    f"pixel data of shape {pix.shape} does not match "
                    f"{n_frames} frame(s) of {rows}x{cols}",
                )
            pix = pix.reshape(n_frames, rows, cols)
            with contextlib.suppress(Exception):
                del ds.PixelData
            for k, t, f in uses:
                img = pix[f.frame or 0].astype(np.float64) * f.slope + f.intercept
                out[:, :, k, t] = img.T
                headers[k][t] = ds
    if not np.all(np.isfinite(out)):
        raise CardiosegError(show(frames[0][0].path), "pixel data contains NaN or Inf")
    return out, headers


def _plausible(value: float | None, lo: float, hi: float) -> float | None:
    return value if value is not None and lo <= value <= hi else None


def _assemble(
    chosen: SeriesInfo, where: str, show: Callable[[str], str]
) -> tuple[np.ndarray, ImageProperties, CineMeta]:
    warn: list[str] = []
    if chosen._header.get("merge_note"):
        warn.append(chosen._header["merge_note"])
    frames, n_dup = _dedupe_sop(chosen._frames)
    if n_dup:
        warn.append(f"{n_dup} duplicate file(s) (same SOPInstanceUID) ignored")
    if len(frames) == 1:
        raise CardiosegError(where, "a single image is not a cine")
    _check_consistency(frames, where, show)
    try:
        st = _stack(frames)
    except _GeometryProblem as exc:
        raise CardiosegError(where, str(exc)) from None
    if len(st.slices) < 2:
        raise CardiosegError(where, "only one slice position: not a short-axis stack")
    ordered, mode = _order_phases(st, where, warn)
    n_z, n_t = len(ordered), len(ordered[0])

    positions = np.asarray(st.positions)
    gaps = np.diff(positions)
    dz = float(np.median(gaps))
    if np.any(np.abs(gaps - dz) > GAP_TOL * dz):
        warn.append(
            "irregular slice gaps ("
            + ", ".join(f"{g:.2f}" for g in gaps)
            + f" mm); the affine uses the median {dz:.2f} mm"
        )
    ref = ordered[0][0]
    row_sp, col_sp = (float(v) for v in ref.pixel_spacing)  # type: ignore[union-attr]
    origin = np.asarray(ref.position, dtype=float)
    # in-plane alignment of the slices with the grid defined by slice 0
    offsets = []
    for k in range(n_z):
        delta = np.asarray(ordered[k][0].position, dtype=float) - origin
        offsets.append(float(np.hypot(np.dot(delta, st.row), np.dot(delta, st.col))))
    if max(offsets) > 0.5 * min(row_sp, col_sp):
        warn.append(
            f"slices are shifted in-plane by up to {max(offsets):.1f} mm; the affine "
            "follows slice 0"
        )
    thick = ref.slice_thickness
    if thick is not None and dz > 0 and abs(thick - dz) > 0.01 * dz:
        log.debug("SliceThickness %.2f mm differs from slice spacing %.2f mm", thick, dz)

    lps = np.eye(4)
    lps[:3, 0] = st.row * col_sp
    lps[:3, 1] = st.col * row_sp
    lps[:3, 2] = st.normal * dz
    lps[:3, 3] = origin
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps

    rows, cols = ref.rows, ref.columns
    array, headers = _read_pixels(ordered, (cols, rows), show)

    trig: list[float | None] = []
    for t in range(n_t):
        vals = [ordered[k][t].trigger_time for k in range(n_z)]
        vals_ok = [v for v in vals if v is not None]
        trig.append(float(np.median(vals_ok)) if vals_ok and mode == "TriggerTime" else None)

    hdr = chosen._header
    height = hdr.get("height")
    if height is not None and 30.0 <= height <= 280.0:  # entered in cm instead of metres
        warn.append("PatientSize looks like centimetres; converted to metres")
        height = height / 100.0
    meta = CineMeta(
        series_uid=chosen.uid,
        series_description=chosen.description,
        n_slices=n_z,
        n_phases=n_t,
        trigger_times_ms=trig,
        slice_positions_mm=[float(p) for p in positions],
        warnings=warn,
        source_files=[[show(f.path) for f in s] for s in ordered],
        sop_instance_uids=[[f.sop_uid for f in s] for s in ordered],
        frame_numbers=[[None if f.frame is None else f.frame + 1 for f in s] for s in ordered],
        instance_numbers=[[f.instance_number for f in s] for s in ordered],
        series_uids=[s[0].series_uid for s in ordered],
        merged_series_uids=list(chosen.merged_from),
        study_uid=chosen.study_uid,
        frame_of_reference_uid=chosen.frame_of_reference_uid,
        pixel_spacing_mm=(row_sp, col_sp),
        slice_spacing_mm=dz,
        slice_thickness_mm=thick,
        image_shape=(cols, rows),
        phase_order=mode,
        vendor=hdr.get("vendor", ""),
        model=hdr.get("model", ""),
        field_strength_t=hdr.get("field_strength"),
        rr_interval_ms=hdr.get("rr_interval"),
        patient_height_m=_plausible(height, 0.3, 2.8),
        patient_weight_kg=_plausible(hdr.get("weight"), 1.0, 400.0),
        source_headers=headers,
    )
    props = ImageProperties(
        affine=affine,
        spacing=(col_sp, row_sp, dz),
        shape=tuple(array.shape),
        path=where,
        extra={
            "source": "dicom",
            "series_uid": meta.series_uid,
            "series_description": meta.series_description,
            "phase_order": mode,
            "trigger_times_ms": trig,
            "slice_positions_mm": meta.slice_positions_mm,
            "warnings": list(warn),
        },
    )
    for w in warn:
        log.warning("%s: %s", where, w)
    return array, props, meta


def _load_scanned(
    root: Path, where: str, show: Callable[[str], str]
) -> tuple[np.ndarray, ImageProperties, CineMeta]:
    series = find_series(root)
    keys = set().union(*(s._patient_keys for s in series)) if series else set()
    if len(keys) > 1:
        raise CardiosegError(
            where,
            f"images from {len(keys)} different patients (PatientID differs); analyse one "
            "patient at a time",
        )
    n_images = sum(len(_dedupe_sop(s._frames)[0]) for s in series)
    if n_images == 0:
        extra = f" ({series.n_non_dicom} non-DICOM file(s) skipped)" if series.n_non_dicom else ""
        raise CardiosegError(where, f"no DICOM images found{extra}")
    if n_images == 1:
        raise CardiosegError(where, "a single image is not a cine")
    chosen = select_short_axis_cine(series, where)
    return _assemble(chosen, where, show)


def _has_dicm(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            return fh.read(132)[128:] == b"DICM"
    except OSError:
        return False


def load_cine(
    folder_or_zip: str | Path, max_zip_bytes: int = 2_000_000_000
) -> tuple[np.ndarray, ImageProperties, CineMeta]:
    """Load the short-axis cine of a DICOM study as a 4D ``float32`` array ``(X, Y, Z, T)``.

    See the module docstring for the exact axis and affine convention: ``array[i, j, k, t]``
    with ``i`` the DICOM column, ``j`` the DICOM row, ``k`` the slice sorted along the normal and
    ``t`` the phase; the affine is NIfTI RAS+. Slice spacing is the median distance between the
    sorted slice positions (not SliceThickness). RescaleSlope/Intercept are applied.

    Args:
        folder_or_zip: Study folder (nested folders and several series allowed), a zip of one,
            or a single (multi-frame) DICOM file.
        max_zip_bytes: Refuse zips whose members uncompress to more than this.

    Returns:
        ``(array, properties, meta)``.

    Raises:
        CardiosegError: Anything wrong with the input, as a one-line message that never
            contains patient identifiers.

    Example:
        >>> img, props, meta = load_cine("study.zip")  # doctest: +SKIP
        >>> img.shape, meta.n_phases
        ((256, 208, 12, 25), 25)
    """
    path = Path(folder_or_zip)
    if not path.exists():
        raise CardiosegError(path, "not found")
    where = str(path)
    try:
        if path.is_file() and (
            path.suffix.lower() == ".zip" or (not _has_dicm(path) and zipfile.is_zipfile(path))
        ):
            with _extracted_zip(path, max_zip_bytes) as (root, show):
                loaded = _load_scanned(root, where, show)
        else:
            if path.is_file():
                with _quiet_pydicom():
                    is_dicom = _dcmread(path, stop_before_pixels=True) is not None
                if not is_dicom:
                    raise CardiosegError(path, "not a DICOM file, DICOM folder or zip archive")
            loaded = _load_scanned(path, where, lambda p: p)
    except CardiosegError:
        raise
    except MemoryError:
        raise CardiosegError(path, "not enough memory to load the cine") from None
    except Exception as exc:  # last resort: never let pydicom/numpy internals escape
        log.debug("unexpected %s while loading %s", type(exc).__name__, path)
        raise CardiosegError(path, f"cannot load DICOM cine ({type(exc).__name__})") from None
    array = loaded[0]  # finite: _read_pixels refuses NaN/Inf
    if float(array.max()) == float(array.min()):
        raise CardiosegError(path, "image is constant (every pixel has the same value)")
    return loaded


def cine_to_nifti(
    folder_or_zip: str | Path, out_path: str | Path, max_zip_bytes: int = 2_000_000_000
) -> CineMeta:
    """Convert the short-axis cine of a DICOM study to a 4D NIfTI written atomically.

    The time axis gets the median trigger-time step (ms) as its zoom when known.

    Args:
        folder_or_zip: As for :func:`load_cine`.
        out_path: ``.nii`` or ``.nii.gz`` output.
        max_zip_bytes: As for :func:`load_cine`.

    Returns:
        The :class:`CineMeta` of the loaded cine.
    """
    import nibabel as nib

    array, props, meta = load_cine(folder_or_zip, max_zip_bytes=max_zip_bytes)
    img = nib.Nifti1Image(array, props.affine)
    img.set_qform(props.affine, code=1)
    img.set_sform(props.affine, code=1)
    times = [t for t in meta.trigger_times_ms if t is not None]
    dt = float(np.median(np.diff(times))) if len(times) == len(meta.trigger_times_ms) > 1 else 0.0
    if dt > 0:
        img.header.set_zooms((*props.spacing, dt))
        img.header.set_xyzt_units("mm", "msec")
    else:
        img.header.set_xyzt_units("mm")
    with atomic_write(out_path) as tmp:
        nib.save(img, str(tmp))
    return meta
