"""Export of LV/MYO/RV labels as DICOM Segmentation (SEG) instances with highdicom.

The labels live on the grid of the DICOM loader: ``labels[i, j, k, t]`` with ``i`` the column
and ``j`` the row of source image ``files[k][t]`` (slice ``k``, cardiac phase ``t``). The 2D mask
of source image (k, t) is therefore ``labels[:, :, k, t].T`` (rows x columns).

highdicom builds one SEG instance per set of source images that share a series and have distinct
plane positions; it cannot (yet) put several cardiac phases at the same position into one
instance (highdicom issue #369), nor reference several source series (issue #302). A cine study
is therefore written as one SEG instance per phase (and per source series, for vendors that store
every slice location as its own series). All instances share one SEG series.

As DICOM requires, the SEG instances copy the patient and study modules of the source images
(so they carry the patient's name and ID); keep that in mind before sharing them.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cardioseg.errors import CardiosegError
from cardioseg.io.dicom.headers import quiet_pydicom
from cardioseg.io.nifti import atomic_write

log = logging.getLogger("cardioseg.dicom_seg")
# highdicom's INFO messages quote the source images' UIDs: logs hold no identifiers
logging.getLogger("highdicom").setLevel(logging.WARNING)

#: (segment number = canonical label, label, SNOMED CT property type keyword, RGB colour).
#: The ventricles are coded as DICOM's cardiac segmentation value set (CID 7152) lists them,
#: "Left ventricle" / "Right ventricle"; the segment labels say that they are the blood pools.
SEGMENTS: tuple[tuple[int, str, str, tuple[int, int, int]], ...] = (
    (1, "LV blood pool", "LeftVentricle", (228, 87, 46)),  # SCT 87878005 Left ventricle
    (2, "LV myocardium", "LeftVentricleMyocardium", (41, 191, 18)),  # SCT 49848007
    (3, "RV blood pool", "RightVentricle", (46, 134, 222)),  # SCT 53085002 Right ventricle
)


def _require_highdicom() -> Any:
    try:
        import highdicom
    except ImportError:  # pragma: no cover - optional dependency
        raise CardiosegError(
            None, "DICOM SEG export needs highdicom: pip install highdicom"
        ) from None
    return highdicom


def segment_descriptions(algorithm_version: str | None = None) -> list[Any]:
    """highdicom ``SegmentDescription`` items for LV blood pool, LV myocardium and RV blood pool.

    Category: SCT 91723000 "Anatomical Structure"; types: SCT 87878005 "Left ventricle",
    SCT 49848007 "Left ventricle myocardium", SCT 53085002 "Right ventricle".
    """
    hd = _require_highdicom()
    from pydicom.sr.codedict import codes

    if algorithm_version is None:
        from cardioseg import __version__ as algorithm_version
    algorithm = hd.AlgorithmIdentificationSequence(
        name="cardioseg",
        family=codes.cid7162.ArtificialIntelligence,
        version=str(algorithm_version),
    )
    out = []
    for number, label, keyword, rgb in SEGMENTS:
        kwargs: dict[str, Any] = {}
        with contextlib.suppress(Exception):  # colour is cosmetic; older highdicom lacks it
            kwargs["display_color"] = hd.color.CIELabColor.from_rgb(*rgb)
        out.append(
            hd.seg.SegmentDescription(
                segment_number=number,
                segment_label=label,
                segmented_property_category=codes.SCT.AnatomicalStructure,
                segmented_property_type=getattr(codes.SCT, keyword),
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
                algorithm_identification=algorithm,
                tracking_id=f"cardioseg-{keyword}",
                tracking_uid=hd.UID(),
                **kwargs,
            )
        )
    return out


_DATE_KEYWORDS = ("StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate", "PatientBirthDate")


#: Type-2 patient/study attributes that highdicom copies from the sources; anonymised or
#: minimal exports often omit them, so they are added empty (as DICOM allows for type 2).
_TYPE2_KEYWORDS = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
)


def _sanitize_source(ds: Any) -> Any:
    """Blank invalid dates (anonymised data has e.g. '20120000') and PatientSex values other
    than M/F/O, which highdicom rejects, and add missing type-2 patient/study attributes as
    empty values (on a copy)."""
    import datetime

    fixed = None
    missing = [kw for kw in _TYPE2_KEYWORDS if kw not in ds]
    if missing:
        fixed = copy.deepcopy(ds)
        for kw in missing:
            setattr(fixed, kw, "")
    if str(ds.get("PatientSex", "") or "") not in ("", "M", "F", "O"):  # highdicom refuses it
        fixed = fixed if fixed is not None else copy.deepcopy(ds)
        fixed.PatientSex = ""
    for kw in _DATE_KEYWORDS:
        value = str(ds.get(kw, "") or "")
        if not value:
            continue
        try:
            datetime.datetime.strptime(value[:8], "%Y%m%d")
        except ValueError:
            if fixed is None:
                fixed = copy.deepcopy(ds)
            setattr(fixed, kw, "")
    return ds if fixed is None else fixed


def _as_dataset(item: Any) -> Any:
    import pydicom

    if isinstance(item, pydicom.Dataset):
        return _sanitize_source(item)
    try:
        return _sanitize_source(pydicom.dcmread(str(item), stop_before_pixels=True))
    except Exception as exc:
        raise CardiosegError(
            item, f"cannot read DICOM source image ({type(exc).__name__})"
        ) from None


def _nested(sources: Sequence[Any], n_slices: int, n_phases: int) -> list[list[Any]]:
    if len(sources) != n_slices:
        raise CardiosegError(
            None, f"{len(sources)} source slices given, the labels have {n_slices} slices"
        )
    nested = []
    for k, row in enumerate(sources):
        items = list(row) if isinstance(row, list | tuple) else [row]
        if len(items) != n_phases:
            raise CardiosegError(
                None,
                f"slice {k}: {len(items)} source images given, the labels have {n_phases} phases",
            )
        nested.append(items)
    return nested


def _shared_geometry(
    items: list[tuple[int, Any]], frame_of_reference: str
) -> list[tuple[int, Any]]:
    """The group's source images with one frame of reference and (for classic images) the
    first image's orientation, on copies where they differ."""
    orientation = items[0][1].get("ImageOrientationPatient")
    out = []
    for k, ds in items:
        same_for = str(ds.get("FrameOfReferenceUID", "")) == frame_of_reference
        same_ori = orientation is None or ds.get("ImageOrientationPatient") == orientation
        if not (same_for and same_ori):
            ds = copy.deepcopy(ds)
            ds.FrameOfReferenceUID = frame_of_reference
            if orientation is not None:
                ds.ImageOrientationPatient = orientation
        out.append((k, ds))
    return out


def _seg_frames(
    arr: np.ndarray,
    t: int,
    items: list[tuple[int, Any]],
    frame_numbers: Sequence[Sequence[int | None]] | None,
    out_path: str | Path,
) -> tuple[list[Any], np.ndarray, list[Any] | None, set[int]]:
    """What one SEG instance is built from: its source images, one mask per slice, and for
    one multi-frame source object the slices' plane positions and source frame numbers.

    A multi-frame (enhanced) cine holds every phase of each position, so its frames are given
    as plane positions (highdicom would otherwise take all of them) and each SEG frame is
    then made to reference the one source frame of phase ``t`` (:func:`_keep_frames`).
    """
    hd = _require_highdicom()
    masks = np.stack([arr[:, :, k, t].T for k, _ in items]).astype(np.uint8)
    src = items[0][1]
    n_frames = int(src.get("NumberOfFrames", 1) or 1)
    if n_frames <= 1:
        return [ds for _, ds in items], masks, None, set()
    if frame_numbers is None:
        raise CardiosegError(
            out_path, "multi-frame source images need their frame numbers for a DICOM SEG"
        )
    positions, frames = [], set()
    for k, _ in items:
        f = frame_numbers[k][t]
        if f is None or not 1 <= int(f) <= n_frames:
            raise CardiosegError(out_path, f"no source frame for slice {k}, phase {t}")
        item = src.PerFrameFunctionalGroupsSequence[int(f) - 1]
        ipp = item.PlanePositionSequence[0].ImagePositionPatient
        positions.append(
            hd.PlanePositionSequence(
                hd.CoordinateSystemNames.PATIENT, image_position=[float(v) for v in ipp]
            )
        )
        frames.add(int(f))
    return [src], masks, positions, frames


def _keep_frames(seg: Any, frames: set[int]) -> None:
    """Keep only the references to source frames ``frames`` in each SEG frame's derivation
    (highdicom refers a SEG frame to every source frame at its position, i.e. every phase)."""
    for item in seg.PerFrameFunctionalGroupsSequence:
        for derivation in item.get("DerivationImageSequence", []):
            refs = derivation.SourceImageSequence
            kept = [r for r in refs if int(r.get("ReferencedFrameNumber", 0)) in frames]
            if kept and len(kept) < len(refs):
                derivation.SourceImageSequence = kept


def _output_names(
    out_path: Path,
    keys: list[tuple[int, int]],
    n_phases: int,
    phase_names: Mapping[int, str] | None = None,
) -> list[Path]:
    if len(keys) == 1 and not (phase_names and keys[0][0] in phase_names):
        return [out_path]
    per_phase: dict[int, int] = {}
    for t, _ in keys:
        per_phase[t] = per_phase.get(t, 0) + 1
    names = []
    for t, s in keys:
        stem = out_path.name[: -len(out_path.suffix)] if out_path.suffix else out_path.name
        if phase_names and t in phase_names:
            part = f"{stem}_{phase_names[t]}"
        else:
            part = stem + (f"_t{t:02d}" if n_phases > 1 else "")
        part += f"_s{s:02d}" if per_phase[t] > 1 else ""
        names.append(out_path.with_name(part + (out_path.suffix or ".dcm")))
    return names


@quiet_pydicom()  # lazily read source elements may be invalid (anonymisers' UIDs)
def write_dicom_seg(
    labels: np.ndarray,
    sources: Sequence[Any],
    out_path: str | Path,
    phases: Sequence[int] | None = None,
    series_description: str = "cardioseg LV/MYO/RV segmentation",
    series_number: int = 9901,
    manufacturer: str = "cardioseg",
    software_version: str | None = None,
    phase_names: Mapping[int, str] | None = None,
    frame_numbers: Sequence[Sequence[int | None]] | None = None,
) -> list[Path]:
    """Write the labels as DICOM SEG referencing the source images.

    Args:
        labels: Canonical labels on the DICOM loader grid, (cols, rows, slices, phases), or 3D
            (cols, rows, slices) for a single phase.
        sources: Source images as pydicom datasets or file paths, nested ``sources[k][t]``; for 3D
            labels ``sources[k]`` may be the image itself.
        out_path: Output file. When more than one instance is needed (several phases or source
            series), files ``<stem>_tNN[_sNN].dcm`` are written next to it instead.
        phases: Phases to export (default: all), e.g. ``(ed, es)``.
        series_description: SeriesDescription of the SEG series.
        series_number: SeriesNumber of the SEG series.
        manufacturer: Manufacturer of the SEG instances.
        software_version: Defaults to the cardioseg version.
        phase_names: Names of phases, e.g. ``{8: "ED", 19: "ES"}``: files are then called
            ``<stem>_ED.dcm`` instead of ``<stem>_t08.dcm``, and each instance's content
            description names its phase.
        frame_numbers: For multi-frame (enhanced) sources, the 1-based frame of
            ``sources[k][t]`` that holds slice ``k`` at phase ``t``
            (:attr:`~cardioseg.io.dicom.CineMeta.frame_numbers`); the SEG then references
            those frames of the one source object.

    All instances share one frame of reference (the first source image's, where anonymisers
    gave every image its own) and, per instance, the source images' orientation (scanners
    write it with rounding differences that highdicom does not accept).

    Returns:
        Paths written, in phase order. Phases without any foreground are skipped.

    Raises:
        CardiosegError: Shapes that do not match the source images, unreadable sources, or no
            foreground at all.
    """
    hd = _require_highdicom()
    if software_version is None:
        from cardioseg import __version__ as software_version
    arr = np.asarray(labels)
    if arr.ndim == 3:
        arr = arr[..., None]
    if arr.ndim != 4:
        raise CardiosegError(None, f"expected 3D or 4D labels, got shape {arr.shape}")
    if arr.size and (arr.min() < 0 or arr.max() > len(SEGMENTS)):
        raise CardiosegError(None, f"labels must be in 0..{len(SEGMENTS)}")
    n_cols, n_rows, n_slices, n_phases = arr.shape
    nested = _nested(sources, n_slices, n_phases)
    wanted = range(n_phases) if phases is None else [int(t) for t in phases]
    for t in wanted:
        if not 0 <= t < n_phases:
            raise CardiosegError(None, f"phase {t} out of range 0..{n_phases - 1}")

    # group source images by (phase, source series or multi-frame object): one SEG instance each
    groups: dict[tuple[int, int], list[tuple[int, Any]]] = {}
    series_index: dict[str, int] = {}
    for t in wanted:
        if not arr[..., t].any():
            log.info("phase %d has no foreground: no SEG written", t)
            continue
        for k in range(n_slices):
            if nested[k][t] is None:  # a slice the stack has no image for (left empty)
                if arr[:, :, k, t].any():
                    raise CardiosegError(out_path, f"labels on slice {k}, which has no image")
                continue
            ds = _as_dataset(nested[k][t])
            if (int(ds.Rows), int(ds.Columns)) != (n_rows, n_cols):
                raise CardiosegError(
                    getattr(nested[k][t], "filename", None) or None,
                    f"source image (slice {k}, phase {t}) is {ds.Rows}x{ds.Columns}, labels "
                    f"give {n_rows}x{n_cols} (rows x columns)",
                )
            source = str(ds.SeriesInstanceUID)
            if int(ds.get("NumberOfFrames", 1) or 1) > 1:  # an instance per multi-frame object
                source += "/" + str(ds.SOPInstanceUID)
            s = series_index.setdefault(source, len(series_index))
            groups.setdefault((t, s), []).append((k, ds))
    if not groups:
        raise CardiosegError(out_path, "no foreground labels to export as DICOM SEG")

    keys = list(groups)
    paths = _output_names(Path(out_path), keys, n_phases, phase_names)
    descriptions = segment_descriptions(software_version)
    series_uid = hd.UID()
    # one frame of reference for the whole SEG series (DICOM wants one per series)
    frame_of_reference = str(groups[keys[0]][0][1].get("FrameOfReferenceUID", ""))
    n_fors = len({str(ds.get("FrameOfReferenceUID", "")) for g in groups.values() for _, ds in g})
    if n_fors > 1:
        # some anonymisers give every image its own frame of reference
        log.warning(
            "DICOM-SEG: the source images carry %d different frames of reference "
            "(anonymised?); the SEG uses the first",
            n_fors,
        )
    segs = []
    for number, (t, s) in enumerate(keys, start=1):
        items = _shared_geometry(groups[(t, s)], frame_of_reference)
        sources_t, masks, positions, frames = _seg_frames(arr, t, items, frame_numbers, out_path)
        try:
            with warnings.catch_warnings():
                # highdicom/pydicom warnings may quote patient names: never let them reach logs
                warnings.simplefilter("ignore")
                seg = hd.seg.Segmentation(
                    source_images=sources_t,
                    pixel_array=masks,
                    segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
                    segment_descriptions=descriptions,
                    series_instance_uid=series_uid,
                    series_number=series_number,
                    sop_instance_uid=hd.UID(),
                    instance_number=number,
                    manufacturer=manufacturer,
                    manufacturer_model_name="cardioseg",
                    software_versions=str(software_version),
                    device_serial_number="0",
                    content_label="CARDIOSEG",
                    content_description=(
                        f"LV/MYO/RV, {phase_names[t]} (cardiac phase {t})"
                        if phase_names and t in phase_names
                        else f"LV/MYO/RV, cardiac phase {t}"
                    )[:64],
                    omit_empty_frames=True,
                    plane_positions=positions,
                )
                if frames:
                    _keep_frames(seg, frames)
        except ValueError as exc:
            # highdicom's message may quote a header value of the patient: logged at debug only
            log.debug("DICOM SEG for phase %d: %s", t, exc)
            raise CardiosegError(
                out_path,
                f"cannot build DICOM SEG for phase {t} (highdicom refused it; the details, "
                "which may quote the source headers, are logged at debug level)",
            ) from None
        seg.SeriesDescription = series_description[:64]
        segs.append(seg)

    # write all instances, renaming them into place only when every one succeeded
    with contextlib.ExitStack() as stack:
        for seg, path in zip(segs, paths, strict=True):
            tmp = stack.enter_context(atomic_write(path))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                seg.save_as(tmp, enforce_file_format=True)
    return paths
