"""LV wall thickness and systolic thickening per segment of the AHA 16-segment model.

The American Heart Association's standard segmentation (Cerqueira et al., Circulation 2002)
divides the LV into basal, mid-cavity and apical thirds of the short-axis stack; the basal and
mid thirds into six 60° segments, the apical third into four 90° ones. The septum is found from
the right ventricle, as the AHA and SCMR reporting recommend ("the attachment of the right
ventricular wall to the left ventricle"): on each slice, the myocardium touching the RV blood
pool (within :data:`CONTACT_DILATION` pixels) is seen from the LV centre as an arc; the largest
arc, bridging gaps up to :data:`GAP_DEG`, ends at the anterior and inferior RV insertion points
(:func:`insertion_points`). Their bisector is the middle of the septum
(:func:`septum_bisector`), the boundary between the anteroseptal and inferoseptal segments;
the segments keep their fixed 60° (90° apical) widths from there. Slices without insertion
points (no RV contact, or contact all round) take the stack's mean direction.
``aha_segments``'s ``septum`` record says, per phase, how many slices had which.

Segment 17, the apical cap beyond the cavity, is only detected (:func:`apical_cap`:
myocardium-only slices past the last slice with a cavity, their number and myocardial volume),
not measured: a short-axis slice through the cap cuts the curved wall obliquely, with no cavity
to give a centre, directions or an in-plane thickness that would be the wall's.
:data:`SEGMENT_NAMES` stays 1–16.

Which side of the septum is anterior follows from the stored layout: in the canonical
short-axis view (ACDC, the M&Ms vendors, Sunnybrook's GE DICOM) the anterior wall lies 90°
counter-clockwise from the septum in the (first, second) in-plane axis frame, in a mirrored view
(:func:`cardioseg.preprocessing.geometry.is_mirrored_view`, e.g. the MS-CMRSeg LGE files) 90°
clockwise. ``benchmarks/wall_segments_check.py`` checks this against the patient's anterior
direction on every labelled file with a real orientation.

Thickness is the local thickness along the myocardium's centre line
(:func:`cardioseg.clinical.features.thickness_points`); a segment's value is the median of its
samples on each slice of its third, averaged over those slices. The thirds are the ED stack's:
at ES each slice keeps its ED third (an apical slice whose cavity closes in systole drops out
rather than moving the others up a third). Research use only.

Canonical labels: 1 LV blood pool, 2 myocardium, 3 RV blood pool.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
from scipy import ndimage as ndi

from cardioseg.clinical.features import thickness_points
from cardioseg.inference.postprocess import basal_end
from cardioseg.preprocessing import slice_axis
from cardioseg.preprocessing.geometry import unit_axes

LV, MYO, RV = 1, 2, 3

#: AHA segment names by number (1–16).
SEGMENT_NAMES: dict[int, str] = {
    1: "basal anterior",
    2: "basal anteroseptal",
    3: "basal inferoseptal",
    4: "basal inferior",
    5: "basal inferolateral",
    6: "basal anterolateral",
    7: "mid anterior",
    8: "mid anteroseptal",
    9: "mid inferoseptal",
    10: "mid inferior",
    11: "mid inferolateral",
    12: "mid anterolateral",
    13: "apical anterior",
    14: "apical septal",
    15: "apical inferior",
    16: "apical lateral",
}

#: Fewest myocardium pixels touching the RV for a slice to give its own septal direction.
MIN_CONTACT_PIXELS = 5

#: Myocardium within this many pixels (4-connected dilation of the RV blood pool) touches the RV.
CONTACT_DILATION = 2

#: Widest gap (degrees around the LV centre) bridged within one RV contact arc: trabeculae or a
#: one-pixel break in the RV label should not split the septum's contact in two.
GAP_DEG = 30.0


def _wrap(deg: np.ndarray) -> np.ndarray:
    """Angles in degrees wrapped into [-180, 180)."""
    return (np.asarray(deg, dtype=float) + 180.0) % 360.0 - 180.0


def segment_of(delta_deg: np.ndarray | float, level: str) -> np.ndarray:
    """AHA segment numbers of angles measured from the middle of the septum.

    Args:
        delta_deg: Angle in degrees from the septal direction, positive towards the anterior
            wall.
        level: ``"basal"``, ``"mid"`` or ``"apical"``.

    Returns:
        Segment numbers (int array of the shape of ``delta_deg``).

    Example:
        >>> segment_of([10.0, 90.0, 150.0, -150.0, -90.0, -10.0], "basal").tolist()
        [2, 1, 6, 5, 4, 3]
        >>> segment_of([0.0, 90.0, 180.0, -90.0], "apical").tolist()
        [14, 13, 16, 15]
    """
    d = _wrap(np.asarray(delta_deg, dtype=float))
    if level == "apical":
        # septal [-45, 45), anterior [45, 135), lateral beyond ±135, inferior [-135, -45)
        k = np.floor((d + 45.0) / 90.0).astype(int) % 4  # 0 septal, 1 anterior, 2 lat, 3 inf
        return np.array([14, 13, 16, 15])[k]
    if level not in ("basal", "mid"):
        raise ValueError(f"level must be basal, mid or apical, got {level!r}")
    # 60° sectors counted anteriorly from the septum's middle:
    # [0,60) anteroseptal, [60,120) anterior, [120,180) anterolateral,
    # [-180,-120) inferolateral, [-120,-60) inferior, [-60,0) inferoseptal
    k = np.floor(d / 60.0).astype(int) % 6
    first = 1 if level == "basal" else 7
    order = np.array([2, 1, 6, 5, 4, 3]) - 1 + first
    return order[k]


def _levels(n: int) -> list[str]:
    """Basal, mid and apical thirds of ``n`` slices ordered base first (extra slices basal)."""
    parts = np.array_split(np.arange(n), 3)
    return [
        name for name, part in zip(("basal", "mid", "apical"), parts, strict=True) for _ in part
    ]


def lv_centre(sl: np.ndarray, inplane_spacing: Sequence[float]) -> np.ndarray:
    """Centre of the LV blood pool of one slice in mm along its two axes."""
    return np.array(ndi.center_of_mass(sl == LV)) * np.asarray(inplane_spacing[:2], dtype=float)


class InsertionPoints(NamedTuple):
    """The two ends of a slice's RV contact arc around the LV centre: the RV insertion points.

    The arc runs from ``first_deg`` to ``last_deg`` in the direction of increasing angle
    (``atan2(axis 1, axis 0)`` in mm, wrapped into [-180, 180)); it may cross ±180°.
    """

    first_deg: float
    last_deg: float

    @property
    def width_deg(self) -> float:
        """Angular extent of the arc in degrees (0–360)."""
        return float((self.last_deg - self.first_deg) % 360.0)

    @property
    def bisector_deg(self) -> float:
        """The arc's middle: the middle of the septum."""
        return float(_wrap(self.first_deg + self.width_deg / 2.0))

    def anterior_inferior(self, mirrored: bool = False) -> tuple[float, float]:
        """The (anterior, inferior) insertion points: in the canonical view the anterior one is
        the arc's end at the larger angle, in a mirrored view the other end."""
        if mirrored:
            return self.first_deg, self.last_deg
        return self.last_deg, self.first_deg


def _contact_angles(sl: np.ndarray, inplane_spacing: Sequence[float]) -> np.ndarray | None:
    """Angles (degrees) around the LV centre of the myocardium pixels next to the RV blood pool
    (within :data:`CONTACT_DILATION` pixels); ``None`` without LV or enough contact."""
    rv = sl == RV
    if not rv.any() or not (sl == LV).any():
        return None
    contact = ndi.binary_dilation(rv, iterations=CONTACT_DILATION) & (sl == MYO)
    if int(contact.sum()) < MIN_CONTACT_PIXELS:
        return None
    pts = np.argwhere(contact) * np.asarray(inplane_spacing[:2], dtype=float)
    pts = pts - lv_centre(sl, inplane_spacing)
    return np.degrees(np.arctan2(pts[:, 1], pts[:, 0]))


def largest_arc(angles_deg: np.ndarray, gap_deg: float = GAP_DEG) -> InsertionPoints | None:
    """The widest run of ``angles_deg`` around the circle without a gap over ``gap_deg``.

    Args:
        angles_deg: Angles in degrees (any range; the circle wraps at ±180°).
        gap_deg: Widest gap between neighbouring angles still bridged within one arc.

    Returns:
        The arc's ends, or ``None`` for no angles or angles all round (no gap over
        ``gap_deg``: the arc has no ends).

    Example:
        >>> largest_arc(np.array([170.0, 175.0, -178.0, -170.0, 20.0]))
        InsertionPoints(first_deg=170.0, last_deg=-170.0)
    """
    a = np.sort(_wrap(np.asarray(angles_deg, dtype=float).ravel()))
    if a.size == 0:
        return None
    gaps = np.diff(np.append(a, a[0] + 360.0))  # gap after each angle; the last one wraps
    widest = int(np.argmax(gaps))
    if gaps[widest] <= gap_deg:
        return None
    b = np.roll(a, -(widest + 1))  # start just after the widest gap: no wrap inside
    b = b[0] + (b - b[0]) % 360.0
    arcs = np.split(b, np.flatnonzero(np.diff(b) > gap_deg) + 1)
    best = max(arcs, key=lambda arc: arc[-1] - arc[0])
    return InsertionPoints(float(_wrap(best[0])), float(_wrap(best[-1])))


def insertion_points(
    sl: np.ndarray, inplane_spacing: Sequence[float], gap_deg: float = GAP_DEG
) -> InsertionPoints | None:
    """The RV insertion points of one slice: the ends of the largest arc of myocardium in
    contact with the RV blood pool, seen from the LV centre (gaps up to ``gap_deg`` bridged).

    Returns:
        The arc, or ``None`` without LV, without enough contact (:data:`MIN_CONTACT_PIXELS`) or
        with contact all round.

    The contact band reaches about :data:`CONTACT_DILATION` pixels past the RV's own ends, so
    each insertion point lies that far outside (about 4° on a 20-pixel epicardial radius); the
    bisector is not moved by it.

    Example:
        >>> sl = np.zeros((40, 40), np.uint8)
        >>> sl[10:30, 10:30] = 2; sl[15:25, 15:25] = 1; sl[15:25, 30:38] = 3  # RV at +axis 1
        >>> p = insertion_points(sl, (1.0, 1.0))
        >>> round(p.bisector_deg), p.width_deg > 45
        (90, True)
    """
    angles = _contact_angles(sl, inplane_spacing)
    return None if angles is None else largest_arc(angles, gap_deg)


def septum_bisector(sl: np.ndarray, inplane_spacing: Sequence[float]) -> float | None:
    """Direction (degrees, ``atan2(axis 1, axis 0)`` in mm) from the LV centre to the middle of
    the septum: the bisector of the two RV insertion points (:func:`insertion_points`);
    ``None`` where they are not found.

    Example:
        >>> sl = np.zeros((40, 40), np.uint8)
        >>> sl[10:30, 10:30] = 2; sl[15:25, 15:25] = 1; sl[15:25, 30:38] = 3  # RV at +axis 1
        >>> round(septum_bisector(sl, (1.0, 1.0)))
        90
    """
    points = insertion_points(sl, inplane_spacing)
    return None if points is None else points.bisector_deg


def _circular_mean_deg(radians: Sequence[float] | np.ndarray) -> float:
    """The mean direction (degrees) of angles given in radians."""
    ang = np.asarray(radians, dtype=float)
    return float(np.degrees(np.arctan2(np.sin(ang).mean(), np.cos(ang).mean())))


def patient_anterior_angle(affine: np.ndarray, axis: int) -> float | None:
    """The patient's anterior direction (RAS +y) in the slice plane, as an angle in degrees
    (``atan2(axis 1, axis 0)`` over the two in-plane array axes), or ``None`` when the affine
    carries no orientation (identity, as in ACDC) or the slices are parallel to it.

    Used to check the layout rule of :func:`aha_segments` on real data
    (``benchmarks/wall_segments_check.py``).

    Example:
        >>> patient_anterior_angle(np.diag([-1.0, -1.0, 1.0, 1.0]), 2)  # LPS-stored rows, cols
        -90.0
        >>> patient_anterior_angle(np.eye(4), 2) is None
        True
    """
    rot = unit_axes(affine)
    if rot is None or np.allclose(rot, np.eye(3), atol=1e-3):
        return None
    inplane = [i for i in range(3) if i != axis]
    a0, a1 = rot[1, inplane[0]], rot[1, inplane[1]]
    if math.hypot(a0, a1) < 0.1:
        return None
    return float(np.degrees(np.arctan2(a1, a0)))


def _moved(label: np.ndarray, spacing: Sequence[float]) -> tuple[np.ndarray, tuple[float, ...]]:
    """The labels with the slice axis first, and the in-plane voxel size (mm)."""
    lab = np.asarray(label)
    axis = slice_axis(tuple(float(s) for s in spacing[:3]), lab.shape)
    sp = tuple(float(spacing[i]) for i in range(3) if i != axis)
    return np.moveaxis(lab, axis, 0), sp


def _lv_slices(moved: np.ndarray) -> list[int]:
    """Slices (axis 0) with LV blood pool and myocardium."""
    return [z for z in range(moved.shape[0]) if (moved[z] == LV).any() and (moved[z] == MYO).any()]


def _base_first(moved: np.ndarray, zs: list[int]) -> list[int]:
    """``zs`` ordered from the base (the end of the LV stack with the larger heart)."""
    b = basal_end(moved, 0)
    return zs if b is None or abs(b - zs[0]) <= abs(b - zs[-1]) else zs[::-1]


class _Phase(NamedTuple):
    """One phase's per-segment slice medians, thickest point, slice thirds and septum record."""

    per_segment: dict[int, list[float]]
    peak: dict[str, Any]
    levels: dict[int, str]
    septum: dict[str, Any]


def _septa(
    moved: np.ndarray, sp: Sequence[float], zs: list[int], mirrored: bool
) -> tuple[dict[int, float | None], dict[str, Any]]:
    """Each slice's septal direction from its insertion points (``None`` where there are none)
    and the record of how the septum was placed (counts, the insertion points per slice)."""
    septum: dict[int, float | None] = {}
    found = []
    for z in zs:
        points = insertion_points(moved[z], sp)
        septum[z] = None if points is None else points.bisector_deg
        if points is not None:
            anterior, inferior = points.anterior_inferior(mirrored)
            found.append(
                {
                    "slice": int(z),
                    "anterior_deg": round(anterior, 1),
                    "inferior_deg": round(inferior, 1),
                    "septum_deg": round(points.bisector_deg, 1),
                }
            )
    record = {"insertion_points": len(found), "stack_mean": len(zs) - len(found), "slices": found}
    return septum, record


def _phase_segments(
    label: np.ndarray,
    spacing: Sequence[float],
    mirrored: bool,
    levels: dict[int, str] | None = None,
) -> _Phase:
    """Per-segment median thickness of each slice of one phase, where its maximum lies, each
    slice's third and how its septum was placed. ``levels`` (the ED phase's) assigns the
    thirds; without it the slices with LV and myocardium are ordered from the base and split
    into thirds."""
    moved, sp = _moved(label, spacing)
    zs = _lv_slices(moved)
    per_segment: dict[int, list[float]] = {}
    peak: dict[str, Any] = {"mm": math.nan, "segment": None, "slice": None}
    if levels is None:
        if len(zs) < 3:
            return _Phase(per_segment, peak, {}, {})
        order = _base_first(moved, zs)
        levels = dict(zip(order, _levels(len(order)), strict=True))
    # a slice keeps its ED third at ES (the thirds are anatomical); ES-only slices are left out
    zs = [z for z in zs if z in levels]
    septum, record = _septa(moved, sp, zs, mirrored)
    known = [np.radians(a) for a in septum.values() if a is not None]
    if not known:  # no RV anywhere: the septum cannot be placed, no slice is measured
        why = "no RV touching the myocardium" if zs else "no slice with LV cavity and myocardium"
        record = {**record, "stack_mean": 0, "not_measured": why}
        return _Phase(per_segment, peak, levels, record)
    mean_dir = _circular_mean_deg(known)
    sense = -1.0 if mirrored else 1.0
    for z in zs:
        coords, values = thickness_points(moved[z] == MYO, sp)
        if values.size == 0:
            continue
        pts = coords * np.asarray(sp) - lv_centre(moved[z], sp)
        ang = np.degrees(np.arctan2(pts[:, 1], pts[:, 0]))
        ref = septum[z] if septum[z] is not None else mean_dir
        seg = segment_of(sense * (ang - ref), levels[z])
        for s in np.unique(seg):
            per_segment.setdefault(int(s), []).append(float(np.median(values[seg == s])))
        # the thickest point; a tie goes to the lower slice index, as in wall_thickness
        k = int(np.argmax(values))
        best = peak["slice"] is None or values[k] > peak["mm"]
        if best or (values[k] == peak["mm"] and z < peak["slice"]):
            peak = {"mm": float(values[k]), "segment": int(seg[k]), "slice": int(z)}
    return _Phase(per_segment, peak, levels, record)


def apical_cap(label: np.ndarray, spacing: Sequence[float]) -> dict[str, Any]:
    """Segment 17, the apical cap: slices with myocardium but no LV cavity beyond the most
    apical slice with a cavity.

    Counted outwards from that slice while each next slice holds myocardium and no LV blood
    pool. Only its presence and myocardial volume are reported: a short-axis slice through
    the cap cuts the curved wall obliquely, with no cavity to give a centre or a direction,
    so an in-plane thickness there would not be the wall's.

    Args:
        label: Canonical 3D labels of one phase.
        spacing: Voxel size in mm of the three axes.

    Returns:
        ``present`` (bool), ``slices`` (int) and ``myocardium_ml`` (their myocardium, mL).

    Example:
        >>> lab = np.zeros((9, 9, 4), np.uint8)
        >>> lab[2:7, 2:7, :3] = 2; lab[3:6, 3:6, :3] = 1; lab[2:7, 2:7, 0] = 2  # slice 0: cap
        >>> lab[1:8, 1:8, 2] = 2; lab[3:6, 3:6, 2] = 1  # slice 2 larger: the base
        >>> apical_cap(lab, (1.0, 1.0, 8.0))
        {'present': True, 'slices': 1, 'myocardium_ml': 0.2}
    """
    moved, _ = _moved(label, spacing)
    zs = _lv_slices(moved)
    cap: list[int] = []
    if len(zs) >= 2:
        order = _base_first(moved, zs)
        step = 1 if order[-1] > order[0] else -1
        z = order[-1] + step
        while 0 <= z < moved.shape[0] and (moved[z] == MYO).any() and not (moved[z] == LV).any():
            cap.append(z)
            z += step
    voxel_ml = float(np.prod([float(v) for v in spacing[:3]])) / 1000.0
    myo = sum(int((moved[z] == MYO).sum()) for z in cap) * voxel_ml
    return {"present": bool(cap), "slices": len(cap), "myocardium_ml": round(myo, 3)}


def aha_segments(
    ed_label: np.ndarray,
    es_label: np.ndarray | None,
    spacing: Sequence[float],
    mirrored: bool = False,
) -> dict[str, Any] | None:
    """Wall thickness at ED (and ES, with the systolic thickening) per AHA segment.

    Args:
        ed_label: Canonical 3D labels at end-diastole.
        es_label: Canonical 3D labels at end-systole, or ``None`` for ED only.
        spacing: Voxel size in mm of the three axes.
        mirrored: The slices are stored mirrored against the canonical view
            (:func:`~cardioseg.preprocessing.geometry.is_mirrored_view`).

    Returns:
        ``None`` when fewer than three slices hold LV and myocardium or no RV touches the
        myocardium (the septum cannot be placed). Otherwise ``segments``: one dict per AHA
        segment 1–16 with ``segment``, ``name``, ``ed_mm`` and, with ES labels, ``es_mm`` and
        ``thickening_pct`` (``(ES − ED) / ED × 100``); a segment without samples has ``None``.
        ``max_ed``: the thickest point at ED, ``{"mm", "segment", "name", "slice"}``.
        ``septum``: per phase (``ed``, ``es``), how many slices had their septum placed from
        their RV insertion points and how many took the stack's mean direction, with each
        slice's insertion points (``slice``, ``anterior_deg``, ``inferior_deg``,
        ``septum_deg``: ``atan2(axis 1, axis 0)`` in mm around the LV centre, the slice axis
        left out); a phase whose septum could not be placed on any slice (no RV touching the
        myocardium, or no slice with LV cavity and myocardium in the ED thirds: the ES values
        are then ``None``) has no slice counted and ``not_measured``, the reason.
        ``apex``: segment 17 at ED (:func:`apical_cap`).

    Example:
        >>> import numpy as np
        >>> x, y = np.mgrid[:64, :64]
        >>> d = np.hypot(x - 31.7, y - 31.7)
        >>> sl = np.zeros((64, 64), np.uint8)
        >>> sl[np.hypot(x - 31.7, y - 9.7) < 8] = 3  # RV towards the second axis' origin
        >>> sl[(d >= 10) & (d < 14)] = 2; sl[d < 10] = 1
        >>> lab = np.repeat(sl[:, :, None], 6, axis=2)
        >>> out = aha_segments(lab, None, (1.0, 1.0, 8.0))
        >>> [round(s["ed_mm"]) for s in out["segments"]][:6]
        [4, 4, 4, 4, 4, 4]
        >>> {k: v for k, v in out["septum"]["ed"].items() if k != "slices"}
        {'insertion_points': 6, 'stack_mean': 0}
    """
    ed = _phase_segments(ed_label, spacing, mirrored)
    if not ed.per_segment:
        return None
    es_seg: dict[int, list[float]] = {}
    septum = {"ed": ed.septum}
    if es_label is not None:  # each slice keeps its ED third: thickening compares like with like
        es = _phase_segments(es_label, spacing, mirrored, ed.levels)
        es_seg, septum["es"] = es.per_segment, es.septum
    rows = [_segment_row(s, ed.per_segment, es_seg, es_label is not None) for s in SEGMENT_NAMES]
    peak = dict(ed.peak)
    peak["name"] = SEGMENT_NAMES.get(peak["segment"]) if peak["segment"] else None
    return {
        "segments": rows,
        "max_ed": peak,
        "septum": septum,
        "apex": apical_cap(ed_label, spacing),
    }


def why_no_segments(ed_label: np.ndarray, spacing: Sequence[float], mirrored: bool = False) -> str:
    """Why :func:`aha_segments` gives no segments for this ED label map, in words for a report
    ("" when it does give them).

    Example:
        >>> why_no_segments(np.zeros((8, 8, 4), np.uint8), (1.0, 1.0, 8.0))
        'fewer than 3 slices with LV cavity and myocardium at ED (0)'
    """
    ed = _phase_segments(ed_label, spacing, mirrored)
    if ed.per_segment:
        return ""
    if not ed.levels:
        moved, _ = _moved(ed_label, spacing)
        n = len(_lv_slices(moved))
        return f"fewer than 3 slices with LV cavity and myocardium at ED ({n})"
    why = ed.septum.get("not_measured") or "no wall thickness could be measured"
    if why.startswith("no RV"):
        why += " at ED, so the septum could not be placed"
    return why


def _segment_row(
    s: int, ed_seg: dict[int, list[float]], es_seg: dict[int, list[float]], with_es: bool
) -> dict[str, Any]:
    """One segment's row: ED thickness and, with ES, ES thickness and thickening."""
    ed_mm = float(np.mean(ed_seg[s])) if s in ed_seg else None
    row: dict[str, Any] = {"segment": s, "name": SEGMENT_NAMES[s], "ed_mm": ed_mm}
    if with_es:
        es_mm = float(np.mean(es_seg[s])) if s in es_seg else None
        row["es_mm"] = es_mm
        row["thickening_pct"] = (
            (es_mm - ed_mm) / ed_mm * 100.0 if ed_mm and es_mm is not None else None
        )
    return row
