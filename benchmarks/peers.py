"""Peer models run side by side with cardioseg in the benchmarks.

myopari (PyPI) ships an ACDC-trained Tiramisu as ONNX plus its own numpy pre/post-processing.
We run the peer's *own* code from its wheel (loaded by path, nothing copied into this repo):

    pip download --no-deps myopari -d benchmarks/peers
"""

from __future__ import annotations

import importlib.util
import sys
import zipfile
from pathlib import Path

import numpy as np

from cardioseg.labels import DATASET_LABEL_MAPS, remap_labels


def find_myopari(where: str | Path) -> Path | None:
    """Return the extracted ``myopari`` package folder from a wheel or folder under ``where``."""
    where = Path(where)
    if (where / "myopari" / "processors").is_dir():
        return where / "myopari"
    wheels = sorted(where.glob("myopari-*.whl")) if where.is_dir() else []
    if not wheels:
        return None
    dest = where / "extracted"
    if not (dest / "myopari").is_dir():
        with zipfile.ZipFile(wheels[-1]) as z:
            z.extractall(dest)
    return dest / "myopari"


class MyopariPeer:
    """The myopari ACDC model through onnxruntime with the package's own processing."""

    name = "myopari"

    def __init__(self, package_dir: Path, threads: int = 2):
        import onnxruntime as ort

        spec = importlib.util.spec_from_file_location(
            "_myopari_utils", package_dir / "processors" / "functions_utils.py"
        )
        mod = importlib.util.module_from_spec(spec)
        sys.modules["_myopari_utils"] = mod
        spec.loader.exec_module(mod)  # type: ignore[union-attr]
        self.utils = mod
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(
            str(package_dir / "Resources" / "tiramisu_acdc_fp32.onnx"),
            opts,
            providers=["CPUExecutionProvider"],
        )

    def predict_volume(self, volume: np.ndarray, spacing) -> np.ndarray:
        data = self.utils.preprocess_data_array(volume)
        seg = self.utils.predict_data_model(
            data, self.session, num_classes=4, min_size_remove=800, device="cpu", onnx=True
        )
        return remap_labels(np.asarray(seg).astype(np.uint8), DATASET_LABEL_MAPS["acdc"])
