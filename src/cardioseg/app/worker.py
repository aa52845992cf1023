"""The background analysis worker: one thread, one job at a time, fed from the jobs table.

Memory stays bounded: the queue lives in the database (never in memory), the segmenter is loaded
once when the worker starts, and a single study is in memory at any time. Progress is reported
per segmented frame through a thin proxy around the segmenter, which is also where a deleted
study or a server shutdown interrupts a running analysis.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import numpy as np

from cardioseg.app.config import AppConfig
from cardioseg.app.db import Database
from cardioseg.app.store import Store
from cardioseg.errors import CardiosegError

log = logging.getLogger("cardioseg.app")

#: Assumed frame count of a DICOM cine before it is loaded (for the progress bar only).
TYPICAL_FRAMES = 25


def release_memory() -> bool:
    """Give freed memory back to the operating system after a job.

    A job allocates and frees hundreds of MB of arrays; glibc keeps freed blocks in its heaps,
    so a long-running server's resident memory creeps up from job to job. ``malloc_trim(0)``
    returns the free tails to the system. Returns whether it was available (glibc only).
    """
    import ctypes
    import ctypes.util
    import gc

    gc.collect()
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        trim = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):  # not glibc (musl, macOS)
        return False
    trim(0)
    return True


class Cancelled(Exception):
    """The study was deleted while its analysis ran."""


class Stopping(Exception):
    """The server is shutting down; the job goes back to the queue."""


class _Progress:
    """Turns segmenter calls into progress records in the database."""

    def __init__(self, db: Database, job_id: str, n_frames: int | None, stop: threading.Event):
        self.db, self.job_id, self.n_frames, self.stop = db, job_id, n_frames, stop
        self.frames_done = 0
        self.qc_done = 0

    def report(self, progress: float, message: str) -> None:
        if self.stop.is_set():
            raise Stopping()
        if not self.db.set_progress(self.job_id, progress, message):
            raise Cancelled()

    def before_call(self, with_probabilities: bool) -> None:
        if not with_probabilities:
            self.frames_done += 1
            n = self.n_frames
            if n:
                self.report(
                    0.05 + 0.75 * (self.frames_done - 1) / n,
                    f"segmenting frame {self.frames_done} of {n}",
                )
            else:
                est = max(TYPICAL_FRAMES, self.frames_done + 1)
                self.report(
                    0.05 + 0.75 * (self.frames_done - 1) / est,
                    f"segmenting frame {self.frames_done}",
                )
        else:
            self.qc_done += 1
            self.report(
                0.80 + 0.04 * self.qc_done,
                f"quality control ({'ED' if self.qc_done == 1 else 'ES'} uncertainty)",
            )
            if self.qc_done == 2:
                self.n_frames = self.frames_done


class ProgressSegmenter:
    """Delegates to a segmenter and reports each ``predict_volume`` call.

    Attribute reads and writes (``analyze_study`` toggles ``tta``) go to the wrapped segmenter.
    """

    def __init__(self, inner: Any, progress: _Progress):
        object.__setattr__(self, "_inner", inner)
        object.__setattr__(self, "_progress", progress)

    def predict_volume(
        self,
        volume: np.ndarray,
        spacing: tuple[float, float, float],
        return_probabilities: bool = False,
        affine: np.ndarray | None = None,
        **options: Any,
    ) -> Any:
        """Report progress, then segment like the wrapped segmenter."""
        self._progress.before_call(return_probabilities)
        return self._inner.predict_volume(
            volume, spacing, return_probabilities=return_probabilities, affine=affine, **options
        )

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._inner, name, value)


def study_inputs(store: Store, study: dict[str, Any]) -> dict[str, Any]:
    """Keyword arguments of :func:`~cardioseg.clinical.analysis.load_study` for a study."""
    folder = store.input_dir(study["id"])
    files = study["files"]
    if "ed" in files and "es" in files:  # uploaded as two files (a zip's kind may be "pair" too)
        return {"ed": folder / files["ed"], "es": folder / files["es"]}
    return {"study": folder / files["study"]}


class Worker:
    """Runs queued analyses in a background thread.

    Args:
        config: The app settings (segmenter, PDF, poll interval).
        db: The database (the jobs table is the queue).
        store: The data folder.
    """

    def __init__(self, config: AppConfig, db: Database, store: Store):
        self.config, self.db, self.store = config, db, store
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self.segmenter: Any = None
        self.model_error: str | None = None
        self.ready = threading.Event()
        self.current_job: str | None = None

    def start(self) -> None:
        """Start the worker thread (loads the model first)."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="cardioseg-worker", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        """Tell the worker that a job was queued."""
        self._wake.set()

    def stop(self, timeout: float = 60.0) -> None:
        """Stop after the current step; a running job is put back in the queue."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    @property
    def alive(self) -> bool:
        """Whether the worker thread runs."""
        return self._thread is not None and self._thread.is_alive()

    def _load_model(self) -> None:
        t0 = time.perf_counter()
        try:
            self.segmenter = self.config.make_segmenter()
            log.info("model loaded in %.1f s", time.perf_counter() - t0)
        except CardiosegError as exc:
            self.model_error = f"model not available: {exc}"
        except Exception as exc:  # the server stays up and reports the problem per job
            self.model_error = f"model not available ({type(exc).__name__})"
        if self.model_error:
            log.error("%s", self.model_error)
        self.ready.set()

    def _run(self) -> None:
        self._load_model()
        while not self._stop.is_set():
            try:
                job = self.db.claim_next()
            except Exception as exc:  # database locked for too long: try again later
                log.error("cannot read the job queue (%s)", type(exc).__name__)
                job = None
            if job is None:
                self._wake.wait(self.config.poll_seconds)
                self._wake.clear()
                continue
            self.current_job = job["id"]
            try:
                self.process(job)
            finally:
                self.current_job = None
                release_memory()

    def process(self, job: dict[str, Any]) -> None:
        """Run one claimed job to its end state (done, failed, or back to the queue).

        A zipped study is extracted inside the data folder (``tmp/``), never into the
        system's temporary folder: what a killed server leaves there is removed at start-up.
        """
        from cardioseg.io.dicom.archive import extraction_folder

        with extraction_folder(self.store.tmp):
            self._process(job)

    def _process(self, job: dict[str, Any]) -> None:
        from cardioseg.clinical.analysis import analyze_study, load_study

        study_id = job["study_id"]
        study = self.db.get_study(study_id)
        if study is None:
            self.store.remove(study_id)
            return
        if self.segmenter is None:
            self.db.fail(job["id"], self.model_error or "model not available")
            return
        t0 = time.perf_counter()
        progress = _Progress(self.db, job["id"], study.get("n_frames"), self._stop)
        log.info(
            "job %s: analysis of study %s started (attempt %d)",
            job["id"],
            study_id,
            job["attempts"],
        )
        try:
            progress.report(0.02, "loading the study")
            inputs = study_inputs(self.store, study)
            loaded = load_study(**inputs)  # once: for the analysis and the viewer
            report = analyze_study(
                self.store.result_dir(study_id),
                segmenter=ProgressSegmenter(self.segmenter, progress),
                height_cm=study.get("height_cm"),
                weight_kg=study.get("weight_kg"),
                sex=study.get("sex"),
                write_pdf=self.config.write_pdf,
                seg_phases=self.config.seg_phases,
                exclude=study.get("exclude") or (),
                loaded=loaded,
                label=study.get("name"),
                **inputs,
            )
            progress.report(0.92, "preparing the slice viewer")
            self._viewer(study, loaded, report)
            if not self.db.finish(job["id"], study_id, report):
                raise Cancelled()
            log.info("job %s: done in %.1f s", job["id"], time.perf_counter() - t0)
        except Cancelled:
            log.info("job %s: study deleted during the analysis", job["id"])
        except Stopping:
            self.db.requeue(job["id"], "re-queued: the server was stopped", refund_attempt=True)
            log.info("job %s: re-queued (server stopping)", job["id"])
        except CardiosegError as exc:
            self.db.fail(job["id"], exc.problem)
            log.info("job %s: failed (input problem)", job["id"])
        except MemoryError:
            self.db.fail(job["id"], "not enough memory to analyse this study")
            log.error("job %s: out of memory", job["id"])
        except Exception as exc:
            self.db.fail(job["id"], f"internal error during the analysis ({type(exc).__name__})")
            log.error("job %s: internal error (%s)", job["id"], type(exc).__name__)
            log.debug("traceback", exc_info=True)
        if self.db.get_study(study_id) is None:  # deleted meanwhile: drop what was written
            self.store.remove(study_id)

    def _viewer(self, study: dict[str, Any], st: Any, report: dict) -> None:
        """Write the display volumes (image and labels of every frame) for the slice viewer,
        from the loaded study (:class:`~cardioseg.clinical.analysis.Study`) and its masks."""
        import nibabel as nib

        from cardioseg.app.viewer import build_viewer_cache

        def mask(name: str) -> np.ndarray:  # may be all background: no read_image checks
            return np.asarray(nib.load(str(result / name)).dataobj, dtype=np.uint8)

        result = self.store.result_dir(study["id"])
        if st.kind == "pair":
            labels = np.stack([mask("mask_ED.nii.gz"), mask("mask_ES.nii.gz")], axis=-1)
        else:
            labels = mask("masks_cine.nii.gz")
        build_viewer_cache(
            self.store.viewer_dir(study["id"]),
            st.image,
            labels.reshape(st.image.shape),
            st.properties.spacing,
            int(report["ed_frame"]),
            int(report["es_frame"]),
        )
