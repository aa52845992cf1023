"""Batch analysis of many studies: resumable, parallel, one CSV row per study.

Each study's results go to ``OUTDIR/<study name>/``; a study whose ``report.json`` exists is skipped
on a re-run. A failing study is recorded with its error and the batch goes on.
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from cardioseg.errors import CardiosegError
from cardioseg.io.nifti import atomic_write, is_nifti

log = logging.getLogger("cardioseg.batch")

ROW_KEYS = [
    "study",
    "status",
    "error",
    "lv_edv_ml",
    "lv_esv_ml",
    "lv_sv_ml",
    "lv_ef_pct",
    "rv_edv_ml",
    "rv_esv_ml",
    "rv_sv_ml",
    "rv_ef_pct",
    "lv_mass_g",
    "ed_frame",
    "es_frame",
    "qc_status",
    "qc_reasons",
    "seconds",
]

_SEGMENTER: Any = None


def find_studies(root: str | Path) -> list[Path]:
    """Studies under ``root``: 4D NIfTI files, zips, and folders holding DICOM files."""
    root = Path(root)
    if not root.is_dir():
        raise CardiosegError(root, "batch input must be a folder of studies")
    out = []
    for p in sorted(root.iterdir()):
        if p.name.startswith("."):
            continue
        if p.is_file() and (is_nifti(p) or p.suffix.lower() == ".zip"):
            out.append(p)
        elif p.is_dir():
            out.append(p)
    if not out:
        raise CardiosegError(root, "no studies found (expected folders, zips or 4D NIfTI files)")
    return out


def study_name(path: Path) -> str:
    name = path.name
    for suffix in (".nii.gz", ".nii", ".zip"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _row(name: str, report: dict | None, error: str = "") -> dict[str, Any]:
    row: dict[str, Any] = {"study": name, "status": "done" if report else "failed", "error": error}
    if report:
        for k in ROW_KEYS[3:15]:
            row[k] = report.get(k, "")
        qc = report.get("qc", {})
        row["qc_status"] = qc.get("status", "")
        row["qc_reasons"] = "; ".join(qc.get("reasons", []))
        row["seconds"] = report.get("meta", {}).get("seconds", "")
    return row


def _init_worker(model: str | None, threads: int) -> None:
    global _SEGMENTER
    import torch

    from cardioseg.inference import Segmenter

    torch.set_num_threads(max(1, threads))
    _SEGMENTER = Segmenter(model)


def _analyze_one(path: str, outdir: str) -> dict[str, Any]:
    from cardioseg.clinical.analysis import analyze_study

    name = study_name(Path(path))
    try:
        report = analyze_study(Path(outdir) / name, study=path, segmenter=_SEGMENTER)
        return _row(name, report)
    except CardiosegError as exc:
        return _row(name, None, str(exc))
    except Exception as exc:  # one broken study must not stop the batch
        return _row(name, None, f"{type(exc).__name__}: {exc}".splitlines()[0])


def _write_table(path: Path, rows: dict[str, dict]) -> None:
    with atomic_write(path) as tmp, open(tmp, "w", newline="") as fh:
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
) -> Path:
    """Analyse every study under ``root``; returns the path of ``results.csv``."""
    studies = find_studies(root)
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    table = outdir / "results.csv"
    rows: dict[str, dict] = {}
    if table.exists():
        with open(table, newline="") as fh:
            rows = {r["study"]: r for r in csv.DictReader(fh)}
    todo = []
    for s in studies:
        name = study_name(s)
        rep = outdir / name / "report.json"
        if rep.exists():
            rows[name] = _row(name, json.loads(rep.read_text()))
        else:
            todo.append(s)
    _write_table(table, rows)
    log.info("%d studies, %d already done", len(studies), len(studies) - len(todo))
    for row in _run(todo, outdir, workers, model, ray_address, progress):
        rows[row["study"]] = row
        _write_table(table, rows)
    return table


def _run(
    todo: list[Path],
    outdir: Path,
    workers: int,
    model: str | None,
    ray_address: str | None,
    progress: bool,
) -> Iterator[dict]:
    from tqdm import tqdm

    bar = tqdm(total=len(todo), disable=not progress, desc="studies")
    if not todo:
        bar.close()
        return
    if ray_address:
        yield from _run_ray(todo, outdir, workers, model, ray_address, bar)
    elif workers <= 1:
        _init_worker(model, 0)
        for s in todo:
            yield _analyze_one(str(s), str(outdir))
            bar.update()
    else:
        with ProcessPoolExecutor(workers, initializer=_init_worker, initargs=(model, 1)) as pool:
            futures = [pool.submit(_analyze_one, str(s), str(outdir)) for s in todo]
            for f in as_completed(futures):
                yield f.result()
                bar.update()
    bar.close()


def _run_ray(
    todo: list[Path], outdir: Path, workers: int, model: str | None, address: str, bar: Any
) -> Iterator[dict]:
    try:
        import ray
    except ImportError:
        raise CardiosegError(
            None, "--ray needs the optional extra: pip install 'cardioseg[ray]'"
        ) from None
    ray.init(
        address=None if address == "local" else address,
        ignore_reinit_error=True,
        num_cpus=workers if address == "local" else None,
        include_dashboard=False,
        log_to_driver=False,
    )

    @ray.remote(num_cpus=1)
    class Worker:
        def __init__(self) -> None:
            _init_worker(model, 1)

        def run(self, path: str) -> dict:
            return _analyze_one(path, str(outdir))

    pool = ray.util.ActorPool([Worker.remote() for _ in range(max(1, workers))])
    for row in pool.map_unordered(lambda a, p: a.run.remote(p), [str(s) for s in todo]):
        yield row
        bar.update()
