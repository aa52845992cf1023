"""Safe extraction of zipped studies (zip-slip, size, encryption and member-count checks)."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import stat
import tempfile
import time
import zipfile
import zlib
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from pathlib import Path, PurePosixPath

from cardioseg.errors import CardiosegError

log = logging.getLogger("cardioseg.io.dicom")

#: Largest number of members a zipped study may have.
MAX_ZIP_MEMBERS = 200_000

_EXTRACT_DIR: ContextVar[Path | None] = ContextVar("cardioseg_extract_dir", default=None)


@contextlib.contextmanager
def extraction_folder(folder: str | Path) -> Iterator[Path]:
    """Extract zipped studies into ``folder`` (not the system's temporary folder) within this
    block, in this thread: the web app keeps patients' images inside its data folder, whose
    temporary files it removes at start-up, also after a crash.

    Example:
        >>> import tempfile
        >>> with extraction_folder(tempfile.gettempdir()) as folder:
        ...     folder.is_dir()
        True
    """
    token = _EXTRACT_DIR.set(Path(folder))
    try:
        yield Path(folder)
    finally:
        _EXTRACT_DIR.reset(token)


# --------------------------------------------------------------------------------------------
# zip input


def safe_member(name: str) -> PurePosixPath | None:
    """Normalised relative path of a zip member, ``None`` for directories.

    Raises:
        ValueError: Absolute paths, drive letters, ``..`` components or NUL bytes.
    """
    n = name.replace("\\", "/")
    if "\x00" in n or n.startswith("/") or re.match(r"^[A-Za-z]:", n):
        raise ValueError(name)
    parts = [p for p in n.split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise ValueError(name)
    return PurePosixPath(*parts) if parts else None


_PREFIX = "cardioseg-zip-"
#: Extraction folders younger than this (seconds) are never taken for orphans.
ORPHAN_AGE_S = 600.0


def remove_orphans(folder: Path) -> int:
    """Delete extraction folders left in ``folder`` by processes that were killed (a study's
    images must not stay in the temporary folder). A folder carries its process id in its
    name (``cardioseg-zip-<pid>-...``); those of running processes, of other users and those
    younger than :data:`ORPHAN_AGE_S` (a process of another PID namespace, e.g. a container
    sharing the folder, looks gone from here) are left alone. Returns the number removed.
    """
    if os.name != "posix":  # os.kill(pid, 0) probes a process only there
        return 0
    removed = 0
    try:
        entries = list(folder.glob(f"{_PREFIX}*"))
    except OSError:
        return 0
    for entry in entries:
        match = re.match(rf"{_PREFIX}(\d+)-", entry.name)
        if not match or not entry.is_dir() or entry.is_symlink():
            continue
        try:
            info = entry.stat()
            if info.st_uid != os.getuid() or time.time() - info.st_mtime < ORPHAN_AGE_S:
                continue
            os.kill(int(match.group(1)), 0)
        except ProcessLookupError:  # its process is gone
            shutil.rmtree(entry, ignore_errors=True)
            removed += not entry.exists()
        except (OSError, OverflowError, ValueError):  # alive (another user's) or unreadable
            continue
    if removed:
        log.info("removed %d extraction folder(s) of killed runs", removed)
    return removed


@contextlib.contextmanager
def extracted_zip(
    path: Path, max_bytes: int = 2_000_000_000
) -> Iterator[tuple[Path, Callable[[str], str]]]:
    """Extract a zip safely into a temporary folder; yield it and a path-to-display mapper."""
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError):
        raise CardiosegError(path, "not a valid zip archive (corrupt or truncated)") from None
    where = _EXTRACT_DIR.get()
    remove_orphans(Path(where or tempfile.gettempdir()))
    prefix = f"{_PREFIX}{os.getpid()}-"
    with zf, tempfile.TemporaryDirectory(prefix=prefix, dir=where) as tmp:
        dest = Path(tmp).resolve()
        try:
            infos = zf.infolist()
        except Exception:
            raise CardiosegError(path, "corrupt zip archive") from None
        if len(infos) > MAX_ZIP_MEMBERS:
            raise CardiosegError(path, f"zip too large ({len(infos)} members)")
        members: list[tuple[zipfile.ZipInfo, PurePosixPath]] = []
        for info in infos:
            if info.flag_bits & 0x1:
                raise CardiosegError(
                    path, "encrypted zip (password-protected archives are not supported)"
                )
            try:
                rel = safe_member(info.filename)
            except ValueError:
                raise CardiosegError(
                    path, "unsafe path in zip (member outside the archive folder)"
                ) from None
            if rel is None or info.is_dir():
                continue
            if stat.S_ISLNK(info.external_attr >> 16):
                continue  # symbolic links are never followed nor created
            members.append((info, rel))
        total = sum(i.file_size for i, _ in members)
        if total > max_bytes:
            raise CardiosegError(
                path, f"zip too large ({total} bytes uncompressed, limit {max_bytes})"
            )
        display: dict[str, str] = {}
        written = 0
        try:
            for info, rel in members:
                target = dest.joinpath(*rel.parts)
                if not target.resolve().is_relative_to(dest):
                    raise CardiosegError(path, "unsafe path in zip")
                if target.exists():
                    continue  # duplicate member name: keep the first
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(target, "xb") as dst:
                    while chunk := src.read(1 << 20):
                        written += len(chunk)
                        if written > max_bytes:
                            raise CardiosegError(
                                path, f"zip too large (more than {max_bytes} bytes uncompressed)"
                            )
                        dst.write(chunk)
                display[str(target)] = f"{path}/{rel}"
        except CardiosegError:
            raise
        except NotImplementedError:
            raise CardiosegError(path, "unsupported zip compression method") from None
        except RuntimeError:  # zipfile raises RuntimeError for encrypted members
            raise CardiosegError(path, "encrypted zip") from None
        except (zipfile.BadZipFile, zlib.error, EOFError, ValueError) as exc:
            raise CardiosegError(path, f"corrupt zip archive ({type(exc).__name__})") from None
        except OSError as exc:
            raise CardiosegError(path, f"cannot extract zip ({exc.strerror or exc})") from None

        def to_display(p: str) -> str:
            return display.get(p, p)

        yield dest, to_display
