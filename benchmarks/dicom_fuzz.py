"""Fuzz the DICOM study reader with corrupted headers: it must refuse cleanly or load, fast.

Writes the tests' synthetic cines (Siemens-, GE-, Philips-, Canon-style classic images and an
enhanced multi-frame object, from ``tests/test_dicom.py``), then, per trial, copies one, corrupts
one, two or all of its files (a random header element deleted or set to junk such as ``1e9``,
``nan``, ``0\\0``; the pixel data cut; or the file truncated) and loads it with
:func:`cardioseg.clinical.analysis.load_study`. A trial passes when the study loads or is refused
with a ``CardiosegError`` (the one-line error the CLI prints) within ``--limit`` seconds; any other
exception, or a slower load, is counted and printed.

Usage (from the repository root; a few seconds per 100 trials):

    python benchmarks/dicom_fuzz.py --trials 300 --seed 1 -o benchmarks/results/dicom_fuzz.md
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

import pydicom  # noqa: E402
from fuzzing import Trials, fuzz_parser  # noqa: E402
from test_dicom import canon_like, enhanced_like, ge_like, philips_like, siemens_like  # noqa: E402

from cardioseg.clinical.analysis import load_study  # noqa: E402

ELEMENTS = [
    "PixelSpacing", "ImageOrientationPatient", "ImagePositionPatient", "TriggerTime",
    "InstanceNumber", "Rows", "Columns", "BitsAllocated", "PixelRepresentation",
    "SamplesPerPixel", "RescaleSlope", "RescaleIntercept", "SeriesInstanceUID",
    "PhotometricInterpretation", "PixelData", "SliceThickness", "SOPClassUID", "Modality",
    "NumberOfFrames", "PerFrameFunctionalGroupsSequence", "SharedFunctionalGroupsSequence",
    "StudyInstanceUID", "PatientID", "BitsStored", "HighBit",
]  # fmt: skip
JUNK = [None, "", "abc", "0", "-1", "1e9", "nan", "inf", "0\\0", "1\\2\\3", "0\\0\\0\\0\\0\\0"]


def _corrupt(folder: Path, rng: random.Random) -> list[str]:
    files = [p for p in folder.rglob("*") if p.is_file() and not p.name.endswith(".txt")]
    done = []
    for f in rng.sample(files, k=min(len(files), rng.choice([1, 1, 2, len(files)]))):
        element, junk = rng.choice(ELEMENTS), rng.choice(JUNK)
        try:
            ds = pydicom.dcmread(f, force=True)
            if junk is None:
                if element in ds:
                    del ds[element]
            elif element == "PixelData":
                ds.PixelData = ds.PixelData[: len(ds.PixelData) // 3]
            else:
                setattr(ds, element, junk)
            ds.save_as(f)
            done.append(f"{element}={junk!r}")
        except Exception:  # pydicom refused the value: truncate the file instead
            data = f.read_bytes()
            f.write_bytes(data[: rng.randrange(len(data))])
            done.append("truncated file")
    return done


def main() -> None:
    args = fuzz_parser(__doc__, 30.0, "seconds a load may take").parse_args()
    warnings.simplefilter("ignore")
    logging.disable(logging.WARNING)  # the reader's notes on the corrupted studies
    rng = random.Random(args.seed)
    trials = Trials(args.limit, "loaded")
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "base"
        styles = {"siemens": siemens_like, "ge": ge_like, "philips": philips_like}
        styles["canon"] = canon_like
        for name, write in styles.items():
            write(base / name)
        enhanced_like(base / "enhanced" / "cine.dcm")
        names = [*styles, "enhanced"]
        for trial in range(args.trials):
            style = rng.choice(names)
            study = Path(tmp) / "trial"
            shutil.rmtree(study, ignore_errors=True)
            shutil.copytree(base / style, study)
            changes = _corrupt(study, rng)
            trials.run(
                f"trial {trial} ({style}, {'; '.join(changes)})", lambda s=study: load_study(s)
            )
    sys.exit(trials.report("DICOM reader fuzzing", args.output))


if __name__ == "__main__":
    main()
