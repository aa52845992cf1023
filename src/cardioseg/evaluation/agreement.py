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

#: Each index's name and unit on the figures and in the table's legend.
INDEX_NAMES = {
    "lv_edv_ml": ("LV EDV", "mL"),
    "lv_esv_ml": ("LV ESV", "mL"),
    "lv_ef_pct": ("LV EF", "%"),
    "rv_edv_ml": ("RV EDV", "mL"),
    "rv_esv_ml": ("RV ESV", "mL"),
    "rv_ef_pct": ("RV EF", "%"),
    "lv_mass_g": ("LV mass", "g"),
}
#: The structure colours of the montages and overlays (LV red, MYO green, RV blue).
_COLOURS = {"lv_mass_g": "tab:green", "lv": "tab:red", "rv": "tab:blue"}


def agreement_stats(pred: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    """Bias, 95 % limits of agreement, Pearson r, mean and median absolute error.

    Differences are ``pred - ref`` over the pairs where both are finite (``n``): ``bias`` is
    their mean, ``sd`` their sample SD (ddof=1), the limits ``bias ± 1.96 sd`` (Bland & Altman
    1986), ``bias_ci_low`` / ``bias_ci_high`` the 95 % confidence interval of the bias
    (``bias ± t(0.975, n-1) sd / sqrt(n)``). ``r`` (Pearson) needs three pairs; ``sd``, the
    limits and the interval two.

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
            for k in (
                "n",
                "bias",
                "loa_low",
                "loa_high",
                "sd",
                "bias_ci_low",
                "bias_ci_high",
                "r",
                "mae",
                "median_ae",
            )
        } | {"n": 0}
    d = pred - ref
    sd = float(d.std(ddof=1)) if len(d) > 1 else float("nan")  # no spread from one pair
    if len(d) > 1:
        from scipy.stats import t

        half = float(t.ppf(0.975, len(d) - 1)) * sd / np.sqrt(len(d))
    else:
        half = float("nan")
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
        "bias_ci_low": float(d.mean() - half),
        "bias_ci_high": float(d.mean() + half),
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
        report = json.loads(path.read_text(encoding="utf-8"))
        return {k: float(report[k]) if report[k] is not None else float("nan") for k in INDICES}
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _fmt(v: float, spec: str = ".1f") -> str:
    return f"{v:{spec}}" if np.isfinite(v) else "n/a"


def write_agreement(rows: list[dict], outdir: str | Path, title: str = "Agreement") -> Path:
    """Write ``agreement_cases.csv``, ``agreement.md`` and the Bland–Altman and scatter plots
    (``agreement.png``, 200 dpi, and ``agreement.pdf``): one row per index, Bland–Altman
    (prediction − reference against the mean of both, the bias and limits labelled with their
    values) left, prediction against reference (identity line, Pearson r) right."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.transforms import blended_transform_factory

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
        f"{len(rows)} subjects (ED + ES). Differences are prediction − reference, in the "
        "index's unit (volumes mL, EF %, i.e. percentage points, mass g). n: subjects with "
        "both values (a missing or undefined index, e.g. an EF without an ED volume, is left "
        "out). Bias: mean difference, with its 95 % confidence interval (t distribution); "
        "limits of agreement: bias ± 1.96 SD of the differences (sample SD; none for one "
        "subject); r: Pearson correlation of prediction and reference (n/a under 3 subjects); "
        "MAE / median AE: mean / median absolute difference.",
        "",
        "| index | n | bias | 95 % limits of agreement | bias 95 % CI | r | MAE | median AE |",
        "|---|---|---|---|---|---|---|---|",
    ]
    fig, axes = plt.subplots(len(INDICES), 2, figsize=(7.0, 2.4 * len(INDICES)), squeeze=False)
    for j, k in enumerate(INDICES):
        name, unit = INDEX_NAMES[k]
        colour = _COLOURS.get(k) or _COLOURS[k[:2]]
        p = np.array([r[f"{k}_pred"] for r in rows], float)
        q = np.array([r[f"{k}_ref"] for r in rows], float)
        s = agreement_stats(p, q)
        limits = (
            f"[{s['loa_low']:.1f}, {s['loa_high']:.1f}]"
            if np.isfinite(s["loa_low"])
            else "n/a (one subject)"
        )
        ci = (
            f"[{s['bias_ci_low']:.1f}, {s['bias_ci_high']:.1f}]"
            if np.isfinite(s["bias_ci_low"])
            else "n/a"
        )
        lines.append(
            f"| {k} | {s['n']} | {s['bias']:+.1f} | {limits} | {ci} | {_fmt(s['r'], '.3f')} | "
            f"{_fmt(s['mae'])} | {_fmt(s['median_ae'])} |"
        )
        ax = axes[j, 0]
        mean, diff = (p + q) / 2, p - q
        ax.scatter(mean, diff, s=14, color=colour)
        trans = blended_transform_factory(ax.transAxes, ax.transData)
        for y, ls, label in (
            (s["bias"], "-", "bias"),
            (s["loa_low"], "--", "−1.96 SD"),
            (s["loa_high"], "--", "+1.96 SD"),
        ):
            if np.isfinite(y):
                ax.axhline(y, color="k", linestyle=ls, linewidth=0.8)
                ax.text(  # right of the panel, where no point can hide it
                    1.02,
                    y,
                    f"{label}\n{y:+.1f}",
                    transform=trans,
                    ha="left",
                    va="center",
                    fontsize=7,
                    clip_on=False,
                )
        ax.margins(y=0.15)
        ax.set_title(f"{name}: Bland–Altman (n = {s['n']})", fontsize=9)
        ax.set_xlabel(f"mean of prediction and reference ({unit})", fontsize=8)
        ax.set_ylabel(f"prediction − reference ({unit})", fontsize=8)
        ax = axes[j, 1]
        ax.scatter(q, p, s=14, color=colour)
        both = np.concatenate([p, q])
        both = both[np.isfinite(both)]
        if both.size:
            lo, hi = float(both.min()), float(both.max())
            pad = 0.05 * (hi - lo) if hi > lo else 1.0
            lim = [lo - pad, hi + pad]
            ax.plot(lim, lim, "k--", linewidth=0.8, label="identity")
            ax.set_xlim(lim)
            ax.set_ylim(lim)
            ax.set_aspect("equal", adjustable="box")
        ax.set_title(f"{name}: r = {_fmt(s['r'], '.3f')} (n = {s['n']})", fontsize=9)
        ax.set_xlabel(f"reference ({unit})", fontsize=8)
        ax.set_ylabel(f"prediction ({unit})", fontsize=8)
        for a in axes[j]:
            a.tick_params(labelsize=7)
    fig.tight_layout()
    with atomic_write(out / "agreement.png") as tmp:
        fig.savefig(tmp, dpi=200, format="png")
    with atomic_write(out / "agreement.pdf") as tmp:
        fig.savefig(tmp, format="pdf")
    plt.close(fig)
    lines += [
        "",
        "![Bland–Altman (left) and prediction against reference (right); also as "
        "agreement.pdf](agreement.png)",
        "",
    ]
    md = out / "agreement.md"
    with atomic_write(md) as tmp:
        tmp.write_text("\n".join(lines))
    return md
