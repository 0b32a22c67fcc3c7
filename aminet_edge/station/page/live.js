// The station's live view: server-sent events from /api/events (at most 2 pushes a second), the rest from the
// JSON API (station/web.py): the trend once per connection, the NG thumbnails at most once a second after an NG.
"use strict";
const $ = (sel, root = document) => root.querySelector(sel);
const cards = {};
const TREND = 300;  // points in a camera's trend (web.py TREND)
const tokenInput = $("#token");
tokenInput.value = sessionStorage.getItem("aminet-token") || "";
tokenInput.addEventListener("change", () => sessionStorage.setItem("aminet-token", tokenInput.value));

function card(name) {
  if (cards[name]) return cards[name];
  const node = $("#camera-card").content.firstElementChild.cloneNode(true);
  node.id = "camera-" + name;
  $(".name", node).textContent = name;
  $(".apply", node).addEventListener("click", () =>
    change(name, "sensitivity", { sensitivity: Number($(".sens", node).value) }));
  $(".pause", node).addEventListener("click", () =>
    change(name, cards[name].paused ? "resume" : "pause", {}));
  $(".frame", node).addEventListener("click", () => {  // the shown result full size: frame | heatmap | mask
    $("#full-img").src = `/api/cameras/${encodeURIComponent(name)}/panels.jpg?t=${Date.now()}`;
    $("#full").showModal();
  });
  $("#cameras").appendChild(node);
  cards[name] = { node, paused: false, ngIds: "", ngStale: true, sensEdited: false, trend: [], trendLoaded: false };
  $(".sens", node).addEventListener("input", () => { cards[name].sensEdited = true; });
  return cards[name];
}

async function change(name, what, body) {
  const c = card(name);
  const resp = await fetch(`/api/cameras/${encodeURIComponent(name)}/${what}`, {
    method: "POST", headers: { "Content-Type": "application/json", "Authorization": "Bearer " + tokenInput.value },
    body: JSON.stringify(body) });
  const text = await resp.text();
  $(".msg", c.node).textContent = resp.ok ? what + " applied" : `refused (${resp.status}): ${text}`;
  if (resp.ok) { c.sensEdited = false; refreshState(); }
}

function showResult(m) {
  const c = card(m.camera);
  const d = $(".decision", c.node);
  d.textContent = m.decision;
  d.className = "decision " + m.decision;
  $(".part", c.node).textContent = `${m.part_id} · #${m.id}` + (m.score === null ? "" : ` · score ${m.score.toPrecision(4)}`);
  const frame = $(".frame", c.node);  // the tile events update it; the first one shown is asked for
  if (!frame.src) frame.src = `/api/cameras/${encodeURIComponent(m.camera)}/frame.jpg?id=${m.id}`;
}

// the trend: loaded once per connection, then extended by the `trend` events (the points since the last push)
async function loadTrend(name) {
  const c = card(name);
  c.trendLoaded = true;
  const rows = await (await fetch(`/api/cameras/${encodeURIComponent(name)}/trend`)).json();
  const last = rows.length ? rows[rows.length - 1][0] : -1;
  c.trend = rows.concat(c.trend.filter(r => r[0] > last)).slice(-TREND);
  drawTrend(name);
}

function addTrend(t) {
  const c = card(t.camera), last = c.trend.length ? c.trend[c.trend.length - 1][0] : -1;
  c.trend = c.trend.concat(t.points.filter(r => r[0] > last)).slice(-TREND);
  if (t.points.some(r => r[3] === "NG")) c.ngStale = true;  // thumbnails refreshed with the next state (1 s)
  drawTrend(t.camera);
}


function drawTrend(name) {
  const rows = card(name).trend;
  const canvas = $(".trend", card(name).node), g = canvas.getContext("2d");
  const w = canvas.width, h = canvas.height, pad = 4;
  g.clearRect(0, 0, w, h);
  const vals = rows.flatMap(r => [r[1], r[2]]).filter(v => v !== null);
  if (!vals.length) return;
  const hi = Math.max(...vals), lo = Math.min(...vals), span = (hi - lo) || hi || 1;
  const top = hi + 0.1 * span, bottom = Math.max(0, lo - 0.1 * span);
  const x = i => pad + (w - 2 * pad) * (rows.length < 2 ? 0.5 : i / (rows.length - 1));
  const y = v => h - pad - (h - 2 * pad) * (v - bottom) / (top - bottom);
  g.strokeStyle = "#d62828"; g.setLineDash([6, 4]); g.beginPath();   // the threshold in force at each result
  rows.forEach((r, i) => { if (r[2] !== null) g.lineTo(x(i), y(r[2])); });
  g.stroke(); g.setLineDash([]);
  g.strokeStyle = "#3a6ea5"; g.beginPath();
  rows.forEach((r, i) => { if (r[1] !== null) g.lineTo(x(i), y(r[1])); });
  g.stroke();
  rows.forEach((r, i) => {
    if (r[1] === null) return;
    g.fillStyle = r[3] === "NG" ? "#d62828" : "#1f9d55";
    g.fillRect(x(i) - 1.5, y(r[1]) - 1.5, 3, 3);
  });
}

async function refreshNg(name) {
  const c = card(name);
  const rows = await (await fetch(`/api/cameras/${encodeURIComponent(name)}/ng`)).json();
  const ids = rows.map(r => r.id).join(",");
  if (ids === c.ngIds) return;
  c.ngIds = ids;
  const box = $(".ng", c.node), kept = {};
  for (const img of box.children) kept[img.dataset.id] = img;
  box.replaceChildren(...rows.map(r => {  // thumbnails already shown are kept, not loaded again
    if (kept[r.id]) return kept[r.id];
    const img = document.createElement("img");
    img.dataset.id = r.id;
    img.src = `/api/results/${r.id}/image`;
    img.title = `${r.part_id} · #${r.id} · ${r.normalized.toFixed(2)}× threshold`;
    img.addEventListener("click", () => { $("#full-img").src = `/api/results/${r.id}/overlay`; $("#full").showModal(); });
    return img;
  }));
}

function fmt(v, digits = 1) { return v === null || v === undefined ? "—" : Number(v).toFixed(digits); }

function showState(s) {
  const hc = $("#health-cameras"), rows = [];
  for (const [name, cam] of Object.entries(s.cameras)) {
    const c = card(name), n = cam.counts, total = n.OK + n.NG + n.ERROR;
    c.paused = cam.paused;
    $(".pause", c.node).textContent = cam.paused ? "resume" : "pause";
    $(".counts", c.node).textContent = `OK ${n.OK} · NG ${n.NG} · ERROR ${n.ERROR} · yield ` +
      (total ? (100 * n.OK / total).toFixed(1) + " %" : "—") + ` · threshold ${fmt(cam.threshold, 5)}`;
    if (!c.sensEdited && cam.sensitivity !== null) $(".sens", c.node).value = cam.sensitivity;
    $(".controls", c.node).title = s.web.writable ? "" : "read-only: no token is configured";
    if (c.ngStale) { c.ngStale = false; refreshNg(name); }
    if (!c.trendLoaded) loadTrend(name);
    if (cam.last && !$(".frame", c.node).src) showResult(cam.last);
    const lat = cam.latency_ms ? `${fmt(cam.latency_ms.p50)} / ${fmt(cam.latency_ms.p99)} ms` : "—";
    const up = cam.source === "running" || cam.source === "finished";
    rows.push(`<tr><td>${name}</td><td class="${up ? "up" : "down"}">${esc(cam.source)}</td>` +
      `<td>${cam.paused ? "paused" : "inspecting"}</td><td>${cam.queued}</td><td>${lat}</td>` +
      `<td>${esc(cam.backend)}</td><td>${esc(cam.model || "")}</td></tr>`);
  }
  hc.innerHTML = rows.join("");
  $("#health-outputs").innerHTML = Object.entries(s.outputs).map(([name, o]) => {
    const queued = "queued" in o, up = queued ? !o.last_error : true;
    return `<tr><td>${name}</td><td class="${up ? "up" : "down"}">${up ? "up" : esc(o.last_error)}</td>` +
      `<td>${queued ? o.queued : "—"}</td><td>${o.delivered ?? "—"}</td><td>${o.dropped ?? "—"}</td></tr>`;
  }).join("") || "<tr><td colspan=5 class=muted>no outputs configured</td></tr>";
  $("#health-host").textContent = `CPU: load ${fmt(s.host.load_1min, 2)} on ${s.host.cpu_count} cores, ` +
    `station process ${fmt(s.host.station_cpu_percent)} % · archive ${s.archive.files} files`;
}

function esc(t) { const d = document.createElement("div"); d.textContent = String(t); return d.innerHTML; }

async function refreshState() { showState(await (await fetch("/api/state")).json()); }

const events = new EventSource("/api/events");
events.addEventListener("open", () => {  // (re)connected: the trends are loaded again
  $("#link").textContent = "live";
  for (const c of Object.values(cards)) c.trendLoaded = false;
});
events.addEventListener("error", () => { $("#link").textContent = "reconnecting…"; });
events.addEventListener("result", e => showResult(JSON.parse(e.data)));
events.addEventListener("state", e => showState(JSON.parse(e.data)));
events.addEventListener("trend", e => addTrend(JSON.parse(e.data)));
events.addEventListener("tile", e => {
  const t = JSON.parse(e.data);
  $(".frame", card(t.camera).node).src = "data:image/jpeg;base64," + t.jpeg;
});
refreshState();
