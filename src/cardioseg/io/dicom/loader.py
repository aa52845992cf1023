"""Loading the chosen cine series as a 4D array with its geometry (:func:`load_cine`)."""

from __future__ import annotations

import contextlib
import logging
import re
import zipfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cardioseg.errors import CardiosegError, one_line
from cardioseg.io.dicom.archive import extracted_zip
from cardioseg.io.dicom.headers import (
    GAP_TOL,
    HEART_RATE_BPM_RANGE,
    HEIGHT_CM_RANGE,
    MIN_PHASES,
    PHASE_COUNT_TOL,
    WEIGHT_KG_RANGE,
    CineMeta,
    SeriesInfo,
    SeriesList,
    _dcmread,
    _Frame,
    _has_dicm,
    _int,
    _str,
    quiet_pydicom,
)
from cardioseg.io.dicom.series import (
    _dedupe_sop,
    _GeometryProblem,
    _Stack,
    _stack,
    _use_trigger_time,
    find_series,
    select_short_axis_cine,
)
from cardioseg.io.nifti import ImageProperties, atomic_write

log = logging.getLogger("cardioseg.io.dicom")


# --------------------------------------------------------------------------------------------
# loading


def _natural(text: str) -> tuple:
    """Sort key that orders the numbers in a name by value ("IM2" before "IM10")."""
    return tuple((0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", text))


def _phase_key(mode: str) -> Callable[[_Frame], tuple]:
    if mode == "TriggerTime":
        return lambda f: (f.trigger_time, f.instance_number or 0, f.path, f.frame or 0)
    if mode == "InstanceNumber":
        # the temporal position first where the headers give one (a constant one leaves the
        # order to the instance numbers)
        return lambda f: (f.temporal_index or 0, f.instance_number or 0, f.frame or 0, f.path)
    if mode == "AcquisitionTime":
        return lambda f: (f.acquisition_time, _natural(f.path), f.frame or 0)
    return lambda f: (_natural(f.path), f.frame or 0)


#: What orders the phases where the trigger times do not, in turn: the first whose values are
#: known and distinct within every slice (a GE series may give all phases of a slice one
#: AcquisitionTime, an enhanced object all its frames one InstanceNumber). ContentTime is not
#: used: it is when an image was reconstructed, not acquired (on the Sunnybrook GE series it
#: swaps neighbouring phases).
_PHASE_ORDERS: dict[str, Callable[[_Frame], Any]] = {
    "InstanceNumber": lambda f: (
        None
        if f.instance_number is None and f.temporal_index is None
        else (f.temporal_index or 0, f.instance_number or 0)
    ),
    "AcquisitionTime": lambda f: f.acquisition_time,
}


def _phase_mode(slices: list[list[_Frame]]) -> str:
    """What orders each slice's frames into phases (see :data:`_PHASE_ORDERS`); ``"file
    order"`` (file names in natural order, then the frame index) when nothing does."""
    if _use_trigger_time([f for s in slices for f in s]):
        return "TriggerTime"
    for mode, value in _PHASE_ORDERS.items():
        per_slice = [[value(f) for f in s] for s in slices]
        if all(None not in v and len(set(v)) == len(v) for v in per_slice):
            return mode
    return "file order"


def _order_phases(st: _Stack, where: str, warn: list[str]) -> tuple[list[list[_Frame]], str]:
    """Sort each slice's frames into phases, drop duplicates, equalise the phase count."""
    mode = _phase_mode(st.slices)
    key = _phase_key(mode)
    if mode == "file order":
        warn.append(
            "no header orders the phases (no distinct trigger times, instance numbers or "
            "acquisition times within a slice): ordered by file name and frame; check the "
            "volume curve"
        )
    elif mode == "AcquisitionTime":
        warn.append(
            "phases ordered by AcquisitionTime (no trigger times or instance numbers): check "
            "the volume curve"
        )
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
            ordered, how = _drop_unmatched_phases(ordered, mode, nmin)
        n_kept = len(ordered[0])
        warn.append(f"slices have {nmin} to {nmax} phases: truncated to {n_kept} ({how})")
    return ordered, mode


def _phase_numbers(ordered: list[list[_Frame]]) -> list[list[int]] | None:
    """Each frame's phase number from its headers, without trigger times; ``None`` if unsure.

    TemporalPositionIdentifier/Index where every frame has a distinct one in its slice; else
    instance numbers on a regular grid: one step between the phases of the complete slices
    (1 when numbered slice by slice, the slice count when phase by phase) and a first number
    linear in the slice index. Used to keep phases aligned when a slice lacks an image.
    """
    if all(f.temporal_index is not None for s in ordered for f in s):
        numbers = [[int(f.temporal_index) for f in s] for s in ordered]  # type: ignore[arg-type]
        if all(len(set(n)) == len(n) for n in numbers):
            return numbers
    if any(f.instance_number is None for s in ordered for f in s):
        return None
    insts = [sorted(int(f.instance_number) for f in s) for s in ordered]  # type: ignore[arg-type]
    n_max = max(len(s) for s in insts)
    full = [k for k, s in enumerate(insts) if len(s) == n_max]
    steps = {b - a for k in full for a, b in zip(insts[k], insts[k][1:], strict=False)}
    if len(full) < 2 or len(steps) != 1 or min(steps) <= 0:
        return None
    step = steps.pop()
    ks = np.asarray(full, dtype=float)
    firsts = np.asarray([insts[k][0] for k in full], dtype=float)
    slope, offset = np.polyfit(ks, firsts, 1)
    if np.max(np.abs(slope * ks + offset - firsts)) > 0.01:
        return None
    numbers = []
    for k, s in enumerate(ordered):
        t = [(int(f.instance_number) - (slope * k + offset)) / step for f in s]  # type: ignore[arg-type]
        if any(abs(v - round(v)) > 0.01 or not 0 <= round(v) < n_max for v in t):
            return None
        numbers.append([int(round(v)) for v in t])
    return numbers


def _drop_unmatched_phases(
    ordered: list[list[_Frame]], mode: str, n_min: int
) -> tuple[list[list[_Frame]], str]:
    """Keep the phases every slice has (by phase number), or truncate every slice to the
    shortest one's length when the headers do not number the phases."""
    numbers = _phase_numbers(ordered) if mode == "InstanceNumber" else None
    if numbers is not None:
        common = set.intersection(*(set(n) for n in numbers))
        if len(common) >= MIN_PHASES:
            kept = [
                [f for f, t in sorted(zip(s, n, strict=True), key=lambda p: p[1]) if t in common]
                for s, n in zip(ordered, numbers, strict=True)
            ]
            return kept, "matched by phase number"
    return [s[:n_min] for s in ordered], "last phases dropped"


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
        raise CardiosegError(
            show(missing[0].path), missing[0].spacing_problem or "missing PixelSpacing"
        )
    ps = np.array([f.pixel_spacing for f in frames], dtype=float)
    if np.any(ps <= 0):
        raise CardiosegError(where, "zero or negative PixelSpacing")
    if np.max(np.abs(ps - ps[0])) > 1e-3 * max(1.0, float(ps[0].max())):
        raise CardiosegError(where, "different PixelSpacing across slices")
    colour = [f for f in frames if f.samples_per_pixel != 1]
    if colour:
        raise CardiosegError(
            show(colour[0].path), "colour images are not supported (SamplesPerPixel != 1)"
        )


def _check_rescale(frames: list[_Frame], show: Callable[[str], str], warn: list[str]) -> None:
    """Warn about images whose rescale is unusable, or missing while others are rescaled.

    An unusable RescaleSlope/Intercept (:func:`~cardioseg.io.dicom.headers._rescale`) is
    taken as the identity when the other images are not rescaled either; otherwise that image
    cannot be scaled like them and the series is refused.

    Raises:
        CardiosegError: An unusable rescale among rescaled images (names the first file).
    """
    bad = [f for f in frames if f.rescale_problem]
    good = {(f.slope, f.intercept) for f in frames if not f.rescale_problem}
    if bad and good - {(1.0, 0.0)}:
        raise CardiosegError(
            show(bad[0].path),
            f"{bad[0].rescale_problem}, while other images of the series are rescaled: "
            "cannot give it their intensity scale",
        )
    if bad:
        warn.append(
            f"unusable RescaleSlope/Intercept ({bad[0].rescale_problem}) in {len(bad)} "
            f"image(s): taken as slope 1, intercept 0 (first: {show(bad[0].path)})"
        )
    absent = [f for f in frames if not f.rescale_given]
    rescaled = any((f.slope, f.intercept) != (1.0, 0.0) for f in frames if f.rescale_given)
    if absent and rescaled:
        warn.append(
            f"{len(absent)} of {len(frames)} images have no RescaleSlope/Intercept: taken as "
            f"slope 1, intercept 0; check the intensities (first: {show(absent[0].path)})"
        )


def _stored_range(ds: Any, pix: np.ndarray) -> tuple[int, int]:
    """Smallest and largest stored value that BitsStored and PixelRepresentation allow."""
    bits = _int(ds.get("BitsStored")) or _int(ds.get("BitsAllocated")) or 8 * pix.itemsize
    bits = min(max(bits, 1), 8 * pix.itemsize)
    if _int(ds.get("PixelRepresentation")) == 1:
        return -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return 0, (1 << bits) - 1


def _as_monochrome2(pix: np.ndarray, ds: Any, where: str) -> np.ndarray:
    """Stored values with the brightest shown brightest.

    MONOCHROME1 images show their minimum white: their values are inverted within the stored
    range (before the rescale), so that bright blood stays bright whatever the scanner chose.

    Args:
        pix: The pixel data, ``(frames, rows, columns)``.
        ds: The data set it comes from.
        where: The file, for the error message.

    Returns:
        ``pix``, inverted for MONOCHROME1 (as ``int64``).

    Raises:
        CardiosegError: A photometric interpretation other than MONOCHROME1/2 (e.g. a palette).
    """
    photometric = _str(ds.get("PhotometricInterpretation", "")).upper() or "MONOCHROME2"
    if photometric == "MONOCHROME2":
        return pix
    if photometric != "MONOCHROME1":
        raise CardiosegError(
            where, f"PhotometricInterpretation {one_line(photometric)[:32]} is not supported"
        )
    lo, hi = _stored_range(ds, pix)
    return (lo + hi) - pix.astype(np.int64)


def _read_pixels(
    frames: list[list[_Frame]], shape: tuple[int, int], show: Callable[[str], str]
) -> tuple[np.ndarray, list[list[Any]]]:
    """Read, rescale and transpose the pixel data into ``(X, Y, Z, T)``; also keep headers."""
    from cardioseg.io.nifti import MAX_IMAGE_BYTES

    cols, rows = shape
    n_z, n_t = len(frames), len(frames[0])
    n_bytes = 4 * cols * rows * n_z * n_t
    if n_bytes > MAX_IMAGE_BYTES:  # before allocating: Rows/Columns may be corrupt
        raise CardiosegError(
            show(frames[0][0].path),
            f"{rows} x {cols} pixels x {n_z} slices x {n_t} phases would take "
            f"{n_bytes / 1e9:.0f} GB (limit {MAX_IMAGE_BYTES / 1e9:.0f} GB): are Rows/Columns "
            "right?",
        )
    out = np.empty((cols, rows, n_z, n_t), dtype=np.float32)
    headers: list[list[Any]] = [[None] * n_t for _ in range(n_z)]
    wanted: dict[str, list[tuple[int, int, _Frame]]] = {}
    for k in range(n_z):
        for t in range(n_t):
            f = frames[k][t]
            wanted.setdefault(f.path, []).append((k, t, f))
    with quiet_pydicom():
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
            pix = _as_monochrome2(pix.reshape(n_frames, rows, cols), ds, show(path))
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


def _heart_rate(heart_rate: float | None, rr_interval_ms: float | None) -> float | None:
    """Beats per minute from HeartRate, else from the R-R interval; ``None`` if implausible."""
    hr = _plausible(heart_rate, *HEART_RATE_BPM_RANGE)
    if hr is None and _plausible(rr_interval_ms, 240.0, 3000.0) is not None:
        hr = 60000.0 / float(rr_interval_ms)  # type: ignore[arg-type]
    return hr


def _assemble(
    chosen: SeriesInfo, where: str, show: Callable[[str], str], notes: Sequence[str] = ()
) -> tuple[np.ndarray, ImageProperties, CineMeta]:
    warn: list[str] = list(notes)
    for note in ("split_note", "merge_note"):
        if chosen._header.get(note):
            warn.append(chosen._header[note])
    warn.extend(chosen._header.get("selection_notes", []))
    frames, n_dup = _dedupe_sop(chosen._frames)
    if n_dup:
        warn.append(f"{n_dup} duplicate file(s) (same SOPInstanceUID) ignored")
    if len(frames) == 1:
        raise CardiosegError(where, "a single image is not a cine")
    _check_consistency(frames, where, show)
    _check_rescale(frames, show, warn)
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
    grid = np.arange(n_z)  # the place of each slice on the regular grid of the affine
    missing_slices: list[int] = []
    irregular = ""
    if np.any(np.abs(gaps - dz) > GAP_TOL * dz):
        found = _regular_grid(positions, gaps, dz)
        if found is not None:
            grid, dz = found
            missing_slices = sorted(set(range(int(grid[-1]) + 1)) - set(grid.tolist()))
            warn.append(
                f"no images at slice position{'s' if len(missing_slices) > 1 else ''} "
                f"{', '.join(map(str, missing_slices))} of a regular {dz:.2f} mm stack (a gap "
                "in the acquisition): left empty in the image and the masks; the volumes "
                "interpolate it from the neighbouring slices"
            )
        else:
            irregular = (
                "irregular slice gaps ("
                + ", ".join(f"{g:.2f}" for g in gaps)
                + f" mm); the affine uses the median {dz:.2f} mm"
            )
            warn.append(irregular)
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
    n_grid = int(grid[-1]) + 1
    if missing_slices:  # empty slices where the stack has a gap: the affine stays right
        full = np.zeros((*array.shape[:2], n_grid, array.shape[3]), array.dtype)
        full[:, :, grid] = array
        array = full

    def on_grid(per_slice: list[Any], empty: Any) -> list[Any]:
        out = [empty] * n_grid
        for k, item in zip(grid.tolist(), per_slice, strict=True):
            out[k] = item
        return out

    def per_phase(values: Callable[[_Frame], Any]) -> list[Any]:
        return on_grid([[values(f) for f in s] for s in ordered], [None] * n_t)

    trig: list[float | None] = []
    for t in range(n_t):
        vals = [ordered[k][t].trigger_time for k in range(n_z)]
        vals_ok = [v for v in vals if v is not None]
        trig.append(float(np.median(vals_ok)) if vals_ok and mode == "TriggerTime" else None)

    hdr = chosen._header
    height = hdr.get("height")
    if height is not None and HEIGHT_CM_RANGE[0] <= height <= HEIGHT_CM_RANGE[1]:  # cm, not m
        warn.append("PatientSize looks like centimetres; converted to metres")
        height = height / 100.0
    meta = CineMeta(
        series_uid=chosen.uid,
        series_description=chosen.description,
        n_slices=n_grid,
        n_phases=n_t,
        trigger_times_ms=trig,
        slice_positions_mm=[float(positions[0] + k * dz) for k in range(n_grid)]
        if missing_slices
        else [float(p) for p in positions],
        warnings=warn,
        source_files=per_phase(lambda f: show(f.path)),
        sop_instance_uids=per_phase(lambda f: f.sop_uid),
        frame_numbers=per_phase(lambda f: None if f.frame is None else f.frame + 1),
        instance_numbers=per_phase(lambda f: f.instance_number),
        series_uids=on_grid([s[0].series_uid for s in ordered], None),
        missing_slices=missing_slices,
        irregular_gaps=irregular,
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
        heart_rate_bpm=_heart_rate(hdr.get("heart_rate"), hdr.get("rr_interval")),
        patient_height_m=_plausible(height, *(h / 100.0 for h in HEIGHT_CM_RANGE)),
        patient_weight_kg=_plausible(hdr.get("weight"), *WEIGHT_KG_RANGE),
        patient_sex=hdr.get("sex"),
        patient_age_years=hdr.get("age_years"),
        source_headers=on_grid(headers, [None] * n_t),
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
    known = [t for t in trig if t is not None]
    if len(known) == len(trig) > 1 and np.all(np.diff(known) > 0):
        props.extra["frame_time"] = float(np.median(np.diff(known)))
        props.extra["time_unit"] = "msec"
    for w in warn:  # the report names the files; a log (e.g. a server's) does not
        log.warning("%s: %s", where, _FIRST_FILE.sub("", w))
    return array, props, meta


def _check_one_patient(series: Sequence[SeriesInfo], where: str) -> None:
    """Refuse a study whose images come from several patients."""
    keys = set().union(*(s._patient_keys for s in series)) if series else set()
    if len(keys) > 1:
        raise CardiosegError(
            where,
            f"images from {len(keys)} different patients (PatientID differs); analyse one "
            "patient at a time",
        )


#: The part of a warning that names a file of the study (``" (first: IM0001)"``): exports are
#: often named after the patient, so logs leave it out.
_FIRST_FILE = re.compile(r" \(first: .*\)$")


def _regular_grid(
    positions: np.ndarray, gaps: np.ndarray, median: float
) -> tuple[np.ndarray, float] | None:
    """The places (:func:`_grid_places`) and step of a stack that is regular but for missing
    slices, or ``None``. The step is the median gap, or the smallest gap where most gaps
    equal it (8, 16 mm: the median 12 fits neither).
    """
    smallest = float(gaps.min())
    steps = [median]
    if np.mean(np.abs(gaps - smallest) <= GAP_TOL * smallest) >= 0.5:
        steps.append(smallest)
    for step in steps:
        places = _grid_places(positions, step)
        if places is not None:
            return places, step
    return None


def _grid_places(positions: np.ndarray, step: float) -> np.ndarray | None:
    """Each slice's place on a regular grid of ``step`` when the stack is regular but for
    missing slices (every position a whole number of steps from the first, within
    ``GAP_TOL``); ``None`` for other irregular stacks or gaps of more than 3 slices.

    Example:
        >>> _grid_places(np.array([0.0, 8.0, 16.1, 32.0]), 8.0).tolist()
        [0, 1, 2, 4]
        >>> _grid_places(np.array([0.0, 8.0, 20.0]), 8.0) is None
        True
    """
    if not step > 0:
        return None
    offsets = (positions - positions[0]) / step
    places = np.rint(offsets).astype(int)
    if np.any(np.abs(offsets - places) > GAP_TOL) or np.any(np.diff(places) < 1):
        return None
    if np.any(np.diff(places) > 4):
        return None
    return places


def _unreadable_text(series: SeriesList, show: Callable[[str], str], verb: str) -> str:
    """``"2 DICOM file(s) could not be read{verb} (first: a.dcm: why)"``."""
    why = f": {series.unreadable_reason}" if series.unreadable_reason else ""
    return (
        f"{len(series.unreadable)} DICOM file(s) could not be read{verb} "
        f"(first: {show(series.unreadable[0])}{why})"
    )


def _load_scanned(
    root: Path, where: str, show: Callable[[str], str]
) -> tuple[np.ndarray, ImageProperties, CineMeta]:
    series = find_series(root)
    _check_one_patient(series, where)
    n_images = sum(len(_dedupe_sop(s._frames)[0]) for s in series)
    if n_images == 0:
        if series.unreadable:
            raise CardiosegError(
                where, f"no readable DICOM images: {_unreadable_text(series, show, '')}"
            )
        extra = f" ({series.n_non_dicom} non-DICOM file(s) skipped)" if series.n_non_dicom else ""
        raise CardiosegError(where, f"no DICOM images found{extra}")
    if n_images == 1:
        raise CardiosegError(where, "a single image is not a cine")
    chosen = select_short_axis_cine(series, where)
    notes = []
    if series.unreadable:
        notes.append(_unreadable_text(series, show, " and were left out"))
    if series.no_geometry:
        notes.append(
            f"{len(series.no_geometry)} image file(s) without ImagePositionPatient/"
            f"ImageOrientationPatient were left out (first: {show(series.no_geometry[0])})"
        )
    return _assemble(chosen, where, show, notes)


@contextlib.contextmanager
def _study_root(path: Path, max_zip_bytes: int) -> Iterator[tuple[Path, Callable[[str], str]]]:
    """The folder to scan (a zip extracted to a temporary folder) and how to name its files."""
    if path.is_file() and (
        path.suffix.lower() == ".zip" or (not _has_dicm(path) and zipfile.is_zipfile(path))
    ):
        with extracted_zip(path, max_zip_bytes) as (root, show):
            yield root, show
        return
    if path.is_file():
        with quiet_pydicom():
            is_dicom = _dcmread(path, stop_before_pixels=True) is not None
        if not is_dicom:
            raise CardiosegError(path, "not a DICOM file, DICOM folder or zip archive")
    yield path, lambda p: p


def survey_study(
    folder_or_zip: str | Path, max_zip_bytes: int = 2_000_000_000
) -> tuple[list[SeriesInfo], SeriesInfo | None, str]:
    """What :func:`load_cine` finds in a study, without reading any pixels.

    Returns:
        ``(series, chosen, problem)``: every series (a series that mixes orientations as its
        groups of parallel images), then the stacks merged from several series; the one
        ``load_cine`` would analyse (one of ``series``; ``None`` if none qualifies); and why
        none does (``""`` otherwise). ``chosen._header["selection_notes"]`` holds the warnings
        of the choice.

    Raises:
        CardiosegError: A missing path, or a file that is neither DICOM nor a zip.
    """
    from cardioseg.io.dicom.series import _merge_stack_parts

    path = Path(folder_or_zip)
    if not path.exists():
        raise CardiosegError(path, "not found")
    with _study_root(path, max_zip_bytes) as (root, _):
        series = find_series(root)
        merged = _merge_stack_parts(list(series))
        try:
            _check_one_patient(series, str(path))  # as load_cine: never a chosen series
            chosen, problem = select_short_axis_cine(series, str(path), merged), ""
        except CardiosegError as err:
            chosen, problem = None, err.problem
    return [*series, *merged], chosen, problem


def load_cine(
    folder_or_zip: str | Path, max_zip_bytes: int = 2_000_000_000
) -> tuple[np.ndarray, ImageProperties, CineMeta]:
    """Load the short-axis cine of a DICOM study as a 4D ``float32`` array ``(X, Y, Z, T)``.

    See the module docstring for the exact axis and affine convention: ``array[i, j, k, t]``
    with ``i`` the DICOM column, ``j`` the DICOM row, ``k`` the slice sorted along the normal and
    ``t`` the phase; the affine is NIfTI RAS+. Slice spacing is the median distance between the
    sorted slice positions (not SliceThickness). RescaleSlope/Intercept are applied, after
    MONOCHROME1 values are inverted within their stored range (bright stays bright).

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
        >>> img.shape, meta.n_phases  # doctest: +SKIP
        ((256, 208, 12, 25), 25)
    """
    path = Path(folder_or_zip)
    if not path.exists():
        raise CardiosegError(path, "not found")
    where = str(path)
    try:
        with _study_root(path, max_zip_bytes) as (root, show):
            loaded = _load_scanned(root, where, show)
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
