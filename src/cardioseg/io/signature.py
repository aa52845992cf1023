"""A short signature of a study's input files, to tell whether a result still belongs to them.

A batch that is resumed keeps the finished studies by name; the signature, recorded in each
``report.json`` (``meta.input_signature``), lets it notice a *different* study saved under a
finished study's name. It is read from the files' names, sizes and first and last few kilobytes
(a DICOM file's header with its unique identifiers; a zip's or gzip's checksums), not from their
times, so a copy of the same files (``cp`` without ``-p``, another disk) keeps its signature.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

#: Bytes read from the start and from the end of each file.
EDGE_BYTES = 4096


def _files(path: Path) -> list[tuple[str, Path]]:
    if not path.is_dir():
        return [("", path)]
    out = []
    for folder, dirs, names in os.walk(path):  # links to folders not followed, as the readers
        dirs.sort()
        for name in sorted(names):
            full = Path(folder) / name
            out.append((full.relative_to(path).as_posix(), full))
    return out


def _file_digest(h: Any, path: Path) -> None:
    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            h.update(f"{size}\0".encode())
            h.update(fh.read(EDGE_BYTES))
            if size > 2 * EDGE_BYTES:
                fh.seek(size - EDGE_BYTES)
            h.update(fh.read(EDGE_BYTES))
    except OSError as exc:  # unreadable now: that is part of what the input is
        h.update(f"unreadable {exc.errno}\0".encode())


def input_signature(paths: Iterable[str | Path]) -> str:
    """Signature (16 hex digits) of the files at ``paths`` (files or folders, walked whole).

    Equal for the same files wherever they lie and whenever they were copied; different when
    a file is added, removed, renamed or rewritten with other content (as far as its first and
    last :data:`EDGE_BYTES` bytes or its size tell: enough for DICOM, NIfTI and zip files,
    whose headers or checksums differ between studies).

    Example:
        >>> import tempfile
        >>> d = Path(tempfile.mkdtemp())
        >>> _ = (d / "a.dcm").write_bytes(b"one")
        >>> s = input_signature([d])
        >>> len(s), s == input_signature([d])
        (16, True)
        >>> _ = (d / "a.dcm").write_bytes(b"two")
        >>> s == input_signature([d])
        False
    """
    h = hashlib.blake2b(digest_size=8)
    for i, p in enumerate(paths):
        h.update(f"input {i}\0".encode())
        for rel, full in _files(Path(p)):
            h.update(os.fsencode(rel) + b"\0")
            _file_digest(h, full)
    return h.hexdigest()
