"""Report files of one analysed study: JSON, PNG figures, self-contained HTML and PDF.

Nothing of the DICOM patient module is written: ``meta`` is filtered for identifying keys, and
the only patient-related text put in on purpose is ``meta["patient_label"]``, when the caller
passes it. Text the input brings is shown as it is: the series description and the input
notes (which may name files of the study).
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import json
import math
import re
import textwrap
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cardioseg.clinical.indices import (
    DISPLAY_NAMES,
    NORMAL_RANGE_SOURCES,
    NORMAL_RANGES,
    RANGE_NOTES,
    SEX_NAMES,
    UNITS,
    compare_to_normal,
    normal_ranges,
    normalize_sex,
)
from cardioseg.clinical.qc import DISAGREEMENT_SLICE_NOTE, QCResult, slices_to_check
from cardioseg.clinical.slices import SliceExclusion
from cardioseg.io.nifti import atomic_write

DISCLAIMER = (
    "Research use only. Not a medical device and not a diagnosis: automatic measurements must "
    "be reviewed by a qualified clinician before any clinical use."
)

#: Indices shown in the table, in this order (missing ones are skipped).
TABLE_ORDER = (
    "lv_edv_ml",
    "lv_esv_ml",
    "lv_sv_ml",
    "lv_ef_pct",
    "lv_mass_g",
    "lv_max_wall_thickness_ed_mm",
    "rv_edv_ml",
    "rv_esv_ml",
    "rv_sv_ml",
    "rv_ef_pct",
    "bsa_m2",
    "lvedv_index_ml_m2",
    "lvesv_index_ml_m2",
    "lvsv_index_ml_m2",
    "lv_mass_index_g_m2",
    "rvedv_index_ml_m2",
    "rvesv_index_ml_m2",
    "rvsv_index_ml_m2",
    "heart_rate_bpm",
    "lv_co_l_min",
    "lv_ci_l_min_m2",
)

#: Meta keys matching this pattern are never written (patient or site identifiers, file paths).
IDENTIFYING_KEY = re.compile(
    r"patient|name|birth|accession|mrn|physician|operator|institution|address|phone|uid"
    r"|(^|_)id$|^id_|path|file|folder|dir$",
    re.IGNORECASE,
)

STATUS_COLORS = {"ok": "#1e8449", "review": "#b9770e", "fail": "#c0392b"}
FLAG_COLORS = {"normal": "#1e8449", "low": "#c0392b", "high": "#c0392b"}


def _version() -> str:
    try:
        from cardioseg import __version__

        return str(__version__)
    except Exception:  # pragma: no cover - partial installs
        return "unknown"


def _clean(value: Any) -> Any:
    """JSON-safe copy: numpy scalars/arrays to Python, NaN/Inf to ``None``, paths to str."""
    if isinstance(value, Mapping):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [_clean(v) for v in value]
    if isinstance(value, np.ndarray):
        return _clean(value.tolist())
    if isinstance(value, np.generic):
        return _clean(value.item())
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, bool | int | str):
        return value
    return str(value)


def sanitize_meta(meta: Mapping[str, Any] | None) -> dict[str, Any]:
    """Drop identifying keys (recursively) from ``meta``; keeps ``patient_label`` if given.

    Example:
        >>> sanitize_meta({"PatientName": "Doe^John", "vendor": "GE", "patient_label": "P1"})
        {'vendor': 'GE', 'patient_label': 'P1'}
    """

    def walk(obj: Any, top: bool) -> Any:
        if isinstance(obj, Mapping):
            return {
                k: walk(v, False)
                for k, v in obj.items()
                if (top and k == "patient_label") or not IDENTIFYING_KEY.search(str(k))
            }
        if isinstance(obj, list | tuple):
            return [walk(v, False) for v in obj]
        return obj

    return _clean(walk(dict(meta or {}), True))


def _qc_dict(qc: QCResult | Mapping[str, Any] | None) -> dict[str, Any]:
    if qc is None:
        return {"status": "not assessed", "score": None, "reasons": [], "per_slice": []}
    d = qc.to_dict() if isinstance(qc, QCResult) else dict(qc)
    d.setdefault("reasons", [])
    d.setdefault("per_slice", [])
    return _clean(d)


def _heat_max(qc: Mapping[str, Any]) -> float:
    """Disagreement shown in full yellow: twice the per-slice hint level of the model's own QC
    calibration (``qc["metrics"]["calibration"]``), else of the default model's.

    Example:
        >>> _heat_max({"metrics": {"calibration": {"disagreement_slice_note": 0.05}}})
        0.1
    """
    calibration = (qc.get("metrics") or {}).get("calibration") or {}
    return 2 * float(calibration.get("disagreement_slice_note", DISAGREEMENT_SLICE_NOTE))


def _curves(curve: Any) -> tuple[list[float], list[float] | None] | None:
    """Accept ``{"lv_ml": [...], "rv_ml": [...]}``, a list of LV volumes or of (LV, RV) pairs."""
    if curve is None:
        return None
    if isinstance(curve, Mapping):
        lv = curve.get("lv_ml", curve.get("lv", curve.get("LV")))
        rv = curve.get("rv_ml", curve.get("rv", curve.get("RV")))
        if lv is None:
            raise ValueError("curve mapping needs an 'lv_ml' entry")
        lv_l = [float(v) for v in np.asarray(lv, float).ravel()]
        rv_l = None if rv is None else [float(v) for v in np.asarray(rv, float).ravel()]
        return lv_l, rv_l
    arr = np.asarray(curve, dtype=float)
    if arr.ndim == 1:
        return [float(v) for v in arr], None
    if arr.ndim == 2 and arr.shape[1] == 2:
        return [float(v) for v in arr[:, 0]], [float(v) for v in arr[:, 1]]
    if arr.ndim == 2 and arr.shape[0] == 2:
        return [float(v) for v in arr[0]], [float(v) for v in arr[1]]
    raise ValueError(f"cannot interpret volume curve of shape {arr.shape}")


def _fmt(name: str, value: Any) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    if name == "heart_rate_bpm":
        return f"{float(value):.0f}"
    return f"{float(value):.2f}" if name == "bsa_m2" else f"{float(value):.1f}"


def _range_text(name: str, ranges: Mapping[str, Sequence[float]] | None = None) -> str:
    ranges = NORMAL_RANGES if ranges is None else ranges
    if name not in ranges:
        return RANGE_NOTES.get(name, "")
    lo, hi = ranges[name]
    return f"{lo:g}–{hi:g}"


def report_table(report: Mapping[str, Any]) -> tuple[list[dict[str, str]], str]:
    """The indices table of a written ``report.json`` (rows as in the HTML/PDF report, with the
    report's own normal ranges) and whom the ranges are for (e.g. ``"adult women"``)."""
    stored = report.get("normal_ranges") or {}
    ranges = {k: (v["low"], v["high"]) for k, v in stored.items()} if stored else None
    return _table_rows(report, report.get("normal_flags") or {}, ranges), _ranges_for(report)


def _ranges_for(report: Mapping[str, Any]) -> str:
    """Whom the report's normal ranges are for, as a table header says it."""
    who = str(report.get("normal_ranges_for") or SEX_NAMES[None])
    if who == SEX_NAMES[None]:  # the span of both sexes' ranges: flagged outside both
        who = "men or women"
    text = f"adult {who}" if who in ("men", "women") else f"adult, {who}"
    if report.get("normal_ranges_applied") is False:
        text += "; not applied: not for a child"
    return text


def _table_rows(
    indices: Mapping[str, Any],
    flags: Mapping[str, str],
    ranges: Mapping[str, Sequence[float]] | None = None,
) -> list[dict[str, str]]:
    """Rows of the indices table; ``ranges`` default to the sex-pooled normal ranges. A row's
    ``source`` cites its normal range (empty where it has none)."""
    ranges = NORMAL_RANGES if ranges is None else ranges
    rows = []
    for name in TABLE_ORDER:
        if name not in indices:
            continue
        rows.append(
            {
                "key": name,
                "name": DISPLAY_NAMES.get(name, name),
                "value": _fmt(name, indices[name]),
                "unit": UNITS.get(name, ""),
                "range": _range_text(name, ranges)
                + (
                    " (not judged: see the index)"
                    if name == "lv_mass_g" and "lv_mass_index_g_m2" in flags
                    else ""
                ),
                "flag": flags.get(name, ""),
                "source": NORMAL_RANGE_SOURCES.get(name, "") if name in ranges else "",
            }
        )
    return rows


# --- figures --------------------------------------------------------------------------------------


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


#: Index keys of the reported LV/RV volume at ED and ES.
REPORTED_VOLUME_KEYS = {
    "ED": ("lv_edv_ml", "rv_edv_ml"),
    "ES": ("lv_esv_ml", "rv_esv_ml"),
}


def reported_volumes(indices: Mapping[str, Any]) -> dict[str, tuple[float | None, float | None]]:
    """``{"ED": (LV mL, RV mL), "ES": (...)}`` from the indices (``None`` where missing)."""

    def value(key: str) -> float | None:
        v = indices.get(key)
        return None if v is None or not np.isfinite(float(v)) else float(v)

    return {ph: (value(lv), value(rv)) for ph, (lv, rv) in REPORTED_VOLUME_KEYS.items()}


def _plot_curve(
    ax: Any,
    lv: list[float],
    rv: list[float] | None,
    ed: int,
    es: int,
    reported: Mapping[str, tuple[float | None, float | None]] | None = None,
    pair: bool = False,
) -> None:
    """The volume curve on ``ax``. ``pair``: the two points are an ED/ES pair of volumes, not
    frames of a cine: they are not joined, and are named ED and ES instead of numbered."""
    frames = np.arange(len(lv))
    style = "o" if pair else "o-"
    ax.plot(frames, lv, style, color="#e4572e", label="LV", markersize=5 if pair else 3)
    if rv is not None and len(rv) == len(lv):
        ax.plot(
            frames,
            rv,
            "s" if pair else "s-",
            color="#2e86de",
            label="RV",
            markersize=5 if pair else 3,
        )
    # the reported ED/ES volumes, where they differ from the per-frame pass
    marked = False
    for phase, frame in (("ED", ed), ("ES", es)):
        if not reported or phase not in reported or not 0 <= frame < len(lv):
            continue
        pairs = zip(reported[phase], (lv, rv), ("#e4572e", "#2e86de"), strict=True)
        for value, curve, color in pairs:
            if value is None or curve is None or len(curve) != len(lv):
                continue
            if abs(value - float(curve[frame])) < 0.05:
                continue
            ax.plot(
                [frame],
                [value],
                marker="D",
                markersize=6,
                markerfacecolor="white",
                markeredgecolor=color,
                markeredgewidth=1.5,
                linestyle="none",
                label=None if marked else "as reported at ED/ES",
            )
            marked = True
    for frame, name, style in ((ed, "ED", "--"), (es, "ES", ":")):
        if 0 <= frame < len(lv):
            ax.axvline(frame, color="k", linestyle=style, linewidth=1)
            ax.annotate(
                f" {name}" if pair else f" {name} ({frame})",
                (frame, 0.98),
                xycoords=("data", "axes fraction"),
                ha="left",
                va="top",
                fontsize=8,
            )
    from matplotlib.ticker import MaxNLocator

    if pair:
        ax.set_xticks([ed, es], ["ED", "ES"])
        ax.set_xlim(-0.5, len(lv) - 0.5)
        ax.set_xlabel("given volume")
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("frame")
    ax.set_ylabel("volume (mL)")
    ax.grid(alpha=0.3)
    # a pair's points lie on its two edges: the middle is free ("best" can cover a point)
    ax.legend(fontsize=8, loc="center" if pair else "best")


def _write_curve_png(
    path: Path,
    lv: list[float],
    rv: list[float] | None,
    ed: int,
    es: int,
    reported: Mapping[str, tuple[float | None, float | None]] | None = None,
    pair: bool = False,
) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.4))
    _plot_curve(ax, lv, rv, ed, es, reported, pair)
    fig.tight_layout()
    return _save_png(fig, path)


#: zlib level of the report's PNGs: a slightly larger file than Pillow's default (6), written
#: in much less time.
PNG_COMPRESS_LEVEL = 3


def _save_png(fig: Any, path: Path) -> Path:
    """Write ``fig`` to ``path`` as a 90 dpi PNG (atomically) and close it."""
    with atomic_write(path) as tmp:
        fig.savefig(tmp, dpi=90, format="png", pil_kwargs={"compress_level": PNG_COMPRESS_LEVEL})
    _plt().close(fig)
    return path


SEGMENTS_HINT = (
    "AHA 16-segment model (research use): the septum's middle is the bisector of the RV "
    "insertion points (the ends of the right ventricle's contact with the LV myocardium); a "
    "segment's value is the median local wall thickness on each short-axis slice of its third, "
    "averaged over those slices. Thickening = (ES − ED) / ED. The apical cap (segment 17) is "
    "not measured on short-axis slices; only whether it was imaged is reported."
)


def segments_line(segments: Mapping[str, Any]) -> str:
    """The report's one line on where the ED wall is thickest.

    Example:
        >>> segments_line({"max_ed": {"mm": 16.04, "name": "basal anteroseptal", "slice": 3}})
        'Thickest point at ED: 16.0 mm, basal anteroseptal (slice 3).'
    """
    peak = segments.get("max_ed") or {}
    if peak.get("name") is None or peak.get("mm") is None:
        return "Thickest point at ED: not measured."
    return (
        f"Thickest point at ED: {float(peak['mm']):.1f} mm, {peak['name']} (slice {peak['slice']})."
    )


def segments_absent_line(report: Mapping[str, Any]) -> str:
    """The report's line where the AHA segments could not be measured ("" where they were).

    Example:
        >>> segments_absent_line({"wall_segments_not_measured": "no RV touching the myocardium"})
        'Not measured: no RV touching the myocardium.'
    """
    why = report.get("wall_segments_not_measured")
    return f"Not measured: {why}." if why and not report.get("wall_segments") else ""


def segments_method_line(segments: Mapping[str, Any]) -> str:
    """The report's line on how the septum was placed and on the apical cap (segment 17);
    empty for a record without them.

    Example:
        >>> print(segments_method_line({"apex": {"present": True, "slices": 1,
        ...                                      "myocardium_ml": 1.23}}))
        Apical cap (segment 17): 1 myocardium-only slice beyond the cavity, 1.2 mL at ED (not \
measured).
        >>> segments_method_line({"septum": {"ed": {"insertion_points": 8, "stack_mean": 1}}})[:50]
        'Septum from the RV insertion points on 8 of 9 slic'
    """
    parts, unmeasured = [], []
    for phase, counts in (segments.get("septum") or {}).items():
        if counts.get("not_measured"):  # no septum on any slice: that phase has no values
            unmeasured.append(f"{phase.upper()} not measured: {counts['not_measured']}.")
            continue
        n, rest = int(counts.get("insertion_points", 0)), int(counts.get("stack_mean", 0))
        parts.append(f"{n} of {n + rest} slices at {phase.upper()}")
    text = ""
    if parts:
        text = (
            f"Septum from the RV insertion points on {', '.join(parts)} "
            "(the others: the stack's mean direction)."
        )
    text = " ".join([text, *unmeasured]).strip()
    apex = segments.get("apex")
    if apex:
        k = int(apex.get("slices", 0))
        cap = (
            f"{k} myocardium-only slice{'s' if k != 1 else ''} beyond the cavity, "
            f"{float(apex.get('myocardium_ml', 0.0)):.1f} mL at ED (not measured)"
            if apex.get("present")
            else "no myocardium-only slice beyond the cavity"
        )
        text = f"{text} Apical cap (segment 17): {cap}.".strip()
    return text


def _rounded(value: Any, digits: int = 3) -> Any:
    """``value`` with every float rounded to ``digits`` (as the indices are stored)."""
    if isinstance(value, float):
        return round(value, digits)
    if isinstance(value, Mapping):
        return {k: _rounded(v, digits) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_rounded(v, digits) for v in value]
    return value


def _segment_values(segments: Mapping[str, Any], key: str) -> dict[int, float | None]:
    return {int(r["segment"]): r.get(key) for r in segments.get("segments") or []}


def _plot_segments(fig: Any, segments: Mapping[str, Any], rect: tuple[float, ...]) -> None:
    """Bull's-eyes of the ED thickness and (with ES) the thickening into ``rect`` of ``fig``."""
    from cardioseg.reporting.bullseye import plot_bullseye

    rows = segments.get("segments") or []
    with_es = any(r.get("thickening_pct") is not None for r in rows)
    left, bottom, width, height = rect
    n = 2 if with_es else 1
    peak = (segments.get("max_ed") or {}).get("segment")
    panels = [("ed_mm", "ED wall thickness (mm)", "viridis", 0.0, 20.0, "{:.1f}")]
    if with_es:
        panels.append(("thickening_pct", "systolic thickening (%)", "RdYlGn", 0.0, 100.0, "{:.0f}"))
    for k, (key, title, cmap, lo, hi, fmt) in enumerate(panels):
        ax = fig.add_axes((left + k * width / n, bottom + 0.14 * height, width / n, 0.8 * height))
        mappable = plot_bullseye(
            ax,
            _segment_values(segments, key),
            title,
            cmap,
            lo,
            hi,
            fmt,
            highlight=peak if key == "ed_mm" else None,
        )
        cax = fig.add_axes(
            (
                left + k * width / n + 0.15 * width / n,
                bottom + 0.08 * height,
                0.7 * width / n,
                0.03 * height,
            )
        )
        fig.colorbar(mappable, cax=cax, orientation="horizontal")
        cax.tick_params(labelsize=7)


def _write_segments_png(path: Path, segments: Mapping[str, Any]) -> Path:
    plt = _plt()
    fig = plt.figure(figsize=(7.0, 3.6))
    _plot_segments(fig, segments, (0.0, 0.0, 1.0, 1.0))
    return _save_png(fig, path)


def _segment_cells(segments: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
    rows = segments.get("segments") or []
    with_es = any(r.get("es_mm") is not None for r in rows)

    def num(v: Any, fmt: str) -> str:
        return "–" if v is None else fmt.format(float(v))

    header = ["Segment", "ED (mm)"] + (["ES (mm)", "Thickening (%)"] if with_es else [])
    cells = []
    for r in rows:
        cell = [f"{r['segment']} {r['name']}", num(r.get("ed_mm"), "{:.1f}")]
        if with_es:
            cell += [num(r.get("es_mm"), "{:.1f}"), num(r.get("thickening_pct"), "{:.0f}")]
        cells.append(cell)
    return header, cells


def suggestion_line(suggestion: Mapping[str, Any]) -> str:
    """The report's one line on the research-use group suggestion, or on why there is none.

    Example:
        >>> suggestion_line({"shown": False, "reason": "the quality control failed"})
        'No research-use group suggestion: the quality control failed.'
    """
    if suggestion.get("shown"):
        return str(suggestion["text"])
    return f"No research-use group suggestion: {suggestion.get('reason', 'not computed')}."


def frames_text(report: Mapping[str, Any]) -> str:
    """Which frames are ED and ES, in words: frame numbers count from 0 (as in the volume
    curve, the masks and the slice exclusions); an ED/ES pair has no frame numbers.

    Example:
        >>> frames_text({"ed_frame": 0, "es_frame": 9, "meta": {"source_kind": "dicom"}})
        'End-diastole: frame 0 · End-systole: frame 9 (frames counted from 0)'
        >>> meta = {"source_kind": "nifti4d", "frames_from": "Info.cfg"}
        >>> frames_text({"ed_frame": 0, "es_frame": 11, "meta": meta})
        'End-diastole: frame 0 · End-systole: frame 11 (frames counted from 0; chosen by: Info.cfg)'
        >>> frames_text({"ed_frame": 0, "es_frame": 1, "meta": {"source_kind": "pair"}})
        'End-diastole and end-systole: the two given volumes (ED/ES pair)'
    """
    meta = report.get("meta") or {}
    if meta.get("source_kind") == "pair":
        return "End-diastole and end-systole: the two given volumes (ED/ES pair)"
    origin = f"; chosen by: {meta['frames_from']}" if meta.get("frames_from") else ""
    return (
        f"End-diastole: frame {report.get('ed_frame')} · End-systole: frame "
        f"{report.get('es_frame')} (frames counted from 0{origin})"
    )


def body_text(report: Mapping[str, Any]) -> str:
    """The height, weight and sex the report used, and where each came from, as the head of
    the HTML and PDF reports says it ("" when none is known).

    Example:
        >>> meta = {"body_size": "175 cm (given), 80 kg (given)", "ranges_sex": "M (given)"}
        >>> body_text({"meta": meta})
        'Height, weight: 175 cm (given), 80 kg (given); Sex: M (given)'
    """
    details = report.get("meta") or {}
    return "; ".join(
        f"{name}: {details[key]}"
        for key, name in (("body_size", "Height, weight"), ("ranges_sex", "Sex"))
        if details.get(key)
    )


def _write_montage(
    path: Path,
    images: Mapping[str, tuple[np.ndarray, np.ndarray]],
    spacing: Sequence[float],
    ed_frame: int,
    es_frame: int,
    heat: Mapping[str, np.ndarray | None] | None = None,
    heat_max: float = 2 * DISAGREEMENT_SLICE_NOTE,
    check: Sequence[str] = (),
    pair: bool = False,
) -> Path:
    """ED and ES overlay montages (from :func:`overlay_montage`) stacked into one PNG; with
    ``heat``, each phase's disagreement map (where given) in yellow under the contours, full
    yellow from ``heat_max``. Both phases show the same window around the segmented heart
    (the whole image when nothing was segmented). The slices of ``check`` (``"ES:8"``, as
    :func:`~cardioseg.clinical.qc.slices_to_check` gives them) are marked "check". ``pair``:
    the two given volumes of an ED/ES pair, which have no frame numbers."""
    from PIL import Image

    from cardioseg.reporting.overlays import foreground_window, overlay_montage

    frames = {"ED": ed_frame, "ES": es_frame}
    spacing3 = tuple(float(s) for s in spacing[:3])
    window = foreground_window([np.asarray(lab) for _, lab in images.values()], spacing3)
    parts = []
    for phase in ("ED", "ES"):
        if phase not in images:
            continue
        image, label = images[phase]
        spread = None if heat is None else heat.get(phase)
        title = (
            f"{phase}: LV red, MYO green, RV blue"
            if pair
            else f"{phase} (frame {frames[phase]}): LV red, MYO green, RV blue"
        )
        if spread is not None:
            title += ", yellow: unstable outlines (check there)"
        parts.append(
            overlay_montage(
                np.asarray(image),
                np.asarray(label),
                None,
                spacing3,
                title=title,
                heat=None if spread is None else np.asarray(spread),
                heat_max=heat_max,
                window=window,
                marked=[int(c.split(":")[1]) for c in check if c.split(":")[0] == phase],
            )
        )
    if not parts:
        raise ValueError("images must contain 'ED' and/or 'ES'")
    width = max(p.shape[1] for p in parts)
    padded = [
        np.pad(p, ((0, 0), (0, width - p.shape[1]), (0, 0)), constant_values=255) for p in parts
    ]
    with atomic_write(path) as tmp:
        Image.fromarray(np.concatenate(padded, axis=0)).save(
            tmp, format="PNG", compress_level=PNG_COMPRESS_LEVEL
        )
    return path


#: Readable names of the processing details (``report.json["meta"]``) in the HTML report;
#: other keys are shown as they are.
META_NAMES = {
    "source_kind": "input",
    "frames_from": "ED and ES frames from",
    "body_size": "height, weight",
    "ranges_sex": "sex for the normal ranges",
    "n_frames": "frames",
    "n_slices": "slices",
    "spacing_mm": "voxel size",
    "slice_axis": "slice direction",
    "seconds": "analysis time",
    "model": "model",
    "network_runtime": "neural network run by",
    "qc_calibration": "QC thresholds calibrated for",
    "dicom_seg_phases": "phases in the DICOM-SEG",
    "heart_window": "heart window (the network segments a crop around the heart)",
    "vendor": "vendor",
    "series_description": "series description",
    "warnings": "input warnings",
    "lv_max_wall_thickness_slice": "slice of the LV max wall thickness (ED)",
    "input_signature": "input files' signature (names, sizes, headers)",
}

#: The input kinds (``meta["source_kind"]``) in words.
SOURCE_KINDS = {
    "dicom": "DICOM series",
    "nifti4d": "4D cine (NIfTI)",
    "pair": "ED and ES volumes (NIfTI)",
}

#: What ran the network (the first part of ``meta["network_runtime"]``), in words.
RUNTIME_NAMES = {"torch": "PyTorch", "onnxruntime": "ONNX Runtime"}

#: The phases exported to the DICOM-SEG (``meta["dicom_seg_phases"]``), in words.
SEG_PHASE_NAMES = {"ed-es": "ED and ES only", "all": "every frame"}


def _count(n: int, what: str) -> str:
    return f"{n} {what}{'' if n == 1 else 's'}"


def _heart_window_text(counts: Any, n_frames: Any = None) -> str:
    """The heart window's use (``meta["heart_window"]``: how many volumes were segmented in
    the window, on the whole image as no heart was found on the middle slice, and on the whole
    image as the heart reached the window's edge) in words; anything else as it is.

    Example:
        >>> _heart_window_text({"window": 22, "full": 0, "fallback": 0}, 20)
        'used for all 22 segmentations (every frame once, ED and ES a second time)'
        >>> _heart_window_text({"window": 3, "full": 1, "fallback": 0})
        'used for 3 of 4 segmentations; the whole image for 1 (no heart found on the middle slice)'
        >>> print(_heart_window_text({"window": 0, "full": 0, "fallback": 2}))
        not used for any of 2 segmentations; the whole image for 2 (the heart reached the window's edge)
    """  # noqa: E501
    keys = ("window", "full", "fallback")
    if not isinstance(counts, Mapping) or not all(
        isinstance(counts.get(k), int) and not isinstance(counts.get(k), bool) for k in keys
    ):
        return _meta_text(counts)
    window, full, fallback = (int(counts[k]) for k in keys)
    total = window + full + fallback
    if total == 0:
        return "no volume segmented"
    what = _count(total, "segmentation")
    if window == total:
        head = f"used for all {what}" if total > 1 else f"used for the {what}"
    elif window == 0:
        head = f"not used for any of {what}"
    else:
        head = f"used for {window} of {what}"
    if isinstance(n_frames, int) and total == n_frames + 2:
        head += " (every frame once, ED and ES a second time)"
    parts = [head]
    if full:
        parts.append(f"the whole image for {full} (no heart found on the middle slice)")
    if fallback:
        parts.append(f"the whole image for {fallback} (the heart reached the window's edge)")
    parts += [f"{k}: {_meta_text(v)}" for k, v in counts.items() if k not in keys]
    return "; ".join(parts)


def _spacing_text(spacing: Any, axis: Any) -> str:
    """The voxel size in words, in-plane and between slices where the slice axis is known.

    Example:
        >>> _spacing_text([1.1824324, 1.1824323, 10.000000244], 2)
        '1.182 × 1.182 mm in-plane; slices 10 mm apart'
        >>> _spacing_text([1.25, 1.25, 8.0], None)
        '1.25, 1.25, 8 mm'
    """
    numbers = isinstance(spacing, list | tuple) and all(
        isinstance(v, int | float) and not isinstance(v, bool) for v in spacing
    )
    if numbers and len(spacing) == 3 and axis in (0, 1, 2) and not isinstance(axis, bool):
        a, b = (spacing[i] for i in range(3) if i != axis)
        return f"{a:.4g} × {b:.4g} mm in-plane; slices {spacing[axis]:.4g} mm apart"
    return f"{_meta_text(spacing)} mm" if numbers else _meta_text(spacing)


def _meta_value_text(key: str, value: Any, meta: Mapping[str, Any]) -> str:
    """One processing detail's cell in the report: the known ones in words (every number and
    name of ``report.json`` kept), the others by :func:`_meta_text`.

    Example:
        >>> _meta_value_text("source_kind", "pair", {})
        'ED and ES volumes (NIfTI)'
        >>> _meta_value_text("slice_axis", 2, {}), _meta_value_text("seconds", 4.7234, {})
        ("the image volume's 3rd axis", '4.723 s')
        >>> _meta_value_text("network_runtime", "torch, bfloat16", {})
        'PyTorch, in bfloat16 precision'
    """
    if key == "source_kind" and value in SOURCE_KINDS:
        return SOURCE_KINDS[value]
    if key == "heart_window":
        return _heart_window_text(value, meta.get("n_frames"))
    if key == "spacing_mm":
        return _spacing_text(value, meta.get("slice_axis"))
    if key == "slice_axis" and value in (0, 1, 2) and not isinstance(value, bool):
        return f"the image volume's {('1st', '2nd', '3rd')[value]} axis"
    if key == "seconds" and isinstance(value, int | float) and not isinstance(value, bool):
        return f"{_meta_text(float(value))} s"
    if key == "network_runtime" and isinstance(value, str) and value.count(", ") == 1:
        backend, precision = value.split(", ")
        return f"{RUNTIME_NAMES.get(backend, backend)}, in {precision} precision"
    if key == "dicom_seg_phases" and value in SEG_PHASE_NAMES:
        return SEG_PHASE_NAMES[value]
    return _meta_text(value)


def processing_rows(meta: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The report's "Acquisition and processing" rows, ``(name, text)``, for clinicians and
    technologists; ``report.json["meta"]`` keeps the machine-readable keys and values."""
    return [
        (META_NAMES.get(str(k), str(k)), _meta_value_text(str(k), v, meta))
        for k, v in meta.items()
        if k != "patient_label"
    ]


def _meta_text(value: Any) -> str:
    """A readable cell for one processing detail: numbers to 4 significant digits, lists
    joined with commas, mappings as ``key: value`` pairs.

    Example:
        >>> _meta_text([1.4843997089478314, 1.4843992848648457, 10.000000018660014])
        '1.484, 1.484, 10'
        >>> _meta_text({"window": 4, "full": 0})
        'window: 4, full: 0'
        >>> _meta_text(["irregular slice gaps (8, 10 mm)", "a note"]), _meta_text([])
        ('irregular slice gaps (8, 10 mm); a note', 'none')
    """
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int | str):
        return str(value)
    if isinstance(value, Mapping):
        return ", ".join(f"{k}: {_meta_text(v)}" for k, v in value.items())
    if isinstance(value, list | tuple):
        if not value:
            return "none"
        if all(isinstance(v, str) for v in value):  # sentences (warnings) may hold commas
            return "; ".join(value)
        return ", ".join(
            f"({_meta_text(v)})" if isinstance(v, list | tuple) else _meta_text(v) for v in value
        )
    return json.dumps(value, default=str)


def _data_uri(path: Path | None) -> str:
    if path is None:
        return ""
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


# --- HTML -----------------------------------------------------------------------------------------


def _reason_color(issue: dict[str, Any] | None, status: str) -> str:
    """Red for heavy issues, amber for others, grey for minor notes (they do not ask for a
    review on their own, see :mod:`cardioseg.clinical.qc`)."""
    from cardioseg.clinical.qc import MINOR_KINDS

    if issue is None or issue.get("weight") is None:
        return STATUS_COLORS.get(status, "#555")
    weight = float(issue["weight"])
    if issue.get("kind") in MINOR_KINDS:
        return "#666666"
    if weight >= 0.5:
        return STATUS_COLORS["fail"]
    if weight >= 0.25:
        return STATUS_COLORS["review"]
    return "#666666"


SLICE_COLUMNS = (
    ("lv_ed_ml", "LV ED"),
    ("lv_es_ml", "LV ES"),
    ("myo_ed_ml", "Myo ED"),
    ("rv_ed_ml", "RV ED"),
    ("rv_es_ml", "RV ES"),
)
EXCLUDE_HINT = (
    "Slice = index in the mask files. Check = phases in which the segmentation of the slice "
    "is unstable (its outlines on the image and on slightly rotated or flipped copies of it "
    "disagree more than on 95 % of the slices of studies like the training data): look at it "
    "first, at the base above all. A reader who judges a slice to be "
    "outside the ventricle (e.g. atrium above the base at end-systole) can re-run with "
    "--exclude ES:SLICE (or ES:SLICE:LV, ES:SLICE:RV)."
)

CURVE_HINT = (
    "LV and RV volume of every frame; ED is the frame with the largest LV volume, ES the one "
    "with the smallest. The reported ED and ES volumes come from those two frames segmented "
    "again with test-time augmentation (and the reader's exclusions); where they differ from "
    "the curve, they are marked with open diamonds."
)

#: :data:`CURVE_HINT` for an ED/ES pair of volumes (no cine: ED and ES were given).
CURVE_HINT_PAIR = (
    "LV and RV volume of the two given volumes: ED and ES are the volumes given as such, not "
    "chosen from a cine. The reported volumes come from these two volumes segmented again "
    "with test-time augmentation (and the reader's exclusions); where they differ from this "
    "first pass, they are marked with open diamonds."
)


def _is_pair(report: Mapping[str, Any]) -> bool:
    """Whether the report is of an ED/ES pair of volumes (which have no frame numbers)."""
    return (report.get("meta") or {}).get("source_kind") == "pair"


DISAGREEMENT_HINT = (
    "Yellow: where the test-time predictions (the image and slightly rotated copies of it, or "
    "its flips for models trained with flips, segmented separately) disagree, the QC's "
    "uncertainty; the brighter, the less sure the model. Check the contours "
    "there first. Yellow across the heart, not only along its borders, suggests an image "
    "unlike the training data."
)


def _slice_table(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Header and text cells of the slice-by-slice volume table (notes name exclusions)."""
    excluded: dict[int, list[str]] = {}
    for text in report.get("excluded_slices") or []:
        ex = SliceExclusion.parse(text)
        note = ex.phase if ex.structures == "all" else f"{ex.phase} {ex.structures}"
        excluded.setdefault(ex.slice, []).append(note)
    check: dict[int, list[str]] = {}
    for item in slices_to_check(report.get("qc") or {}):  # "PHASE:SLICE", ED first
        phase, z = item.split(":")
        check.setdefault(int(z), []).append(phase)
    header = ["Slice", "", *(name for _, name in SLICE_COLUMNS), "Check", "Excluded"]
    cells = [
        [
            str(r["slice"]),
            str(r.get("position", "")),
            *(f"{float(r[key]):.1f}" for key, _ in SLICE_COLUMNS),
            ", ".join(check.get(int(r["slice"]), [])),
            ", ".join(excluded.get(int(r["slice"]), [])),
        ]
        for r in report.get("slices") or []
    ]
    return header, cells


def _html_table(
    header: Sequence[str], cells: Sequence[Sequence[str]], numeric: Callable[[int], bool]
) -> str:
    """An HTML table (text escaped); the columns where ``numeric(i)`` are right-aligned."""
    e = html.escape
    head = "".join(f"<th>{e(h)}</th>" for h in header)
    body = "".join(
        "<tr>"
        + "".join(f"<td{' class=num' if numeric(i) else ''}>{e(v)}</td>" for i, v in enumerate(c))
        + "</tr>"
        for c in cells
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _range_sources(rows: Sequence[Mapping[str, str]]) -> list[str]:
    """The references of the normal ranges of the indices table's rows, in the order of their
    numbers (:func:`_range_text_with_ref`)."""
    return sorted({r["source"] for r in rows if r.get("source")})


def _range_text_with_ref(row: Mapping[str, str], sources: Sequence[str]) -> str:
    """A row's normal range followed by the number of its reference in ``sources`` (as the
    reports' footnote lists them), so that a reader sees which study each range comes from.

    Example:
        >>> row = {"range": "48–68", "source": "Petersen et al."}
        >>> _range_text_with_ref(row, ["Kawel-Boehm et al.", "Petersen et al."])
        '48–68 [2]'
    """
    source = row.get("source")
    if not source or source not in sources:
        return row["range"]
    return f"{row['range']} [{list(sources).index(source) + 1}]"


def _numbered_sources(sources: Sequence[str]) -> str:
    """The footnote's list of references, numbered as the range cells cite them.

    Example:
        >>> _numbered_sources(["A 2003", "B 2005"])
        '[1] A 2003; [2] B 2005'
    """
    return "; ".join(f"[{k}] {s}" for k, s in enumerate(sources, start=1))


def _html(report: dict[str, Any], rows: list[dict[str, str]], figures: dict[str, Path]) -> str:
    e = html.escape
    qc = report["qc"]
    status = str(qc.get("status", "not assessed"))
    color = STATUS_COLORS.get(status, "#555")
    issues = list((qc.get("metrics") or {}).get("issues", []))
    reasons = qc.get("reasons") or []
    sources = _range_sources(rows)
    reason_items = (
        "".join(
            f'<li style="color:{_reason_color(issues[i] if i < len(issues) else None, status)}">'
            f"{e(str(r))}</li>"
            for i, r in enumerate(reasons)
        )
        or "<li>no issues found</li>"
    )
    table = "".join(
        f'<tr><td>{e(r["name"])}</td><td class="num">{e(r["value"])}</td><td>{e(r["unit"])}</td>'
        f'<td>{e(_range_text_with_ref(r, sources))}</td><td style="color:'
        f'{FLAG_COLORS.get(r["flag"], "#333")};font-weight:bold">{e(r["flag"])}</td></tr>'
        for r in rows
    )
    who = _ranges_for(report)
    meta = report.get("meta") or {}
    # what the reader should know about the input (series choice, damaged files...), up front
    warnings = [str(w) for w in meta.get("warnings") or []]
    input_notes = (
        '<div class="notes"><p><b>About the input</b></p><ul>'
        + "".join(f"<li>{e(w)}</li>" for w in warnings)
        + "</ul></div>"
        if warnings
        else ""
    )
    meta_rows = "".join(
        f"<tr><td>{e(name)}</td><td>{e(text)}</td></tr>" for name, text in processing_rows(meta)
    )
    label = report.get("patient_label")
    header_label = f"<p><b>Study label:</b> {e(str(label))}</p>" if label else ""
    score = qc.get("score")
    score_txt = _score_text(score)
    imgs = ""
    shows_spread = "disagreement" in (qc.get("metrics") or {})
    if "overlay" in figures:
        imgs += (
            "<h2>ED / ES segmentation</h2>"
            f'<img alt="ED/ES overlay montage" src="{_data_uri(figures["overlay"])}">'
            + (f'<p class="small">{e(DISAGREEMENT_HINT)}</p>' if shows_spread else "")
        )
    if "curve" in figures:
        pair = _is_pair(report)
        imgs += (
            f"<h2>{'Volumes at ED and ES' if pair else 'Volume curve'}</h2>"
            f'<img alt="volume curve" src="{_data_uri(figures["curve"])}">'
            f'<p class="small">{e(CURVE_HINT_PAIR if pair else CURVE_HINT)}</p>'
        )
    suggestion_html = ""
    sugg = report.get("diagnosis_suggestion")
    if sugg:
        said = suggestion_line(sugg)
        suggestion_html = (
            "<h2>Research-use group suggestion (not a diagnosis)</h2>"
            f'<p>{e(said)}</p><p class="small">{e(sugg.get("disclaimer", ""))}</p>'
        )
    slice_html = ""
    header, cells = _slice_table(report)
    if cells:
        slice_html = (
            "<h2>Slice-by-slice volumes (mL, base first)</h2>"
            + _html_table(header, cells, lambda i: 2 <= i < 2 + len(SLICE_COLUMNS))
            + f'<p class="small">{e(EXCLUDE_HINT)}</p>'
        )
    segments_html = ""
    segs = report.get("wall_segments")
    if segs:
        header, cells = _segment_cells(segs)
        picture = (
            f'<img alt="AHA segment bull\'s-eye" src="{_data_uri(figures["segments"])}">'
            if "segments" in figures
            else ""
        )
        segments_html = (
            "<h2>LV wall per AHA segment</h2>"
            f"<p>{e(segments_line(segs))}</p>{picture}"
            + _html_table(header, cells, lambda i: i > 0)
            + (f"<p>{e(method)}</p>" if (method := segments_method_line(segs)) else "")
            + f'<p class="small">{e(SEGMENTS_HINT)}</p>'
        )
    elif report.get("wall_segments_not_measured"):
        segments_html = f"<h2>LV wall per AHA segment</h2><p>{e(segments_absent_line(report))}</p>"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>Cardiac cine analysis</title>
<style>
body {{ font-family: Helvetica, Arial, sans-serif; margin: 2em auto; max-width: 60em;
        color: #222; }}
table {{ border-collapse: collapse; margin: 0.5em 0; }}
td, th {{ border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; }}
th {{ background: #f2f2f2; }}
td.num {{ text-align: right; font-variant-numeric: tabular-nums; }}
.qc {{ border-left: 0.5em solid {color}; padding: 0.3em 1em; background: #fafafa; }}
.notes {{ border-left: 0.5em solid #b9770e; padding: 0.3em 1em; background: #fdf6e3;
  margin-top: 0.8em; }}
.status {{ color: {color}; font-weight: bold; text-transform: uppercase; }}
img {{ max-width: 100%; }}
footer {{ margin-top: 2em; padding: 0.8em; border: 2px solid #c0392b; color: #c0392b;
          font-weight: bold; }}
.small {{ font-size: 0.85em; color: #555; }}
.ruo {{ color: #c0392b; font-weight: bold; font-size: 0.9em; }}
</style></head>
<body>
<h1>Cardiac cine MRI analysis</h1>
<p class="ruo">{e(DISCLAIMER)}</p>
{header_label}
<p>{e(frames_text(report))}</p>
{f"<p>{e(body)}</p>" if (body := body_text(report)) else ""}
<h2>Quality control</h2>
<div class="qc"><p>Status: <span class="status">{e(status)}</span>{e(score_txt)}</p>
<ul>{reason_items}</ul></div>
{input_notes}
<h2>Indices</h2>
<table><tr><th>Index</th><th>Value</th><th>Unit</th><th>Normal range ({e(who)})</th>
<th>Flag</th></tr>{table}</table>
<p class="small">Normal ranges: {e(who)} (mean ± 2 SD), from the reference numbered
next to each: {e(_numbered_sources(sources) or "none")}. LV mass = myocardial volume at ED ×
1.05 g/mL.</p>
{suggestion_html}
{slice_html}
{imgs}
{segments_html}
<h2>Acquisition and processing</h2>
<table>{meta_rows or "<tr><td>no details given</td></tr>"}</table>
<p class="small">Generated {e(report["generated_utc"])} by cardioseg
{e(report["software_version"])}.</p>
<footer>{e(DISCLAIMER)}</footer>
</body></html>
"""


# --- PDF ------------------------------------------------------------------------------------------


def _score_text(score: Any) -> str:
    """The QC score as the reports show it, with its direction.

    Example:
        >>> _score_text(0.25), _score_text(None)
        (' (score 0.25 of 1; higher is less trustworthy)', '')
    """
    if not isinstance(score, int | float):
        return ""
    return f" (score {score:.2f} of 1; higher is less trustworthy)"


#: Lowest height of the first PDF page's text: below it, what produced the report and the
#: disclaimer.
PDF_TEXT_BOTTOM = 0.14


def _pdf_table(
    fig: Any, header: Sequence[str], cells: Sequence[Sequence[str]], rect: tuple[float, ...]
) -> None:
    """A table of ``cells`` under ``header`` filling ``rect`` of ``fig``, in 8 pt."""
    ax = fig.add_axes(rect)
    ax.axis("off")
    tab = ax.table(cellText=cells, colLabels=header, bbox=(0.0, 0.0, 1.0, 1.0))
    tab.auto_set_font_size(False)
    tab.set_fontsize(8)


#: Widths of the PDF indices table's columns (index, value, unit, normal range, flag), as
#: fractions of the table: the range column holds the longest text ("92–176 [3] (not judged:
#: see the index)").
PDF_INDEX_COLUMNS = (0.31, 0.09, 0.1, 0.39, 0.11)


def _pdf_indices_table(
    fig: Any, report: Mapping[str, Any], rows: Sequence[Mapping[str, str]], rect: tuple[float, ...]
) -> Any:
    """The indices table of the PDF's first page in ``rect`` of ``fig`` (8 pt; names and
    ranges left-aligned, each range with the number of its reference); returns the table."""
    sources = _range_sources(rows)
    ax = fig.add_axes(rect)
    ax.axis("off")
    cells = [
        [r["name"], r["value"], r["unit"], _range_text_with_ref(r, sources), r["flag"]]
        for r in rows
    ]
    tab = ax.table(
        cellText=cells,
        colLabels=["Index", "Value", "Unit", f"Normal range ({_ranges_for(report)})", "Flag"],
        bbox=(0.0, 0.0, 1.0, 1.0),
        colWidths=list(PDF_INDEX_COLUMNS),
    )
    tab.auto_set_font_size(False)
    tab.set_fontsize(8)
    for i in range(len(rows) + 1):
        for col in (0, 3):
            tab[i, col].set_text_props(ha="left")
            tab[i, col].PAD = 0.02
    for i, r in enumerate(rows, start=1):
        if r["flag"] in FLAG_COLORS:
            tab[i, 4].get_text().set_color(FLAG_COLORS[r["flag"]])
    return tab


def _pdf_bullets(
    fig: Any, items: Sequence[Any], y: float, bottom: float = 0.1
) -> tuple[float, int]:
    """Write ``items`` as wrapped bullet points from height ``y`` down while they fit above
    ``bottom``; return the height below them and how many were written."""
    written = 0
    for item in items:
        lines = textwrap.wrap(str(item), 100)
        if y - 0.016 * (len(lines) - 1) < bottom:
            break
        for k, line in enumerate(lines):
            fig.text(0.09, y, ("• " if k == 0 else "  ") + line, fontsize=8)
            y -= 0.016
        written += 1
    return y, written


def _pdf_continuation_page(pdf: Any, fig: Any, report: Mapping[str, Any]) -> None:
    """Add the running foot of the PDF's pages after the first to ``fig`` (the study label,
    where there is one, and the disclaimer: a printed page may be read on its own), save it
    as the next page and close it."""
    label = report.get("patient_label")
    if label:
        text = textwrap.shorten(f"Study label: {label}", 150, placeholder=" ...")
        fig.text(0.05, 0.028, text, fontsize=7, color="#333")
    fig.text(0.05, 0.014, DISCLAIMER, fontsize=6, color="#c0392b")
    pdf.savefig(fig)
    _plt().close(fig)


def _provenance_lines(report: Mapping[str, Any], rows: Sequence[Mapping[str, str]]) -> list[str]:
    """What produced the report and from which references (the foot of the PDF's first page,
    as in the HTML)."""
    sources = _range_sources(rows)
    model = (report.get("meta") or {}).get("model")
    text = (
        f"Generated {report.get('generated_utc', '')} by cardioseg "
        f"{report.get('software_version', '')}"
        + (f"; model {model}" if model else "")
        + ". Normal ranges (mean ± 2 SD), from the reference numbered next to each: "
        + (_numbered_sources(sources) or "none")
        + ". LV mass = myocardial volume at ED × 1.05 g/mL."
    )
    return textwrap.wrap(text, 140)


def _write_pdf(
    path: Path,
    report: dict[str, Any],
    rows: list[dict[str, str]],
    figures: dict[str, Path],
    curves: tuple[list[float], list[float] | None] | None,
) -> Path:
    from matplotlib.backends.backend_pdf import PdfPages

    plt = _plt()
    qc = report["qc"]
    status = str(qc.get("status", "not assessed"))
    meta = {"Title": "Cardiac cine MRI analysis", "Creator": f"cardioseg {_version()}"}
    with atomic_write(path) as tmp, PdfPages(tmp, metadata=meta) as pdf:
        fig = plt.figure(figsize=(8.27, 11.69))
        y = 0.96
        fig.text(0.07, y, "Cardiac cine MRI analysis", fontsize=16, weight="bold")
        y -= 0.03
        head = [f"Study label: {report['patient_label']}"] if report.get("patient_label") else []
        head.append(frames_text(report))
        if used := body_text(report):
            head.append(used)
        for item in head:
            for line in textwrap.wrap(item, 95):
                fig.text(0.07, y, line, fontsize=10)
                y -= 0.018
        y -= 0.012
        if report.get("excluded_slices"):
            fig.text(
                0.07,
                y,
                "Slices excluded by the reader: " + ", ".join(report["excluded_slices"]),
                fontsize=10,
            )
            y -= 0.03
        if rows:
            height = 0.022 * (len(rows) + 1)
            _pdf_indices_table(fig, report, rows, (0.07, y - height, 0.86, height))
            y -= height + 0.03
        sugg = report.get("diagnosis_suggestion")
        if sugg:  # under the indices, as in the HTML
            fig.text(0.07, y, "Research-use group suggestion (not a diagnosis)", fontsize=10)
            y -= 0.02
            for line in textwrap.wrap(suggestion_line(sugg), 100):
                fig.text(0.09, y, line, fontsize=8)
                y -= 0.016
            y -= 0.015
        score = qc.get("score")
        score_txt = _score_text(score)
        fig.text(
            0.07,
            y,
            f"Quality control: {status.upper()}{score_txt}",
            fontsize=12,
            weight="bold",
            color=STATUS_COLORS.get(status, "#555"),
        )
        y -= 0.025
        reasons = qc.get("reasons") or ["no issues found"]
        y, shown = _pdf_bullets(fig, reasons[:25], y, bottom=PDF_TEXT_BOTTOM)
        if len(reasons) > shown:
            fig.text(0.09, y, f"... and {len(reasons) - shown} more (see report.json)", fontsize=8)
            y -= 0.016
        notes = [str(w) for w in (report.get("meta") or {}).get("warnings") or []][:10]
        if notes and y > PDF_TEXT_BOTTOM + 0.06:
            y -= 0.015
            fig.text(0.07, y, "About the input", fontsize=10, weight="bold", color="#b9770e")
            y -= 0.02
            y, shown = _pdf_bullets(fig, notes, y, bottom=PDF_TEXT_BOTTOM)
            notes = notes[shown:]
        for k, line in enumerate(_provenance_lines(report, rows)):
            fig.text(0.07, 0.115 - 0.012 * k, line, fontsize=6.5, color="#555")
        for k, line in enumerate(textwrap.wrap(DISCLAIMER, 95)):
            fig.text(0.07, 0.05 - 0.016 * k, line, fontsize=8, color="#c0392b", weight="bold")
        pdf.savefig(fig)
        plt.close(fig)
        if notes:  # no room left on the first page: a page of their own, never left out
            fig = plt.figure(figsize=(8.27, 11.69))
            fig.text(0.07, 0.95, "About the input", fontsize=12, weight="bold", color="#b9770e")
            _pdf_bullets(fig, notes, 0.92)
            _pdf_continuation_page(pdf, fig, report)
        if "overlay" in figures:
            img = plt.imread(figures["overlay"])
            fig = plt.figure(figsize=(8.27, 11.69))
            ax = fig.add_axes((0.04, 0.08, 0.92, 0.86))
            ax.imshow(img, interpolation="none")
            ax.axis("off")
            fig.text(0.5, 0.96, "ED / ES segmentation", ha="center", fontsize=12)
            if "disagreement" in (report["qc"].get("metrics") or {}):
                for k, line in enumerate(textwrap.wrap(DISAGREEMENT_HINT, 120)):
                    fig.text(0.05, 0.065 - 0.012 * k, line, fontsize=6.5, color="#555")
            _pdf_continuation_page(pdf, fig, report)
        header, cells = _slice_table(report)
        if cells:
            fig = plt.figure(figsize=(8.27, 11.69))
            fig.text(0.07, 0.95, "Slice-by-slice volumes (mL, base first)", fontsize=12)
            height = min(0.8, 0.025 * (len(cells) + 1))
            _pdf_table(fig, header, cells, (0.07, 0.92 - height, 0.86, height))
            for k, line in enumerate(textwrap.wrap(EXCLUDE_HINT, 100)):
                fig.text(0.07, 0.9 - height - 0.02 * k, line, fontsize=8, color="#555")
            _pdf_continuation_page(pdf, fig, report)
        if curves is not None:  # an A4 page as the others, the plot in its upper half
            fig = plt.figure(figsize=(8.27, 11.69))
            ax = fig.add_axes((0.1, 0.55, 0.85, 0.36))
            _plot_curve(
                ax,
                curves[0],
                curves[1],
                int(report["ed_frame"]),
                int(report["es_frame"]),
                reported_volumes(report),
                _is_pair(report),
            )
            ax.set_title(
                "Ventricular volumes at ED and ES"
                if _is_pair(report)
                else "Ventricular volume over the cardiac cycle"
            )
            hint = CURVE_HINT_PAIR if _is_pair(report) else CURVE_HINT
            for k, line in enumerate(textwrap.wrap(hint, 110)):
                fig.text(0.07, 0.49 - 0.016 * k, line, fontsize=8, color="#555")
            _pdf_continuation_page(pdf, fig, report)
        segs = report.get("wall_segments")
        if segs:
            fig = plt.figure(figsize=(8.27, 11.69))
            fig.text(0.07, 0.95, "LV wall per AHA segment", fontsize=12)
            fig.text(0.07, 0.925, segments_line(segs), fontsize=9)
            _plot_segments(fig, segs, (0.05, 0.59, 0.9, 0.3))
            header, cells = _segment_cells(segs)
            height = 0.022 * (len(cells) + 1)
            _pdf_table(fig, header, cells, (0.07, 0.57 - height, 0.86, height))
            y = 0.54 - height
            for line in textwrap.wrap(segments_method_line(segs), 110):  # as in the HTML
                fig.text(0.07, y, line, fontsize=8.5)
                y -= 0.018
            for line in textwrap.wrap(SEGMENTS_HINT, 110):
                fig.text(0.07, y - 0.006, line, fontsize=7.5, color="#555")
                y -= 0.016
            _pdf_continuation_page(pdf, fig, report)
        elif absent := segments_absent_line(report):  # as in the HTML: say why there is none
            fig = plt.figure(figsize=(8.27, 11.69))
            fig.text(0.07, 0.95, "LV wall per AHA segment", fontsize=12)
            for k, line in enumerate(textwrap.wrap(absent, 100)):
                fig.text(0.07, 0.92 - 0.02 * k, line, fontsize=9)
            _pdf_continuation_page(pdf, fig, report)
    return path


# --- entry point ----------------------------------------------------------------------------------


def write_report(
    outdir: str | Path,
    indices: Mapping[str, float],
    qc: QCResult | Mapping[str, Any] | None,
    curve: Mapping[str, Sequence[float]]
    | Sequence[float]
    | Sequence[Sequence[float]]
    | None = None,
    ed_frame: int = 0,
    es_frame: int = 1,
    images: Mapping[str, tuple[np.ndarray, np.ndarray]] | None = None,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    meta: Mapping[str, Any] | None = None,
    write_pdf: bool = True,
    slices: Sequence[Mapping[str, Any]] | None = None,
    exclusions: Sequence[str] = (),
    disagreement: Mapping[str, np.ndarray | None] | None = None,
    sex: str | None = None,
    suggestion: Mapping[str, Any] | None = None,
    segments: Mapping[str, Any] | None = None,
    flag_ranges: bool = True,
    segments_not_measured: str = "",
) -> dict[str, Path]:
    """Write ``report.json``, ``overlay_ed_es.png``, ``volume_curve.png``,
    ``wall_segments.png``, ``report.html`` and ``report.pdf`` into ``outdir`` (every file
    atomically).

    Args:
        outdir: Output folder (created if needed).
        indices: Output of :func:`~cardioseg.clinical.indices.compute_indices`.
        qc: :class:`~cardioseg.clinical.qc.QCResult` (or its dict), ``None`` if not assessed.
        curve: Volumes per frame: ``{"lv_ml": [...], "rv_ml": [...]}``, a list of LV volumes or
            a list of (LV, RV) pairs. ``None`` skips the curve figure. Where the reported ED/ES
            volumes (the indices) differ from the curve at those frames (``analyze`` chooses
            ED/ES on a per-frame pass and reports a refined one), the plot marks them.
        ed_frame: End-diastolic frame index.
        es_frame: End-systolic frame index.
        images: ``{"ED": (image3d, label3d), "ES": (image3d, label3d)}`` for the overlay
            montage; ``None`` skips it.
        spacing: Voxel size in mm of the images.
        meta: Free-form acquisition/processing information. Identifying keys (patient, names,
            UIDs, paths, ...) are dropped; ``meta["patient_label"]`` is the only patient-related
            text shown.
        write_pdf: Also write ``report.pdf``.
        slices: Slice-by-slice volumes
            (:func:`~cardioseg.clinical.slices.slice_volumes`), shown as a table.
        exclusions: Slices the reader took out (``"ES:8"``, ``"ES:8:LV"``), listed in the
            report.
        disagreement: ``{"ED": map, "ES": map}``, the disagreement of the test-time
            predictions in the shape of the images; with ``images``, shown in yellow in the
            overlay montage.
        sex: ``"M"`` or ``"F"`` (also ``"male"``, ``"female"``) compares the indices with
            that sex's normal ranges; otherwise with the sex-pooled ones.
        suggestion: The research-use ACDC group suggestion
            (:func:`~cardioseg.clinical.diagnosis.suggest`), shown marked as not a diagnosis,
            or why there is none; ``None`` leaves it out.
        segments: LV wall thickness per AHA segment
            (:func:`~cardioseg.clinical.segments.aha_segments`), stored as ``wall_segments``
            and shown as bull's-eye plots and a table; ``None`` leaves it out.
        flag_ranges: Flag the indices against the adult normal ranges; ``False`` (a child)
            shows the ranges without any flag (``normal_ranges_applied`` false).
        segments_not_measured: Without ``segments``, why they could not be measured
            (:func:`~cardioseg.clinical.segments.why_no_segments`): stored as
            ``wall_segments_not_measured`` and said where the segments would be shown.

    Returns:
        Written files by kind: ``json``, ``html`` and, when produced, ``overlay``, ``curve``,
        ``segments`` (``wall_segments.png``), ``pdf``.
    """
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    clean_meta = sanitize_meta(meta)
    patient_label = clean_meta.pop("patient_label", None)
    pair = _is_pair({"meta": clean_meta})
    curves = _curves(curve)
    qc_dict = _qc_dict(qc)
    files: dict[str, Path] = {}
    if images:
        files["overlay"] = _write_montage(
            outdir / "overlay_ed_es.png",
            images,
            spacing,
            ed_frame,
            es_frame,
            disagreement,
            _heat_max(qc_dict),
            slices_to_check(qc_dict),
            pair,
        )
    if curves is not None:
        files["curve"] = _write_curve_png(
            outdir / "volume_curve.png",
            curves[0],
            curves[1],
            ed_frame,
            es_frame,
            reported_volumes(indices),
            pair,
        )
    if segments:  # drawn from the stored (rounded) values, as every view shows them
        segments = _rounded(segments)
        files["segments"] = _write_segments_png(outdir / "wall_segments.png", segments)
    sex = normalize_sex(sex)
    ranges = normal_ranges(sex)
    # every view (JSON, HTML, PDF, CLI, web app) shows and flags the value report.json stores,
    # so that rounding it once more for display cannot make two of them differ
    indices = {k: None if v is None else _clean(round(float(v), 3)) for k, v in indices.items()}
    flags = compare_to_normal(indices, ranges) if flag_ranges else {}
    rows = _table_rows(indices, flags, ranges)
    report: dict[str, Any] = {
        "software": "cardioseg",
        "software_version": _version(),
        "generated_utc": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    if patient_label:
        report["patient_label"] = str(patient_label)
    report.update(indices)
    report.update(
        {
            "ed_frame": int(ed_frame),
            "es_frame": int(es_frame),
            "units": {k: UNITS[k] for k in indices if k in UNITS},
            "normal_flags": flags,
            "normal_ranges_for": SEX_NAMES[sex],
            "normal_ranges_applied": bool(flag_ranges),
            "normal_ranges": {
                k: {
                    "low": ranges[k][0],
                    "high": ranges[k][1],
                    "unit": UNITS.get(k, ""),
                    "source": NORMAL_RANGE_SOURCES.get(k, ""),
                }
                for k in indices
                if k in ranges
            },
            "qc": qc_dict,
            "volume_curve": None if curves is None else {"lv_ml": curves[0], "rv_ml": curves[1]},
            "slices": [dict(r) for r in slices or []],
            "excluded_slices": [str(x) for x in exclusions],
            "meta": clean_meta,
            "disclaimer": DISCLAIMER,
        }
    )
    if suggestion is not None:
        report["diagnosis_suggestion"] = dict(suggestion)
    if segments:
        report["wall_segments"] = {
            **dict(segments),
            "model": "AHA 16-segment (segment 17: presence only, see apex)",
            "note": SEGMENTS_HINT,
        }
    elif segments_not_measured:
        report["wall_segments_not_measured"] = str(segments_not_measured)
    files["json"] = outdir / "report.json"
    files["html"] = outdir / "report.html"
    if write_pdf:
        files["pdf"] = outdir / "report.pdf"
    report["files"] = {k: p.name for k, p in files.items()}
    report = _clean(report)
    with atomic_write(files["json"]) as tmp:
        text = json.dumps(report, indent=2, ensure_ascii=False, allow_nan=False)
        tmp.write_text(text, encoding="utf-8")  # UTF-8 whatever the locale, as it is read
    with atomic_write(files["html"]) as tmp:
        tmp.write_text(_html(report, rows, files), encoding="utf-8")
    if write_pdf:
        import matplotlib

        # text the input or the user brings (a label, file names in notes) is shown as it is:
        # "$...$" would be read as mathematics, or stop the report
        with matplotlib.rc_context({"text.parse_math": False}):
            _write_pdf(files["pdf"], report, rows, files, curves)
    return files
