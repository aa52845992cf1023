"""Benchmark outputs: per-case CSV, summary over seeds, Wilcoxon tests, box plots, Markdown."""

from __future__ import annotations

import csv
import json
import math
import shlex
import sys
import time
import warnings
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

import numpy as np

from cardioseg.benchmark.protocol import Protocol, RunSpec
from cardioseg.benchmark.runner import DONE, META_COLUMNS, run_dir, write_rows
from cardioseg.io.nifti import atomic_write

K = TypeVar("K")

#: Metrics of the summary table (per structure and overall).
SUMMARY_METRICS = ["mean_dice", "LV_dice", "MYO_dice", "RV_dice", "LV_hd95", "MYO_hd95", "RV_hd95"]
#: Metrics of the paired tests.
TEST_METRICS = ["mean_dice", "LV_dice", "MYO_dice", "RV_dice", "mean_hd95"]


def _num(v: str) -> float | str:
    try:
        return float(v)
    except (TypeError, ValueError):
        return v


def collect_rows(out_dir: Path, runs: list[RunSpec]) -> list[dict]:
    """Per-case rows of all finished runs (numbers parsed, ``mean_hd95`` added)."""
    rows = []
    for run in runs:
        d = run_dir(out_dir, run.key)
        if not (d / DONE).is_file() or not (d / "metrics.csv").is_file():
            continue
        with open(d / "metrics.csv", newline="") as fh:
            for row in csv.DictReader(fh):
                r = {k: (v if k in META_COLUMNS else _num(v)) for k, v in row.items()}
                r["seed"] = int(float(row["seed"]))
                hd = [r.get(f"{s}_hd95") for s in ("LV", "MYO", "RV")]
                hd = [h for h in hd if isinstance(h, float) and not math.isnan(h)]
                r["mean_hd95"] = float(np.mean(hd)) if hd else float("nan")
                rows.append(r)
    return rows


def evaluation_lines(out_dir: Path, runs: list[RunSpec]) -> list[str]:
    """The report's section on how the finished runs were evaluated (from each run's
    ``run.json["evaluation"]``): one line per distinct cardioseg version, model settings
    (heart window, TTA, backend, precision, harmonization, adaptation) and subject limit, with
    the runs that share it. Methods differ in TTA, harmonization or adaptation by design; a
    warning names what should not differ but does (the cardioseg version, the heart window, the
    precision, the subject limit, or a run without a record), since such metrics do not compare
    like for like."""
    from cardioseg.evaluation.runner import settings_text

    groups: dict[str, list[str]] = defaultdict(list)
    shared: dict[str, set] = defaultdict(set)
    for run in runs:
        d = run_dir(out_dir, run.key)
        if not (d / DONE).is_file():
            continue
        try:
            ev = json.loads((d / "run.json").read_text()).get("evaluation") or {}
        except (OSError, ValueError):
            ev = {}
        model = ev.get("model") or {}
        if not model:
            groups["not recorded (finished before runs recorded their evaluation)"].append(run.key)
            shared["record"].add("missing")
            continue
        limit = int(ev.get("max_subjects_per_target") or 0)
        version = ev.get("cardioseg_version", "?")
        how = settings_text(model) if "roi" in model else model.get("description", "?")
        subjects = f"at most {limit} subjects per target" if limit else "all subjects"
        groups[f"cardioseg {version}; {how}; {subjects}"].append(run.key)
        shared["record"].add("present")
        shared["cardioseg version"].add(version)
        shared["heart window"].add(model.get("roi"))
        shared["precision"].add(model.get("precision"))
        shared["subject limit"].add(limit)
    if not groups:
        return []
    lines = ["## How the runs were evaluated", ""]
    differ = [name for name, values in shared.items() if len(values) > 1]
    if differ:
        lines += [
            f"**The finished runs differ in {', '.join(differ)}: compare them with care** "
            "(`--reevaluate` evaluates them all again with the current code and settings).",
            "",
        ]
    for key, keys in groups.items():
        shown = ", ".join(f"`{k}`" for k in keys[:6]) + (
            f" and {len(keys) - 6} more" if len(keys) > 6 else ""
        )
        lines.append(f"- {key}: {len(keys)} run(s) ({shown})")
    lines += ["", "Per run: `runs/<experiment>/<method>/seed<k>/run.json` (`evaluation`).", ""]
    return lines


def _nanmean(values: list) -> float:
    a = np.array([v for v in values if isinstance(v, float)], dtype=float)
    a = a[~np.isnan(a)]
    return float(a.mean()) if a.size else float("nan")


def summarize(rows: list[dict]) -> list[dict]:
    """Mean ± std over seeds (of the per-seed mean over cases) per experiment, domain, method."""
    groups: dict[tuple, dict[int, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        groups[(r["experiment"], str(r["domain"]), r["method"])][r["seed"]].append(r)
    out = []
    for (exp, domain, method), by_seed in groups.items():
        entry: dict = {
            "experiment": exp,
            "domain": domain,
            "method": method,
            "n_seeds": len(by_seed),
            # the seeds' mean case count, rounded (they differ only where a run failed on some)
            "n_cases": int(float(np.mean([len(v) for v in by_seed.values()])) + 0.5),
        }
        for m in SUMMARY_METRICS:
            per_seed = [_nanmean([c.get(m) for c in cases]) for cases in by_seed.values()]
            a = np.array([v for v in per_seed if not math.isnan(v)])
            entry[f"{m}_mean"] = float(a.mean()) if a.size else float("nan")
            entry[f"{m}_std"] = float(a.std(ddof=1)) if a.size > 1 else float("nan")
            if "hd95" in m:  # cases without a distance (the structure in one mask only)
                missing = [sum(not _finite(c.get(m)) for c in cases) for cases in by_seed.values()]
                entry[f"{m}_missing"] = round(float(np.mean(missing)), 1)
        out.append(entry)
    return out


def _finite(value: object) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _per_case(rows: list[dict], exp: str, domain: str, method: str, metric: str) -> dict:
    vals: dict[str, list[float]] = defaultdict(list)
    for (_, case), v in _per_seed_case(rows, exp, domain, method, metric).items():
        vals[case].append(v)
    return {k: float(np.mean(v)) for k, v in vals.items()}


def _per_seed_case(
    rows: list[dict], exp: str, domain: str, method: str, metric: str
) -> dict[tuple[int, str], float]:
    """A method's finite values of ``metric`` by ``(seed, case_id)``."""
    vals: dict[tuple[int, str], float] = {}
    for r in rows:
        if r["experiment"] == exp and str(r["domain"]) == domain and r["method"] == method:
            v = r.get(metric)
            if isinstance(v, float) and not math.isnan(v):
                vals[(r["seed"], r["case_id"])] = v
    return vals


def _subject(case_id: str) -> str:
    """The subject a case belongs to: its ``case_id`` (``dataset/subject/phase``, as
    :func:`~cardioseg.benchmark.runner.evaluate_run` writes it) without the phase."""
    return case_id.rsplit("/", 1)[0]


def _paired_differences(a: dict[tuple[int, str], float], b: dict[tuple[int, str], float]) -> list:
    """Per-subject differences ``a - b``: each the mean over the subject's cases (e.g. its ED
    and ES volumes) and the seeds both methods have for them. The cases of one subject are not
    independent, so the subject is the unit of the paired test; a method missing a seed (a
    failed or not yet run training) is compared on the other seeds only, never against the
    other method's mean over more seeds."""
    return subject_differences(a, b, lambda key: _subject(key[1]))


def subject_differences(
    a: Mapping[K, float], b: Mapping[K, float], subject: Callable[[K], str]
) -> list[float]:
    """Per-subject paired differences ``a - b`` over the cases both have: each subject's is the
    mean over its cases (e.g. its ED and ES volumes), since two volumes of one subject are not
    independent pairs. Non-finite values are left out.

    Args:
        a, b: A value per case (any hashable key).
        subject: The subject a case key belongs to.

    Example:
        >>> a = {("s1", "ED"): 0.9, ("s1", "ES"): 0.8, ("s2", "ED"): 0.7}
        >>> b = {("s1", "ED"): 0.8, ("s1", "ES"): 0.8, ("s2", "ED"): 0.75}
        >>> [round(d, 3) for d in subject_differences(a, b, lambda k: k[0])]
        [0.05, -0.05]
    """
    diffs: dict[str, list[float]] = defaultdict(list)
    for key in set(a) & set(b):
        d = float(a[key]) - float(b[key])
        if np.isfinite(d):
            diffs[subject(key)].append(d)
    return [float(np.mean(diffs[s])) for s in sorted(diffs)]


def compare_paired(differences: Sequence[float]) -> dict[str, float | int]:
    """Wilcoxon signed-rank test of paired differences (method − reference), one per pair.

    Returns:
        ``n``, ``median_diff``, ``n_better`` (differences > 0), ``statistic`` and ``p_value``
        (``nan`` with fewer than two pairs; 1.0 when every difference is 0).

    Example:
        >>> r = compare_paired([0.0, 0.0])
        >>> r["n"], r["n_better"], r["p_value"]
        (2, 0, 1.0)
    """
    from scipy.stats import wilcoxon

    d = np.asarray(differences, dtype=float)
    entry: dict[str, float | int] = {
        "n": len(d),
        "median_diff": float(np.median(d)) if len(d) else float("nan"),
        "n_better": int((d > 0).sum()),
        "statistic": float("nan"),
        "p_value": float("nan"),
    }
    if len(d) and np.allclose(d, 0):
        entry.update(statistic=0.0, p_value=1.0)
    elif len(d) >= 2:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = wilcoxon(d)
        entry.update(statistic=float(res.statistic), p_value=float(res.pvalue))
    return entry


def paired_tests(rows: list[dict], proto: Protocol) -> list[dict]:
    """Wilcoxon signed-rank tests of each method against its references, per target domain.

    References: the protocol baseline, the method's ``compare_to`` and the method it takes its
    model from. Pairs are subjects (``n``): the differences over a subject's cases (e.g. ED and
    ES) and the seeds both methods have are averaged, since the cases of one subject are not
    independent observations.
    """
    keys = sorted({(r["experiment"], str(r["domain"])) for r in rows})
    methods = {(r["experiment"], r["method"]) for r in rows}
    out = []
    for exp, domain in keys:
        for name, md in proto.methods.items():
            if (exp, name) not in methods:
                continue
            refs = [proto.baseline, *md.compare_to, md.dependency]
            refs = [m for i, m in enumerate(refs) if m and m != name and m not in refs[:i]]
            for ref in refs:
                if (exp, ref) not in methods:
                    continue
                for metric in TEST_METRICS:
                    a = _per_seed_case(rows, exp, domain, name, metric)
                    b = _per_seed_case(rows, exp, domain, ref, metric)
                    test = compare_paired(_paired_differences(a, b))
                    test.pop("n_better")
                    out.append(
                        {
                            "experiment": exp,
                            "domain": domain,
                            "method": name,
                            "reference": ref,
                            "metric": metric,
                            **test,
                        }
                    )
    return out


def box_plots(rows: list[dict], proto: Protocol, fig_dir: Path) -> dict[str, Path]:
    """One figure per experiment, ``box_<experiment>.png`` (200 dpi) and ``.pdf``: per-case
    mean Dice (mean over seeds) by target domain and method; boxes: median and quartiles,
    whiskers: the furthest case within 1.5 IQR, circles: cases beyond, triangles: means."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig_dir.mkdir(parents=True, exist_ok=True)
    out = {}
    for exp in sorted({r["experiment"] for r in rows}):
        domains = sorted({str(r["domain"]) for r in rows if r["experiment"] == exp})
        methods = [
            m
            for m in proto.methods
            if any(r["experiment"] == exp and r["method"] == m for r in rows)
        ]
        cols = min(3, len(domains))
        nrows = -(-len(domains) // cols)
        width = 1.2 + 0.45 * len(methods)
        fig, axes = plt.subplots(nrows, cols, figsize=(width * cols, 3.6 * nrows), squeeze=False)
        for ax in axes.ravel()[len(domains) :]:
            ax.axis("off")
        for ax, domain in zip(axes.ravel(), domains, strict=False):
            data = [list(_per_case(rows, exp, domain, m, "mean_dice").values()) for m in methods]
            ax.boxplot([d if d else [float("nan")] for d in data], showmeans=True)
            ax.set_xticks(range(1, len(methods) + 1), methods, rotation=45, ha="right")
            ax.set_title(f"{domain} (n={max((len(d) for d in data), default=0)} cases)")
            ax.set_ylim(0, 1)
            ax.grid(axis="y", alpha=0.3)
        for row in axes:
            row[0].set_ylabel("mean Dice (LV, MYO, RV)")
        fig.suptitle(exp)
        fig.tight_layout()
        path = fig_dir / f"box_{exp}.png"
        with atomic_write(path) as tmp:
            fig.savefig(tmp, dpi=200, format="png")
        with atomic_write(path.with_suffix(".pdf")) as tmp:
            fig.savefig(tmp, format="pdf")
        plt.close(fig)
        out[exp] = path
    keep = {p for path in out.values() for p in (path, path.with_suffix(".pdf"))}
    for stale in [*fig_dir.glob("box_*.png"), *fig_dir.glob("box_*.pdf")]:
        if stale not in keep:  # experiments of an earlier report, now gone
            stale.unlink()
    return out


def _version() -> str:
    from cardioseg import __version__

    return __version__


def _fmt(mean: float, std: float, digits: int) -> str:
    if math.isnan(mean):
        return "n/a"
    return f"{mean:.{digits}f}" + ("" if math.isnan(std) else f" ± {std:.{digits}f}")


def _p(p: float) -> str:
    if math.isnan(p):
        return "n/a"
    stars = "***" if p < 0.001 else "**" if p < 0.01 else "*" if p < 0.05 else ""
    return f"{p:.3g}{stars}"


def write_report(
    proto: Protocol,
    runs: list[RunSpec],
    out_dir: Path,
    profile: str,
    status: dict[str, str],
    errors: dict[str, str],
) -> Path:
    """Write ``per_case_metrics.csv``, ``summary.csv``, ``wilcoxon.csv``, figures, ``report.md``."""
    rows = collect_rows(out_dir, runs)
    summary = summarize(rows)
    tests = paired_tests(rows, proto)
    if rows:
        write_rows(out_dir / "per_case_metrics.csv", rows)
    if summary:
        write_rows(out_dir / "summary.csv", summary)
    if tests:
        write_rows(out_dir / "wilcoxon.csv", tests)
    figs = box_plots(rows, proto, out_dir / "figures") if rows else {}
    counts = defaultdict(int)
    for s in status.values():
        counts[s] += 1
    seeds = sorted({r.seed for r in runs})
    lines = [
        f"# Benchmark: {proto.name}",
        "",
        *([proto.description.strip(), ""] if proto.description else []),
        f"Protocol `{proto.path}`, profile `{profile}`, seeds {seeds}. "
        f"Runs: {len(runs)} planned, {counts['done']} run now, {counts['skipped']} finished "
        f"earlier, {counts['re-evaluated']} finished earlier and evaluated again with the current "
        f"inference code, {counts['failed']} failed, {counts['not run']} not run (yet). "
        f"Written {time.strftime('%Y-%m-%d %H:%M')} by cardioseg {_version()}: "
        f"`{shlex.join(sys.argv)}`.",
        "",
        "Files: `per_case_metrics.csv` (one row per case, method and seed: Dice, HD95, ... per "
        "structure, with phase and domain), `summary.csv`, `wilcoxon.csv`, `runs/<experiment>/"
        "<method>/seed<k>/` (model, config, per-run metrics).",
        "",
        "## Methods",
        "",
        "| method | description | model |",
        "|---|---|---|",
    ]
    for name, md in proto.methods.items():
        model = (
            f"reused from `{md.model_from}`"
            if md.model_from
            else f"fine-tuned from `{md.init_from}`"
            if md.init_from
            else f"checkpoint `{Path(md.checkpoint).name}`, not trained"
            if md.checkpoint
            else "trained"
        )
        lines.append(f"| {name} | {md.description or '-'} | {model} |")
    lines.append("")
    for exp in sorted({r.experiment for r in runs}, key=[r.experiment for r in runs].index):
        spec = next(r for r in runs if r.experiment == exp)
        lines += [
            f"## Experiment `{exp}`",
            "",
            f"Targets: {', '.join(t.label for t in spec.targets)}.",
            "",
        ]
        ex_rows = [s for s in summary if s["experiment"] == exp]
        if not ex_rows:
            lines += ["Not yet run (no finished runs).", ""]
            continue
        lines += [
            "### Summary per target domain",
            "",
            "Cells: mean ± sample std over seeds of the per-seed mean over cases (std n/a with "
            "one seed). HD95 in mm, over the cases where both masks have the structure; "
            "'(k without)': k cases (mean over seeds) where only one has it, which a mean "
            "HD95 cannot count against a method that misses a structure.",
            "",
            "| domain | method | seeds | cases | Mean Dice | LV Dice | MYO Dice | RV Dice | "
            "LV HD95 | MYO HD95 | RV HD95 |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        order = list(proto.methods)
        for s in sorted(ex_rows, key=lambda s: (s["domain"], order.index(s["method"]))):
            cells = [s["domain"], s["method"], str(s["n_seeds"]), str(s["n_cases"])]
            for m in SUMMARY_METRICS:
                cell = _fmt(s[f"{m}_mean"], s[f"{m}_std"], 2 if "hd95" in m else 3)
                if s.get(f"{m}_missing"):
                    cell += f" ({s[f'{m}_missing']:g} without)"
                cells.append(cell)
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
        ex_tests = [t for t in tests if t["experiment"] == exp and t["metric"] == "mean_dice"]
        if ex_tests:
            lines += [
                "### Paired Wilcoxon signed-rank tests (mean Dice per subject)",
                "",
                "Pairs: the same test subject, its cases (e.g. ED and ES) and the seeds both "
                "methods have averaged (the cases of one subject are not independent); "
                "two-sided; subjects whose difference is exactly 0 are left out of the test "
                "(Wilcoxon's zero method) but counted in 'subjects'; not corrected for "
                "multiple comparisons (* p<0.05, ** p<0.01, *** p<0.001). All metrics in "
                "`wilcoxon.csv` (its `mean_hd95` is a case's mean HD95 over the structures "
                "both masks have).",
                "",
                "| domain | method | vs. | subjects | median Δ Dice | p |",
                "|---|---|---|---|---|---|",
            ]
            for t in ex_tests:
                lines.append(
                    f"| {t['domain']} | {t['method']} | {t['reference']} | {t['n']} | "
                    f"{t['median_diff']:+.3f} | {_p(t['p_value'])} |"
                )
            lines.append("")
        if exp in figs:
            lines += [
                f"![{exp}](figures/{figs[exp].name})",
                "",
                "Mean Dice per test case (its mean over seeds); boxes: median and quartiles, "
                "whiskers: the furthest case within 1.5 IQR of the box, circles: cases beyond, "
                f"triangles: means. Also as `figures/box_{exp}.pdf`.",
                "",
            ]
    lines += evaluation_lines(out_dir, runs)
    failed = {k: v for k, v in errors.items() if status.get(k) == "failed"}
    if failed:
        lines += ["## Failed runs", ""] + [f"- `{k}`: {v}" for k, v in failed.items()] + [""]
    path = out_dir / "report.md"
    with atomic_write(path) as tmp:
        tmp.write_text("\n".join(lines), encoding="utf-8")
    return path
