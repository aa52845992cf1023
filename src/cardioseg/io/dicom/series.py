"""Grouping DICOM images into series, their geometry and class, and the choice of the
short-axis cine."""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from cardioseg.errors import CardiosegError
from cardioseg.io.dicom.headers import (
    AXIS_ALIGNED_DEG,
    CINE_HINTS,
    GAP_TOL,
    INPLANE_SHIFT_TOL_MM,
    LAX_HINTS,
    MEDIA_STORAGE_DIRECTORY,
    MIN_PHASES,
    MIN_SLICES,
    NON_CINE_HINTS,
    ORIENTATION_TOL,
    PHASE_COUNT_TOL,
    POSITION_TOL_MM,
    SA_HINTS,
    BadHeader,
    SeriesInfo,
    SeriesList,
    _dcmread,
    _Frame,
    _frames_from_dataset,
    _has_dicm,
    _header_values,
    _iter_files,
    _patient_key,
    _str,
    _tokens,
    quiet_pydicom,
)

log = logging.getLogger("cardioseg.io.dicom")


def _is_image_class(sop_class: str) -> bool:
    """Whether a SOP Class UID names an image storage class (MR Image Storage, ...)."""
    from pydicom.uid import UID

    return "Image Storage" in UID(sop_class).name if sop_class else False


def _sop_class(ds: Any) -> str:
    """SOPClassUID, else the file meta information's MediaStorageSOPClassUID (a DICOMDIR
    carries its class only there)."""
    meta = getattr(ds, "file_meta", None)
    media = meta.get("MediaStorageSOPClassUID", "") if meta is not None else ""
    return _str(ds.get("SOPClassUID", "")) or _str(media)


def find_series(folder: str | Path) -> SeriesList:
    """Scan a folder recursively (or one file) and group DICOM images by SeriesInstanceUID.

    Only headers are read. Non-DICOM files are skipped silently and counted
    (``result.n_non_dicom``); DICOM objects without an image (DICOMDIR, reports...) are counted in
    ``result.n_non_image``. Series that hold parts of one stack are NOT merged here (see
    :func:`select_short_axis_cine`); a series that mixes orientations is split into groups of
    parallel images.

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
    unreadable: list[str] = []
    reason = ""
    groups: dict[str, SeriesInfo] = {}
    with quiet_pydicom():
        for path in _iter_files(root):
            ds = _dcmread(path, stop_before_pixels=True)
            if ds is None:
                n_non_dicom += 1
                if _has_dicm(path):
                    unreadable.append(str(path))
                continue
            try:
                sop_class = _sop_class(ds)
                uid = _str(ds.get("SeriesInstanceUID", ""))
                if sop_class == MEDIA_STORAGE_DIRECTORY or not uid or "Rows" not in ds:
                    # an image class without the image, or no class at all: a damaged file
                    if not sop_class or _is_image_class(sop_class):
                        n_non_dicom += 1
                        unreadable.append(str(path))
                    else:
                        n_non_image += 1
                    continue
                frames = _frames_from_dataset(ds, str(path))
                header = _header_values(ds)
                pkey = _patient_key(ds)
            except Exception as exc:  # malformed elements: treat the file as unreadable
                log.debug("skipping %s: %s", path, type(exc).__name__)
                n_non_dicom += 1
                if not unreadable and isinstance(exc, BadHeader):
                    reason = str(exc)
                unreadable.append(str(path))
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
    no_geometry: list[str] = []
    for info in groups.values():  # an image without the geometry its series' others have
        placed = [f for f in info._frames if f.position is not None and f.orientation is not None]
        if placed and len(placed) < len(info._frames):
            no_geometry += sorted(
                {f.path for f in info._frames if f.position is None or f.orientation is None}
            )
            info._frames = placed
            info.files = sorted({f.path for f in placed})
    out = SeriesList(
        folder=str(root),
        n_non_dicom=n_non_dicom,
        n_non_image=n_non_image,
        unreadable=unreadable,
        unreadable_reason=reason,
        no_geometry=no_geometry,
    )
    for info in groups.values():
        for part in _split_by_orientation(info):
            _classify(part)
            out.append(part)
    out.sort(key=lambda s: (s.series_number if s.series_number is not None else 1 << 30, s.uid))
    log.debug(
        "%s: %d series, %d non-DICOM files, %d non-image DICOM",
        root,
        len(out),
        n_non_dicom,
        n_non_image,
    )
    return out


def _split_by_orientation(info: SeriesInfo) -> list[SeriesInfo]:
    """One series per group of parallel images.

    Some exports put several stacks in one series (a short-axis stack with a few long-axis
    images, or several packages of a multi-stack acquisition); each group of parallel images
    becomes a candidate of its own instead of the whole series being refused.
    """
    if any(f.orientation is None for f in info._frames):
        return [info]
    clusters: list[list[_Frame]] = []
    for f in info._frames:
        for c in clusters:
            if np.max(np.abs(f.orientation - c[0].orientation)) <= ORIENTATION_TOL:  # type: ignore[operator]
                c.append(f)
                break
        else:
            clusters.append([f])
    # only worth it where a group could be a cine stack (not, e.g., a three-plane localizer)
    if len(clusters) == 1 or max(map(len, clusters)) < MIN_SLICES * MIN_PHASES:
        return [info]
    clusters.sort(key=len, reverse=True)
    parts = []
    for k, frames in enumerate(clusters, start=1):
        paths = {f.path for f in frames}
        part = replace(
            info,
            files=[p for p in info.files if p in paths],
            part=(k, len(clusters)),
            _frames=frames,
            _header={
                **info._header,
                "split_note": (
                    f"the series holds images in {len(clusters)} orientations; analysed "
                    f"{len(frames)} parallel images, ignored {len(info._frames) - len(frames)}"
                ),
            },
            _patient_keys=set(info._patient_keys),
            _problems=[],
        )
        parts.append(part)
    return parts


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


def _stack(frames: list[_Frame], normal: np.ndarray | None = None) -> _Stack:
    """Group frames into slices sorted along the slice normal (``normal`` if given, e.g. one
    shared by several series whose positions are compared; else the frames' own).

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
    row, col, own_normal = _direction_cosines(ref)
    normal = own_normal if normal is None else normal
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


def _inplane_shift(st: _Stack) -> float:
    """Largest in-plane distance (mm) between the positions of the stack's slices."""
    pts = np.array(
        [
            [float(np.dot(f.position, st.row)), float(np.dot(f.position, st.col))]  # type: ignore[arg-type]
            for s in st.slices
            for f in s[:1]
        ]
    )
    if len(pts) < 2:
        return 0.0
    return float(np.max(np.linalg.norm(pts[:, None, :] - pts[None, :, :], axis=-1)))


def _plane(normal: np.ndarray) -> str:
    """Name of the plane: oblique, or the patient plane its normal is close to."""
    axis = int(np.argmax(np.abs(normal)))
    if abs(float(normal[axis])) < np.cos(np.deg2rad(AXIS_ALIGNED_DEG)):
        return "oblique"
    return ("sagittal", "coronal", "transverse")[axis]  # LPS: x left, y posterior, z superior


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
        info.inplane_shift_mm = _inplane_shift(st)
        info.plane = _plane(st.normal)
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
    # geometry that a short-axis stack rarely has: not a reason to refuse, but a penalty
    shifted = info.inplane_shift_mm > INPLANE_SHIFT_TOL_MM
    axis_plane = info.plane not in ("", "oblique")
    # a derived copy (reformatted, resampled, re-saved by a workstation) loses against the
    # scanner's original images
    derived = "DERIVED" in info._header.get("image_type", [])[:1]
    notes = []
    if derived:
        notes.append("derived images")
    if shifted:
        notes.append(
            f"slice positions drift in-plane by up to {info.inplane_shift_mm:.1f} mm, "
            "not a straight stack"
        )
    if axis_plane:
        notes.append(f"{info.plane} plane, short-axis stacks are oblique")
    info._problems = problems
    info.is_cine_sa = not problems
    if problems:
        info.reason = "; ".join(problems)
    else:
        info.reason = "short-axis cine candidate" + (f" ({'; '.join(notes)})" if notes else "")
    info.score = (
        3.0 * sa
        + 2.0 * cine
        - 3.0 * lax
        - 2.0 * non_cine
        + min(info.n_positions, 20) / 10.0
        + min(info.n_phases, 40) / 40.0
        - 0.05 * bool(info.merged_from)  # a tie-break: more slices (+0.1 each) win
        - 2.0 * shifted
        - 2.0 * axis_plane
        - 0.5 * derived
    )


# --------------------------------------------------------------------------------------------
# selection


def _stack_part(info: SeriesInfo) -> bool:
    """A series that could be part of a stack split over several series: one series per slice
    (GE, Siemens), or per breath-hold of a few slices. An MR cine of parallel images whose only
    objection, if any, is having too few slice positions."""
    if info.modality != "MR" or info.n_positions < 1 or info.n_phases < MIN_PHASES:
        return False
    return info.orientation is not None and all(
        p.startswith("only ") and "slice position" in p for p in info._problems
    )


def _same_spacing(a: tuple[float, float] | None, b: tuple[float, float] | None) -> bool:
    if a is None or b is None:
        return a is b
    return bool(np.allclose(a, b, rtol=1e-3, atol=1e-4))


def _merge_stack_parts(series: list[SeriesInfo]) -> list[SeriesInfo]:
    """Merge the parts of a stack acquired as several series (one per slice or per breath-hold)
    into one candidate stack: series of one study with parallel planes and the same image grid.

    At a position that several series cover, the latest series is kept (a repeated slice). A
    merged stack is offered only if it has more positions than its largest part, and not when
    the parts interleave (positions closer than a part's own slice gap: another stack, shifted).
    """
    parts = [s for s in series if _stack_part(s)]
    groups: list[list[SeriesInfo]] = []
    for s in parts:
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
        if len(g) < 2:
            continue
        # parts of one stack have about the phase count of its largest part
        ref = max(g, key=lambda x: (x.n_positions, x.series_number or 0)).n_phases
        g = [s for s in g if abs(s.n_phases - ref) <= max(1.0, PHASE_COUNT_TOL * ref)]
        if len(g) < 2:
            continue
        _, _, normal = _direction_cosines(np.asarray(g[0].orientation, dtype=float))
        # each position from the latest series that has it (a repeated slice)
        by_pos: dict[float, tuple[SeriesInfo, list[_Frame]]] = {}
        n_repeated = 0
        own_gaps = []
        for s in sorted(g, key=lambda x: (x.series_number or 0, x.uid)):
            st = _stack(s._frames, normal)  # a part is a stack of its own (classified so)
            positions = dict(zip(st.positions, st.slices, strict=True))
            if len(positions) > 1:
                own_gaps.append(float(np.median(np.diff(sorted(positions)))))
            for key, frames in positions.items():
                near = [k for k in by_pos if abs(k - key) <= POSITION_TOL_MM]
                for k in near:
                    del by_pos[k]
                n_repeated += bool(near)
                by_pos[key] = (s, frames)
        keys = sorted(by_pos)
        if len(keys) < MIN_SLICES or len(keys) <= max(s.n_positions for s in g):
            continue
        if own_gaps and np.min(np.diff(keys)) < (1.0 - GAP_TOL) * min(own_gaps):
            log.debug("not merging %d series: their slice positions interleave", len(g))
            continue
        comps: list[SeriesInfo] = []
        for k in keys:
            if by_pos[k][0] not in comps:
                comps.append(by_pos[k][0])
        first = comps[0]
        descs = {c.description for c in comps}
        frames = [f for k in keys for f in by_pos[k][1]]
        paths = {f.path for f in frames}
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
            files=[f for c in comps for f in c.files if f in paths],
            _frames=frames,
            _header=dict(first._header),
            _patient_keys=set().union(*(c._patient_keys for c in comps)),
        )
        _classify(info)
        if n_repeated:
            info._header["merge_note"] = (
                f"{n_repeated} repeated slice position(s) ignored (kept the latest series at "
                "each position)"
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
    series: list[SeriesInfo],
    folder: str | Path | None = None,
    merged: list[SeriesInfo] | None = None,
) -> SeriesInfo:
    """Choose the short-axis cine stack among the series of a study.

    A candidate is an MR series with >= 3 parallel slice positions and >= 2 phases whose
    description does not suggest a long-axis view (2ch/3ch/4ch/lax/la...) or a non-cine sequence
    (perfusion, LGE, mapping...) unless it also carries a short-axis (resp. cine) hint.
    Cine series of one study with the same orientation and image grid that each hold part of a
    stack (one series per slice location, common on GE/Siemens, or per breath-hold of a few
    slices, or a later series adding slices at the base) are also merged into one candidate
    stack. Among candidates the highest score wins: short-axis hints (sa, sax, short) and cine
    hints (cine, bssfp, trufi, fiesta, balanced) add, long-axis hints subtract, more slices and
    phases add a little, a transverse/coronal/sagittal plane, positions drifting in-plane or
    derived images subtract, and a merged stack loses a tie against a genuine multi-slice
    series (but wins with one more slice).

    Args:
        series: Output of :func:`find_series`.
        folder: Path used in error messages (defaults to the scanned folder).
        merged: The stacks merged from several series, if already made (by default they are
            made here); the chosen stack is then one of these objects.

    Returns:
        The chosen series (a merged :class:`SeriesInfo` with ``merged_from`` for per-slice
        series).

    Raises:
        CardiosegError: No candidate; the message summarises what was found.
    """
    where = folder if folder is not None else getattr(series, "folder", None)
    candidates = [s for s in series if s.is_cine_sa]
    if merged is None:
        merged = _merge_stack_parts(list(series))
    candidates += [m for m in merged if m.is_cine_sa]
    if not candidates:
        n_skipped = getattr(series, "n_non_dicom", 0)
        raise CardiosegError(
            where, f"no short-axis cine series found ({_summary(list(series), n_skipped)})"
        )
    ranked = sorted(
        candidates,
        key=lambda s: (s.score, s.n_positions, s.n_images, s.series_number or 0),
        reverse=True,
    )
    best = ranked[0]
    notes = []
    alike = [s for s in ranked[1:] if s.score == best.score and s.n_positions == best.n_positions]
    if alike:
        numbers = sorted(s.series_number for s in [best, *alike] if s.series_number is not None)
        which = (
            f"series number {best.series_number}, the latest"
            if best.series_number is not None and len(numbers) == len(alike) + 1
            else "the first found"
        )
        notes.append(
            f"{len(alike) + 1} short-axis cine series qualify equally"
            + (f" (series numbers {', '.join(map(str, numbers))})" if numbers else "")
            + f"; analysed {which}"
        )
    studies = {s.study_uid for s in series if s.study_uid}
    if len(studies) > 1:
        notes.append(
            f"the folder holds {len(studies)} studies of this patient; analysed a series of "
            "one of them (give one study per folder to choose)"
        )
    if best.plane not in ("", "oblique"):
        notes.append(
            f"the selected stack is a {best.plane} plane, not the usual double-oblique short "
            "axis: check that it is a short-axis cine"
        )
    if notes:
        best._header = {**best._header, "selection_notes": notes}
    # the description is free text (it may hold anything): only at debug level
    log.info(
        "selected series number %s: %d positions x %d phases (%d candidates)",
        best.series_number,
        best.n_positions,
        best.n_phases,
        len(candidates),
    )
    log.debug("selected series description %r", best.description)
    return best
