"""``cardioseg explore``: what the datasets contain and how different their domains are.

For one or more dataset folders this writes, to an output folder:

* ``report.md``: cases per domain, vendor, centre and pathology group; spacing and shape
  statistics; figures; domain separability;
* ``figures/``: raw and normalised intensity histograms per domain, a montage of
  mid-ventricular slices per domain (reference contours where labelled);
* ``animations/``: GIFs of the cine (4D studies) or of ED ↔ ES (3D phase pairs);
* ``cases.csv`` (the dataset index) and ``stats.json``.

Domain separability: a logistic-regression classifier predicts each volume's domain from simple
image statistics, cross-validated with subjects kept together (scikit-learn). Balanced accuracy
far above chance after the project's intensity normalisation means the domains still differ in
ways the network can see.
"""

from __future__ import annotations

import json
import logging
from collections import Counter, defaultdict
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from cardioseg.data.datasets import CaseRecord, discover, load_case, record_domain
from cardioseg.data.index import write_index
from cardioseg.errors import CardiosegError
from cardioseg.io.nifti import ImageProperties, atomic_write, read_image
from cardioseg.preprocessing.geometry import is_mirrored_view, slice_axis
from cardioseg.preprocessing.intensity import normalize_intensity

log = logging.getLogger("cardioseg.explore")

#: Percentiles used as raw-intensity features.
_PCTS = (1, 5, 25, 50, 75, 95, 99)
#: Bin edges of the normalised-intensity features.
_NORM_BINS = np.linspace(-2.5, 4.0, 14)


# -- loading -------------------------------------------------------------------------------------


def _volume(
    record: CaseRecord, problems: list[str] | None = None
) -> tuple[np.ndarray, np.ndarray | None, ImageProperties]:
    """One 3D volume of a record (frame 0 of an unindexed 4D file), its label or ``None``, and
    its geometry.

    An unreadable label is noted in ``problems`` and the image is used without it.
    """
    if len(record.shape) == 4 and record.frame < 0:
        image, props = read_image(record.image)
        return image[..., 0], None, props
    try:
        image, label, props = load_case(record, with_label=bool(record.label))
    except CardiosegError as exc:
        if not record.label:
            raise
        if problems is not None:
            problems.append(f"{record.case_id}: label not used ({exc.problem})")
        image, label, props = load_case(record, with_label=False)
    return image, label, props


def _geometry(record: CaseRecord) -> dict[str, float]:
    sp, shape = tuple(record.spacing[:3]), tuple(record.shape[:3])
    axis = slice_axis(sp, shape)  # type: ignore[arg-type]
    inplane = [s for i, s in enumerate(sp) if i != axis]
    dims = [d for i, d in enumerate(shape) if i != axis]
    return {
        "inplane_mm": float(np.mean(inplane)),
        "slice_mm": float(sp[axis]),
        "rows": float(max(dims)),
        "cols": float(min(dims)),
        "slices": float(shape[axis]),
        "frames": float(record.shape[3]) if len(record.shape) > 3 else 1.0,
    }


def _mid_slice(image: np.ndarray, label: np.ndarray | None, axis: int) -> int:
    if label is not None and (label == 1).any():
        area = np.moveaxis(label == 1, axis, 0).reshape(label.shape[axis], -1).sum(1)
        return int(np.argmax(area))
    return image.shape[axis] // 2


def _to_uint8(sl: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(sl, [0.5, 99.5])
    return (np.clip((sl - lo) / max(hi - lo, 1e-6), 0, 1) * 255).astype(np.uint8)


def _features(raw: np.ndarray, geometry: dict[str, float]) -> dict[str, np.ndarray]:
    v = raw.astype(np.float32).ravel()
    p = np.percentile(v, _PCTS)
    scale = max(float(p[-1]), 1e-6)
    moments = [float(v.mean()), float(v.std()), float(v.max())]
    raw_f = np.concatenate([np.log1p(np.abs(p)), np.log1p(np.abs(moments)), p / scale])
    n = normalize_intensity(raw).ravel()
    hist = np.histogram(np.clip(n, _NORM_BINS[0], _NORM_BINS[-1]), _NORM_BINS)[0] / n.size
    mean_n = float(n.mean())
    skew = float(((n - mean_n) ** 3).mean())
    kurt = float(((n - mean_n) ** 4).mean())
    norm_f = np.concatenate([hist, np.percentile(n, _PCTS), [skew, kurt]])
    geo_f = np.array([geometry[k] for k in ("inplane_mm", "slice_mm", "rows", "cols", "slices")])
    return {"raw intensity": raw_f, "normalised intensity": norm_f, "geometry": geo_f}


# -- separability --------------------------------------------------------------------------------


def domain_separability(
    features: dict[str, list[np.ndarray]],
    domains: list[str],
    groups: list[str],
    seed: int = 0,
) -> dict[str, Any]:
    """Cross-validated balanced accuracy of a domain classifier per feature set.

    Domains with fewer than 2 subjects are left out (they cannot be cross-validated).

    Args:
        features: Feature set name → one vector per volume.
        domains: Domain per volume.
        groups: Subject per volume (kept within one fold).
        seed: Seed of the fold assignment.

    Returns:
        ``{"classes", "left_out", "n_volumes", "chance", "folds", "results": {set: {"mean",
        "std"}}}`` or ``{"note": ...}`` when there is not enough data.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedGroupKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    subjects = defaultdict(set)
    for d, g in zip(domains, groups, strict=True):
        subjects[d].add(g)
    keep = sorted(d for d, s in subjects.items() if len(s) >= 2)
    left_out = sorted(set(subjects) - set(keep))
    if len(keep) < 2:
        return {
            "note": "needs at least two domains with two or more subjects each",
            "left_out": left_out,
        }
    idx = [i for i, d in enumerate(domains) if d in keep]
    y = np.array([domains[i] for i in idx])
    g = np.array([groups[i] for i in idx])
    folds = int(min(5, min(len(subjects[d]) for d in keep)))
    cv = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    results = {}
    sets = dict(features)
    sets["all"] = [np.concatenate(v) for v in zip(*features.values(), strict=True)]
    for name, vectors in sets.items():
        x = np.nan_to_num(np.stack([vectors[i] for i in idx]).astype(np.float64))
        clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
        scores = cross_val_score(clf, x, y, groups=g, cv=cv, scoring="balanced_accuracy")
        results[name] = {"mean": float(scores.mean()), "std": float(scores.std())}
    return {
        "classes": keep,
        "left_out": left_out,
        "n_volumes": len(idx),
        "chance": 1.0 / len(keep),
        "folds": folds,
        "results": results,
    }


# -- figures -------------------------------------------------------------------------------------


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> Path:
    """``path`` as a 200 dpi PNG, and a PDF copy beside it (for a paper)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as tmp:
        fig.savefig(tmp, dpi=200, format="png")
    with atomic_write(path.with_suffix(".pdf")) as tmp:
        fig.savefig(tmp, format="pdf")
    _plt().close(fig)
    return path


def _histograms(samples: dict[str, dict[str, list[np.ndarray]]], fig_dir: Path) -> list[Path]:
    plt = _plt()
    doms = sorted(samples)
    cols = min(3, len(doms))
    rows = int(np.ceil(len(doms) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows), squeeze=False)
    for ax, d in zip(axes.ravel(), doms, strict=False):
        v = np.concatenate(samples[d]["raw"])
        hi = np.percentile(v, 99.9)
        ax.hist(np.clip(v, None, hi), bins=80, density=True, color="tab:blue", alpha=0.8)
        ax.set_title(f"{d} (raw, {len(samples[d]['raw'])} volumes)", fontsize=10)
        ax.set_xlabel("stored intensity (scanner units)")
        ax.set_ylabel("density")
    for ax in axes.ravel()[len(doms) :]:
        ax.axis("off")
    fig.tight_layout()
    raw = _save(fig, fig_dir / "histograms_raw.png")
    fig, ax = plt.subplots(figsize=(7, 4))
    bins = np.linspace(-2.5, 5, 121)
    lo, hi = bins[-1], bins[0]
    for d in doms:
        v = np.concatenate(samples[d]["norm"])
        h, e = np.histogram(np.clip(v, bins[0], bins[-1]), bins, density=True)
        centres = 0.5 * (e[1:] + e[:-1])
        # empty bins left out: a log axis has no 0 (the lines fell off the panel)
        ax.plot(np.where(h > 0, centres, np.nan), h, label=f"{d} ({len(samples[d]['norm'])})")
        if (h > 0).any():
            lo, hi = min(lo, e[np.argmax(h > 0)]), max(hi, e[len(h) - np.argmax(h[::-1] > 0)])
    if lo < hi:
        ax.set_xlim(lo, hi)
    ax.set_xlabel("normalised intensity (percentile clip + z-score)")
    ax.set_ylabel("density")
    ax.set_yscale("log")
    ax.legend(fontsize=8, title="domain (volumes)", title_fontsize=8)
    fig.tight_layout()
    return [raw, _save(fig, fig_dir / "histograms_normalised.png")]


def _montage(slices: dict[str, list[tuple]], fig_dir: Path) -> Path:
    plt = _plt()
    doms = sorted(slices)
    cols = max(len(v) for v in slices.values())
    fig, axes = plt.subplots(len(doms), cols, figsize=(2.2 * cols, 2.4 * len(doms)), squeeze=False)
    for r, d in enumerate(doms):
        for c in range(cols):
            ax = axes[r][c]
            ax.axis("off")
            if c >= len(slices[d]):
                continue
            name, img, lab, aspect = slices[d][c]
            ax.imshow(img.T, cmap="gray", origin="lower", aspect=aspect)
            if lab is not None:
                # MYO first: the LV contour is the MYO's inner one, drawn over it (else unseen)
                for value, color in ((2, "g"), (1, "r"), (3, "b")):
                    if (lab == value).any():
                        ax.contour(
                            (lab == value).T.astype(float),
                            levels=[0.5],
                            colors=color,
                            linewidths=0.8,
                            origin="lower",
                        )
            ax.set_title(f"{d}\n{name}" if c == 0 else name, fontsize=7)
    from matplotlib.lines import Line2D

    handles = [
        Line2D([], [], color=c, label=n) for n, c in (("LV", "r"), ("MYO", "g"), ("RV", "b"))
    ]
    fig.legend(
        handles=handles,
        loc="lower center",
        ncol=3,
        fontsize=7,
        title="reference contours",
        title_fontsize=7,
    )
    fig.tight_layout(rect=(0, 0.5 / fig.get_figheight(), 1, 1))  # the legend below the slices
    return _save(fig, fig_dir / "montage_mid_slices.png")


def _gif(frames: list[np.ndarray], path: Path, duration_ms: int) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    images = [Image.fromarray(np.ascontiguousarray(f.T[::-1])) for f in frames]
    with atomic_write(path) as tmp:
        images[0].save(
            tmp, format="GIF", save_all=True, append_images=images[1:], duration=duration_ms, loop=0
        )
    return path


# -- tables --------------------------------------------------------------------------------------


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return out + [""]


def _counts(records: list[CaseRecord], key: str) -> list[list[Any]]:
    by: dict[tuple[str, str], dict[str, Any]] = defaultdict(lambda: {"s": set(), "v": 0, "l": 0})
    for r in records:
        e = by[(r.dataset, str(getattr(r, key) or "(none)"))]
        e["s"].add(r.subject)
        e["v"] += 1
        e["l"] += bool(r.label)
    return [[d, k, len(e["s"]), e["v"], e["l"]] for (d, k), e in sorted(by.items())]


def _stat(values: list[float], digits: int = 2) -> str:
    a = np.asarray(values, dtype=float)
    return f"{np.median(a):.{digits}f} [{a.min():.{digits}f}–{a.max():.{digits}f}]"


# -- main ----------------------------------------------------------------------------------------


def explore_datasets(
    datasets: list[str | Path],
    out_dir: str | Path,
    layout: str = "auto",
    domain_key: str = "dataset+vendor",
    max_cases_per_domain: int = 40,
    montage_per_domain: int = 6,
    max_animations: int = 6,
    seed: int = 0,
) -> Path:
    """Explore dataset folders and write a Markdown report with figures.

    Args:
        datasets: Dataset folders (any supported layout).
        out_dir: Output folder.
        layout: Reader for all folders (``auto`` detects each).
        domain_key: Case attribute(s) defining a domain (``vendor``, ``centre``, ``dataset``,
            or several joined by ``+``).
        max_cases_per_domain: Volumes read per domain for intensities and separability (whole
            subjects, drawn with ``seed``).
        montage_per_domain: Slices per domain in the montage.
        max_animations: Number of GIFs per kind (cine / ED-ES).
        seed: Seed of the case sampling and of the cross-validation folds.

    Returns:
        Path of ``report.md``.

    Example:
        >>> explore_datasets(["../shared/data/mnms"], "explore-mnms")  # doctest: +SKIP
    """
    if not datasets:
        raise CardiosegError(None, "give at least one dataset folder")
    from cardioseg.training.config import RECORD_KEYS

    bad = [k for k in domain_key.split("+") if k not in RECORD_KEYS]
    if bad:
        raise CardiosegError(None, f"unknown domain key {bad}; use {', '.join(RECORD_KEYS)}")
    out = Path(out_dir)
    fig_dir, anim_dir = out / "figures", out / "animations"
    records: list[CaseRecord] = []
    for d in datasets:
        found = discover(d, layout)
        # generic folders all read as dataset "folder": name them after their folder instead
        records += [
            replace(r, dataset=Path(d).resolve().name) if r.dataset == "folder" else r
            for r in found
        ]
    out.mkdir(parents=True, exist_ok=True)
    write_index(records, out / "cases.csv")
    domain = {id(r): record_domain(r, domain_key) for r in records}

    # sample whole subjects per domain
    rng = np.random.default_rng(seed)
    by_domain: dict[str, list[CaseRecord]] = defaultdict(list)
    for r in records:
        by_domain[domain[id(r)]].append(r)
    chosen: list[CaseRecord] = []
    for d in sorted(by_domain):
        subs = sorted({r.subject for r in by_domain[d]})
        rng.shuffle(subs)
        picked: list[CaseRecord] = []
        for s in subs:
            if len(picked) >= max_cases_per_domain:
                break
            picked += [r for r in by_domain[d] if r.subject == s]
        chosen += picked

    samples: dict[str, dict[str, list[np.ndarray]]] = defaultdict(lambda: {"raw": [], "norm": []})
    feats: dict[str, list[np.ndarray]] = defaultdict(list)
    feat_domains: list[str] = []
    feat_groups: list[str] = []
    montage: dict[str, list[tuple]] = defaultdict(list)
    skipped: list[str] = []
    vrng = np.random.default_rng(seed + 1)
    mirrored: dict[str, int] = defaultdict(int)
    for r in chosen:
        d = domain[id(r)]
        try:
            image, label, props = _volume(r, skipped)
        except CardiosegError as exc:
            skipped.append(f"{r.case_id}: {exc.problem}")
            continue
        spacing = props.spacing
        mirrored[d] += int(is_mirrored_view(props.affine, slice_axis(spacing, image.shape)))
        geo = _geometry(r)
        flat = image.astype(np.float32).ravel()
        pick = vrng.choice(flat.size, size=min(flat.size, 20000), replace=False)
        samples[d]["raw"].append(flat[pick])
        samples[d]["norm"].append(normalize_intensity(image).ravel()[pick])
        for k, v in _features(image, geo).items():
            feats[k].append(v)
        feat_domains.append(d)
        feat_groups.append(f"{r.dataset}/{r.subject}")
        if len(montage[d]) < montage_per_domain and (
            r.phase in ("ED", "NA", "LGE") or not montage[d]
        ):
            axis = slice_axis(spacing, image.shape)
            z = _mid_slice(image, label, axis)
            sl = np.take(image, z, axis=axis)
            lab = None if label is None else np.take(label, z, axis=axis)
            sp = [s for i, s in enumerate(spacing) if i != axis]
            montage[d].append((f"{r.subject} {r.phase}", _to_uint8(sl), lab, sp[1] / sp[0]))

    figures = _histograms(samples, fig_dir) if samples else []
    if montage:
        figures.append(_montage(montage, fig_dir))

    # animations: 4D cines, else ED <-> ES of the first subjects per domain
    cines, phases = [], []
    seen_4d: set[str] = set()
    for r in records:
        is_4d = len(r.shape) == 4 or r.frame >= 0  # M&Ms 4D records keep a 3D shape
        if is_4d and r.image not in seen_4d and len(cines) < max_animations:
            seen_4d.add(r.image)
            try:
                image, props = read_image(r.image)
            except CardiosegError as exc:
                skipped.append(f"{r.image}: {exc.problem}")
                continue
            if image.ndim != 4:
                continue
            axis = slice_axis(props.spacing, image.shape[:3])
            z = image.shape[axis] // 2
            frames = [
                _to_uint8(np.take(image[..., t], z, axis=axis)) for t in range(image.shape[3])
            ]
            name = Path(r.image).name.split(".nii")[0]
            cines.append(_gif(frames, anim_dir / f"cine_{name}.gif", 80))
    pairs: dict[tuple[str, str], dict[str, CaseRecord]] = defaultdict(dict)
    for r in records:
        if r.phase in ("ED", "ES") and len(r.shape) == 3:
            pairs[(r.dataset, r.subject)][r.phase] = r
    done_domains: set[str] = set()
    for (ds, subject), ph in sorted(pairs.items()):
        if len(ph) < 2 or len(phases) >= max_animations:
            continue
        d = domain[id(ph["ED"])]
        if d in done_domains:
            continue
        try:
            ed, ed_lab, ed_props = _volume(ph["ED"])
            es, _, _ = _volume(ph["ES"])
            sp = ed_props.spacing
        except CardiosegError as exc:
            skipped.append(f"{ds}/{subject}: {exc.problem}")
            continue
        if ed.shape != es.shape:
            continue
        axis = slice_axis(sp, ed.shape)
        z = _mid_slice(ed, ed_lab, axis)
        frames = [_to_uint8(np.take(v, z, axis=axis)) for v in (ed, es)]
        safe = "".join(c if c.isalnum() else "_" for c in f"{d}_{subject}")
        phases.append(_gif(frames, anim_dir / f"ed_es_{safe}.gif", 500))
        done_domains.add(d)

    sep = (
        domain_separability(feats, feat_domains, feat_groups, seed)
        if feat_domains
        else {"note": "no volumes could be read"}
    )

    # geometry table per domain (all records, from headers)
    geo_rows = []
    for d in sorted(by_domain):
        g = [_geometry(r) for r in by_domain[d]]
        geo_rows.append(
            [
                d,
                len(g),
                _stat([x["inplane_mm"] for x in g]),
                _stat([x["slice_mm"] for x in g]),
                _stat([x["rows"] for x in g], 0) + " × " + _stat([x["cols"] for x in g], 0),
                _stat([x["slices"] for x in g], 0),
                _stat([x["frames"] for x in g], 0),
            ]
        )
    int_rows = []
    for d in sorted(samples):
        raw = np.concatenate(samples[d]["raw"])
        p = np.percentile(raw, [0.5, 50, 99.5])
        n = len(samples[d]["raw"])
        int_rows.append(
            [d, n, f"{p[0]:.4g}", f"{p[1]:.4g}", f"{p[2]:.4g}", f"{mirrored[d]} of {n}"]
        )

    lines = [
        "# Dataset exploration",
        "",
        f"Datasets: {', '.join(f'`{d}`' for d in datasets)}. Domains by `{domain_key}`. "
        f"{len(records)} volumes of {len({(r.dataset, r.subject) for r in records})} subjects; "
        f"{len(chosen)} volumes read for intensities (at most {max_cases_per_domain} per "
        "domain, whole subjects).",
        "",
        "## Cases",
        "",
        "### Per domain",
        "",
        *_table(
            ["domain", "subjects", "volumes", "labelled", "phases"],
            [
                [
                    d,
                    len({r.subject for r in v}),
                    len(v),
                    sum(bool(r.label) for r in v),
                    ", ".join(f"{k} {n}" for k, n in sorted(Counter(r.phase for r in v).items())),
                ]
                for d, v in sorted(by_domain.items())
            ],
        ),
    ]
    for key, title in (("vendor", "vendor"), ("centre", "centre"), ("group", "pathology group")):
        lines += [
            f"### Per {title}",
            "",
            *_table(["dataset", title, "subjects", "volumes", "labelled"], _counts(records, key)),
        ]
    lines += [
        "## Geometry",
        "",
        "Median [min–max] from the headers; in-plane = mean of the two in-plane spacings; the "
        "slice axis is the one with the largest spacing.",
        "",
        *_table(
            [
                "domain",
                "volumes",
                "in-plane (mm)",
                "slice spacing (mm)",
                "in-plane size",
                "slices",
                "frames",
            ],
            geo_rows,
        ),
        "## Intensities",
        "",
        "Raw stored intensities (pooled voxel sample of the read volumes), then after the "
        "project's normalisation (0.5–99.5 percentile clipping and z-score per volume). "
        "'Stored mirrored': volumes whose affine shows the short-axis slices as the mirror image "
        "of the canonical view (slice normal towards the apex); the preprocessor flips them "
        "back before the network, the montage below shows them as stored.",
        "",
        *_table(["domain", "volumes", "p0.5", "median", "p99.5", "stored mirrored"], int_rows),
    ]
    lines += [f"![{f.stem}](figures/{f.name})" for f in figures if "hist" in f.name] + [""]
    lines += [
        "## Mid-ventricular slices",
        "",
        "Slice with the largest LV area where labelled (contours: LV red, MYO green, "
        "RV blue), else the middle slice.",
        "",
    ]
    lines += [f"![montage](figures/{f.name})" for f in figures if "montage" in f.name] + [""]
    lines += ["## Animations", ""]
    if cines or phases:
        lines += [f"- cine: [{p.name}](animations/{p.name})" for p in cines]
        lines += [f"- ED ↔ ES: [{p.name}](animations/{p.name})" for p in phases]
    else:
        lines += ["No 4D study or ED/ES pair found."]
    lines += ["", "## Domain separability", ""]
    if "results" in sep:
        lines += [
            f"Logistic regression on standardised per-volume statistics; {sep['folds']}-fold "
            f"cross-validation with subjects kept together; {sep['n_volumes']} volumes of "
            f"{len(sep['classes'])} domains ({', '.join(sep['classes'])}). Chance (balanced "
            f"accuracy) = {sep['chance']:.2f}.",
            "",
            *_table(
                ["features", "balanced accuracy"],
                [[k, f"{v['mean']:.2f} ± {v['std']:.2f}"] for k, v in sep["results"].items()],
            ),
            "Raw intensity features: log percentiles, moments and percentiles relative to p99. "
            "Normalised: histogram, percentiles, skewness and kurtosis after normalisation. "
            "Geometry: spacings and sizes.",
            "",
        ]
    else:
        lines += [f"Not computed: {sep['note']}.", ""]
    if sep.get("left_out"):
        lines += [f"Left out (fewer than 2 subjects): {', '.join(sep['left_out'])}.", ""]
    if skipped:
        lines += ["## Problems", ""] + [f"- {s}" for s in skipped] + [""]
    report = out / "report.md"
    with atomic_write(report) as tmp:
        tmp.write_text("\n".join(lines), encoding="utf-8")
    stats = {
        "n_volumes": len(records),
        "domains": {d: len(v) for d, v in by_domain.items()},
        "separability": sep,
        "figures": [str(f.relative_to(out)) for f in figures],
        "animations": [str(p.relative_to(out)) for p in cines + phases],
        "skipped": skipped,
    }
    with atomic_write(out / "stats.json") as tmp:
        tmp.write_text(json.dumps(stats, indent=2))
    return report
