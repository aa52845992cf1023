"""Readers for the official layouts of public cardiac MRI datasets.

Every reader returns a list of :class:`CaseRecord` (one per subject and phase) that points to files
on disk; :func:`load_case` reads one record into canonical labels (0 bg, 1 LV, 2 MYO, 3 RV).
"""

from __future__ import annotations

import csv
import fnmatch
import os
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

from cardioseg.errors import CardiosegError, read_text
from cardioseg.io.nifti import (
    ImageProperties,
    affine_spacing,
    affines_match,
    read_geometry,
    read_image,
    read_label,
)

ACDC_GROUPS = ("NOR", "DCM", "HCM", "MINF", "RV")


@dataclass
class CaseRecord:
    """One labelled (or unlabelled) 3D short-axis volume.

    Attributes:
        dataset: Dataset name (``acdc``, ``mnms``, ``mnms2``, ``mscmr``, ``folder``).
        subject: Subject identifier, unique within the dataset.
        phase: ``ED``, ``ES`` or another phase name (``LGE`` for late enhancement).
        image: Image path.
        label: Label path or ``""``.
        label_map: Key of :data:`cardioseg.labels.DATASET_LABEL_MAPS` for the label file.
        frame: Time index in a 4D file, or -1 for 3D files.
        vendor, centre, group: Metadata used for aggregation.
        spacing, shape: Geometry read from the header.
        extra: Additional metadata (height, weight, ...).
    """

    dataset: str
    subject: str
    phase: str
    image: str
    label: str = ""
    label_map: str = "canonical"
    frame: int = -1
    vendor: str = ""
    centre: str = ""
    group: str = ""
    spacing: tuple[float, float, float] = (0.0, 0.0, 0.0)
    shape: tuple[int, ...] = ()
    extra: dict = field(default_factory=dict)

    @property
    def case_id(self) -> str:
        """``dataset/subject/phase``: unique key of the record."""
        return f"{self.dataset}/{self.subject}/{self.phase}"

    def to_row(self) -> dict:
        row = asdict(self)
        row["spacing"] = "x".join(f"{s:.4g}" for s in self.spacing)
        row["shape"] = "x".join(str(s) for s in self.shape)
        row.pop("extra")
        row.update({f"extra_{k}": v for k, v in self.extra.items()})
        return row


def _header_geometry(path: Path) -> tuple[tuple[float, float, float], tuple[int, ...]]:
    try:
        img = nib.load(str(path))
    except Exception:
        raise CardiosegError(path, "cannot read NIfTI header") from None
    # the affine's voxel size, as read_image gives it (the header's pixdim can disagree with an
    # sform written by another tool)
    spacing = tuple(float(s) for s in affine_spacing(img.affine))
    return spacing, tuple(int(s) for s in img.shape)  # type: ignore[return-value]


def _require_dir(root: str | Path) -> Path:
    root = Path(root)
    if not root.is_dir():  # a file given by mistake is said to be one, not to be missing
        problem = "is a file, not a dataset folder" if root.exists() else "dataset folder not found"
        raise CardiosegError(root, problem)
    return root


def find_paths(root: Path, pattern: str) -> Iterator[Path]:
    """Files and folders under ``root`` whose name matches ``pattern``, symbolic links followed.

    ``Path.rglob`` (before Python 3.13) does not enter linked folders, so a dataset assembled
    from links to patient folders (a split made of links, say) would be read as empty. Each real
    folder is entered once, so a link back up the tree cannot loop.

    Args:
        root: Folder to search.
        pattern: ``fnmatch`` pattern for a name (case-sensitive), e.g. ``"*_sa.nii.gz"``.

    Example:
        >>> import tempfile
        >>> d = Path(tempfile.mkdtemp())
        >>> (d / "real" / "p1").mkdir(parents=True); (d / "real" / "p1" / "a.nii.gz").touch()
        >>> (d / "split").mkdir(); (d / "split" / "p1").symlink_to(d / "real" / "p1")
        >>> sorted(str(p.relative_to(d)) for p in find_paths(d / "split", "*.nii.gz"))
        ['split/p1/a.nii.gz']
    """
    seen: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            if fnmatch.fnmatchcase(name, pattern):
                yield Path(dirpath) / name


def frame_number(value: str | None) -> int | None:
    """An ACDC ``Info.cfg`` frame number (counted from 1): a whole number, also written as a
    decimal (``"1"``, ``"01"``, ``"1.0"``); ``None`` for anything else (missing, ``"1.5"``,
    ``"0"``, text).

    Example:
        >>> frame_number("12"), frame_number("1.0"), frame_number("1.5"), frame_number("0")
        (12, 1, None, None)
    """
    try:
        number = float(str(value).strip())
    except ValueError:
        return None
    if not number.is_integer() or number < 1:  # also NaN and infinities
        return None
    return int(number)


def _parse_cfg(path: Path) -> dict[str, str]:
    """``key: value`` lines of an ACDC ``Info.cfg``; ``ED`` and ``ES`` must be frame numbers.

    Raises:
        CardiosegError: The file is not UTF-8 text, or its ED or ES line is missing or is not
            a frame number (counted from 1).
    """
    out = {}
    for line in read_text(path).splitlines():
        if ":" in line:
            k, v = line.split(":", 1)
            out[k.strip()] = v.strip()
    for phase in ("ED", "ES"):
        if phase not in out:
            raise CardiosegError(path, f"no {phase} line (e.g. '{phase}: 1')")
        number = frame_number(out[phase])
        if number is None:
            raise CardiosegError(
                path, f"{phase} must be a frame number (from 1), got {out[phase]!r}"
            )
        out[phase] = str(number)
    return out


def read_acdc(root: str | Path) -> list[CaseRecord]:
    """ACDC official layout: ``patientNNN/patientNNN_frameYY[_gt].nii.gz`` and ``Info.cfg``.

    ``root`` may be the dataset folder, its ``training``/``testing`` subfolder, or hold both.
    """
    root = _require_dir(root)
    patients = sorted(
        p for p in find_paths(root, "patient*") if p.is_dir() and (p / "Info.cfg").exists()
    )
    records = []
    for pdir in patients:
        info = _parse_cfg(pdir / "Info.cfg")
        for phase in ("ED", "ES"):
            frame = int(info[phase])
            image = pdir / f"{pdir.name}_frame{frame:02d}.nii.gz"
            if not image.exists():
                continue
            label = image.with_name(image.name.replace(".nii.gz", "_gt.nii.gz"))
            spacing, shape = _header_geometry(image)
            extra = {k.lower(): info[k] for k in ("Height", "Weight", "NbFrame") if k in info}
            records.append(
                CaseRecord(
                    "acdc",
                    pdir.name,
                    phase,
                    str(image),
                    str(label) if label.exists() else "",
                    "acdc",
                    -1,
                    "Siemens",
                    "Dijon",
                    info.get("Group", ""),
                    spacing,
                    shape,
                    extra,
                )
            )
    return records


def _read_mnms_csv(root: Path) -> dict[str, dict[str, str]]:
    csvs = sorted(root.glob("*.csv"))
    table: dict[str, dict[str, str]] = {}
    for c in csvs:
        try:
            with open(c, newline="", encoding="utf-8-sig") as fh:
                rows = list(csv.DictReader(fh))
        except UnicodeDecodeError:
            raise CardiosegError(c, "not a text file (not UTF-8)") from None
        except csv.Error as exc:
            raise CardiosegError(c, f"not a readable CSV table ({exc})") from None
        for row in rows:
            key = row.get("External code") or row.get("SUBJECT_CODE") or row.get("subject")
            if key:
                table[str(key).strip()] = {k: (v or "").strip() for k, v in row.items() if k}
    return table


def _mnms_frame(info: dict[str, str], phase: str, image: Path, shape: tuple[int, ...]) -> int:
    """The ``phase`` frame (counted from 0) that the M&Ms CSV gives for a 4D ``image``."""
    value = info[phase]
    if not value.isdigit():
        raise CardiosegError(
            image, f"the M&Ms CSV's {phase} frame for this file is not a whole number: {value!r}"
        )
    frames = shape[3] if len(shape) == 4 else 1
    if len(shape) != 4 or int(value) >= frames:
        raise CardiosegError(
            image,
            f"the M&Ms CSV's {phase} frame {value} (counted from 0) is not among its "
            f"{frames} frame(s)",
        )
    return int(value)


def read_mnms(root: str | Path) -> list[CaseRecord]:
    """M&Ms: ``<ID>/<ID>_sa_{ED,ES}[_gt].nii.gz`` or the official 4D ``<ID>_sa[_gt].nii.gz``.

    Vendor, centre and (for 4D files) ED/ES frames come from the CSV in ``root``
    (``mnms_info.csv`` or the official ``*Dataset_Information.csv``).
    """
    root = _require_dir(root)
    meta = _read_mnms_csv(root)
    records = []
    for image in sorted(find_paths(root, "*_sa*.nii.gz")):
        name = image.name
        if "_gt" in name:
            continue
        m3 = re.fullmatch(r"(.+)_sa_(ED|ES)\.nii\.gz", name)
        m4 = re.fullmatch(r"(.+)_sa\.nii\.gz", name)
        if m3:
            subject = m3.group(1)
        elif m4:
            subject = m4.group(1)
            if not {"ED", "ES"} <= set(meta.get(subject, {})):
                raise CardiosegError(image, "4D M&Ms file without ED/ES frames in the CSV")
        else:
            continue
        info = meta.get(subject, {})
        label = image.with_name(name.replace(".nii.gz", "_gt.nii.gz"))
        spacing, shape = _header_geometry(image)
        if m3:
            phases = [(m3.group(2), -1)]
        else:  # the CSV's frames, checked against the cine's
            phases = [(ph, _mnms_frame(info, ph, image, shape)) for ph in ("ED", "ES")]
        vendor = info.get("VendorName") or info.get("Vendor", "")
        for phase, frame in phases:
            records.append(
                CaseRecord(
                    "mnms",
                    subject,
                    phase,
                    str(image),
                    str(label) if label.exists() else "",
                    "mnms",
                    frame,
                    vendor,
                    info.get("Centre", ""),
                    info.get("Pathology", ""),
                    spacing,
                    shape[:3],
                    {"vendor_code": info.get("Vendor", "")},
                )
            )
    return records


def read_mnms2(root: str | Path) -> list[CaseRecord]:
    """M&Ms-2 short-axis files: ``NNN/NNN_SA_{ED,ES}[_gt].nii.gz`` (metadata CSV optional)."""
    root = _require_dir(root)
    meta = {}
    for c in sorted(root.glob("*.csv")):
        with open(c, newline="") as fh:
            for row in csv.DictReader(fh):
                key = row.get("SUBJECT_CODE") or row.get("subject")
                if key:
                    meta[str(int(key)) if str(key).isdigit() else key] = row
    records = []
    for image in sorted(find_paths(root, "*_SA_E[DS].nii.gz")):
        m = re.fullmatch(r"(\d+)_SA_(ED|ES)\.nii\.gz", image.name)
        if not m:
            continue
        subject, phase = m.group(1), m.group(2)
        info = meta.get(str(int(subject)), {})
        label = image.with_name(image.name.replace(".nii.gz", "_gt.nii.gz"))
        spacing, shape = _header_geometry(image)
        records.append(
            CaseRecord(
                "mnms2",
                subject,
                phase,
                str(image),
                str(label) if label.exists() else "",
                "mnms2",
                -1,
                info.get("VENDOR", ""),
                info.get("CENTRE", ""),
                info.get("DISEASE", ""),
                spacing,
                shape,
            )
        )
    return records


def read_mscmr(root: str | Path) -> list[CaseRecord]:
    """MS-CMRSeg LGE: ``images/subjectN_DE.nii.gz`` and ``labels/subjectN_DE_manual.nii.gz``."""
    root = _require_dir(root)
    records = []
    for image in sorted(
        find_paths(root, "subject*_DE.nii.gz"), key=lambda p: int(re.sub(r"\D", "", p.name) or 0)
    ):
        subject = image.name.split("_")[0]
        candidates = [
            image.parent.parent / "labels" / f"{subject}_DE_manual.nii.gz",
            image.with_name(f"{subject}_DE_manual.nii.gz"),
        ]
        label = next((c for c in candidates if c.exists()), None)
        spacing, shape = _header_geometry(image)
        records.append(
            CaseRecord(
                "mscmr",
                subject,
                "LGE",
                str(image),
                str(label) if label else "",
                "mscmr",
                -1,
                "Philips",
                "Renji",
                "",
                spacing,
                shape,
            )
        )
    return records


#: File names of the ACDC release (``patient001_frame01``), whose labels are not canonical.
_ACDC_NAME = re.compile(r"patient\d{3}_frame\d{2}")


def read_folder_pairs(root: str | Path, label_map: str = "canonical") -> list[CaseRecord]:
    """A generic folder of ``X.nii.gz`` + ``X_gt.nii.gz`` (or ``X_seg``/``X_label``) pairs.

    Also accepts ``imagesTr``/``labelsTr`` (nnU-Net style, ``X_0000.nii.gz`` ↔ ``X.nii.gz``).
    """
    root = _require_dir(root)
    records = []
    label_suffixes = ("_gt", "_seg", "_label", "_labels", "_mask", "_manual")
    for image in sorted(find_paths(root, "*.nii*")):
        stem = image.name.split(".nii")[0]
        if any(stem.endswith(s) for s in label_suffixes) or "labelsTr" in image.parts:
            continue
        case = re.sub(r"_\d{4}$", "", stem)  # nnU-Net's channel suffix (_0000) left out
        label = None
        for s in label_suffixes:
            cand = image.with_name(f"{stem}{s}{image.name[len(stem) :]}")
            if cand.exists():
                label = cand
                break
        if label is None and image.parent.name.startswith("images"):
            cand = (
                image.parent.parent
                / image.parent.name.replace("images", "labels")
                / (case + image.name[len(stem) :])
            )
            label = cand if cand.exists() else None
        if label is not None and _ACDC_NAME.fullmatch(case) and label_map == "canonical":
            raise CardiosegError(
                label,
                "is named like an ACDC label (patientNNN_frameYY_gt) but its patient folder "
                "has no Info.cfg; ACDC numbers RV 1 and LV 3, the generic folder layout LV 1 "
                "and RV 3, so it would swap them: put Info.cfg back (layout acdc) or rename "
                "the files",
            )
        spacing, shape = _header_geometry(image)
        m = re.fullmatch(r"(.+?)[_-](ED|ES)", stem, flags=re.IGNORECASE)
        subject, phase = (m.group(1), m.group(2).upper()) if m else (stem, "NA")
        records.append(
            CaseRecord(
                "folder",
                subject,
                phase,
                str(image),
                str(label) if label else "",
                label_map,
                -1,
                spacing=spacing,
                shape=shape,
            )
        )
    return records


READERS = {
    "acdc": read_acdc,
    "mnms": read_mnms,
    "mnms2": read_mnms2,
    "mscmr": read_mscmr,
    "folder": read_folder_pairs,
}


def detect_layout(root: str | Path) -> str:
    """Guess which reader fits a folder.

    Raises:
        CardiosegError: The folder holds several datasets' layouts (e.g. the parent of ACDC
            and M&Ms): one reader would read one of them and silently leave the others out.
    """
    root = _require_dir(root)
    found = [
        name
        for name, patterns in (
            ("acdc", ("Info.cfg",)),
            ("mnms", ("*_sa_E[DS].nii.gz", "*_sa.nii.gz")),
            ("mnms2", ("*_SA_E[DS].nii.gz",)),
            ("mscmr", ("subject*_DE.nii.gz",)),
        )
        if any(next(find_paths(root, p), None) is not None for p in patterns)
    ]
    if len(found) > 1:
        raise CardiosegError(
            root,
            f"holds several datasets ({', '.join(found)}); point at one dataset's folder, "
            "or give --layout",
        )
    return found[0] if found else "folder"


def discover(root: str | Path, layout: str = "auto") -> list[CaseRecord]:
    """Read a dataset folder with the reader for ``layout`` (``auto`` detects it)."""
    layout = detect_layout(root) if layout == "auto" else layout
    if layout not in READERS:
        raise CardiosegError(
            root, f"unknown dataset layout '{layout}'; choose from {sorted(READERS)}"
        )
    records = READERS[layout](root)
    if not records:
        raise CardiosegError(root, f"no {layout} cases found")
    return records


def load_case(
    record: CaseRecord, with_label: bool = True
) -> tuple[np.ndarray, np.ndarray | None, ImageProperties]:
    """Read one record: 3D image, canonical label (or ``None``) and geometry."""
    image, props = read_image(record.image)
    label = None
    if record.frame >= 0:
        if image.ndim != 4:
            raise CardiosegError(record.image, "record names a frame but the image is 3D")
        image = image[..., record.frame]
        props = ImageProperties(props.affine, props.spacing, image.shape, props.path)
    if image.ndim != 3:
        raise CardiosegError(record.image, f"expected a 3D volume, got shape {image.shape}")
    if with_label and record.label:
        if record.frame >= 0:
            if not affines_match(read_geometry(record.label).affine, props.affine):
                raise CardiosegError(record.label, "label affine does not match the image affine")
            full = read_label(record.label, record.label_map)
            if full.ndim == 4:
                full = full[..., record.frame]
            if full.shape != image.shape:
                raise CardiosegError(record.label, "label shape does not match image shape")
            label = full
        else:
            label = read_label(record.label, record.label_map, reference=props)
    return image, label, props


def filter_records(
    records: list[CaseRecord],
    include: dict[str, list] | None = None,
    exclude: dict[str, list] | None = None,
) -> list[CaseRecord]:
    """Keep records whose attributes match ``include`` and do not match ``exclude``.

    Args:
        records: Cases.
        include: Attribute → allowed values (all attributes must match), e.g. ``{"vendor":
            ["GE"]}``. Values are compared as strings.
        exclude: Attribute → values to drop.

    Example:
        >>> r = [CaseRecord("d", "s1", "ED", "a"), CaseRecord("d", "s2", "ED", "b")]
        >>> [x.subject for x in filter_records(r, exclude={"subject": ["s1"]})]
        ['s2']
    """

    def match(r: CaseRecord, spec: dict[str, list]) -> list[bool]:
        return [str(getattr(r, k, "")) in {str(v) for v in vals} for k, vals in spec.items()]

    out = records
    if include:
        out = [r for r in out if all(match(r, include))]
    if exclude:
        out = [r for r in out if not any(match(r, exclude))]
    return out


def ed_es_pairs(
    records: list[CaseRecord], labelled: bool = True
) -> dict[tuple[str, str], dict[str, CaseRecord]]:
    """The ED and ES records of every subject that has both, keyed by ``(dataset, subject)``.

    Args:
        records: Cases of one or more datasets.
        labelled: Use only records with a label file.

    Returns:
        ``{(dataset, subject): {"ED": record, "ES": record}}`` in sorted key order.

    Example:
        >>> recs = [CaseRecord("acdc", s, ph, "x", label="y") for s, ph in
        ...         [("p1", "ED"), ("p1", "ES"), ("p2", "ED")]]
        >>> list(ed_es_pairs(recs))
        [('acdc', 'p1')]
    """
    by_subject: dict[tuple[str, str], dict[str, CaseRecord]] = {}
    for r in records:
        if r.phase in ("ED", "ES") and (r.label or not labelled):
            by_subject.setdefault((r.dataset, r.subject), {})[r.phase] = r
    return {k: v for k, v in sorted(by_subject.items()) if set(v) == {"ED", "ES"}}


def record_domain(record: CaseRecord, key: str = "dataset") -> str:
    """The domain of a case: ``extra["domain"]`` when set, else its ``key`` attribute(s).

    ``key`` may join several attributes with ``+`` (``dataset+vendor``); blank attributes fall
    back to the dataset name.

    Example:
        >>> record_domain(CaseRecord("mnms", "A", "ED", "x", vendor="GE"), "dataset+vendor")
        'mnms/GE'
    """
    if record.extra.get("domain"):
        return str(record.extra["domain"])
    parts = [str(getattr(record, k, "") or "") for k in key.split("+")]
    parts = [p for p in parts if p]
    return "/".join(parts) if parts else record.dataset
