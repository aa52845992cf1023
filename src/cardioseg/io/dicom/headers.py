"""DICOM header reading: constants, frame and series records, tolerant tag access."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import stat
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cardioseg.errors import one_line

log = logging.getLogger("cardioseg.io.dicom")


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
#: Plausible heart rates (beats per minute) during a cine acquisition.
HEART_RATE_BPM_RANGE = (20.0, 250.0)
#: Plausible body height (cm) and weight (kg), children included; outside them the value is
#: taken as an error (e.g. a height in metres).
HEIGHT_CM_RANGE = (30.0, 272.0)
WEIGHT_KG_RANGE = (1.0, 400.0)
#: A stack whose slice positions drift in-plane by more than this (mm) is not a straight stack
#: (e.g. an export with a wrong orientation); it loses against straight ones.
INPLANE_SHIFT_TOL_MM = 5.0
#: A slice normal within this angle (degrees) of a patient axis is a transverse, coronal or
#: sagittal plane; short-axis planes are double-oblique, so such a stack loses against oblique
#: ones.
AXIS_ALIGNED_DEG = 10.0

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


class BadHeader(ValueError):
    """A header this reader cannot use; its message names the problem and holds no values of
    the patient (it is shown to the user)."""


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
    spacing_problem: str = ""  # why a PixelSpacing that is there cannot be used
    rescale_given: bool = True  # whether the header holds a RescaleSlope
    rescale_problem: str = ""  # an unusable RescaleSlope/Intercept, taken as the identity


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
        inplane_shift_mm: Largest in-plane distance between the positions of two slices (0 for
            a straight stack).
        plane: ``"oblique"``, or ``"transverse"``/``"coronal"``/``"sagittal"`` when the slice
            normal is within :data:`AXIS_ALIGNED_DEG` of a patient axis; ``""`` if unknown.
        part: ``(k, n)`` when the series holds images in ``n`` orientations and this is the
            ``k``-th group of parallel images (1-based); ``None`` for a one-orientation series.
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
    inplane_shift_mm: float = 0.0
    plane: str = ""
    part: tuple[int, int] | None = None
    _frames: list[_Frame] = field(default_factory=list, repr=False, compare=False)
    _header: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
    _patient_keys: set[str] = field(default_factory=set, repr=False, compare=False)
    _problems: list[str] = field(default_factory=list, repr=False, compare=False)

    def summary(self) -> str:
        """One line for error messages: description, modality, positions x phases, verdict."""
        desc = one_line(self.description) or "(no description)"
        kind = f"{len(self.merged_from)} merged series, " if self.merged_from else ""
        if self.part is not None:
            kind += f"orientation {self.part[0]} of {self.part[1]}, "
        return (
            f"'{desc}' {self.modality or '?'} {kind}{self.n_positions} position(s) x "
            f"{self.n_phases} phase(s): {self.reason}"
        )


class SeriesList(list):
    """``list[SeriesInfo]`` that also remembers the folder and the files that were skipped.

    Attributes:
        folder: The folder (or file) that was scanned.
        n_non_dicom: Files that are not DICOM or could not be read (skipped).
        n_non_image: DICOM files without image data (DICOMDIR, SR, presentation states...).
        unreadable: Those of the skipped files that look like DICOM (a ``DICM`` preamble, or
            parsed but with malformed elements): damaged files the user should hear about.
        unreadable_reason: Why the first unreadable file could not be used, where this reader
            knows (:class:`BadHeader`), else ``""``.
        no_geometry: Images left out of their series because they lack the
            ImagePositionPatient/ImageOrientationPatient that the series' other images have.
    """

    def __init__(
        self,
        items=(),
        folder: str = "",
        n_non_dicom: int = 0,
        n_non_image: int = 0,
        unreadable: list[str] | None = None,
        no_geometry: list[str] | None = None,
        unreadable_reason: str = "",
    ):
        super().__init__(items)
        self.folder = folder
        self.n_non_dicom = n_non_dicom
        self.n_non_image = n_non_image
        self.unreadable = list(unreadable or [])
        self.no_geometry = list(no_geometry or [])
        self.unreadable_reason = unreadable_reason


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
        heart_rate_bpm: HeartRate, or 60000 / NominalInterval, if present and plausible.
        patient_height_m: PatientSize in metres, if present and plausible.
        patient_weight_kg: PatientWeight in kg, if present and plausible.
        patient_sex: PatientSex as recorded (``"M"``, ``"F"``, ``"O"``) or ``None``.
        patient_age_years: PatientAge in years, if present and well formed.
        source_headers: ``[k][t]`` pydicom datasets without pixel data (for DICOM SEG).
        missing_slices: Slices of the regular grid where the stack has no images (a gap of
            whole slice steps in the acquisition). They are empty (zero) in the array, and
            ``None`` in the per-slice lists above.
        irregular_gaps: For a stack whose gaps are irregular otherwise (not whole steps),
            the warning saying so (the affine then uses the median gap); ``""`` if regular.
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
    heart_rate_bpm: float | None = None
    patient_height_m: float | None = field(default=None, repr=False)
    patient_weight_kg: float | None = field(default=None, repr=False)
    patient_sex: str | None = field(default=None, repr=False)
    patient_age_years: float | None = field(default=None, repr=False)
    source_headers: list[list[Any]] = field(default_factory=list, repr=False, compare=False)
    missing_slices: list[int] = field(default_factory=list)
    irregular_gaps: str = ""


# --------------------------------------------------------------------------------------------
# small helpers


@contextlib.contextmanager
def quiet_pydicom() -> Iterator[None]:
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


def _has_dicm(path: Path) -> bool:
    """Whether the file has the DICOM preamble (``DICM`` at byte 128)."""
    try:
        with open(path, "rb") as fh:
            return fh.read(132)[128:] == b"DICM"
    except OSError:
        return False


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
                _set_transfer_syntax(ds)
                return ds
    except Exception:
        return None
    return None


def _set_transfer_syntax(ds: Any) -> None:
    """Give a file without file meta information (no preamble) the transfer syntax it was read
    with, so that its pixel data can be decoded."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    meta = getattr(ds, "file_meta", None)
    if meta is not None and "TransferSyntaxUID" in meta:
        return
    implicit, little = ds.original_encoding
    if implicit is None:
        return
    syntax = (
        ImplicitVRLittleEndian
        if implicit
        else (ExplicitVRLittleEndian if little else ExplicitVRBigEndian)
    )
    if meta is None:
        ds.file_meta = meta = FileMetaDataset()
    meta.TransferSyntaxUID = syntax


#: Transfer syntaxes whose pixel data is stored uncompressed (implicit / explicit VR little
#: endian, explicit VR big endian): every frame takes Rows x Columns x BitsAllocated / 8 bytes.
_NATIVE_SYNTAXES = frozenset({"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2"})


def _frame_count(ds: Any, path: str) -> int:
    """``NumberOfFrames``, checked against what the file can hold.

    A corrupt value (``1e9``) would otherwise make the reader describe a billion frames. Each
    frame takes at least one byte, and ``Rows x Columns x BitsAllocated / 8`` bytes when the
    pixel data is not compressed.

    Raises:
        BadHeader: The file is too small for that many frames.
    """
    n_frames = max(1, _int(ds.get("NumberOfFrames", 1)) or 1)
    if n_frames == 1:
        return 1
    try:
        size = os.path.getsize(path)
    except OSError:
        return n_frames
    ts = _str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", ""))
    per_frame = 1
    if ts in _NATIVE_SYNTAXES:
        bits = _int(ds.get("BitsAllocated")) or 8
        per_frame = max(1, (_int(ds.get("Rows")) or 0) * (_int(ds.get("Columns")) or 0) * bits // 8)
    if n_frames * per_frame > size:
        raise BadHeader(f"NumberOfFrames {n_frames} does not fit in a file of {size} bytes")
    return n_frames


def _frames_from_dataset(ds: Any, path: str) -> list[_Frame]:
    """All 2D frames described by a header (classic single-frame or enhanced multi-frame)."""
    n_frames = _frame_count(ds, path)
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
    if has_plane and len(per_frame) != n_frames:
        raise BadHeader(
            f"{len(per_frame)} per-frame functional group(s) for NumberOfFrames {n_frames}"
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
    top_ps_value = ds.get("PixelSpacing")
    top_slope = ds.get("RescaleSlope")
    top_inter = ds.get("RescaleIntercept")
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
            ps = _group_attr(pf, shared, "PixelMeasuresSequence", "PixelSpacing")
            thick = _float(_group_attr(pf, shared, "PixelMeasuresSequence", "SliceThickness"))
            tt = _float(
                _group_attr(
                    pf, shared, "CardiacSynchronizationSequence", "NominalCardiacTriggerDelayTime"
                )
            )
            slope = _group_attr(pf, shared, "PixelValueTransformationSequence", "RescaleSlope")
            inter = _group_attr(pf, shared, "PixelValueTransformationSequence", "RescaleIntercept")
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
                    **_spacing(ps if ps is not None else top_ps_value),
                    slice_thickness=thick if thick is not None else top_thick,
                    trigger_time=tt,
                    acquisition_time=acq if acq is not None else top_acq,
                    **_rescale(
                        slope if slope is not None else top_slope,
                        inter if inter is not None else top_inter,
                    ),
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
                temporal_index=f + 1
                if n_frames > 1
                else _int(ds.get("TemporalPositionIdentifier")),
                position=top_pos,
                orientation=top_ori,
                **_spacing(top_ps_value),
                slice_thickness=top_thick,
                trigger_time=tt,
                acquisition_time=top_acq,
                **_rescale(top_slope, top_inter),
                **common,
            )
        )
    return frames


def age_years(value: str) -> float | None:
    """A DICOM PatientAge (``"045Y"``, ``"018M"``, ``"003W"``, ``"010D"``) in years, or
    ``None`` when absent or malformed.

    Example:
        >>> age_years("045Y"), age_years("018M"), age_years(""), age_years("45")
        (45.0, 1.5, None, None)
    """
    match = re.fullmatch(r"\s*(\d{1,3})\s*([DWMY])\s*", value or "")
    if not match:
        return None
    per_year = {"D": 365.25, "W": 365.25 / 7, "M": 12.0, "Y": 1.0}[match.group(2)]
    return int(match.group(1)) / per_year


def _spacing(value: Any) -> dict[str, Any]:
    """The :class:`_Frame` fields of a PixelSpacing value (``None`` if absent).

    Example:
        >>> _spacing([" 1.5 ", "1.25"])["pixel_spacing"]
        (1.5, 1.25)
        >>> _spacing("1,5")["spacing_problem"]
        "PixelSpacing '1,5' is not two numbers"
    """
    numbers = _floats(value, 2)
    if numbers is not None:
        return {"pixel_spacing": (float(numbers[0]), float(numbers[1])), "spacing_problem": ""}
    if value is None or _str(value) == "":
        return {"pixel_spacing": None, "spacing_problem": ""}
    text = value if isinstance(value, str) else "\\".join(map(str, _listed(value)))
    return {
        "pixel_spacing": None,
        "spacing_problem": f"PixelSpacing '{one_line(text)[:40]}' is not two numbers",
    }


def _listed(value: Any) -> list[Any]:
    """A multi-valued element as a list (a single value as a one-item list)."""
    try:
        return list(value)
    except TypeError:
        return [value]


def _rescale(slope_value: Any, intercept_value: Any) -> dict[str, Any]:
    """The :class:`_Frame` fields of a RescaleSlope/RescaleIntercept pair (``None`` if absent).

    An absent value is the identity (slope 1, intercept 0). A slope of 0 (it would blank the
    image) or a value that is not a finite number makes the pair the identity too, and is said
    in ``rescale_problem`` (the loader warns, or refuses when other images are rescaled).

    Example:
        >>> r = _rescale("0", "12")
        >>> r["rescale_problem"], r["slope"], r["intercept"]
        ('RescaleSlope 0', 1.0, 0.0)
        >>> _rescale(None, None)["slope"], _rescale("2.5", "-1")["intercept"]
        (1.0, -1.0)
    """
    slope_value = None if _str(slope_value) == "" else slope_value
    intercept_value = None if _str(intercept_value) == "" else intercept_value
    slope, intercept = _float(slope_value), _float(intercept_value)
    problems = []
    if slope_value is not None and slope is None:
        problems.append("RescaleSlope not a number")
    elif slope == 0.0:
        problems.append("RescaleSlope 0")
    if intercept_value is not None and intercept is None:
        problems.append("RescaleIntercept not a number")
    if problems:  # one unusable value makes the pair unusable
        slope, intercept = 1.0, 0.0
    return {
        "slope": slope or 1.0,
        "intercept": intercept or 0.0,
        "rescale_given": slope_value is not None,
        "rescale_problem": ", ".join(problems),
    }


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
        "heart_rate": _float(ds.get("HeartRate")),
        "height": _float(ds.get("PatientSize")),
        "weight": _float(ds.get("PatientWeight")),
        "sex": _str(ds.get("PatientSex", "")).strip().upper() or None,
        "age_years": age_years(_str(ds.get("PatientAge", ""))),
        "image_type": [str(v).upper() for v in (ds.get("ImageType") or [])],
    }


def _iter_files(root: Path) -> Iterator[Path]:
    """Regular files under ``root`` in sorted order; linked folders are followed, each real
    folder once (a link loop ends there)."""
    if root.is_file():
        yield root
        return
    seen: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:  # reached again through a link: do not descend twice
            dirnames.clear()
            continue
        seen.add(real)
        dirnames.sort()
        for name in sorted(filenames):
            p = Path(dirpath) / name
            with contextlib.suppress(OSError):
                if stat.S_ISREG(p.stat().st_mode):
                    yield p
