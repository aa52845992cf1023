"""Run a protocol's matrix: train (or reuse) each model, evaluate it on the targets, report.

Resumable: a run works in ``runs/<experiment>/<method>/seed<k>.partial/`` (an interrupted
training resumes from its ``last.pt``) and is renamed to ``.../seed<k>/`` with a ``done.json``
marker only when its metrics are written; finished runs are skipped by later invocations.
"""

from __future__ import annotations

import copy
import csv
import json
import logging
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cardioseg.benchmark.protocol import (
    Protocol,
    Ref,
    RunSpec,
    load_protocol,
    plan,
    profile_settings,
)
from cardioseg.data.datasets import CaseRecord
from cardioseg.errors import CardiosegError
from cardioseg.io.nifti import atomic_write

log = logging.getLogger("cardioseg.benchmark")

DONE = "done.json"
META_COLUMNS = [
    "experiment",
    "method",
    "seed",
    "target",
    "domain",
    "case_id",
    "dataset",
    "subject",
    "phase",
    "vendor",
    "centre",
    "group",
]


@dataclass
class BenchmarkResult:
    """What a :func:`run_benchmark` call did."""

    out_dir: Path
    runs: list[RunSpec]
    status: dict[str, str] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    report: Path | None = None

    @property
    def failed(self) -> list[str]:
        return [k for k, s in self.status.items() if s == "failed"]


def run_dir(out_dir: Path, key: str) -> Path:
    """Final folder of a run (``key`` = ``experiment/method/seedK``)."""
    return out_dir / "runs" / key


def is_done(path: Path) -> bool:
    return (path / DONE).is_file()


def _write_json(path: Path, value: Any) -> None:
    with atomic_write(path) as tmp:
        tmp.write_text(json.dumps(value, indent=2, default=str))


def write_rows(path: Path, rows: list[dict]) -> Path:
    """CSV with the metadata columns first (atomic)."""
    keys = [k for k in META_COLUMNS if any(k in r for r in rows)]
    for r in rows:
        keys += [k for k in r if k not in keys]
    with atomic_write(path) as tmp, tmp.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=keys, restval="")
        w.writeheader()
        w.writerows(rows)
    return path


def target_records(
    proto: Protocol, run: RunSpec, max_subjects: int = 0
) -> list[tuple[Ref, list[CaseRecord]]]:
    """The labelled test cases of a run, per target (the first ``max_subjects`` subjects of each
    when positive)."""
    out = []
    for ref in run.targets:
        records = proto.records(ref, labelled=True)
        if max_subjects > 0:
            keep = sorted({r.subject for r in records})[:max_subjects]
            records = [r for r in records if r.subject in keep]
        out.append((ref, records))
    return out


def case_id(ref: Ref, record: CaseRecord) -> str:
    """A test case's ``case_id`` in the metrics: ``dataset/subject/phase`` (the protocol's
    dataset name)."""
    return f"{ref.dataset}/{record.subject}/{record.phase}"


def evaluate_run(
    proto: Protocol,
    run: RunSpec,
    checkpoint: Path,
    max_subjects: int = 0,
    record: dict | None = None,
) -> list[dict]:
    """Per-case metrics of one model on the run's targets (existing evaluation code).

    ``record``, if given, receives how the metrics were made (:func:`evaluation_record`).
    """
    from cardioseg.evaluation.runner import evaluate_records
    from cardioseg.inference import Segmenter

    inf = run.config.get("inference", {})
    adaptation = inf.get("adaptation", "none")
    options = {}
    if adaptation == "tent":
        options = {"steps": int(inf.get("tent_steps", 10)), "lr": float(inf.get("tent_lr", 1e-3))}
    seg = Segmenter(
        checkpoint,
        tta=bool(inf.get("tta", False)),
        harmonization=inf.get("harmonization", "none"),
        adaptation=adaptation,
        adaptation_options=options,
        roi=inf.get("roi"),
    )
    rows: list[dict] = []
    for ref, records in target_records(proto, run, max_subjects):
        acc = evaluate_records(records, predict=lambda v, p: seg.predict(v, p).labels)
        for rec, row in zip(records, acc.rows(), strict=True):
            row.update(
                case_id=case_id(ref, rec),
                experiment=run.experiment,
                method=run.method,
                seed=run.seed,
                target=ref.label,
                domain=rec.extra.get("domain", ref.dataset),
            )
            rows.append(row)
    if record is not None:
        record.update(evaluation_record(seg, max_subjects))
    return rows


def evaluation_record(segmenter: Any, max_subjects: int = 0) -> dict[str, Any]:
    """How a run's metrics were made, stored as ``run.json["evaluation"]``: the cardioseg
    version, UTC time and command line, the model as resolved
    (:func:`~cardioseg.evaluation.runner.model_record`: checkpoint digests, heart window, TTA,
    backend, precision, ...) and the profile's ``max_subjects`` per target (0: all)."""
    import datetime as _dt
    import shlex
    import sys

    from cardioseg import __version__
    from cardioseg.evaluation.runner import model_record

    try:
        model = model_record(segmenter)
    except AttributeError:  # a stand-in object, not a Segmenter: its type is all there is
        model = {"description": type(segmenter).__name__}
    return {
        "cardioseg_version": __version__,
        "evaluated_utc": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": shlex.join(sys.argv),
        "model": model,
        "max_subjects_per_target": max_subjects,
    }


#: A checkpoint method's evaluation, shared by its seeds: ``(experiment, method, file
#: state)`` -> ``(rows, evaluation record, key of the run that was evaluated)``.
EvaluationCache = dict[tuple[str, str, tuple], tuple[list[dict], dict[str, Any], str]]


def _checkpoint_evaluation(
    proto: Protocol,
    run: RunSpec,
    checkpoint: Path,
    max_subjects: int,
    cache: EvaluationCache | None,
) -> tuple[list[dict], dict[str, Any]]:
    """Per-case rows and evaluation record of ``checkpoint`` for ``run``. A method that
    evaluates a given ``checkpoint`` as is gives the same model for every seed, so its first
    seed is evaluated and the others take those rows (their ``seed`` set, the evaluation
    record naming the run it comes from) instead of repeating the same inference."""
    key = None
    if run.checkpoint and cache is not None:
        st = Path(run.checkpoint).stat()
        key = (run.experiment, run.method, (str(run.checkpoint), st.st_size, st.st_mtime_ns))
        if key in cache:
            rows, evaluation, source = cache[key]
            return [{**r, "seed": run.seed} for r in rows], {**evaluation, "copied_from": source}
    evaluation: dict[str, Any] = {}
    rows = evaluate_run(proto, run, checkpoint, max_subjects, evaluation)
    if key is not None:
        cache[key] = (rows, evaluation, run.key)
    return rows, evaluation


def _finished_training(train_dir: Path, cfg: dict[str, Any]) -> bool:
    """Whether ``train_dir`` holds a training of ``cfg`` that ran to its end (``final.pt`` and
    ``summary.json`` written, ``last.pt`` removed), as one left by a run stopped during its
    evaluation: resuming it evaluates that model instead of training it again."""
    import yaml

    from cardioseg.training.config import changed_settings

    if (train_dir / "last.pt").exists() or not (train_dir / "summary.json").is_file():
        return False
    if not (train_dir / "final.pt").is_file():
        return False
    try:
        stored = yaml.safe_load((train_dir / "config.yaml").read_text()) or {}
    except (OSError, ValueError, yaml.YAMLError):
        return False
    ignore = [
        "output_dir",
        "data.cache_dir",
        "inference.",
        "train.num_workers",
        "train.num_threads",
    ]
    return isinstance(stored, dict) and not changed_settings(stored, cfg, ignore)


def execute_run(
    proto: Protocol,
    run: RunSpec,
    out_dir: Path,
    max_subjects: int = 0,
    cache: EvaluationCache | None = None,
) -> Path:
    """Train (or reuse) and evaluate one run; returns its final folder.

    A training that finished before the run was stopped (during its evaluation) is not
    repeated; ``cache`` shares a checkpoint method's evaluation among its seeds
    (:func:`_checkpoint_evaluation`).
    """
    from cardioseg.training.config import config_from_dict
    from cardioseg.training.trainer import Trainer

    final = run_dir(out_dir, run.key)
    partial = final.with_name(final.name + ".partial")
    if final.exists():  # a folder without marker cannot come from this code; start over
        shutil.rmtree(final)
    partial.mkdir(parents=True, exist_ok=True)
    (partial / "error.txt").unlink(missing_ok=True)
    cfg_dict = copy.deepcopy(run.config)
    t0 = time.time()
    if run.checkpoint:  # a trained model, evaluated as is; copied so that dependants find it
        from cardioseg.models import load_checkpoint

        load_checkpoint(run.checkpoint)  # an unreadable file is named as the user gave it
        checkpoint = partial / "train" / "final.pt"
        checkpoint.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(run.checkpoint, checkpoint)
        cfg_dict["output_dir"] = str(checkpoint.parent)
        train_s = 0.0
    elif run.reuse_model:
        checkpoint = run_dir(out_dir, run.depends_on) / "train" / "final.pt"
        cfg_dict["output_dir"] = str(checkpoint.parent)
        train_s = 0.0
    else:
        cfg_dict["output_dir"] = str(partial / "train")
        if run.depends_on:
            cfg_dict["init_checkpoint"] = str(run_dir(out_dir, run.depends_on) / "train/final.pt")
        cfg = config_from_dict(cfg_dict)
        checkpoint = partial / "train" / "final.pt"
        if _finished_training(checkpoint.parent, cfg.to_dict()):
            log.info("%s: training finished earlier, evaluating its model", run.key)
            train_s = _stored_train_time(checkpoint.parent)
        else:
            Trainer(cfg, progress=False).run()
            (partial / "train" / "last.pt").unlink(missing_ok=True)  # only needed to resume
            train_s = time.time() - t0
    t1 = time.time()
    rows, evaluation = _checkpoint_evaluation(proto, run, checkpoint, max_subjects, cache)
    write_rows(partial / "metrics.csv", rows)
    info = {
        "key": run.key,
        "experiment": run.experiment,
        "method": run.method,
        "seed": run.seed,
        "model": (
            "checkpoint " + run.checkpoint
            if run.checkpoint
            else "reused from " + run.depends_on
            if run.reuse_model
            else "trained"
        ),
        "init_from": run.depends_on if run.depends_on and not run.reuse_model else "",
        "train_s": round(train_s, 1),
        "eval_s": round(time.time() - t1, 1),
        "n_cases": len(rows),
        "config": _as_final(cfg_dict, partial, final),
        "evaluation": evaluation,
    }
    _write_json(partial / "run.json", info)
    _write_json(partial / DONE, {"finished": time.strftime("%Y-%m-%d %H:%M:%S")})
    os.replace(partial, final)
    return final


def _stored_train_time(train_dir: Path) -> float:
    """The training time ``summary.json`` recorded (0 where it cannot be read)."""
    try:
        return float(json.loads((train_dir / "summary.json").read_text())["train_time_s"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0.0


def _as_final(cfg: dict[str, Any], partial: Path, final: Path) -> dict[str, Any]:
    """``cfg`` as recorded in ``run.json``: an ``output_dir`` inside the run's working folder
    names where it will be once finished (the ``.partial`` folder is renamed)."""
    out = Path(str(cfg.get("output_dir", "")))
    if out == partial or partial in out.parents:
        cfg = {**cfg, "output_dir": str(final / out.relative_to(partial))}
    return cfg


def _record_reevaluation(final: Path, evaluation: dict[str, Any], n_cases: int) -> None:
    """Replace a finished run's ``run.json["evaluation"]`` (and case count) with those of its
    new evaluation, so the record matches the new ``metrics.csv``."""
    try:
        info = json.loads((final / "run.json").read_text())
    except (OSError, ValueError):
        info = {}
    info.update(evaluation=evaluation, n_cases=n_cases)
    _write_json(final / "run.json", info)


def _selected_runs(
    proto: Protocol,
    runs: list[RunSpec],
    only: Sequence[str] | None,
    experiments: Sequence[str] | None = None,
) -> set[str]:
    """Keys of the runs to execute: all, or those of the ``only`` methods and of the named
    ``experiments`` (both filters apply together), plus the runs they depend on."""
    if only:
        unknown = sorted(set(only) - set(proto.methods))
        if unknown:
            raise CardiosegError(
                proto.path,
                f"--only: unknown method '{unknown[0]}' "
                f"(protocol methods: {', '.join(proto.methods)})",
            )
    if experiments:
        names = list(dict.fromkeys(r.experiment for r in runs))
        unknown = sorted(set(experiments) - set(names))
        if unknown:
            raise CardiosegError(
                proto.path,
                f"--experiment: unknown experiment '{unknown[0]}' "
                f"(this protocol's experiments: {', '.join(names)})",
            )
    methods = set(only or (r.method for r in runs))
    wanted = set(experiments or (r.experiment for r in runs))
    keys = {r.key for r in runs if r.method in methods and r.experiment in wanted}
    by_key = {r.key: r for r in runs}
    todo = list(keys)
    while todo:
        dep = by_key[todo.pop()].depends_on
        if dep and dep not in keys:
            keys.add(dep)
            todo.append(dep)
    return keys


def _trained_otherwise(out: Path, runs: Sequence[RunSpec]) -> list[str]:
    """Finished runs whose stored training configuration differs from the planned one (another
    profile, or an edited protocol), as ``"key (setting: old -> new)"``. Where a run is written
    and its preprocessing cached (``data.cache_dir``, by default under the output folder, so a
    moved or copied folder keeps its runs) and how it is evaluated (``inference.*``, e.g.
    ``--whole-image``) may differ."""
    from cardioseg.training.config import changed_settings

    stale = []
    for run in runs:
        final = run_dir(out, run.key)
        if not is_done(final):
            continue
        try:
            stored = json.loads((final / "run.json").read_text()).get("config") or {}
        except (OSError, ValueError):
            continue
        changed = changed_settings(
            stored, run.config, ["output_dir", "init_checkpoint", "data.cache_dir", "inference."]
        )
        if changed:
            k, a, b = changed[0]
            stale.append(f"{run.key} ({k}: {a!r} -> {b!r})")
    return stale


def _evaluated_otherwise(
    proto: Protocol, out: Path, runs: Sequence[RunSpec], max_subjects: int, skip: set[str]
) -> list[str]:
    """Finished runs (other than ``skip``) whose ``metrics.csv`` covers other test cases than
    the plan's targets now (edited targets or filters, subjects added to or removed from a
    dataset folder, another ``max_subjects_per_target``), as ``"key (...)"``: their metrics
    would share a table with runs evaluated on another test set."""
    stale = []
    for run in runs:
        final = run_dir(out, run.key)
        if run.key in skip or not is_done(final):
            continue
        try:
            with open(final / "metrics.csv", newline="") as fh:
                stored = {row.get("case_id") for row in csv.DictReader(fh)}
        except (OSError, ValueError):
            continue
        planned = {
            case_id(ref, rec)
            for ref, records in target_records(proto, run, max_subjects)
            for rec in records
        }
        if stored != planned:
            gone, new = sorted(stored - planned), sorted(planned - stored)
            what = [f"{len(gone)} no longer planned, e.g. {gone[0]}"] if gone else []
            what += [f"{len(new)} not evaluated, e.g. {new[0]}"] if new else []
            stale.append(f"{run.key} ({len(stored)} cases; {', '.join(what)})")
    return stale


def _refuse_stale(out: Path, stale: list[str], how: str, remedy: str) -> None:
    """Refuse an output folder whose finished runs (``stale``, as ``"key (...)"``) were made
    ``how`` otherwise than planned, naming two of them and the ``remedy``."""
    if stale:
        more = f" and {len(stale) - 2} more" if len(stale) > 2 else ""
        raise CardiosegError(
            out,
            f"{len(stale)} finished run(s) were {how} ({'; '.join(stale[:2])}{more}): {remedy}",
        )


def run_benchmark(
    protocol: str | Path,
    out_dir: str | Path,
    profile: str = "quick",
    dry_run: bool = False,
    reevaluate: bool = False,
    only: Sequence[str] | None = None,
    report_only: bool = False,
    experiments: Sequence[str] | None = None,
    roi: bool | None = None,
) -> BenchmarkResult:
    """Validate the protocol, run every unfinished run, then write the report.

    Args:
        protocol: Protocol YAML.
        out_dir: Output folder (reused across invocations: finished runs are skipped).
        profile: ``quick`` (2 CPU cores), ``full`` (GPU) or a protocol-defined profile.
        dry_run: Only validate and write ``plan.json``.
        reevaluate: Evaluate the finished runs' models again with the current inference code
            (e.g. after a post-processing change) instead of skipping them; nothing is
            re-trained. Their ``metrics.csv`` is replaced atomically.
        only: Run (or re-evaluate) only these methods, plus the runs they depend on; the
            others are left as they are (``not run`` when unfinished). The report covers every
            finished run, so a matrix can be filled method by method.
        report_only: Run nothing; write the report from the runs finished so far (e.g. after
            stopping a long matrix half-way).
        experiments: Run only these experiments of the matrix (e.g. ``lodo-Siemens`` of a
            leave-one-domain-out protocol), plus the runs they depend on; combines with
            ``only``.
        roi: Evaluate every method in a heart window (``True``) or on the whole image
            (``False``), overriding the methods' ``inference.roi``; ``None`` keeps them
            (results measured before 2026-11-30 used the whole image).

    Raises:
        CardiosegError: Invalid protocol (before any training starts).
    """
    from cardioseg.benchmark.report import write_report

    proto = load_protocol(protocol)
    out = Path(out_dir)
    runs = plan(proto, profile, out)
    if roi is not None:
        for run in runs:
            run.config.setdefault("inference", {})["roi"] = roi
    selected = set() if report_only else _selected_runs(proto, runs, only, experiments)
    # one table never mixes runs of two configurations (e.g. quick and full profile)
    _refuse_stale(
        out,
        _trained_otherwise(out, runs),
        "trained with another configuration than this protocol and profile plan",
        "give another output folder",
    )
    prof = profile_settings(proto, profile)
    max_subjects = int(prof.get("max_subjects_per_target", 0) or 0)
    again = selected if reevaluate else set()  # evaluated again below on the planned cases
    # nor runs evaluated on two test sets (edited targets, changed data folders)
    _refuse_stale(
        out,
        _evaluated_otherwise(proto, out, runs, max_subjects, again),
        "evaluated on other test cases than this protocol's targets",
        "evaluate them again with --reevaluate, or give another output folder",
    )
    out.mkdir(parents=True, exist_ok=True)
    _write_json(
        out / "plan.json",
        {
            "protocol": str(proto.path),
            "profile": profile,
            "runs": [
                {"key": r.key, "depends_on": r.depends_on, "reuse_model": r.reuse_model}
                for r in runs
            ],
        },
    )
    result = BenchmarkResult(out, runs)
    cache: EvaluationCache = {}
    if dry_run:
        for r in runs:
            if is_done(run_dir(out, r.key)):
                result.status[r.key] = "done"
            else:
                result.status[r.key] = "planned" if r.key in selected else "not run"
        return result
    for i, run in enumerate(runs, 1):
        final = run_dir(out, run.key)
        if run.key not in selected:
            result.status[run.key] = "skipped" if is_done(final) else "not run"
            continue
        if is_done(final):
            if reevaluate:
                log.info("[%d/%d] %s: done earlier, evaluating again", i, len(runs), run.key)
                source = run.depends_on if run.reuse_model else run.key
                checkpoint = run_dir(out, source) / "train" / "final.pt"
                rows, evaluation = _checkpoint_evaluation(
                    proto, run, checkpoint, max_subjects, cache
                )
                write_rows(final / "metrics.csv", rows)
                _record_reevaluation(final, evaluation, len(rows))
                result.status[run.key] = "re-evaluated"
            else:
                result.status[run.key] = "skipped"
                log.info("[%d/%d] %s: done earlier, skipped", i, len(runs), run.key)
            continue
        if run.depends_on and not is_done(run_dir(out, run.depends_on)):
            result.status[run.key] = "failed"
            result.errors[run.key] = f"needs run {run.depends_on}, which did not finish"
            continue
        log.info("[%d/%d] %s: running", i, len(runs), run.key)
        try:
            execute_run(proto, run, out, max_subjects, cache)
            result.status[run.key] = "done"
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # one failed run must not stop the matrix
            if os.environ.get("CARDIOSEG_DEBUG"):
                raise
            msg = f"{type(exc).__name__}: {exc}".splitlines()[0]
            result.status[run.key] = "failed"
            result.errors[run.key] = msg
            partial = final.with_name(final.name + ".partial")
            partial.mkdir(parents=True, exist_ok=True)
            (partial / "error.txt").write_text(msg + "\n")
            log.error("%s failed: %s", run.key, msg)
    result.report = write_report(proto, runs, out, profile, result.status, result.errors)
    return result
