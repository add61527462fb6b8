// mat-fast serve's page: open an image, paint the area to fill, send image + mask to the
// server's queue, show the result. Everything here runs offline: no external scripts.
import { MaskLayer, maskFileToBitmap } from "/static/mask.js";

const $ = (id) => document.getElementById(id);
const ui = {
  stage: $("stage"), frame: $("frame"), empty: $("empty"), photo: $("photo"),
  maskCanvas: $("mask"), cursor: $("cursor"), file: $("file"), sample: $("sample"),
  weights: $("weights"), brush: $("tool-brush"), erase: $("tool-erase"), size: $("size"),
  sizeValue: $("size-value"), undo: $("undo"), redo: $("redo"), clear: $("clear"),
  maskFile: $("mask-file"), seed: $("seed"), fill: $("fill"), another: $("another"),
  cancel: $("cancel"), before: $("view-before"), after: $("view-after"),
  download: $("download"), downloadAs: $("download-as"), progress: $("progress"), message: $("message"), dims: $("dims"),
};
const MAX_SEED = 4294967295;
const POLL_MS = 400;
// Originals in these formats can also be saved as such (the browser re-encodes the result).
const LOSSY_FORMATS = { "image/jpeg": "JPEG", "image/webp": "WebP" };

const mask = new MaskLayer(ui.maskCanvas);
const state = {
  limits: { max_megapixels: 50, max_upload_mb: 100 },
  original: null, // { file, bitmap, width, height, name }
  result: null, // { blob, bitmap, url, seed }
  view: "before",
  tool: "brush",
  painting: false,
  job: null, // id of the fill in progress
};

// ---- messages and buttons --------------------------------------------------------------
function say(text, kind = "") {
  ui.message.textContent = text;
  ui.message.className = kind;
}

function refresh() {
  const loaded = Boolean(state.original);
  const busy = Boolean(state.job);
  ui.undo.disabled = !loaded || !mask.canUndo;
  ui.redo.disabled = !loaded || !mask.canRedo;
  ui.clear.disabled = !loaded || !mask.canUndo;
  ui.fill.disabled = !loaded || busy;
  ui.another.disabled = !loaded || busy || !state.result;
  ui.cancel.hidden = !busy;
  ui.progress.hidden = !busy;
  ui.before.disabled = ui.after.disabled = !state.result;
  ui.download.classList.toggle("disabled", !state.result);
  ui.download.setAttribute("aria-disabled", String(!state.result));
  const format = state.original && LOSSY_FORMATS[state.original.file.type];
  ui.downloadAs.hidden = !state.result || !format;
  if (format) ui.downloadAs.textContent = `Download ${format}`;
  for (const [button, on] of [[ui.brush, state.tool === "brush"], [ui.erase, state.tool === "erase"],
    [ui.before, state.view === "before"], [ui.after, state.view === "after"]]) {
    button.classList.toggle("on", on);
    button.setAttribute("aria-pressed", String(on));
  }
  ui.frame.classList.toggle("after", state.view === "after");
  ui.sizeValue.textContent = ui.size.value;
  const o = state.original;
  ui.dims.textContent = o ? `${o.name} · ${o.width}×${o.height}` : "";
}

// ---- layout: the picture as large as the stage allows, canvases at device resolution ----
function layout() {
  const o = state.original;
  if (!o) return;
  const pad = 24;
  const fit = Math.min((ui.stage.clientWidth - pad * 2) / o.width, (ui.stage.clientHeight - pad * 2) / o.height);
  const cssW = Math.max(1, Math.floor(o.width * fit));
  const cssH = Math.max(1, Math.floor(o.height * fit));
  ui.frame.style.width = `${cssW}px`;
  ui.frame.style.height = `${cssH}px`;
  const dpr = window.devicePixelRatio || 1;
  const w = Math.round(cssW * dpr);
  const h = Math.round(cssH * dpr);
  ui.photo.width = w;
  ui.photo.height = h;
  mask.resize(w, h);
  drawPhoto();
}

function drawPhoto() {
  const bitmap = state.view === "after" && state.result ? state.result.bitmap : state.original.bitmap;
  const ctx = ui.photo.getContext("2d");
  ctx.imageSmoothingQuality = "high";
  ctx.clearRect(0, 0, ui.photo.width, ui.photo.height);
  ctx.drawImage(bitmap, 0, 0, ui.photo.width, ui.photo.height);
}

function setView(view) {
  if (view === "after" && !state.result) return;
  state.view = view;
  if (state.original) drawPhoto();
  refresh();
}

// ---- opening images --------------------------------------------------------------------
async function openImage(file, name) {
  if (!file) return;
  if (state.job) return say("Wait for the fill in progress, or cancel it, before opening another image.", "notice");
  if (file.size > state.limits.max_upload_mb * 1e6) {
    return say(`${name} is ${(file.size / 1e6).toFixed(1)} MB, over this server's ${state.limits.max_upload_mb} MB upload limit.`, "error");
  }
  let bitmap;
  try {
    bitmap = await createImageBitmap(file); // EXIF orientation applied, like the server does
  } catch {
    return say(`${name} is not an image this browser can show; open a PNG, JPEG or WebP file.`, "error");
  }
  const megapixels = (bitmap.width * bitmap.height) / 1e6;
  if (megapixels > state.limits.max_megapixels) {
    return say(`${name} is ${bitmap.width}×${bitmap.height} (${megapixels.toFixed(1)} MP), over this server's ${state.limits.max_megapixels} MP limit.`, "error");
  }
  forgetResult();
  state.original = { file, bitmap, width: bitmap.width, height: bitmap.height, name };
  state.view = "before";
  ui.empty.hidden = true;
  ui.frame.hidden = false;
  mask.reset(bitmap.width, bitmap.height);
  layout();
  refresh();
  say("Paint over what should go, then press Fill.");
}

function forgetResult() {
  if (state.result) URL.revokeObjectURL(state.result.url);
  state.result = null;
  ui.download.removeAttribute("href");
}

async function openSample() {
  try {
    const response = await fetch("/sample.png");
    if (!response.ok) throw new Error(`the server answered ${response.status}`);
    await openImage(await response.blob(), "sample.png");
  } catch (err) {
    say(`Could not load the sample: ${err.message}`, "error");
  }
}

async function loadMaskFile(file) {
  if (!file || !state.original) return;
  try {
    const { bitmap, width, height } = await maskFileToBitmap(file);
    mask.addImage(bitmap);
    setView("before");
    const o = state.original;
    if (width !== o.width || height !== o.height) {
      say(`The mask is ${width}×${height}; it was scaled to the image's ${o.width}×${o.height}.`, "notice");
    } else {
      say(`Loaded ${file.name}: white areas will be filled.`);
    }
  } catch {
    say(`${file.name} is not an image this browser can read; use a PNG mask (white = fill).`, "error");
  }
  refresh();
}

// ---- painting --------------------------------------------------------------------------
function imagePoint(event) {
  const rect = ui.maskCanvas.getBoundingClientRect();
  const o = state.original;
  return [((event.clientX - rect.left) / rect.width) * o.width, ((event.clientY - rect.top) / rect.height) * o.height];
}

function brushRadius() {
  // The slider is in screen pixels (what the user sees); the mask is kept in image pixels.
  const rect = ui.maskCanvas.getBoundingClientRect();
  return (Number(ui.size.value) / 2) * (state.original.width / rect.width);
}

function moveCursor(event) {
  const rect = ui.frame.getBoundingClientRect();
  const size = Number(ui.size.value);
  Object.assign(ui.cursor.style, {
    left: `${event.clientX - rect.left}px`, top: `${event.clientY - rect.top}px`,
    width: `${size}px`, height: `${size}px`,
  });
  ui.cursor.hidden = false;
}

ui.maskCanvas.addEventListener("pointerdown", (event) => {
  if (!state.original || event.button !== 0) return;
  event.preventDefault();
  ui.maskCanvas.setPointerCapture(event.pointerId);
  if (state.view === "after") setView("before"); // paint on what it applies to
  state.painting = true;
  const [x, y] = imagePoint(event);
  mask.begin(x, y, brushRadius(), state.tool === "erase");
});

ui.maskCanvas.addEventListener("pointermove", (event) => {
  if (!state.original) return;
  moveCursor(event);
  if (!state.painting) return;
  // Coalesced events: every sample the pointer made since the last frame, for a smooth line.
  const samples = event.getCoalescedEvents ? event.getCoalescedEvents() : [];
  for (const sample of samples.length ? samples : [event]) mask.extend(...imagePoint(sample));
});

function endStroke() {
  if (!state.painting) return;
  state.painting = false;
  mask.end();
  refresh();
}
ui.maskCanvas.addEventListener("pointerup", endStroke);
ui.maskCanvas.addEventListener("pointercancel", endStroke);
ui.maskCanvas.addEventListener("pointerleave", () => { ui.cursor.hidden = true; });

function setTool(tool) {
  state.tool = tool;
  refresh();
}

function resizeBrush(factor) {
  const next = Math.round(Number(ui.size.value) * factor);
  ui.size.value = String(Math.min(Number(ui.size.max), Math.max(Number(ui.size.min), next)));
  refresh();
}

function undo() { mask.undo(); refresh(); }
function redo() { mask.redo(); refresh(); }

// ---- filling ---------------------------------------------------------------------------
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function readSeed() {
  const text = ui.seed.value.trim();
  const seed = Number(text);
  if (text === "" || !Number.isInteger(seed) || seed < 0 || seed > MAX_SEED) {
    throw new Error(`the seed must be a whole number from 0 to ${MAX_SEED}`);
  }
  return seed;
}

async function requestJson(url, options) {
  const response = await fetch(url, options);
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(body.error || `the server answered ${response.status}`);
  return body;
}

function showWaiting(status, started) {
  if (status.state === "queued") {
    const ahead = status.position || 0;
    say(ahead ? `Waiting in the queue: ${ahead} fill${ahead > 1 ? "s" : ""} ahead of yours…` : "Starting…");
  } else {
    say(`Filling… ${((performance.now() - started) / 1000).toFixed(0)} s`);
  }
}

async function fill(newSeed) {
  if (!state.original || state.job) return;
  let seed;
  try {
    if (newSeed) ui.seed.value = String(Math.floor(Math.random() * 2 ** 31));
    seed = readSeed();
  } catch (err) {
    return say(`Cannot fill: ${err.message}.`, "error");
  }
  if (mask.isEmpty()) {
    return say("The mask is empty: nothing to fill, the image is unchanged. Paint over what should go first.", "notice");
  }
  const started = performance.now();
  let mine = (state.job = "sending"); // which fill this call runs, to notice a cancel
  refresh();
  say("Sending…");
  try {
    const form = new FormData();
    form.append("image", state.original.file, state.original.name);
    form.append("mask", await mask.toBlob(), "mask.png");
    form.append("seed", String(seed));
    let status = await requestJson("/api/jobs", { method: "POST", body: form });
    if (state.job !== mine) { // cancelled while sending
      fetch(`/api/jobs/${status.id}`, { method: "DELETE" }).catch(() => {});
      return;
    }
    mine = state.job = status.id;
    while (status.state === "queued" || status.state === "running") {
      showWaiting(status, started);
      await sleep(POLL_MS);
      if (state.job !== mine) return; // cancelled meanwhile
      status = await requestJson(`/api/jobs/${status.id}`);
    }
    if (status.state !== "done") throw new Error(status.error || `the fill was ${status.state}`);
    const response = await fetch(`/api/jobs/${status.id}/result`);
    if (!response.ok) throw new Error((await response.json().catch(() => ({}))).error || `the server answered ${response.status}`);
    const blob = await response.blob();
    await showResult(blob, seed);
    const took = ((performance.now() - started) / 1000).toFixed(1);
    if (status.notice) say(`Nothing filled: ${status.notice}.`, "notice");
    else say(`Filled in ${took} s with seed ${seed}. Before/After compares; Another tries a new seed.`, "ok");
  } catch (err) {
    if (state.job === mine) say(`Fill failed: ${err.message}.`, "error");
  } finally {
    if (state.job === mine) state.job = null;
    refresh();
  }
}

async function showResult(blob, seed) {
  const bitmap = await createImageBitmap(blob);
  forgetResult();
  const url = URL.createObjectURL(blob);
  state.result = { blob, bitmap, url, seed };
  const stem = state.original.name.replace(/\.[^.]+$/, "");
  ui.download.href = url;
  ui.download.download = `${stem}-filled-${seed}.png`;
  setView("after");
}

// The result in the original's format: drawn at full size and encoded by the browser.
async function downloadAsOriginal() {
  const { result, original } = state;
  if (!result) return;
  const type = original.file.type;
  const canvas = document.createElement("canvas");
  canvas.width = result.bitmap.width;
  canvas.height = result.bitmap.height;
  canvas.getContext("2d").drawImage(result.bitmap, 0, 0);
  const blob = await new Promise((resolve) => canvas.toBlob(resolve, type, 0.95));
  if (!blob) return say(`This browser cannot write ${LOSSY_FORMATS[type]}; use Download PNG.`, "error");
  const link = document.createElement("a");
  link.href = URL.createObjectURL(blob);
  link.download = ui.download.download.replace(/\.png$/, type === "image/jpeg" ? ".jpg" : ".webp");
  link.click();
  setTimeout(() => URL.revokeObjectURL(link.href), 10000);
}

function cancelFill() {
  const id = state.job;
  if (!id) return;
  state.job = null;
  if (id !== "sending") fetch(`/api/jobs/${id}`, { method: "DELETE" }).catch(() => {});
  say("Cancelled: the fill was dropped.", "notice");
  refresh();
}

// ---- wiring ----------------------------------------------------------------------------
ui.file.addEventListener("change", () => {
  const file = ui.file.files[0];
  if (file) openImage(file, file.name);
  ui.file.value = ""; // the same file again must still fire "change"
});
ui.maskFile.addEventListener("change", () => {
  loadMaskFile(ui.maskFile.files[0]);
  ui.maskFile.value = "";
});
ui.sample.addEventListener("click", openSample);
ui.brush.addEventListener("click", () => setTool("brush"));
ui.erase.addEventListener("click", () => setTool("erase"));
ui.size.addEventListener("input", refresh);
ui.undo.addEventListener("click", undo);
ui.redo.addEventListener("click", redo);
ui.clear.addEventListener("click", () => { mask.clear(); refresh(); });
ui.fill.addEventListener("click", () => fill(false));
ui.another.addEventListener("click", () => fill(true));
ui.cancel.addEventListener("click", cancelFill);
ui.downloadAs.addEventListener("click", downloadAsOriginal);
ui.before.addEventListener("click", () => setView("before"));
ui.after.addEventListener("click", () => setView("after"));

ui.stage.addEventListener("dragover", (event) => {
  event.preventDefault();
  ui.stage.classList.add("dragging");
});
ui.stage.addEventListener("dragleave", () => ui.stage.classList.remove("dragging"));
ui.stage.addEventListener("drop", (event) => {
  event.preventDefault();
  ui.stage.classList.remove("dragging");
  const file = event.dataTransfer.files[0];
  if (file) openImage(file, file.name);
});
window.addEventListener("paste", (event) => {
  const item = [...event.clipboardData.items].find((i) => i.type.startsWith("image/"));
  if (item) openImage(item.getAsFile(), "pasted.png");
});

window.addEventListener("keydown", (event) => {
  if (event.target instanceof HTMLInputElement && event.target.type !== "range") return;
  const key = event.key.toLowerCase();
  if ((event.ctrlKey || event.metaKey) && key === "z") {
    event.preventDefault();
    event.shiftKey ? redo() : undo();
  } else if ((event.ctrlKey || event.metaKey) && key === "y") {
    event.preventDefault();
    redo();
  } else if (event.ctrlKey || event.metaKey || event.altKey) {
    return;
  } else if (key === "[") {
    resizeBrush(1 / 1.2);
  } else if (key === "]") {
    resizeBrush(1.2);
  } else if (key === "b") {
    setTool("brush");
  } else if (key === "e") {
    setTool("erase");
  }
});

new ResizeObserver(layout).observe(ui.stage);
// A page closed mid-fill drops its job, so the server does not compute it for nobody.
window.addEventListener("pagehide", () => {
  if (state.job && state.job !== "sending") fetch(`/api/jobs/${state.job}`, { method: "DELETE", keepalive: true });
});

// For scripts and the browser test: the mask as sent, and the last result, as PNG blobs.
window.matFast = { maskBlob: () => mask.toBlob(), resultBlob: () => state.result && state.result.blob };

requestJson("/api/info")
  .then((info) => {
    state.limits = info;
    ui.weights.textContent = info.weights;
    ui.weights.hidden = !info.weights;
    ui.weights.title = `device ${info.device}, network resolution ${info.resolution}`;
  })
  .catch((err) => say(`The server did not answer: ${err.message}`, "error"));
refresh();
