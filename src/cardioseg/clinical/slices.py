"""Slice-by-slice volumes and the reader's basal-slice decisions.

Which short-axis slice is the last one of the ventricle at the base is the most frequent point
of disagreement between readers, above all at end-systole, when the base has moved towards the
apex and the most basal slice may show the atrium. Clinical software therefore shows the
volumes slice by slice and lets the reader take a slice out of a phase. This module does both:
:func:`slice_volumes` lists the volume of each structure per slice and phase, and
:func:`apply_exclusions` removes what a reader excluded (``"ES:8"``: every structure on slice 8
at end-systole; ``"ES:8:LV"``: the LV blood pool and myocardium only; ``"ES:8:RV"``: the RV).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from cardioseg.clinical.indices import LV, MYO, RV, _voxel_ml

#: Labels removed by each structure keyword of an exclusion.
EXCLUDED_LABELS: dict[str, tuple[int, ...]] = {"all": (LV, MYO, RV), "LV": (LV, MYO), "RV": (RV,)}
PHASES = ("ED", "ES")


@dataclass(frozen=True)
class SliceExclusion:
    """One slice taken out of one phase by the reader.

    Args:
        phase: ``"ED"`` or ``"ES"``.
        slice: Slice index along the study's slice axis, as stored (0 = first slice of the
            mask files).
        structures: ``"all"``, ``"LV"`` (blood pool and myocardium) or ``"RV"``.
    """

    phase: str
    slice: int
    structures: str = "all"

    @classmethod
    def parse(cls, text: str) -> SliceExclusion:
        """Read ``PHASE:SLICE`` or ``PHASE:SLICE:STRUCTURES`` (case-insensitive phase and names).

        Raises:
            ValueError: With a message naming the expected form.

        Example:
            >>> SliceExclusion.parse("es:8:lv")
            SliceExclusion(phase='ES', slice=8, structures='LV')
        """
        parts = [p.strip() for p in str(text).split(":")]
        form = "expected PHASE:SLICE[:LV|RV|all], e.g. ES:8 or ES:8:LV"
        if len(parts) not in (2, 3) or parts[0].upper() not in PHASES:
            raise ValueError(f"exclusion {text!r}: {form}")
        try:
            index = int(parts[1])
        except ValueError:
            raise ValueError(f"exclusion {text!r}: slice must be a whole number; {form}") from None
        if index < 0:
            raise ValueError(f"exclusion {text!r}: slice must be 0 or more")
        structures = parts[2] if len(parts) == 3 else "all"
        names = {k.lower(): k for k in EXCLUDED_LABELS}
        if structures.lower() not in names:
            raise ValueError(f"exclusion {text!r}: structures must be LV, RV or all")
        return cls(parts[0].upper(), index, names[structures.lower()])

    def check(self, n_slices: int) -> None:
        """Raise ``ValueError`` when the slice is not in a stack of ``n_slices``."""
        if not 0 <= self.slice < n_slices:
            raise ValueError(f"exclusion {self}: slice out of range 0..{n_slices - 1} of the stack")

    def __str__(self) -> str:
        return f"{self.phase}:{self.slice}" + (
            "" if self.structures == "all" else f":{self.structures}"
        )


def apply_exclusions(
    labels: Mapping[str, np.ndarray],
    exclusions: Iterable[SliceExclusion | str],
    slice_axis: int = 2,
) -> dict[str, np.ndarray]:
    """Copies of the ED/ES label maps with the excluded slices' structures set to background.

    Args:
        labels: ``{"ED": label3d, "ES": label3d}`` (canonical labels).
        exclusions: :class:`SliceExclusion` objects or their text form.
        slice_axis: Axis of the short-axis slices.

    Raises:
        ValueError: A slice index outside the stack, or a phase not in ``labels``.

    Example:
        >>> ed = np.ones((2, 2, 3), np.uint8); es = ed.copy()
        >>> out = apply_exclusions({"ED": ed, "ES": es}, ["ES:2"])
        >>> int(out["ES"].sum()), int(out["ED"].sum())
        (8, 12)
    """
    out = {k: np.asarray(v).copy() for k, v in labels.items()}
    for ex in exclusions:
        ex = ex if isinstance(ex, SliceExclusion) else SliceExclusion.parse(ex)
        if ex.phase not in out:
            raise ValueError(f"exclusion {ex}: no {ex.phase} labels")
        moved = np.moveaxis(out[ex.phase], slice_axis, 0)  # a view: edits reach out[...]
        ex.check(moved.shape[0])
        sl = moved[ex.slice]
        sl[np.isin(sl, EXCLUDED_LABELS[ex.structures])] = 0
    return out


def slice_volumes(
    ed_label: np.ndarray,
    es_label: np.ndarray,
    spacing: Sequence[float],
    slice_axis: int = 2,
    include: Iterable[int] = (),
    weights: Sequence[float] | None = None,
) -> list[dict[str, float | int | str]]:
    """Volume of each structure on each slice at ED and ES, base first.

    Only slices with a label in either phase, or named in ``include`` (e.g. the slices a reader
    excluded, so that they stay listed), are listed. The basal end is the end of the ED
    LV stack with the larger heart (as the post-processing's basal-slice rule decides); the
    first and last listed LV slices are marked ``"base"`` and ``"apex"``.

    Args:
        ed_label: Canonical 3D labels at end-diastole.
        es_label: Canonical 3D labels at end-systole (same shape).
        spacing: Voxel size in mm.
        slice_axis: Axis of the short-axis slices.
        include: Slices listed even when empty.
        weights: Each slice's disc thickness in multiples of the slice spacing, for an
            unevenly spaced stack (:func:`~cardioseg.clinical.indices.slice_weights`).

    Returns:
        One dict per slice: ``slice`` (stored index), ``position`` (``"base"``, ``"apex"`` or
        ``""``) and ``lv_ed_ml, lv_es_ml, myo_ed_ml, myo_es_ml, rv_ed_ml, rv_es_ml``. Their sums
        are the volumes of :func:`~cardioseg.clinical.indices.compute_indices`.

    Example:
        >>> ed = np.zeros((4, 4, 3), np.uint8); ed[:, :, 0] = 1; ed[:2, :, 1] = 1
        >>> rows = slice_volumes(ed, ed, (10, 10, 10))
        >>> [(r["slice"], r["position"], r["lv_ed_ml"]) for r in rows]
        [(0, 'base', 16.0), (1, 'apex', 8.0)]
    """
    from cardioseg.inference.postprocess import basal_end

    ed = np.moveaxis(np.asarray(ed_label), slice_axis, 0)
    es = np.moveaxis(np.asarray(es_label), slice_axis, 0)
    if ed.shape != es.shape:
        raise ValueError(f"ED shape {ed.shape} differs from ES shape {es.shape}")
    n = ed.shape[0]
    voxel = _voxel_ml(spacing) * (np.ones(n) if weights is None else np.asarray(weights, float))
    counts = {
        (name, phase): (arr == value).reshape(n, -1).sum(1) * voxel
        for name, value in (("lv", LV), ("myo", MYO), ("rv", RV))
        for phase, arr in (("ed", ed), ("es", es))
    }
    extra = {int(z) for z in include}
    present = [z for z in range(n) if z in extra or (ed[z] > 0).any() or (es[z] > 0).any()]
    base = basal_end(np.moveaxis(ed, 0, 2), 2)  # an end of the ED LV stack, or None
    if base is not None and base == np.flatnonzero(counts["lv", "ed"])[-1]:
        present = present[::-1]  # the base is the high end: list from the top
    lv_slices = [z for z in present if counts["lv", "ed"][z] > 0 or counts["lv", "es"][z] > 0]
    rows: list[dict[str, float | int | str]] = []
    for z in present:
        position = ""
        if lv_slices and z == lv_slices[0]:
            position = "base"
        elif lv_slices and z == lv_slices[-1]:
            position = "apex"
        row: dict[str, float | int | str] = {"slice": int(z), "position": position}
        for name in ("lv", "myo", "rv"):
            for phase in ("ed", "es"):
                row[f"{name}_{phase}_ml"] = round(float(counts[name, phase][z]), 3)
        rows.append(row)
    return rows
