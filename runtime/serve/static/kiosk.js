// The kiosk page: camera or file in, POST /v1/predict, the answer drawn over the image.
// Plain browser JavaScript, no build step. `window.kiosk` exposes the last answer (tests read it).
'use strict';

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const TOKEN_KEY = 'florence2-serve-token';
const OPTION_NAMES = ['num_beams', 'max_new_tokens'];
const GOLDEN = 0.618033988749895; // hue step of runtime/annotate.py: the same colours as --annotate

const kiosk = { tasks: [], last: null, answered: 0, error: null, busy: false, stream: null };
window.kiosk = kiosk;
let token = sessionStorage.getItem(TOKEN_KEY) || localStorage.getItem(TOKEN_KEY) || '';
let autoTimer = null;
let toastTimer = null;

// ---- the API ---------------------------------------------------------------------------------

async function api(path, init = {}) {
  const headers = new Headers(init.headers || {});
  if (token) headers.set('Authorization', `Bearer ${token}`);
  const response = await fetch(path, { ...init, headers });
  if (response.status === 401) {
    await askForToken();
    return api(path, init);
  }
  let body;
  try { body = await response.json(); } catch (_) { body = { error: `HTTP ${response.status}` }; }
  if (!response.ok) throw new Error(body.error || `HTTP ${response.status}`);
  return body;
}

function askForToken() {
  // Asked once per session (or once per device with "remember"), then sent with every /v1 call.
  return new Promise((resolve) => {
    const dialog = $('token-dialog');
    $('token-form').onsubmit = () => {
      token = $('token').value.trim();
      sessionStorage.setItem(TOKEN_KEY, token);
      if ($('remember').checked) localStorage.setItem(TOKEN_KEY, token);
      else localStorage.removeItem(TOKEN_KEY);
      resolve();
    };
    if (!dialog.open) dialog.showModal();
  });
}

async function predict(blob, name) {
  const form = new FormData();
  form.append('image', blob, name);
  form.append('task', $('task').value);
  const text = $('text').value.trim();
  if (!$('text-field').hidden && text) form.append('text', text);
  for (const option of OPTION_NAMES) if (params.get(option)) form.append(option, params.get(option));
  const began = performance.now();
  const record = await api('/v1/predict', { method: 'POST', body: form });
  return { record, ms: performance.now() - began };
}

// ---- images as the model sees them ------------------------------------------------------------

// Browsers turn photos upright by their EXIF orientation; the runtime does not (neither does
// transformers), so the answer's coordinates refer to the unrotated pixels. The orientation tag
// of a JPEG is set to 1 (as stored) before decoding: Chromium 156 treats createImageBitmap's
// imageOrientation 'none' as 'from-image' and rotates anyway (measured), so the option alone is not
// enough. The upload itself is sent unchanged.
function withoutOrientation(buffer) {
  const bytes = new Uint8Array(buffer.slice(0));
  try {
    const view = new DataView(bytes.buffer);
    if (view.getUint16(0) !== 0xFFD8) return bytes; // not a JPEG
    let offset = 2;
    while (offset + 10 <= view.byteLength) {
      const marker = view.getUint16(offset);
      if ((marker & 0xFF00) !== 0xFF00 || marker === 0xFFDA) break; // start of scan: no more headers
      const length = view.getUint16(offset + 2);
      if (marker === 0xFFE1 && view.getUint32(offset + 4) === 0x45786966) resetOrientation(view, offset + 10);
      offset += 2 + length;
    }
  } catch (_) { /* a malformed header: decode it as it is */ }
  return bytes;
}

function resetOrientation(view, tiff) {
  const little = view.getUint16(tiff) === 0x4949;
  const ifd = tiff + view.getUint32(tiff + 4, little);
  const count = view.getUint16(ifd, little);
  for (let i = 0; i < count; i++) {
    const entry = ifd + 2 + i * 12;
    if (view.getUint16(entry, little) === 0x0112) view.setUint16(entry + 8, 1, little);
  }
}

async function bitmapOf(blob) {
  const raw = new Blob([withoutOrientation(await blob.arrayBuffer())], { type: blob.type });
  try {
    return await createImageBitmap(raw, { imageOrientation: 'none' });
  } catch (_) {
    return createImageBitmap(raw); // a browser without that option value: the tag is reset anyway
  }
}

// ---- drawing ------------------------------------------------------------------------------------

function labelColour(index) {
  const [r, g, b] = hsvToRgb((index * GOLDEN) % 1, 0.85, 0.95);
  return `rgb(${r}, ${g}, ${b})`;
}

function hsvToRgb(h, s, v) {
  const i = Math.floor(h * 6), f = h * 6 - i, p = v * (1 - s), q = v * (1 - s * f), t = v * (1 - s * (1 - f));
  const [r, g, b] = [[v, t, p], [q, v, p], [p, v, t], [p, q, v], [t, p, v], [v, p, q]][i % 6];
  return [r, g, b].map((c) => Math.trunc(c * 255));
}

function drawAnswer(bitmap, answer) {
  const canvas = $('canvas');
  canvas.width = bitmap.width;
  canvas.height = bitmap.height;
  const ctx = canvas.getContext('2d');
  ctx.drawImage(bitmap, 0, 0);
  showStage('canvas');
  if (!answer || typeof answer !== 'object') return;
  const painter = new Painter(ctx, bitmap.width, bitmap.height);
  const boxLabels = answer.bboxes_labels || answer.labels || [];
  const polygonLabels = answer.polygons_labels || answer.labels || [];
  (answer.polygons || []).forEach((shapes, i) => painter.polygons(shapes, polygonLabels[i] || ''));
  (answer.quad_boxes || []).forEach((quad, i) => painter.quad(quad, (answer.labels || [])[i] || ''));
  (answer.bboxes || []).forEach((box, i) => painter.box(box, boxLabels[i] || ''));
}

class Painter {
  constructor(ctx, width, height) {
    this.ctx = ctx;
    this.colours = new Map();
    this.line = Math.max(3, Math.round(Math.min(width, height) / 150));
    this.font = Math.max(14, Math.round(Math.min(width, height) / 30));
  }

  colour(label) {
    if (!this.colours.has(label)) this.colours.set(label, labelColour(this.colours.size));
    return this.colours.get(label);
  }

  box([x0, y0, x1, y1], label) { // a model may emit inverted boxes: drawn normalised
    const [left, right, top, bottom] = [Math.min(x0, x1), Math.max(x0, x1), Math.min(y0, y1), Math.max(y0, y1)];
    this.outline([[left, top], [right, top], [right, bottom], [left, bottom]], this.colour(label));
    this.label(label, left, top);
  }

  quad(coords, label) {
    const points = [];
    for (let i = 0; i + 1 < coords.length; i += 2) points.push([coords[i], coords[i + 1]]);
    this.outline(points, this.colour(label));
    this.label(label, ...points.reduce((a, b) => (b[1] < a[1] ? b : a)));
  }

  polygons(shapes, label) {
    const colour = this.colour(label);
    for (const coords of shapes) {
      const points = [];
      for (let i = 0; i + 1 < coords.length; i += 2) points.push([coords[i], coords[i + 1]]);
      if (points.length < 3) continue;
      this.ctx.globalAlpha = 0.3;
      this.path(points);
      this.ctx.fillStyle = colour;
      this.ctx.fill();
      this.ctx.globalAlpha = 1;
      this.outline(points, colour);
      this.label(label, ...points.reduce((a, b) => (b[1] < a[1] ? b : a)));
    }
  }

  path(points) {
    this.ctx.beginPath();
    points.forEach(([x, y], i) => (i ? this.ctx.lineTo(x, y) : this.ctx.moveTo(x, y)));
    this.ctx.closePath();
  }

  outline(points, colour) {
    this.path(points);
    this.ctx.lineWidth = this.line;
    this.ctx.strokeStyle = colour;
    this.ctx.lineJoin = 'miter';
    this.ctx.stroke();
  }

  label(text, x, y) {
    if (!text) return;
    const ctx = this.ctx, size = this.font, pad = Math.round(size / 4);
    ctx.font = `${size}px system-ui, sans-serif`;
    const width = ctx.measureText(text).width + 2 * pad, height = size + 2 * pad;
    // Above the box's top-left corner, or just inside it when that is off the image.
    const top = y - height >= 0 ? y - height : y;
    ctx.fillStyle = this.colour(text);
    ctx.fillRect(x, top, width, height);
    ctx.fillStyle = '#000';
    ctx.textBaseline = 'top';
    ctx.fillText(text, x + pad, top + pad);
  }
}

function describe(answer) {
  if (typeof answer === 'string') return answer;
  if (!answer || typeof answer !== 'object') return String(answer);
  const labels = answer.labels || [...(answer.bboxes_labels || []), ...(answer.polygons_labels || [])];
  const count = (answer.bboxes || []).length + (answer.quad_boxes || []).length + (answer.polygons || []).length;
  const named = labels.filter(Boolean);
  return `${count} region${count === 1 ? '' : 's'}${named.length ? ': ' + named.join(', ') : ''}`;
}

// ---- one request, from any source ------------------------------------------------------------------

async function run(blob, name) {
  if (kiosk.busy) return;
  kiosk.busy = true;
  document.body.dataset.state = 'busy';
  $('capture').disabled = true;
  try {
    const bitmap = await bitmapOf(blob);
    drawAnswer(bitmap, null); // the image at once; its answer when it comes
    const { record, ms } = await predict(blob, name);
    const answer = record.result;
    drawAnswer(bitmap, answer);
    $('answer').textContent = describe(answer);
    $('latency').textContent = `${Math.round(ms)} ms (model ${Math.round(record.seconds * 1000)} ms)`;
    kiosk.last = { record, ms, width: bitmap.width, height: bitmap.height };
    kiosk.answered += 1;
    document.body.dataset.state = 'answered';
  } catch (err) {
    showError(err.message || String(err));
    document.body.dataset.state = 'error';
  } finally {
    kiosk.busy = false;
    $('capture').disabled = !kiosk.stream;
  }
}

function showError(message) {
  kiosk.error = message;
  const toast = $('toast');
  toast.textContent = message;
  toast.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => { toast.hidden = true; }, 5000); // a short message that goes away
}

function showStage(which) {
  $('video').hidden = which !== 'video';
  $('canvas').hidden = which !== 'canvas';
  $('drop-hint').hidden = which !== 'empty';
  $('live').hidden = !(kiosk.stream && which === 'canvas');
}

// ---- sources: camera, timer, file picker, drop zone ---------------------------------------------------

async function startCamera() {
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) return; // needs localhost or HTTPS
  try {
    kiosk.stream = await navigator.mediaDevices.getUserMedia({ video: { facingMode: 'environment' }, audio: false });
  } catch (err) {
    kiosk.stream = null;
    return; // no camera, or refused: the file picker remains
  }
  $('video').srcObject = kiosk.stream;
  await $('video').play().catch(() => {});
  $('capture').disabled = false;
  showStage('video');
}

function captureFrame() {
  const video = $('video');
  if (!kiosk.stream || !video.videoWidth) return;
  const frame = document.createElement('canvas');
  frame.width = video.videoWidth;
  frame.height = video.videoHeight;
  frame.getContext('2d').drawImage(video, 0, 0);
  frame.toBlob((blob) => blob && run(blob, 'camera.jpg'), 'image/jpeg', 0.92);
}

function scheduleAuto() {
  clearTimeout(autoTimer);
  if (!$('auto').checked || !kiosk.stream) return;
  autoTimer = setTimeout(async () => {
    captureFrame();
    while (kiosk.busy) await new Promise((r) => setTimeout(r, 100)); // never two at once
    scheduleAuto();
  }, Number($('every').value) * 1000);
}

function wireInputs() {
  $('capture').onclick = captureFrame;
  $('auto').onchange = scheduleAuto;
  $('every').onchange = scheduleAuto;
  $('live').onclick = () => showStage('video');
  $('file').onchange = () => {
    const file = $('file').files[0];
    if (file) run(file, file.name);
    $('file').value = ''; // the same file again is a new choice
  };
  const stage = $('stage');
  stage.addEventListener('dragover', (e) => { e.preventDefault(); stage.classList.add('dragging'); });
  stage.addEventListener('dragleave', () => stage.classList.remove('dragging'));
  stage.addEventListener('drop', (e) => {
    e.preventDefault();
    stage.classList.remove('dragging');
    const file = e.dataTransfer.files[0];
    if (file) run(file, file.name);
  });
  $('task').onchange = showTextField;
}

function showTextField() {
  const task = kiosk.tasks.find((t) => t.task === $('task').value);
  $('text-field').hidden = !(task && task.takes_text);
}

async function loadTasks() {
  const { tasks } = await api('/v1/tasks');
  kiosk.tasks = tasks;
  const select = $('task');
  select.replaceChildren(...tasks.map((t) => new Option(t.task, t.task)));
  const wanted = params.get('task') || '<OD>';
  if (tasks.some((t) => t.task === wanted)) select.value = wanted;
  showTextField();
  const info = await api('/v1/info');
  $('model-info').textContent = `${info.target} ${info.precision} on ${info.device}`;
}

async function start() {
  wireInputs();
  showStage('empty');
  const every = Number(params.get('every'));
  if (every > 0) {
    if (![...$('every').options].some((o) => Number(o.value) === every)) $('every').add(new Option(`${every} s`, every));
    $('every').value = String(every);
    $('auto').checked = true;
  }
  try {
    await loadTasks();
  } catch (err) {
    showError(err.message || String(err));
  }
  await startCamera();
  scheduleAuto();
  document.body.dataset.state = 'ready';
}

start();
