"""Embedded SQLite store of studies, jobs and results (the jobs table is the work queue).

Every change is one transaction (``BEGIN IMMEDIATE`` ... ``COMMIT``), the journal is a
write-ahead log with ``synchronous=FULL``: a server killed at any moment restarts with every
committed upload and result, and :meth:`Database.recover` puts interrupted jobs back in the
queue. A connection is opened per operation, so the store is safe to use from any thread.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 3

SCHEMA = """
CREATE TABLE IF NOT EXISTS studies (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('nifti4d', 'pair', 'dicom')),
    files TEXT NOT NULL,
    n_frames INTEGER,
    size_bytes INTEGER NOT NULL,
    height_cm REAL,
    weight_kg REAL,
    sex TEXT CHECK (sex IN ('M', 'F')),
    created_utc TEXT NOT NULL,
    exclude TEXT NOT NULL DEFAULT '[]'
);
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    study_id TEXT NOT NULL REFERENCES studies(id) ON DELETE CASCADE,
    state TEXT NOT NULL CHECK (state IN ('queued', 'running', 'done', 'failed')),
    progress REAL NOT NULL DEFAULT 0,
    message TEXT NOT NULL DEFAULT '',
    error TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    created_utc TEXT NOT NULL,
    started_utc TEXT,
    finished_utc TEXT,
    seq INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state, seq);
CREATE INDEX IF NOT EXISTS jobs_study ON jobs (study_id);
CREATE TABLE IF NOT EXISTS results (
    study_id TEXT PRIMARY KEY REFERENCES studies(id) ON DELETE CASCADE,
    job_id TEXT NOT NULL,
    report TEXT NOT NULL,
    created_utc TEXT NOT NULL
);
"""

JOB_STATES = ("queued", "running", "done", "failed")


def utcnow() -> str:
    """Current UTC time as ``YYYY-MM-DDTHH:MM:SSZ``."""
    return _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _job(row: sqlite3.Row | None) -> dict[str, Any] | None:
    if row is None:
        return None
    keys = (
        "id",
        "study_id",
        "state",
        "progress",
        "message",
        "error",
        "attempts",
        "created_utc",
        "started_utc",
        "finished_utc",
    )
    return {k: row[k] for k in keys}


def _study(row: sqlite3.Row | None) -> dict[str, Any] | None:
    if row is None:
        return None
    keys = (
        "id",
        "name",
        "kind",
        "n_frames",
        "size_bytes",
        "height_cm",
        "weight_kg",
        "sex",
        "created_utc",
    )
    out = {k: row[k] for k in keys}
    out["files"] = json.loads(row["files"])
    out["exclude"] = json.loads(row["exclude"])
    return out


def _queue_job(con: sqlite3.Connection, job_id: str, study_id: str, now: str) -> None:
    """Insert a queued job at the end of the queue (inside the caller's transaction)."""
    seq = con.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM jobs").fetchone()[0]
    con.execute(
        "INSERT INTO jobs (id, study_id, state, message, created_utc, seq)"
        " VALUES (?, ?, 'queued', 'waiting for the worker', ?, ?)",
        (job_id, study_id, now, seq),
    )


class Database:
    """The app's SQLite database.

    Args:
        path: Database file (created with its schema if missing).
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not self.path.exists():  # labels, results, errors: readable by the owner only
            os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600))
        with self._connect() as con:
            con.execute("PRAGMA journal_mode=WAL")
            con.executescript(SCHEMA)
            columns = {r["name"] for r in con.execute("PRAGMA table_info(studies)")}
            if "exclude" not in columns:  # a version-1 database: studies had no exclusions
                con.execute("ALTER TABLE studies ADD COLUMN exclude TEXT NOT NULL DEFAULT '[]'")
            if "sex" not in columns:  # version 1 or 2: no sex for the normal ranges
                con.execute("ALTER TABLE studies ADD COLUMN sex TEXT CHECK (sex IN ('M', 'F'))")
            con.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        con = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
        try:
            con.row_factory = sqlite3.Row
            con.execute("PRAGMA foreign_keys=ON")
            con.execute("PRAGMA synchronous=FULL")
            con.execute("PRAGMA busy_timeout=30000")
            yield con
        finally:
            con.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction: committed on success, rolled back on any exception."""
        with self._connect() as con:
            con.execute("BEGIN IMMEDIATE")
            try:
                yield con
            except BaseException:
                con.execute("ROLLBACK")
                raise
            con.execute("COMMIT")

    # --- studies ---------------------------------------------------------------------------

    def add_study(self, study: dict[str, Any], job_id: str) -> tuple[dict, dict]:
        """Insert a study and its queued analysis job in one transaction.

        Args:
            study: ``id``, ``name``, ``kind``, ``files`` (role → file name), ``size_bytes`` and
                optional ``n_frames``, ``height_cm``, ``weight_kg``, ``sex`` (``"M"``/``"F"``).
            job_id: Id of the new job.

        Returns:
            ``(study, job)`` as stored.
        """
        now = utcnow()
        with self.transaction() as con:
            con.execute(
                "INSERT INTO studies (id, name, kind, files, n_frames, size_bytes, height_cm,"
                " weight_kg, sex, created_utc) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    study["id"],
                    study["name"],
                    study["kind"],
                    json.dumps(study["files"]),
                    study.get("n_frames"),
                    int(study["size_bytes"]),
                    study.get("height_cm"),
                    study.get("weight_kg"),
                    study.get("sex"),
                    now,
                ),
            )
            _queue_job(con, job_id, study["id"], now)
        return self.get_study(study["id"]), self.get_job(job_id)  # type: ignore[return-value]

    def reanalyze(self, study_id: str, exclude: list[str], job_id: str) -> tuple[dict, dict] | str:
        """Queue a new analysis of a stored study with the reader's slice exclusions.

        Args:
            study_id: The study.
            exclude: Exclusions in text form (``"ES:8"``), already validated; ``[]`` clears them.
            job_id: Id of the new job.

        Returns:
            ``(study, job)`` as stored, or ``"missing"`` / ``"busy"`` when the study does not
            exist or its analysis is still queued or running.
        """
        with self.transaction() as con:
            if con.execute("SELECT 1 FROM studies WHERE id = ?", (study_id,)).fetchone() is None:
                return "missing"
            busy = con.execute(
                "SELECT 1 FROM jobs WHERE study_id = ? AND state IN ('queued', 'running')",
                (study_id,),
            ).fetchone()
            if busy is not None:
                return "busy"
            con.execute(
                "UPDATE studies SET exclude = ? WHERE id = ?", (json.dumps(exclude), study_id)
            )
            _queue_job(con, job_id, study_id, utcnow())
        return self.get_study(study_id), self.get_job(job_id)  # type: ignore[return-value]

    def get_study(self, study_id: str) -> dict[str, Any] | None:
        """The study row, or ``None``."""
        with self._connect() as con:
            row = con.execute("SELECT * FROM studies WHERE id = ?", (study_id,)).fetchone()
        return _study(row)

    def list_studies(self) -> list[dict[str, Any]]:
        """All studies, newest first, each with its job and a few result values.

        The values (``summary``) come from the latest stored result; ``summary["previous"]``
        is true when that result is an earlier analysis than the study's latest job (a
        re-analysis queued, running or failed).
        """
        with self._connect() as con:
            rows = con.execute("SELECT * FROM studies ORDER BY created_utc DESC, rowid DESC")
            studies = [_study(r) for r in rows.fetchall()]
            jobs = {r["study_id"]: _job(r) for r in con.execute("SELECT * FROM jobs ORDER BY seq")}
            fields = ", ".join(f"json_extract(report, '$.{k}') AS {k}" for k in SUMMARY_KEYS)
            query = (
                f"SELECT study_id, job_id, {fields},"
                " json_extract(report, '$.qc.status') AS qc_status FROM results"
            )
            summaries = {
                r["study_id"]: (r["job_id"], {k: r[k] for k in (*SUMMARY_KEYS, "qc_status")})
                for r in con.execute(query)
            }
        out = []
        for s in studies:
            assert s is not None
            job = s["job"] = jobs.get(s["id"])
            result_job, summary = summaries.get(s["id"], (None, None))
            if summary is not None:
                # while a re-analysis waits, runs or after it failed, the stored values are
                # those of the earlier analysis: said so, not shown as the new result
                summary["previous"] = job is not None and job["id"] != result_job
            s["summary"] = summary
            out.append(s)
        return out

    def delete_study(self, study_id: str) -> bool:
        """Delete a study with its jobs and result; ``False`` if it did not exist."""
        with self.transaction() as con:
            cur = con.execute("DELETE FROM studies WHERE id = ?", (study_id,))
        return cur.rowcount > 0

    def study_ids(self) -> set[str]:
        """Ids of every stored study."""
        with self._connect() as con:
            return {r[0] for r in con.execute("SELECT id FROM studies")}

    # --- jobs ------------------------------------------------------------------------------

    def get_job(self, job_id: str) -> dict[str, Any] | None:
        """The job row, or ``None``."""
        with self._connect() as con:
            return _job(con.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone())

    def job_for_study(self, study_id: str) -> dict[str, Any] | None:
        """The latest job of a study, or ``None``."""
        with self._connect() as con:
            row = con.execute(
                "SELECT * FROM jobs WHERE study_id = ? ORDER BY seq DESC LIMIT 1", (study_id,)
            ).fetchone()
        return _job(row)

    def count_waiting(self) -> int:
        """Number of queued jobs."""
        with self._connect() as con:
            return int(
                con.execute("SELECT COUNT(*) FROM jobs WHERE state = 'queued'").fetchone()[0]
            )

    def claim_next(self) -> dict[str, Any] | None:
        """Atomically move the oldest queued job to ``running`` (counting an attempt)."""
        with self.transaction() as con:
            row = con.execute(
                "SELECT id FROM jobs WHERE state = 'queued' ORDER BY seq LIMIT 1"
            ).fetchone()
            if row is None:
                return None
            con.execute(
                "UPDATE jobs SET state = 'running', attempts = attempts + 1, progress = 0,"
                " message = 'starting', error = NULL, started_utc = ? WHERE id = ?",
                (utcnow(), row["id"]),
            )
            job = con.execute("SELECT * FROM jobs WHERE id = ?", (row["id"],)).fetchone()
        return _job(job)

    def set_progress(self, job_id: str, progress: float, message: str) -> bool:
        """Record the progress of a running job; ``False`` if it is gone (study deleted)."""
        with self.transaction() as con:
            cur = con.execute(
                "UPDATE jobs SET progress = ?, message = ? WHERE id = ? AND state = 'running'",
                (float(min(max(progress, 0.0), 1.0)), message[:500], job_id),
            )
        return cur.rowcount > 0

    def finish(self, job_id: str, study_id: str, report: dict[str, Any]) -> bool:
        """Store the result and mark the job done (one transaction); ``False`` if deleted.

        A zipped study's kind (``dicom`` until analysed) and frame count are set from what the
        analysis found in it (``report["meta"]``).
        """
        now = utcnow()
        with self.transaction() as con:
            if con.execute("SELECT 1 FROM studies WHERE id = ?", (study_id,)).fetchone() is None:
                return False
            con.execute(
                "INSERT OR REPLACE INTO results (study_id, job_id, report, created_utc)"
                " VALUES (?, ?, ?, ?)",
                (study_id, job_id, json.dumps(report, allow_nan=False), now),
            )
            meta = report.get("meta") or {}
            if meta.get("source_kind") in ("dicom", "nifti4d", "pair") and meta.get("n_frames"):
                # a zip holds DICOM or a NIfTI cine: only the analysis knows which
                con.execute(
                    "UPDATE studies SET kind = ?, n_frames = ? WHERE id = ? AND kind != 'pair'",
                    (meta["source_kind"], int(meta["n_frames"]), study_id),
                )
            con.execute(
                "UPDATE jobs SET state = 'done', progress = 1, message = 'done', error = NULL,"
                " finished_utc = ? WHERE id = ?",
                (now, job_id),
            )
        return True

    def fail(self, job_id: str, error: str) -> None:
        """Mark a job failed with a one-line reason."""
        line = (error.strip().splitlines() or ["unknown error"])[0][:1000]
        with self.transaction() as con:
            con.execute(
                "UPDATE jobs SET state = 'failed', message = 'failed', error = ?,"
                " finished_utc = ? WHERE id = ?",
                (line, utcnow(), job_id),
            )

    def requeue(self, job_id: str, message: str, refund_attempt: bool = False) -> None:
        """Put a running job back in the queue (graceful shutdown: the attempt is refunded)."""
        with self.transaction() as con:
            con.execute(
                "UPDATE jobs SET state = 'queued', progress = 0, message = ?,"
                " attempts = MAX(attempts - ?, 0) WHERE id = ? AND state = 'running'",
                (message, 1 if refund_attempt else 0, job_id),
            )

    def recover(self, max_attempts: int) -> tuple[int, int]:
        """At start-up: re-queue jobs left ``running`` by a killed server.

        Jobs that were already interrupted ``max_attempts`` times are marked failed instead.

        Returns:
            ``(requeued, failed)`` counts.
        """
        with self.transaction() as con:
            failed = con.execute(
                "UPDATE jobs SET state = 'failed', message = 'failed', error = ?,"
                " finished_utc = ? WHERE state = 'running' AND attempts >= ?",
                (
                    f"analysis interrupted {max_attempts} times (server stopped while it ran); "
                    "giving up",
                    utcnow(),
                    max_attempts,
                ),
            ).rowcount
            requeued = con.execute(
                "UPDATE jobs SET state = 'queued', progress = 0,"
                " message = 're-queued after a server restart' WHERE state = 'running'"
            ).rowcount
        return requeued, failed

    # --- results ---------------------------------------------------------------------------

    def get_result(self, study_id: str) -> dict[str, Any] | None:
        """The stored ``report.json`` content of a study, or ``None``."""
        with self._connect() as con:
            row = con.execute(
                "SELECT report FROM results WHERE study_id = ?", (study_id,)
            ).fetchone()
        return None if row is None else json.loads(row["report"])


#: Top-level report values shown in the study list (with the QC status).
SUMMARY_KEYS = ("lv_ef_pct", "rv_ef_pct", "lv_edv_ml", "lv_mass_g")


def summarize(report: dict[str, Any]) -> dict[str, Any]:
    """The few values shown in the study list."""
    qc = report.get("qc") or {}
    return {**{k: report.get(k) for k in SUMMARY_KEYS}, "qc_status": qc.get("status")}
