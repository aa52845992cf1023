"""Web app API: uploads, jobs, results, viewer PNGs, downloads, safety, durability, concurrency.

All analyses use the random ``tiny_checkpoint`` model on small synthetic phantoms.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import logging
import sqlite3
import threading
import time
import warnings
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import mr_cine_image

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

with warnings.catch_warnings():  # starlette's "install httpx2" deprecation notice
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient
from typer.testing import CliRunner  # noqa: E402

from cardioseg.app import AppConfig, create_app  # noqa: E402
from cardioseg.app.server import serve_in_thread  # noqa: E402
from cardioseg.clinical.report import segments_method_line  # noqa: E402
from cardioseg.data.synthetic import PhantomConfig, make_cine, make_phantom, write_phantom  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

PNG = b"\x89PNG\r\n\x1a\n"
BASE = "http://127.0.0.1"
PATIENT_NAME, PATIENT_ID = "Doe^Jane", "PID12345"


# --- synthetic studies --------------------------------------------------------------------


def _cine_nifti(path: Path, n_frames: int = 5, seed: int = 2) -> Path:
    cine = make_cine(PhantomConfig(seed=seed, shape=(48, 48), spacing=4.0, n_slices=4), n_frames)
    img = nib.Nifti1Image(cine.image.astype(np.float32), cine.affine)
    nib.save(img, str(path))
    return path


def _dicom_zip(path: Path, n_frames: int = 3, seed: int = 4) -> Path:
    """A zipped single-series DICOM cine made from the phantom (with a fake patient name)."""
    from pydicom.uid import generate_uid

    cine = make_cine(PhantomConfig(seed=seed, shape=(48, 48), spacing=4.0, n_slices=4), n_frames)
    img = cine.image
    img = (img - img.min()) / (img.max() - img.min()) * 1000
    study, series, frame_of_ref = generate_uid(), generate_uid(), generate_uid()
    nx, ny, nz, nt = img.shape
    with zipfile.ZipFile(path, "w") as zf:
        for k in range(nz):
            for t in range(nt):
                ds = mr_cine_image(
                    img[:, :, k, t].T,
                    k=k,
                    t=t,
                    n_phases=nt,
                    study=study,
                    series=series,
                    frame_of_ref=frame_of_ref,
                    pixel_spacing=4.0,
                )
                # a patient to de-identify, named in free text too
                ds.PatientName, ds.PatientID = PATIENT_NAME, PATIENT_ID
                ds.PatientBirthDate, ds.PatientSex = "19700101", "F"
                ds.AccessionNumber = "ACC1"
                ds.StudyDescription = "CMR for Doe Jane"  # free text may name the patient
                ds.InstitutionName = "Doe Memorial Hospital"
                ds.SeriesDescription = "cine sax"
                buf = io.BytesIO()
                ds.save_as(buf, enforce_file_format=True)
                zf.writestr(f"study/series1/img_{k}_{t}.dcm", buf.getvalue())
    return path


@pytest.fixture(scope="module")
def studies(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("studies")
    ph = make_phantom(PhantomConfig(seed=1, shape=(48, 48), spacing=4.0, n_slices=4))
    files = write_phantom(ph, root, "ph")
    out = {
        "ed": files["ph_ED"],
        "es": files["ph_ES"],
        "cine": _cine_nifti(root / "cine.nii.gz"),
        "dicom": _dicom_zip(root / "dicom.zip"),
    }
    small = make_phantom(PhantomConfig(seed=3, shape=(40, 40), spacing=4.0, n_slices=3))
    other = write_phantom(small, root / "small", "sm")
    out["ed_small"], out["es_small"] = other["sm_ED"], other["sm_ES"]
    return out


def _config(tmp_path: Path, ckpt: Path, **kw) -> AppConfig:
    kw.setdefault("write_pdf", False)
    kw.setdefault("poll_seconds", 0.2)
    return AppConfig(data_dir=tmp_path / "data", checkpoint=ckpt, num_threads=1, **kw)


def _client(config: AppConfig) -> TestClient:
    return TestClient(create_app(config), base_url=BASE)


def _upload_pair(client, ed: Path, es: Path, **data):
    return client.post(
        "/api/studies",
        data=data,
        files={"ed": (ed.name, ed.read_bytes()), "es": (es.name, es.read_bytes())},
    )


def _upload_file(client, path: Path, name: str | None = None, content: bytes | None = None):
    return client.post(
        "/api/studies",
        files={"file": (name or path.name, path.read_bytes() if content is None else content)},
    )


def _wait(client, job_id: str, timeout: float = 90.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/api/jobs/{job_id}").json()
        if job["state"] in ("done", "failed"):
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} not finished after {timeout} s")


def _nifti_from_bytes(data: bytes, tmp: Path) -> nib.Nifti1Image:
    tmp.write_bytes(data)
    img = nib.load(str(tmp))
    img.get_fdata()  # the whole stream decodes
    return img


# --- end to end -------------------------------------------------------------------------------


def test_pair_and_cine_end_to_end(tmp_path, tiny_checkpoint, studies):
    config = _config(tmp_path, tiny_checkpoint, write_pdf=True)
    with _client(config) as client:
        assert client.get("/api/health").json()["status"] == "ok"
        assert client.get("/api/openapi.json").json()["paths"]["/api/studies"]["post"]
        assert client.get("/").text.startswith("<!DOCTYPE html>")
        r_pair = _upload_pair(
            client,
            studies["ed"],
            studies["es"],
            height_cm="172",
            weight_kg="70",
            sex="F",
            name="pair study",
        )
        assert r_pair.status_code == 201, r_pair.text
        # a 4D NIfTI whose name says zip: the type comes from the content
        r_cine = _upload_file(client, studies["cine"], name="cine_4d.zip")
        assert r_cine.status_code == 201, r_cine.text
        pair, cine = r_pair.json(), r_cine.json()
        assert pair["study"]["kind"] == "pair" and cine["study"]["kind"] == "nifti4d"
        assert pair["job"]["state"] == "queued" and cine["study"]["n_frames"] == 5
        assert pair["study"]["sex"] == "F" and cine["study"]["sex"] is None

        for up, n_frames in ((pair, 2), (cine, 5)):
            sid = up["study"]["id"]
            job = _wait(client, up["job"]["id"])
            assert job["state"] == "done", job
            assert job["progress"] == 1.0 and job["attempts"] == 1
            health = client.get("/api/health").json()  # the loaded model, for an admin
            assert health["model"].startswith("tiny.pt (sha256 ")
            assert health["qc_calibrated"] is False
            on_disk = json.loads(
                (config.data_dir / "studies" / sid / "result" / "report.json").read_text()
            )
            results = client.get(f"/api/studies/{sid}/results")
            assert results.status_code == 200
            assert results.json() == on_disk
            assert client.get(f"/api/studies/{sid}/report/json").json() == on_disk
            detail = client.get(f"/api/studies/{sid}").json()
            ef_row = [r for r in detail["table"] if r["key"] == "lv_ef_pct"][0]
            assert ef_row["value"] == f"{on_disk['lv_ef_pct']:.1f}"
            assert detail["qc"]["status"] == on_disk["qc"]["status"]
            # the normal ranges of the sex given at upload (none: sex-pooled)
            assert on_disk["normal_ranges_for"] == ("women" if up is pair else "sex-pooled")
            assert detail["ranges_for"] == ("adult women" if up is pair else "adult, men or women")
            assert detail["volume_curve"]["lv_ml"] == on_disk["volume_curve"]["lv_ml"]
            assert len(on_disk["volume_curve"]["lv_ml"]) == n_frames

            for name in ("overlay", "curve"):
                png = client.get(f"/api/studies/{sid}/images/{name}")
                assert png.status_code == 200 and png.content.startswith(PNG)
                assert png.headers["content-type"] == "image/png"
            # the AHA segments (where the septum could be placed): figure and line, or neither
            has_segments = "wall_segments" in on_disk
            bullseye = client.get(f"/api/studies/{sid}/images/segments")
            assert bullseye.status_code == (200 if has_segments else 404)
            assert (detail["wall_segments"] is not None) == has_segments
            if has_segments:
                assert detail["wall_segments"]["line"].startswith("Thickest point at ED")
                # how the septum was placed and segment 17, the same line as the HTML report's
                method = detail["wall_segments"]["method"]
                assert "Apical cap (segment 17)" in method
                assert method == segments_method_line(on_disk["wall_segments"])
            viewer = client.get(f"/api/studies/{sid}/viewer").json()
            assert viewer["n_frames"] == n_frames and viewer["n_slices"] == 4
            for layer in ("image", "labels", "overlay"):
                png = client.get(
                    f"/api/studies/{sid}/slices/{n_frames - 1}/3.png", params={"layer": layer}
                )
                assert png.status_code == 200 and png.content.startswith(PNG), layer
            again = client.get(f"/api/studies/{sid}/slices/{n_frames - 1}/3.png")
            assert (
                again.content
                == client.get(f"/api/studies/{sid}/slices/{n_frames - 1}/3.png").content
            )  # cached
            assert client.get(f"/api/studies/{sid}/slices/{n_frames}/0.png").status_code == 404
            assert (
                client.get(f"/api/studies/{sid}/slices/0/0.png", params={"layer": "x"}).status_code
                == 422
            )

            # display volumes of the WebGL viewer: (cols, rows, slices, frames), uint8, and the
            # labels are the analysis' masks rearranged (same label counts in every slice)
            vols = {}
            for name in ("image", "labels"):
                r = client.get(f"/api/studies/{sid}/volumes/{name}.nii.gz")
                assert r.status_code == 200, name
                vols[name] = _nifti_from_bytes(r.content, tmp_path / f"{name}.nii.gz")
                assert vols[name].shape == (48, 48, 4, n_frames)
                assert vols[name].get_data_dtype() == np.uint8
            assert viewer["volumes"] == ["image", "labels"]
            ed_mask = _nifti_from_bytes(
                client.get(f"/api/studies/{sid}/masks/ed").content, tmp_path / "ed.nii.gz"
            )
            shown = np.asarray(vols["labels"].dataobj)[..., on_disk["ed_frame"]]
            native = np.asarray(ed_mask.dataobj)
            for label in (1, 2, 3):
                assert [int((shown[:, :, z] == label).sum()) for z in range(4)] == [
                    int((native[:, :, z] == label).sum()) for z in range(4)
                ]
            assert client.get(f"/api/studies/{sid}/volumes/mask.nii.gz").status_code == 404

            mask = client.get(f"/api/studies/{sid}/masks/ed")
            assert mask.status_code == 200
            img = _nifti_from_bytes(mask.content, tmp_path / "m.nii.gz")
            assert img.shape == (48, 48, 4)
            assert set(np.unique(np.asarray(img.dataobj))) <= {0, 1, 2, 3}
            html = client.get(f"/api/studies/{sid}/report/html")
            assert html.status_code == 200 and "Cardiac cine MRI analysis" in html.text
            pdf = client.get(f"/api/studies/{sid}/report/pdf")
            assert pdf.status_code == 200 and pdf.content.startswith(b"%PDF")
            assert client.get(f"/api/studies/{sid}/dicom-seg").status_code == 404

        cine_id = cine["study"]["id"]
        cine_mask = client.get(f"/api/studies/{cine_id}/masks/cine")
        assert _nifti_from_bytes(cine_mask.content, tmp_path / "c.nii.gz").shape == (48, 48, 4, 5)
        assert client.get(f"/api/studies/{pair['study']['id']}/masks/cine").status_code == 404
        listed = client.get("/api/studies").json()["studies"]
        assert {s["id"] for s in listed} == {pair["study"]["id"], cine_id}
        assert all(s["job"]["state"] == "done" and s["summary"] for s in listed)
        assert {s["name"] for s in listed} == {"pair study", "cine_4d.zip"}

        # delete
        assert client.delete(f"/api/studies/{cine_id}").status_code == 204
        assert client.get(f"/api/studies/{cine_id}").status_code == 404
        assert client.get(f"/api/jobs/{cine['job']['id']}").status_code == 404
        assert client.delete(f"/api/studies/{cine_id}").status_code == 404
        assert not (config.data_dir / "studies" / cine_id).exists()
        assert len(client.get("/api/studies").json()["studies"]) == 1
        assert client.get("/api/studies/not-an-id").status_code == 404


def test_dicom_zip_seg_and_deidentification(tmp_path, tiny_checkpoint, studies, caplog):
    import pydicom

    caplog.set_level(logging.DEBUG)
    config = _config(tmp_path, tiny_checkpoint)
    with _client(config) as client:
        up = _upload_file(client, studies["dicom"], name="scan.bin")
        assert up.status_code == 201, up.text
        assert up.json()["study"]["kind"] == "dicom"
        job = _wait(client, up.json()["job"]["id"])
        assert job["state"] == "done", job
        sid = up.json()["study"]["id"]
        detail = client.get(f"/api/studies/{sid}").json()
        links = detail["downloads"]
        assert "dicom_seg" in links and "mask_cine" in links
        # the synthetic series is transverse (identity orientation): the reader is told, and the
        # DICOM PatientSex (F) chose the normal ranges
        assert any("transverse plane" in w for w in detail["input_warnings"])
        assert detail["ranges_for"] == "adult women"

        def datasets(resp):
            if resp.headers["content-type"] == "application/dicom":
                return [pydicom.dcmread(io.BytesIO(resp.content))]
            with zipfile.ZipFile(io.BytesIO(resp.content)) as zf:
                return [pydicom.dcmread(io.BytesIO(zf.read(n))) for n in zf.namelist()]

        plain = datasets(client.get(f"/api/studies/{sid}/dicom-seg"))
        assert plain and all(str(ds.PatientName) == PATIENT_NAME for ds in plain)
        assert all(ds.Modality == "SEG" for ds in plain)
        deid = datasets(client.get(f"/api/studies/{sid}/dicom-seg", params={"deidentify": True}))
        assert len(deid) == len(plain)
        assert any("Doe" in str(ds) for ds in plain)  # the study description, the institution
        for ds in deid:
            assert str(ds.PatientName) == "" and str(ds.PatientID) == ""
            assert ds.PatientIdentityRemoved == "YES"
            assert ds.SOPInstanceUID in {p.SOPInstanceUID for p in plain}
            # nowhere, nested sequences (contributing equipment) included
            assert "Doe" not in str(ds) and "20240101" not in str(ds)
        report = client.get(f"/api/studies/{sid}/report/json").text
        assert "Doe" not in report and PATIENT_ID not in report
        html = client.get(f"/api/studies/{sid}/report/html").text
        assert PATIENT_NAME not in html and PATIENT_ID not in html
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "Doe" not in logged and PATIENT_ID not in logged


# --- refused uploads --------------------------------------------------------------------------


def _traversal_zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("study/ok.dcm", b"x" * 100)
        zf.writestr("../../evil.txt", b"owned")
    return buf.getvalue()


def _nifti_bytes(array: np.ndarray, affine: np.ndarray) -> bytes:
    return gzip.compress(nib.Nifti1Image(array, affine).to_bytes())


def test_bad_uploads_are_refused_cleanly(tmp_path, tiny_checkpoint, studies):
    config = _config(tmp_path, tiny_checkpoint, max_upload_bytes=300_000, start_worker=False)
    cine_bytes = studies["cine"].read_bytes()
    ed3d = studies["ed_small"]
    rng = np.random.default_rng(0)
    other = make_phantom(PhantomConfig(seed=5, shape=(40, 36), spacing=4.0, n_slices=3))
    mismatched = write_phantom(other, tmp_path / "other", "o")["o_ES"]
    tiny_fov = _nifti_bytes(np.ones((4, 4, 2), np.float32), np.diag([1.5, 1.5, 8.0, 1.0]))
    complex_cine = _nifti_bytes(np.ones((48, 48, 3, 4), np.complex64), np.diag([1.5, 1.5, 8, 1]))
    cases = [
        ({"file": ("x.nii.gz", rng.bytes(5000))}, 415, "unsupported file type"),
        ({"file": ("x.nii.gz", gzip.compress(rng.bytes(5000)))}, 415, "does not hold a NIfTI"),
        ({"file": ("x.nii.gz", cine_bytes[: len(cine_bytes) // 2])}, 400, "truncated"),
        ({"file": ("x.nii.gz", cine_bytes[:200])}, 400, "truncated"),
        ({"file": ("x.nii.gz", b"")}, 400, "empty"),
        ({"file": ("big.nii.gz", rng.bytes(400_000))}, 413, "too large"),
        ({"file": ("study.zip", _traversal_zip())}, 400, "unsafe path in zip"),
        ({"file": ("x.zip", b"PK\x05\x06" + bytes(18))}, 400, "empty zip"),
        ({"file": ("x.zip", b"PK\x03\x04" + rng.bytes(3000))}, 400, "not a valid zip"),
        ({"file": ("ed.nii.gz", ed3d.read_bytes())}, 400, "4D cine"),
        ({"ed": ("ed.nii.gz", ed3d.read_bytes())}, 400, "needs both"),
        (
            {"ed": ("a.nii.gz", ed3d.read_bytes()), "es": ("b.nii.gz", mismatched.read_bytes())},
            400,
            "does not match",
        ),
        (
            {"file": ("c.nii.gz", cine_bytes), "ed": ("a.nii.gz", ed3d.read_bytes())},
            400,
            "either one",
        ),
        ({"other": ("c.nii.gz", cine_bytes)}, 400, "unexpected file field"),
        (
            {"ed": ("a.nii.gz", tiny_fov), "es": ("b.nii.gz", tiny_fov)},
            400,
            "field of view 6 x 6 mm is too small",
        ),
        ({"file": ("c.nii.gz", complex_cine)}, 400, "complex-valued"),
    ]
    with _client(config) as client:
        for files, status, text in cases:
            r = client.post("/api/studies", files=files)
            detail = r.json()["detail"]
            assert r.status_code == status, (text, r.status_code, detail)
            assert text in detail, (text, detail)
            assert "\n" not in detail and "Traceback" not in detail
        r = client.post(
            "/api/studies",
            files={"ed": ("a", ed3d.read_bytes()), "es": ("b", ed3d.read_bytes())},
            data={"height_cm": "tall"},
        )
        assert r.status_code == 400 and "height_cm must be a number" in r.json()["detail"]
        r = client.post(
            "/api/studies",
            files={"ed": ("a", ed3d.read_bytes()), "es": ("b", ed3d.read_bytes())},
            data={"sex": "X"},
        )
        assert r.status_code == 400 and "sex must be M or F" in r.json()["detail"]
        r = client.post("/api/studies", content=b"raw", headers={"content-type": "text/plain"})
        assert r.status_code == 415
        r = client.post(
            "/api/studies",
            content=b"x" * 10,
            headers={
                "content-type": "multipart/form-data; boundary=zz",
                "content-length": str(10**9),
            },
        )
        assert r.status_code == 413
        assert client.get("/api/studies").json()["studies"] == []
    assert list((config.data_dir / "tmp").iterdir()) == []
    assert list((config.data_dir / "studies").iterdir()) == []
    assert not (tmp_path / "evil.txt").exists()


def test_refused_upload_names_the_file(tmp_path, tiny_checkpoint, studies, caplog):
    """A refused upload says which file was wrong, as the reader named it (a pair has two), in
    one line; the name goes back to the browser only, never into the log."""
    config = _config(tmp_path, tiny_checkpoint, start_worker=False)
    ed = studies["ed_small"].read_bytes()
    other = make_phantom(PhantomConfig(seed=5, shape=(40, 36), spacing=4.0, n_slices=3))
    mismatched = write_phantom(other, tmp_path / "other", "o")["o_ES"].read_bytes()
    empty_zip = io.BytesIO()
    zipfile.ZipFile(empty_zip, "w").close()
    long_name = "Smith_John_" + "x" * 300 + ".zip"
    cases = [
        ({"file": ("scan notes.txt", b"not an image at all\n" * 40)}, "scan notes.txt: "),
        ({"file": ("export_empty.zip", empty_zip.getvalue())}, "export_empty.zip: "),
        ({"file": ("C:\\exports\\bad.zip", _traversal_zip())}, "bad.zip: unsafe path"),
        ({"file": (long_name, _traversal_zip())}, long_name[:120] + ": unsafe path"),
        ({"file": ("one_phase.nii.gz", ed)}, "one_phase.nii.gz: a single NIfTI"),
        ({"ed": ("ed_ok.nii.gz", ed), "es": ("es_junk.nii.gz", b"junk" * 200)}, "es_junk.nii.gz: "),
        (
            {"ed": ("ed_ok.nii.gz", ed), "es": ("es_other.nii.gz", mismatched)},
            "es_other.nii.gz (ES) and ed_ok.nii.gz (ED): ES shape",
        ),
        ({"ed": ("ed_ok.nii.gz", ed), "es": ("es.zip", _traversal_zip())}, "es.zip: unsafe"),
    ]
    with caplog.at_level(logging.DEBUG), _client(config) as client:
        for files, start in cases:
            r = client.post("/api/studies", files=files)
            detail = r.json()["detail"]
            assert 400 <= r.status_code < 500 and detail.startswith(start), (start, detail)
            assert "\n" not in detail
        assert client.get("/api/studies").json()["studies"] == []
    logged = "\n".join(r.getMessage() for r in caplog.records)
    for name in ("scan notes", "export_empty", "Smith_John", "es_junk", "es_other", "one_phase"):
        assert name not in logged
    assert list((config.data_dir / "studies").iterdir()) == []


# --- access control ---------------------------------------------------------------------------


def test_token_required_when_not_loopback(tmp_path, tiny_checkpoint, monkeypatch):
    monkeypatch.delenv("CARDIOSEG_TOKEN", raising=False)
    config = _config(tmp_path, tiny_checkpoint, host="0.0.0.0", start_worker=False)
    assert config.token_required and config.token_generated and len(config.token) >= 20
    with TestClient(create_app(config), base_url="http://203.0.113.5:8000") as client:
        r = client.get("/api/studies")
        assert r.status_code == 401 and "access token required" in r.json()["detail"]
        assert (
            client.get("/api/studies", headers={"X-Access-Token": "wrong-token"}).status_code == 401
        )
        assert (
            client.get("/api/studies", headers={"X-Access-Token": config.token}).status_code == 200
        )
        assert client.get("/api/studies", params={"token": config.token}).status_code == 200
        auth = {"Authorization": f"Bearer {config.token}"}
        assert client.get("/api/studies", headers=auth).status_code == 200
        assert client.post("/api/studies", files={"file": ("a", b"x")}).status_code == 401
        assert client.get("/api/openapi.json").status_code == 401
        # the page shell and health are public (no data), the page then asks for the token
        assert client.get("/").status_code == 200
        assert client.get("/static/app.js").status_code == 200
        assert client.get("/api/health").json()["token_required"] is True
    given = _config(
        tmp_path / "g", tiny_checkpoint, host="0.0.0.0", token="s3cret-token", start_worker=False
    )
    assert given.token == "s3cret-token" and not given.token_generated
    monkeypatch.setenv("CARDIOSEG_TOKEN", "from-the-environment")
    assert _config(tmp_path / "e", tiny_checkpoint, host="::").token == "from-the-environment"


def test_loopback_needs_no_token_but_checks_host_and_origin(tmp_path, tiny_checkpoint, monkeypatch):
    monkeypatch.delenv("CARDIOSEG_TOKEN", raising=False)
    config = _config(tmp_path, tiny_checkpoint, start_worker=False)
    assert not config.token_required
    with _client(config) as client:
        assert client.get("/api/studies").status_code == 200
        # DNS rebinding: a foreign Host header is refused
        assert client.get("/api/studies", headers={"host": "evil.example"}).status_code == 400
        # cross-site form posts from a web page are refused
        r = client.post(
            "/api/studies", files={"file": ("a", b"x")}, headers={"origin": "http://evil.example"}
        )
        assert r.status_code == 403
        # a browser that leaves Origin out still says where the request comes from
        for site in ("cross-site", "same-site"):
            r = client.post(
                "/api/studies", files={"file": ("a", b"x")}, headers={"sec-fetch-site": site}
            )
            assert r.status_code == 403, site
        r = client.delete("/api/studies/" + "0" * 32, headers={"sec-fetch-site": "cross-site"})
        assert r.status_code == 403
        # the page's own requests (and curl's, without the header) still go through
        r = client.delete("/api/studies/" + "0" * 32, headers={"sec-fetch-site": "same-origin"})
        assert r.status_code == 404
        assert client.delete("/api/studies/" + "0" * 32).status_code == 404
        r = client.get("/")
        assert "default-src 'self'" in r.headers["content-security-policy"]
        assert r.headers["x-content-type-options"] == "nosniff"
        # another site's page cannot embed the studies' data (<img src>, <script src>)
        r = client.get("/api/studies")
        assert r.headers["cross-origin-resource-policy"] == "same-origin"
        assert r.headers["cache-control"] == "no-store"
    # another loopback address it was told to bind to is its own name
    config = _config(tmp_path / "b", tiny_checkpoint, start_worker=False, host="127.0.0.2")
    with _client(config) as client:
        assert client.get("/api/studies", headers={"host": "127.0.0.2:8000"}).status_code == 200
        assert client.get("/api/studies", headers={"host": "127.0.0.3"}).status_code == 400


def test_upload_label_is_kept_as_typed(tmp_path, tiny_checkpoint, studies):
    config = _config(tmp_path, tiny_checkpoint, start_worker=False)
    with _client(config) as client:
        up = _upload_pair(client, studies["ed"], studies["es"], name="Patient 12/03/2024 follow-up")
        assert up.json()["study"]["name"] == "Patient 12/03/2024 follow-up"
        up = client.post(
            "/api/studies",
            files={"file": ("Müller, %22Hans%22.nii.gz", studies["cine"].read_bytes())},
        )
        assert up.json()["study"]["name"] == 'Müller, "Hans".nii.gz'


def test_serve_command_errors_are_one_line(tmp_path):
    from cardioseg.cli.main import app

    res = CliRunner().invoke(
        app, ["serve", "--data-dir", str(tmp_path / "d"), "--model", str(tmp_path / "missing.pt")]
    )
    assert res.exit_code == 1
    assert "model checkpoint not found" in res.output and "Traceback" not in res.output
    res = CliRunner().invoke(app, ["serve", "--data-dir", str(tmp_path / "d"), "--seg-phases", "x"])
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert "--seg-phases must be one of ed-es, all; got 'x'" in res.output
    import socket

    with socket.socket() as busy:  # a port another server listens on: refused before any work
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = str(busy.getsockname()[1])
        res = CliRunner().invoke(app, ["serve", "--data-dir", str(tmp_path / "d"), "--port", port])
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert f"cannot listen on 127.0.0.1:{port}" in res.output
    assert "give another --port" in res.output
    assert "web app:" not in res.output  # no banner printed
    with pytest.raises(ValueError, match="seg_phases must be one of ed-es, all"):
        AppConfig(data_dir=tmp_path / "d", seg_phases="ES")
    assert not (tmp_path / "d").exists()


# --- durability -------------------------------------------------------------------------------


def test_restart_requeues_interrupted_jobs(tmp_path, tiny_checkpoint, studies):
    config = _config(tmp_path, tiny_checkpoint, start_worker=False)
    with _client(config) as client:
        first = _upload_pair(client, studies["ed_small"], studies["es_small"]).json()
        second = _upload_pair(client, studies["ed_small"], studies["es_small"]).json()
    # simulate a server killed during both analyses; the second was already interrupted
    # max_attempts times
    db_path = config.data_dir / "cardioseg.sqlite3"
    with sqlite3.connect(db_path) as con:
        con.execute(
            "UPDATE jobs SET state='running', attempts=1, progress=0.4 WHERE id=?",
            (first["job"]["id"],),
        )
        con.execute(
            "UPDATE jobs SET state='running', attempts=3 WHERE id=?", (second["job"]["id"],)
        )
    # leftovers of the crash: a partial upload, an orphan folder, a half-written result
    (config.data_dir / "tmp" / "upload-x").mkdir()
    (config.data_dir / "tmp" / "upload-x" / "file.part").write_bytes(b"partial")
    orphan = config.data_dir / "studies" / ("f" * 32)
    orphan.mkdir()
    half = config.data_dir / "studies" / first["study"]["id"] / ".result.abc"
    half.mkdir()

    with _client(_config(tmp_path, tiny_checkpoint)) as client:
        job = _wait(client, first["job"]["id"])
        assert job["state"] == "done" and job["attempts"] == 2, job
        failed = client.get(f"/api/jobs/{second['job']['id']}").json()
        assert failed["state"] == "failed" and "interrupted 3 times" in failed["error"]
        assert client.get(f"/api/studies/{first['study']['id']}/results").status_code == 200
        r = client.get(f"/api/studies/{second['study']['id']}/results")
        assert r.status_code == 409 and "interrupted" in r.json()["detail"]
        assert len(client.get("/api/studies").json()["studies"]) == 2
    assert not orphan.exists() and not half.exists()
    assert list((config.data_dir / "tmp").iterdir()) == []

    # a third start finds everything again, nothing re-run
    with _client(_config(tmp_path, tiny_checkpoint, start_worker=False)) as client:
        assert client.get(f"/api/jobs/{first['job']['id']}").json()["state"] == "done"
        assert client.get(f"/api/studies/{first['study']['id']}/results").status_code == 200


class _SlowSegmenter:
    """The tiny model, slowed down so that a test can act while a job runs."""

    def __init__(self, checkpoint: Path, delay: float):
        from cardioseg.inference import Segmenter

        self.inner, self.delay = Segmenter(checkpoint, num_threads=1), delay
        self.tta = False

    def predict_volume(self, volume, spacing, return_probabilities=False, affine=None, **options):
        time.sleep(self.delay)
        self.inner.tta = self.tta
        return self.inner.predict_volume(volume, spacing, return_probabilities, affine, **options)


def _wait_running(client, job_id: str, timeout: float = 30.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/api/jobs/{job_id}").json()
        if job["state"] == "running" and job["progress"] > 0.05:
            return job
        time.sleep(0.05)
    raise AssertionError("job did not start")


def test_stop_requeues_and_delete_cancels_running_jobs(tmp_path, tiny_checkpoint, studies):
    def factory():
        return _SlowSegmenter(tiny_checkpoint, 0.3)

    config = _config(tmp_path, tiny_checkpoint, segmenter_factory=factory)
    with _client(config) as client:
        up = _upload_file(client, studies["cine"]).json()
        job = _wait_running(client, up["job"]["id"])
        assert job["message"].startswith("segmenting frame") and job["attempts"] == 1
    # a normal stop put the running job back in the queue without counting the attempt
    with _client(_config(tmp_path, tiny_checkpoint, start_worker=False)) as client:
        job = client.get(f"/api/jobs/{up['job']['id']}").json()
        assert job["state"] == "queued" and job["attempts"] == 0, job

    with _client(_config(tmp_path, tiny_checkpoint, segmenter_factory=factory)) as client:
        _wait_running(client, up["job"]["id"])
        assert client.delete(f"/api/studies/{up['study']['id']}").status_code == 204
        folder = config.data_dir / "studies" / up["study"]["id"]
        deadline = time.monotonic() + 30
        while folder.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not folder.exists()
        # the worker goes on with the next study
        nxt = _upload_pair(client, studies["ed_small"], studies["es_small"]).json()
        assert _wait(client, nxt["job"]["id"])["state"] == "done"
        assert [s["id"] for s in client.get("/api/studies").json()["studies"]] == [
            nxt["study"]["id"]
        ]


def test_reanalyze_with_reader_exclusions(tmp_path, tiny_checkpoint, studies):
    with _client(_config(tmp_path, tiny_checkpoint)) as client:
        up = _upload_pair(client, studies["ed"], studies["es"]).json()
        sid = up["study"]["id"]
        assert _wait(client, up["job"]["id"])["state"] == "done"
        first = client.get(f"/api/studies/{sid}").json()
        assert first["excluded_slices"] == [] and first["study"]["exclude"] == []
        assert client.get("/api/studies").json()["studies"][0]["summary"]["previous"] is False
        slices = {r["slice"]: r for r in first["slices"]}
        k = max(slices, key=lambda z: slices[z]["lv_es_ml"] + slices[z]["rv_es_ml"])
        assert slices[k]["lv_es_ml"] + slices[k]["rv_es_ml"] > 0, "the model labelled nothing"
        before = client.get(f"/api/studies/{sid}/results").json()
        version = client.get(f"/api/studies/{sid}/viewer").json()["version"]
        for bad in (["ES:x"], ["ES:99"], ["MID:1"]):
            r = client.post(f"/api/studies/{sid}/reanalyze", json={"exclude": bad})
            assert r.status_code == 400 and bad[0] in r.json()["detail"], r.text
        missing = client.post("/api/studies/0123456789abcdef/reanalyze", json={"exclude": []})
        assert missing.status_code == 404
    # queued without a worker: a second request is refused; the exclusion survives a restart
    with _client(_config(tmp_path, tiny_checkpoint, start_worker=False)) as client:
        r = client.post(f"/api/studies/{sid}/reanalyze", json={"exclude": [f"es:{k}"]})
        assert r.status_code == 201, r.text
        job = r.json()["job"]
        assert job["state"] == "queued" and r.json()["study"]["exclude"] == [f"ES:{k}"]
        again = client.post(f"/api/studies/{sid}/reanalyze", json={"exclude": []})
        assert again.status_code == 409
        # the list keeps the first analysis' values while the new one waits, marked previous
        (waiting,) = client.get("/api/studies").json()["studies"]
        assert waiting["job"]["id"] == job["id"] and waiting["job"]["state"] == "queued"
        assert waiting["summary"]["previous"] is True
        assert waiting["summary"]["lv_ef_pct"] == pytest.approx(before["lv_ef_pct"])
    with _client(_config(tmp_path, tiny_checkpoint)) as client:
        assert _wait(client, job["id"])["state"] == "done"
        (listed,) = client.get("/api/studies").json()["studies"]
        assert listed["summary"]["previous"] is False
        assert listed["summary"]["lv_ef_pct"] == pytest.approx(
            client.get(f"/api/studies/{sid}/results").json()["lv_ef_pct"]
        )
        after = client.get(f"/api/studies/{sid}/results").json()
        detail = client.get(f"/api/studies/{sid}").json()
        # the browser's cached slices of the first analysis are not reused: new URLs
        assert client.get(f"/api/studies/{sid}/viewer").json()["version"] != version
    assert after["excluded_slices"] == detail["excluded_slices"] == [f"ES:{k}"]
    assert after["lv_esv_ml"] == pytest.approx(
        before["lv_esv_ml"] - slices[k]["lv_es_ml"], abs=0.01
    )
    assert after["rv_esv_ml"] == pytest.approx(
        before["rv_esv_ml"] - slices[k]["rv_es_ml"], abs=0.01
    )
    assert after["lv_edv_ml"] == before["lv_edv_ml"]


def test_database_from_version_1_gains_exclusions_and_sex(tmp_path):
    from cardioseg.app.db import Database

    path = tmp_path / "old.sqlite"
    con = sqlite3.connect(path)
    con.executescript(
        "CREATE TABLE studies (id TEXT PRIMARY KEY, name TEXT NOT NULL, kind TEXT NOT NULL,"
        " files TEXT NOT NULL, n_frames INTEGER, size_bytes INTEGER NOT NULL, height_cm REAL,"
        " weight_kg REAL, created_utc TEXT NOT NULL);"
        "INSERT INTO studies VALUES ('s1', 'old', 'pair', '{}', 2, 10, NULL, NULL, 'now');"
        "PRAGMA user_version=1;"
    )
    con.close()
    db = Database(path)
    assert db.get_study("s1")["exclude"] == []
    assert db.get_study("s1")["sex"] is None
    assert db.reanalyze("s1", ["ES:3"], "j1")[0]["exclude"] == ["ES:3"]
    assert db.reanalyze("s1", [], "j2") == "busy"  # j1 is still queued
    assert db.reanalyze("nope", [], "j3") == "missing"
    study = {"id": "s2", "name": "new", "kind": "pair", "files": {}, "size_bytes": 1, "sex": "F"}
    assert db.add_study(study, "j4")[0]["sex"] == "F"
    with sqlite3.connect(path) as con:
        assert con.execute("PRAGMA user_version").fetchone()[0] == 3
        with pytest.raises(sqlite3.IntegrityError):  # the migrated column keeps its check
            con.execute("UPDATE studies SET sex = 'X' WHERE id = 's1'")


def test_data_folder_is_locked(tmp_path, tiny_checkpoint):
    from cardioseg.errors import CardiosegError

    config = _config(tmp_path, tiny_checkpoint, start_worker=False)
    with _client(config):
        with pytest.raises(CardiosegError, match="in use"):
            with _client(config):
                pass
    # a new data folder and its database are the owner's only (studies, labels, errors)
    root = Path(config.data_dir)
    for path, mode in (
        (root, 0o700),
        (root / "studies", 0o700),
        (root / "cardioseg.sqlite3", 0o600),
    ):
        assert path.stat().st_mode & 0o777 == mode, path


def test_failed_job_reports_the_reason(tmp_path, tiny_checkpoint, studies):
    config = _config(tmp_path, tiny_checkpoint)
    with _client(config) as client:
        up = _upload_file(client, studies["dicom"], content=_traversal_free_non_dicom_zip())
        assert up.status_code == 201
        job = _wait(client, up.json()["job"]["id"])
        assert job["state"] == "failed" and job["error"] and "\n" not in job["error"]
        assert str(config.data_dir) not in job["error"]
        r = client.get(f"/api/studies/{up.json()['study']['id']}/results")
        assert r.status_code == 409 and "failed" in r.json()["detail"]


def test_zipped_nifti_cine_is_shown_as_what_it_held(tmp_path, tiny_checkpoint, studies):
    """A zip is a "dicom" study until analysed; then its kind and frames are what it held."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("case/cine.nii.gz", studies["cine"].read_bytes())
    config = _config(tmp_path, tiny_checkpoint)
    with _client(config) as client:
        up = _upload_file(client, studies["dicom"], content=buf.getvalue())
        assert up.status_code == 201, up.text
        assert up.json()["study"]["kind"] == "dicom"
        assert up.json()["study"]["n_frames"] is None
        assert _wait(client, up.json()["job"]["id"])["state"] == "done"
        study = client.get(f"/api/studies/{up.json()['study']['id']}").json()["study"]
        n_frames = nib.load(str(studies["cine"])).shape[3]
        assert (study["kind"], study["n_frames"]) == ("nifti4d", n_frames)
        # a zipped ED/ES pair becomes a pair, and can be analysed again (its files are a zip)
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as zf:
            zf.writestr("case/p_ED.nii.gz", studies["ed"].read_bytes())
            zf.writestr("case/p_ES.nii.gz", studies["es"].read_bytes())
        up = _upload_file(client, studies["dicom"], content=buf.getvalue())
        assert _wait(client, up.json()["job"]["id"])["state"] == "done"
        sid = up.json()["study"]["id"]
        study = client.get(f"/api/studies/{sid}").json()["study"]
        assert (study["kind"], study["n_frames"]) == ("pair", 2)
        again = client.post(f"/api/studies/{sid}/reanalyze", json={"exclude": []})
        assert again.status_code == 201, again.text
        assert _wait(client, again.json()["job"]["id"])["state"] == "done"


def test_zipped_nifti_is_held_to_the_voxel_limit(tmp_path, tiny_checkpoint, studies):
    """A NIfTI inside a zip is held to the same voxel limit as one uploaded as it is: a small
    gzip member can announce (and hold) an image of many gigabytes that the analysis would
    read into memory."""
    cine = studies["cine"].read_bytes()
    n_vox = int(np.prod(nib.load(str(studies["cine"])).shape))
    for name, data in (("case/cine.nii.gz", cine), ("cine.nii", gzip.decompress(cine))):
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
            zf.writestr(name, data)
        small = _config(tmp_path / "small", tiny_checkpoint, start_worker=False)
        small.max_image_voxels = n_vox - 1
        with _client(small) as client:
            r = _upload_file(client, studies["dicom"], name="c.zip", content=buf.getvalue())
            assert r.status_code == 413, (name, r.text)
            assert f"c.zip: image in the zip too large ({n_vox} voxels" in r.json()["detail"]
            # the same 4D NIfTI uploaded as it is was refused already
            assert _upload_file(client, studies["cine"]).status_code == 413
            assert client.get("/api/studies").json()["studies"] == []
        enough = _config(tmp_path / "enough", tiny_checkpoint, start_worker=False)
        enough.max_image_voxels = n_vox
        with _client(enough) as client:
            r = _upload_file(client, studies["dicom"], name="c.zip", content=buf.getvalue())
            assert r.status_code == 201, (name, r.text)


def test_zipped_study_is_extracted_inside_the_data_folder(
    tmp_path, tiny_checkpoint, studies, monkeypatch
):
    """Never in the system's temporary folder: a killed server would leave patients' images
    there, out of reach of the start-up clean-up."""
    import tempfile

    from cardioseg.io.dicom import archive

    used: list = []
    real = tempfile.TemporaryDirectory

    def spy(*args, **kwargs):
        if str(kwargs.get("prefix")).startswith("cardioseg-zip-"):
            used.append(kwargs.get("dir"))
        return real(*args, **kwargs)

    monkeypatch.setattr(archive.tempfile, "TemporaryDirectory", spy)
    config = _config(tmp_path, tiny_checkpoint)
    with _client(config) as client:
        up = _upload_file(client, studies["dicom"])
        assert _wait(client, up.json()["job"]["id"])["state"] == "done"
    assert used and all(Path(d) == config.data_dir / "tmp" for d in used), used
    assert not list((config.data_dir / "tmp").iterdir())


def _traversal_free_non_dicom_zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("notes/readme.txt", b"no images here")
    return buf.getvalue()


# --- concurrency ------------------------------------------------------------------------------


def test_20_concurrent_uploads_over_http(tmp_path, tiny_checkpoint, studies):
    import httpx

    config = _config(tmp_path, tiny_checkpoint, port=0)
    ed, es = studies["ed_small"].read_bytes(), studies["es_small"].read_bytes()
    results: dict[int, httpx.Response] = {}
    errors: list[BaseException] = []

    with serve_in_thread(config) as url:

        def upload(i: int) -> None:
            try:
                with httpx.Client(base_url=url, timeout=60) as c:
                    results[i] = c.post(
                        "/api/studies",
                        data={"name": f"study {i:02d}"},
                        files={"ed": ("ed.nii.gz", ed), "es": ("es.nii.gz", es)},
                    )
            except BaseException as exc:  # reported below
                errors.append(exc)

        threads = [threading.Thread(target=upload, args=(i,)) for i in range(20)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not errors, errors
        assert sorted(results) == list(range(20))
        assert all(r.status_code == 201 for r in results.values()), [
            r.text for r in results.values() if r.status_code != 201
        ]
        with httpx.Client(base_url=url, timeout=30) as c:
            jobs = {r.json()["job"]["id"] for r in results.values()}
            deadline = time.monotonic() + 100
            while time.monotonic() < deadline:
                listed = c.get("/api/studies").json()["studies"]
                if all(s["job"]["state"] in ("done", "failed") for s in listed):
                    break
                time.sleep(0.5)
            assert len(listed) == 20
            assert {s["job"]["id"] for s in listed} == jobs
            assert {s["name"] for s in listed} == {f"study {i:02d}" for i in range(20)}
            assert all(s["job"]["state"] == "done" for s in listed), [
                s["job"] for s in listed if s["job"]["state"] != "done"
            ]
    digest = hashlib.sha256(ed).hexdigest()
    for s in listed:
        stored = config.data_dir / "studies" / s["id"] / "input" / "ed.nii.gz"
        assert hashlib.sha256(stored.read_bytes()).hexdigest() == digest
        assert (config.data_dir / "studies" / s["id"] / "result" / "report.json").is_file()


def test_release_memory_after_jobs():
    """The worker trims the allocator after each job; on glibc Linux the call is available."""
    import platform

    from cardioseg.app.worker import release_memory

    expected = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
    assert release_memory() is expected
