// cardioseg web app: upload, job list, slice viewer, indices, QC, volume curve, downloads.
// Plain JavaScript, no build step. Every request goes to this server only.
"use strict";

const $ = (id) => document.getElementById(id);

const state = {
  token: null,
  studies: [],
  selected: null, // study id shown on the right
  detail: null, // last GET /api/studies/{id}
  viewer: null, // viewer geometry
  slice: 0,
  frame: 0,
  playing: null, // interval id
  listTimer: null,
  detailTimer: null,
  showAllReasons: false,
  mode: "slices", // "slices" (server-rendered PNG) or "webgl" (Niivue)
};

// Interactive WebGL viewer (Niivue, vendored under /static/vendor, loaded on first use).
const nvState = { nv: null, study: null, version: null }; // the study and analysis whose volumes are loaded
// Changes with every analysis of a study (viewer meta): cached slices of an earlier one are not reused.
const viewerVersion = () => (state.viewer && state.viewer.version) || "";
const LABEL_LUT = {
  R: [0, 228, 41, 46], G: [0, 87, 191, 134], B: [0, 46, 18, 222], A: [0, 255, 255, 255],
  I: [0, 1, 2, 3], labels: ["background", "LV blood pool", "myocardium", "RV blood pool"],
};

// --- token and requests ------------------------------------------------------------------

function initToken() {
  const url = new URL(window.location.href);
  const fromUrl = url.searchParams.get("token");
  if (fromUrl) {
    sessionStorage.setItem("cardioseg-token", fromUrl);
    url.searchParams.delete("token");
    window.history.replaceState(null, "", url.pathname + url.search + url.hash);
  }
  state.token = sessionStorage.getItem("cardioseg-token");
}

function withToken(path) {
  if (!state.token) return path;
  return path + (path.includes("?") ? "&" : "?") + "token=" + encodeURIComponent(state.token);
}

function headers() {
  return state.token ? { "X-Access-Token": state.token } : {};
}

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

async function api(path, options = {}) {
  const resp = await fetch(path, { ...options, headers: { ...headers(), ...(options.headers || {}) } });
  if (resp.status === 401) {
    showTokenBox();
    throw new ApiError(401, "access token required");
  }
  if (!resp.ok) {
    let msg = resp.statusText;
    try {
      const body = await resp.json();
      if (body && body.detail) msg = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
    } catch (e) { /* not JSON */ }
    throw new ApiError(resp.status, msg);
  }
  if (resp.status === 204) return null;
  return resp.json();
}

function showTokenBox() {
  if (state.token) {  // a token was sent and refused: say so, and forget it
    state.token = null;
    sessionStorage.removeItem("cardioseg-token");
    $("token-error").hidden = false;
  }
  $("token-box").hidden = false;
  $("main").hidden = true;
}

// --- formatting --------------------------------------------------------------------------

function fmt(value, digits = 1) {
  return value === null || value === undefined || Number.isNaN(value) ? "n/a" : Number(value).toFixed(digits);
}

function fmtBytes(n) {
  if (n < 1024) return n + " B";
  if (n < 1024 * 1024) return (n / 1024).toFixed(0) + " kB";
  if (n < 1024 ** 3) return (n / 1024 / 1024).toFixed(1) + " MB";
  return (n / 1024 ** 3).toFixed(2) + " GB";
}

const KIND_NAMES = { nifti4d: "4D NIfTI", pair: "ED/ES pair", dicom: "DICOM" };
// A zip is stored as "dicom" until its analysis says what it held (and how many frames).
const kindName = (s) => (s.kind === "dicom" && s.n_frames == null ? "zip" : KIND_NAMES[s.kind] || s.kind);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c);
  return node;
}

function jobText(job) {
  if (!job) return "unknown";
  if (job.state === "queued") return "queued" + (job.message && job.message !== "waiting for the worker" ? " (" + job.message + ")" : "");
  if (job.state === "running") return "running " + Math.round(100 * job.progress) + " %";
  if (job.state === "failed") return "failed";
  return "done";
}

// --- server status ------------------------------------------------------------------------

async function loadHealth() {
  try {
    const h = await api("/api/health");
    const s = $("server-status");
    if (h.model_error) {
      s.textContent = "⚠ " + h.model_error;
      s.className = "server-status bad";
    } else {
      s.textContent = "server ready · v" + h.version + (h.model_ready ? "" : " · loading model…");
      s.className = "server-status ok";
    }
    state.maxUpload = h.max_upload_bytes;
    if (!h.model_ready && !h.model_error) setTimeout(loadHealth, 2000);
  } catch (e) {
    if (e.status !== 401) $("server-status").textContent = "server not reachable";
  }
}

// --- upload -------------------------------------------------------------------------------

function uploadMode() {
  return document.querySelector('input[name="mode"]:checked').value;
}

function onModeChange() {
  const pair = uploadMode() === "pair";
  $("single-inputs").hidden = pair;
  $("pair-inputs").hidden = !pair;
}

function setUploadStatus(text, isError = false) {
  const s = $("upload-status");
  s.textContent = text;
  s.classList.toggle("error", isError);
}

// the optional fields: the browser's own check would stop the upload silently where their
// section is folded; say which one and why on the status line
function optionalFieldProblem() {
  for (const id of ["name-input", "height-input", "weight-input"]) {
    const input = $(id);
    if (input.checkValidity()) continue;
    input.closest("details").open = true;
    input.focus();
    const label = input.labels[0].firstChild.textContent.trim();
    const v = Number(input.value);
    const metres = id === "height-input" && v > 0 && v < 3 ? " (a height in metres? give it in cm)" : "";
    return label + ": " + input.validationMessage + metres;
  }
  return null;
}

function onUpload(event) {
  event.preventDefault();
  const problem = optionalFieldProblem();
  if (problem) return setUploadStatus(problem, true);
  const form = new FormData();
  const files = [];
  if (uploadMode() === "pair") {
    const ed = $("ed-input").files[0];
    const es = $("es-input").files[0];
    if (!ed || !es) return setUploadStatus("Choose both the ED and the ES volume.", true);
    form.append("ed", ed);
    form.append("es", es);
    files.push(ed, es);
  } else {
    const f = $("file-input").files[0];
    if (!f) return setUploadStatus("Choose a file first.", true);
    form.append("file", f);
    files.push(f);
  }
  const total = files.reduce((a, f) => a + f.size, 0);
  if (state.maxUpload && total > state.maxUpload) {
    return setUploadStatus("Too large: " + fmtBytes(total) + " (limit " + fmtBytes(state.maxUpload) + ").", true);
  }
  for (const key of ["name", "height", "weight"]) {
    const v = $(key + "-input").value.trim();
    if (v) form.append(key === "name" ? "name" : key + (key === "height" ? "_cm" : "_kg"), v);
  }
  if ($("sex-input").value) form.append("sex", $("sex-input").value);
  const xhr = new XMLHttpRequest();
  const bar = $("upload-progress");
  const button = $("upload-button");
  xhr.open("POST", "/api/studies");
  for (const [k, v] of Object.entries(headers())) xhr.setRequestHeader(k, v);
  xhr.upload.onprogress = (e) => {
    if (e.lengthComputable) {
      bar.value = e.loaded / e.total;
      setUploadStatus("Uploading… " + Math.round(100 * e.loaded / e.total) + " % of " + fmtBytes(e.total));
    }
  };
  xhr.onload = () => {
    bar.hidden = true;
    button.disabled = false;
    let body = {};
    try { body = JSON.parse(xhr.responseText); } catch (e) { /* not JSON */ }
    if (xhr.status === 201) {
      setUploadStatus("Uploaded. Analysis queued: follow it in the list and on the right.");
      state.queuedUpload = body.study.id;  // the line is cleared when its analysis ends
      $("upload-form").reset();
      onModeChange();
      refreshStudies();
      selectStudy(body.study.id);
    } else if (xhr.status === 401) {
      showTokenBox();
    } else {
      setUploadStatus("Upload refused: " + (body.detail || xhr.statusText || "error " + xhr.status), true);
    }
  };
  xhr.onerror = () => {
    bar.hidden = true;
    button.disabled = false;
    setUploadStatus("Upload failed: the server could not be reached.", true);
  };
  bar.value = 0;
  bar.hidden = false;
  button.disabled = true;
  setUploadStatus("Uploading…");
  xhr.send(form);
}

// --- study list ---------------------------------------------------------------------------

async function refreshStudies() {
  clearTimeout(state.listTimer);
  try {
    const data = await api("/api/studies");
    state.studies = data.studies;
    renderStudies();
  } catch (e) {
    if (e.status === 401) return;
  }
  const active = state.studies.some((s) => s.job && (s.job.state === "queued" || s.job.state === "running"));
  state.listTimer = setTimeout(refreshStudies, active ? 1500 : 10000);
}

function renderStudies() {
  const body = $("study-rows");
  // the list is drawn again every few seconds while a job runs: the focused button keeps focus
  const focused = document.activeElement;
  const focusRow = focused && focused.tagName === "BUTTON" ? focused.closest("#study-rows tr") : null;
  const refocus = focusRow && [focusRow.dataset.id, focused.classList.contains("danger") ? "danger" : "open"];
  body.replaceChildren();
  $("no-studies").hidden = state.studies.length > 0;
  $("study-table").hidden = state.studies.length === 0;
  for (const s of state.studies) {
    const job = s.job;
    const statusCell = el("td", { class: "state state-" + (job ? job.state : "unknown") });
    statusCell.append(el("span", { text: jobText(job) }));
    if (job && job.state === "running") {
      const p = el("progress", { max: "1" });
      p.value = job.progress;
      statusCell.append(p);
    }
    if (job && job.state === "failed") statusCell.title = job.error || "";
    const sum = s.summary || {};
    const qc = sum.qc_status || "";
    // values of the earlier analysis while the study is analysed again (or that failed):
    // greyed, marked "previous", never to be read as the new result
    const prev = (cls) => (sum.previous ? {
      class: (cls + " previous").trim(),
      title: "Previous analysis: " + (job && job.state === "failed"
        ? "the new analysis failed" : "the study is being analysed again"),
    } : { class: cls });
    const prevMark = () => (sum.previous ? el("span", { class: "previous-mark", text: "previous" }) : "");
    const del = el("button", { type: "button", class: "link danger", text: "Delete", title: "Delete this study and its results", "aria-label": "Delete " + s.name });
    del.addEventListener("click", (ev) => { ev.stopPropagation(); deleteStudy(s); });
    const row = el("tr", { "data-id": s.id, class: s.id === state.selected ? "selected" : "" },
      // a button: reachable and opened with the keyboard (the click reaches the row); the
      // type below it leaves the name the width of a column
      el("td", { class: "name" },
        el("button", { type: "button", class: "link open", text: s.name, title: s.name + " · uploaded " + s.created_utc }),
        el("span", { class: "kind", text: kindName(s) })),
      statusCell,
      el("td", prev("num"), sum.lv_ef_pct !== undefined ? fmt(sum.lv_ef_pct) + " %" : "",
        sum.lv_ef_pct !== undefined ? prevMark() : ""),
      el("td", prev(""), qc ? el("span", { class: "qc-badge qc-" + qc, text: qc }) : "", qc ? prevMark() : ""),
      el("td", {}, del));
    row.addEventListener("click", () => selectStudy(s.id));
    body.append(row);
    if (refocus && refocus[0] === s.id) row.querySelector("button." + refocus[1]).focus();
  }
}

async function deleteStudy(s) {
  if (!window.confirm("Delete the study \"" + s.name + "\" with its results and files?")) return;
  try {
    await api("/api/studies/" + s.id, { method: "DELETE" });
    if (state.selected === s.id) closeDetail();
    refreshStudies();
  } catch (e) {
    window.alert("Could not delete: " + e.message);
  }
}

// --- study detail -------------------------------------------------------------------------

// the open study is kept in the address (#study=ID): a reload or a bookmark shows it again
function studyFromHash() {
  const m = /^#study=([0-9a-f]{32})$/.exec(window.location.hash);
  return m ? m[1] : null;
}

function setStudyHash(id) {
  const url = window.location.pathname + window.location.search + (id ? "#study=" + id : "");
  if (studyFromHash() !== id) window.history.replaceState(null, "", url);
}

function closeDetail() {
  stopPlay();
  clearTimeout(state.detailTimer);
  setStudyHash(null);
  state.selected = null;
  state.detail = null;
  $("detail").hidden = true;
}

async function selectStudy(id) {
  if (state.selected !== id) {
    stopPlay();
    state.viewer = null;
    state.showAllReasons = false;
    $("result-area").hidden = true;
  }
  state.selected = id;
  setStudyHash(id);
  for (const r of document.querySelectorAll("#study-rows tr")) r.classList.toggle("selected", r.dataset.id === id);
  $("detail").hidden = false;
  await refreshDetail();
}

async function refreshDetail() {
  clearTimeout(state.detailTimer);
  const id = state.selected;
  if (!id) return;
  let d;
  try {
    d = await api("/api/studies/" + id);
  } catch (e) {
    if (e.status === 404) closeDetail();
    return;
  }
  if (state.selected !== id) return;
  const wasDone = state.detail && state.detail.job && state.detail.job.state === "done";
  state.detail = d;
  const s = d.study;
  $("detail-title").textContent = s.name;
  $("detail-meta").textContent = kindName(s) + " · " + fmtBytes(s.size_bytes) + " · uploaded " + s.created_utc.replace("T", " ").replace("Z", " UTC");
  const job = d.job;
  const bar = $("job-progress");
  $("job-error").hidden = true;
  if (job.state !== "queued" && job.state !== "running" && state.queuedUpload === id) {
    state.queuedUpload = null;  // "Analysis queued" is no longer true
    if (!$("upload-status").classList.contains("error")) setUploadStatus("");
  }
  if (job.state === "queued" || job.state === "running") {
    $("job-status").textContent = job.state === "queued" ? "Queued: " + job.message : "Analysing: " + job.message + " (" + Math.round(100 * job.progress) + " %)";
    bar.hidden = false;
    bar.value = job.progress;
    state.detailTimer = setTimeout(refreshDetail, 1000);
  } else if (job.state === "failed") {
    bar.hidden = true;
    $("job-status").textContent = "Analysis failed.";
    $("job-error").textContent = job.error || "unknown error";
    $("job-error").hidden = false;
    $("result-area").hidden = true;
  } else {
    bar.hidden = true;
    $("job-status").textContent = "Analysis done" + (job.finished_utc ? " at " + job.finished_utc.replace("T", " ").replace("Z", " UTC") : "") + ".";
    if (!wasDone || $("result-area").hidden) await showResult(d);
  }
}

// the AHA segments: the thickest point and the report's bull's-eye figure
function renderSegments(d) {
  const seg = d.wall_segments;
  $("segments-card").hidden = !seg && !d.wall_segments_not_measured;
  $("segments-image").hidden = !seg;
  if (!seg) {  // why there are none, as in the report
    $("segments-line").textContent = d.wall_segments_not_measured || "";
    $("segments-method").textContent = "";
    $("segments-hint").textContent = "";
    return;
  }
  $("segments-line").textContent = seg.line;
  $("segments-method").textContent = seg.method || "";
  $("segments-hint").textContent = seg.note || "";
  // the job id changes with every analysis: a re-analysis's figure is not taken from the cache
  const version = encodeURIComponent((d.job && d.job.id) || "");
  $("segments-image").src = withToken("/api/studies/" + d.study.id + "/images/segments?v=" + version);
}

async function showResult(d) {
  $("result-area").hidden = false;
  // same formatted values as the indices table (and the HTML/PDF report)
  const shown = Object.fromEntries((d.table || []).map((r) => [r.key, r.value]));
  const sum = d.summary || {};
  $("summary-ef").textContent = (shown.lv_ef_pct || fmt(sum.lv_ef_pct)) + " %";
  $("summary-rvef").textContent = (shown.rv_ef_pct || fmt(sum.rv_ef_pct)) + " %";
  const qcStatus = (d.qc && d.qc.status) || "not assessed";
  for (const id of ["summary-qc", "qc-status"]) {
    $(id).textContent = qcStatus;
    $(id).className = "qc-badge qc-" + qcStatus;
  }
  renderReasons();
  const notes = d.input_warnings || [];
  $("input-notes").hidden = !notes.length;
  $("input-notes-list").replaceChildren(...notes.map((w) => el("li", { text: w })));
  renderTable(d.table);
  $("range-header").textContent = "Normal range (" + (d.ranges_for || "adult") + ")";
  $("suggestion").hidden = !d.suggestion;
  $("suggestion").textContent = d.suggestion || "";
  renderSlices(d);
  renderSegments(d);
  renderDownloads(d.downloads);
  if (d.viewer) {
    try {
      state.viewer = await api("/api/studies/" + d.study.id + "/viewer");
      setupViewer();
    } catch (e) {
      $("viewer-card").hidden = true;
    }
  } else {
    $("viewer-card").hidden = true;
  }
  drawCurve();
}

function renderReasons() {
  const d = state.detail;
  const reasons = (d.qc && d.qc.reasons) || [];
  const list = $("qc-reasons");
  list.replaceChildren();
  if (!reasons.length) list.append(el("li", { text: "No issues found." }));
  const shown = state.showAllReasons ? reasons : reasons.slice(0, 8);
  for (const r of shown) list.append(el("li", { text: r }));
  const more = $("qc-more");
  more.hidden = reasons.length <= 8;
  more.textContent = state.showAllReasons ? "Show fewer" : "Show all " + reasons.length + " reasons";
}

function renderTable(rows) {
  const body = $("indices-rows");
  body.replaceChildren();
  for (const r of rows || []) {
    body.append(el("tr", { "data-key": r.key },
      el("td", { text: r.name }),
      el("td", { class: "num value", text: r.value }),
      el("td", { text: r.unit }),
      el("td", { text: r.range }),
      el("td", { class: "flag flag-" + (r.flag || "none"), text: r.flag || "" })));
  }
}

const SLICE_KEYS = ["lv_ed_ml", "lv_es_ml", "myo_ed_ml", "rv_ed_ml", "rv_es_ml"];

function renderSlices(d) {
  const excluded = {};
  for (const text of d.excluded_slices || []) {
    const [phase, index, structures] = text.split(":");
    (excluded[index] = excluded[index] || []).push(structures ? phase + " " + structures : phase);
  }
  const check = {};  // the phases where the test-time predictions disagree on the slice
  for (const text of d.check_slices || []) {
    const [phase, index] = text.split(":");
    (check[index] = check[index] || []).push(phase);
  }
  const body = $("slices-rows");
  body.replaceChildren();
  for (const r of d.slices || []) {
    const row = el("tr", { "data-slice": String(r.slice), class: "clickable", title: "show this slice in the viewer" },
      el("td", { class: "num", text: String(r.slice) }),
      el("td", { text: r.position || "" }),
      ...SLICE_KEYS.map((k) => el("td", { class: "num", text: fmt(r[k]) })),
      el("td", { class: "check", text: (check[r.slice] || []).join(", ") }),
      el("td", { text: (excluded[r.slice] || []).join(", ") }));
    row.tabIndex = 0;  // reachable with Tab; Enter shows the slice
    row.addEventListener("click", () => showSlice(r.slice, check[r.slice] || []));
    row.addEventListener("keydown", (e) => {
      if (e.key === "Enter") { e.preventDefault(); showSlice(r.slice, check[r.slice] || []); }
    });
    body.append(row);
  }
  $("slices-card").hidden = !(d.slices && d.slices.length);
  $("exclude-input").value = (d.excluded_slices || []).join(", ");
  $("exclude-status").textContent = "";
}

// a row of the slice table shows its slice in the viewer, at the phase to check if any
function showSlice(slice, phases) {
  const v = state.viewer;
  if (!v) return;
  state.slice = Math.min(slice, v.n_slices - 1);
  if (phases.length === 1) state.frame = phases[0] === "ES" ? v.es_frame : v.ed_frame;
  $("slice-slider").value = state.slice;
  $("frame-slider").value = state.frame;
  updateViewer();
  $("viewer-card").scrollIntoView({ behavior: "smooth", block: "nearest" });
}

async function onReanalyze(event) {
  event.preventDefault();
  const id = state.selected;
  if (!id) return;
  const exclude = $("exclude-input").value.split(/[\s,;]+/).filter((t) => t.length);
  const status = $("exclude-status");
  status.classList.remove("error");
  const bad = exclude.filter((t) => !/^(ED|ES):\d+(:(LV|RV|all))?$/i.test(t));
  if (bad.length) {  // the server checks too; this answers without a request
    status.textContent = "Not understood: " + bad.join(", ") + " (use e.g. ES:8 or ES:8:LV)";
    status.classList.add("error");
    return;
  }
  try {
    await api("/api/studies/" + id + "/reanalyze", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ exclude }),
    });
    status.textContent = "Re-analysis queued.";
    $("result-area").hidden = true;
    await refreshDetail();
  } catch (e) {
    status.textContent = e.message;
    status.classList.add("error");
  }
}

const DOWNLOAD_LABELS = {
  report_html: "Report (HTML)", report_pdf: "Report (PDF)", report_json: "Results (JSON)",
  mask_ed: "ED mask (NIfTI)", mask_es: "ES mask (NIfTI)", mask_cine: "All-frame masks (4D NIfTI)",
  dicom_seg: "DICOM-SEG", dicom_seg_deidentified: "DICOM-SEG, de-identified",
};

function renderDownloads(links) {
  const box = $("downloads");
  box.replaceChildren();
  for (const [key, label] of Object.entries(DOWNLOAD_LABELS)) {
    if (!links || !links[key]) continue;
    const a = el("a", { class: "button", href: withToken(links[key]), text: label, id: "download-" + key.replace(/_/g, "-") });
    if (key === "report_html" || key === "report_pdf") a.target = "_blank";
    else a.setAttribute("download", "");
    a.rel = "noopener";
    box.append(a);
  }
}

// --- viewer -------------------------------------------------------------------------------

// slices and frames are numbered from 0, as in the report, the slice table, the mask files
// and the exclusions (PHASE:SLICE): the viewer must name a slice the way they do
function indexLabel(i, n) {
  return i + " (0–" + (n - 1) + ")";
}

function sliceUrl(layer, frame, slice) {
  return withToken("/api/studies/" + state.selected + "/slices/" + frame + "/" + slice + ".png?layer=" + layer + "&v=" + viewerVersion());
}

function setupViewer() {
  const v = state.viewer;
  $("viewer-card").hidden = false;
  $("slice-slider").max = v.n_slices - 1;
  $("frame-slider").max = v.n_frames - 1;
  state.slice = Math.floor((v.n_slices - 1) / 2);
  state.frame = v.ed_frame;
  $("slice-slider").value = state.slice;
  $("frame-slider").value = state.frame;
  $("zoom-toggle").disabled = !v.heart_box;
  applyZoom();
  $("play-button").disabled = v.n_frames < 2;
  const hasVolumes = Array.isArray(v.volumes) && v.volumes.includes("labels");
  $("viewer-mode-webgl").disabled = !hasVolumes;
  $("webgl-choice").title = hasVolumes ? "" : "analysed by an older version: re-upload for the interactive view";
  if (state.mode === "webgl" && hasVolumes) setViewerMode("webgl");
  else {
    if (state.mode === "webgl") setViewerMode("slices");
    updateViewer();
  }
}

function updateViewer() {
  const v = state.viewer;
  if (!v) return;
  if (state.mode === "webgl") updateNiivue();
  else {
    $("viewer-image").src = sliceUrl("image", state.frame, state.slice);
    $("viewer-labels").src = sliceUrl("labels", state.frame, state.slice);
  }
  let tag = "";
  if (state.frame === v.ed_frame) tag = " (ED)";
  else if (state.frame === v.es_frame) tag = " (ES)";
  // the QC's "check first" slices (where the test-time predictions disagree) at ED/ES
  const phase = tag.slice(2, 4);
  const check = phase && ((state.detail && state.detail.check_slices) || []).includes(phase + ":" + state.slice);
  $("slice-label").textContent = indexLabel(state.slice, v.n_slices) + (check ? " · check" : "");
  $("frame-label").textContent = indexLabel(state.frame, v.n_frames) + tag;
  updateOverlay();
  drawCurveMarker();
}

// the slice view shows the window around the heart (as the report's montage) or the whole
// field of view; both layers are scaled and shifted alike inside the clipping stage
function applyZoom() {
  const v = state.viewer;
  if (!v) return;
  const box = $("zoom-toggle").checked && v.heart_box ? v.heart_box : [0, 0, 1, 1];
  const [x0, y0, x1, y1] = box;
  const w = x1 - x0, h = y1 - y0;
  $("viewer-stage").style.aspectRatio = (v.width * w) + " / " + (v.height * h);
  for (const id of ["viewer-image", "viewer-labels"]) {
    const img = $(id);
    img.style.width = (100 / w) + "%";
    img.style.height = (100 / h) + "%";
    img.style.left = (-100 * x0 / w) + "%";
    img.style.top = (-100 * y0 / h) + "%";
  }
}

function overlayOpacity() {
  return $("overlay-toggle").checked ? Number($("opacity-slider").value) / 100 : 0;
}

function updateOverlay() {
  const on = $("overlay-toggle").checked;
  const opacity = Number($("opacity-slider").value) / 100;
  const labels = $("viewer-labels");
  labels.style.opacity = on ? opacity : 0;
  if (state.mode === "webgl" && nvReady()) {
    nvState.nv.setOpacity(1, overlayOpacity());
  }
  $("opacity-label").textContent = Math.round(opacity * 100) + " %";
  $("opacity-slider").disabled = !on;
}

function preload(slice) {
  const v = state.viewer;
  for (let t = 0; t < v.n_frames; t++) {
    for (const layer of ["image", "labels"]) new Image().src = sliceUrl(layer, t, slice);
  }
}

function togglePlay() {
  if (state.playing) return stopPlay();
  const v = state.viewer;
  if (!v || v.n_frames < 2) return;
  if (state.mode === "slices") preload(state.slice);
  $("play-button").textContent = "❚❚ Pause";
  state.playing = setInterval(() => {
    state.frame = (state.frame + 1) % v.n_frames;
    $("frame-slider").value = state.frame;
    updateViewer();
  }, Math.max(60, Math.round(1000 / Math.min(v.n_frames, 20))));
}

function stopPlay() {
  if (state.playing) clearInterval(state.playing);
  state.playing = null;
  $("play-button").textContent = "▶ Play cine";
}

function onKey(e) {
  if (!state.viewer || $("result-area").hidden) return;
  const focused = document.activeElement;
  if (["INPUT", "TEXTAREA", "SELECT"].includes(focused.tagName) && focused.type !== "range") return;
  // space activates a focused button, link, summary or table row: it is not "play"
  if (e.key === " " && focused.closest("button, a, summary, tr[tabindex]")) return;
  const v = state.viewer;
  let handled = true;
  if (e.key === "ArrowRight") state.frame = (state.frame + 1) % v.n_frames;
  else if (e.key === "ArrowLeft") state.frame = (state.frame - 1 + v.n_frames) % v.n_frames;
  else if (e.key === "ArrowUp") state.slice = Math.min(v.n_slices - 1, state.slice + 1);
  else if (e.key === "ArrowDown") state.slice = Math.max(0, state.slice - 1);
  else if (e.key === " ") togglePlay();
  else handled = false;
  if (handled) {
    e.preventDefault();
    $("frame-slider").value = state.frame;
    $("slice-slider").value = state.slice;
    updateViewer();
  }
}

// --- interactive WebGL viewer (Niivue) ----------------------------------------------------

function webglAvailable() {
  try {
    return Boolean(document.createElement("canvas").getContext("webgl2"));
  } catch (e) {
    return false;
  }
}

function loadScript(src) {
  return new Promise((resolve, reject) => {
    const tag = el("script", { src });
    tag.onload = resolve;
    tag.onerror = () => reject(new Error("could not load " + src));
    document.head.append(tag);
  });
}

function nvReady() {
  return Boolean(
    nvState.nv && nvState.study === state.selected && nvState.version === viewerVersion() && nvState.nv.volumes.length === 2
  );
}

function setWebglStatus(text, isError = false) {
  const s = $("webgl-status");
  s.textContent = text;
  s.classList.toggle("error", isError);
}

async function ensureNiivue() {
  if (nvState.nv) return nvState.nv;
  if (!window.niivue) await loadScript("/static/vendor/niivue.umd.js");
  const nv = new window.niivue.Niivue({
    backColor: [0, 0, 0, 1],
    crosshairColor: [1, 0.85, 0.1, 0.45],
    crosshairWidth: 0.5,
    crosshairWidthUnit: "mm",
    show3Dcrosshair: false,
    isColorbar: false,
    isOrientCube: false,
    dragAndDropEnabled: false,
    loadingText: "loading...", // Niivue's font has no "…"
    isResizeCanvas: true,
  });
  await nv.attachToCanvas($("nv-canvas"));
  nv.onLocationChange = (loc) => {
    // a click in any plane moves the slice shown in the slice controls
    if (!state.viewer || !loc || !loc.vox) return;
    const s = Math.round(loc.vox[2]);
    if (s >= 0 && s < state.viewer.n_slices && s !== state.slice) {
      state.slice = s;
      $("slice-slider").value = s;
      $("slice-label").textContent = indexLabel(s, state.viewer.n_slices);
    }
  };
  nvState.nv = nv;
  return nv;
}

async function loadNiivueStudy() {
  const id = state.selected;
  const nv = await ensureNiivue();
  const version = viewerVersion();
  if (nvState.study === id && nvState.version === version && nv.volumes.length === 2) return;
  const base = "/api/studies/" + id + "/volumes/";
  const query = "?v=" + version;
  nvState.study = null;
  await nv.loadVolumes([
    { url: withToken(base + "image.nii.gz" + query), name: "image.nii.gz", colormap: "gray", cal_min: 0, cal_max: 255 },
    { url: withToken(base + "labels.nii.gz" + query), name: "labels.nii.gz", opacity: overlayOpacity() },
  ]);
  if (state.selected !== id) return; // another study was chosen meanwhile
  nv.volumes[1].setColormapLabel(LABEL_LUT);
  nv.updateGLVolume();
  nvState.study = id;
  nvState.version = version;
}

function applyNiivueLayout() {
  const nv = nvState.nv;
  const v = state.viewer;
  const multi = $("nv-layout").value === "multi";
  $("nv-stage").style.aspectRatio = multi ? "4 / 3" : v.width + " / " + v.height;
  if (nv) nv.setSliceType(multi ? nv.sliceTypeMultiplanar : nv.sliceTypeAxial);
}

function updateNiivue() {
  if (!nvReady()) return;
  const nv = nvState.nv;
  for (const vol of nv.volumes) {
    if (nv.getFrame4D(vol.id) !== state.frame) nv.setFrame4D(vol.id, state.frame);
  }
  const pos = nv.scene.crosshairPos;
  const frac = nv.vox2frac([0, 0, state.slice]);
  if (Math.abs(pos[2] - frac[2]) > 1e-6) {
    nv.scene.crosshairPos = [pos[0], pos[1], frac[2]];
    nv.drawScene();
  }
}

async function setViewerMode(mode) {
  if (mode === "webgl" && !webglAvailable()) {
    setWebglStatus("This browser has no WebGL2: use the slice view.", true);
    mode = "slices";
  }
  stopPlay();
  state.mode = mode;
  document.querySelector('input[name="viewer-mode"][value="' + mode + '"]').checked = true;
  const webgl = mode === "webgl";
  $("viewer-stage").hidden = webgl;
  $("nv-stage").hidden = !webgl;
  $("nv-layout-label").hidden = !webgl;
  document.querySelector(".nv-hint").hidden = !webgl;
  // the interactive view zooms with the mouse wheel: the heart window applies to the slices
  $("zoom-toggle").disabled = webgl || !(state.viewer && state.viewer.heart_box);
  if (!webgl) {
    updateViewer();
    return;
  }
  applyNiivueLayout();
  setWebglStatus("Loading the volumes…");
  try {
    await loadNiivueStudy();
    if (state.mode !== "webgl") return;
    applyNiivueLayout();
    updateNiivue();
    updateOverlay();
    setWebglStatus("");
  } catch (e) {
    setWebglStatus("Interactive view unavailable: " + e.message, true);
    if (state.mode === "webgl") setViewerMode("slices");
  }
}

// --- volume curve (SVG) ------------------------------------------------------------------

const SVG = "http://www.w3.org/2000/svg";
const CURVE = { w: 640, h: 260, left: 52, right: 16, top: 14, bottom: 36 };

function svg(tag, attrs = {}, text = null) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== null) node.textContent = text;
  return node;
}

function curveScales() {
  const c = state.detail.volume_curve;
  const lv = c.lv_ml;
  const rv = c.rv_ml || [];
  const all = lv.concat(rv).filter((x) => x !== null);
  const max = Math.max(1, ...all) * 1.08;
  const n = lv.length;
  const x = (i) => CURVE.left + (n > 1 ? i / (n - 1) : 0.5) * (CURVE.w - CURVE.left - CURVE.right);
  const y = (v) => CURVE.top + (1 - v / max) * (CURVE.h - CURVE.top - CURVE.bottom);
  return { lv, rv, max, n, x, y };
}

// a round tick step (1, 2 or 5 times a power of ten) of at least ``raw`` mL
function niceStep(raw) {
  const p = Math.pow(10, Math.floor(Math.log10(Math.max(raw, 1e-9))));
  for (const m of [1, 2, 5, 10]) if (m * p >= raw) return m * p;
  return 10 * p;
}

// the hint for a cine, as index.html writes it (a pair's is set in drawCurve)
const CURVE_HINT = document.getElementById("curve-hint").textContent.replace(/\s+/g, " ").trim();

function drawCurve() {
  const box = $("curve");
  box.replaceChildren();
  const d = state.detail;
  if (!d || !d.volume_curve || !d.volume_curve.lv_ml) {
    $("curve-card").hidden = true;
    return;
  }
  $("curve-card").hidden = false;
  $("curve-hint").textContent = d.study && d.study.kind === "pair"
    ? "Click a volume on the curve to show it in the viewer. ED and ES are the two volumes " +
      "you uploaded; open diamonds mark the reported volumes where they differ (segmented " +
      "again with test-time augmentation, and your exclusions)."
    : CURVE_HINT;
  const { lv, rv, max, n, x, y } = curveScales();
  const bottom = CURVE.h - CURVE.bottom;
  box.append(svg("line", { x1: CURVE.left, y1: bottom, x2: CURVE.w - CURVE.right, y2: bottom, class: "axis" }));
  box.append(svg("line", { x1: CURVE.left, y1: CURVE.top, x2: CURVE.left, y2: bottom, class: "axis" }));
  const yStep = niceStep(max / 4);
  for (let v = 0; v <= max; v += yStep) {
    box.append(svg("line", { x1: CURVE.left, y1: y(v), x2: CURVE.w - CURVE.right, y2: y(v), class: "grid" }));
    box.append(svg("text", { x: CURVE.left - 6, y: y(v) + 4, class: "tick ytick", "text-anchor": "end" }, String(v)));
  }
  const step = Math.max(1, Math.ceil(n / 12));
  for (let i = 0; i < n; i += step) {
    box.append(svg("text", { x: x(i), y: bottom + 16, class: "tick", "text-anchor": "middle" }, String(i)));
  }
  box.append(svg("text", { x: (CURVE.left + CURVE.w) / 2, y: CURVE.h - 4, class: "axis-label", "text-anchor": "middle" }, "frame"));
  box.append(svg("text", { x: 12, y: CURVE.top + 90, class: "axis-label", transform: "rotate(-90 12 " + (CURVE.top + 90) + ")", "text-anchor": "middle" }, "volume (mL)"));
  for (const [name, frame] of [["ED", d.ed_frame], ["ES", d.es_frame]]) {
    if (frame === null || frame === undefined) continue;
    box.append(svg("line", { x1: x(frame), y1: CURVE.top, x2: x(frame), y2: bottom, class: "marker-" + name.toLowerCase() }));
    const right = x(frame) > CURVE.w / 2;
    box.append(svg("text", { x: x(frame) + (right ? -4 : 4), y: CURVE.top + 10, class: "tick", "text-anchor": right ? "end" : "start" }, name));
  }
  const series = [["lv", lv], ["rv", rv]];
  for (const [name, values] of series) {
    if (!values || values.length !== n) continue;
    const pts = values.map((v, i) => x(i) + "," + y(v || 0)).join(" ");
    box.append(svg("polyline", { points: pts, class: "line-" + name }));
    values.forEach((v, i) => {
      const dot = svg("circle", { cx: x(i), cy: y(v || 0), r: 3.5, class: "dot-" + name });
      dot.append(svg("title", {}, name.toUpperCase() + " frame " + i + ": " + fmt(v) + " mL"));
      box.append(dot);
    });
  }
  // the reported ED/ES volumes (those frames segmented again with test-time augmentation)
  const reported = d.reported_volumes || {};
  for (const [name, frame] of [["ED", d.ed_frame], ["ES", d.es_frame]]) {
    const r = reported[name];
    if (!r || frame === null || frame === undefined) continue;
    for (const [kind, values] of series) {
      const v = r[kind];
      if (v === null || v === undefined || !values || values.length !== n) continue;
      if (Math.abs(v - (values[frame] || 0)) < 0.05) continue;
      const cx = x(frame), cy = y(v), s = 5;
      const points = [[cx, cy - s], [cx + s, cy], [cx, cy + s], [cx - s, cy]].map((p) => p.join(",")).join(" ");
      const mark = svg("polygon", { points, class: "reported-" + kind });
      mark.append(svg("title", {}, kind.toUpperCase() + " at " + name + " as reported: " + fmt(v) + " mL"));
      box.append(mark);
    }
  }
  box.append(svg("text", { x: CURVE.w - CURVE.right - 80, y: CURVE.h - 4, class: "legend-lv" }, "● LV"));
  box.append(svg("text", { x: CURVE.w - CURVE.right - 36, y: CURVE.h - 4, class: "legend-rv" }, "● RV"));
  const marker = svg("line", { id: "curve-current", x1: 0, y1: CURVE.top, x2: 0, y2: bottom, class: "marker-current" });
  box.append(marker);
  // invisible hit areas: click a frame to show it
  for (let i = 0; i < n; i++) {
    const half = n > 1 ? (x(1) - x(0)) / 2 : 20;
    const hit = svg("rect", { x: x(i) - half, y: CURVE.top, width: 2 * half, height: bottom - CURVE.top, class: "hit" });
    hit.addEventListener("click", () => {
      if (!state.viewer) return;
      state.frame = Math.min(i, state.viewer.n_frames - 1);
      $("frame-slider").value = state.frame;
      updateViewer();
    });
    box.append(hit);
  }
  drawCurveMarker();
}

function drawCurveMarker() {
  const m = document.getElementById("curve-current");
  if (!m || !state.detail || !state.detail.volume_curve) return;
  const { x } = curveScales();
  m.setAttribute("x1", x(state.frame));
  m.setAttribute("x2", x(state.frame));
}

// --- start --------------------------------------------------------------------------------

function init() {
  initToken();
  for (const r of document.querySelectorAll('input[name="mode"]')) r.addEventListener("change", onModeChange);
  $("upload-form").addEventListener("submit", onUpload);
  $("exclude-form").addEventListener("submit", onReanalyze);
  $("token-form").addEventListener("submit", (e) => {
    e.preventDefault();
    state.token = $("token-input").value.trim();
    sessionStorage.setItem("cardioseg-token", state.token);
    $("token-error").hidden = true;
    $("token-box").hidden = true;
    $("main").hidden = false;
    start();
  });
  $("slice-slider").addEventListener("input", (e) => { state.slice = Number(e.target.value); updateViewer(); if (state.playing) preload(state.slice); });
  $("frame-slider").addEventListener("input", (e) => { state.frame = Number(e.target.value); updateViewer(); });
  $("overlay-toggle").addEventListener("change", updateOverlay);
  $("zoom-toggle").addEventListener("change", applyZoom);
  $("opacity-slider").addEventListener("input", updateOverlay);
  $("play-button").addEventListener("click", togglePlay);
  $("ed-button").addEventListener("click", () => { stopPlay(); state.frame = state.viewer.ed_frame; $("frame-slider").value = state.frame; updateViewer(); });
  $("es-button").addEventListener("click", () => { stopPlay(); state.frame = state.viewer.es_frame; $("frame-slider").value = state.frame; updateViewer(); });
  for (const r of document.querySelectorAll('input[name="viewer-mode"]')) {
    r.addEventListener("change", (e) => { if (e.target.checked) setViewerMode(e.target.value); });
  }
  $("nv-layout").addEventListener("change", () => { applyNiivueLayout(); updateNiivue(); });
  $("qc-more").addEventListener("click", () => { state.showAllReasons = !state.showAllReasons; renderReasons(); });
  document.addEventListener("keydown", onKey);
  // a study's address typed or pasted into this tab opens it; an address without one closes it
  window.addEventListener("hashchange", () => {
    const id = studyFromHash();
    if (id && id !== state.selected) selectStudy(id);
    else if (!id && state.selected) closeDetail();
  });
  start();
}

function start() {
  loadHealth();
  refreshStudies();
  const id = studyFromHash();
  if (id) selectStudy(id);
}

document.addEventListener("DOMContentLoaded", init);
