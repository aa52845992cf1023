"""Files of the web app on disk, next to the database::

    DATA_DIR/
        cardioseg.sqlite3          studies, jobs, results
        tmp/                       uploads being received (removed at start-up)
        studies/<id>/input/        the uploaded files, named by content type
        studies/<id>/result/       what analyze_study wrote (report.json, masks, reports)
        studies/<id>/viewer/       display volumes and cached slice PNGs

Study ids are random 32-character hex strings; every path is built from a validated id and
fixed names, never from a name given by the user.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
import uuid
from pathlib import Path

log = logging.getLogger("cardioseg.app")

ID_PATTERN = re.compile(r"^[0-9a-f]{32}$")
DB_NAME = "cardioseg.sqlite3"


def new_id() -> str:
    """A new random id (32 hex characters)."""
    return uuid.uuid4().hex


def valid_id(value: str) -> bool:
    """Whether ``value`` looks like an id made by :func:`new_id`."""
    return bool(ID_PATTERN.match(value or ""))


def fsync_dir(path: Path) -> None:
    """Flush a folder's entries to disk (best effort; not available on every platform)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class Store:
    """Paths and folder operations of one data folder.

    Args:
        root: The data folder (created if missing).
    """

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.studies = self.root / "studies"
        self.tmp = self.root / "tmp"
        for p in (self.root, self.studies, self.tmp):  # new folders: the owner's only
            p.mkdir(mode=0o700, parents=True, exist_ok=True)

    @property
    def db_path(self) -> Path:
        """The SQLite database file."""
        return self.root / DB_NAME

    def study_dir(self, study_id: str) -> Path:
        """Folder of one study (the id is validated)."""
        if not valid_id(study_id):
            raise ValueError("invalid study id")
        return self.studies / study_id

    def input_dir(self, study_id: str) -> Path:
        """Uploaded files of a study."""
        return self.study_dir(study_id) / "input"

    def result_dir(self, study_id: str) -> Path:
        """Analysis output of a study."""
        return self.study_dir(study_id) / "result"

    def viewer_dir(self, study_id: str) -> Path:
        """Display volumes and PNG cache of a study."""
        return self.study_dir(study_id) / "viewer"

    def staging(self) -> Path:
        """A new private folder under ``tmp/`` to receive an upload."""
        return Path(tempfile.mkdtemp(prefix="upload-", dir=self.tmp))

    def commit_staged(self, staged: Path, study_id: str) -> Path:
        """Move a fully received upload (``staged/input/...``) to its study folder atomically."""
        target = self.study_dir(study_id)
        os.rename(staged, target)
        fsync_dir(self.studies)
        return target

    def remove(self, study_id: str) -> None:
        """Delete a study's folder (missing is fine)."""
        shutil.rmtree(self.study_dir(study_id), ignore_errors=True)

    def cleanup(self, known_ids: set[str]) -> int:
        """At start-up: remove partial uploads, orphan study folders and temporary folders.

        Args:
            known_ids: Ids of the studies in the database; other study folders are orphans of
                an upload interrupted between moving its files and committing its rows.

        Returns:
            Number of entries removed.
        """
        removed = 0
        for p in self.tmp.iterdir():
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
            removed += 1
        for p in self.studies.iterdir():
            if not p.is_dir() or p.name not in known_ids:
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
                removed += 1
                continue
            for q in p.iterdir():  # temporary folders of interrupted analyses / viewer caches
                if q.name.startswith("."):
                    shutil.rmtree(q, ignore_errors=True) if q.is_dir() else q.unlink(
                        missing_ok=True
                    )
                    removed += 1
        if removed:
            log.info("start-up clean-up: removed %d partial or orphan entries", removed)
        return removed
