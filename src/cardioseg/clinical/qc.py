"""Automatic quality control of a segmented ED/ES pair.

Three families of checks, each producing *issues* with a weight in (0, 1]:

* **uncertainty** - mean normalised predictive entropy inside the predicted heart per study
  (calibrated on held-out in-domain studies) and in a band around it per slice, the fraction
  of uncertain voxels (needs probability maps), and the disagreement between the test-time
  predictions around the heart per study (calibrated the same way; needs the disagreement
  map);
* **anatomical plausibility** - myocardium enclosing the LV, RV adjacent to the myocardium,
  fragments (per slice and detached 3D pieces), structures missing between slices, abrupt area
  changes between neighbouring slices, ED/ES consistency and plausible volume ranges;
* **coverage** - apex cut off by the end of the stack, heart cut by the in-plane field of view.

The score combines the issue weights as independent evidence, ``1 - prod(1 - w)``, so it is 0
for a clean result and approaches 1 with more or heavier issues. Issues come in two tiers. *Major*
issues (study-level uncertainty, a myocardium that encloses less than half of the LV, a missing or
far-away structure, implausible volumes, coverage, ...) are scored on their own: the status is
``"fail"`` when their score reaches :data:`FAIL_SCORE` and ``"review"`` when it reaches
:data:`REVIEW_SCORE`. *Minor* notes (:data:`MINOR_KINDS`: one slice's structure split in two,
one uncertain slice, a partial myocardial gap, an abrupt area change) are frequent in good
segmentations too, especially at the base; they only ask for a review together, when their
combined score reaches :data:`MINOR_REVIEW_SCORE`. Otherwise the status is ``"ok"``; the minor
notes are still listed as reasons. The reported score combines both tiers (it ranks studies).

Thresholds are named module constants. The anatomical ones are checked against expert labels by
``benchmarks/qc_reference_check.py`` (80 ACDC + 3 M&Ms ED/ES pairs: all 83 "ok"). The
study-level entropy and disagreement thresholds are the 90th percentiles of held-out ACDC
cross-validation studies; the per-slice entropy threshold is a hand-set initial value.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from cardioseg.clinical.indices import ABSENT_ML, LV, MYO, RV, _voxel_ml, volume_with_gaps
from cardioseg.inference.postprocess import myocardial_enclosure
from cardioseg.preprocessing import slice_axis

# --- status -------------------------------------------------------------------------------------
#: Score at or above which the result needs a human review.
REVIEW_SCORE = 0.25
#: Score of the major issues at or above which the result is considered failed.
FAIL_SCORE = 0.75
#: Combined score of the minor notes at or above which they ask for a review. With 0.25 for
#: every issue, 84 % of the 102 real studies of ``benchmarks/clinical_benchmark.py`` were
#: flagged; with this two-tier rule 50 %, including all of the worst 20 % by Dice (v2 model;
#: with the v3 model 49 %, including 19 of the worst 20; 46 % and 17 of 20 once mirrored LGE
#: stacks were flipped to the canonical view, which moved better LGE results into the worst 20).
MINOR_REVIEW_SCORE = 0.80
#: Issue kinds that are minor notes (see the module docstring).
MINOR_KINDS = frozenset(
    {
        "entropy_slice",
        "enclosure",
        "fragment_slice",
        "fragment_slice_rv",
        "area_jump",
        "es_area",
        "uncalibrated",
    }
)

# --- uncertainty --------------------------------------------------------------------------------
#: Mean normalised entropy (0..1) of the TTA-averaged probabilities inside the predicted heart
#: (worst phase) from which the study needs review: the 90th percentile of the 80 held-out ACDC
#: studies of the 5-fold cross-validation of the shipped (v4) recipe (``runs/acdc_cv_full90``;
#: ``benchmarks/clinical_benchmark.py --calibrate-entropy``, ``qc_heart_entropy``), i.e.
#: calibrated in-domain so that 1 in 10 studies like the training data is sent to review (v3's
#: folds gave 0.154; v4 on the whole image 0.132, in the heart window, the default since
#: 2026-11-30, 0.1331, rounded to 4 decimals like the per-study values). (It replaced a
#: hand-set 0.20 on the entropy of a 5 mm band around the heart, which ranked the real errors
#: less well.)
ENTROPY_HEART_REVIEW = 0.1331
#: ... and from about which it fails.
ENTROPY_HEART_FAIL = 0.35
#: Mean disagreement of the averaged predictions (TTA views x ensemble members: their mutual
#: information, see :meth:`cardioseg.inference.Segmenter.predict_volume`) over the predicted
#: heart and a 5 mm band around it (worst phase) from which the study needs review. Calibrated
#: like :data:`ENTROPY_HEART_REVIEW`: the 90th percentile over the 80 held-out ACDC CV studies
#: (``benchmarks/clinical_benchmark.py --calibrate-entropy``, ``qc_disagreement``).
#: The entropy of the average mixes what is ambiguous in any image (partial volume at edges)
#: with what the model has not learned; the disagreement is the latter, which is what grows
#: on a scanner, protocol or sequence unlike the training data.
DISAGREEMENT_REVIEW = 0.0172
#: ... and from about which it fails (hand-set: about five times the review level).
DISAGREEMENT_FAIL = 0.085
#: Disagreement on one slice (mean over the heart and the 5 mm band, as above) from which the
#: slice is marked ``"disagreement"`` in the per-slice rows, a hint for the reader (it does
#: not change the status): the 95th percentile over the slices of the 80 held-out ACDC CV
#: studies (``benchmarks/clinical_benchmark.py --calibrate-entropy``). At the base it points at
#: the slice whose membership of the ventricle readers decide (``--exclude``).
DISAGREEMENT_SLICE_NOTE = 0.0387
#: Suffix of the file next to a checkpoint (``model.pt`` -> ``model.qc.json``) that holds that
#: model's own calibrated thresholds (:class:`QCCalibration`).
CALIBRATION_SUFFIX = ".qc.json"


@dataclass(frozen=True)
class QCCalibration:
    """A model's uncertainty thresholds, calibrated on held-out in-domain studies.

    The uncertainty of a prediction depends on the model (its width, training, ensemble
    members), so its review levels are calibrated per model: the 90th percentile of the
    study-level heart entropy and disagreement, and the 95th percentile of the per-slice
    disagreement, over held-out studies like the training data
    (``benchmarks/clinical_benchmark.py --calibrate-entropy --write-calibration``). They are saved
    next to the checkpoint (``model.qc.json``, see :func:`calibration_path`), like the data
    fingerprint inside it, so a model's QC is self-contained. The default instance holds the
    shipped default model's values.

    Attributes:
        heart_entropy_review: Study-level heart entropy from which a review is asked.
        disagreement_review: Study-level disagreement from which a review is asked.
        disagreement_slice_note: Per-slice disagreement from which a slice is hinted.
        model: The model the values were calibrated for.
        source: How they were measured.
        calibrated: ``False`` when these are another model's values, used for lack of the
            model's own; the QC then says so.

    Example:
        >>> QCCalibration().heart_entropy_review == ENTROPY_HEART_REVIEW
        True
        >>> QCCalibration.from_dict({"heart_entropy_review": 0.2, "disagreement_review": 0.03,
        ...     "disagreement_slice_note": 0.05, "model": "mine"}).model
        'mine'
    """

    heart_entropy_review: float = ENTROPY_HEART_REVIEW
    disagreement_review: float = DISAGREEMENT_REVIEW
    disagreement_slice_note: float = DISAGREEMENT_SLICE_NOTE
    model: str = "cardioseg_unet2d_acdc_v4 (packaged default)"
    source: str = (
        "80 held-out ACDC studies of the 5-fold cross-validation of the v4 recipe "
        "(benchmarks/clinical_benchmark.py --calibrate-entropy, runs/acdc_cv_full90)"
    )
    calibrated: bool = True

    _THRESHOLDS = ("heart_entropy_review", "disagreement_review", "disagreement_slice_note")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> QCCalibration:
        """From a ``model.qc.json`` dict; ``ValueError`` unless its thresholds are in (0, 1)."""
        values: dict[str, Any] = {}
        for key in cls._THRESHOLDS:
            try:
                value = float(data[key])
            except (KeyError, TypeError, ValueError):
                raise ValueError(f"{key} missing or not a number") from None
            if not 0 < value < 1:
                raise ValueError(f"{key} must be in (0, 1), got {value}")
            values[key] = value
        return cls(**values, model=str(data.get("model", "")), source=str(data.get("source", "")))

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict (what ``model.qc.json`` holds, plus ``calibrated``)."""
        return {k: getattr(self, k) for k in (*self._THRESHOLDS, "model", "source", "calibrated")}


def calibration_path(checkpoints: Sequence[str | Path]) -> Path:
    """Where a model's QC calibration lives: ``model.qc.json`` next to a single checkpoint;
    for an ensemble, next to its first member, named by the members' stems joined with ``+``
    (``a+b.qc.json``), since its disagreement also counts the members' differences.

    Example:
        >>> calibration_path(["w/a.pt", "w/b.pt"]).as_posix()
        'w/a+b.qc.json'
    """
    paths = [Path(c) for c in checkpoints]
    if not paths:
        raise ValueError("no checkpoint given")
    return paths[0].with_name("+".join(p.stem for p in paths) + CALIBRATION_SUFFIX)


def calibration_for(checkpoints: Sequence[str | Path] | None) -> QCCalibration:
    """The QC calibration of a model given by its checkpoint file(s).

    A model with its file (:func:`calibration_path`) gets those values; the packaged default
    model gets :class:`QCCalibration`'s defaults. Anything else gets the default model's values
    marked ``calibrated=False``.

    Raises:
        CardiosegError: A calibration file that cannot be read or is invalid.
    """
    import json

    from cardioseg.errors import CardiosegError
    from cardioseg.models.checkpoint import default_checkpoint_path

    paths = [Path(c) for c in checkpoints or []]
    if paths:
        side = calibration_path(paths)
        if side.is_file():
            try:
                return QCCalibration.from_dict(json.loads(side.read_text()))
            except (OSError, ValueError, AttributeError, TypeError) as exc:
                raise CardiosegError(side, f"invalid QC calibration: {exc}") from None
        if len(paths) == 1 and paths[0].resolve() == default_checkpoint_path().resolve():
            return QCCalibration()
    names = " + ".join(p.stem for p in paths) or "unknown model"
    return replace(QCCalibration(), model=names, calibrated=False)


#: In-plane dilation (mm) of the predicted heart that defines the region for the per-slice
#: entropy statistics.
ENTROPY_DILATION_MM = 5.0
#: Slice mean normalised entropy that flags a single slice.
ENTROPY_SLICE_REVIEW = 0.35
#: Normalised entropy above which a voxel counts as uncertain (reported per slice and study).
UNCERTAIN_VOXEL_ENTROPY = 0.5

# --- anatomy ------------------------------------------------------------------------------------
#: Minimum fraction of the LV border touching myocardium in slices inside the LV.
MYO_ENCLOSURE_MIN = 0.90
#: Same at the first/last LV slice (base with the LV outflow tract, apex). Tried and rejected:
#: the stricter normal limits at the apical end (expert labels enclose >= 97 % there,
#: `benchmarks/qc_reference_check.py`). On the 80 ACDC CV predictions the open apical rings it
#: caught were mostly in good segmentations (median Dice 0.84): flagged studies 49 % -> 64 %.
MYO_ENCLOSURE_MIN_END = 0.50
#: Enclosure below which the slice counts as severely wrong.
MYO_ENCLOSURE_SEVERE = 0.50
#: Largest gap (mm) allowed between the RV and the septal myocardium.
RV_MYO_MAX_GAP_MM = 3.0
#: Minimum area (mm²) of a secondary in-slice component counted as a fragment.
FRAGMENT_MIN_AREA_MM2 = 15.0
#: Minimum volume (mL) of a detached 3D piece of the heart counted as a fragment.
FRAGMENT_MIN_VOLUME_ML = 0.1
#: Distance (mm) from the main heart beyond which a detached piece counts as far away.
FRAGMENT_FAR_MM = 15.0
#: Largest relative area change between neighbouring slices (LV, MYO), apart from base/apex ...
AREA_JUMP_MAX = 0.50
#: ... flagged only when the change is also this large relative to the structure's peak area
#: (near the apex areas legitimately halve from slice to slice, but they are small).
AREA_JUMP_MAX_OF_PEAK = 0.40
#: Same two limits for the RV, whose shape varies more along the long axis.
AREA_JUMP_MAX_RV = 0.60
AREA_JUMP_MAX_OF_PEAK_RV = 0.50
#: Areas (mm²) below this are ignored by the slice-to-slice and ED/ES area checks.
AREA_MIN_MM2 = 50.0
#: Largest relative excess of the ES LV area over the ED LV area in one slice.
ES_AREA_EXCESS_MAX = 0.20
#: Largest relative difference of the myocardial volume between ED and ES (through-plane motion
#: makes up to ~30 % common in expert labels with 10 mm slices).
MYO_VOLUME_DIFF_MAX = 0.35
#: Plausible LV end-diastolic volume (mL).
LVEDV_RANGE_ML = (40.0, 400.0)
#: Plausible LV ejection fraction (%).
LVEF_RANGE_PCT = (10.0, 85.0)
#: RV volume (mL) below which the RV counts as missing.
RV_MIN_ML = ABSENT_ML
#: Largest plausible RV ejection fraction (%). No lower limit besides 0: severe right-heart
#: failure reaches single digits (ACDC patients with dilated cardiomyopathy), and a
#: hypertrophic heart 86 % on its experts' labels (ACDC patient030).
RVEF_MAX_PCT = 90.0

# --- coverage -----------------------------------------------------------------------------------
#: Heart cross-section in the apical end slice, relative to the largest one, that suggests the
#: stack stops before the apex. (Expert-labelled ACDC/M&Ms volumes reach at most ~0.4.) The basal
#: end is not checked: the basal slice normally carries the largest cross-section anyway.
COVERAGE_APEX_AREA_FRACTION = 0.50
#: Number of heart pixels on the in-plane image border that counts as touching it.
BORDER_TOUCH_MIN_PIXELS = 3

#: Weight of each kind of issue in the score.
WEIGHTS: dict[str, float] = {
    "entropy_slice": 0.10,
    "enclosure": 0.30,
    "enclosure_severe": 0.50,
    "rv_not_adjacent": 0.30,
    "fragment_slice": 0.20,
    "fragment_slice_rv": 0.10,
    "fragment_3d": 0.35,
    "fragment_3d_far": 0.45,
    "missing_lv": 0.60,
    "missing_myo": 0.40,
    "missing_rv": 0.20,
    "area_jump": 0.20,
    "es_area": 0.10,
    "myo_volume": 0.30,
    "esv_gt_edv": 0.80,
    "lv_absent": 1.00,
    "lvedv_range": 0.50,
    "lvef_range": 0.50,
    "rv_absent": 0.40,
    "rv_esv_gt_edv": 0.50,
    "slice_gaps": 0.30,
    "rvef_range": 0.50,
    "coverage": 0.30,
    "border": 0.35,
    # a note, not evidence: the model's uncertainty thresholds are another model's
    "uncalibrated": 0.0,
}

NAMES = {LV: "LV", MYO: "myocardium", RV: "RV"}
_SHORT = {LV: "LV", MYO: "MYO", RV: "RV"}
_SQUARE = np.ones((3, 3), bool)


@dataclass
class QCResult:
    """Outcome of :func:`assess_quality`.

    Attributes:
        status: ``"ok"``, ``"review"`` or ``"fail"``.
        score: 0..1, higher means less trustworthy.
        reasons: Human-readable findings, most important first.
        per_slice: One dict per (phase, slice) with areas, checks and flags.
        metrics: Study-level numbers (entropy, volumes, ...).
    """

    status: str
    score: float
    reasons: list[str] = field(default_factory=list)
    per_slice: list[dict] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict."""
        return asdict(self)


@dataclass
class _Issue:
    kind: str
    text: str
    weight: float


class _Collector:
    def __init__(self) -> None:
        self.issues: list[_Issue] = []

    def add(self, kind: str, text: str, weight: float | None = None) -> None:
        self.issues.append(_Issue(kind, text, WEIGHTS[kind] if weight is None else weight))


_SLICES_NAMED = re.compile(
    r"^(ED|ES)(?: slices? (\d+)(?:-(\d+))?:|: detached .* in slices? (\d+)(?:-(\d+))?,)"
)


def _only_about(text: str, excluded: Mapping[str, Sequence[int]]) -> bool:
    """Whether an issue names only slices the reader excluded (``"ES slice 8: ..."``,
    ``"ES slices 7-8: ..."``, ``"ES: detached fragment ... in slice 8, ..."``).

    Example:
        >>> _only_about("ES slice 8: LV missing (present in slices 7 and 9)", {"ES": [8]})
        True
        >>> _only_about("ES slices 7-8: LV area changes by 60 %", {"ES": [8]})
        False
    """
    m = _SLICES_NAMED.match(text)
    if m is None:
        return False
    first = m.group(2) or m.group(4)
    last = m.group(3) or m.group(5) or first
    named = set(range(int(first), int(last) + 1))
    return named <= set(excluded.get(m.group(1), ()))


def _fill_gaps(arr: np.ndarray, gaps: Sequence[int], axis: int) -> np.ndarray:
    """A copy of ``arr`` whose ``gaps`` along ``axis`` repeat the nearest other slice (the
    lower one on a tie).

    Example:
        >>> _fill_gaps(np.array([1, 0, 0, 4]), [1, 2], axis=0).tolist()
        [1, 1, 4, 4]
    """
    out = np.array(arr, copy=True)
    missing = set(gaps)
    present = [k for k in range(arr.shape[axis]) if k not in missing]
    for k in gaps:
        near = min(present, key=lambda j: (abs(j - k), j))
        out[(slice(None),) * axis + (k,)] = arr[(slice(None),) * axis + (near,)]
    return out


def _combine(issues: Sequence[_Issue]) -> float:
    """Issue weights combined as independent evidence, ``1 - prod(1 - w)``."""
    score = 1.0 - float(np.prod([1.0 - min(1.0, max(0.0, i.weight)) for i in issues]))
    return round(min(1.0, max(0.0, score)), 4)


def _pct(x: float) -> str:
    return f"{100 * x:.0f} %"


def _slices(label: np.ndarray, axis: int) -> np.ndarray:
    return np.moveaxis(np.asarray(label), axis, 0)


def _dilate2d(mask: np.ndarray, radius_mm: float, pix_mm: float) -> np.ndarray:
    """Dilate a (Z, A, B) mask in-plane only by about ``radius_mm``."""
    it = max(1, int(round(radius_mm / pix_mm)))
    structure = np.zeros((3, 3, 3), bool)
    structure[1] = _SQUARE
    return ndimage.binary_dilation(mask, structure=structure, iterations=it)


def _normalise_probabilities(probabilities: Any, phases: Sequence[str]) -> dict[str, np.ndarray]:
    if probabilities is None:
        return {}
    if isinstance(probabilities, Mapping):
        return {k: np.asarray(v) for k, v in probabilities.items() if v is not None and k in phases}
    if isinstance(probabilities, list | tuple):
        pairs = zip(phases, probabilities, strict=False)
        return {p: np.asarray(v) for p, v in pairs if v is not None}
    return {phases[0]: np.asarray(probabilities)}


def _entropy(prob: np.ndarray) -> np.ndarray:
    """Normalised (0..1) entropy over the first axis."""
    n = prob.shape[0]
    p = np.clip(prob.astype(np.float32, copy=False), 1e-7, 1.0)
    h = -(p * np.log(p)).sum(axis=0)
    return h / math.log(n) if n > 1 else np.zeros_like(h)


def _phase_checks(
    phase: str,
    lab: np.ndarray,
    pix_mm: tuple[float, float],
    dz_mm: float,
    prob: np.ndarray | None,
    out: _Collector,
    spread: np.ndarray | None = None,
    slice_note: float = DISAGREEMENT_SLICE_NOTE,
    gaps: frozenset[int] = frozenset(),
) -> tuple[list[dict], dict[str, Any]]:
    """Per-slice and 3D checks of one phase; ``lab`` is (Z, A, B) with the slice axis first.
    ``gaps``: slices without images (given as a copy of a neighbour, so that the 3D checks see
    one heart): no area change is measured across them, and their rows say ``no_images``."""
    nz = lab.shape[0]
    px_area = pix_mm[0] * pix_mm[1]
    areas = {s: np.count_nonzero(lab == s, axis=(1, 2)) * px_area for s in (LV, MYO, RV)}
    rows: list[dict] = [
        {
            "phase": phase,
            "slice": int(z),
            "lv_mm2": float(areas[LV][z]),
            "myo_mm2": float(areas[MYO][z]),
            "rv_mm2": float(areas[RV][z]),
            "myo_enclosure": None,
            "rv_touches_myo": None,
            "fragments": {},
            "mean_entropy": None,
            "uncertain_fraction": None,
            "disagreement": None,
            "flags": [],
        }
        for z in range(nz)
    ]
    metrics: dict[str, Any] = {}
    lv_slices = np.flatnonzero(areas[LV] > 0)
    rv_iter = max(1, int(round(RV_MYO_MAX_GAP_MM / min(pix_mm))))

    for z in range(nz):
        sl = lab[z]
        row = rows[z]
        lv = sl == LV
        if lv.any():
            frac = myocardial_enclosure(sl)
            row["myo_enclosure"] = round(frac, 4)
            is_end = z in (lv_slices[0], lv_slices[-1])
            limit = MYO_ENCLOSURE_MIN_END if is_end else MYO_ENCLOSURE_MIN
            if frac < limit:
                severe = frac < MYO_ENCLOSURE_SEVERE and not is_end
                out.add(
                    "enclosure_severe" if severe else "enclosure",
                    f"{phase} slice {z}: myocardium does not enclose the LV "
                    f"({_pct(frac)} of border)",
                )
                row["flags"].append("myo_enclosure")
        rv = sl == RV
        myo = sl == MYO
        if rv.any() and myo.any():
            near = ndimage.binary_dilation(rv, structure=_SQUARE, iterations=rv_iter)
            touches = bool((near & myo).any())
            row["rv_touches_myo"] = touches
            if not touches:
                out.add(
                    "rv_not_adjacent",
                    f"{phase} slice {z}: RV is not adjacent to the septal myocardium",
                )
                row["flags"].append("rv_not_adjacent")
        for s in (LV, MYO, RV):
            mask = sl == s
            if not mask.any():
                continue
            comp, n = ndimage.label(mask, structure=_SQUARE)
            sizes = np.sort(np.bincount(comp.ravel())[1:])[::-1] * px_area
            n_sig = int(1 + np.count_nonzero(sizes[1:] >= FRAGMENT_MIN_AREA_MM2))
            row["fragments"][_SHORT[s]] = n_sig
            if n_sig > 1:
                out.add(
                    "fragment_slice_rv" if s == RV else "fragment_slice",
                    f"{phase} slice {z}: {NAMES[s]} is split into {n_sig} pieces",
                )
                row["flags"].append(f"fragments_{_SHORT[s]}")

    # structures missing between slices where they are present on both sides
    for s, kind in ((LV, "missing_lv"), (MYO, "missing_myo"), (RV, "missing_rv")):
        present = np.flatnonzero(areas[s] > 0)
        if present.size < 2:
            continue
        for z in range(present[0] + 1, present[-1]):
            if areas[s][z] == 0:
                below = present[present < z][-1]
                above = present[present > z][0]
                out.add(
                    kind,
                    f"{phase} slice {z}: {NAMES[s]} missing (present in slices {below} and "
                    f"{above})",
                )
                rows[z]["flags"].append(f"missing_{_SHORT[s]}")

    # abrupt area changes between neighbouring slices, base and apex excluded
    for s in (LV, MYO, RV):
        a = areas[s]
        present = np.flatnonzero(a > 0)
        if present.size < 4:
            continue
        limit = AREA_JUMP_MAX_RV if s == RV else AREA_JUMP_MAX
        limit_peak = AREA_JUMP_MAX_OF_PEAK_RV if s == RV else AREA_JUMP_MAX_OF_PEAK
        peak = float(a.max())
        for z in range(present[0] + 1, present[-1] - 1):
            a0, a1 = float(a[z]), float(a[z + 1])
            if a0 == 0 or a1 == 0 or max(a0, a1) < AREA_MIN_MM2 or {z, z + 1} & gaps:
                continue
            rel = abs(a1 - a0) / max(a0, a1)
            if rel > limit and abs(a1 - a0) > limit_peak * peak:
                out.add(
                    "area_jump",
                    f"{phase} slices {z}-{z + 1}: {NAMES[s]} area changes by {_pct(rel)} "
                    f"({a0:.0f} to {a1:.0f} mm²)",
                )
                rows[z]["flags"].append(f"area_jump_{_SHORT[s]}")

    # detached 3D pieces of the heart
    fg = lab > 0
    if fg.any():
        comp, n = ndimage.label(fg, structure=np.ones((3, 3, 3), bool))
        if n > 1:
            counts = np.bincount(comp.ravel())
            counts[0] = 0
            main = int(np.argmax(counts))
            voxel_ml = px_area * dz_mm / 1000.0
            dist = None
            for c in range(1, n + 1):
                vol = counts[c] * voxel_ml
                if c == main or vol < FRAGMENT_MIN_VOLUME_ML:
                    continue
                if dist is None:
                    dist = ndimage.distance_transform_edt(
                        comp != main, sampling=(dz_mm, pix_mm[0], pix_mm[1])
                    )
                d = float(dist[comp == c].min())
                zs = np.unique(np.nonzero(comp == c)[0])
                where = f"slice {zs[0]}" if zs.size == 1 else f"slices {zs[0]}-{zs[-1]}"
                out.add(
                    "fragment_3d_far" if d >= FRAGMENT_FAR_MM else "fragment_3d",
                    f"{phase}: detached fragment of {vol:.2f} mL in {where}, {d:.0f} mm from "
                    "the heart",
                )
                for z in zs:
                    rows[int(z)]["flags"].append("detached_fragment")
        metrics["n_components"] = int(n)

    # uncertainty: inside the predicted heart, and in it plus a band around it (``roi``)
    roi = (
        _dilate2d(fg, ENTROPY_DILATION_MM, min(pix_mm))
        if prob is not None or spread is not None
        else None
    )
    if prob is not None:
        h = _entropy(prob)
        if fg.any():  # inside the predicted heart only (no boundary band)
            metrics["heart_entropy"] = round(float(h[fg].mean()), 4)
        if roi.any():
            h_roi = h[roi]
            metrics["mean_entropy"] = round(float(h_roi.mean()), 4)
            metrics["uncertain_fraction"] = round(
                float(np.mean(h_roi > UNCERTAIN_VOXEL_ENTROPY)), 4
            )
            for z in range(nz):
                m = roi[z]
                if not m.any():
                    continue
                hz = h[z][m]
                mean_h = float(hz.mean())
                rows[z]["mean_entropy"] = round(mean_h, 4)
                rows[z]["uncertain_fraction"] = round(
                    float(np.mean(hz > UNCERTAIN_VOXEL_ENTROPY)), 4
                )
                if mean_h > ENTROPY_SLICE_REVIEW:
                    out.add(
                        "entropy_slice",
                        f"{phase} slice {z}: high uncertainty (the model is unsure of its "
                        f"labels here: score {mean_h:.2f}, noted above "
                        f"{ENTROPY_SLICE_REVIEW:.2f})",
                    )
                    rows[z]["flags"].append("uncertain")
    if spread is not None and roi.any():
        metrics["disagreement"] = round(float(spread[roi].mean()), 4)
        for z in range(nz):
            if roi[z].any():
                value = round(float(spread[z][roi[z]].mean()), 4)
                rows[z]["disagreement"] = value
                if value >= slice_note:
                    rows[z]["flags"].append("disagreement")
    metrics["areas_mm2"] = {_SHORT[s]: [float(v) for v in areas[s]] for s in areas}
    for z in gaps:  # nothing was measured there
        if 0 <= z < nz:
            rows[z] = {**rows[z], "lv_mm2": 0.0, "myo_mm2": 0.0, "rv_mm2": 0.0}
            rows[z].update({k: None for k in ("myo_enclosure", "rv_touches_myo", "mean_entropy")})
            rows[z].update(
                uncertain_fraction=None, disagreement=None, fragments={}, flags=["no_images"]
            )
    return rows, metrics


def uncertainty_issue_weight(value: float, review: float, fail: float) -> float | None:
    """Weight of a study-level uncertainty issue (heart entropy, disagreement): ``None`` below
    its review level, 0.3 at it, rising linearly to 0.8 at its fail level.

    Example:
        >>> uncertainty_issue_weight(0.01, 0.02, 0.1), uncertainty_issue_weight(0.2, 0.02, 0.1)
        (None, 0.8)
    """
    if not value >= review:  # NaN too
        return None
    return 0.3 + 0.5 * min(1.0, (value - review) / max(fail - review, 1e-6))


def status_from_issues(issues: Sequence[tuple[str, float]]) -> tuple[str, float, float]:
    """The two-tier status rule (module docstring) for issues given as ``(kind, weight)``
    (e.g. the ``metrics["issues"]`` of a :class:`QCResult`, with some kinds left out to see
    what they contribute). Returns ``(status, major score, minor score)``.

    Example:
        >>> status_from_issues([("enclosure", 0.3), ("entropy_study", 0.3)])
        ('review', 0.3, 0.3)
    """
    major = _combine([_Issue(k, "", w) for k, w in issues if k not in MINOR_KINDS])
    minor = _combine([_Issue(k, "", w) for k, w in issues if k in MINOR_KINDS])
    if major >= FAIL_SCORE:
        status = "fail"
    elif major >= REVIEW_SCORE or minor >= MINOR_REVIEW_SCORE:
        status = "review"
    else:
        status = "ok"
    return status, major, minor


def slices_to_check(qc: QCResult | Mapping[str, Any]) -> list[str]:
    """The slices where the test-time predictions disagree (per-slice flag ``disagreement``),
    as ``"PHASE:SLICE"`` in the form ``--exclude`` takes, ED first, then by slice.

    Example:
        >>> slices_to_check({"per_slice": [{"phase": "ES", "slice": 8, "flags": ["disagreement"]}]})
        ['ES:8']
    """
    rows = qc.per_slice if isinstance(qc, QCResult) else (qc.get("per_slice") or [])
    marked = {
        (str(r["phase"]), int(r["slice"])) for r in rows if "disagreement" in (r.get("flags") or [])
    }
    return [f"{phase}:{z}" for phase, z in sorted(marked)]


def _border_slices(lab: np.ndarray) -> list[int]:
    fg = lab > 0
    edge = np.zeros(fg.shape[1:], bool)
    edge[0, :] = edge[-1, :] = edge[:, 0] = edge[:, -1] = True
    counts = np.count_nonzero(fg & edge[None], axis=(1, 2))
    return [int(z) for z in np.flatnonzero(counts >= BORDER_TOUCH_MIN_PIXELS)]


def assess_quality(
    ed_label: np.ndarray,
    es_label: np.ndarray | None,
    spacing: Sequence[float],
    probabilities: Mapping[str, np.ndarray | None]
    | Sequence[np.ndarray | None]
    | np.ndarray
    | None = None,
    disagreement: Mapping[str, np.ndarray | None]
    | Sequence[np.ndarray | None]
    | np.ndarray
    | None = None,
    calibration: QCCalibration | None = None,
    excluded: Mapping[str, Sequence[int]] | None = None,
    counted: Mapping[str, np.ndarray] | None = None,
    irregular_stack: str = "",
    missing_slices: Sequence[int] = (),
    slice_weights: Sequence[float] | None = None,
) -> QCResult:
    """Quality control of an ED/ES segmentation pair.

    Args:
        ed_label: Canonical 3D labels at end-diastole (native geometry).
        es_label: Canonical 3D labels at end-systole, or ``None`` for a single volume.
        spacing: Voxel size in mm (the slice axis is found with :func:`slice_axis`).
        probabilities: Softmax maps of shape (4, *label.shape) for uncertainty: a mapping
            ``{"ED": p, "ES": p}``, a sequence ``(p_ed, p_es)`` or one array for ED.
        disagreement: Per-voxel disagreement of the averaged predictions, in the shape of
            the labels (the third item of
            :meth:`~cardioseg.inference.Segmenter.predict_volume` with
            ``return_disagreement``), given like ``probabilities``.
        calibration: The model's uncertainty thresholds (:func:`calibration_for`; ``None``:
            the shipped default model's). With ``calibrated=False`` a note in the reasons says
            that they were calibrated for another model (it does not change the status).
        excluded: Slices the reader took out whole, per phase (``{"ES": [8]}``): what the
            checks find on them alone is not held against the segmentation (the reader has
            judged them). A slice of which only one structure was taken out is not listed: its
            other structures still count. The labels given are the segmentation as
            produced, so that taking a slice out does not open a gap or split the heart in two.
        counted: The labels the indices come from (after the reader's exclusions), per phase:
            the volume checks (ranges, ESV > EDV, myocardial volume) use them.
        irregular_stack: The DICOM loader's note on a stack whose slice gaps are irregular
            (:attr:`~cardioseg.io.dicom.CineMeta.irregular_gaps`, ``""`` when regular). The
            labels' slice positions assume a regular stack, so it asks for review.
        missing_slices: Slices where the stack has no images (the loader's
            :attr:`~cardioseg.io.dicom.CineMeta.missing_slices`, left empty in the labels):
            they ask for review, since the volumes interpolate them. The checks judge each as
            a copy of its nearest slice, so that a gap neither splits the heart into
            "fragments" nor reads as missing structures, and set it aside like a slice the
            reader took out; the volume checks interpolate it as the reported volumes do.
        slice_weights: Disc thickness per slice of an unevenly spaced stack
            (:func:`~cardioseg.clinical.indices.slice_weights`), for the volume checks.

    Returns:
        :class:`QCResult`.

    Example:
        >>> qc = assess_quality(ed, es, (1.25, 1.25, 8.0))  # doctest: +SKIP
        >>> qc.status, qc.reasons[:1]  # doctest: +SKIP
        ('review', ['ED slice 7: myocardium does not enclose the LV (62 % of border)'])
    """
    ed_label = np.asarray(ed_label)
    if ed_label.ndim != 3:
        raise ValueError(f"expected 3D labels, got shape {ed_label.shape}")
    phases = {"ED": ed_label}
    if es_label is not None:
        es_label = np.asarray(es_label)
        if es_label.shape != ed_label.shape:
            raise ValueError(f"ES shape {es_label.shape} differs from ED {ed_label.shape}")
        phases["ES"] = es_label
    _voxel_ml(spacing)  # three positive numbers, or a clear ValueError
    spacing = tuple(float(s) for s in spacing[:3])
    axis = slice_axis(spacing, ed_label.shape)
    pix = tuple(s for i, s in enumerate(spacing) if i != axis)
    dz = spacing[axis]
    probs = _normalise_probabilities(probabilities, list(phases))
    for name, p in probs.items():
        if p.ndim != 4 or p.shape[1:] != ed_label.shape:
            raise ValueError(
                f"{name} probabilities have shape {p.shape}, expected (C, *{ed_label.shape})"
            )

    spreads = _normalise_probabilities(disagreement, list(phases))
    calibration = QCCalibration() if calibration is None else calibration
    for name, d in spreads.items():
        if d.shape != ed_label.shape:
            raise ValueError(f"{name} disagreement has shape {d.shape}, expected {ed_label.shape}")
    gaps = sorted({int(k) for k in missing_slices})
    if gaps:  # judged as if each gap held its nearest slice; set aside like a reader's exclusion
        phases = {n: _fill_gaps(lab, gaps, axis) for n, lab in phases.items()}
        probs = {n: _fill_gaps(p, gaps, axis + 1) for n, p in probs.items()}
        spreads = {n: _fill_gaps(d, gaps, axis) for n, d in spreads.items()}
        excluded = {n: [*(excluded or {}).get(n, ()), *gaps] for n in phases}

    out = _Collector()
    per_slice: list[dict] = []
    metrics: dict[str, Any] = {"slice_axis": axis}
    moved = {name: _slices(lab, axis) for name, lab in phases.items()}
    for name, lab in moved.items():
        prob = np.moveaxis(probs[name], axis + 1, 1) if name in probs else None
        spread = _slices(spreads[name], axis) if name in spreads else None
        rows, m = _phase_checks(
            name,
            lab,
            pix,
            dz,
            prob,  # type: ignore[arg-type]
            out,
            spread,
            calibration.disagreement_slice_note,
            frozenset(gaps),
        )
        per_slice.extend(rows)
        metrics[name] = m

    # study-level uncertainty
    ents = [metrics[n]["mean_entropy"] for n in phases if "mean_entropy" in metrics[n]]
    if ents:
        worst = max(ents)
        metrics["mean_entropy"] = worst
    # the heart entropy, and the disagreement of the test-time predictions: each is a major
    # issue from its in-domain review level, graded up to its fail level (worst phase counts)
    entropy_review = calibration.heart_entropy_review
    spread_review = calibration.disagreement_review
    for key, kind, review, fail, text in (
        (
            "heart_entropy",
            "entropy_study",
            entropy_review,
            ENTROPY_HEART_FAIL,
            "high segmentation uncertainty: the model is unsure of its labels inside the "
            "heart (score {value:.2f}; only 1 in 10 studies like its training data score "
            "above {review:.2f})",
        ),
        (
            "disagreement",
            "disagreement_study",
            spread_review,
            DISAGREEMENT_FAIL,
            "unstable segmentation: the model's outlines disagree when the images are "
            "slightly rotated or flipped (score {value:.3f} around the heart; only 1 in 10 "
            "studies like its training data score above {review:.3f}): the images may be "
            "unlike the training data",
        ),
    ):
        values = [metrics[n][key] for n in phases if key in metrics[n]]
        if not values:
            continue
        value = metrics[key] = max(values)
        w = uncertainty_issue_weight(value, review, fail)
        if w is not None:
            out.issues.append(_Issue(kind, text.format(value=value, review=review), w))
    metrics["calibration"] = calibration.to_dict()
    if not calibration.calibrated and (ents or spreads):
        out.add(
            "uncalibrated",
            f"the uncertainty thresholds were calibrated for {QCCalibration().model}, not for "
            f"this model ({calibration.model}): read the uncertainty findings as indicative",
        )

    if len(missing_slices):
        many = len(missing_slices) > 1
        out.add(
            "slice_gaps",
            f"no images at slice{'s' if many else ''} "
            f"{', '.join(map(str, missing_slices))} (a gap in the stack): the volumes "
            f"interpolate {'their areas' if many else 'its area'} from the neighbouring slices",
        )
    if irregular_stack:
        out.add(
            "slice_gaps",
            f"{irregular_stack}: the volumes weight each slice by its distance to its "
            "neighbours; the masks' slice positions assume the median spacing",
        )

    # volumes: of the labels the indices come from
    counted = counted or {}
    ed_label = np.asarray(counted.get("ED", ed_label))
    if es_label is not None:
        es_label = np.asarray(counted.get("ES", es_label))

    def vol(label: np.ndarray, value: int) -> float:
        """Volume (mL) as the reported indices count it: gaps interpolated, uneven slices
        weighted."""
        return volume_with_gaps(label, spacing, value, gaps, slice_weights)

    lv_edv = vol(ed_label, LV)
    metrics["lv_edv_ml"] = lv_edv
    if lv_edv == 0:
        out.add("lv_absent", "no LV found at end-diastole")
    elif not LVEDV_RANGE_ML[0] <= lv_edv <= LVEDV_RANGE_ML[1]:
        out.add(
            "lvedv_range",
            f"LV end-diastolic volume {lv_edv:.1f} mL outside the plausible range "
            f"{LVEDV_RANGE_ML[0]:.0f}-{LVEDV_RANGE_ML[1]:.0f} mL",
        )
    rv_edv = vol(ed_label, RV)
    if rv_edv < RV_MIN_ML:
        out.add("rv_absent", "RV not found (or nearly empty) at end-diastole")
    lv_esv = vol(es_label, LV) if es_label is not None else None
    if es_label is not None:
        rv_esv = vol(es_label, RV)
        if lv_edv > 0 and lv_esv == 0:
            out.add("lv_absent", "no LV found at end-systole")
        if rv_esv < RV_MIN_ML <= rv_edv:
            out.add("rv_absent", "RV not found (or nearly empty) at end-systole")
        elif rv_edv >= RV_MIN_ML:
            metrics["rv_ef_pct"] = rv_ef = (rv_edv - rv_esv) / rv_edv * 100
            if rv_esv > rv_edv:
                out.add(
                    "rv_esv_gt_edv",
                    f"RV end-systolic volume ({rv_esv:.0f} mL) exceeds end-diastolic volume "
                    f"({rv_edv:.0f} mL)",
                )
            elif rv_ef > RVEF_MAX_PCT:
                out.add(
                    "rvef_range",
                    f"RV ejection fraction {rv_ef:.1f} % above the plausible {RVEF_MAX_PCT:.0f} %",
                )
    if es_label is not None and lv_esv is not None and lv_edv > 0:
        ef = (lv_edv - lv_esv) / lv_edv * 100
        metrics["lv_esv_ml"] = lv_esv
        metrics["lv_ef_pct"] = ef
        if lv_esv > lv_edv:
            out.add(
                "esv_gt_edv",
                f"LV end-systolic volume ({lv_esv:.0f} mL) exceeds end-diastolic volume "
                f"({lv_edv:.0f} mL): ED/ES frames swapped or wrong",
            )
        elif not LVEF_RANGE_PCT[0] <= ef <= LVEF_RANGE_PCT[1]:
            out.add(
                "lvef_range",
                f"LV ejection fraction {ef:.1f} % outside the plausible range "
                f"{LVEF_RANGE_PCT[0]:.0f}-{LVEF_RANGE_PCT[1]:.0f} %",
            )
        myo_ed = vol(ed_label, MYO)
        myo_es = vol(es_label, MYO)
        if max(myo_ed, myo_es) > 0:
            diff = abs(myo_ed - myo_es) / max(myo_ed, myo_es)
            metrics["myo_volume_diff"] = diff
            if diff > MYO_VOLUME_DIFF_MAX:
                out.add(
                    "myo_volume",
                    f"myocardial volume differs by {_pct(diff)} between ED ({myo_ed:.0f} mL) "
                    f"and ES ({myo_es:.0f} mL)",
                )
        a_ed = np.count_nonzero(moved["ED"] == LV, axis=(1, 2)) * pix[0] * pix[1]
        a_es = np.count_nonzero(moved["ES"] == LV, axis=(1, 2)) * pix[0] * pix[1]
        bad = np.flatnonzero((a_ed >= AREA_MIN_MM2) & (a_es > a_ed * (1 + ES_AREA_EXCESS_MAX)))
        if bad.size:
            out.add(
                "es_area",
                f"LV area larger at ES than at ED in slice{'s' if bad.size > 1 else ''} "
                f"{', '.join(map(str, bad))} (e.g. slice {bad[0]}: {a_es[bad[0]]:.0f} vs "
                f"{a_ed[bad[0]]:.0f} mm²)",
                min(0.4, WEIGHTS["es_area"] * bad.size),
            )
            for row in per_slice:
                if row["phase"] == "ES" and row["slice"] in bad:
                    row["flags"].append("es_area_gt_ed")

    # coverage of the apex (ED: largest heart); the apex is the end with the smaller heart
    heart = np.count_nonzero(moved["ED"] > 0, axis=(1, 2)).astype(float)
    if heart.max() > 0 and heart.size > 2:
        extent = heart[np.flatnonzero(heart)[0] : np.flatnonzero(heart)[-1] + 1]
        third = max(1, extent.size // 3)
        apex = heart.size - 1 if extent[:third].mean() >= extent[-third:].mean() else 0
        frac = heart[apex] / heart.max()
        metrics["apex_slice"] = int(apex)
        if frac >= COVERAGE_APEX_AREA_FRACTION:
            out.add(
                "coverage",
                f"heart reaches the {'last' if apex else 'first'} (apical) slice {apex} with "
                f"{_pct(frac)} of its largest cross-section: the apex may not be covered",
            )
    # in-plane field of view
    touching = {name: _border_slices(lab) for name, lab in moved.items()}
    touching = {k: v for k, v in touching.items() if v}
    if touching:
        parts = "; ".join(f"{k} slices {', '.join(map(str, v))}" for k, v in touching.items())
        out.add("border", f"heart touches the image border ({parts}): field of view may cut it")
        for row in per_slice:
            if row["slice"] in touching.get(row["phase"], []):
                row["flags"].append("touches_border")

    if excluded:
        out.issues = [i for i in out.issues if not _only_about(i.text, excluded)]
        for row in per_slice:
            if row["slice"] in set(excluded.get(row["phase"], ())):
                row["excluded"] = True
                row["flags"] = [f for f in row["flags"] if f == "no_images"]
    score = _combine(out.issues)
    status, metrics["major_score"], metrics["minor_score"] = status_from_issues(
        [(i.kind, i.weight) for i in out.issues]
    )
    ordered = sorted(out.issues, key=lambda i: -i.weight)
    metrics["issues"] = [{"kind": i.kind, "weight": i.weight} for i in ordered]
    return QCResult(status, score, [i.text for i in ordered], per_slice, metrics)
