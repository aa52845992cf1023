"""Fuzz the NIfTI path with corrupted headers: `segment` must succeed or refuse cleanly.

Starts from a valid synthetic short-axis volume (``cardioseg.data.synthetic``), then, per trial,
sets one to three header fields (dimensions, voxel sizes, data type, data offset, scaling,
qform/sform codes and parameters, magic) to junk, writes the file (``.nii`` or ``.nii.gz``; some
trials also cut it short) and runs what ``cardioseg segment`` runs: read, validate, segment with
the shipped model. A trial passes when it returns labels of the input's shape or raises a
``CardiosegError`` (the one-line error the CLI prints) within ``--limit`` seconds; any other
exception, or a slower trial, is counted and printed.

Usage (from the repository root):

    python benchmarks/nifti_fuzz.py --trials 300 --seed 1 -o benchmarks/results/nifti_fuzz.md
"""

from __future__ import annotations

import logging
import random
import sys
import tempfile
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from fuzzing import Trials, fuzz_parser

from cardioseg.data.synthetic import PhantomConfig, make_phantom
from cardioseg.inference import Segmenter
from cardioseg.io.nifti import read_image

#: Header fields and the junk values tried for them (``dim`` and ``pixdim`` get one index).
FIELDS = {
    "dim": [0, -1, 1, 7, 8, 1000, 30000, 32767],
    "pixdim": [0.0, -1.0, 1e-9, 1e9, np.nan, np.inf],
    "datatype": [0, 1, 32, 128, 1536, 2304, 9999],
    "bitpix": [0, 1, 7, 64],
    "vox_offset": [0.0, 1.0, 351.0, 1e6, -10.0],
    "scl_slope": [0.0, np.nan, np.inf, -1.0, 1e30],
    "scl_inter": [np.nan, np.inf, 1e30],
    "qform_code": [0, 1, 5, 99],
    "sform_code": [0, 1, 5, 99],
    "quatern_b": [np.nan, 2.0, 1.0],
    "srow_x": [np.nan, 0.0, 1e9],
    "magic": [b"n+2\x00", b"xxxx", b"ni1\x00"],
}


def _corrupt(header: nib.Nifti1Header, rng: random.Random) -> list[str]:
    done = []
    for name in rng.sample(sorted(FIELDS), k=rng.choice([1, 1, 2, 3])):
        value = rng.choice(FIELDS[name])
        try:
            if name in ("dim", "pixdim"):
                i = rng.randrange(0, 5)
                arr = header[name].copy()
                arr[i] = value
                header[name] = arr
                done.append(f"{name}[{i}]={value!r}")
            elif name == "srow_x":
                header[name] = np.full(4, value)
                done.append(f"{name}={value!r}")
            else:
                header[name] = value
                done.append(f"{name}={value!r}")
        except Exception:  # nibabel refused to store it: that field stays valid
            continue
    return done


def main() -> None:
    ap = fuzz_parser(__doc__, 60.0, "seconds a trial may take")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    logging.disable(logging.CRITICAL)  # nibabel's notes on the corrupted headers
    torch.set_num_threads(args.threads)
    rng = random.Random(args.seed)
    phantom = make_phantom(PhantomConfig(seed=args.seed, shape=(96, 96), spacing=1.6, n_slices=6))
    image = np.asarray(phantom.images["ED"], np.float32)
    seg = Segmenter()
    trials = Trials(args.limit, "segmented")

    def segment(path: Path) -> None:
        volume, props = read_image(path)
        labels = seg.predict(volume, props).labels
        assert labels.shape == volume.shape, (labels.shape, volume.shape)

    with tempfile.TemporaryDirectory() as tmp:
        for trial in range(args.trials):
            header = nib.Nifti1Image(image, phantom.affine).header.copy()
            changes = _corrupt(header, rng)
            path = Path(tmp) / f"t{trial}.nii{'.gz' if rng.random() < 0.5 else ''}"
            try:
                nib.save(nib.Nifti1Image(image, phantom.affine, header), str(path))
            except Exception:  # nibabel cannot write it: write the raw header and data
                block = header.binaryblock + bytes(4) + image.tobytes()
                path = path.with_name(f"t{trial}.nii")
                path.write_bytes(block)
            if rng.random() < 0.2:
                data = path.read_bytes()
                path.write_bytes(data[: rng.randrange(1, len(data))])
                changes.append("file cut short")
            trials.run(f"trial {trial} ({'; '.join(changes)})", lambda p=path: segment(p))
            path.unlink(missing_ok=True)
    sys.exit(trials.report("NIfTI path fuzzing", args.output))


if __name__ == "__main__":
    main()
