"""Checks of uploaded files: type by content (never by name), integrity, size, zip safety.

Every check raises :class:`UploadError` with an HTTP status and a one-line message; nothing here
logs file names or content.
"""

from __future__ import annotations

import gzip
import io
import re
import struct
import unicodedata
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

GZIP_MAGIC = b"\x1f\x8b"
ZIP_MAGIC = b"PK\x03\x04"
EMPTY_ZIP_MAGIC = b"PK\x05\x06"
#: Uncompressed size accepted in a zip; the DICOM loader's own default limit.
MAX_ZIP_UNCOMPRESSED = 2_000_000_000


class UploadError(Exception):
    """A refused upload: ``status`` is the HTTP status, ``message`` one line for the user."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class CheckedFile:
    """An uploaded file whose type was checked.

    Attributes:
        kind: ``nifti`` or ``zip``.
        compressed: NIfTI stored with gzip.
        shape: NIfTI array shape (trailing singleton axes dropped), ``None`` for zips.
        affine: NIfTI affine as nested lists, ``None`` for zips.
    """

    kind: str
    compressed: bool = False
    shape: tuple[int, ...] | None = None
    affine: list[list[float]] | None = None

    @property
    def suffix(self) -> str:
        """File suffix matching the content: ``.nii.gz``, ``.nii`` or ``.zip``."""
        if self.kind == "zip":
            return ".zip"
        return ".nii.gz" if self.compressed else ".nii"


def display_name(filename: str | None, fallback: str = "study") -> str:
    """A safe display name from an uploaded file name: base name only, no control characters.

    Never used as a path.

    Example:
        >>> display_name("../../etc/passwd"), display_name("C:\\\\scans\\\\cine.nii.gz")
        ('passwd', 'cine.nii.gz')
    """
    name = (filename or "").replace("%22", '"').replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(c for c in name if unicodedata.category(c)[0] != "C").strip()
    name = re.sub(r"\s+", " ", name)[:120]
    return name if name and name not in (".", "..") else fallback


def study_label(text: str, fallback: str = "study") -> str:
    """A study's label as the reader typed it: control characters removed, spaces collapsed,
    at most 120 characters; slashes are kept (a label is never used as a path).

    Example:
        >>> study_label("Patient 12/03/2024\tfollow-up")
        'Patient 12/03/2024 follow-up'
    """
    text = "".join(c if unicodedata.category(c)[0] != "C" else " " for c in text)
    text = re.sub(r"\s+", " ", text).strip()[:120]
    return text or fallback


def _nifti_magic(head: bytes) -> str | None:
    """``"n+1"``, ``"n+2"``, ``"ni1"`` (header/image pair) or ``None`` from the first bytes."""
    if len(head) >= 348:
        for order in ("<", ">"):
            size = struct.unpack(f"{order}i", head[:4])[0]
            if size == 348 and head[344:348] in (b"n+1\x00", b"ni1\x00"):
                return head[344:347].decode()
            if size == 540 and head[4:8] == b"n+2\x00":
                return "n+2"
    return None


def _gzip_size(path: Path, limit: int) -> int:
    """Decompress the whole gzip stream (checks CRC and completeness); return its size."""
    total = 0
    try:
        with gzip.open(path, "rb") as fh:
            while chunk := fh.read(1 << 20):
                total += len(chunk)
                if total > limit:
                    raise UploadError(413, f"image too large once decompressed (> {limit} bytes)")
    except UploadError:
        raise
    except EOFError:
        raise UploadError(
            400, "truncated gzip data: the file was cut off (upload it again)"
        ) from None
    except (OSError, zlib.error, gzip.BadGzipFile) as exc:
        raise UploadError(400, f"corrupt gzip data ({type(exc).__name__})") from None
    return total


def sniff(path: Path) -> str:
    """Type of an uploaded file by its content: ``nifti-gz``, ``nifti`` or ``zip``.

    Raises:
        UploadError: Any other content (HTTP 415), or an empty file (HTTP 400).
    """
    with open(path, "rb") as fh:
        head = fh.read(540)
    if not head:
        raise UploadError(400, "empty file")
    if head.startswith(GZIP_MAGIC):
        try:
            with gzip.open(path, "rb") as fh:
                inner = fh.read(540)
        except EOFError:
            raise UploadError(400, "truncated gzip data: the file was cut off") from None
        except (OSError, zlib.error) as exc:
            raise UploadError(400, f"corrupt gzip data ({type(exc).__name__})") from None
        magic = _nifti_magic(inner)
        if magic is None:
            raise UploadError(
                415,
                "gzip file that does not hold a NIfTI image; expected a NIfTI "
                "(.nii/.nii.gz) image or a zip of a DICOM folder",
            )
        if magic == "ni1":
            raise UploadError(
                415,
                "NIfTI header/image pairs (.hdr/.img) are not supported; "
                "save the image as a single .nii or .nii.gz file",
            )
        return "nifti-gz"
    magic = _nifti_magic(head)
    if magic in ("n+1", "n+2"):
        return "nifti"
    if magic == "ni1":
        raise UploadError(
            415,
            "NIfTI header/image pairs (.hdr/.img) are not supported; "
            "save the image as a single .nii or .nii.gz file",
        )
    if head.startswith(ZIP_MAGIC):
        return "zip"
    if head.startswith(EMPTY_ZIP_MAGIC):
        raise UploadError(400, "empty zip archive")
    raise UploadError(
        415,
        "unsupported file type (checked by content): expected a NIfTI image "
        "(.nii/.nii.gz) or a zip of a DICOM folder",
    )


def check_nifti(path: Path, compressed: bool, max_voxels: int) -> CheckedFile:
    """Check a NIfTI file completely: gzip integrity, header, data size, dimensionality, real
    values, and an in-plane field of view that can hold a heart.

    ``path`` must end in ``.nii`` or ``.nii.gz`` (matching ``compressed``) for nibabel.
    """
    import nibabel as nib
    import numpy as np

    from cardioseg.errors import CardiosegError
    from cardioseg.io.nifti import affine_spacing, squeezed_shape, voxel_type_problem
    from cardioseg.preprocessing.geometry import check_inplane_geometry

    limit = max_voxels * 8 + (1 << 20)
    size = _gzip_size(path, limit) if compressed else path.stat().st_size
    try:
        img = nib.load(str(path))
        shape = tuple(int(s) for s in img.shape)
        offset = int(getattr(img.dataobj, "offset", 352))
        itemsize = np.dtype(img.get_data_dtype()).itemsize
        affine = img.affine
    except Exception as exc:  # nibabel raises many types for junk headers
        raise UploadError(400, f"cannot read the NIfTI header ({type(exc).__name__})") from None
    if not shape or min(shape) < 1:
        raise UploadError(400, f"NIfTI image has an empty shape {shape}")
    n_vox = int(np.prod(shape, dtype=np.int64))
    if n_vox > max_voxels:
        raise UploadError(413, f"image too large ({n_vox} voxels, limit {max_voxels})")
    if offset + n_vox * itemsize > size:
        raise UploadError(
            400, f"truncated NIfTI: header announces shape {shape} but the file holds less data"
        )
    shape = squeezed_shape(shape)
    if len(shape) < 3 or len(shape) > 4:
        raise UploadError(400, f"expected a 3D or 4D image, got {len(shape)}D shape {shape}")
    if not np.all(np.isfinite(affine)):
        raise UploadError(400, "NIfTI affine contains NaN/Inf")
    problem = voxel_type_problem(img.get_data_dtype())
    if problem:
        raise UploadError(400, problem)
    try:
        check_inplane_geometry(shape[:3], tuple(float(v) for v in affine_spacing(affine)))
    except CardiosegError as exc:
        raise UploadError(400, exc.problem) from None
    return CheckedFile("nifti", compressed, shape, np.asarray(affine, float).tolist())


def _zipped_nifti_voxels(zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> int | None:
    """Voxels a NIfTI member of a zip announces in its header (``None``: not a NIfTI header).

    Reads the first bytes only (through gzip for a ``.nii.gz``): a small compressed member
    may announce an image of many gigabytes, which the analysis would read into memory.
    """
    import nibabel as nib
    import numpy as np

    try:
        with zf.open(info) as fh:
            head = fh.read(540)
        if head.startswith(GZIP_MAGIC):
            with zf.open(info) as raw, gzip.GzipFile(fileobj=raw) as fh:
                head = fh.read(540)
        magic = _nifti_magic(head)
        if magic is None:
            return None
        header_class = nib.Nifti2Header if magic == "n+2" else nib.Nifti1Header
        shape = header_class.from_fileobj(io.BytesIO(head), check=False).get_data_shape()
    except Exception:  # unreadable: the loader says what is wrong with it, as before
        return None
    return int(np.prod(shape, dtype=np.int64))


def check_zip(
    path: Path, max_uncompressed: int = MAX_ZIP_UNCOMPRESSED, max_voxels: int | None = None
) -> CheckedFile:
    """Check a zip without extracting it: readable, not encrypted, safe member names, size,
    and (with ``max_voxels``) the size its NIfTI members announce.

    Member names are checked with the DICOM loader's own rules
    (:func:`cardioseg.io.dicom.safe_member`), which also extracts safely later.
    """
    from cardioseg.io.dicom import MAX_ZIP_MEMBERS, safe_member
    from cardioseg.io.nifti import is_nifti

    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
            if len(infos) > MAX_ZIP_MEMBERS:
                raise UploadError(413, f"zip has too many members ({len(infos)})")
            if max_voxels is not None:
                for info in infos:
                    if info.is_dir() or not is_nifti(info.filename) or info.flag_bits & 0x1:
                        continue
                    n_vox = _zipped_nifti_voxels(zf, info)
                    if n_vox is not None and n_vox > max_voxels:
                        raise UploadError(
                            413, f"image in the zip too large ({n_vox} voxels, limit {max_voxels})"
                        )
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError):
        raise UploadError(400, "not a valid zip archive (corrupt or truncated)") from None
    total, n_files = 0, 0
    for info in infos:
        try:
            rel = safe_member(info.filename)
        except ValueError:
            raise UploadError(
                400,
                "unsafe path in zip (a member points outside the archive "
                "folder); refusing the archive",
            ) from None
        if info.flag_bits & 0x1:
            raise UploadError(400, "encrypted zip (password-protected archives are not supported)")
        if rel is None or info.is_dir():
            continue
        n_files += 1
        total += info.file_size
    if n_files == 0:
        raise UploadError(400, "empty zip archive")
    if total > max_uncompressed:
        raise UploadError(
            413, f"zip too large once extracted ({total} bytes, limit {max_uncompressed})"
        )
    return CheckedFile("zip")
