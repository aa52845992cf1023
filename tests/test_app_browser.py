"""End to end in a real headless Chromium: upload through the page, wait, check what is shown.

Needs Debian's ``chromium`` (``.ci/run`` installs it) and the ``playwright`` Python package
(its own browser downloads are never used); skipped with the reason otherwise.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from cardioseg.data.synthetic import PhantomConfig, make_cine

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--use-angle=swiftshader",  # WebGL2 in software for the interactive viewer
    "--enable-unsafe-swiftshader",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason="chromium not installed (/usr/bin/chromium missing; "
        "apt-get install chromium chromium-driver)",
    ),
]


def _wait_js(page, expression: str, timeout: float = 30.0) -> None:
    """Poll a JavaScript expression until true (``page.evaluate`` works under the page's CSP,
    ``wait_for_function`` would need 'unsafe-eval')."""
    deadline = time.monotonic() + timeout
    while not page.evaluate(f"() => Boolean({expression})"):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {expression}")
        time.sleep(0.1)


IMAGES_LOADED = (
    "['viewer-image', 'viewer-labels'].every(id => {"
    " const im = document.getElementById(id);"
    " return im.complete && im.naturalWidth > 0; })"
)


def test_upload_view_and_results_in_chromium(tmp_path, tiny_checkpoint):
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="playwright not installed (pip install playwright)"
    )
    pytest.importorskip("fastapi")
    from cardioseg.app import AppConfig
    from cardioseg.app.server import serve_in_thread

    cine = make_cine(PhantomConfig(seed=7, shape=(48, 48), spacing=4.0, n_slices=4), 6)
    study = tmp_path / "cine_4d.nii.gz"
    nib.save(nib.Nifti1Image(cine.image.astype(np.float32), cine.affine), str(study))
    config = AppConfig(
        data_dir=tmp_path / "data",
        checkpoint=tiny_checkpoint,
        port=0,
        num_threads=1,
        write_pdf=False,
        poll_seconds=0.2,
    )
    page_errors: list[str] = []
    font_warnings: list[str] = []  # Niivue drawing a character its font does not have
    with serve_in_thread(config) as url, sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.on("pageerror", lambda exc: page_errors.append(str(exc)))
            page.on("console", lambda msg: msg.type == "error" and page_errors.append(msg.text))
            page.on(
                "console",
                lambda msg: "Missing font metric" in msg.text and font_warnings.append(msg.text),
            )
            page.goto(url + "/")
            page.wait_for_selector("#server-status.ok", timeout=30_000)
            assert page.is_visible("#no-studies")

            # nothing chosen: a clear message, no request
            page.click("#upload-button")
            assert "Choose a file" in page.text_content("#upload-status")

            page.set_input_files("#file-input", str(study))
            page.click("#upload-button")
            page.wait_for_selector("#result-area:not([hidden])", timeout=90_000)
            _wait_js(page, IMAGES_LOADED)

            rows = page.locator("#study-rows tr")
            assert rows.count() == 1
            study_id = rows.first.get_attribute("data-id")
            report = json.loads(
                (config.data_dir / "studies" / study_id / "result" / "report.json").read_text()
            )
            ef_text = f"{report['lv_ef_pct']:.1f}"
            cell = '#indices-rows tr[data-key="lv_ef_pct"] td.value'
            assert page.text_content(cell) == ef_text
            assert page.text_content("#summary-ef") == ef_text + " %"
            assert page.text_content("#qc-status") == report["qc"]["status"]
            if report.get("wall_segments"):  # the AHA card: the report's method line
                from cardioseg.clinical.report import segments_method_line

                method = segments_method_line(report["wall_segments"])
                assert method and page.text_content("#segments-method") == method
            n_reasons = len(report["qc"]["reasons"])
            assert page.locator("#qc-reasons li").count() == min(max(n_reasons, 1), 8)
            assert page.locator("#curve polyline").count() == 2  # LV and RV volume curves
            # a cine's hint (a pair's names the two uploaded volumes instead)
            assert "largest and smallest LV volume" in page.text_content("#curve-hint")
            # "Analysis queued" is no longer said once the analysis has ended
            _wait_js(page, "document.getElementById('upload-status').textContent === ''")
            assert page.is_hidden("#input-notes")  # a NIfTI cine: nothing to say about the input
            # volume ticks at a round step (1, 2 or 5 times a power of ten) from 0
            ticks = [
                float(t)
                for t in page.eval_on_selector_all(
                    "#curve text.ytick", "els => els.map(e => e.textContent)"
                )
            ]
            steps = {b - a for a, b in zip(ticks, ticks[1:], strict=False)}
            assert ticks[0] == 0 and len(steps) == 1 and len(ticks) >= 3, ticks
            (step,) = steps
            assert step / 10 ** np.floor(np.log10(step)) in (1, 2, 5), ticks
            # numbered from 0, like the report, the slice table and the exclusions
            assert page.text_content("#frame-label").startswith(f"{report['ed_frame']} (0–5)")
            for link in ("report-html", "report-json", "mask-ed", "mask-es", "mask-cine"):
                assert page.locator(f"#download-{link}").count() == 1, link

            # slice and frame sliders load other images
            page.locator("#slice-slider").fill("0")
            page.locator("#frame-slider").fill(str(report["es_frame"]))
            _wait_js(
                page,
                "document.getElementById('viewer-image').src.includes("
                f"'/slices/{report['es_frame']}/0.png')",
            )
            _wait_js(page, IMAGES_LOADED)
            assert "(ES)" in page.text_content("#frame-label")
            assert page.text_content("#slice-label") == f"0 (0–{report['meta']['n_slices'] - 1})"

            # the slice view zooms to the heart box of the viewer's geometry; unticked, it
            # shows the whole field of view
            box = page.evaluate("() => state.viewer.heart_box")
            width = "e => parseFloat(e.style.width)"
            for layer in ("#viewer-image", "#viewer-labels"):
                shown = page.eval_on_selector(layer, width)
                assert shown == pytest.approx(100 / (box[2] - box[0]) if box else 100, rel=1e-3)
            assert page.is_disabled("#zoom-toggle") == (box is None)
            page.evaluate("() => { $('zoom-toggle').checked = false; applyZoom(); }")
            assert page.eval_on_selector("#viewer-image", width) == 100
            page.evaluate("() => { $('zoom-toggle').checked = true; applyZoom(); }")
            # a box in the middle half: both layers twice as large, shifted by a quarter
            page.evaluate(
                "() => { state.viewer.heart_box = [0.25, 0.25, 0.75, 0.75]; applyZoom(); }"
            )
            for layer in ("#viewer-image", "#viewer-labels"):
                style = page.eval_on_selector(
                    layer, "e => [e.style.width, e.style.height, e.style.left, e.style.top]"
                )
                assert style == ["200%", "200%", "-50%", "-50%"]

            # space on a focused button presses it (it is not the cine's play key there)
            page.locator("#frame-slider").fill(str(report["ed_frame"]))
            page.focus("#es-button")
            page.keyboard.press(" ")
            assert "(ES)" in page.text_content("#frame-label")
            assert page.text_content("#play-button").startswith("▶")

            # opacity toggle and cine play
            page.uncheck("#overlay-toggle")
            assert page.eval_on_selector("#viewer-labels", "e => e.style.opacity") == "0"
            page.check("#overlay-toggle")
            page.click("#play-button")
            time.sleep(0.8)
            page.click("#play-button")
            assert "Play" in page.text_content("#play-button")

            shot = tmp_path / "webapp.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10_000

            # the interactive WebGL viewer (Niivue) shows the same study and follows the controls
            assert page.evaluate("() => webglAvailable()"), "no WebGL2 in the test browser"
            page.check("#viewer-mode-webgl")
            _wait_js(page, "nvReady() && !document.getElementById('webgl-status').textContent")
            assert page.is_hidden("#viewer-stage") and page.is_visible("#nv-canvas")
            assert page.is_disabled("#zoom-toggle")  # the slices' heart window: no use here
            dims = page.evaluate(
                "() => nvState.nv.volumes.map(v => [...v.hdr.dims.slice(1, 4), v.nFrame4D])"
            )
            meta = page.evaluate("() => state.viewer")
            expected = [meta["cols"], meta["rows"], meta["n_slices"], meta["n_frames"]]
            assert dims == [expected, expected]
            page.locator("#frame-slider").fill(str(report["ed_frame"]))
            frames = "nvState.nv.volumes.map(v => nvState.nv.getFrame4D(v.id))"
            _wait_js(page, f"{frames}.every(f => f === {report['ed_frame']})")
            page.locator("#slice-slider").fill("2")
            crosshair_slice = "nvState.nv.frac2vox(nvState.nv.scene.crosshairPos)[2]"
            _wait_js(page, f"Math.round({crosshair_slice}) === 2")
            time.sleep(0.5)
            canvas_shot = tmp_path / "webgl.png"
            page.locator("#nv-canvas").screenshot(path=str(canvas_shot))
            rgb = np.asarray(Image.open(canvas_shot).convert("RGB")).astype(int)
            lv_red = (rgb[..., 0] > 150) & (rgb[..., 1] < 140) & (rgb[..., 2] < 110)
            assert lv_red.sum() > 20, "no LV overlay drawn by the WebGL viewer"
            page.uncheck("#overlay-toggle")
            _wait_js(page, "nvState.nv.volumes[1].opacity === 0")
            page.check("#overlay-toggle")
            page.select_option("#nv-layout", "multi")
            _wait_js(page, "nvState.nv.opts.sliceType === nvState.nv.sliceTypeMultiplanar")
            page.check('input[name="viewer-mode"][value="slices"]')
            assert page.is_visible("#viewer-stage") and page.is_hidden("#nv-stage")
            assert page.is_disabled("#zoom-toggle") == (box is None)

            # the slice table, and a re-analysis with a slice taken out of ES
            assert page.locator("#slices-rows tr").count() == len(report["slices"])
            from cardioseg.clinical.qc import slices_to_check

            flagged = slices_to_check(report["qc"])
            shown = page.eval_on_selector_all(
                "#slices-rows td.check",
                "els => els.map(e => [e.parentElement.dataset.slice, e.textContent])",
            )
            expected = {
                str(r["slice"]): ", ".join(
                    p for p in ("ED", "ES") if f"{p}:{r['slice']}" in flagged
                )
                for r in report["slices"]
            }
            assert dict(shown) == expected
            # a click on a row shows that slice in the viewer, and so does Enter on it
            last = report["slices"][-1]["slice"]
            page.click(f'#slices-rows tr[data-slice="{last}"]')
            assert page.text_content("#slice-label").startswith(f"{last} (")
            first = report["slices"][0]["slice"]
            page.focus(f'#slices-rows tr[data-slice="{first}"]')
            page.keyboard.press("Enter")
            assert page.text_content("#slice-label").startswith(f"{first} (")
            # the viewer names a slice to check at ED/ES as such
            page.evaluate(
                "() => { state.detail.check_slices = ['ED:1']; state.slice = 1;"
                " state.frame = state.viewer.ed_frame; updateViewer(); }"
            )
            assert page.text_content("#slice-label").endswith("· check")
            page.evaluate("() => { state.frame = state.viewer.es_frame; updateViewer(); }")
            assert "check" not in page.text_content("#slice-label")
            k = report["slices"][0]["slice"]  # stays listed once excluded, even if emptied
            page.fill("#exclude-input", "bad")
            page.click("#reanalyze-button")
            _wait_js(page, "document.getElementById('exclude-status').textContent.includes('bad')")
            page.fill("#exclude-input", f"ES:{k}")
            page.click("#reanalyze-button")
            _wait_js(page, "!document.getElementById('result-area').hidden", timeout=90)
            cell = f'#slices-rows tr[data-slice="{k}"] td:last-child'
            _wait_js(page, f"(document.querySelector('{cell}') || {{}}).textContent === 'ES'")
            assert page.input_value("#exclude-input") == f"ES:{k}"
        finally:
            browser.close()
    assert not page_errors, page_errors
    assert not font_warnings, font_warnings[:3]


def test_token_prompt_in_chromium(tmp_path, tiny_checkpoint):
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="playwright not installed (pip install playwright)"
    )
    pytest.importorskip("fastapi")
    from cardioseg.app import AppConfig
    from cardioseg.app.server import serve_in_thread

    # a token given on loopback is enforced like on any other address
    config = AppConfig(
        data_dir=tmp_path / "data",
        checkpoint=tiny_checkpoint,
        port=0,
        token="correct-horse-battery",
        start_worker=False,
    )
    with serve_in_thread(config) as url, sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        try:
            page = browser.new_page()
            page.goto(url + "/")
            page.wait_for_selector("#token-box:not([hidden])", timeout=30_000)
            assert page.is_hidden("#main")
            assert page.is_hidden("#token-error")
            # a wrong token: the prompt comes back saying so
            page.fill("#token-input", "wrong-horse-battery")
            page.click("#token-form button")
            page.wait_for_selector("#token-error:not([hidden])", timeout=30_000)
            assert page.is_visible("#token-box") and page.is_hidden("#main")
            page.fill("#token-input", "correct-horse-battery")
            page.click("#token-form button")
            page.wait_for_selector("#no-studies:not([hidden])", timeout=30_000)
            assert page.is_visible("#upload-card") and page.is_hidden("#token-error")
            # a link carrying the token opens directly and the token leaves the address bar
            page2 = browser.new_page()
            page2.goto(url + "/?token=correct-horse-battery")
            page2.wait_for_selector("#no-studies:not([hidden])", timeout=30_000)
            assert "token" not in page2.url
        finally:
            browser.close()


def test_study_list_and_upload_form_by_keyboard_in_chromium(tmp_path, tiny_checkpoint):
    """Without a worker (the studies stay queued): the study list by keyboard, a long name kept
    inside its card, the open study kept over a reload, an optional field out of range and a
    refused file each explained on the status line."""
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="playwright not installed (pip install playwright)"
    )
    pytest.importorskip("fastapi")
    from cardioseg.app import AppConfig
    from cardioseg.app.server import serve_in_thread

    cine = make_cine(PhantomConfig(seed=3, shape=(32, 32), spacing=5.0, n_slices=3), 3)
    path = tmp_path / "cine.nii.gz"
    nib.save(nib.Nifti1Image(cine.image.astype(np.float32), cine.affine), str(path))
    long_name = "Follow_up_" + "very_long_export_name_" * 6 + "cine.nii.gz"
    shown = long_name[:120]  # the server keeps 120 characters of a file name
    config = AppConfig(
        data_dir=tmp_path / "data", checkpoint=tiny_checkpoint, port=0, start_worker=False
    )
    page_errors: list[str] = []
    with serve_in_thread(config) as url, sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        try:
            page = browser.new_page(viewport={"width": 1300, "height": 900})
            page.on("pageerror", lambda exc: page_errors.append(str(exc)))
            page.goto(url + "/")
            page.wait_for_selector("#server-status.ok", timeout=30_000)
            payload = {"name": long_name, "mimeType": "application/gzip"}
            page.set_input_files("#file-input", {**payload, "buffer": path.read_bytes()})
            page.click("#upload-button")
            page.wait_for_selector("#study-rows tr", timeout=30_000)
            study_id = page.get_attribute("#study-rows tr", "data-id")

            # a height in metres, its section folded: said on the status line, nothing sent
            page.click("#upload-card summary")
            page.fill("#height-input", "1.75")
            page.click("#upload-card summary")
            page.set_input_files("#file-input", {**payload, "buffer": path.read_bytes()})
            page.click("#upload-button")
            status = page.text_content("#upload-status")
            assert status.startswith("Height (cm): ") and "metres" in status, status
            assert page.evaluate("() => document.querySelector('#upload-card details').open")
            assert page.locator("#study-rows tr").count() == 1
            page.fill("#height-input", "")

            # a refused file: the server's one line names it
            page.set_input_files(
                "#file-input",
                {"name": "scan notes.txt", "mimeType": "text/plain", "buffer": b"no image\n" * 9},
            )
            page.click("#upload-button")
            _wait_js(page, "document.getElementById('upload-status').textContent.includes(':')")
            status = page.text_content("#upload-status")
            assert status.startswith("Upload refused: scan notes.txt: unsupported"), status
            assert page.locator("#study-rows tr").count() == 1

            # the long name is cut inside the card, not past it
            right = "s => document.querySelector(s).getBoundingClientRect().right"
            assert page.evaluate(right, "#study-table") <= page.evaluate(right, "#studies-card")
            assert page.get_attribute("#study-rows button.open", "title").startswith(shown + " ·")

            # the study opens with the keyboard: Tab from the upload button, Enter
            page.evaluate("() => closeDetail()")
            page.focus("#upload-button")
            page.keyboard.press("Tab")
            assert page.evaluate("() => document.activeElement.textContent") == shown
            # the list drawn again (every few seconds while a job waits) keeps the focus
            page.evaluate("() => renderStudies()")
            assert page.evaluate("() => document.activeElement.textContent") == shown
            # values of an earlier analysis next to a running one are greyed and marked
            cells = page.evaluate(
                """() => {
                  const s = state.studies[0], keep = [s.job, s.summary];
                  s.job = { ...s.job, state: "running", progress: 0.5 };
                  s.summary = { lv_ef_pct: 55.2, qc_status: "ok", previous: true };
                  renderStudies();
                  const tds = [...document.querySelectorAll("#study-rows tr td")].slice(2, 4);
                  const out = tds.map((td) => [td.className, td.textContent, td.title]);
                  s.summary = { ...s.summary, previous: false };
                  renderStudies();
                  out.push(document.querySelector("#study-rows tr td.num").textContent);
                  [s.job, s.summary] = keep;
                  renderStudies();
                  return out;
                }"""
            )
            why = "Previous analysis: the study is being analysed again"
            assert cells[:2] == [
                ["num previous", "55.2 %previous", why],
                ["previous", "okprevious", why],
            ], cells
            assert cells[2] == "55.2 %"
            assert page.evaluate("() => document.activeElement.textContent") == shown
            page.keyboard.press("Enter")
            page.wait_for_selector("#detail:not([hidden])", timeout=10_000)
            assert page.text_content("#detail-title") == shown
            assert "Queued" in page.text_content("#job-status")
            assert page.url.endswith("#study=" + study_id)

            # a reload shows the same study again
            page.reload()
            page.wait_for_selector("#detail:not([hidden])", timeout=10_000)
            _wait_js(page, f"document.getElementById('detail-title').textContent === {shown!r}")
            # an address naming no study (deleted, mistyped) closes the detail
            page.evaluate("() => { location.hash = '#study=' + '0'.repeat(32); }")
            page.wait_for_selector("#detail", state="hidden", timeout=10_000)
            assert "#study=" not in page.url
        finally:
            browser.close()
    assert not page_errors, page_errors
