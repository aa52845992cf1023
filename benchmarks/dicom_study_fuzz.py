"""Fuzz the DICOM series selection with random studies made of valid series: it must load a
stack or refuse with a one-line error, never fail inside.

Each trial writes a study of 1 to 5 valid series, drawn from: a short-axis stack, a part of
one (a breath-hold's slices, or a single slice), a long-axis cine, a single-slice cine with
another phase count (real time), a transverse stack, a stack shifted by half a slice gap, a
stack at another oblique orientation; with various descriptions and now and then an image
lost. Unlike ``dicom_fuzz.py`` (corrupted headers), every file here is valid, so the loader's
last-resort error ("cannot load DICOM cine (...)", an exception it did not foresee) counts as a
failure, like a crash.

Usage (from the repository root; about a minute per 300 trials):

    python benchmarks/dicom_study_fuzz.py --trials 300 --seed 1 \
        -o benchmarks/results/dicom_study_fuzz.md
"""

from __future__ import annotations

import logging
import random
import shutil
import sys
import tempfile
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import numpy as np  # noqa: E402
from fuzzing import Trials, fuzz_parser  # noqa: E402
from pydicom.uid import generate_uid  # noqa: E402
from test_dicom import IOP, LAX_IOP, N_PHASES, ORIGIN, _rotation, ipp, new_study, write_image  # noqa: E402

from cardioseg.errors import CardiosegError  # noqa: E402
from cardioseg.io.dicom import load_cine  # noqa: E402

KINDS = ["stack", "part", "single", "lax", "real-time", "transverse", "shifted", "rotated"]
DESCRIPTIONS = ["cine_sax", "cine", "", "cine_4ch", "tagging sa", "FIESTA CINE", "sBTFE_BH SA"]
TRANSVERSE = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]


def _write_study(folder: Path, rng: random.Random) -> list[str]:
    """A random study of valid series; returns what was drawn (for the failure list)."""
    study = new_study()
    drawn = []
    for s in range(rng.randint(1, 5)):
        kind = rng.choice(KINDS)
        n_phases = 12 if kind == "real-time" else rng.choice([N_PHASES, N_PHASES, 3, 12])
        if kind == "stack":
            ks: list[float] = list(range(rng.randint(3, 6)))
        elif kind == "part":
            first = rng.randint(0, 5)
            ks = list(range(first, first + rng.randint(1, 3)))
        elif kind in ("single", "real-time"):
            ks = [rng.randint(-2, 8)]
        elif kind == "shifted":
            ks = [k + 0.5 for k in range(rng.randint(3, 5))]
        else:
            ks = list(range(rng.randint(1, 5)))
        orientation = {"lax": LAX_IOP, "transverse": TRANSVERSE}.get(kind, IOP)
        if kind == "rotated":
            r = _rotation(a=rng.uniform(0.0, 3.0))
            orientation = [*r[:, 0], *r[:, 1]]
        description = rng.choice(DESCRIPTIONS)
        uid = generate_uid()
        for k in ks:
            position = ORIGIN + np.array([0.0, 0.0, 8.0 * k]) if kind == "transverse" else ipp(k)
            for t in range(n_phases):
                if rng.random() < 0.03:  # an image the export lost
                    continue
                write_image(
                    folder / f"s{s}" / f"{k}_{t}",
                    study,
                    k=int(k),
                    t=t,
                    series_uid=uid,
                    trigger=30.0 * t + rng.choice([0.0, 0.3]),
                    series_number=10 + s,
                    orientation=[float(v) for v in orientation],
                    position=position,
                    description=description,
                    value_k=0,
                )
        drawn.append(f"{kind} x{len(ks)} '{description}' {n_phases} phases")
    return drawn


def _load(folder: Path) -> None:
    try:
        load_cine(folder)
    except CardiosegError as err:
        if "cannot load DICOM cine (" in str(err):  # the last resort: an unforeseen exception
            raise RuntimeError(f"internal error: {err.problem}") from None
        raise


def main() -> None:
    args = fuzz_parser(__doc__, 30.0, "seconds a load may take").parse_args()
    warnings.simplefilter("ignore")
    logging.disable(logging.WARNING)  # the reader's notes on the studies
    rng = random.Random(args.seed)
    trials = Trials(args.limit, "loaded")
    for trial in range(args.trials):
        folder = Path(tempfile.mkdtemp(prefix="study_fuzz."))
        try:
            drawn = _write_study(folder, rng)
            trials.run(f"trial {trial} ({'; '.join(drawn)})", lambda f=folder: _load(f))
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    sys.exit(trials.report("DICOM series selection fuzzing (valid series)", args.output))


if __name__ == "__main__":
    main()
