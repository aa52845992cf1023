"""Shared fixtures: synthetic images with known affines, tiny checkpoints, data paths."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import nibabel as nib
import numpy as np
import pytest

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"

#: What every ``report.json`` holds, whether written by ``write_report`` or by ``analyze``.
REPORT_KEYS = frozenset(
    {
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
        "qc",
    }
)

#: The tiny U-Net the tests train and segment with (model section of a training config).
TINY_MODEL = {"channels": [4, 8, 16], "strides": [2, 2], "num_res_units": 0}

#: A training section that runs one short epoch (two iterations of two patches).
QUICK_TRAIN = {
    "epochs": 1,
    "iterations_per_epoch": 2,
    "batch_size": 2,
    "patch_size": 32,
    "num_threads": 1,
    "warmup_epochs": 0,
    "n_val_monitor": 1,
}


def pytest_configure(config):
    """The whole session (module- and session-scoped fixtures too, and a test that undoes its
    ``monkeypatch``) caches ONNX exports in a temporary folder, never the user's ``~/.cache``."""
    import os
    import tempfile

    os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="cardioseg-test-cache-")


@pytest.fixture(autouse=True)
def _own_export_cache(tmp_path_factory):
    """Each test gets an empty cache of its own, so that no test runs an export another one
    cached (a test of a failed export would not see it). Its own MonkeyPatch: a test's
    ``monkeypatch.undo()`` leaves it in place."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg-cache")))
        yield


def oblique_affine(
    spacing=(1.3, 1.3, 8.0), angles=(0.4, -0.7, 1.1), origin=(12.0, -40.0, 85.0), flip=(1, 1, 1)
) -> np.ndarray:
    """A rotated (vendor-like) affine with the given voxel sizes in its column norms."""
    a, b, c = angles
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    aff = np.eye(4)
    aff[:3, :3] = rz @ ry @ rx @ np.diag(np.asarray(spacing) * np.asarray(flip))
    aff[:3, 3] = origin
    return aff


def write_nifti(path: Path, array: np.ndarray, affine: np.ndarray | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, np.eye(4) if affine is None else affine), str(path))
    return path


def disc_labels(shape=(48, 40, 6), center=None, r_lv=7, r_myo=10, rv_shift=14, r_rv=8):
    """A tiny concentric LV/MYO + RV label volume (canonical labels)."""
    x, y = np.mgrid[: shape[0], : shape[1]]
    cx, cy = center or (shape[0] / 2, shape[1] / 2)
    d = np.hypot(x - cx, y - cy)
    sl = np.zeros(shape[:2], np.uint8)
    sl[np.hypot(x - cx + rv_shift, y - cy) < r_rv] = 3
    sl[d < r_myo] = 2
    sl[d < r_lv] = 1
    lab = np.repeat(sl[:, :, None], shape[2], axis=2)
    lab[..., 0] = 0
    return lab


def image_from_labels(lab: np.ndarray, seed: int = 0, scale: float = 100.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    lut = np.array([0.3, 1.0, 0.2, 0.9], np.float32)
    return (lut[lab] * scale + rng.normal(0, 0.03 * scale, lab.shape)).astype(np.float32) + scale


def mr_cine_image(
    pixels: np.ndarray,
    *,
    k: int,
    t: int,
    n_phases: int,
    study: str,
    series: str,
    frame_of_ref: str,
    pixel_spacing: float,
) -> Dataset:
    """One classic MR image (a pydicom ``Dataset`` with its file meta) of a synthetic cine.

    Slice ``k`` lies 8 mm above slice ``k - 1`` in an axial plane, phase ``t`` 40 ms after
    phase ``t - 1``; instances are numbered slice by slice. The patient is anonymous
    ("Synthetic^Test").

    Args:
        pixels: The stored values, ``(rows, columns)``.
        k: The slice index.
        t: The phase index.
        n_phases: The phase count of the cine (for the instance number).
        study: The StudyInstanceUID.
        series: The SeriesInstanceUID.
        frame_of_ref: The FrameOfReferenceUID.
        pixel_spacing: The (square) pixel size in mm.
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    uid = generate_uid()
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, uid
    ds.PatientName, ds.PatientID = "Synthetic^Test", "SYN001"
    ds.PatientBirthDate, ds.PatientSex = "", "O"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    ds.FrameOfReferenceUID = frame_of_ref
    ds.StudyID, ds.AccessionNumber, ds.ReferringPhysicianName = "1", "", ""
    ds.StudyDate, ds.StudyTime = "20240101", "120000"
    ds.Modality, ds.Manufacturer = "MR", "synthetic"
    ds.SeriesNumber, ds.InstanceNumber = 1, k * n_phases + t + 1
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "ND"]
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    ds.ImagePositionPatient = [0.0, 0.0, 8.0 * k]
    ds.PixelSpacing, ds.SliceThickness = [pixel_spacing, pixel_spacing], 8.0
    ds.TriggerTime = 40.0 * t
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = np.ascontiguousarray(pixels.astype(np.uint16)).tobytes()
    return ds


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A randomly initialised tiny model saved as a cardioseg checkpoint."""
    import torch

    from cardioseg.models import ModelConfig, build_model, save_checkpoint
    from cardioseg.training.config import TrainingConfig

    torch.manual_seed(0)
    cfg = TrainingConfig()
    cfg.model = ModelConfig(**TINY_MODEL)
    model = build_model(cfg.model)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    save_checkpoint(
        path,
        {
            "model_state": model.state_dict(),
            "config": cfg.to_dict(),
            "fingerprint": {},
            "format": "cardioseg-checkpoint-v1",
        },
    )
    return path


def shared_or_skip(*parts: str) -> Path:
    p = SHARED.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"real data not available: {p} is absent (needs ../shared/data)")
    return p
