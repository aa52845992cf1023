"""Study folders of NIfTI files: a 4D cine, or an ED/ES pair of 3D volumes.

Datasets and converters store a study as a folder of NIfTI files rather than DICOM: M&Ms
(``<ID>_sa_ED.nii.gz``, ``<ID>_sa_ES.nii.gz``), ACDC (``patientNNN_frameYY.nii.gz`` with the ED
and ES frame numbers in ``Info.cfg``), or a single 4D cine (``patientNNN_4d.nii.gz``, a
``dcm2niix`` export). :func:`find_nifti_study` recognises these layouts from the folder's own
files (not its sub-folders); label maps next to the images (``_gt``, ``_seg``, ``_label``,
``_mask``, ``_manual``, ...) are ignored.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from cardioseg.data.datasets import frame_number
from cardioseg.errors import CardiosegError
from cardioseg.io.nifti import is_nifti, squeezed_shape

#: Name tokens of label maps, predictions and other non-image NIfTI files.
LABEL_TOKENS = frozenset(
    {"gt", "seg", "segmentation", "label", "labels", "mask", "masks", "manual", "pred"}
)
_ED_TOKENS = frozenset({"ed", "diastole", "enddiastole"})
_ES_TOKENS = frozenset({"es", "systole", "endsystole"})


@dataclass
class NiftiStudyFiles:
    """The image files of a NIfTI study folder.

    Attributes:
        kind: ``"nifti4d"`` (``cine`` is set) or ``"pair"`` (``ed`` and ``es`` are set).
        cine, ed, es: The image files.
        frames: The cine's ED and ES frames (0-based) where ``Info.cfg`` names them.
        info: Values read from an ACDC-style ``Info.cfg`` (``height_cm``, ``weight_kg``).
    """

    kind: str
    cine: Path | None = None
    ed: Path | None = None
    es: Path | None = None
    frames: tuple[int, int] | None = None
    info: dict[str, float] = field(default_factory=dict)


def _tokens(path: Path) -> list[str]:
    name = path.name
    for suffix in (".nii.gz", ".nii"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
    return [t for t in re.split(r"[^a-z0-9]+", name.lower()) if t]


def _read_info(path: Path) -> dict[str, str]:
    """``key: value`` lines of an ACDC ``Info.cfg`` (unreadable lines are skipped)."""
    values = {}
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            values[key.strip().lower()] = value.strip()
    return values


def _number(value: str | None) -> float | None:
    try:
        return None if value is None else float(value)
    except ValueError:
        return None


def _frame_file(images: list[Path], frame: int | None) -> Path | None:
    """The image named ``..._frameNN`` for ``frame`` (ACDC numbering, from 1)."""
    if frame is None:
        return None
    hits = [p for p in images if any(re.fullmatch(rf"frame0*{frame}", t) for t in _tokens(p))]
    return hits[0] if len(hits) == 1 else None


def _n_dims(path: Path) -> int:
    """Spatial + time dimensions from the header (trailing singleton dimensions dropped)."""
    import nibabel as nib

    try:
        shape = nib.load(str(path)).shape
    except Exception:  # unreadable: let the reader report it if the file is chosen
        return 3
    return len(squeezed_shape(shape))


def find_nifti_study(folder: str | Path) -> NiftiStudyFiles | None:
    """Recognise a study folder of NIfTI files.

    In order: a single 4D image (the cine; with the ED and ES frames where an ACDC-style
    ``Info.cfg`` names them); ``Info.cfg``'s ED and ES frames as ``*_frameNN`` files; one file
    whose name has an ``ED`` token and one with an ``ES`` token (``_ED``, ``-ed``,
    ``diastole``...).

    Args:
        folder: The study folder.

    Returns:
        The files, or ``None`` when the folder holds no NIfTI image (e.g. a DICOM folder).

    Raises:
        CardiosegError: NIfTI images are there but they form no study (several 4D images, or
            3D images without an ED/ES naming).

    Example:
        >>> found = find_nifti_study("mnms/G1K1V3")  # doctest: +SKIP
        >>> found.kind, found.ed.name, found.es.name  # doctest: +SKIP
        ('pair', 'G1K1V3_sa_ED.nii.gz', 'G1K1V3_sa_ES.nii.gz')
    """
    folder = Path(folder)
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    images = [p for p in files if is_nifti(p) and not LABEL_TOKENS & set(_tokens(p))]
    if not images:
        return None
    cfg = folder / "Info.cfg"
    info_values = _read_info(cfg) if cfg.is_file() else {}
    info = {
        key: v
        for key, name in (("height_cm", "height"), ("weight_kg", "weight"))
        if (v := _number(info_values.get(name))) is not None and v > 0
    }
    # frame numbers (from 1); a value that is none ("1.5", "0", text) is not used
    ed_n, es_n = frame_number(info_values.get("ed")), frame_number(info_values.get("es"))
    cines = [p for p in images if _n_dims(p) == 4]
    if len(cines) == 1:  # the whole cine gives the volume curve; Info.cfg may name ED and ES
        frames = None
        if ed_n is not None and es_n is not None:
            frames = (ed_n - 1, es_n - 1)
        return NiftiStudyFiles("nifti4d", cine=cines[0], frames=frames, info=info)
    ed, es = _frame_file(images, ed_n), _frame_file(images, es_n)
    if ed is not None and es is not None and ed != es:
        return NiftiStudyFiles("pair", ed=ed, es=es, info=info)
    eds = [p for p in images if _ED_TOKENS & set(_tokens(p))]
    ess = [p for p in images if _ES_TOKENS & set(_tokens(p))]
    if len(eds) == 1 and len(ess) == 1 and eds[0] != ess[0]:
        return NiftiStudyFiles("pair", ed=eds[0], es=ess[0], info=info)
    names = ", ".join(p.name for p in images[:4]) + (", ..." if len(images) > 4 else "")
    raise CardiosegError(
        folder,
        f"{len(images)} NIfTI image(s) ({names}) but no single 4D cine and no ED/ES pair "
        "(name the files *_ED / *_ES, or give --ed/--es)",
    )
