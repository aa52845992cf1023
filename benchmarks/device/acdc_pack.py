"""Carry the ACDC training folder to a remote accelerator machine, losslessly, in half its size.

ACDC images here are float32 with a few hundred distinct values each; ``pack`` stores every image
as the indices into its sorted distinct values (16-bit lossless JPEG 2000, one per slice) plus the
value table and the NIfTI header, and copies labels, ``Info.cfg`` and the metadata CSV as they are.
``unpack`` writes the original layout back; the image arrays are bit-identical to the source.

Usage:
    python benchmarks/device/acdc_pack.py pack ../shared/data/acdc .gpu/acdc      # 97 MB -> 45 MB
    python benchmarks/device/acdc_pack.py unpack .gpu/acdc /tmp/data/acdc          # on the device
"""

from __future__ import annotations

import io
import shutil
import sys
from multiprocessing import Pool
from pathlib import Path

import nibabel as nib
import numpy as np
from PIL import Image


def pack_image(src: Path, dst: Path) -> None:
    img = nib.load(src)
    a = np.asarray(img.dataobj, dtype=np.float32)
    values, index = np.unique(a, return_inverse=True)
    if len(values) >= 2**16:
        raise ValueError(f"{src}: {len(values)} distinct values do not fit 16 bits")
    k = index.reshape(a.shape).astype(np.uint16)
    slices = {}
    for z in range(k.shape[2]):
        s = np.ascontiguousarray(k[:, :, z])
        buf = io.BytesIO()
        Image.frombytes("I;16", (s.shape[1], s.shape[0]), s.tobytes()).save(
            buf, format="JPEG2000", irreversible=False
        )
        slices[f"z{z}"] = np.frombuffer(buf.getvalue(), np.uint8)
    header = np.frombuffer(img.header.binaryblock, np.uint8)
    np.savez(dst, header=header, values=values, shape=np.array(k.shape), **slices)


def unpack_image(src: Path, dst: Path) -> None:
    z = np.load(src)
    shape = tuple(int(v) for v in z["shape"])
    k = np.empty(shape, np.uint16)
    for i in range(shape[2]):
        im = Image.open(io.BytesIO(z[f"z{i}"].tobytes()))
        k[:, :, i] = np.asarray(im, dtype=np.uint16).reshape(shape[:2])
    header = nib.Nifti1Header(z["header"].tobytes())
    out = nib.Nifti1Image(z["values"][k], header.get_best_affine(), header)
    out.set_data_dtype(np.float32)
    nib.save(out, dst)


def _job(args: tuple[str, Path, Path]) -> None:
    kind, src, dst = args
    (pack_image if kind == "pack" else unpack_image)(src, dst)


def main(kind: str, src: Path, dst: Path) -> None:
    jobs = []
    for f in sorted(src.rglob("*")):
        if f.is_dir():
            continue
        rel = f.relative_to(src)
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        if kind == "pack" and f.name.endswith(".nii.gz") and not f.name.endswith("_gt.nii.gz"):
            jobs.append((kind, f, (dst / rel).with_name(f.name[: -len(".nii.gz")] + ".npz")))
        elif kind == "unpack" and f.suffix == ".npz":
            jobs.append((kind, f, (dst / rel).with_name(f.stem + ".nii.gz")))
        else:
            shutil.copy(f, dst / rel)
    with Pool() as pool:
        pool.map(_job, jobs)
    print(f"{kind}: {len(jobs)} images, {src} -> {dst}")


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] not in ("pack", "unpack"):
        sys.exit(__doc__)
    main(sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]))
