"""Clinical analysis on real data: Sunnybrook DICOM end to end, QC vs. real errors, speed.

Usage (from the repository root, after the shipped model and the ACDC CV folds exist):

    python benchmarks/clinical_benchmark.py --data ../shared/data --cv-runs runs/acdc_cv \
        -o benchmarks/results

Parts (each written to ``<out>/clinical_*.{csv,md}``):

1. **Sunnybrook** (real GE DICOM cines, expert LV contours on the ED and ES images; every
   case that ``sunnybrook/link.csv`` pairs with a contour folder): ``analyze_study`` end to end
   on the DICOM folder; LV EDV/ESV/EF from the automatic masks vs. from the expert contours. The
   contours cover only some slices, so volumes are compared on the annotated slices (same
   phases) and, for information, over the whole predicted heart. With several cases, a summary
   (median absolute LVEF error, mean per-image Dice) follows.
2. **QC vs. real errors**: for every labelled ED/ES study (ACDC held-out CV predictions, M&Ms
   and, as single volumes, MS-CMRSeg LGE with the shipped model) the QC score/status from
   :func:`cardioseg.clinical.qc.assess_quality` (with TTA probabilities) next to the real Dice.
   Reports Spearman's rho between QC score and 1 - Dice, the share of the worst 20 % (by Dice)
   that QC flags (review or fail), and the share of all studies flagged.
3. **Speed**: a synthetic 25-phase x 12-slice cine analysed end to end (all outputs, PDF
   included), median of ``--repeats`` runs on ``--threads`` threads.
4. **CLI** (``--parts cli``): what a user waits for, ``cardioseg analyze`` run as a new
   process (Python start, imports, model loading, the analysis, all outputs), on the synthetic
   cine of part 3 and on each Sunnybrook DICOM study; each run with an empty cache of ONNX
   exports (the first analysis after installing: the network is exported and checked) and with
   the cache the first run left (every later analysis), alternating, median of ``--repeats``.
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from roi_option import add_roi_argument, roi_value
from scipy import stats

from cardioseg.clinical.analysis import analyze_study
from cardioseg.clinical.indices import compute_indices
from cardioseg.clinical.qc import (
    DISAGREEMENT_FAIL,
    DISAGREEMENT_REVIEW,
    DISAGREEMENT_SLICE_NOTE,
    ENTROPY_HEART_FAIL,
    ENTROPY_HEART_REVIEW,
    MINOR_REVIEW_SCORE,
    REVIEW_SCORE,
    QCCalibration,
    assess_quality,
    calibration_for,
    calibration_path,
    status_from_issues,
    uncertainty_issue_weight,
)
from cardioseg.data.datasets import discover, load_case
from cardioseg.errors import CardiosegError
from cardioseg.evaluation.metrics import compute_metrics
from cardioseg.inference import Segmenter
from cardioseg.io.nifti import atomic_write


def sunnybrook_cases(data: Path) -> list[tuple[str, Path, Path]]:
    """``(case, DICOM folder, contour folder)`` of every Sunnybrook case with both, from
    ``link.csv`` (``patient_id`` = DICOM folder name, ``original_id`` = contour folder)."""
    root = data / "sunnybrook"
    link = root / "link.csv"
    pairs = [("SCD0000101", "SC-HF-I-1")]
    if link.exists():
        with open(link, newline="") as fh:
            pairs = [(r["patient_id"], r["original_id"]) for r in csv.DictReader(fh)]
    cases = []
    for pid, oid in pairs:
        folder, cdir = root / "dicoms" / pid, root / "contourfiles" / oid
        if folder.is_dir() and cdir.is_dir():
            cases.append((oid, folder, cdir))
    return cases


def _sunnybrook_case(folder: Path, cdir: Path, seg: Segmenter) -> dict[str, Any]:
    """Analyse one Sunnybrook cine and compare the LV with the expert contours."""
    from cardioseg.io.dicom import load_cine
    from cardioseg.io.sunnybrook import endocardial_volumes_ml, load_sunnybrook_contours

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        report = analyze_study(Path(tmp) / "sb", study=folder, segmenter=seg)
        seconds = time.perf_counter() - t0
        import nibabel as nib

        cine = np.asarray(nib.load(str(Path(tmp) / "sb" / "masks_cine.nii.gz")).dataobj)
    _, props, meta = load_cine(folder)
    c = load_sunnybrook_contours(cdir, meta)
    vox = float(np.prod(props.spacing)) / 1000.0
    ref = endocardial_volumes_ml(c, props.spacing)  # expert volumes on the contoured slices
    pred_annot: dict[int, float] = {}
    pred_all: dict[int, float] = {}
    for t in c["phases"]:
        ks = c["slices"][t]
        pred_annot[t] = sum(float((cine[:, :, k, t] == 1).sum()) for k in ks) * vox
        pred_all[t] = float((cine[..., t] == 1).sum()) * vox
    ed_t, es_t = max(ref, key=ref.get), min(ref, key=ref.get)

    def ef(v: dict[int, float]) -> float:
        return (v[ed_t] - v[es_t]) / v[ed_t] * 100

    dice = []
    for (k, t), endo in c["endocardium"].items():
        p = cine[:, :, k, t] == 1
        dice.append(2 * (p & endo).sum() / max(1, p.sum() + endo.sum()))
    return {
        "report": report,
        "seconds": seconds,
        "shape": cine.shape,
        "vendor": meta.vendor,
        "ed_t": ed_t,
        "es_t": es_t,
        "ref": ref,
        "pred_annot": pred_annot,
        "pred_all": pred_all,
        "ef": {"ref": ef(ref), "annot": ef(pred_annot), "all": ef(pred_all)},
        "dice": dice,
    }


def sunnybrook(data: Path, seg: Segmenter, out: Path) -> list[str]:
    cases = sunnybrook_cases(data)
    if not cases:
        return ["Sunnybrook: skipped (data absent)"]
    lines: list[str] = []
    results = {}
    for case, folder, cdir in cases:
        r = _sunnybrook_case(folder, cdir, seg)
        results[case] = r
        report, ed_t, es_t = r["report"], r["ed_t"], r["es_t"]
        ref, annot, whole = r["ref"], r["pred_annot"], r["pred_all"]
        nx, ny, nz, nt = r["shape"]
        lines += [
            f"## Sunnybrook {case} ({r['vendor'] or 'unknown vendor'} cine DICOM, {nt} phases x "
            f"{nz} slices)",
            "",
            f"`analyze_study` on the DICOM folder: {r['seconds']:.1f} s end to end (incl. "
            f"DICOM-SEG, HTML and PDF report). Detected ED/ES frames: {report['ed_frame']}/"
            f"{report['es_frame']} (expert-contoured phases: ED {ed_t}, ES {es_t}). QC: "
            f"{report['qc']['status']}.",
            "",
            "| LV | expert contours | cardioseg, annotated slices | cardioseg, all slices |",
            "|---|---|---|---|",
            f"| EDV (mL, phase {ed_t}) | {ref[ed_t]:.1f} | {annot[ed_t]:.1f} | {whole[ed_t]:.1f} |",
            f"| ESV (mL, phase {es_t}) | {ref[es_t]:.1f} | {annot[es_t]:.1f} | {whole[es_t]:.1f} |",
            f"| EF (%) | {r['ef']['ref']:.1f} | {r['ef']['annot']:.1f} | {r['ef']['all']:.1f} |",
            "",
            f"Per-image LV blood-pool Dice vs. the expert endocardial contours: mean "
            f"{np.mean(r['dice']):.3f} (n = {len(r['dice'])} images, median "
            f"{np.median(r['dice']):.3f}).",
            f"Report's LV EF (its own ED/ES frames, all slices): {report['lv_ef_pct']:.1f} %.",
            "",
        ]
    if len(results) > 1:
        errors = [abs(r["ef"]["annot"] - r["ef"]["ref"]) for r in results.values()]
        dices = [float(np.mean(r["dice"])) for r in results.values()]
        lines += [
            f"## Sunnybrook, all {len(results)} cases",
            "",
            f"LVEF on the contoured slices and phases, absolute error vs. the experts: median "
            f"{np.median(errors):.1f} pp (mean {np.mean(errors):.1f}, max {np.max(errors):.1f}). "
            f"Per-image LV Dice, mean of the cases: {np.mean(dices):.3f}.",
            "",
        ]
    return lines


def _cv_models(cv_runs: list[Path] | None, roi: bool | None = None) -> dict[str, Segmenter]:
    """Map ACDC ``dataset/subject`` → the fold model that did not see it (``roi``: see
    ``Segmenter``). With several CV runs on the same folds, each fold's model is the ensemble
    of their fold-k models (to calibrate an ensemble's QC)."""
    runs = [r for r in cv_runs or [] if r.exists()]
    if not runs:
        return {}
    from cardioseg.training.config import load_config
    from cardioseg.training.trainer import collect_records, split_records

    out: dict[str, Segmenter] = {}
    for fold in sorted(runs[0].glob("fold*")):
        members = [r / fold.name / "best.pt" for r in runs]
        if not all(m.exists() for m in members):
            continue
        held: set[str] | None = None
        for run in runs:
            cfg = load_config(run / fold.name / "config.yaml")
            subjects = {r.subject for r in split_records(collect_records(cfg), cfg)[1]}
            if held is not None and subjects != held:
                sys.exit(f"{run / fold.name}: other held-out patients than {runs[0] / fold.name}")
            held = subjects
        seg = Segmenter(members if len(members) > 1 else members[0], roi=roi)
        for subject in held or ():
            out[subject] = seg
    return out


def qc_study_rows(
    data: Path,
    seg: Segmenter,
    cv_runs: list[Path] | None,
    calibrate: bool = False,
    write_calibration: Path | None = None,
) -> tuple[list[dict], tuple[float, float, float]]:
    """One row per labelled study; with ``calibrate``, the heart-entropy and disagreement
    review thresholds are first set to their 90th percentiles over the held-out ACDC CV
    studies (the in-domain calibration that :data:`cardioseg.clinical.qc.ENTROPY_HEART_REVIEW`
    documents). Each row also has the QC status without the disagreement check (for the
    ablation). Returns the rows and the three thresholds used (the model's own calibration,
    :func:`cardioseg.clinical.qc.calibration_for`, unless ``calibrate``). ``write_calibration``
    saves the calibrated thresholds there (``model.qc.json`` next to the checkpoint, where
    ``cardioseg analyze`` finds them)."""
    studies = []
    cv = _cv_models(cv_runs, roi=seg.roi)
    groups: dict[tuple[str, str], dict[str, object]] = {}
    for ds in ("acdc", "mnms", "mscmr_lge"):
        if not (data / ds).exists():
            continue
        for r in discover(data / ds):
            if not r.label:
                continue
            if ds == "acdc" and r.subject not in cv:
                continue
            groups.setdefault((ds, r.subject), {})[r.phase] = r
    for (ds, subject), phases in sorted(groups.items()):
        model = cv.get(subject, seg) if ds == "acdc" else seg
        labs, refs, probs, spreads, dices = {}, {}, {}, {}, []
        spacing = None
        try:
            loaded = {ph: load_case(r) for ph, r in sorted(phases.items())}  # type: ignore[arg-type]
        except CardiosegError as exc:  # e.g. a label whose header disagrees with its image
            print(f"skip {ds}/{subject}: {exc}", flush=True)
            continue
        for ph, (image, ref, props) in loaded.items():
            spacing = props.spacing
            tta = model.tta
            model.tta = True
            try:
                pred, p, spread = model.predict_volume(
                    image,
                    props.spacing,
                    return_probabilities=True,
                    affine=props.affine,
                    return_disagreement=True,
                )
            finally:
                model.tta = tta
            labs[ph], refs[ph], probs[ph], spreads[ph] = pred, ref, p, spread
            dices.append(compute_metrics(pred, ref, props.spacing)["mean_dice"])
        names = [p for p in ("ED", "ES") if p in labs] or list(labs)
        studies.append((ds, subject, phases, names, labs, refs, probs, spreads, dices, spacing))
        print(f"predicted {ds} {subject} dice {np.mean(dices):.3f}", flush=True)

    def assess(study: tuple, cal: QCCalibration, spread: bool = True) -> Any:
        _, _, _, names, labs, _, probs, spreads, _, spacing = study
        if not spread:
            spreads = {}
        first, second = names[0], (names[1] if len(names) > 1 else None)
        return assess_quality(
            labs[first],
            labs[second] if second else None,
            spacing,
            probabilities={"ED": probs[first], **({"ES": probs[second]} if second else {})},
            disagreement={
                "ED": spreads.get(first),
                **({"ES": spreads.get(second)} if second else {}),
            },
            calibration=cal,
        )

    cal = calibration_for(seg.checkpoint_paths)
    calibrated_here = False
    if calibrate:
        found = [assess(st, cal) for st in studies if st[0] == "acdc"]
        if found:
            per_slice = [
                r["disagreement"]
                for q in found
                for r in q.per_slice
                if r.get("disagreement") is not None
            ]
            # rounded as the shipped constants are written
            cal = QCCalibration(
                round(float(np.percentile([q.metrics["heart_entropy"] for q in found], 90)), 4),
                round(float(np.percentile([q.metrics["disagreement"] for q in found], 90)), 4),
                round(float(np.percentile(per_slice, 95)), 4),
                model=" + ".join(p.name for p in seg.checkpoint_paths),
                source=f"{len(found)} held-out ACDC CV studies (fold models of "
                f"{' + '.join(map(str, cv_runs or []))}): "
                "90th percentiles of the study-level heart entropy and disagreement, 95th of "
                "the per-slice disagreement (benchmarks/clinical_benchmark.py "
                "--calibrate-entropy)",
            )
            calibrated_here = True
            print(
                f"calibrated review thresholds: heart entropy {cal.heart_entropy_review:.4f}, "
                f"disagreement {cal.disagreement_review:.4f}; per-slice disagreement note "
                f"{cal.disagreement_slice_note:.4f}",
                flush=True,
            )
    thresholds = (cal.heart_entropy_review, cal.disagreement_review)
    slice_note = cal.disagreement_slice_note
    rows = []
    for study in studies:
        ds, subject, phases, names, labs, refs, _, _, dices, spacing = study
        qc = assess(study, cal)
        first, second = names[0], (names[1] if len(names) > 1 else None)
        row = {
            "dataset": ds,
            "subject": subject,
            "vendor": phases[first].vendor,  # type: ignore[union-attr]
            "mean_dice": float(np.mean(dices)),
            "qc_score": qc.score,
            "qc_status": qc.status,
            "qc_reasons": " | ".join(qc.reasons),
            # raw QC evidence, so thresholds and weights can be re-calibrated offline
            "qc_mean_entropy": qc.metrics.get("mean_entropy", float("nan")),
            "qc_heart_entropy": qc.metrics.get("heart_entropy", float("nan")),
            "qc_disagreement": qc.metrics.get("disagreement", float("nan")),
            "qc_status_without_disagreement": assess(study, cal, spread=False).status,
            "qc_issues": ";".join(f"{i['kind']}:{i['weight']:.3f}" for i in qc.metrics["issues"]),
        }
        row.update(_slice_hints(qc, names, labs, refs, spacing, slice_note))
        if second:
            ip = compute_indices(labs["ED"], labs["ES"], spacing)  # type: ignore[arg-type]
            ir = compute_indices(refs["ED"], refs["ES"], spacing)  # type: ignore[arg-type]
            for k in ("lv_edv_ml", "lv_esv_ml", "lv_ef_pct", "rv_edv_ml", "rv_ef_pct"):
                row[f"{k}_pred"], row[f"{k}_ref"] = ip[k], ir[k]
        rows.append(row)
        print(
            f"qc {ds} {subject} dice {row['mean_dice']:.3f} qc {qc.score:.2f} {qc.status}",
            flush=True,
        )
    if write_calibration is not None and calibrated_here:
        with atomic_write(write_calibration) as tmp:
            tmp.write_text(
                json.dumps({k: v for k, v in cal.to_dict().items() if k != "calibrated"}, indent=2)
                + "\n"
            )
        print(f"wrote {write_calibration}", flush=True)
    return rows, (*thresholds, slice_note)


def _slice_hints(
    qc: Any, names: list[str], labs: dict, refs: dict, spacing: Any, note: float
) -> dict[str, Any]:
    """Per-slice disagreement hints of one study: how many measured slices reach ``note``, and
    for each phase of an ED/ES pair whether the predicted basal LV slice lies beyond the
    reference's base (``extra``) and its disagreement."""
    from basal_slice_check import slice_range_row

    measured = [r for r in qc.per_slice if r.get("disagreement") is not None]
    out: dict[str, Any] = {
        "slices_measured": len(measured),
        "slices_noted": sum(r["disagreement"] >= note for r in measured),
    }
    if len(names) < 2:
        return out
    for qc_phase, name in zip(("ED", "ES"), names, strict=False):
        rr = slice_range_row(labs[name], refs[name], spacing)
        base = rr["pred_base_slice"]
        value = next(
            (r["disagreement"] for r in measured if r["phase"] == qc_phase and r["slice"] == base),
            float("nan"),
        )
        out[f"base_extra_{qc_phase.lower()}"] = int(rr["extra_base"] > 0)
        out[f"base_disagreement_{qc_phase.lower()}"] = value
    return out


#: Review cut-offs tried in the QC sweep.
SWEEP = (0.25, 0.35, 0.5, 0.6, 0.7, 0.8, 0.9)


def _worst(dice: np.ndarray) -> np.ndarray:
    """Indices of the worst 20 % (at least one) by Dice."""
    return np.argsort(dice)[: max(1, int(round(0.2 * len(dice))))]


def qc_summary(
    rows: list[dict], thresholds: tuple[float, float, float], calibrated: bool
) -> list[str]:
    how = (
        "calibrated in this run: the 90th percentile over the held-out ACDC CV studies"
        if calibrated
        else "the value in `cardioseg.clinical.qc`"
    )
    lines = [
        "## Quality control vs. real errors",
        "",
        "One row per study (ACDC: held-out fold model; M&Ms and LGE: shipped model). "
        "Flagged = QC status review or fail. Worst 20 % = lowest mean Dice. Review "
        f"thresholds: heart entropy {thresholds[0]:.4f}, disagreement of the test-time "
        f"predictions {thresholds[1]:.4f} ({how}).",
        "",
        "| studies | n | Spearman rho (QC score, 1 - Dice) | worst 20 % flagged | "
        "all flagged | status ok / review / fail |",
        "|---|---|---|---|---|---|",
    ]
    sets = {"all": rows}
    for ds in sorted({r["dataset"] for r in rows}):
        sets[ds] = [r for r in rows if r["dataset"] == ds]
    for name, rs in sets.items():
        if len(rs) < 3:
            continue
        d = np.array([r["mean_dice"] for r in rs])
        s = np.array([r["qc_score"] for r in rs])
        flagged = np.array([r["qc_status"] != "ok" for r in rs])
        rho = stats.spearmanr(s, 1 - d).statistic
        worst = _worst(d)
        n_worst = len(worst)
        counts = [sum(r["qc_status"] == k for r in rs) for k in ("ok", "review", "fail")]
        lines.append(
            f"| {name} | {len(rs)} | {rho:.2f} | {flagged[worst].sum()}/{n_worst} "
            f"({flagged[worst].mean():.0%}) | {flagged.sum()}/{len(rs)} ({flagged.mean():.0%}) | "
            f"{' / '.join(map(str, counts))} |"
        )
    lines += _bootstrap_bar(rows)
    d = np.array([r["mean_dice"] for r in rows])
    worst = _worst(d)
    without = np.array([r["qc_status_without_disagreement"] != "ok" for r in rows])
    lines += [
        "",
        "Without the disagreement check (ablation, same predictions and other thresholds): "
        f"worst 20 % flagged {without[worst].sum()}/{len(worst)}, all flagged "
        f"{without.sum()}/{len(rows)} ({without.mean():.0%}).",
    ]
    lines += _dropped_kinds(rows, worst)
    lines += _signal_summary(rows)
    lines += _hint_summary(rows, thresholds[2])
    lines += [
        "",
        "Single cut-off sweep (all studies), for comparison with the shipped two-tier rule "
        f"(major issues >= {REVIEW_SCORE}, or minor notes >= {MINOR_REVIEW_SCORE}): fraction "
        "flagged / fraction of the worst 20 % flagged if every study with a combined QC score >= t "
        "were flagged.",
        "",
        "| t | " + " | ".join(f"{t:.2f}" for t in SWEEP) + " |",
        "|---|" + "---|" * len(SWEEP),
    ]
    d = np.array([r["mean_dice"] for r in rows])
    s = np.array([r["qc_score"] for r in rows])
    worst = _worst(d)
    cells = [f"{(s >= t).mean():.0%} / {(s[worst] >= t).mean():.0%}" for t in SWEEP]
    lines.append("| flagged / worst flagged | " + " | ".join(cells) + " |")
    ef = [r for r in rows if "lv_ef_pct_pred" in r]
    if ef:
        lines += [
            "",
            "## Clinical indices vs. reference labels (same studies)",
            "",
            "| studies | n | LVEF median abs. error (pp) | LVEDV median abs. error (mL) | "
            "RVEF median abs. error (pp) | RVEDV median abs. error (mL) |",
            "|---|---|---|---|---|---|",
        ]
        for ds in sorted({r["dataset"] for r in ef}):
            rs = [r for r in ef if r["dataset"] == ds]

            def mae(k: str, rs: list[dict] = rs) -> float:
                return float(np.nanmedian([abs(r[f"{k}_pred"] - r[f"{k}_ref"]) for r in rs]))

            lines.append(
                f"| {ds} | {len(rs)} | {mae('lv_ef_pct'):.1f} | {mae('lv_edv_ml'):.1f} | "
                f"{mae('rv_ef_pct'):.1f} | {mae('rv_edv_ml'):.1f} |"
            )
    return lines + [""]


def _listed_issues(row: dict) -> list[tuple[str, float]]:
    """A study's QC issues as ``(kind, weight)`` from its ``qc_issues`` cell."""
    cells = (x.split(":") for x in str(row.get("qc_issues", "")).split(";") if x)
    return [(kind, float(weight)) for kind, weight in cells]


def _reapplied_thresholds(rows: list[dict], heart_entropy: float, disagreement: float) -> list[str]:
    """The statuses with other study-level review thresholds: each study's heart-entropy and
    disagreement issues recomputed from its raw values (``qc_heart_entropy``,
    ``qc_disagreement``), its other listed issues kept."""
    worst = _worst(np.array([r["mean_dice"] for r in rows]))
    flagged = []
    for r in rows:
        issues = [
            (k, w) for k, w in _listed_issues(r) if k not in ("entropy_study", "disagreement_study")
        ]
        for kind, key, review, fail in (
            ("entropy_study", "qc_heart_entropy", heart_entropy, ENTROPY_HEART_FAIL),
            ("disagreement_study", "qc_disagreement", disagreement, DISAGREEMENT_FAIL),
        ):
            value = r.get(key)
            w = uncertainty_issue_weight(value, review, fail) if isinstance(value, float) else None
            if w is not None:
                issues.append((kind, w))
        flagged.append(status_from_issues(issues)[0] != "ok")
    f = np.array(flagged)
    return [
        "",
        f"With the review thresholds heart entropy {heart_entropy:.4f} and disagreement "
        f"{disagreement:.4f} instead (re-applied to each study's raw values, its other listed "
        f"issues kept): worst 20 % flagged {f[worst].sum()}/{len(worst)}, all flagged "
        f"{f.sum()}/{len(rows)} ({f.mean():.0%}).",
        "",
    ]


def _dropped_kinds(rows: list[dict], worst: np.ndarray) -> list[str]:
    """The status rule re-applied to each study's listed issues (``qc_issues``) with the
    study-level uncertainty issues left out, one kind or both: what each contributes."""
    issues = [_listed_issues(r) for r in rows]
    same = sum(
        status_from_issues(i)[0] == r["qc_status"] for i, r in zip(issues, rows, strict=True)
    )
    lines = [
        "",
        f"Statuses re-applied from the listed issues (weights as written, 3 decimals; "
        f"{same}/{len(rows)} equal to the run's statuses with nothing left out):",
        "",
        "| left out | worst 20 % flagged | all flagged |",
        "|---|---|---|",
    ]
    for drop in (
        ("entropy_study",),
        ("disagreement_study",),
        ("entropy_study", "disagreement_study"),
    ):
        flagged = np.array(
            [status_from_issues([(k, w) for k, w in i if k not in drop])[0] != "ok" for i in issues]
        )
        lines.append(
            f"| {' and '.join(drop)} | {flagged[worst].sum()}/{len(worst)} | "
            f"{flagged.sum()}/{len(rows)} ({flagged.mean():.0%}) |"
        )
    return lines


def _bootstrap_bar(rows: list[dict], n: int = 2000, seed: int = 0) -> list[str]:
    """How robust the QC bar is to the choice of studies: studies resampled with replacement
    (the same resamples for the shipped rule and the ablation), the worst 20 % and the flagged
    share recomputed in each resample."""
    dice = np.array([r["mean_dice"] for r in rows])
    rules = {
        "shipped": np.array([r["qc_status"] != "ok" for r in rows]),
        "without the disagreement check": np.array(
            [r["qc_status_without_disagreement"] != "ok" for r in rows]
        ),
    }
    parts = []
    for name, flagged in rules.items():
        rng = np.random.default_rng(seed)
        met, share, caught = 0, [], []
        for _ in range(n):
            idx = rng.integers(0, len(rows), len(rows))
            d, f = dice[idx], flagged[idx]
            worst = _worst(d)
            share.append(f.mean())
            caught.append(f[worst].mean())
            met += bool(f[worst].all() and f.mean() <= 0.40)
        lo, hi = np.percentile(share, [2.5, 97.5])
        parts.append(
            f"{name}: the bar holds in {met / n:.0%} of them, flagged share 95 % interval "
            f"{lo:.0%}-{hi:.0%}, share of the worst 20 % flagged {np.median(caught):.0%} "
            f"(2.5th percentile {np.percentile(caught, 2.5):.0%})"
        )
    return [
        "",
        f"Bootstrap over studies ({n} resamples with replacement, seed {seed}; the bar: all of "
        "the worst 20 % flagged, at most 40 % flagged): " + "; ".join(parts) + ".",
    ]


def _hint_summary(rows: list[dict], note: float) -> list[str]:
    """Table of the per-slice disagreement hint at the predicted basal LV slice."""
    base = [
        (r[f"base_extra_{ph}"], r[f"base_disagreement_{ph}"])
        for r in rows
        for ph in ("ed", "es")
        if f"base_extra_{ph}" in r and not np.isnan(r[f"base_disagreement_{ph}"])
    ]
    if not base:
        return []
    extra = [v for e, v in base if e]
    other = [v for e, v in base if not e]
    measured = int(sum(r["slices_measured"] for r in rows))
    noted = int(sum(r["slices_noted"] for r in rows))
    return [
        "",
        f"Per-slice disagreement hint (slices at or above {note:.4f}, the 95th percentile over "
        "the held-out ACDC CV slices; a note for the reader, no effect on the status), at the "
        "predicted basal LV slice of the ED/ES volumes (ACDC CV and M&Ms):",
        "",
        "| predicted basal LV slice | volumes | hint shown | median disagreement |",
        "|---|---|---|---|",
        f"| beyond the reference's base (an extra slice) | {len(extra)} | "
        f"{sum(v >= note for v in extra)} | {np.median(extra) if extra else float('nan'):.4f} |",
        f"| within the reference's range | {len(other)} | {sum(v >= note for v in other)} | "
        f"{np.median(other) if other else float('nan'):.4f} |",
        "",
        f"All measured slices of all studies: {noted}/{measured} ({noted / max(measured, 1):.0%}) "
        "carry the hint; by dataset: "
        + ", ".join(
            f"{ds} {int(sum(r['slices_noted'] for r in rs))}/"
            f"{int(sum(r['slices_measured'] for r in rs))}"
            for ds, rs in _by_dataset(rows).items()
        )
        + ".",
    ]


def _by_dataset(rows: list[dict]) -> dict[str, list[dict]]:
    return {
        ds: [r for r in rows if r["dataset"] == ds] for ds in sorted({r["dataset"] for r in rows})
    }


def _signal_summary(rows: list[dict]) -> list[str]:
    """Each study-level uncertainty alone: Spearman's rho with 1 - Dice, and its range per
    dataset."""
    lines = [
        "",
        "Each study-level uncertainty alone:",
        "",
        "| signal | Spearman rho with 1 - Dice, all | ... ACDC only | range per dataset |",
        "|---|---|---|---|",
    ]
    acdc = [r for r in rows if r["dataset"] == "acdc"]
    for key in ("qc_heart_entropy", "qc_disagreement"):

        def rho(rs: list[dict], key: str = key) -> float:
            rs = [r for r in rs if key in r]
            if len(rs) < 3:
                return float("nan")
            return stats.spearmanr([r[key] for r in rs], [1 - r["mean_dice"] for r in rs]).statistic

        ranges = ", ".join(
            f"{ds} {min(r[key] for r in rs):.4f}-{max(r[key] for r in rs):.4f}"
            for ds, rs in _by_dataset([r for r in rows if key in r]).items()
        )
        lines.append(f"| {key[3:]} | {rho(rows):.2f} | {rho(acdc):.2f} | {ranges} |")
    return lines


def _read_rows(path: Path) -> list[dict]:
    """Rows of a ``clinical_qc_cases.csv``, numbers as floats (empty cells dropped)."""

    def value(text: str) -> Any:
        try:
            return float(text)
        except ValueError:
            return text

    with open(path, newline="") as fh:
        return [{k: value(v) for k, v in r.items() if v != ""} for r in csv.DictReader(fh)]


def speed(seg: Segmenter, repeats: int) -> list[str]:
    from cardioseg.data.synthetic import PhantomConfig, make_cine

    cine = make_cine(PhantomConfig(seed=3, vendor="siemens", n_slices=12), n_frames=25)
    times = []
    with tempfile.TemporaryDirectory() as tmp:
        import nibabel as nib

        path = Path(tmp) / "cine.nii.gz"
        nib.save(nib.Nifti1Image(cine.image.astype(np.float32), cine.affine), str(path))
        for i in range(repeats):
            t0 = time.perf_counter()
            analyze_study(Path(tmp) / f"out{i}", study=path, segmenter=seg)
            times.append(time.perf_counter() - t0)
        shape = cine.image.shape
    return [
        "## Speed",
        "",
        f"Synthetic cine {shape} (x, y, slices, phases), `analyze_study` end to end (all 25 "
        f"phases segmented, TTA uncertainty on ED/ES, QC, NIfTI + HTML + PDF + JSON): median "
        f"{statistics.median(times):.2f} s over {repeats} runs (all: "
        f"{', '.join(f'{t:.2f}' for t in times)}). Network: "
        f"{getattr(seg, 'backend', 'torch')}, {seg.precision}.",
        "",
    ]


def _timed_cli(study: Path, out: Path, cache: Path) -> float:
    """Seconds a ``cardioseg analyze STUDY`` process takes with ``cache`` as its cache home."""
    import os
    import shutil
    import subprocess

    shutil.rmtree(out, ignore_errors=True)
    env = {**os.environ, "XDG_CACHE_HOME": str(cache)}
    cmd = [sys.executable, "-m", "cardioseg.cli.main", "analyze", str(study), "-o", str(out)]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["(no message)"])[-1]
        raise SystemExit(f"cardioseg analyze {study} failed (exit {done.returncode}): {last}")
    return seconds


def cli_speed(data: Path, repeats: int) -> list[str]:
    """Part 4: ``cardioseg analyze`` as a new process, with an empty and with a warm cache."""
    import nibabel as nib

    from cardioseg.data.synthetic import PhantomConfig, make_cine

    lines = [
        "## `cardioseg analyze` as a new process",
        "",
        "Wall time of the command (Python start, imports, model loading, analysis, all "
        "outputs); *first run*: an empty cache of ONNX exports (the network is built, exported "
        "and checked), *later runs*: the cache that run left. Alternating runs, median "
        f"(all runs) of {repeats}. Threads: the command's default.",
        "",
        "| study | first run (s) | later runs (s) |",
        "|---|---|---|",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        cine = make_cine(PhantomConfig(seed=3, vendor="siemens", n_slices=12), n_frames=25)
        path = tmp_path / "cine.nii.gz"
        nib.save(nib.Nifti1Image(cine.image.astype(np.float32), cine.affine), str(path))
        studies = [("synthetic cine 25 x 12 (NIfTI)", path)]
        studies += [
            (f"Sunnybrook {name} (DICOM)", folder) for name, folder, _ in sunnybrook_cases(data)
        ]
        warm = tmp_path / "warm-cache"
        _timed_cli(path, tmp_path / "out", warm)  # fills the warm cache
        for k, (name, study) in enumerate(studies):
            cold_times, warm_times = [], []
            for i in range(repeats):
                empty = tmp_path / f"cold-{k}-{i}"  # a new, empty cache for each first run
                cold_times.append(_timed_cli(study, tmp_path / "out", empty))
                warm_times.append(_timed_cli(study, tmp_path / "out", warm))

            def cell(ts: list[float]) -> str:
                return f"{statistics.median(ts):.2f} ({', '.join(f'{t:.2f}' for t in ts)})"

            lines.append(f"| {name} | {cell(cold_times)} | {cell(warm_times)} |")
    return [*lines, ""]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default="../shared/data")
    ap.add_argument(
        "--cv-runs",
        nargs="+",
        default=["runs/acdc_cv"],
        help="CV run folder(s) with fold*/best.pt; several: each fold's model is the ensemble "
        "of their fold models (for an ensemble's calibration)",
    )
    ap.add_argument("-o", "--output", default="benchmarks/results")
    ap.add_argument("--model", default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--parts", nargs="+", default=["sunnybrook", "qc", "speed"])
    ap.add_argument(
        "--backend",
        default="auto",
        choices=["auto", "torch", "onnxruntime"],
        help="what runs the network (Segmenter's backend; auto: ONNX Runtime on a CPU in float32)",
    )
    add_roi_argument(ap)
    ap.add_argument(
        "--calibrate-entropy",
        action="store_true",
        help="set the QC heart-entropy and disagreement review thresholds to their 90th "
        "percentiles over the "
        "held-out ACDC CV studies of --cv-runs before scoring (for a new model)",
    )
    ap.add_argument(
        "--precision",
        choices=("auto", "float32", "bfloat16"),
        default=None,
        help="the network's precision (Segmenter's precision; default: the model's, auto: "
        "bfloat16 where the CPU has native bfloat16 kernels, which ONNX Runtime does not run)",
    )
    ap.add_argument(
        "--write-calibration",
        action="store_true",
        help="with --calibrate-entropy: save the thresholds next to the --model checkpoint "
        "(model.qc.json; an ensemble's next to its first member, a+b.qc.json), where "
        "cardioseg analyze reads them as that model's QC calibration",
    )
    ap.add_argument(
        "--review-thresholds",
        nargs=2,
        type=float,
        metavar=("HEART_ENTROPY", "DISAGREEMENT"),
        help="with --summarize: also the statuses with these study-level review thresholds, "
        "re-applied to each study's raw values (e.g. another model's calibration)",
    )
    ap.add_argument(
        "--summarize",
        metavar="CSV",
        help="write the QC summary of an earlier run's clinical_qc_cases.csv (no prediction; "
        "thresholds as shipped in cardioseg.clinical.qc)",
    )
    args = ap.parse_args()
    if args.summarize:
        rows = _read_rows(Path(args.summarize))
        thresholds = (ENTROPY_HEART_REVIEW, DISAGREEMENT_REVIEW, DISAGREEMENT_SLICE_NOTE)
        text = "\n".join(
            [
                "# QC summary",
                "",
                f"Command: `python benchmarks/clinical_benchmark.py {' '.join(sys.argv[1:])}`",
                "",
                *qc_summary(rows, thresholds, calibrated=False),
                *(
                    _reapplied_thresholds(rows, *args.review_thresholds)
                    if args.review_thresholds
                    else []
                ),
            ]
        )
        out = Path(args.output)
        out.mkdir(parents=True, exist_ok=True)
        (out / "clinical_qc_summary.md").write_text(text)
        print(text)
        return
    torch.set_num_threads(args.threads)
    data, out = Path(args.data), Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    seg = Segmenter(args.model, roi=roi_value(args), backend=args.backend, precision=args.precision)
    from cardioseg.inference.segmenter import native_bfloat16

    lines = [
        "# Clinical analysis benchmark",
        "",
        f"Command: `python benchmarks/clinical_benchmark.py {' '.join(sys.argv[1:])}`  ",
        f"Machine: {platform.machine()}, torch threads {args.threads}, native bfloat16 "
        f"kernels: {'yes' if native_bfloat16(torch.device('cpu')) else 'no'}.",
        "",
    ]
    if "sunnybrook" in args.parts:
        lines += sunnybrook(data, seg, out)
    if "qc" in args.parts and data.exists():
        write_to = None
        if args.write_calibration:
            if not (args.calibrate_entropy and args.cv_runs):
                sys.exit("--write-calibration needs --calibrate-entropy and --cv-runs")
            write_to = calibration_path(seg.checkpoint_paths)
        rows, thresholds = qc_study_rows(
            data,
            seg,
            [Path(r) for r in args.cv_runs] if args.cv_runs else None,
            args.calibrate_entropy,
            write_to,
        )
        keys = sorted(
            {k for r in rows for k in r},
            key=lambda k: list(rows[0]).index(k) if k in rows[0] else 99,
        )
        with open(out / "clinical_qc_cases.csv", "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=keys)
            w.writeheader()
            w.writerows(rows)
        lines += qc_summary(rows, thresholds, args.calibrate_entropy)
    if "speed" in args.parts:
        lines += speed(seg, args.repeats)
    if "cli" in args.parts:
        lines += cli_speed(data, args.repeats)
    text = "\n".join(lines)
    (out / "clinical_benchmark.md").write_text(text)
    (out / "clinical_benchmark.json").write_text(json.dumps({"argv": sys.argv[1:]}))
    print(text)


if __name__ == "__main__":
    main()
