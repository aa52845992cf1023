"""The FastAPI application: a thin HTTP layer over the database, the files and the worker.

No model or metric logic lives here: analyses run in :mod:`cardioseg.app.worker` through
:func:`cardioseg.clinical.analysis.analyze_study`; this module receives uploads, answers
queries and serves files. See ``docs/webapp.md`` for the API and the security model.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import secrets
import shutil
import sys
import threading
import time
import zipfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field

from cardioseg import __version__
from cardioseg.app.config import AppConfig, is_loopback
from cardioseg.app.db import Database, summarize
from cardioseg.app.store import Store, new_id, valid_id
from cardioseg.app.uploads import (
    UploadError,
    check_nifti,
    check_zip,
    display_name,
    sniff,
    study_label,
)
from cardioseg.app.worker import Worker

log = logging.getLogger("cardioseg.app")

STATIC_DIR = Path(__file__).parent / "static"
TOKEN_HEADER = "X-Access-Token"
#: Paths served without the access token (the page shell holds no data).
PUBLIC_PATHS = ("/", "/api/health")
PUBLIC_PREFIXES = ("/static/",)
UI_CSP = (
    "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
#: Cache header of per-study derived files that never change once written (slice PNGs, volumes).
PRIVATE_CACHE = {"Cache-Control": "private, max-age=86400"}
REPORT_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; frame-ancestors 'none'"
REPORT_FILES = {
    "html": ("report.html", "text/html; charset=utf-8"),
    "pdf": ("report.pdf", "application/pdf"),
    "json": ("report.json", "application/json"),
}
MASK_FILES = {"ed": "mask_ED.nii.gz", "es": "mask_ES.nii.gz", "cine": "masks_cine.nii.gz"}
IMAGE_FILES = {
    "overlay": "overlay_ed_es.png",
    "curve": "volume_curve.png",
    "segments": "wall_segments.png",
}
#: Identifying DICOM attributes blanked (type 2) by ``?deidentify=true``, wherever they occur
#: (nested sequences too). Every person name (VR PN) is blanked as well.
DEID_BLANK = (
    "PatientID",
    "PatientBirthDate",
    "PatientBirthTime",
    "PatientSex",
    "AccessionNumber",
    "StudyID",
    "StudyDate",
    "StudyTime",
    "SeriesDate",
    "SeriesTime",
    "AcquisitionDate",
    "AcquisitionTime",
    "AcquisitionDateTime",
)
#: Identifying or free-text attributes removed (type 3) by ``?deidentify=true``, wherever they
#: occur; private elements are removed too.
DEID_REMOVE = (
    "OtherPatientIDs",
    "OtherPatientIDsSequence",
    "OtherPatientNames",
    "PatientAddress",
    "PatientTelephoneNumbers",
    "PatientBirthName",
    "PatientMotherBirthName",
    "IssuerOfPatientID",
    "PatientAge",
    "PatientSize",
    "PatientWeight",
    "PatientComments",
    "InstitutionName",
    "InstitutionAddress",
    "InstitutionalDepartmentName",
    "StationName",
    "StudyDescription",
    "RequestAttributesSequence",
    "AdmissionID",
    "IssuerOfAdmissionIDSequence",
)
UPLOAD_FIELDS = {"file", "ed", "es"}
#: How an upload field's file is named in an error where the browser sent no file name.
UPLOAD_ROLES = {"file": "the uploaded file", "ed": "the ED file", "es": "the ES file"}
TEXT_FIELDS = {"name", "height_cm", "weight_kg", "sex"}

UPLOAD_OPENAPI: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "file": {
                            "type": "string",
                            "format": "binary",
                            "description": "A 4D cine NIfTI (.nii/.nii.gz) or a zip of a "
                            "DICOM study folder. Type is checked by content.",
                        },
                        "ed": {
                            "type": "string",
                            "format": "binary",
                            "description": "End-diastolic 3D NIfTI (with 'es').",
                        },
                        "es": {
                            "type": "string",
                            "format": "binary",
                            "description": "End-systolic 3D NIfTI (with 'ed').",
                        },
                        "name": {"type": "string", "description": "Display label (optional)."},
                        "height_cm": {"type": "number", "description": "For BSA indexing."},
                        "weight_kg": {"type": "number", "description": "For BSA indexing."},
                        "sex": {
                            "type": "string",
                            "enum": ["M", "F"],
                            "description": "For sex-specific normal ranges (DICOM: "
                            "PatientSex when not given).",
                        },
                    },
                }
            }
        },
    }
}


class ReanalyzeRequest(BaseModel):
    """Body of ``POST /api/studies/{id}/reanalyze``."""

    exclude: list[str] = Field(
        default_factory=list,
        max_length=64,
        description="Slices to take out of a phase: 'ES:8' (all structures), 'ES:8:LV' (LV and "
        "myocardium) or 'ES:8:RV'; slice = index in the masks and in the report's slice table. "
        "An empty list analyses the study without exclusions.",
    )


def _err(status: int, message: str) -> HTTPException:
    return HTTPException(status_code=status, detail=message)


#: Path segments the access log shows: frame and slice numbers, and route words or file names
#: in lower-case letters (``dicom-seg``, ``overlay_ed_es.png``). The segment after ``studies``
#: or ``jobs`` must be an id (32 hex digits). Anything else (a mistyped URL may hold a
#: patient's name or ID) is masked.
_LOGGED_SEGMENT = re.compile(
    r"\d{1,4}(?:\.png)?|[a-z]{1,24}(?:[_-][a-z]{1,24}){0,4}(?:\.[a-z]{1,8}){0,3}|"
)
_ID_SEGMENT = re.compile(r"[0-9a-f]{32}")


def _safe_path_for_log(path: str) -> str:
    """Request path for the access log, masked (:data:`_LOGGED_SEGMENT`).

    Example:
        >>> _safe_path_for_log("/api/studies/Smith_PID-998877/report/html")
        '/api/studies/*/report/html'
        >>> _safe_path_for_log("/api/studies/jane-doe")
        '/api/studies/*'
    """
    parts = path.split("/")
    shown = []
    for i, part in enumerate(parts):
        after_collection = i > 0 and parts[i - 1] in ("studies", "jobs")
        pattern = _ID_SEGMENT if after_collection else _LOGGED_SEGMENT
        shown.append(part if pattern.fullmatch(part) else "*")
    return "/".join(shown)[:200]


def _host_name(host_header: str) -> str:
    h = host_header.strip().lower()
    if h.startswith("["):
        return h[1:].split("]", 1)[0]
    return h.rsplit(":", 1)[0] if h.count(":") == 1 else h


def _request_token(request: Request) -> str | None:
    token = request.headers.get(TOKEN_HEADER)
    if not token:
        auth = request.headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            token = auth[7:].strip()
    return token or request.query_params.get("token")


def _optional_float(value: Any, name: str, lo: float, hi: float) -> float | None:
    if value is None or str(value).strip() == "":
        return None
    try:
        out = float(str(value).strip())
    except ValueError:
        raise UploadError(400, f"{name} must be a number") from None
    if not lo <= out <= hi:
        hint = " (a height in metres?)" if name == "height_cm" and 0 < out < 3 else ""
        raise UploadError(400, f"{name} must lie between {lo:g} and {hi:g}{hint}")
    return out


def _optional_sex(value: Any) -> str | None:
    from cardioseg.clinical.indices import normalize_sex

    if value is None or str(value).strip() == "":
        return None
    sex = normalize_sex(value)
    if sex is None:
        raise UploadError(400, "sex must be M or F")
    return sex


def create_app(config: AppConfig | None = None, **kwargs: Any) -> FastAPI:
    """Build the web application.

    Args:
        config: Settings; alternatively pass :class:`AppConfig` fields as keyword arguments
            (``create_app(data_dir=..., checkpoint=...)``).

    Returns:
        The FastAPI app. Its lifespan (start-up) re-queues interrupted jobs, cleans partial
        uploads and starts the worker; shutdown stops the worker.
    """
    config = config or AppConfig(**kwargs)
    store = Store(config.data_dir)
    db = Database(store.db_path)
    worker = Worker(config, db, store)
    allowed_hosts = (
        {"127.0.0.1", "localhost", "::1", config.host.strip().strip("[]").lower()}
        if config.loopback
        else None
    )

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        lock = _lock_data_dir(store.root)
        requeued, failed = db.recover(config.max_attempts)
        if requeued or failed:
            log.info(
                "start-up: %d interrupted job(s) re-queued, %d marked failed", requeued, failed
            )
        store.cleanup(db.study_ids())
        if config.start_worker:
            worker.start()
        try:
            yield
        finally:
            await run_in_threadpool(worker.stop)
            lock.close()

    app = FastAPI(
        title="cardioseg",
        version=__version__,
        description="Local web app for cardiac cine MRI analysis (LV, MYO, RV): upload a "
        "study, follow the analysis job, get indices, QC, overlays, masks and reports. "
        "Research use only; not a medical device.",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url="/api/openapi.json",
    )
    app.state.config, app.state.db, app.state.store, app.state.worker = config, db, store, worker

    # --- middleware: host, token, origin, headers, access log ------------------------------

    @app.middleware("http")
    async def guard(request: Request, call_next: Any) -> Response:
        t0 = time.perf_counter()
        path = request.url.path
        response: Response
        host = _host_name(request.headers.get("host", ""))
        if allowed_hosts is not None and host not in allowed_hosts:
            response = JSONResponse(
                {"detail": "invalid Host header for a loopback server"}, status_code=400
            )
        elif (
            config.token_required
            and path not in PUBLIC_PATHS
            and not path.startswith(PUBLIC_PREFIXES)
            and not secrets.compare_digest(
                (_request_token(request) or "").encode(), str(config.token).encode()
            )
        ):
            response = JSONResponse(
                {
                    "detail": f"access token required: send it in the {TOKEN_HEADER} header or "
                    "as ?token=..."
                },
                status_code=401,
            )
        elif request.method not in ("GET", "HEAD", "OPTIONS") and not _same_origin(request):
            response = JSONResponse({"detail": "cross-origin request refused"}, status_code=403)
        else:
            response = await call_next(request)
        h = response.headers
        h.setdefault("Content-Security-Policy", UI_CSP)
        h.setdefault("X-Content-Type-Options", "nosniff")
        h.setdefault("X-Frame-Options", "DENY")
        h.setdefault("Referrer-Policy", "no-referrer")
        # no other site may embed a study's images, volumes or JSON (<img>, <script>)
        h.setdefault("Cross-Origin-Resource-Policy", "same-origin")
        h.setdefault("Cache-Control", "no-store")
        quiet = request.method in ("GET", "HEAD") and response.status_code < 400  # UI polling
        log.log(
            logging.DEBUG if quiet else logging.INFO,
            "%s %s %d %.0f ms",
            request.method,
            _safe_path_for_log(path),
            response.status_code,
            1000 * (time.perf_counter() - t0),
        )
        return response

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {}
        where = ".".join(str(x) for x in first.get("loc", ()) if x not in ("path", "query"))
        msg = f"invalid {where}: {first.get('msg', 'bad value')}" if where else "invalid request"
        return JSONResponse({"detail": msg}, status_code=422)

    @app.exception_handler(Exception)
    async def internal_error(_request: Request, exc: Exception) -> JSONResponse:
        log.error("internal error (%s)", type(exc).__name__)
        return JSONResponse({"detail": f"internal error ({type(exc).__name__})"}, status_code=500)

    # --- helpers ---------------------------------------------------------------------------

    def study_or_404(study_id: str) -> dict[str, Any]:
        study = db.get_study(study_id) if valid_id(study_id) else None
        if study is None:
            raise _err(404, "study not found")
        return study

    def done_or_409(study_id: str) -> dict[str, Any]:
        study = study_or_404(study_id)
        job = db.job_for_study(study_id)
        if job is None or job["state"] != "done":
            state = job["state"] if job else "missing"
            detail = f"analysis not finished (job {state})"
            if job and job["state"] == "failed":
                detail = f"analysis failed: {job['error']}"
            raise _err(409, detail)
        return study

    def result_file(study_id: str, name: str) -> Path:
        path = store.result_dir(study_id) / name
        if not path.is_file():
            raise _err(404, f"{name} not available for this study")
        return path

    def downloads(study_id: str) -> dict[str, str]:
        folder = store.result_dir(study_id)
        base = f"/api/studies/{study_id}"
        out = {}
        for fmt, (name, _) in REPORT_FILES.items():
            if (folder / name).is_file():
                out[f"report_{fmt}"] = f"{base}/report/{fmt}"
        for which, name in MASK_FILES.items():
            if (folder / name).is_file():
                out[f"mask_{which}"] = f"{base}/masks/{which}"
        if any(folder.glob("segmentation*.dcm")):
            out["dicom_seg"] = f"{base}/dicom-seg"
            out["dicom_seg_deidentified"] = f"{base}/dicom-seg?deidentify=true"
        return out

    # --- pages -----------------------------------------------------------------------------

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    # --- API -------------------------------------------------------------------------------

    @app.get("/api/health", tags=["server"], summary="Server and model status")
    def health() -> dict[str, Any]:
        from cardioseg.clinical.qc import calibration_for

        seg = worker.segmenter
        return {
            "status": "ok",
            "version": __version__,
            "worker": "running" if worker.alive else "stopped",
            "model_ready": worker.segmenter is not None,
            "model_error": worker.model_error,
            "model": None if seg is None else seg.description,
            "qc_calibrated": None
            if seg is None
            else calibration_for(seg.checkpoint_paths).calibrated,
            "token_required": config.token_required,
            "max_upload_bytes": config.max_upload_bytes,
        }

    @app.post(
        "/api/studies",
        status_code=201,
        tags=["studies"],
        openapi_extra=UPLOAD_OPENAPI,
        summary="Upload a study and queue its analysis",
        responses={
            400: {"description": "Bad or corrupt file"},
            413: {"description": "Too large"},
            415: {"description": "Unsupported file type"},
            503: {"description": "Queue full"},
        },
    )
    async def upload(request: Request) -> JSONResponse:
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > config.max_upload_bytes:
            raise _err(
                413,
                f"upload too large ({int(length)} bytes, limit {config.max_upload_bytes} bytes)",
            )
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            raise _err(
                415,
                "send the upload as multipart/form-data with a 'file' field (4D "
                "NIfTI or zip of a DICOM folder) or 'ed' and 'es' fields",
            )
        if await run_in_threadpool(db.count_waiting) >= config.max_queued:
            raise _err(503, "too many analyses waiting; try again later")
        staged = await run_in_threadpool(store.staging)
        form = None
        try:
            form = await _parse_form(request, config.max_upload_bytes)
            files: dict[str, Any] = {}
            fields: dict[str, str] = {}
            for key, value in form.multi_items():
                if hasattr(value, "read"):
                    if key not in UPLOAD_FIELDS:
                        raise UploadError(
                            400,
                            f"unexpected file field '{display_name(key)}'; "
                            "use 'file', or 'ed' and 'es'",
                        )
                    if key in files:
                        raise UploadError(400, f"field '{key}' given twice")
                    files[key] = value
                elif key in TEXT_FIELDS:
                    fields[key] = str(value)
            parts = {}
            (staged / "input").mkdir()
            for role, up in files.items():
                dest = staged / "input" / f"{role}.part"
                await run_in_threadpool(_copy_upload, up.file, dest)
                parts[role] = (dest, up.filename)
            study, job = await run_in_threadpool(
                _register, config, store, db, staged, parts, fields
            )
        except UploadError as exc:
            raise _err(exc.status, exc.message) from None
        finally:
            if form is not None:
                await form.close()
            if staged.exists():
                await run_in_threadpool(shutil.rmtree, staged, True)
        worker.wake()
        log.info(
            "study %s uploaded (%s, %d bytes), job %s queued",
            study["id"],
            study["kind"],
            study["size_bytes"],
            job["id"],
        )
        return JSONResponse(
            {"study": study, "job": job},
            status_code=201,
            headers={"Location": f"/api/studies/{study['id']}"},
        )

    @app.get("/api/studies", tags=["studies"], summary="List studies with job state")
    def list_studies() -> dict[str, Any]:
        return {"studies": db.list_studies()}

    @app.get(
        "/api/studies/{study_id}",
        tags=["studies"],
        summary="One study: job, summary, indices table, QC, download links",
    )
    def get_study(study_id: str) -> dict[str, Any]:
        from cardioseg.clinical.qc import slices_to_check
        from cardioseg.clinical.report import (
            report_table,
            reported_volumes,
            segments_absent_line,
            segments_line,
            segments_method_line,
            suggestion_line,
        )

        study = study_or_404(study_id)
        job = db.job_for_study(study_id)
        report = db.get_result(study_id) if job and job["state"] == "done" else None
        out: dict[str, Any] = {
            "study": study,
            "job": job,
            "summary": None,
            "table": [],
            "qc": None,
            "downloads": {},
            "viewer": False,
        }
        if report is not None:
            out["summary"] = summarize(report)
            # the same rows (names, formatted values, ranges, flags) as the HTML/PDF report
            out["table"], out["ranges_for"] = report_table(report)
            out["qc"] = report.get("qc")
            out["ed_frame"], out["es_frame"] = report.get("ed_frame"), report.get("es_frame")
            out["volume_curve"] = report.get("volume_curve")
            # the reported ED/ES volumes (refined pass): marked on the curve where they differ
            out["reported_volumes"] = {
                phase: {"lv": lv, "rv": rv} for phase, (lv, rv) in reported_volumes(report).items()
            }
            out["slices"] = report.get("slices") or []
            # where the test-time predictions disagree, as in the report's "Check" column
            out["check_slices"] = slices_to_check(report.get("qc") or {})
            # what the loader noted about the input (series choice, damaged files, ...)
            out["input_warnings"] = list((report.get("meta") or {}).get("warnings") or [])
            # the research-use group suggestion (not a diagnosis), or why there is none
            sugg = report.get("diagnosis_suggestion")
            out["suggestion"] = suggestion_line(sugg) if sugg else None
            out["excluded_slices"] = report.get("excluded_slices") or []
            # wall thickness per AHA segment: the thickest point; the figure is an image
            segs = report.get("wall_segments")
            out["wall_segments"] = (
                {
                    "line": segments_line(segs),
                    # how the septum was placed and segment 17, as in the HTML and PDF
                    "method": segments_method_line(segs),
                    "note": segs.get("note", ""),
                }
                if segs
                else None
            )
            # why there are none (no RV next to the LV at ED, too few LV slices), as the report
            out["wall_segments_not_measured"] = segments_absent_line(report) or None
            out["downloads"] = downloads(study_id)
            out["viewer"] = (store.viewer_dir(study_id) / "meta.json").is_file()
        return out

    @app.post(
        "/api/studies/{study_id}/reanalyze",
        status_code=201,
        tags=["studies"],
        summary="Analyse a study again with the reader's slice exclusions",
        responses={
            400: {"description": "Bad exclusion"},
            404: {"description": "No such study"},
            409: {"description": "Its analysis is still queued or running"},
        },
    )
    def reanalyze(study_id: str, body: ReanalyzeRequest) -> JSONResponse:
        from cardioseg.clinical.slices import SliceExclusion

        study_or_404(study_id)
        n_slices = ((db.get_result(study_id) or {}).get("meta") or {}).get("n_slices")
        try:
            exclusions = [SliceExclusion.parse(text) for text in body.exclude]
            for ex in exclusions:
                if isinstance(n_slices, int):
                    ex.check(n_slices)
        except ValueError as exc:
            raise _err(400, str(exc)) from None
        out = db.reanalyze(study_id, [str(ex) for ex in exclusions], new_id())
        if out == "missing":
            raise _err(404, "study not found")
        if out == "busy":
            raise _err(409, "the study's analysis is still queued or running")
        study, job = out
        worker.wake()
        log.info("study %s: re-analysis queued as job %s", study_id, job["id"])
        return JSONResponse({"study": study, "job": job}, status_code=201)

    @app.delete(
        "/api/studies/{study_id}",
        status_code=204,
        tags=["studies"],
        summary="Delete a study, its job, results and files",
    )
    def delete_study(study_id: str) -> Response:
        if not valid_id(study_id) or not db.delete_study(study_id):
            raise _err(404, "study not found")
        store.remove(study_id)
        log.info("study %s deleted", study_id)
        return Response(status_code=204)

    @app.get("/api/jobs/{job_id}", tags=["jobs"], summary="Job state and progress")
    def get_job(job_id: str) -> dict[str, Any]:
        job = db.get_job(job_id) if valid_id(job_id) else None
        if job is None:
            raise _err(404, "job not found")
        return job

    @app.get(
        "/api/studies/{study_id}/results",
        tags=["results"],
        summary="The study's report.json (indices, QC, volume curve)",
    )
    def results(study_id: str) -> dict[str, Any]:
        done_or_409(study_id)
        report = db.get_result(study_id)
        if report is None:
            raise _err(404, "no result stored")
        return report

    @app.get(
        "/api/studies/{study_id}/images/{name}",
        tags=["results"],
        summary="Report figures (PNG): 'overlay' (ED/ES montage), 'curve' (volume curve), "
        "'segments' (AHA bull's-eyes)",
    )
    def image(study_id: str, name: str) -> FileResponse:
        done_or_409(study_id)
        if name not in IMAGE_FILES:
            raise _err(404, f"unknown image '{display_name(name)}'; use {', '.join(IMAGE_FILES)}")
        return FileResponse(result_file(study_id, IMAGE_FILES[name]), media_type="image/png")

    @app.get(
        "/api/studies/{study_id}/viewer",
        tags=["viewer"],
        summary="Slice viewer geometry: frames, slices, display size, ED/ES",
    )
    def viewer_info(study_id: str) -> dict[str, Any]:
        from cardioseg.app.viewer import viewer_meta

        done_or_409(study_id)
        meta = viewer_meta(store.viewer_dir(study_id))
        if meta is None:
            raise _err(404, "viewer images not available for this study")
        return meta

    @app.get(
        "/api/studies/{study_id}/slices/{frame}/{index}.png",
        tags=["viewer"],
        summary="One slice of one frame as PNG: image, labels (transparent) or overlay",
    )
    async def slice_png(
        study_id: str,
        frame: int,
        index: int,
        layer: str = Query("overlay", pattern="^(image|labels|overlay)$"),
        alpha: float = Query(0.45, ge=0.0, le=1.0),
    ) -> Response:
        from cardioseg.app.viewer import render_slice

        await run_in_threadpool(done_or_409, study_id)
        try:
            data = await run_in_threadpool(
                render_slice, store.viewer_dir(study_id), frame, index, layer, alpha
            )
        except FileNotFoundError:
            raise _err(404, "viewer images not available for this study") from None
        except IndexError as exc:
            raise _err(404, str(exc)) from None
        except ValueError as exc:
            raise _err(422, str(exc)) from None
        return Response(data, media_type="image/png", headers=PRIVATE_CACHE)

    @app.get(
        "/api/studies/{study_id}/volumes/{name}.nii.gz",
        tags=["viewer"],
        summary="Display volume for the WebGL viewer: 'image' or 'labels' (4D NIfTI, uint8)",
    )
    def display_volume(study_id: str, name: str) -> FileResponse:
        from cardioseg.app.viewer import display_volume as volume_path

        done_or_409(study_id)
        try:
            path = volume_path(store.viewer_dir(study_id), name)
        except ValueError as exc:
            raise _err(404, str(exc)) from None
        except FileNotFoundError:
            raise _err(404, "display volumes not available for this study") from None
        return FileResponse(
            path,
            media_type="application/gzip",
            headers=PRIVATE_CACHE,
        )

    @app.get(
        "/api/studies/{study_id}/masks/{which}",
        tags=["downloads"],
        summary="Label mask as NIfTI: 'ed', 'es' or 'cine' (4D, cine input only)",
    )
    def mask(study_id: str, which: str) -> FileResponse:
        done_or_409(study_id)
        if which not in MASK_FILES:
            raise _err(404, "unknown mask; use ed, es or cine")
        path = result_file(study_id, MASK_FILES[which])
        return FileResponse(
            path,
            media_type="application/gzip",
            filename=f"cardioseg_{study_id[:8]}_{MASK_FILES[which]}",
        )

    @app.get(
        "/api/studies/{study_id}/report/{fmt}",
        tags=["downloads"],
        summary="Report as 'html', 'pdf' or 'json'",
    )
    def report(study_id: str, fmt: str, download: bool = False) -> FileResponse:
        done_or_409(study_id)
        if fmt not in REPORT_FILES:
            raise _err(404, "unknown report format; use html, pdf or json")
        name, media = REPORT_FILES[fmt]
        path = result_file(study_id, name)
        headers = {"Content-Security-Policy": REPORT_CSP}
        filename = f"cardioseg_{study_id[:8]}_{name}"
        disposition = "attachment" if download or fmt == "json" else "inline"
        headers["Content-Disposition"] = f'{disposition}; filename="{filename}"'
        return FileResponse(path, media_type=media, headers=headers)

    @app.get(
        "/api/studies/{study_id}/dicom-seg",
        tags=["downloads"],
        summary="DICOM-SEG of the ED/ES masks (of every phase where the server runs with "
        "--seg-phases all; DICOM input only); zip when several files",
    )
    def dicom_seg(study_id: str, deidentify: bool = False) -> Response:
        done_or_409(study_id)
        files = sorted(store.result_dir(study_id).glob("segmentation*.dcm"))
        if not files:
            raise _err(404, "no DICOM-SEG for this study (only made for DICOM input)")
        blobs = [(p.name, _deidentified(p) if deidentify else p.read_bytes()) for p in files]
        stem = f"cardioseg_{study_id[:8]}_seg" + ("_deid" if deidentify else "")
        if len(blobs) == 1:
            return Response(
                blobs[0][1],
                media_type="application/dicom",
                headers={"Content-Disposition": f'attachment; filename="{stem}.dcm"'},
            )
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
            for name, data in blobs:
                zf.writestr(name, data)
        return Response(
            buf.getvalue(),
            media_type="application/zip",
            headers={"Content-Disposition": f'attachment; filename="{stem}.zip"'},
        )

    return app


# --- upload helpers -------------------------------------------------------------------------


async def _parse_form(request: Request, limit: int) -> Any:
    """Parse a multipart body, refusing it as soon as more than ``limit`` bytes arrived."""
    from starlette.formparsers import MultiPartException, MultiPartParser
    from starlette.requests import ClientDisconnect

    async def limited() -> AsyncIterator[bytes]:
        received = 0
        try:
            async for chunk in request.stream():
                received += len(chunk)
                if received > limit:
                    raise UploadError(413, f"upload too large (more than {limit} bytes)")
                yield chunk
        except ClientDisconnect:
            raise UploadError(400, "upload interrupted (the connection was closed)") from None

    parser = MultiPartParser(
        request.headers, limited(), max_files=3, max_fields=10, max_part_size=64 * 1024
    )
    try:
        return await parser.parse()
    except MultiPartException as exc:
        raise UploadError(400, f"malformed multipart upload ({exc.message})") from None


def _copy_upload(src: Any, dest: Path) -> None:
    src.seek(0)
    with open(dest, "xb") as out:
        shutil.copyfileobj(src, out, 1 << 20)
        out.flush()
        os.fsync(out.fileno())


def _register(
    config: AppConfig,
    store: Store,
    db: Database,
    staged: Path,
    parts: dict[str, tuple[Path, str | None]],
    fields: dict[str, str],
) -> tuple[dict, dict]:
    """Check the staged files, name them by content, move them in place and add the rows."""
    if not parts:
        raise UploadError(
            400,
            "no file uploaded: send 'file' (4D NIfTI or zip of a DICOM "
            "folder), or 'ed' and 'es' (3D NIfTI)",
        )
    if "file" in parts and ("ed" in parts or "es" in parts):
        raise UploadError(400, "send either one 'file', or an 'ed' and an 'es' file, not both")
    if "file" not in parts and not ("ed" in parts and "es" in parts):
        raise UploadError(400, "an ED/ES pair needs both the 'ed' and the 'es' file")
    checked = {}
    names = {}
    size = 0
    # a refused file is named as the reader chose it (the reply only; never logged)
    shown = {
        role: display_name(filename, fallback=UPLOAD_ROLES[role])
        for role, (_, filename) in parts.items()
    }
    for role, (path, _) in parts.items():
        size += path.stat().st_size
        role_name = "study" if role == "file" else role
        try:
            kind = sniff(path)
            if kind == "zip":
                final = path.with_name(f"{role_name}.zip")
                path.rename(final)
                checked[role] = check_zip(final, max_voxels=config.max_image_voxels)
            else:
                compressed = kind == "nifti-gz"
                final = path.with_name(role_name + (".nii.gz" if compressed else ".nii"))
                path.rename(final)
                checked[role] = check_nifti(final, compressed, config.max_image_voxels)
        except UploadError as exc:
            raise UploadError(exc.status, f"{shown[role]}: {exc.message}") from None
        names[role_name] = final.name
    n_frames: int | None
    if "file" in parts:
        c = checked["file"]
        if c.kind == "zip":
            kind, n_frames = "dicom", None
        else:
            assert c.shape is not None
            if len(c.shape) != 4 or c.shape[3] < 2:
                raise UploadError(
                    400,
                    f"{shown['file']}: a single NIfTI must be a 4D cine (x, y, z, t) with at "
                    f"least 2 frames, got shape {c.shape}; for two 3D volumes "
                    "upload them as an ED/ES pair",
                )
            kind, n_frames = "nifti4d", int(c.shape[3])
    else:
        ed, es = checked["ed"], checked["es"]
        for role, c in (("ed", ed), ("es", es)):
            if c.kind != "nifti":
                raise UploadError(
                    400, f"{shown[role]}: ED and ES must be 3D NIfTI volumes, not a zip"
                )
            assert c.shape is not None
            if len(c.shape) != 3:
                raise UploadError(
                    400,
                    f"{shown[role]}: {role.upper()} must be a 3D volume, got shape {c.shape}",
                )
        pair = f"{shown['es']} (ES) and {shown['ed']} (ED)"
        if ed.shape != es.shape:
            raise UploadError(
                400, f"{pair}: ES shape {es.shape} does not match ED shape {ed.shape}"
            )
        import numpy as np

        if not np.allclose(ed.affine, es.affine, atol=1e-3):
            raise UploadError(400, f"{pair}: ES affine (geometry) does not match the ED affine")
        kind, n_frames = "pair", 2
    from cardioseg.io.dicom.headers import HEIGHT_CM_RANGE, WEIGHT_KG_RANGE

    height = _optional_float(fields.get("height_cm"), "height_cm", *HEIGHT_CM_RANGE)
    weight = _optional_float(fields.get("weight_kg"), "weight_kg", *WEIGHT_KG_RANGE)
    sex = _optional_sex(fields.get("sex"))
    if (fields.get("name") or "").strip():  # the reader's label as typed ("12/03 follow-up")
        label = study_label(fields["name"])
    else:  # the uploaded file's base name
        label = display_name(parts.get("file", parts.get("ed"))[1] or "study")
    study_id, job_id = new_id(), new_id()
    store.commit_staged(staged, study_id)
    try:
        return db.add_study(
            {
                "id": study_id,
                "name": label,
                "kind": kind,
                "files": names,
                "n_frames": n_frames,
                "size_bytes": size,
                "height_cm": height,
                "weight_kg": weight,
                "sex": sex,
            },
            job_id,
        )
    except BaseException:
        store.remove(study_id)
        raise


def _same_origin(request: Request) -> bool:
    """Browsers send ``Origin`` on cross-site POST/DELETE; it must name this server.

    ``Sec-Fetch-Site`` (sent by current browsers even where an older one left ``Origin``
    out) must say ``same-origin`` or ``none`` (typed by the user) where present.
    """
    fetch_site = request.headers.get("sec-fetch-site")
    if fetch_site is not None and fetch_site.lower() not in ("same-origin", "none"):
        return False
    origin = request.headers.get("origin")
    if origin is None:
        return True  # not a browser (curl, scripts): nothing to protect against
    host = request.headers.get("host", "").lower()
    return origin.split("://", 1)[-1].rstrip("/").lower() == host


def _deidentified(path: Path) -> bytes:
    """A DICOM file without the patient's identifiers.

    Person names and the :data:`DEID_BLANK` attributes are blanked, the :data:`DEID_REMOVE`
    attributes and private elements removed, at every nesting level. UIDs are kept, so that
    the SEG still references its source images (the Retain UIDs option of DICOM PS3.15),
    and so are the SEG's own content date and time.
    """
    import pydicom

    from cardioseg.io.dicom import quiet_pydicom

    def clean(ds: Any) -> None:
        for elem in list(ds):
            if elem.tag.is_private or elem.keyword in DEID_REMOVE:
                del ds[elem.tag]
            elif elem.VR == "SQ":
                for item in elem.value:
                    clean(item)
            elif elem.VR == "PN" or elem.keyword in DEID_BLANK:
                elem.value = ""

    with quiet_pydicom():
        ds = pydicom.dcmread(str(path))
        clean(ds)
        ds.PatientIdentityRemoved = "YES"
        ds.DeidentificationMethod = "cardioseg: names, IDs, dates, descriptions out; UIDs kept"
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _lock_data_dir(root: Path) -> Any:
    """Hold an exclusive lock on the data folder so that two servers never share it."""
    from cardioseg.io.locking import lock_folder

    return lock_folder(root, "data folder in use by another cardioseg server")


# --- running ---------------------------------------------------------------------------------


def _check_address_free(host: str, port: int) -> None:
    """Refuse, in one line, an address the server could not listen on (another server on the
    port, a host name that does not resolve): uvicorn found it only after the banner was
    printed and the data folder made. Bound as uvicorn binds (``SO_REUSEADDR``), then freed."""
    import socket

    from cardioseg.errors import CardiosegError

    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except (OSError, UnicodeError) as err:
        raise CardiosegError(None, f"--host {host}: the name does not resolve ({err})") from None
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as err:
            raise CardiosegError(
                None,
                f"cannot listen on {host}:{port} ({err.strerror or err}): another server may "
                "be using the port; give another --port",
            ) from None


def serve(config: AppConfig, log_level: str = "info") -> None:
    """Run the server in the foreground (``cardioseg serve``) until interrupted.

    Prints the address, and the access token when one was generated.
    """
    import uvicorn

    from cardioseg.errors import CardiosegError

    if config.segmenter_factory is None:
        from cardioseg.models.checkpoint import (
            PACKAGED_ENSEMBLES,
            PACKAGED_MODELS,
            checkpoint_members,
        )

        for ckpt in checkpoint_members(config.checkpoint):
            if not ckpt.is_file():
                names = ", ".join([*sorted(PACKAGED_MODELS), *sorted(PACKAGED_ENSEMBLES)])
                raise CardiosegError(
                    ckpt, f"model checkpoint not found (pass --model PATH or one of: {names})"
                )
    logging.basicConfig(
        level=getattr(logging, log_level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if Path(config.data_dir).is_dir():
        _lock_data_dir(Path(config.data_dir)).close()  # a check only: the app takes the lock
    _check_address_free(config.host, config.port)  # before the data folder is made
    app = create_app(config)
    host = f"[{config.host}]" if ":" in config.host else config.host
    url = f"http://{host}:{config.port}/"
    print(f"cardioseg {__version__} web app: {url}", flush=True)
    print(f"data folder: {Path(config.data_dir).resolve()}", flush=True)
    if config.token_generated:
        print(f"access token: {config.token}", flush=True)
        print(f"open: {url}?token={config.token}", flush=True)
    elif config.token_required:
        print("access token required: the one given with --token or $CARDIOSEG_TOKEN", flush=True)
    if not is_loopback(config.host):
        print(
            "warning: listening beyond this machine; anyone with the token can read the "
            "studies. Plain HTTP: use it on a trusted network only.",
            flush=True,
        )
    uvicorn.run(
        app,
        host=config.host,
        port=config.port,
        access_log=False,
        log_level=log_level,
        server_header=False,
        proxy_headers=False,
    )


@contextlib.contextmanager
def serve_in_thread(config: AppConfig, timeout: float = 60.0) -> Iterator[str]:
    """Run the app with uvicorn in a background thread (tests, notebooks, benchmarks).

    ``config.port = 0`` picks a free port.

    Yields:
        The base URL, e.g. ``http://127.0.0.1:54321``.
    """
    import uvicorn

    app = create_app(config)
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=config.host,
            port=config.port,
            log_level="warning",
            access_log=False,
            server_header=False,
        )
    )
    thread = threading.Thread(target=server.run, name="cardioseg-uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError("the web server did not start")
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    host = f"[{config.host}]" if ":" in config.host else config.host
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout)
