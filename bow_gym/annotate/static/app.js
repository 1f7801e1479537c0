// bow-gym annotate: the page. Plain JS, no build step. It asks the server for the current
// task, draws the image, the mask and the proposed change, and sends the person's answer.
"use strict";

const $ = (id) => document.getElementById(id);
const TOKEN_KEY = "bow-gym-annotate-token";
const state = { token: null, task: null, view: "before", busy: false, images: new Map() };

function takeTokenFromUrl() {
  // A link "…/#token=XYZ" signs in once; the token then lives in this browser only (the
  // fragment is never sent to a server) and is removed from the address bar.
  const m = location.hash.match(/token=([^&]+)/);
  if (m) {
    localStorage.setItem(TOKEN_KEY, decodeURIComponent(m[1]));
    history.replaceState(null, "", location.pathname);
  }
  state.token = localStorage.getItem(TOKEN_KEY);
}

async function api(method, path, body) {
  const headers = { Authorization: "Bearer " + state.token };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const resp = await fetch(path, { method, headers,
    body: body === undefined ? undefined : JSON.stringify(body) });
  if ((resp.headers.get("Content-Type") || "").startsWith("image/")) {
    if (!resp.ok) throw Object.assign(new Error("image " + resp.status), { status: resp.status });
    return resp.blob();
  }
  const data = await resp.json().catch(() => ({}));
  if (!resp.ok) {
    throw Object.assign(new Error(data.error || resp.statusText), { status: resp.status });
  }
  return data;
}

function show(section) {
  for (const id of ["login", "work", "finished"]) $(id).hidden = id !== section;
  $("logout").hidden = section === "login";
}

function message(text, isError) {
  const el = $("message");
  el.textContent = text || "";
  el.className = "message" + (isError ? " error" : "");
}

function unpack(b64, size) {
  const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  const out = new Uint8Array(size * size);
  for (let i = 0; i < out.length; i++) out[i] = (bytes[i >> 3] >> (7 - (i & 7))) & 1;
  return out;
}

async function loadImage(id) {
  if (!state.images.has(id)) {
    const blob = await api("GET", "/api/image?id=" + encodeURIComponent(id));
    state.images.set(id, await createImageBitmap(blob));
    if (state.images.size > 8) state.images.delete(state.images.keys().next().value);
  }
  return state.images.get(id);
}

function overlay(task, view) {
  // Working-resolution overlay (size x size), scaled up without smoothing: the mask in green,
  // the cells the click would change outlined in yellow, hatched in the "after" view.
  const n = task.size;
  const before = unpack(task.mask, n), after = unpack(task.after, n);
  const shown = view === "after" ? after : before;
  const img = new ImageData(n, n);
  const changed = (i) => before[i] !== after[i];
  for (let y = 0; y < n; y++) {
    for (let x = 0; x < n; x++) {
      const i = y * n + x, o = i * 4;
      const edge = changed(i) && (x === 0 || y === 0 || x === n - 1 || y === n - 1 ||
        !changed(i - 1) || !changed(i + 1) || !changed(i - n) || !changed(i + n));
      if (edge) { img.data.set([242, 183, 5, 255], o); continue; }
      if (changed(i) && view === "after" && ((x + y) % 4 === 0)) {
        img.data.set([242, 183, 5, 150], o); continue;
      }
      if (shown[i]) img.data.set([56, 200, 110, 110], o);
    }
  }
  return img;
}

async function draw() {
  const task = state.task;
  if (!task || task.done) return;
  const bitmap = await loadImage(task.image.id);
  if (state.task !== task) return;  // a newer task arrived meanwhile
  const canvas = $("canvas"), stage = $("stage");
  const scale = Math.min((stage.clientWidth - 24) / bitmap.width,
                         (stage.clientHeight - 24) / bitmap.height);
  canvas.width = Math.round(bitmap.width * scale);
  canvas.height = Math.round(bitmap.height * scale);
  const ctx = canvas.getContext("2d");
  ctx.drawImage(bitmap, 0, 0, canvas.width, canvas.height);
  const off = new OffscreenCanvas(task.size, task.size);
  off.getContext("2d").putImageData(overlay(task, state.view), 0, 0);
  ctx.imageSmoothingEnabled = false;
  ctx.drawImage(off, 0, 0, canvas.width, canvas.height);
  // The click: a dot at the pixel's centre (the env works at size x size, the whole image).
  const p = task.proposal;
  const cx = (p.x + 0.5) * canvas.width / task.size, cy = (p.y + 0.5) * canvas.height / task.size;
  ctx.beginPath();
  ctx.arc(cx, cy, 9, 0, 2 * Math.PI);
  ctx.fillStyle = p.label === "foreground" ? "#38c86e" : "#e5533d";
  ctx.fill();
  ctx.lineWidth = 3;
  ctx.strokeStyle = "#fff";
  ctx.stroke();
  $("view-badge").textContent = state.view === "after" ? "AFTER the click" : "BEFORE (now)";
}

function render(task) {
  state.task = task;
  const pr = task.progress;
  $("progress-fill").style.width = (100 * (pr.done + pr.skipped) / pr.images) + "%";
  $("progress-text").textContent = task.done
    ? `${pr.done} of ${pr.images} images done`
    : `Image ${task.image.number} of ${task.image.of} · click ${task.click} of ` +
      `${task.clicks_per_image} · ${task.clicks_left} left · ${pr.done} done`;
  $("undo").disabled = !task.can_undo;
  $("undo-finished").disabled = !task.can_undo;
  if (task.done) {
    show("finished");
    $("finished-text").textContent =
      `${pr.done} images finished, ${pr.skipped} skipped; you gave ${pr.my_answers} answers.`;
    return;
  }
  show("work");
  state.view = "before";
  const p = task.proposal;
  $("image-title").textContent = task.image.id;
  $("proposal-text").innerHTML = "";
  const label = document.createElement("span");
  label.className = "label " + p.label;
  label.textContent = p.label;
  $("proposal-text").append("Mark as ", label);
  const pct = (100 * task.pixels_changed / (task.size * task.size)).toFixed(1);
  $("change-text").textContent = task.pixels_changed
    ? `It would change ${pct}% of the image (outlined in yellow).`
    : "It would change nothing (the region already has this label).";
  const hist = $("history");
  hist.innerHTML = "";
  for (const h of task.history) {
    const li = document.createElement("li");
    const a = document.createElement("span");
    a.className = h.answer;
    a.textContent = h.answer;
    li.title = `answered by ${h.by} at ${h.at}`;
    li.append(`${h.click}. `, a);
    hist.append(li);
  }
  if (!task.history.length) hist.innerHTML = "<li class=\"muted\">no answer yet</li>";
  setView("before");
}

function setView(view) {
  state.view = view;
  $("view-before").classList.toggle("on", view === "before");
  $("view-after").classList.toggle("on", view === "after");
  draw().catch((e) => message(e.message, true));
}

async function act(fn, note) {
  if (state.busy) return;
  state.busy = true;
  document.body.classList.add("busy");
  try {
    const task = await fn();
    message(note || "");
    render(task);
  } catch (e) {
    if (e.status === 401 || e.status === 403 && /disabled/.test(e.message)) {
      signOut(e.message);
    } else {
      message(e.message, true);
      if (e.status === 409) {  // stale page (another tab, an undo): show the current task
        try { render(await api("POST", "/api/next", {})); } catch (_) { /* keep the message */ }
      }
    }
  } finally {
    state.busy = false;
    document.body.classList.remove("busy");
  }
}

const answer = (value) => act(() => {
  if (!state.task || state.task.done) throw new Error("nothing to answer");
  return api("POST", "/api/answer", { proposal: state.task.proposal.id, answer: value });
}, value === "better" ? "Saved: better" : "Saved: worse");
const skip = () => act(() => {
  if (!state.task || state.task.done) throw new Error("nothing to skip");
  return api("POST", "/api/skip", { image: state.task.image.id });
}, "Image skipped");
const undo = () => act(() => api("POST", "/api/undo", {}), "Last answer undone");

function signOut(reason) {
  localStorage.removeItem(TOKEN_KEY);
  state.token = null;
  $("login-error").textContent = reason || "";
  show("login");
  $("token").focus();
}

async function start() {
  try {
    const me = await api("GET", "/api/me");
    $("who").textContent = me.annotator;
    $("project").textContent = `${me.project} · ${me.images} images · agent ${me.agent}`;
    render(await api("POST", "/api/next", {}));
  } catch (e) {
    if (e.status === 401 || e.status === 403) signOut(e.message);
    else { show("work"); message(e.message, true); }
  }
}

document.addEventListener("keydown", (ev) => {
  if (ev.target instanceof HTMLInputElement || ev.ctrlKey || ev.metaKey || ev.altKey) return;
  const key = ev.key.toLowerCase();
  if (key === " ") {
    ev.preventDefault();
    if (state.task && !state.task.done) setView(state.view === "before" ? "after" : "before");
    return;
  }
  const handler = { b: () => answer("better"), w: () => answer("worse"), s: skip, u: undo }[key];
  if (handler && !ev.repeat) { ev.preventDefault(); handler(); }
});
$("better").onclick = () => answer("better");
$("worse").onclick = () => answer("worse");
$("skip").onclick = skip;
$("undo").onclick = undo;
$("undo-finished").onclick = undo;
$("view-before").onclick = () => setView("before");
$("view-after").onclick = () => setView("after");
$("logout").onclick = () => signOut("");
$("login-form").onsubmit = (ev) => {
  ev.preventDefault();
  const t = $("token").value.trim();
  if (!t) return;
  localStorage.setItem(TOKEN_KEY, t);
  state.token = t;
  $("token").value = "";
  start();
};
window.addEventListener("resize", () => draw().catch(() => {}));

takeTokenFromUrl();
if (state.token) start(); else signOut("");
