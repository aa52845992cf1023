"""Agreement of clinical indices from predictions vs. reference labels (Bland–Altman, r, MAE)."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

from cardioseg.data.datasets import CaseRecord, ed_es_pairs, load_case
from cardioseg.errors import CardiosegError
from cardioseg.io.nifti import ImageProperties, atomic_write, read_label

INDICES = (
    "lv_edv_ml",
    "lv_esv_ml",
    "lv_ef_pct",
    "rv_edv_ml",
    "rv_esv_ml",
    "rv_ef_pct",
    "lv_mass_g",
)


def agreement_stats(pred: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    """Bias, 95 % limits of agreement, Pearson r, mean and median absolute error.

    Example:
        >>> s = agreement_stats(np.array([1.0, 2.0, 4.0]), np.array([1.0, 1.0, 3.0]))
        >>> s["bias"], s["mae"]
        (0.6666666666666666, 0.6666666666666666)
    """
    pred, ref = np.asarray(pred, float), np.asarray(ref, float)
    ok = np.isfinite(pred) & np.isfinite(ref)
    pred, ref = pred[ok], ref[ok]
    if len(pred) == 0:
        return {
            k: float("nan")
            for k in ("n", "bias", "loa_low", "loa_high", "sd", "r", "mae", "median_ae")
        } | {"n": 0}
    d = pred - ref
    sd = float(d.std(ddof=1)) if len(d) > 1 else float("nan")  # no spread from one pair
    r = (
        float(np.corrcoef(pred, ref)[0, 1])
        if len(d) > 2 and pred.std() and ref.std()
        else float("nan")
    )
    return {
        "n": int(len(d)),
        "bias": float(d.mean()),
        "sd": sd,
        "loa_low": float(d.mean() - 1.96 * sd),
        "loa_high": float(d.mean() + 1.96 * sd),
        "r": r,
        "mae": float(np.abs(d).mean()),
        "median_ae": float(np.median(np.abs(d))),
    }


def paired_indices(
    records: list[CaseRecord],
    predict: Callable[[np.ndarray, ImageProperties], np.ndarray] | None = None,
    pred_dir: str | Path | None = None,
    analyzed_dir: str | Path | None = None,
    pred_labels: str = "canonical",
    missing: list[str] | None = None,
) -> list[dict]:
    """Indices from predicted and reference ED/ES labels, one row per subject.

    With ``pred_dir`` the predictions are label files named like the images, on the images'
    grid (shape and affine are checked), in the label convention ``pred_labels`` (a key of
    :data:`cardioseg.labels.DATASET_LABEL_MAPS`: ``canonical`` is cardioseg's 1 LV, 2 MYO,
    3 RV; ``acdc`` is 1 RV, 2 MYO, 3 LV). With ``analyzed_dir`` (the output of
    ``cardioseg analyze-batch``: one folder per study, named like the subject, with its
    ``report.json``) the predicted indices are those the reports give, exactly what
    ``analyze`` tells its reader. Subjects without a prediction or a finished report are left
    out and named in ``missing`` (when a list is given).
    """
    from cardioseg.clinical.indices import compute_indices

    rows = []
    for (dataset, subject), phases in ed_es_pairs(records).items():
        labs: dict[str, dict[str, np.ndarray]] = {"pred": {}, "ref": {}}
        spacing = None
        reported = None
        if analyzed_dir is not None:
            reported = _reported_indices(Path(analyzed_dir) / subject / "report.json")
            if reported is None:
                if missing is not None:
                    missing.append(subject)
                continue
        if pred_dir is not None and not all(
            (Path(pred_dir) / Path(r.image).name).is_file() for r in phases.values()
        ):
            if missing is not None:
                missing.append(subject)
            continue
        for ph, r in phases.items():
            image, ref, props = load_case(r)
            spacing = props.spacing
            if reported is not None:
                labs["ref"][ph] = ref
                continue
            if pred_dir is not None:
                path = Path(pred_dir) / Path(r.image).name
                if r.frame >= 0:  # a 4D prediction of a 4D image: its frame
                    import nibabel as nib

                    shape = tuple(nib.load(str(path)).shape)
                    if len(shape) != 4 or shape[:3] != image.shape or r.frame >= shape[3]:
                        raise CardiosegError(
                            path,
                            f"a 4D prediction with the image's grid {image.shape} and frame "
                            f"{r.frame} is needed, got shape {shape}",
                        )
                    grid = ImageProperties(props.affine, props.spacing, shape, str(path))
                    pred = read_label(path, pred_labels, reference=grid)[..., r.frame]
                else:
                    pred = read_label(path, pred_labels, reference=props)
            else:
                pred = predict(image, props)
            labs["pred"][ph], labs["ref"][ph] = pred, ref
        if reported is not None:
            ip = reported
        else:
            ip = compute_indices(labs["pred"]["ED"], labs["pred"]["ES"], spacing)
        ir = compute_indices(labs["ref"]["ED"], labs["ref"]["ES"], spacing)
        row = {
            "dataset": dataset,
            "subject": subject,
            "vendor": phases["ED"].vendor,
            "group": phases["ED"].group,
        }
        for k in INDICES:
            row[f"{k}_pred"], row[f"{k}_ref"] = ip[k], ir[k]
        rows.append(row)
    return rows


def _reported_indices(path: Path) -> dict[str, float] | None:
    """The indices of one ``report.json`` (``None`` if missing or without them)."""
    try:
        report = json.loads(path.read_text())
        return {k: float(report[k]) if report[k] is not None else float("nan") for k in INDICES}
    except (OSError, ValueError, KeyError, TypeError):
        return None


def write_agreement(rows: list[dict], outdir: str | Path, title: str = "Agreement") -> Path:
    """Write ``agreement_cases.csv``, ``agreement.md`` and Bland–Altman/scatter PNGs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    if rows:
        with atomic_write(out / "agreement_cases.csv") as tmp, open(tmp, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    lines = [
        f"# {title}",
        "",
        f"{len(rows)} subjects (ED + ES). Differences are prediction − reference.",
        "",
        "| index | n | bias | 95 % limits of agreement | r | MAE | median AE |",
        "|---|---|---|---|---|---|---|",
    ]
    fig, axes = plt.subplots(2, len(INDICES), figsize=(3.2 * len(INDICES), 6.4))
    for j, k in enumerate(INDICES):
        p = np.array([r[f"{k}_pred"] for r in rows], float)
        q = np.array([r[f"{k}_ref"] for r in rows], float)
        s = agreement_stats(p, q)
        limits = (
            f"[{s['loa_low']:.1f}, {s['loa_high']:.1f}]"
            if np.isfinite(s["loa_low"])
            else "n/a (one subject)"
        )
        lines.append(
            f"| {k} | {s['n']} | {s['bias']:+.1f} | {limits} | {s['r']:.3f} | {s['mae']:.1f} | "
            f"{s['median_ae']:.1f} |"
        )
        ax = axes[0, j]
        mean, diff = (p + q) / 2, p - q
        ax.scatter(mean, diff, s=10)
        for y, ls in ((s["bias"], "-"), (s["loa_low"], "--"), (s["loa_high"], "--")):
            if np.isfinite(y):
                ax.axhline(y, color="k", linestyle=ls, linewidth=0.8)
        ax.set_title(k, fontsize=9)
        ax.set_xlabel("mean", fontsize=8)
        ax.set_ylabel("pred − ref", fontsize=8)
        ax = axes[1, j]
        ax.scatter(q, p, s=10)
        lim = [
            np.nanmin([p.min(initial=0), q.min(initial=0)]),
            np.nanmax([p.max(initial=1), q.max(initial=1)]),
        ]
        ax.plot(lim, lim, "k--", linewidth=0.8)
        ax.set_xlabel("reference", fontsize=8)
        ax.set_ylabel("prediction", fontsize=8)
    fig.tight_layout()
    with atomic_write(out / "agreement.png") as tmp:
        fig.savefig(tmp, dpi=70, format="png")
    plt.close(fig)
    lines += ["", "![Bland–Altman (top) and scatter (bottom)](agreement.png)", ""]
    md = out / "agreement.md"
    with atomic_write(md) as tmp:
        tmp.write_text("\n".join(lines))
    return md
