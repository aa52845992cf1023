"""Batch analysis of many studies: resumable, parallel, one CSV row per study.

Each study's results go to ``OUTDIR/<study name>/``; a study whose ``report.json`` exists is skipped
on a re-run, unless another model wrote it (``results.csv`` lists each row's model: one table,
one model) or its input files are no longer those it was made from (another study saved under
the same name; see :mod:`cardioseg.io.signature`). A failing study is recorded with its error
and the batch goes on.

After review, a reader's slice exclusions (see :mod:`cardioseg.clinical.slices`) are given for
many studies at once as a CSV file (:func:`read_exclusions`); a re-run then analyses again exactly
the studies whose exclusions differ from those in their ``report.json`` and skips the others.
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import os
import re
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

from cardioseg.errors import CardiosegError
from cardioseg.io.locking import LOCK_NAME, lock_folder
from cardioseg.io.nifti import atomic_write, is_nifti

log = logging.getLogger("cardioseg.batch")

#: Values copied from ``report.json`` into a study's row (empty where the report has none:
#: the indexed values need height and weight, the cardiac output the heart rate).
REPORT_KEYS = [
    "lv_edv_ml",
    "lv_esv_ml",
    "lv_sv_ml",
    "lv_ef_pct",
    "rv_edv_ml",
    "rv_esv_ml",
    "rv_sv_ml",
    "rv_ef_pct",
    "lv_mass_g",
    "lv_max_wall_thickness_ed_mm",
    "bsa_m2",
    "lvedv_index_ml_m2",
    "lvesv_index_ml_m2",
    "lvsv_index_ml_m2",
    "rvedv_index_ml_m2",
    "rvesv_index_ml_m2",
    "rvsv_index_ml_m2",
    "lv_mass_index_g_m2",
    "heart_rate_bpm",
    "lv_co_l_min",
    "lv_ci_l_min_m2",
    "normal_ranges_for",
    "normal_ranges_applied",
    "ed_frame",
    "es_frame",
]

ROW_KEYS = [
    "study",
    "input",
    "status",
    "error",
    *REPORT_KEYS,
    "frames_from",
    "normal_flags",
    "qc_status",
    "qc_score",
    "qc_heart_entropy",
    "qc_disagreement",
    "qc_check_slices",
    "qc_reasons",
    "excluded_slices",
    "input_warnings",
    "seconds",
    "model",
]

#: Least time (seconds) between two writes of ``results.csv`` while a batch runs.
TABLE_WRITE_S = 2.0

#: The error recorded for a study whose worker process died (twice) while analysing it.
WORKER_DIED = "the worker process died while analysing this study (out of memory, or a crash)"

_SEGMENTER: Any = None
#: The worker's :func:`~cardioseg.clinical.analysis.analyze_study` options (``write_pdf``,
#: ``seg_phases``), set by :func:`_init_worker`.
_ANALYSIS: dict[str, Any] = {}


def find_studies(root: str | Path, skip: str | Path | None = None) -> list[Path]:
    """Studies under ``root``: 4D NIfTI files, zips, and folders (DICOM, or NIfTI files that
    :func:`~cardioseg.clinical.nifti_folder.find_nifti_study` recognises); ``skip`` is left
    out (the batch's own output folder, when it lies in ``root``)."""
    root = Path(root)
    if not root.exists():
        raise CardiosegError(root, "not found")
    if not root.is_dir():
        raise CardiosegError(root, "batch input must be a folder of studies")
    skipped = Path(skip).resolve() if skip is not None else None
    out, ignored = [], []
    for p in sorted(root.iterdir()):
        if p.name.startswith("."):
            continue
        if skipped is not None and (p.resolve() == skipped or p.resolve() in skipped.parents):
            continue  # the output folder, or a folder holding it
        if p.is_file() and (is_nifti(p) or p.suffix.lower() == ".zip"):
            out.append(p)
        elif p.is_dir():
            out.append(p)
        else:
            ignored.append(p)
    if ignored:  # the count only: file names may name patients
        log.warning(
            "%s: %d file(s) that are not studies (not a folder, zip or NIfTI file) left out",
            root,
            len(ignored),
        )
    if not out:
        raise CardiosegError(root, "no studies found (expected folders, zips or 4D NIfTI files)")
    return out


def name_text(name: str) -> str:
    """A file name as one line of text: bytes that are not UTF-8 (which Python keeps as
    surrogates) and control characters (a line break) written as ``\\xNN``.

    Example:
        >>> name_text("a\\udcffb"), name_text("new\\nline")
        ('a\\\\xffb', 'new\\\\x0aline')
    """
    text = os.fsencode(name).decode("utf-8", "backslashreplace")
    return re.sub(r"[\x00-\x1f\x7f]", lambda m: f"\\x{ord(m.group()):02x}", text)


def study_name(path: Path) -> str:
    """A study's name in a batch: its folder or file name without ``.zip`` / ``.nii(.gz)``
    (as :func:`name_text`: it names the result folder and a row of ``results.csv``)."""
    name = name_text(path.name)
    for suffix in (".nii.gz", ".nii", ".zip"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def study_names(studies: Sequence[Path]) -> list[str]:
    """The studies' names (:func:`study_name`), except that studies whose names would clash
    (``x/`` and ``x.nii.gz``) keep their whole file names, so no result replaces another's.

    Example:
        >>> study_names([Path("x"), Path("x.nii.gz"), Path("y.zip")])
        ['x', 'x.nii.gz', 'y']
        >>> study_names([Path("a"), Path("a.nii.gz"), Path("a.nii.gz.zip"), Path("a.nii.gz~1")])
        ['a', 'a.nii.gz~2', 'a.nii.gz~3', 'a.nii.gz~1']
    """
    short = [study_name(p) for p in studies]
    names = [
        name_text(p.name) if short.count(n) > 1 else n for p, n in zip(studies, short, strict=True)
    ]
    equal = {n for n in names if names.count(n) > 1}  # "a.nii.gz" and "a.nii.gz.zip": numbered
    out: list[str] = []
    for n in names:
        if n in equal:
            k = 1
            while f"{n}~{k}" in names or f"{n}~{k}" in out:
                k += 1
            n = f"{n}~{k}"
        out.append(n)
    return out


def _row(name: str, report: dict | None, error: str = "", input_name: str = "") -> dict[str, Any]:
    row: dict[str, Any] = {
        "study": name,
        "input": input_name,
        "status": "done" if report else "failed",
        "error": error,
    }
    if report:
        for k in REPORT_KEYS:
            value = report.get(k)
            row[k] = "" if value is None else value
        meta = report.get("meta") or {}
        if meta.get("source_kind") == "pair":  # two given volumes: no frame numbers
            row["ed_frame"] = row["es_frame"] = ""
        row["frames_from"] = meta.get("frames_from", "")
        # the indices outside their normal range, e.g. "lv_ef_pct low; lv_mass_g high"
        flags = report.get("normal_flags") or {}
        row["normal_flags"] = "; ".join(f"{k} {v}" for k, v in flags.items() if v != "normal")
        qc = report.get("qc", {})
        row["qc_status"] = qc.get("status", "")
        row["qc_score"] = qc.get("score", "")
        # the study-level uncertainties, for ranking a batch's studies for review
        metrics = qc.get("metrics") or {}
        row["qc_heart_entropy"] = metrics.get("heart_entropy", "")
        row["qc_disagreement"] = metrics.get("disagreement", "")
        from cardioseg.clinical.qc import slices_to_check

        row["qc_check_slices"] = " ".join(slices_to_check(qc))
        row["qc_reasons"] = "; ".join(qc.get("reasons", []))
        row["excluded_slices"] = " ".join(report.get("excluded_slices") or [])
        # the loader's notes (series choice, damaged files...): a study to look at in a batch
        row["input_warnings"] = "; ".join(report.get("meta", {}).get("warnings") or [])
        row["seconds"] = report.get("meta", {}).get("seconds", "")
        row["model"] = report.get("meta", {}).get("model", "")
    return row


def _init_worker(
    options: dict[str, Any],
    threads: int,
    analysis: dict[str, Any] | None = None,
    watch_parent: bool = False,
) -> None:
    """Build the worker's segmenter from ``Segmenter`` keyword arguments; ``threads`` > 0 sets
    torch's thread count (one per worker process), 0 leaves it (one in-process worker uses
    every core); ``analysis``: the options of every study's ``analyze_study`` (``write_pdf``,
    ``seg_phases``); ``watch_parent``:
    a pool worker ends itself when the batch process is gone (killed, or stopped by a workflow
    manager that signals only it), instead of waiting for work forever holding its model."""
    global _SEGMENTER, _ANALYSIS
    if watch_parent:
        _watch_parent(os.getppid())
    import torch

    from cardioseg.inference import Segmenter

    if threads > 0:
        torch.set_num_threads(threads)
    _SEGMENTER = Segmenter(**options)
    _ANALYSIS = dict(analysis or {})


def read_exclusions(path: str | Path) -> dict[str, list[str]]:
    """Read a reader's slice exclusions for a batch: a CSV file with columns ``study, exclude``.

    ``study`` is the study's name in the batch (its folder or file name without ``.zip`` /
    ``.nii.gz``, as in ``results.csv``); ``exclude`` lists exclusions separated by spaces or
    semicolons (``ES:8``, ``ES:8:LV``, ``ES:9:RV``). An empty ``exclude`` means none.

    Raises:
        CardiosegError: Naming the file and the row: missing file or columns, a malformed
            exclusion, a study listed twice.

    Example:
        >>> read_exclusions("exclusions.csv")  # doctest: +SKIP
        {'patient007': ['ES:8'], 'patient012': ['ES:9:LV', 'ED:0:RV']}
    """
    from cardioseg.clinical.slices import SliceExclusion

    path = Path(path)
    if not path.is_file():
        problem = "is not a file (a folder?)" if path.exists() else "file not found"
        raise CardiosegError(path, f"exclusions {problem}")
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            if not {"study", "exclude"} <= set(reader.fieldnames or []):
                raise CardiosegError(path, "needs the columns 'study' and 'exclude'")
            rows = list(reader)
    except (UnicodeDecodeError, csv.Error) as exc:
        raise CardiosegError(path, f"not a readable CSV file ({exc.__class__.__name__})") from None
    out: dict[str, list[str]] = {}
    for i, row in enumerate(rows, start=2):  # row 1 is the header
        name = (row.get("study") or "").strip()
        if not name:
            raise CardiosegError(path, f"row {i}: empty study name")
        if name in out:
            raise CardiosegError(path, f"row {i}: study listed twice")
        try:
            specs = [
                str(SliceExclusion.parse(t))
                for t in re.split(r"[;\s]+", row.get("exclude") or "")
                if t
            ]
        except ValueError as exc:
            raise CardiosegError(path, f"row {i}: {exc}") from None
        out[name] = specs
    return out


def _watch_parent(parent: int, every_s: float = 1.0) -> None:
    """End this process when its parent process ``parent`` is gone (it is then adopted by
    another process)."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(every_s)
        os._exit(1)

    threading.Thread(target=watch, name="cardioseg-parent-watch", daemon=True).start()


def _analyze_one(
    name: str, path: str, outdir: str, exclude: Sequence[str] = (), started: str | None = None
) -> dict[str, Any]:
    """Analyse one study into its row; ``started``: a file created first (a worker that then
    dies is known to have been analysing this study)."""
    from cardioseg.clinical.analysis import analyze_study

    if started is not None:
        Path(started).touch()
    input_name = name_text(Path(path).name)
    try:
        report = analyze_study(
            Path(outdir) / name,
            study=path,
            segmenter=_SEGMENTER,
            exclude=exclude,
            label=name_text(name),
            **_ANALYSIS,
        )
        return _row(name, report, input_name=input_name)
    except Exception as exc:  # one broken study must not stop the batch
        error = (
            str(exc)
            if isinstance(exc, CardiosegError)
            else f"{type(exc).__name__}: {exc}".splitlines()[0]
        )
        # one line of UTF-8 text, as the names: the message may hold the input's path, whose
        # bytes need not be UTF-8 (results.csv could not be written) and may hold a line break
        error = name_text(error)
        if (Path(outdir) / name / "report.json").is_file():  # a re-analysis that failed
            error += f" (the earlier result in {name_text(name)}/ was left as it was)"
        return _row(name, None, error, input_name=input_name)


def _finished_report(path: Path) -> dict | None:
    """A study's ``report.json`` from an earlier run, or ``None`` when there is none, or it
    cannot be read (cut short by a crash or a full disk): the study is analysed again."""
    if not path.exists():
        return None
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        report = None
    if not isinstance(report, dict):
        log.warning("%s: unreadable report of an earlier run; the study is analysed again", path)
        return None
    return report


def _write_table(path: Path, rows: dict[str, dict]) -> None:
    with atomic_write(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=ROW_KEYS, extrasaction="ignore")
        w.writeheader()
        for name in sorted(rows):
            w.writerow(rows[name])


def run_batch(
    root: str | Path,
    outdir: str | Path,
    workers: int = 1,
    model: str | None = None,
    ray_address: str | None = None,
    progress: bool = True,
    exclusions: Mapping[str, Sequence[str]] | None = None,
    roi: bool | None = None,
    write_pdf: bool = True,
    seg_phases: str = "ed-es",
) -> Path:
    """Analyse every study under ``root``; returns the path of ``results.csv``.

    Args:
        root: Folder of studies (DICOM or NIfTI study folders, zips, 4D NIfTI files).
        outdir: Output folder: one sub-folder per study and ``results.csv``.
        workers: Parallel worker processes (or Ray actors).
        model: Model name or checkpoint path (``None``: the default model).
        ray_address: Run the workers on this Ray cluster (``"local"`` starts one).
        progress: Show a progress bar.
        exclusions: The reader's slice exclusions per study name (see
            :func:`read_exclusions`). When given, it is the whole decision: a finished study
            whose report lists other exclusions (or any, where the mapping has none for it) is
            analysed again. ``None`` keeps every finished study.
        roi: Heart-window inference (see ``Segmenter(roi=...)``; ``None``: the model's).
        write_pdf: Also write each study's ``report.pdf`` (the slowest report; a large batch
            may leave it out and keep the HTML).
        seg_phases: Phases of a DICOM cine written as DICOM-SEG (``"ed-es"`` or ``"all"``,
            see :func:`~cardioseg.clinical.analysis.analyze_study`). A finished DICOM study
            whose result holds fewer phases than asked for is analysed again.

    Raises:
        CardiosegError: No studies, exclusions naming a study that is not in ``root``, or
            an unknown ``seg_phases``.
    """
    from cardioseg.clinical.slices import SliceExclusion
    from cardioseg.options import check_seg_phases

    check_seg_phases(seg_phases)
    if ray_address:  # before the output folder is made: a typo must not leave one behind
        check_ray_address(ray_address)

    outdir = Path(outdir)
    if outdir.resolve() == Path(root).resolve():
        raise CardiosegError(
            outdir, "the output folder is the studies folder; name another folder for the results"
        )
    if (
        outdir.resolve().parent == Path(root).resolve()
        and outdir.is_dir()
        and any(p.name != LOCK_NAME for p in outdir.iterdir())  # a lock alone: this batch's
        and not (outdir / "results.csv").is_file()
    ):  # a folder in the studies folder that is not this batch's output: a study
        raise CardiosegError(
            outdir, "the output folder is one of the studies; name another folder for the results"
        )
    found = find_studies(root, skip=outdir)
    studies = dict(zip(study_names(found), found, strict=True))
    wanted: dict[str, list[str]] | None = None
    if exclusions is not None:
        names = set(studies)
        unknown = sorted(set(exclusions) - names)
        if unknown:
            shown = ", ".join(name_text(n) for n in unknown[:5]) + (
                ", ..." if len(unknown) > 5 else ""
            )
            raise CardiosegError(
                root,
                f"{len(unknown)} study name(s) of the exclusions are not in the folder: {shown}",
            )
        wanted = {
            n: sorted(str(SliceExclusion.parse(e)) for e in exclusions.get(n, ())) for n in names
        }
    from cardioseg.models.checkpoint import checkpoint_members, load_checkpoint, model_description

    members = checkpoint_members(model)
    for member in members:  # a missing or unreadable model is said before the output folder
        load_checkpoint(member)  # is made (it left an empty results.csv and a lock there)
    current_model = model_description(members)
    if ray_address:  # connected before the output folder is made (nothing left on failure)
        _connect_ray(ray_address, workers)
    outdir.mkdir(parents=True, exist_ok=True)
    with contextlib.closing(lock_folder(outdir, "output folder in use by another analyze-batch")):
        _remove_partial_results(outdir, list(studies))
        table = outdir / "results.csv"
        rows: dict[str, dict] = {}
        inputs: dict[str, str] = {}  # the input each name stood for in the previous run

        def same_input(name: str) -> bool:  # the name stands for the input it stood for last time
            return inputs.get(name) in (None, "", name_text(studies[name].name))

        if table.exists():  # keep the failures of studies still there (retried below); finished
            # studies' rows are made again from their reports, and the rows of studies no longer
            # in the folder, or of another model's results, are dropped
            with open(table, newline="", encoding="utf-8") as fh:
                old_rows = list(csv.DictReader(fh))
            inputs.update({r["study"]: r.get("input") or "" for r in old_rows if r.get("study")})
            rows = {
                r["study"]: r
                for r in old_rows
                if r.get("study") in studies
                and r.get("status") == "failed"
                and same_input(r["study"])
            }
        todo: list[tuple[str, Path]] = []
        other_model = without_pdf = without_seg = changed = 0
        for name, s in studies.items():
            report = _finished_report(outdir / name / "report.json")
            if not same_input(name):  # the name now stands for another input
                report = None
            if report is not None and not _same_files(report, s):  # another study, same name
                report = None
                changed += 1
            same_model = (
                report is not None and (report.get("meta") or {}).get("model") == current_model
            )
            other_model += report is not None and not same_model
            # a PDF asked for now that an earlier run left out: the study is analysed again
            lacks_pdf = write_pdf and not (outdir / name / "report.pdf").is_file()
            without_pdf += same_model and lacks_pdf
            # so is a DICOM study whose DICOM-SEG holds fewer phases than asked for now
            lacks_seg = _lacks_seg_phases(report, seg_phases)
            without_seg += same_model and lacks_seg
            if (
                same_model
                and not lacks_pdf
                and not lacks_seg
                and (wanted is None or sorted(report.get("excluded_slices") or []) == wanted[name])
            ):
                rows[name] = _row(name, report, input_name=name_text(s.name))
            else:
                todo.append((name, s))
        _write_table(table, rows)
        log.info("%d studies, %d already done", len(studies), len(studies) - len(todo))
        if changed:
            log.warning(
                "%d finished studies' input files have changed since they were analysed "
                "(another study under the same name?): analysed again",
                changed,
            )
        if other_model:
            # one table, one model: a resumed batch never mixes results of two models
            log.warning(
                "%d finished studies were analysed with another model (or a version that did not "
                "record it): analysed again with %s",
                other_model,
                current_model,
            )
        if without_pdf:
            log.warning(
                "%d finished studies have no report.pdf (an earlier run with --no-pdf): "
                "analysed again to write it",
                without_pdf,
            )
        if without_seg:
            log.warning(
                "%d finished DICOM studies have a DICOM-SEG of ED and ES only: analysed again "
                "to write every phase",
                without_seg,
            )
        options = {"checkpoint": model, "roi": roi}
        analysis = {"write_pdf": write_pdf, "seg_phases": seg_phases}
        runs = _run(todo, outdir, workers, options, ray_address, progress, wanted or {}, analysis)
        # the table is written again as studies finish, but not after every one: rewriting it
        # costs time in proportion to its length, so the writes are spaced (at least 20 times
        # the last write's cost apart); the finished studies' reports are on disk anyway
        last, cost = time.monotonic(), 0.0
        started, seen = time.time(), set()
        try:
            for row in runs:
                rows[row["study"]] = row
                seen.add(row["study"])
                if time.monotonic() - last >= max(TABLE_WRITE_S, 20 * cost):
                    t0 = time.monotonic()
                    try:
                        _write_table(table, rows)
                    except OSError as exc:  # a full disk, for now (the studies in progress
                        # hold space): the batch goes on, the table is written again later and
                        # at the end; the earlier table stays whole (written aside, renamed)
                        log.warning("%s: not written for now (%s)", table, exc.strerror or exc)
                    last, cost = time.monotonic(), time.monotonic() - t0
        finally:  # also when interrupted: the table holds every study finished so far, those
            # whose workers finished while the batch was stopping too (a report written by this
            # run, never an earlier one)
            runs.close()
            for name, s in todo:
                rep = outdir / name / "report.json"
                if name in seen or not rep.exists() or rep.stat().st_mtime < started:
                    continue
                report = _finished_report(rep)
                if report is not None:
                    rows[name] = _row(name, report, input_name=name_text(s.name))
            _write_table(table, rows)
        return table


def _same_files(report: dict, study: Path) -> bool:
    """Whether a finished study's input is still the one its report was made from (the
    :func:`~cardioseg.io.signature.input_signature` in ``meta``; a report written before
    signatures were recorded is taken as made from the files there now)."""
    from cardioseg.io.signature import input_signature

    recorded = (report.get("meta") or {}).get("input_signature")
    return recorded is None or recorded == input_signature([study])


def _lacks_seg_phases(report: dict | None, seg_phases: str) -> bool:
    """Whether a finished DICOM study's result holds a DICOM-SEG of fewer phases than
    ``seg_phases`` asks for (every phase asked, ED and ES written); a result that holds more
    is kept, as a ``report.pdf`` is when none is asked for."""
    meta = (report or {}).get("meta") or {}
    if seg_phases != "all" or meta.get("source_kind") != "dicom":
        return False
    return meta.get("dicom_seg_phases", "ed-es") != "all"


def _remove_partial_results(outdir: Path, names: Sequence[str]) -> None:
    """Delete what a killed run left of its studies' result folders (``.<name>.XXXX``, written
    whole and then renamed into place: never a result)."""
    import glob
    import shutil

    for name in names:
        for partial in outdir.glob(f".{glob.escape(name)}.*"):
            if partial.is_dir() and not partial.is_symlink():
                shutil.rmtree(partial, ignore_errors=True)


def _run(
    todo: list[tuple[str, Path]],
    outdir: Path,
    workers: int,
    options: dict[str, Any],
    ray_address: str | None,
    progress: bool,
    exclusions: Mapping[str, list[str]],
    analysis: dict[str, Any] | None = None,
) -> Iterator[dict]:
    from tqdm import tqdm

    def job(name: str, path: Path) -> tuple[str, str, str, list[str]]:
        return name, str(path), str(outdir), list(exclusions.get(name, []))

    bar = tqdm(total=len(todo), disable=not progress, desc="studies")
    if not todo:
        bar.close()
        return
    if ray_address:
        jobs = [job(*t) for t in todo]
        yield from _run_ray(jobs, workers, options, ray_address, bar, analysis)
    elif workers <= 1:
        _init_worker(options, 0, analysis)
        for t in todo:
            yield _analyze_one(*job(*t))
            bar.update()
    else:
        init = (options, 1, analysis, True)
        rows = _run_pool(todo, job, workers, init)
        try:
            for row in rows:
                yield row
                bar.update()
        finally:  # stopped early (interrupted): the pool drops its queue and ends
            rows.close()
    bar.close()


def _run_pool(
    todo: list[tuple[str, Path]],
    job: Callable[[str, Path], tuple],
    workers: int,
    init: tuple,
) -> Iterator[dict]:
    """Rows of ``todo`` from a pool of worker processes that survives a worker's death.

    When a worker dies (out of memory, a crash), every unfinished study of the pool fails with
    it. Those that had not started go to a new pool; those that had (the culprit among them)
    are analysed again one by one, and one that kills its worker again is recorded as failed.
    """
    pending, suspects = list(todo), []
    while pending:
        broken: list[tuple[str, Path]] = []
        with tempfile.TemporaryDirectory(prefix="cardioseg-batch-") as marks:
            mark = {t[0]: str(Path(marks) / str(i)) for i, t in enumerate(pending)}
            with ProcessPoolExecutor(workers, initializer=_init_worker, initargs=init) as pool:
                futures = {
                    pool.submit(_analyze_one, *job(*t), started=mark[t[0]]): t for t in pending
                }
                try:
                    for f in as_completed(futures):
                        try:
                            yield f.result()
                        except BrokenProcessPool:
                            broken.append(futures[f])
                except BaseException:  # interrupted (Ctrl-C, SIGTERM): the queue is dropped,
                    # the studies in progress end (their reports are kept)
                    pool.shutdown(wait=True, cancel_futures=True)
                    raise
            started = [t for t in broken if Path(mark[t[0]]).exists()]
        if broken and not started:  # the pool died before any study began: one by one
            started = broken
        suspects += started
        pending = [t for t in broken if t not in started]
    for t in suspects:
        with ProcessPoolExecutor(1, initializer=_init_worker, initargs=init) as pool:
            try:
                yield pool.submit(_analyze_one, *job(*t)).result()
            except BrokenProcessPool:
                yield _row(t[0], None, WORKER_DIED, input_name=name_text(t[1].name))


def check_ray_address(address: str, timeout_s: float = 5.0) -> None:
    """Refuse a ``--ray`` address that cannot work, in a few seconds and before any output is
    written: the optional extra not installed, or a ``host:port`` (``ray://host:port``) where
    nothing answers (Ray itself would retry for minutes). ``local`` starts a Ray instance on
    this machine and ``auto`` finds one started here with ``ray start``; neither is probed.

    Raises:
        CardiosegError: The reason, in one line.

    Example:
        >>> try:
        ...     check_ray_address("headnode")
        ... except CardiosegError as exc:
        ...     print(exc)
        --ray headnode: give 'local', 'auto' or a cluster's HOST:PORT
    """
    import socket
    from importlib.util import find_spec

    if address not in ("local", "auto"):
        hostport = address.split("://", 1)[-1].rstrip("/")
        host, sep, port = hostport.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise CardiosegError(
                None, f"--ray {address}: give 'local', 'auto' or a cluster's HOST:PORT"
            )
    if find_spec("ray") is None:
        raise CardiosegError(None, "--ray needs the optional extra: pip install 'cardioseg[ray]'")
    if address in ("local", "auto"):
        return
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
            pass
    except OSError as exc:
        reason = "no answer" if isinstance(exc, TimeoutError) else exc.strerror or str(exc)
        raise CardiosegError(
            None, f"--ray {address}: cannot reach a Ray cluster there ({reason})"
        ) from None


def _run_ray(
    jobs: list[tuple[str, str, str, list[str]]],
    workers: int,
    options: dict[str, Any],
    address: str,
    bar: Any,
    analysis: dict[str, Any] | None = None,
) -> Iterator[dict]:
    """Run :func:`_analyze_one` of each job (its arguments) on Ray actors."""
    ray = _connect_ray(address, workers)

    @ray.remote(num_cpus=1)
    class Worker:
        def __init__(self) -> None:
            _init_worker(options, 1, analysis)

        def run(self, *job: Any) -> dict:
            return _analyze_one(*job)

    pool = ray.util.ActorPool([Worker.remote() for _ in range(max(1, workers))])
    for row in pool.map_unordered(lambda a, job: a.run.remote(*job), jobs):
        yield row
        bar.update()


def _connect_ray(address: str, workers: int) -> Any:
    """Connect to the Ray cluster at ``address`` (``local``: start one with ``workers`` CPUs)
    and return the ``ray`` module; a second call keeps the first connection."""
    # Ray reports usage statistics unless told not to; nothing leaves this machine unasked
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    try:
        import ray
    except ImportError:
        raise CardiosegError(
            None, "--ray needs the optional extra: pip install 'cardioseg[ray]'"
        ) from None
    if ray.is_initialized():
        return ray
    try:
        ray.init(
            address=None if address == "local" else address,
            ignore_reinit_error=True,
            num_cpus=workers if address == "local" else None,
            include_dashboard=False,
            log_to_driver=False,
        )
    except Exception as exc:
        if address == "auto":
            raise CardiosegError(
                None,
                "--ray auto: no Ray cluster found on this machine (start one with "
                "'ray start --head', or give --ray local)",
            ) from None
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CardiosegError(None, f"--ray {address}: cannot connect ({msg})") from None
    return ray
