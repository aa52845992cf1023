"""End-to-end analysis of one study: input → masks → ED/ES → indices → QC → report files.

The CLI (``cardioseg analyze``), the batch runner and the web app all call :func:`analyze_study`.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cardioseg.clinical.slices import SliceExclusion, apply_exclusions, slice_volumes
from cardioseg.errors import CardiosegError
from cardioseg.io.nifti import (
    ImageProperties,
    atomic_folder,
    is_nifti,
    read_image,
    write_image,
    write_label,
)
from cardioseg.options import check_seg_phases

log = logging.getLogger("cardioseg.analyze")

#: Fewest short-axis slices from which ventricular volumes are measured.
MIN_SLICES = 3
#: Below this height (cm), or this age (years, from a DICOM PatientAge), the report notes that
#: its (adult) normal ranges do not apply.
ADULT_MIN_HEIGHT_CM = 140.0
ADULT_AGE_YEARS = 18.0


@dataclass
class Study:
    """A loaded study: a 4D cine (X, Y, Z, T) or an ED/ES pair stored as 2 frames."""

    image: np.ndarray
    properties: ImageProperties
    source: str
    kind: str  # "dicom", "nifti4d", "pair"
    dicom_meta: Any = None
    given_ed_es: tuple[int, int] | None = None
    meta: dict = field(default_factory=dict)


def load_study(
    study: str | Path | None = None, ed: str | Path | None = None, es: str | Path | None = None
) -> Study:
    """Load a DICOM folder/zip, a 4D cine NIfTI, an ED/ES pair of 3D NIfTI volumes, or a
    folder of NIfTI files holding either (see :func:`~cardioseg.clinical.nifti_folder.
    find_nifti_study`). The patient's height and weight, from the DICOM headers or an ACDC
    ``Info.cfg``, go into ``Study.meta`` (``height_cm``, ``weight_kg``)."""
    if study is not None and (ed is not None or es is not None):
        raise CardiosegError(study, "give either a STUDY or --ed/--es, not both")
    if ed is not None or es is not None:
        if ed is None or es is None:
            raise CardiosegError(ed or es, "give both --ed and --es")
        return _load_pair(ed, es)
    if study is None:
        raise CardiosegError(None, "give a STUDY (DICOM folder, zip, 4D NIfTI) or --ed/--es")
    path = Path(study)
    if not path.exists():
        raise CardiosegError(path, "not found")
    if path.is_file() and is_nifti(path):
        return _load_cine_nifti(path)
    if path.is_file() and path.suffix.lower() == ".zip" and _zip_holds_nifti(path):
        st = _load_zipped_nifti_study(path)
        if st is not None:
            return st
    nifti_problem = None
    if path.is_dir():
        from cardioseg.clinical.nifti_folder import find_nifti_study

        try:
            found = find_nifti_study(path)
        except CardiosegError as err:  # NIfTI files that form no study: maybe DICOM is there
            found, nifti_problem = None, err
        if found is not None:
            return _load_found(found, path)
    from cardioseg.io.dicom import load_cine

    try:
        image, props, meta = load_cine(path)
    except CardiosegError as err:
        if nifti_problem is not None and "no DICOM images" in str(err):
            raise nifti_problem from None
        raise
    body: dict[str, Any] = {}  # the patient's height, weight and sex, where the images say
    if getattr(meta, "patient_height_m", None):
        body["height_cm"] = float(meta.patient_height_m) * 100
    if getattr(meta, "patient_weight_kg", None):
        body["weight_kg"] = float(meta.patient_weight_kg)
    if getattr(meta, "patient_sex", None):
        body["sex"] = meta.patient_sex
    if getattr(meta, "patient_age_years", None) is not None:
        body["age_years"] = float(meta.patient_age_years)
    if getattr(meta, "heart_rate_bpm", None):
        body["heart_rate_bpm"] = float(meta.heart_rate_bpm)
    return Study(image, props, str(path), "dicom", dicom_meta=meta, meta=body)


def check_output_folder(outdir: str | Path, inputs: Sequence[str | Path | None] = ()) -> None:
    """Refuse an output folder whose replacement would destroy what it should not.

    A result folder is replaced as a whole (:func:`~cardioseg.io.nifti.atomic_folder`), so it
    must be new, empty, or a previous result (it holds ``report.json``), and neither the
    current folder nor the input, a folder holding the input, or a folder inside the input.

    Raises:
        CardiosegError: Naming the folder and the problem.

    Example:
        >>> import tempfile
        >>> study = Path(tempfile.mkdtemp()) / "study"
        >>> try:
        ...     check_output_folder(study / "result", [study])
        ... except CardiosegError as err:
        ...     print(err.problem)
        the output folder lies inside the input; name a folder outside it (e.g. -o ../result)
    """
    outdir = Path(outdir)
    if outdir.exists() and not outdir.is_dir():
        raise CardiosegError(outdir, "output exists and is not a folder")
    out = outdir.resolve()
    if out.parent == out:
        raise CardiosegError(outdir, "the output folder cannot be the root folder")
    cwd = Path.cwd().resolve()
    if out == cwd or out in cwd.parents:
        raise CardiosegError(
            outdir,
            "the output folder would replace the current folder (or one holding it); name a "
            "new folder",
        )
    for src in inputs:
        if src is None:
            continue
        source = Path(src).resolve()
        if out == source or out in source.parents:
            raise CardiosegError(
                outdir, "the output folder holds the input and would replace it; name a new folder"
            )
        if source in out.parents:
            raise CardiosegError(
                outdir,
                "the output folder lies inside the input; name a folder outside it "
                "(e.g. -o ../result)",
            )
    if out.is_dir() and not (out / "report.json").is_file() and any(out.iterdir()):
        raise CardiosegError(
            outdir,
            "output folder is not empty and holds no previous cardioseg result (it would be "
            "replaced); name a new or empty folder",
        )
    for parent in out.parents:  # said as the other commands say it (not 'File exists')
        if parent.exists():
            if not parent.is_dir():
                raise CardiosegError(outdir, f"cannot make a folder here: {parent} is a file")
            break
    try:  # before the slow part: the folder the result is written into can take it
        out.parent.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryDirectory(prefix=f".{out.name}.", dir=out.parent).cleanup()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise CardiosegError(outdir, f"cannot write the output folder there ({reason})") from None


def check_body_size(height_cm: float | None = None, weight_kg: float | None = None) -> None:
    """Refuse a height or weight outside the plausible adult and child range (wrong units).

    Raises:
        CardiosegError: For example a height given in metres.

    Example:
        >>> try:
        ...     check_body_size(1.7, 70)
        ... except CardiosegError as err:
        ...     print(err.problem)
        height must lie between 30 and 272 cm, got 1.7 (a height in metres?)
    """
    from cardioseg.io.dicom.headers import HEIGHT_CM_RANGE, WEIGHT_KG_RANGE

    for name, value, (lo, hi), unit in (
        ("height", height_cm, HEIGHT_CM_RANGE, "cm"),
        ("weight", weight_kg, WEIGHT_KG_RANGE, "kg"),
    ):
        if value is None:
            continue
        if not (np.isfinite(value) and lo <= float(value) <= hi):
            hint = " (a height in metres?)" if name == "height" and 0 < value < 3 else ""
            raise CardiosegError(
                None, f"{name} must lie between {lo:g} and {hi:g} {unit}, got {value!r}{hint}"
            )


def _zip_holds_nifti(path: Path) -> bool:
    import zipfile

    try:
        with zipfile.ZipFile(path) as zf:
            return any(is_nifti(n) for n in zf.namelist())
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        return False  # the DICOM reader reports the corrupt archive


def _load_zipped_nifti_study(path: Path) -> Study | None:
    """A zip of a NIfTI study folder (at its top level or in its single folder), read into
    memory; ``None`` when its NIfTI files form no study (the DICOM reader then tries)."""
    from cardioseg.clinical.nifti_folder import find_nifti_study
    from cardioseg.io.dicom.archive import extracted_zip

    with extracted_zip(path) as (root, show):
        entries = [p for p in root.iterdir() if not p.name.startswith((".", "__MACOSX"))]
        folder = entries[0] if len(entries) == 1 and entries[0].is_dir() else root
        try:
            found = find_nifti_study(folder)
        except CardiosegError:
            return None
        if found is None:
            return None
        try:
            st = _load_found(found, path)
        except CardiosegError as err:  # name the member as "study.zip/folder/file.nii.gz"
            raise CardiosegError(show(err.path) if err.path else path, err.problem) from None
    st.properties = ImageProperties(  # not the temporary file's name
        st.properties.affine,
        st.properties.spacing,
        st.properties.shape,
        str(path),
        st.properties.extra,
    )
    return st


def _load_found(found: Any, source: Path) -> Study:
    """Read the files :func:`~cardioseg.clinical.nifti_folder.find_nifti_study` found."""
    if found.kind == "pair":
        st = _load_pair(found.ed, found.es)
    else:
        st = _load_cine_nifti(found.cine)
        st.given_ed_es = found.frames
    st.source = str(source)
    st.meta.update(found.info)
    return st


def _load_pair(ed: str | Path, es: str | Path) -> Study:
    if Path(ed).resolve() == Path(es).resolve():
        raise CardiosegError(es, "ED and ES are the same file")
    ed_img, ed_props = read_image(ed, allow_4d=False)
    es_img, es_props = read_image(es, allow_4d=False)
    if ed_img.shape != es_img.shape:
        raise CardiosegError(es, f"ES shape {es_img.shape} does not match ED {ed_img.shape}")
    if not np.allclose(ed_props.affine, es_props.affine, atol=1e-3):
        raise CardiosegError(es, "ES affine does not match the ED affine")
    image = np.stack([ed_img, es_img], axis=-1)
    props = ImageProperties(ed_props.affine, ed_props.spacing, image.shape, str(ed))
    return Study(image, props, str(ed), "pair", given_ed_es=(0, 1))


def _load_cine_nifti(path: Path) -> Study:
    image, props = read_image(path)
    if image.ndim != 4 or image.shape[-1] < 2:
        raise CardiosegError(
            path,
            "expected a 4D cine NIfTI (x, y, z, t) with >= 2 frames; "
            "use --ed/--es for a pair of 3D volumes",
        )
    return Study(image, props, str(path), "nifti4d")


def _sharing_window(segmenter: Any) -> AbstractContextManager:
    """The segmenter's :meth:`~cardioseg.inference.Segmenter.sharing_window` (the frames of
    one study share a heart window), or nothing for segmenters without it."""
    share = getattr(segmenter, "sharing_window", None)
    return share() if callable(share) else nullcontext()


def _slice_weights(study: Study) -> list[float] | None:
    """Disc thickness per slice for a DICOM stack whose slice gaps are uneven (not whole steps
    of a grid), from the slices' own positions; ``None`` for a regular stack."""
    dm = study.dicom_meta
    if dm is None or not getattr(dm, "irregular_gaps", ""):
        return None
    from cardioseg.clinical.indices import slice_weights

    return slice_weights(dm.slice_positions_mm, dm.slice_spacing_mm)


def _missing_slices(study: Study) -> list[int]:
    """Slices where a DICOM stack has no images (left empty by the loader)."""
    return list(getattr(study.dicom_meta, "missing_slices", None) or [])


def _present_slices(study: Study) -> list[int] | slice:
    """The slices that hold images (all of them, as a ``slice``, for a regular stack: the
    frames are then passed on as views, exactly as before gaps were handled)."""
    missing = set(_missing_slices(study))
    if not missing:
        return slice(None)
    return [k for k in range(study.image.shape[2]) if k not in missing]


def _predict_volumes(
    segmenter: Any, volumes: Iterable[np.ndarray], spacing: Any, affine: Any, tta: bool = False
) -> list[tuple[np.ndarray, np.ndarray | None, np.ndarray | None]]:
    """``(labels, probabilities, disagreement)`` of each volume; with ``tta`` the last two are
    asked for. A :class:`~cardioseg.inference.Segmenter` with its own ``predict_volume``
    pipelines them (``predict_frames``: one volume mapped back while the next is segmented);
    any other object (a wrapper of ``predict_volume``, a subclass that overrides it) is
    called volume by volume."""
    from cardioseg.inference import Segmenter

    flags = {"return_probabilities": tta, "return_disagreement": tta}
    if isinstance(segmenter, Segmenter) and type(segmenter).predict_volume is (
        Segmenter.predict_volume
    ):
        return segmenter.predict_frames(volumes, spacing, affine, **flags)
    if tta:
        return [
            tuple(segmenter.predict_volume(v, spacing, affine=affine, **flags)) for v in volumes
        ]
    return [(segmenter.predict_volume(v, spacing, affine=affine)[0], None, None) for v in volumes]


def _segment_frames(segmenter: Any, study: Study) -> np.ndarray:
    """Labels of every frame. Where the stack has a gap, the slices on either side are
    segmented as neighbours (as the stack was acquired) and the gap stays empty."""
    present = _present_slices(study)
    out = np.zeros(study.image.shape, np.uint8)
    spacing, affine = study.properties.spacing, study.properties.affine
    frames = (study.image[:, :, present, t] for t in range(study.image.shape[-1]))
    for t, (lab, _, _) in enumerate(_predict_volumes(segmenter, frames, spacing, affine)):
        out[:, :, present, t] = lab
    return out


def _segment_with_tta(
    segmenter: Any, study: Study, frames: dict[str, int], labels: np.ndarray
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray | None]]:
    """Segment the named frames again with test-time augmentation, into ``labels``; return
    their probabilities and the disagreement of the averaged predictions (QC uncertainty),
    zero at a gap in the stack."""
    probs, spread = {}, {}
    present, missing = _present_slices(study), _missing_slices(study)
    spacing, affine = study.properties.spacing, study.properties.affine
    volumes = (study.image[:, :, present, t] for t in frames.values())
    tta_before = segmenter.tta
    segmenter.tta = True
    try:
        results = _predict_volumes(segmenter, volumes, spacing, affine, tta=True)
    finally:
        segmenter.tta = tta_before
    for (name, t), (lab, prob, dis) in zip(frames.items(), results, strict=True):
        labels[..., t] = 0
        labels[:, :, present, t] = lab
        if missing:  # back onto the stack's grid (empty at the gap)
            full = np.zeros((prob.shape[0], *labels.shape[:3]), prob.dtype)
            full[:, :, :, present] = prob
            prob = full
            if dis is not None:
                grid = np.zeros(labels.shape[:3], dis.dtype)
                grid[:, :, present] = dis
                dis = grid
        probs[name], spread[name] = prob, dis
    return probs, spread


def _frames_from(st: Study, ed_frame: int | None, es_frame: int | None) -> str:
    """Where the reported ED and ES frames come from, in words."""
    if st.kind == "pair":
        return "the two given volumes"
    if st.given_ed_es is not None and ed_frame is None and es_frame is None:
        return "Info.cfg"
    auto = "the LV volume curve"
    if ed_frame is not None and es_frame is not None:
        return "given (--ed-frame, --es-frame)"
    if ed_frame is not None:
        return f"ED given (--ed-frame); ES {'from Info.cfg' if st.given_ed_es else 'from ' + auto}"
    if es_frame is not None:
        return f"ES given (--es-frame); ED {'from Info.cfg' if st.given_ed_es else 'from ' + auto}"
    return auto


def analyze_study(
    outdir: str | Path,
    study: str | Path | None = None,
    ed: str | Path | None = None,
    es: str | Path | None = None,
    segmenter: Any = None,
    height_cm: float | None = None,
    weight_kg: float | None = None,
    ed_frame: int | None = None,
    es_frame: int | None = None,
    write_pdf: bool = True,
    exclude: Sequence[str | SliceExclusion] = (),
    sex: str | None = None,
    heart_rate_bpm: float | None = None,
    loaded: Study | None = None,
    label: str | None = None,
    seg_phases: str = "ed-es",
) -> dict[str, Any]:
    """Analyse one study and write ``report.json``, masks, overlays and reports into ``outdir``.

    Outputs: ``report.json``, ``report.html`` (and ``report.pdf``), the masks ``mask_ED.nii.gz``
    and ``mask_ES.nii.gz`` (and ``masks_cine.nii.gz`` for a cine) in the input's geometry,
    ``disagreement_ED.nii.gz`` / ``disagreement_ES.nii.gz`` (float maps, 0..1: where the
    test-time predictions disagree, the QC's uncertainty; view them over the image), and
    ``segmentation_ED.dcm`` and ``segmentation_ES.dcm`` (DICOM-SEG, one series of two
    instances referencing the source images; ``segmentation_ED_s00.dcm``, ... per slice where
    the cine came as one series per slice) for DICOM input. With ``seg_phases="all"`` the
    DICOM-SEG series holds every phase of the cine (the other phases' instances are
    ``segmentation_t00.dcm``, ...; a phase without any segmented pixel has none).

    Outputs are first written into a temporary sibling folder that is renamed onto ``outdir`` at
    the end, so an interrupted analysis never leaves a half-written result folder.

    ``exclude`` lists slices the reader takes out of the ED or ES phase (``"ES:8"``, ``"ES:8:LV"``,
    see :mod:`cardioseg.clinical.slices`): typically a basal slice that shows the atrium. They
    are removed from the ED/ES masks before the indices and QC, and listed in the report next to
    the slice-by-slice volumes (``report.json["slices"]``).

    ``sex`` (``"M"``/``"F"``; for DICOM input PatientSex when not given) selects that sex's
    normal ranges in the report; without it the ranges are sex-pooled. ``heart_rate_bpm``
    (for DICOM input HeartRate or the R-R interval when not given) adds the heart rate and the
    LV cardiac output and index.

    ``label`` is a text the report shows at its top to identify the study (e.g. a pseudonym or
    the hospital's study number); nothing of the DICOM patient module is copied into reports.

    ``loaded`` is the study as :func:`load_study` already read it from ``study`` (or ``ed`` /
    ``es``), for a caller that needs the images too (the web app's viewer): not read again.

    ``segmenter`` defaults to the shipped :class:`~cardioseg.inference.Segmenter`; another
    object works if its ``predict_volume`` takes the Segmenter's arguments (the ED/ES pass asks
    for ``return_probabilities`` and ``return_disagreement``).

    Returns:
        The content of ``report.json``: the indices (``lv_edv_ml``, ``lv_ef_pct``,
        ``lv_mass_g``, ... in ``units``), ``ed_frame``/``es_frame``, ``volume_curve``,
        ``normal_flags`` and the QC verdict ``qc`` (``qc["status"]``: ``ok``, ``review`` or
        ``fail``; ``qc["reasons"]``).

    Example:
        >>> report = analyze_study("out/", "cine_4d.nii.gz", write_pdf=False)  # doctest: +SKIP
        >>> report["lv_ef_pct"], report["qc"]["status"]  # doctest: +SKIP
        (58.2, 'ok')
    """
    from cardioseg.clinical.indices import (
        compute_indices,
        detect_ed_es,
        normalize_sex,
        volume_curve,
    )
    from cardioseg.clinical.qc import assess_quality, calibration_for
    from cardioseg.clinical.report import write_report
    from cardioseg.inference import Segmenter
    from cardioseg.io.dicom.headers import HEART_RATE_BPM_RANGE
    from cardioseg.io.signature import input_signature
    from cardioseg.models.checkpoint import model_description
    from cardioseg.preprocessing import check_inplane_geometry, slice_axis

    t0 = time.perf_counter()
    check_output_folder(outdir, [study, ed, es])
    outdir = Path(outdir).resolve()  # a link is followed: its target is the result folder
    check_body_size(height_cm, weight_kg)
    check_seg_phases(seg_phases)
    try:
        exclusions = [
            e if isinstance(e, SliceExclusion) else SliceExclusion.parse(e) for e in exclude
        ]
    except ValueError as err:
        raise CardiosegError(None, str(err)) from None
    if sex is not None and normalize_sex(sex) is None:
        raise CardiosegError(None, f"sex must be M or F, got {sex!r}")
    lo, hi = HEART_RATE_BPM_RANGE
    if heart_rate_bpm is not None and not lo <= float(heart_rate_bpm) <= hi:
        raise CardiosegError(
            None, f"heart rate must lie between {lo:g} and {hi:g} /min, got {heart_rate_bpm:g}"
        )
    # what the result was made from, read before the files: a batch resumed later tells a
    # different study saved under this one's name (meta.input_signature)
    given_paths = [p for p in (study, ed, es) if p is not None]
    signature = input_signature(given_paths) if given_paths else None
    st = loaded if loaded is not None else load_study(study, ed, es)
    seg = segmenter or Segmenter()
    spacing = st.properties.spacing
    check_inplane_geometry(st.image.shape, spacing, st.source)
    axis = slice_axis(spacing, st.image.shape[:3])
    n_slices = st.image.shape[axis]
    if n_slices < MIN_SLICES:
        raise CardiosegError(
            st.source,
            f"a stack of {n_slices} short-axis slice{'s' if n_slices > 1 else ''} cannot "
            f"measure ventricular volumes (at least {MIN_SLICES} needed)",
        )
    n_frames = st.image.shape[-1]
    for name, v in (("ED", ed_frame), ("ES", es_frame)):
        if v is not None and not 0 <= v < n_frames:
            raise CardiosegError(st.source, f"{name} frame {v} out of range 0..{n_frames - 1}")
    if st.kind != "pair" and st.given_ed_es is not None:  # from an ACDC-style Info.cfg
        for name, v, forced in zip(("ED", "ES"), st.given_ed_es, (ed_frame, es_frame), strict=True):
            if forced is None and not 0 <= v < n_frames:
                raise CardiosegError(
                    st.source,
                    f"Info.cfg names {name} frame {v + 1} (counted from 1), but the cine has "
                    f"{n_frames} frames",
                )
    if st.kind == "pair" and (ed_frame is not None or es_frame is not None):
        raise CardiosegError(
            st.source, "--ed-frame/--es-frame choose frames of a cine, not of an ED/ES pair"
        )
    given = st.given_ed_es or (None, None)
    chosen_ed = ed_frame if ed_frame is not None else given[0]
    chosen_es = es_frame if es_frame is not None else given[1]
    if chosen_ed is not None and chosen_ed == chosen_es:
        raise CardiosegError(st.source, f"the ED and ES frames are the same ({chosen_ed})")
    try:  # before the slow part
        for ex in exclusions:
            ex.check(st.image.shape[axis])
            if ex.slice in _missing_slices(st):
                raise ValueError(f"exclusion {ex}: slice {ex.slice} has no images to take out")
    except ValueError as err:
        raise CardiosegError(st.source, str(err)) from None
    counts_before = dict(getattr(seg, "roi_counts", None) or {})
    # the frames and the ED/ES pass with TTA share one heart window
    with _sharing_window(seg):
        labels = _segment_frames(seg, st)
        lv_curve = volume_curve(labels, spacing, 1)
        rv_curve = volume_curve(labels, spacing, 3)
        n = labels.shape[-1]
        if st.given_ed_es is not None:
            ed_i, es_i = st.given_ed_es
        else:
            ed_i, es_i = detect_ed_es(lv_curve)
        if ed_frame is not None:
            ed_i = ed_frame
        if es_frame is not None:
            es_i = es_frame
        for name, v in (("ED", ed_i), ("ES", es_i)):
            if not 0 <= v < n:
                raise CardiosegError(st.source, f"{name} frame {v} out of range 0..{n - 1}")
        frames_from = _frames_from(st, ed_frame, es_frame)
        if ed_i == es_i and (ed_frame is not None or es_frame is not None):
            raise CardiosegError(
                st.source, f"the chosen frame is also the detected other one ({ed_i})"
            )
        # the reported ED and ES frames are segmented again with test-time augmentation: their
        # labels come from the averaged prediction; its entropy and the disagreement of the
        # averaged predictions are the QC uncertainty
        probs, spread = _segment_with_tta(seg, st, {"ED": ed_i, "ES": es_i}, labels)
    dm = st.dicom_meta
    notes = []  # for the reader, with the loader's (report "About the input")
    body_from = {  # where the height and weight come from, shown in the report
        "height_cm": "given" if height_cm is not None else None,
        "weight_kg": "given" if weight_kg is not None else None,
    }
    for key, value in (("height_cm", height_cm), ("weight_kg", weight_kg)):
        found = st.meta.get(key)
        if value is None and found is not None:  # from the DICOM headers or an Info.cfg
            try:
                check_body_size(**{key: float(found)})
            except CardiosegError as err:  # wrong units in the file: not used
                notes.append(f"the study's {err.problem}: not used")
            else:
                height_cm = float(found) if key == "height_cm" else height_cm
                weight_kg = float(found) if key == "weight_kg" else weight_kg
                body_from[key] = "from the study"
    if set(body_from.values()) == {"given", "from the study"}:
        notes.append(
            "height and weight come from two sources (one given, the other from the study): "
            "check that both are this patient's"
        )
    sex_from = "given" if sex is not None else None
    if sex is None:
        sex = normalize_sex(st.meta.get("sex"))  # DICOM "O" or junk: sex-pooled ranges
        sex_from = "from the study" if sex is not None else None
    if heart_rate_bpm is None:
        heart_rate_bpm = st.meta.get("heart_rate_bpm")
    age = st.meta.get("age_years")
    # a child: by the DICOM age where the study has one, else by the height
    child = (
        age < ADULT_AGE_YEARS
        if age is not None
        else height_cm is not None and height_cm < ADULT_MIN_HEIGHT_CM
    )
    if child:  # the age itself is not written: notes are logged too
        why = (
            f"PatientAge under {ADULT_AGE_YEARS:.0f} years"
            if age is not None
            else f"height {height_cm:.0f} cm"
        )
        notes.append(
            f"{why}: the adult normal ranges do not apply to a child; no index is flagged and "
            "no group is suggested"
        )
    if (height_cm is None) != (weight_kg is None):
        have, lack = ("height", "weight") if weight_kg is None else ("weight", "height")
        notes.append(
            f"{have} given without {lack}: the volumes and mass are not indexed to body "
            "surface area"
        )
    missing = _missing_slices(st)
    weights = _slice_weights(st)
    produced = {"ED": labels[..., ed_i].copy(), "ES": labels[..., es_i].copy()}
    if exclusions:
        if ed_i == es_i:
            raise CardiosegError(st.source, "slice exclusions need distinct ED and ES frames")
        edited = apply_exclusions(
            {"ED": labels[..., ed_i], "ES": labels[..., es_i]}, exclusions, axis
        )
        labels[..., ed_i], labels[..., es_i] = edited["ED"], edited["ES"]
    # the curve stays the per-frame pass that ED and ES were chosen on; the reported ED/ES
    # volumes (test-time augmentation, exclusions) are the indices, marked on the plot
    indices = compute_indices(
        labels[..., ed_i],
        labels[..., es_i],
        spacing,
        height_cm,
        weight_kg,
        heart_rate_bpm,
        missing_slices=missing,
        slice_weights=weights,
    )
    # the thickest point of the ED myocardium (>= 15 mm: the adult hypertrophy criterion)
    from cardioseg.clinical.features import wall_thickness

    wall = wall_thickness(labels[..., ed_i], spacing)
    if np.isfinite(wall["max_mm"]):
        indices["lv_max_wall_thickness_ed_mm"] = wall["max_mm"]
    model_files = getattr(seg, "checkpoint_paths", None)
    calibration = calibration_for(model_files)
    # the QC judges the segmentation as produced (a slice taken out opens no gap); what it
    # finds on slices taken out whole is not held against it; volumes are those reported
    excluded: dict[str, list[int]] = {}
    for ex in exclusions:  # whole slices only: a slice's other structures still count
        if ex.structures == "all":
            excluded.setdefault(ex.phase, []).append(ex.slice)
    qc = assess_quality(
        produced["ED"],
        produced["ES"],
        spacing,
        probabilities={"ED": probs["ED"], "ES": probs["ES"]},
        disagreement=spread,
        calibration=calibration,
        excluded=excluded,
        counted={"ED": labels[..., ed_i], "ES": labels[..., es_i]},
        irregular_stack=getattr(st.dicom_meta, "irregular_gaps", ""),
        missing_slices=missing,
        slice_weights=weights,
    )
    # the research-use ACDC group suggestion (not a diagnosis), where it can mean something
    from cardioseg.clinical.diagnosis import DISCLAIMER as DIAGNOSIS_DISCLAIMER
    from cardioseg.clinical.diagnosis import suggest
    from cardioseg.clinical.features import shape_features

    if child:  # the groups are adults'; so are the features' training values
        suggestion = {
            "shown": False,
            "reason": "the group model was trained on adults' studies",
            "disclaimer": DIAGNOSIS_DISCLAIMER,
        }
    else:
        features = shape_features(
            labels[..., ed_i],
            labels[..., es_i],
            spacing,
            height_cm,
            weight_kg,
            missing_slices=missing,
            ed_thickness=wall,
            slice_weights=weights,
        )
        suggestion = suggest(features, qc.status)
    # wall thickness and thickening per AHA segment (the layout says which side is anterior)
    from cardioseg.clinical.segments import aha_segments, why_no_segments
    from cardioseg.preprocessing.geometry import is_mirrored_view

    mirrored = is_mirrored_view(st.properties.affine, axis)
    segments = aha_segments(
        labels[..., ed_i],
        labels[..., es_i] if es_i != ed_i else None,
        spacing,
        mirrored=mirrored,
    )
    no_segments = "" if segments else why_no_segments(labels[..., ed_i], spacing, mirrored)
    with atomic_folder(outdir) as tmp:
        props3 = ImageProperties(st.properties.affine, spacing, labels.shape[:3], st.source)
        write_label(tmp / "mask_ED.nii.gz", labels[..., ed_i], props3)
        write_label(tmp / "mask_ES.nii.gz", labels[..., es_i], props3)
        for name, spread_map in spread.items():  # where the test-time predictions disagree
            if spread_map is not None:
                write_image(tmp / f"disagreement_{name}.nii.gz", spread_map, props3)
        if st.kind != "pair":
            props4 = ImageProperties(
                st.properties.affine, spacing, labels.shape, st.source, st.properties.extra
            )
            write_label(tmp / "masks_cine.nii.gz", labels, props4)
        seg_frames = sorted({ed_i, es_i}) if seg_phases == "ed-es" else list(range(n))
        if st.kind == "dicom" and dm is not None and not labels[..., [ed_i, es_i]].any():
            # nothing segmented (not a heart, or images unlike any the model knows): the report
            # and its QC verdict say so; a SEG without a segment would not be valid DICOM
            log.warning("%s: nothing segmented at ED or ES: no DICOM-SEG written", st.source)
        elif st.kind == "dicom" and dm is not None:
            from cardioseg.clinical.dicom_seg import write_dicom_seg

            try:
                write_dicom_seg(
                    labels,
                    dm.source_headers,
                    tmp / "segmentation.dcm",
                    phases=seg_frames,
                    phase_names={ed_i: "ED", es_i: "ES"} if ed_i != es_i else None,
                    frame_numbers=getattr(dm, "frame_numbers", None),
                )
            except CardiosegError as err:  # an export: the analysis itself stands
                notes.append(f"no DICOM-SEG written: {err.problem}")
            except Exception as exc:  # highdicom refusing a source header it needs
                notes.append(f"no DICOM-SEG written ({type(exc).__name__} in highdicom)")
        meta: dict[str, Any] = {"patient_label": label} if label else {}
        meta |= {
            "source_kind": st.kind,
            "frames_from": frames_from,
            "n_frames": n,
            "n_slices": int(labels.shape[axis]),
            "lv_max_wall_thickness_slice": int(wall["max_slice"]),
            "spacing_mm": list(spacing),
            "slice_axis": axis,
            "seconds": round(time.perf_counter() - t0, 3),
            "model": getattr(seg, "description", None) or model_description(model_files),
            "qc_calibration": calibration.model
            if calibration.calibrated
            else "none for this model (the default model's thresholds were used)",
        }
        if signature is not None:
            meta["input_signature"] = signature
        if st.kind == "dicom":  # what the DICOM-SEG series was asked to hold
            meta["dicom_seg_phases"] = seg_phases
        if getattr(seg, "backend", None) and getattr(seg, "precision", None):
            # what ran the network (ONNX Runtime or PyTorch) and in which precision: results
            # differ between them only by rounding, but a record should say
            meta["network_runtime"] = f"{seg.backend}, {seg.precision}"
        size = [
            f"{value:g} {unit} ({body_from[key]})"
            for key, value, unit in (("height_cm", height_cm, "cm"), ("weight_kg", weight_kg, "kg"))
            if value is not None
        ]
        if size:
            meta["body_size"] = ", ".join(size)
        if sex_from:
            meta["ranges_sex"] = f"{sex} ({sex_from})"
        counts = getattr(seg, "roi_counts", None)
        if isinstance(counts, dict) and getattr(seg, "roi", False):
            # volumes segmented in the heart window / on the whole image (no heart on the
            # middle slice, or the heart reached the window's edge): a pipeline can spot studies
            # whose anatomy the window did not fit
            meta["heart_window"] = {
                k: int(v) - int(counts_before.get(k, 0)) for k, v in counts.items()
            }
        if dm is not None:
            meta.update(
                {
                    "vendor": getattr(dm, "vendor", ""),
                    "series_description": getattr(dm, "series_description", ""),
                    "warnings": list(getattr(dm, "warnings", [])),
                }
            )
        if notes:
            meta["warnings"] = [*meta.get("warnings", []), *notes]
            for note in notes:
                log.warning("%s: %s", st.source, note)
        write_report(
            tmp,
            indices,
            qc,
            curve={"lv_ml": list(map(float, lv_curve)), "rv_ml": list(map(float, rv_curve))},
            ed_frame=ed_i,
            es_frame=es_i,
            images={
                "ED": (st.image[..., ed_i], labels[..., ed_i]),
                "ES": (st.image[..., es_i], labels[..., es_i]),
            },
            spacing=spacing,
            meta=meta,
            write_pdf=write_pdf,
            slices=slice_volumes(
                labels[..., ed_i],
                labels[..., es_i],
                spacing,
                axis,
                include=[e.slice for e in exclusions],
                weights=weights,
            ),
            exclusions=[str(e) for e in exclusions],
            disagreement=spread,
            sex=sex,
            suggestion=suggestion,
            segments=segments,
            flag_ranges=not child,
            segments_not_measured=no_segments,
        )
    import json

    return json.loads((outdir / "report.json").read_text(encoding="utf-8"))
