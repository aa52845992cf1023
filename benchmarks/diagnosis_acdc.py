"""ACDC group classifier (research use only, not a diagnosis): features, cross-validation, model.

Extracts shape features (:func:`cardioseg.clinical.features.shape_features`) from the ACDC
reference labels (ED + ES of every patient, height and weight from ``Info.cfg``), runs a seeded
stratified 5-fold patient-level cross-validation of the logistic-regression classifier, fits it
on all patients and writes:

* ``<output>/diagnosis_cv.md``: accuracy, per-class recall, confusion matrix, the command;
* ``<output>/diagnosis_features.csv``: the features of every patient;
* ``src/cardioseg/weights/diagnosis_acdc.json``: the model fitted on all patients (plain JSON).

With ``--predictions DIR`` (predicted canonical masks named like the image files, e.g. the
held-out predictions of ``benchmarks/acdc_cv.py``) it also reports the accuracy of the classifier
trained on reference features of the training folds and applied to predicted-mask features of the
held-out fold.

    python benchmarks/diagnosis_acdc.py
    python benchmarks/diagnosis_acdc.py --predictions runs/acdc_cv/predictions
"""

from __future__ import annotations

import argparse
import csv
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from commands import command_line

from cardioseg.clinical.diagnosis import (
    DEFAULT_FEATURES,
    DISCLAIMER,
    GROUP_NAMES,
    classification_summary,
    cross_validate,
    save_model,
    train_classifier,
)
from cardioseg.clinical.features import shape_features
from cardioseg.data.datasets import CaseRecord, ed_es_pairs, load_case, read_acdc
from cardioseg.io.nifti import atomic_write, read_label

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "acdc" / "training"
DEFAULT_MODEL_OUT = REPO / "src" / "cardioseg" / "weights" / "diagnosis_acdc.json"

#: Seeds of the repeated cross-validation reported as a stability check.
REPEAT_SEEDS = tuple(range(10))


def _patients(records: list[CaseRecord]) -> dict[str, dict[str, CaseRecord]]:
    return {s: p for (_, s), p in ed_es_pairs(records, labelled=False).items()}


def _features(
    phases: dict[str, CaseRecord], prediction_dir: Path | None = None
) -> dict[str, float] | None:
    """Features of one patient from its reference labels or from predicted masks."""
    labels, spacing = {}, None
    for phase in ("ED", "ES"):
        rec = phases[phase]
        if prediction_dir is None:
            if not rec.label:
                return None
            _, lab, props = load_case(rec)
        else:
            pred = prediction_dir / Path(rec.image).name
            if not pred.exists():
                return None
            _, _, props = load_case(rec, with_label=False)
            lab = read_label(pred, "canonical", reference=props)
        labels[phase] = lab
        spacing = props.spacing
    extra = phases["ED"].extra
    return shape_features(
        labels["ED"], labels["ES"], spacing, extra.get("height"), extra.get("weight")
    )


def _display(path: Path) -> str:
    path = path.resolve()
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def _cm_table(cv: dict[str, Any]) -> list[str]:
    classes = cv["classes"]
    lines = [
        "| true \\ predicted | " + " | ".join(classes) + " | recall |",
        "|---" * (len(classes) + 2) + "|",
    ]
    for k, row in zip(classes, cv["confusion_matrix"], strict=True):
        cells = " | ".join(str(v) for v in row)
        recall = cv["per_class_recall"][k]
        shown = f"{recall:.2f}" if np.isfinite(recall) else "–"
        lines.append(f"| **{k}** | {cells} | {shown} |")
    return lines


def _write_csv(path: Path, subjects: list[str], groups: list[str], rows: list[dict]) -> None:
    keys = sorted({k for r in rows for k in r})
    with atomic_write(path) as tmp, open(tmp, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["subject", "group", *keys])
        for s, g, r in zip(subjects, groups, rows, strict=True):
            w.writerow([s, g, *(f"{r.get(k, float('nan')):.6g}" for k in keys)])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(DEFAULT_DATA), help="ACDC training folder")
    ap.add_argument("-o", "--output", default=str(REPO / "benchmarks" / "results"))
    ap.add_argument("--model-out", default=str(DEFAULT_MODEL_OUT))
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--c", type=float, default=1.0, help="inverse L2 regularisation strength")
    ap.add_argument("--predictions", default=None, help="folder of predicted masks (optional)")
    args = ap.parse_args(argv)
    command = command_line("diagnosis_acdc.py", argv)
    t0 = time.time()
    out = Path(args.output)

    patients = _patients(read_acdc(args.data))
    subjects, groups, rows = [], [], []
    for subject, phases in patients.items():
        feats = _features(phases)
        if feats is None:
            print(f"skip {subject}: no reference labels")
            continue
        subjects.append(subject)
        groups.append(phases["ED"].group)
        rows.append(feats)
    counts = dict(sorted(Counter(groups).items()))
    print(f"{len(rows)} patients, groups {counts} ({time.time() - t0:.0f} s)", flush=True)

    cv = cross_validate(rows, groups, args.folds, args.seed, c=args.c)
    repeated = [
        cross_validate(rows, groups, args.folds, s, c=args.c)["accuracy"] for s in REPEAT_SEEDS
    ]
    sensitivity = []
    no_thickness = [f for f in DEFAULT_FEATURES if not f.startswith("myo_thick")]
    raw = [
        "lv_edv_ml",
        "lv_esv_ml",
        "rv_edv_ml",
        "rv_esv_ml",
        "lv_ef_pct",
        "rv_ef_pct",
        "lv_mass_g",
        *DEFAULT_FEATURES[7:],
    ]
    for name, feats, c in [
        ("default features, C=0.1", None, 0.1),
        ("default features, C=10", None, 10.0),
        ("without wall-thickness features", no_thickness, args.c),
        ("raw (not BSA-indexed) volumes and mass", raw, args.c),
    ]:
        accs = [
            cross_validate(rows, groups, args.folds, s, feature_names=feats, c=c)["accuracy"]
            for s in REPEAT_SEEDS
        ]
        sensitivity.append((name, float(np.mean(accs)), float(np.std(accs))))
    print(f"CV accuracy {cv['accuracy']:.3f} (seed {args.seed})", flush=True)

    pred_section: list[str] = []
    if args.predictions:
        pdir = Path(args.predictions)
        keep, pred_rows = [], []
        for i, subject in enumerate(subjects):
            feats = _features(patients[subject], pdir)
            if feats is not None:
                keep.append(i)
                pred_rows.append(feats)
        pred_section += ["", "## Applied to predicted masks", ""]
        if not keep:
            pred_section.append(f"No patient has predicted ED and ES masks in `{pdir}`.")
        else:
            # Same folds and models as the reference result: every held-out patient with
            # predicted masks is scored on its predicted-mask features.
            test_rows = list(rows)
            for i, feats in zip(keep, pred_rows, strict=True):
                test_rows[i] = feats
            cv_all = cross_validate(
                rows, groups, args.folds, args.seed, c=args.c, test_rows=test_rows
            )
            grp_k = [groups[i] for i in keep]
            cv_pred = classification_summary(
                grp_k, [cv_all["predicted"][i] for i in keep], cv["classes"]
            )
            cv_ref = classification_summary(
                grp_k, [cv["predicted"][i] for i in keep], cv["classes"]
            )
            _write_csv(
                out / "diagnosis_features_predicted.csv",
                [subjects[i] for i in keep],
                grp_k,
                pred_rows,
            )
            pred_section += [
                f"Predicted masks: `{pdir}` ({len(keep)} of {len(rows)} patients have ED and ES "
                f"masks; groups {dict(sorted(Counter(grp_k).items()))}). Same folds and models as "
                "above: each fold's classifier is trained on the **reference** features of its "
                "training patients and applied to the **predicted-mask** features of its "
                "held-out patients.",
                "",
                f"- Accuracy on predicted-mask features: **{cv_pred['accuracy']:.3f}** "
                f"({int(np.trace(cv_pred['confusion_matrix']))}/{len(keep)}), balanced "
                f"{cv_pred['balanced_accuracy']:.3f}",
                f"- Reference-feature accuracy on the same patients and folds: "
                f"{cv_ref['accuracy']:.3f}",
                "",
                *_cm_table(cv_pred),
                "",
                "Features: `diagnosis_features_predicted.csv`.",
            ]
            print(f"CV accuracy on predicted masks {cv_pred['accuracy']:.3f}", flush=True)

    model = train_classifier(rows, groups, c=args.c)
    model["training"].update(
        {
            "dataset": "ACDC training set, reference labels (one row per patient, ED + ES)",
            "subjects": len(rows),
            "command": command,
        }
    )
    model["cross_validation"] = {
        "folds": args.folds,
        "seed": args.seed,
        "accuracy": cv["accuracy"],
        "balanced_accuracy": cv["balanced_accuracy"],
        "per_class_recall": cv["per_class_recall"],
        "confusion_matrix": cv["confusion_matrix"],
        "classes": cv["classes"],
        "repeated_accuracy_mean": float(np.mean(repeated)),
        "repeated_accuracy_sd": float(np.std(repeated)),
        "repeated_seeds": list(REPEAT_SEEDS),
    }
    save_model(model, args.model_out)
    _write_csv(out / "diagnosis_features.csv", subjects, groups, rows)

    classes = cv["classes"]
    absent = [g for g in GROUP_NAMES if g not in classes]
    class_line = ", ".join(f"{k} ({GROUP_NAMES.get(k, k)}, n={counts[k]})" for k in classes)
    md = [
        "# ACDC group classifier (research use only, not a diagnosis)",
        "",
        f"> {DISCLAIMER}",
        "",
        f"Command: `{command}`",
        "",
        f"- Data: `{args.data}`, reference labels, {len(rows)} patients (one row per patient).",
        f"- Classes present and supported by the model: {class_line}.",
    ]
    if absent:
        md.append(
            f"- Groups absent from the training data, which the model can never suggest: "
            f"{', '.join(absent)}."
        )
    md += [
        f"- Model: standardised multinomial logistic regression, L2, C={args.c:g}, "
        f"{len(DEFAULT_FEATURES)} features chosen a priori: "
        + ", ".join(f"`{f}`" for f in DEFAULT_FEATURES)
        + ".",
        f"- Validation: stratified {args.folds}-fold cross-validation, patient-level, "
        f"shuffle seed {args.seed}.",
        "",
        "## Cross-validated result (reference labels)",
        "",
        f"- Accuracy: **{cv['accuracy']:.3f}** ({int(np.trace(cv['confusion_matrix']))}"
        f"/{len(rows)}), balanced accuracy {cv['balanced_accuracy']:.3f}",
        f"- Over {len(REPEAT_SEEDS)} shuffle seeds ({REPEAT_SEEDS[0]}–{REPEAT_SEEDS[-1]}): "
        f"{np.mean(repeated):.3f} ± {np.std(repeated):.3f} (mean ± SD)",
        "",
        "Per-class recall and confusion matrix (rows: true group, columns: predicted):",
        "",
        *_cm_table(cv),
        "",
        "## Sensitivity (reported only; not used to choose the shipped model)",
        "",
        f"| variant | accuracy, mean ± SD over {len(REPEAT_SEEDS)} seeds |",
        "|---|---|",
        f"| shipped: default features, C={args.c:g} | "
        f"{np.mean(repeated):.3f} ± {np.std(repeated):.3f} |",
        *(f"| {n} | {m:.3f} ± {s:.3f} |" for n, m, s in sensitivity),
        *pred_section,
        "",
        "## Caveats",
        "",
        "- Features come from expert reference segmentations; on automatic segmentations the "
        "accuracy is lower (see `--predictions`). The ACDC groups were themselves assigned "
        "with thresholds on similar measurements, so high accuracy here is expected and says "
        "little about real clinical populations.",
        "- Small single-centre, single-vendor dataset; no other diseases, no mixed pathologies.",
        "",
        f"Model: `{_display(Path(args.model_out))}` (fitted on all {len(rows)} patients). "
        "Features: `diagnosis_features.csv`. "
        f"Runtime {time.time() - t0:.0f} s.",
        "",
    ]
    with atomic_write(out / "diagnosis_cv.md") as tmp:
        tmp.write_text("\n".join(md))
    print(f"wrote {out / 'diagnosis_cv.md'} and {args.model_out} ({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
