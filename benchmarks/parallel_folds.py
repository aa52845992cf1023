"""Train the folds of a cross-validation side by side (one process per fold), e.g. on one GPU.

A small 2D U-Net leaves a large GPU mostly idle, so k folds trained at once take about as long as
one. The cases are prepared (and cached) once before the folds start, so the fold processes do not
race to write the same cache files. Each fold's log goes to ``RUNS/foldK/train.log``.

With ``--budget-minutes``, the folds first run for ``--probe-seconds``; if the measured time per
epoch says the full schedule would not finish in the budget, they are stopped, their outputs
removed, and all folds restart on the longest schedule (a multiple of 5 epochs) that fits, which is
printed and stored in each fold's ``config.yaml``. Without it the configured schedule runs to
the end.

Usage:
    python benchmarks/parallel_folds.py -c configs/acdc_cv_full.yaml --runs runs/acdc_cv_full \\
        --set train.num_workers=2
    python benchmarks/acdc_cv.py --runs runs/acdc_cv_full -o benchmarks/results --tag full
"""

from __future__ import annotations

import argparse
import csv
import math
import shutil
import subprocess
import sys
import time
from multiprocessing import Pool
from pathlib import Path


def _prepare(args: tuple[str, list[str], int, int]) -> int:
    from cardioseg.training.config import load_config
    from cardioseg.training.slices import load_prepared
    from cardioseg.training.trainer import collect_records

    config, overrides, part, parts = args
    cfg = load_config(config, overrides)
    records = collect_records(cfg)[part::parts]
    d = cfg.data
    load_prepared(
        records, d.target_spacing, d.cache_dir, canonical_handedness=d.canonical_handedness
    )
    return len(records)


def prepare_cache(config: str, overrides: list[str], processes: int) -> int:
    """Prepare every training case once (in parallel), filling the config's cache."""
    with Pool(processes) as pool:
        jobs = [(config, overrides, i, processes) for i in range(processes)]
        return sum(pool.map(_prepare, jobs))


def launch(config: str, fold: int, runs: Path, overrides: list[str]) -> subprocess.Popen:
    out = runs / f"fold{fold}"
    out.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "cardioseg.cli.main", "train", "-c", config, "--no-progress"]
    for s in [f"train.fold={fold}", f"output_dir={out}", *overrides]:
        cmd += ["--set", s]
    with open(out / "train.log", "w") as log:  # the child keeps its own copy of the handle
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)


def seconds_per_epoch(runs: Path, folds: list[int]) -> float | None:
    """The slowest fold's mean time per epoch so far (None before every fold has 2 epochs)."""
    worst = 0.0
    for f in folds:
        path = runs / f"fold{f}" / "metrics.csv"
        rows = list(csv.DictReader(open(path))) if path.exists() else []
        if len(rows) < 2:
            return None
        e0, e1 = float(rows[0]["elapsed_s"]), float(rows[-1]["elapsed_s"])
        worst = max(worst, (e1 - e0) / (len(rows) - 1))
    return worst


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("-c", "--config", required=True)
    ap.add_argument("--runs", type=Path, required=True)
    ap.add_argument("--folds", default="0,1,2,3,4")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--prepare-processes", type=int, default=8)
    ap.add_argument("--budget-minutes", type=float, default=0.0)
    ap.add_argument("--probe-seconds", type=float, default=90.0)
    a = ap.parse_args()
    folds = [int(f) for f in a.folds.split(",")]

    from cardioseg.training.config import load_config

    t0 = time.time()
    n = prepare_cache(a.config, a.overrides, a.prepare_processes)
    print(f"prepared {n} cases in {time.time() - t0:.0f} s", flush=True)
    epochs = load_config(a.config, a.overrides).train.epochs
    overrides = list(a.overrides)
    procs = {f: launch(a.config, f, a.runs, overrides) for f in folds}
    started = time.time()
    if a.budget_minutes > 0:
        spe = None
        while spe is None or time.time() - started < a.probe_seconds:
            time.sleep(5)
            spe = seconds_per_epoch(a.runs, folds)
            if any(p.poll() is not None for p in procs.values()):
                break
        if spe is not None:
            left = a.budget_minutes * 60 - (time.time() - t0)
            startup = 30.0
            projected = (time.time() - started) + spe * (epochs - 2) + startup
            print(
                f"{spe:.2f} s per epoch; {epochs} epochs projected to end in {projected:.0f} s "
                f"of {left:.0f} s left",
                flush=True,
            )
            if projected > 0.95 * left:
                for p in procs.values():
                    p.kill()
                for p in procs.values():
                    p.wait()
                for f in folds:
                    shutil.rmtree(a.runs / f"fold{f}")
                left = a.budget_minutes * 60 - (time.time() - t0)
                epochs = max(5, 5 * math.floor(0.92 * (left - startup) / spe / 5))
                print(f"restarting all folds with {epochs} epochs", flush=True)
                overrides += [f"train.epochs={epochs}", f"train.val_interval={epochs}"]
                procs = {f: launch(a.config, f, a.runs, overrides) for f in folds}
    codes = {f: p.wait() for f, p in procs.items()}
    took = time.time() - t0
    print(f"folds done in {took:.0f} s, exit codes {codes}, epochs {epochs}", flush=True)
    sys.exit(max(codes.values()))


if __name__ == "__main__":
    main()
