"""NIfTI reading/writing in the nnU-Net style: readers return ``(array, properties)``.

Arrays keep the file's voxel order (no reorientation); ``properties`` carries the affine so that
anything written back lands in exactly the input geometry.
"""

from __future__ import annotations

import contextlib
import gzip
import logging
import os
import tempfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

from cardioseg.errors import CardiosegError
from cardioseg.labels import DATASET_LABEL_MAPS, UnknownLabelError, remap_labels

# nibabel prints its fixes of odd headers on stderr ("pixdim[1,2,3] should be positive;
# setting to abs..."); read_image checks the raw header itself and refuses in one line
logging.getLogger("nibabel.global").setLevel(logging.CRITICAL + 1)

NIFTI_SUFFIXES = (".nii", ".nii.gz")


@dataclass
class ImageProperties:
    """Geometry of an image as read from disk.

    Attributes:
        affine: 4x4 voxel-to-world (RAS+) matrix.
        spacing: Voxel size in mm for the three spatial axes.
        shape: Full array shape (3D, or 4D with time last).
        path: Source file.
        extra: Free-form metadata (e.g. DICOM-derived values).
    """

    affine: np.ndarray
    spacing: tuple[float, float, float]
    shape: tuple[int, ...]
    path: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def orientation(self) -> str:
        """Axis codes such as ``"LPS"``."""
        return "".join(nib.aff2axcodes(self.affine))


def squeezed_shape(shape: tuple[int, ...] | list[int]) -> tuple[int, ...]:
    """A NIfTI shape without its trailing singleton dimensions beyond the third, which
    exporters often add (``(x, y, z, 1)`` is 3D).

    Example:
        >>> squeezed_shape((64, 64, 10, 1, 1)), squeezed_shape((64, 64, 1))
        ((64, 64, 10), (64, 64, 1))
    """
    out = tuple(int(s) for s in shape)
    while len(out) > 3 and out[-1] == 1:
        out = out[:-1]
    return out


def is_nifti(path: str | Path) -> bool:
    """Whether ``path`` has a NIfTI file name."""
    return str(path).lower().endswith(NIFTI_SUFFIXES)


def _load(path: Path) -> nib.Nifti1Image:
    if not path.exists():
        raise CardiosegError(path, "file not found")
    if path.is_dir():
        raise CardiosegError(path, "is a directory, expected a NIfTI file")
    if not is_nifti(path):
        raise CardiosegError(path, "not a NIfTI file (expected .nii or .nii.gz)")
    try:
        img = nib.load(str(path))
        if not isinstance(img, nib.Nifti1Image | nib.Nifti2Image):
            raise CardiosegError(path, "not a NIfTI image")
        return img
    except CardiosegError:
        raise
    except Exception as exc:  # nibabel raises many types for junk input
        raise CardiosegError(path, f"cannot read NIfTI header ({type(exc).__name__})") from None


#: Largest image (bytes as stored) read into memory: a 512 x 512 x 20 x 50 float32 cine is 1 GB;
#: headers announcing far more are corrupt (or not cardiac MRI) and are refused before reading.
MAX_IMAGE_BYTES = 16 * 10**9


def voxel_type_problem(dtype: np.dtype) -> str | None:
    """Why voxels of ``dtype`` cannot be read as a grayscale image (``None`` if they can).

    Example:
        >>> voxel_type_problem(np.dtype(np.int16)) is None
        True
        >>> voxel_type_problem(np.dtype(np.complex64))
        'complex-valued image: give a magnitude image'
    """
    kind = np.dtype(dtype).kind
    if kind == "c":
        return "complex-valued image: give a magnitude image"
    if kind not in "biuf":  # RGB(A) or other structured voxels
        return f"unsupported voxel type {dtype} (expected a grayscale image)"
    return None


def affine_spacing(affine: np.ndarray) -> np.ndarray:
    """Voxel size along each of the three axes of a voxel-to-world ``affine`` (its column
    norms)."""
    return np.sqrt((np.asarray(affine, float)[:3, :3] ** 2).sum(axis=0))


def _data(img: nib.Nifti1Image, path: Path) -> np.ndarray:
    problem = voxel_type_problem(img.get_data_dtype())
    if problem:
        raise CardiosegError(path, problem)
    shape = tuple(int(n) for n in img.shape)
    n_bytes = int(np.prod(shape, dtype=np.int64)) * img.get_data_dtype().itemsize
    offset = int(getattr(img.dataobj, "offset", 352))
    if n_bytes > MAX_IMAGE_BYTES:
        raise CardiosegError(
            path,
            f"image too large to load (shape {shape}, {n_bytes / 1e9:.1f} GB; at most "
            f"{MAX_IMAGE_BYTES / 1e9:.0f} GB)",
        )
    if not str(path).lower().endswith(".gz") and offset + n_bytes > path.stat().st_size:
        # checked before reading: numpy would first try to allocate what the header announces
        raise CardiosegError(
            path, f"truncated image data (the header announces shape {shape}, the file is smaller)"
        )
    try:
        return np.asarray(img.dataobj, dtype=np.float32)
    except (EOFError, OSError, zlib.error, gzip.BadGzipFile, ValueError) as exc:
        raise CardiosegError(
            path, f"truncated or corrupt image data ({type(exc).__name__})"
        ) from None
    except MemoryError:
        raise CardiosegError(
            path, f"image too large to load (shape {shape}, {n_bytes / 1e9:.1f} GB)"
        ) from None


def _raw_pixdim(img: nib.Nifti1Image, path: Path) -> np.ndarray:
    """pixdim as stored in the file (nibabel silently 'fixes' zero/negative values on load)."""
    from nibabel.openers import ImageOpener

    try:
        with ImageOpener(str(path)) as fh:
            raw = type(img.header).from_fileobj(fh, check=False)
        return np.asarray(raw["pixdim"][1:4], dtype=float)
    except Exception:
        return np.ones(3)


def _check_spacing(img: nib.Nifti1Image, path: Path) -> tuple[float, float, float]:
    ndim = min(3, len(img.shape))
    raw = _raw_pixdim(img, path)[:ndim]
    if np.any(raw <= 0) or not np.all(np.isfinite(raw)):
        raise CardiosegError(path, f"zero or negative voxel spacing {tuple(float(z) for z in raw)}")
    zooms = img.header.get_zooms()[:3]
    if len(zooms) < 3:
        zooms = tuple(zooms) + (1.0,) * (3 - len(zooms))
    spacing = affine_spacing(img.affine)
    if not np.all(np.isfinite(img.affine)):
        raise CardiosegError(path, "affine contains NaN/Inf")
    if np.any(np.asarray(zooms, dtype=float) <= 0):
        raise CardiosegError(
            path, f"zero or negative voxel spacing {tuple(float(z) for z in zooms)}"
        )
    if np.any(spacing <= 1e-6):
        raise CardiosegError(
            path, f"voxel spacing ({', '.join(f'{s:.3g}' for s in spacing)}) mm is too small"
        )
    return tuple(float(s) for s in spacing)  # type: ignore[return-value]


def read_image(path: str | Path, allow_4d: bool = True) -> tuple[np.ndarray, ImageProperties]:
    """Read a 3D (or 4D cine) NIfTI image as ``float32`` and validate it.

    Args:
        path: ``.nii`` or ``.nii.gz`` file.
        allow_4d: Accept 4D (x, y, z, t) arrays.

    Returns:
        ``(array, properties)``.

    Raises:
        CardiosegError: missing/corrupt file, wrong dimensionality, NaN/Inf, all-zero volume,
            zero or negative spacing.

    Example:
        >>> arr, props = read_image("case.nii.gz")  # doctest: +SKIP
        >>> props.spacing  # doctest: +SKIP
        (1.25, 1.25, 10.0)
    """
    path = Path(path)
    img = _load(path)
    shape = squeezed_shape(img.shape)
    if len(shape) < 3 or (len(shape) == 3 and min(shape) < 1):
        raise CardiosegError(path, f"expected a 3D or 4D image, got {len(shape)}D shape {shape}")
    if len(shape) > 4 or (len(shape) == 4 and not allow_4d):
        raise CardiosegError(
            path,
            f"expected a 3D{' or 4D' if allow_4d else ''} image, got {len(shape)}D shape {shape}",
        )
    spacing = _check_spacing(img, path)
    data = _data(img, path).reshape(shape)
    if not np.all(np.isfinite(data)):
        raise CardiosegError(path, "image contains NaN or Inf voxels")
    if not np.any(data):
        raise CardiosegError(path, "image is all zeros")
    if data.size > 1 and data.min() == data.max():
        raise CardiosegError(path, f"image is blank (every voxel is {data.flat[0]:g})")
    props = ImageProperties(img.affine.copy(), spacing, shape, str(path))
    if len(shape) == 4:  # the time between frames, carried into the cine masks
        step = float(img.header.get_zooms()[3]) if len(img.header.get_zooms()) > 3 else 0.0
        if np.isfinite(step) and step > 0:
            props.extra["frame_time"] = step
            props.extra["time_unit"] = img.header.get_xyzt_units()[1]
    return data, props


def affines_match(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two voxel-to-world affines describe the same grid (to 1e-3 mm, a relative 1e-4):
    the test a label or a prediction must pass against its image.

    Example:
        >>> affines_match(np.eye(4), np.diag([1.0, 1.0, 1.0005, 1.0]))
        True
        >>> affines_match(np.eye(4), np.diag([1.0, 1.0, 1.1, 1.0]))
        False
    """
    return bool(np.allclose(a, b, atol=1e-3, rtol=1e-4))


def read_geometry(path: str | Path) -> ImageProperties:
    """The geometry of a NIfTI file (affine, checked spacing, shape) without judging its
    content: a label map may be empty, an image may not (:func:`read_image`)."""
    path = Path(path)
    img = _load(path)
    shape = squeezed_shape(img.shape)
    return ImageProperties(img.affine.copy(), _check_spacing(img, path), shape, str(path))


def read_label(
    path: str | Path,
    label_map: str | dict[int, int] = "canonical",
    reference: ImageProperties | None = None,
) -> np.ndarray:
    """Read a label map, remap it to canonical labels and check it against its image.

    Args:
        path: Label NIfTI file.
        label_map: Dataset name from :data:`DATASET_LABEL_MAPS` or an explicit mapping.
        reference: Properties of the matching image; shape and affine must agree.

    Returns:
        ``uint8`` canonical label array.
    """
    path = Path(path)
    img = _load(path)
    if isinstance(label_map, str) and label_map not in DATASET_LABEL_MAPS:
        raise CardiosegError(
            None,
            f"unknown label convention {label_map!r} "
            f"(one of {', '.join(sorted(DATASET_LABEL_MAPS))})",
        )
    mapping = DATASET_LABEL_MAPS[label_map] if isinstance(label_map, str) else label_map
    shape = squeezed_shape(img.shape)
    if reference is not None:
        if shape != tuple(reference.shape):
            raise CardiosegError(
                path, f"label shape {shape} does not match image shape {tuple(reference.shape)}"
            )
        if not affines_match(img.affine, reference.affine):
            raise CardiosegError(path, "label affine does not match the image affine")
    data = _data(img, path).reshape(shape)
    try:
        return remap_labels(data, mapping)
    except UnknownLabelError as exc:
        raise CardiosegError(path, str(exc)) from None


@contextlib.contextmanager
def atomic_write(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` only on success.

    The temporary name keeps the suffix so that format-by-extension writers work.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes[-2:]) if path.name.endswith(".nii.gz") else path.suffix
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)  # mkstemp creates 0600; use the usual permissions
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextlib.contextmanager
def atomic_folder(path: str | Path) -> Iterator[Path]:
    """Yield a new temporary folder next to ``path``; it replaces ``path`` only on success.

    On any exception the temporary folder is removed and ``path`` is left as it was, so a reader
    sees either the previous folder or the complete new one.

    Example:
        >>> import tempfile
        >>> out = Path(tempfile.mkdtemp()) / "result"
        >>> with atomic_folder(out) as tmp:
        ...     _ = (tmp / "a.txt").write_text("done")
        >>> (out / "a.txt").read_text()
        'done'
    """
    import shutil

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; a result folder is not
    try:
        yield tmp
        old = None
        if path.exists():  # moved aside, not deleted first: no time without a result folder
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old.", dir=path.parent))
            path.rename(old / path.name)
        try:
            tmp.rename(path)
        except BaseException:
            if old is not None:  # put the previous folder back
                (old / path.name).rename(path)
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_image(
    path: str | Path, array: np.ndarray, properties: ImageProperties, dtype: type = np.float32
) -> Path:
    """Write ``array`` with the geometry of ``properties`` (atomic)."""
    path = Path(path)
    arr = np.asarray(array).astype(dtype)
    if tuple(arr.shape[:3]) != tuple(properties.shape[:3]):
        raise ValueError(f"array shape {arr.shape} does not match geometry {properties.shape}")
    img = nib.Nifti1Image(arr, properties.affine)
    img.set_qform(properties.affine, code=1)
    img.set_sform(properties.affine, code=1)
    img.header.set_xyzt_units("mm")  # the affine is in mm (viewers read "unknown" as mm, not all)
    if arr.ndim == 4 and properties.extra.get("frame_time"):
        zooms = img.header.get_zooms()[:3]
        img.header.set_zooms((*zooms, float(properties.extra["frame_time"])))
        img.header.set_xyzt_units("mm", properties.extra.get("time_unit") or "unknown")
    with atomic_write(path) as tmp:
        nib.save(img, str(tmp))
    return path


def write_label(path: str | Path, label: np.ndarray, properties: ImageProperties) -> Path:
    """Write a canonical label map in the native geometry of ``properties`` (atomic, uint8)."""
    return write_image(path, label, properties, dtype=np.uint8)
