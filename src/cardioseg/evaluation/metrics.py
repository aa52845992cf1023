"""Segmentation metrics in the MONAI style: functional ``compute_*`` plus an accumulator.

All metrics are computed in 3D (or 2D) per structure and are spacing-aware (distances in mm).

Conventions for empty masks (structure absent from prediction and/or reference):

=========================  =====  =======  =========  ======  ==================
case                       dice   jaccard  precision  recall  hd / hd95 / assd
=========================  =====  =======  =========  ======  ==================
both empty                 1.0    1.0      1.0        1.0     0.0
pred empty, ref not        0.0    0.0      nan        0.0     nan
ref empty, pred not        0.0    0.0      0.0        nan     nan
=========================  =====  =======  =========  ======  ==================
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from numbers import Real
from pathlib import Path

import numpy as np
from scipy import ndimage

from cardioseg.io.nifti import atomic_write
from cardioseg.labels import LABELS, STRUCTURES, check_canonical_labels

NAN = float("nan")


def _check_spacing(spacing: Sequence[float], ndim: int) -> tuple[float, ...]:
    if spacing is None or isinstance(spacing, (str, bytes)) or not hasattr(spacing, "__len__"):
        raise ValueError(
            f"spacing must be the voxel size in mm, one value per axis, got {spacing!r} "
            "(read_image gives it as properties.spacing)"
        )
    sp = tuple(float(s) for s in spacing)
    if len(sp) != ndim:
        raise ValueError(f"spacing {sp} has {len(sp)} values for a {ndim}D array")
    if not all(math.isfinite(s) and s > 0 for s in sp):
        raise ValueError(f"spacing must be finite and positive, got {sp}")
    return sp


def compute_overlap(pred: np.ndarray, ref: np.ndarray, label: int) -> dict[str, float]:
    """Dice, Jaccard, precision and recall of one label (see the module table for empty masks).

    Args:
        pred: Predicted integer label array.
        ref: Reference integer label array of the same shape.
        label: Label value to compare.

    Returns:
        ``{"dice", "jaccard", "precision", "recall"}`` as floats.

    Example:
        >>> compute_overlap(np.array([1, 1, 0, 0]), np.array([1, 1, 1, 0]), 1)["dice"]
        0.8
    """
    pred, ref = np.asarray(pred), np.asarray(ref)
    if pred.shape != ref.shape:
        raise ValueError(f"shape mismatch: pred {pred.shape} vs ref {ref.shape}")
    p, r = pred == label, ref == label
    tp = int(np.count_nonzero(p & r))
    n_p, n_r = int(np.count_nonzero(p)), int(np.count_nonzero(r))
    if n_p == 0 and n_r == 0:
        return {"dice": 1.0, "jaccard": 1.0, "precision": 1.0, "recall": 1.0}
    return {
        "dice": 2.0 * tp / (n_p + n_r),
        "jaccard": tp / (n_p + n_r - tp),
        "precision": tp / n_p if n_p else NAN,
        "recall": tp / n_r if n_r else NAN,
    }


def _surface(mask: np.ndarray) -> np.ndarray:
    """Mask voxels with a face-connected background neighbour; outside the array is background."""
    structure = ndimage.generate_binary_structure(mask.ndim, 1)
    return mask & ~ndimage.binary_erosion(mask, structure=structure, border_value=0)


def compute_surface_distances(
    pred_mask: np.ndarray, ref_mask: np.ndarray, spacing: Sequence[float]
) -> dict[str, float]:
    """Hausdorff distance, HD95 and ASSD between two binary masks, in the units of ``spacing``.

    Surfaces are the mask voxels with a face-connected (6-neighbourhood in 3D) background
    neighbour, voxels on the array border included. Directed distances go from each surface voxel
    of one mask to the nearest surface voxel of the other (Euclidean, anisotropic ``spacing``).

    * ``hd``: maximum of both directed distance sets.
    * ``hd95``: ``max(p95(pred -> ref), p95(ref -> pred))`` (MONAI ``compute_hausdorff_distance``
      with ``percentile=95``; linear-interpolated percentiles).
    * ``assd``: mean of the pooled directed distances of both directions (MONAI
      ``compute_average_surface_distance(symmetric=True)``).

    Both masks empty gives 0.0 for all three; exactly one empty gives nan.

    Args:
        pred_mask: Binary (or boolean-castable) 2D or 3D array.
        ref_mask: Array of the same shape.
        spacing: Voxel size per axis, e.g. ``(1.25, 1.25, 10.0)`` mm.

    Returns:
        ``{"hd", "hd95", "assd"}`` as floats.

    Example:
        >>> a = np.zeros((1, 1, 2), bool); b = a.copy(); a[0, 0, 0] = b[0, 0, 1] = True
        >>> compute_surface_distances(a, b, (1.0, 1.0, 10.0))["hd"]
        10.0
    """
    p, r = np.asarray(pred_mask).astype(bool), np.asarray(ref_mask).astype(bool)
    if p.shape != r.shape:
        raise ValueError(f"shape mismatch: pred {p.shape} vs ref {r.shape}")
    sp = _check_spacing(spacing, p.ndim)
    has_p, has_r = bool(p.any()), bool(r.any())
    if not has_p and not has_r:
        return {"hd": 0.0, "hd95": 0.0, "assd": 0.0}
    if not (has_p and has_r):
        return {"hd": NAN, "hd95": NAN, "assd": NAN}
    # Crop to the union's bounding box plus one voxel: exact, and much cheaper than the full array.
    idx = np.nonzero(p | r)
    box = tuple(slice(max(int(i.min()) - 1, 0), int(i.max()) + 2) for i in idx)
    sp_, sr = _surface(p[box]), _surface(r[box])
    d_pr = ndimage.distance_transform_edt(~sr, sampling=sp)[sp_]
    d_rp = ndimage.distance_transform_edt(~sp_, sampling=sp)[sr]
    both = np.concatenate([d_pr, d_rp])
    return {
        "hd": float(both.max()),
        "hd95": float(max(np.percentile(d_pr, 95), np.percentile(d_rp, 95))),
        "assd": float(both.mean()),
    }


def compute_metrics(
    pred: np.ndarray,
    ref: np.ndarray,
    spacing: Sequence[float],
    labels: Mapping[str, int] | None = None,
) -> dict[str, float]:
    """All metrics per structure, flattened to ``{structure}_{metric}`` keys, plus ``mean_dice``.

    Per structure: ``dice``, ``jaccard``, ``precision``, ``recall``, ``hd``, ``hd95``, ``assd``
    (mm), ``vol_pred_ml`` and ``vol_ref_ml`` (voxel count x voxel volume / 1000).

    Args:
        pred: Predicted canonical label array (2D or 3D).
        ref: Reference label array of the same shape.
        spacing: Voxel size in mm per axis (positive).
        labels: Structure name to label value; defaults to ``{"LV": 1, "MYO": 2, "RV": 3}``.

    Returns:
        Flat ``dict[str, float]``.

    Raises:
        ValueError: On shape mismatch, missing or non-positive spacing, or (with the default
            ``labels``) values other than the canonical 0..3 (remap a dataset's own labels
            with ``cardioseg.io.read_label(path, label_map=...)``).

    Example:
        >>> lab = np.zeros((4, 4, 2), np.uint8); lab[1:3, 1:3] = 1
        >>> m = compute_metrics(lab, lab, (2.0, 2.0, 5.0))
        >>> m["LV_dice"], m["LV_hd95"], m["LV_vol_ref_ml"], m["RV_dice"]
        (1.0, 0.0, 0.16, 1.0)
    """
    pred, ref = np.asarray(pred), np.asarray(ref)
    if pred.shape != ref.shape:
        raise ValueError(f"shape mismatch: pred {pred.shape} vs ref {ref.shape}")
    sp = _check_spacing(spacing, pred.ndim)
    if labels is None:
        check_canonical_labels(pred, "pred")
        check_canonical_labels(ref, "ref")
        labels = {s: LABELS[s] for s in STRUCTURES}
    voxel_ml = float(np.prod(sp)) / 1000.0
    out: dict[str, float] = {}
    for name, value in labels.items():
        m = compute_overlap(pred, ref, value)
        m.update(compute_surface_distances(pred == value, ref == value, sp))
        m["vol_pred_ml"] = int(np.count_nonzero(pred == value)) * voxel_ml
        m["vol_ref_ml"] = int(np.count_nonzero(ref == value)) * voxel_ml
        out.update({f"{name}_{k}": float(v) for k, v in m.items()})
    dices = [out[f"{name}_dice"] for name in labels]
    out["mean_dice"] = float(np.mean(dices)) if dices else NAN
    return out


def _is_number(v: object) -> bool:
    return isinstance(v, Real) and not isinstance(v, bool)


def _mean_std(values: list[float]) -> tuple[float, float, int]:
    """nan-aware mean, sample standard deviation (ddof=1) and count of the finite values; the
    mean is nan without a finite value, the std with fewer than two (no spread from one)."""
    a = np.asarray(values, dtype=float)
    a = a[np.isfinite(a)]
    mean = float(a.mean()) if a.size else NAN
    return mean, float(a.std(ddof=1)) if a.size > 1 else NAN, int(a.size)


def _group_name(v: object) -> str:
    return "(none)" if v is None or v == "" else str(v)


class MetricAccumulator:
    """Collects per-case metric dicts with metadata; writes CSV and Markdown summaries.

    Example:
        >>> acc = MetricAccumulator()
        >>> acc.add("p1_ED", {"LV_dice": 0.9}, phase="ED")
        >>> acc.add("p1_ES", {"LV_dice": 0.7}, phase="ES")
        >>> [(g["phase"], g["n"], g["LV_dice_mean"]) for g in acc.summary(["phase"])]
        [('ED', 1, 0.9), ('ES', 1, 0.7)]
    """

    def __init__(self) -> None:
        self._rows: list[dict] = []
        self._meta_keys: list[str] = []
        self._metric_keys: list[str] = []

    def __len__(self) -> int:
        return len(self._rows)

    def add(self, case_id: str, metrics: Mapping[str, float], **meta: object) -> None:
        """Record one case; ``meta`` (dataset, vendor, centre, group, phase...) is for grouping."""
        clash = ({"case_id"} & (set(meta) | set(metrics))) | (set(meta) & set(metrics))
        if clash:
            raise ValueError(f"reserved or duplicated keys: {sorted(clash)}")
        for keys, new in ((self._meta_keys, meta), (self._metric_keys, metrics)):
            keys.extend(k for k in new if k not in keys)
        self._rows.append({"case_id": str(case_id), **meta, **dict(metrics)})

    def rows(self) -> list[dict]:
        """Copies of the recorded rows (``case_id``, metadata, then metrics)."""
        return [dict(r) for r in self._rows]

    def columns(self) -> list[str]:
        """All column names in order: ``case_id``, metadata keys, metric keys."""
        return ["case_id", *self._meta_keys, *self._metric_keys]

    def to_csv(self, path: str | Path) -> Path:
        """Write one row per case (atomic); missing values are empty, nan is ``nan``."""
        path = Path(path)
        with atomic_write(path) as tmp, tmp.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=self.columns(), restval="")
            writer.writeheader()
            writer.writerows(self._rows)
        return path

    def summary(self, by: Sequence[str] | None = None) -> list[dict]:
        """Mean and std of each numeric metric per group of the ``by`` metadata keys.

        Returns:
            One dict per group (sorted by group values): the ``by`` values, ``n`` (cases),
            ``{metric}_mean`` / ``{metric}_std`` over the finite values (sample std, ddof=1;
            nan with fewer than two) and ``{metric}_n`` (the number of finite values).
        """
        by = list(by or [])
        groups: dict[tuple[str, ...], list[dict]] = {}
        for row in self._rows:
            groups.setdefault(tuple(_group_name(row.get(k)) for k in by), []).append(row)
        numeric = [m for m in self._metric_keys if any(_is_number(r.get(m)) for r in self._rows)]
        out = []
        for key in sorted(groups):
            rows = groups[key]
            entry: dict = {**dict(zip(by, key, strict=True)), "n": len(rows)}
            for m in numeric:
                vals = [float(r[m]) for r in rows if _is_number(r.get(m))]
                entry[f"{m}_mean"], entry[f"{m}_std"], entry[f"{m}_n"] = _mean_std(vals)
            out.append(entry)
        return out

    def _structures(self) -> list[str]:
        return [
            k[: -len("_dice")]
            for k in self._metric_keys
            if k.endswith("_dice") and k != "mean_dice"
        ]

    def _table(self, by: str | None) -> list[str]:
        structs = self._structures()
        head = [by or "group", "n"]
        for s in structs:
            head += [f"{s} Dice", f"{s} HD95 (mm)"]
        head.append("Mean Dice")
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

        def fmt(g: dict, metric: str, digits: int) -> str:
            mean, std = g.get(f"{metric}_mean", NAN), g.get(f"{metric}_std", NAN)
            cell = "n/a" if math.isnan(mean) else f"{mean:.{digits}f}"
            if not math.isnan(mean) and not math.isnan(std):
                cell += f" ± {std:.{digits}f}"
            without = g["n"] - g.get(f"{metric}_n", g["n"])
            return cell + (f" ({without} without)" if without else "")

        for g in self.summary([by] if by else None):
            cells = [g[by] if by else "all", str(g["n"])]
            for s in structs:
                cells += [fmt(g, f"{s}_dice", 3), fmt(g, f"{s}_hd95", 2)]
            cells.append(fmt(g, "mean_dice", 3))
            lines.append("| " + " | ".join(cells) + " |")
        return lines

    def markdown(
        self,
        by: Sequence[str] | None = None,
        title: str = "Evaluation summary",
        notes: Sequence[str] = (),
    ) -> str:
        """Markdown text: an overall table, then one per ``by`` key present in the metadata.

        Cells are ``mean ± SD`` (sample SD) of Dice and HD95 per structure, plus the mean
        Dice. ``notes`` are paragraphs put under the title (e.g. which model produced the
        predictions).
        """
        lines = [
            f"# {title}",
            "",
            *[line for note in notes for line in (note, "")],
            f"Cases: {len(self._rows)}. Cells: mean ± SD over cases (sample SD; no SD "
            "for one case); HD95 in mm. Cases where only one mask has the structure "
            "have Dice 0 and no HD95: '(k without)' counts the k cases left out of a cell.",
            "",
        ]
        if not self._rows:
            return "\n".join([*lines, "No cases evaluated.", ""])
        lines += ["## Overall", "", *self._table(None), ""]
        for key in by or []:
            if any(_group_name(r.get(key)) != "(none)" for r in self._rows):
                lines += [f"## By {key}", "", *self._table(key), ""]
        return "\n".join(lines)

    def to_markdown(
        self,
        path: str | Path,
        by: Sequence[str] | None = None,
        title: str = "Evaluation summary",
        notes: Sequence[str] = (),
    ) -> Path:
        """Write :meth:`markdown` to ``path`` (atomic)."""
        path = Path(path)
        with atomic_write(path) as tmp:
            tmp.write_text(self.markdown(by, title, notes), encoding="utf-8")
        return path
