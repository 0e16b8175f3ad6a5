// The speaker's page: status from /api/now, live changes from /api/events (SSE, resumed with
// Last-Event-ID by the browser), writes with the session cookie and the X-CSRF-Token header.
"use strict";
const $ = (id) => document.getElementById(id);
let csrf = null;
let playing = false;
// True while the form has edits not yet saved: a `settings` event must not overwrite them.
let dirty = false;

async function api(method, path, body) {
  const headers = {};
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (csrf) headers["X-CSRF-Token"] = csrf;
  const r = await fetch(path, {method, headers, body: body === undefined ? undefined : JSON.stringify(body),
                               credentials: "same-origin"});
  let data = {};
  try { data = await r.json(); } catch (e) { /* empty */ }
  if (!r.ok) throw new Error(data.error || r.statusText);
  return data;
}

function showJellyfin(j) {
  const quick = $("quick");
  if (!j || j.state === "disabled") { $("jellyfin").textContent = "off"; quick.hidden = true; return; }
  if (j.state === "pairing") {
    $("jellyfin").textContent = "pairing";
    $("quick-code").textContent = j.code; quick.hidden = false;
  } else if (j.state === "connected") {
    $("jellyfin").textContent = "connected to " + j.server; quick.hidden = true;
  } else {
    $("jellyfin").textContent = "retrying: " + (j.last_error || ""); quick.hidden = true;
  }
}

function showVolume(percent) {
  $("volume-text").textContent = percent + " %";
  if (document.activeElement !== $("volume")) $("volume").value = percent;
}

// The output in use, and why a new DAC could not be opened (the old one stays in use).
function showAudio(a) {
  if (!a) return;
  const where = (a.device || "no sound card") + ", " + a.volume_control;
  $("audio").textContent = a.error ? "Output " + where + ". The new one failed: " + a.error : "Output " + where;
  $("audio").className = a.error ? "err" : "muted";
}

function showNow(n) {
  $("name").textContent = n.name; document.title = n.name;
  const a = n.active;
  playing = a.state === "playing";
  $("state").textContent = a.state;
  $("source").textContent = a.source;
  $("track").textContent = [a.title, (a.artists || []).join(", "), a.album].filter(Boolean).join(" — ");
  showVolume(n.percent);
  showJellyfin(n.jellyfin);
  showAudio(n.audio);
}

// The newest event id the page has shown. An /api/now answer read before it (its
// `last_event_id` is smaller) is older than what the page shows: asking again beats showing it
// (a refresh started by one event can be answered after the next event, e.g. a `jellyfin`
// pairing code right after a `settings` change, and would put the old state back).
let seen = 0;

async function refresh() {
  try {
    for (let tries = 0; tries < 5; tries++) {
      const n = await api("GET", "/api/now");
      if (!(n.last_event_id < seen)) { showNow(n); return; }
    }
  } catch (e) { $("conn").textContent = e.message; }
}

function listen() {
  const es = new EventSource("/api/events");
  es.onopen = () => { $("conn").textContent = "live"; };
  es.onerror = () => { $("conn").textContent = "reconnecting…"; };
  const on = (kind, f) => es.addEventListener(kind, (m) => {
    seen = Math.max(seen, Number(m.lastEventId) || 0);
    f(JSON.parse(m.data));
  });
  for (const k of ["playing", "paused", "stopped", "track", "source", "seeked"]) on(k, refresh);
  on("volume", (d) => showVolume(d.percent));
  on("jellyfin", showJellyfin);
  on("audio", showAudio);
  on("connection", (d) => { $("conn").textContent = "Spotify: " + d.state; });
  on("settings", () => { refresh(); loadSettings(); });
  on("resync", refresh);
}

async function session() {
  const s = await api("GET", "/api/session");
  csrf = s.csrf;
  $("set-password").hidden = s.password_set;
  $("login").hidden = !s.password_set || s.logged_in;
  $("logged-in").hidden = !s.logged_in;
  $("settings").hidden = !s.logged_in;
  if (s.logged_in) loadSettings();
}

async function loadSettings() {
  if (!csrf || dirty) return;
  const s = await api("GET", "/api/settings");
  // The user may have started typing while the request was on its way (a `settings` event
  // arrives just after every save): their edits win over the reload.
  if (dirty) return;
  const board = $("s-board");
  board.innerHTML = "<option value=''>(none)</option>";
  for (const b of s.boards) { const o = document.createElement("option"); o.value = o.textContent = b; board.appendChild(o); }
  for (const [k, v] of Object.entries(s.values)) {
    const el = $("s-" + k); if (!el) continue;
    if (el.type === "checkbox") el.checked = !!v; else el.value = v === null ? "" : v;
    el.disabled = k in s.locked;
  }
  $("locked").textContent = Object.entries(s.locked).map(([k, v]) => k + ": " + v).join("; ");
}

function message(id, text, ok) { const el = $(id); el.textContent = text; el.className = ok ? "ok" : "err"; }

$("set-password-btn").onclick = async () => {
  try { csrf = (await api("POST", "/api/password", {password: $("new-password").value})).csrf; message("auth-msg", "", true); await session(); }
  catch (e) { message("auth-msg", e.message); }
};
$("login-btn").onclick = async () => {
  try { csrf = (await api("POST", "/api/login", {password: $("password").value})).csrf; message("auth-msg", "", true); await session(); }
  catch (e) { message("auth-msg", e.message); }
};
$("logout-btn").onclick = async () => { await api("POST", "/api/logout", {}); csrf = null; await session(); };
$("settings-form").oninput = () => { dirty = true; };
$("settings-form").onchange = () => { dirty = true; };
$("settings-form").onsubmit = async (ev) => {
  ev.preventDefault();
  const body = {};
  for (const el of $("settings-form").elements) {
    if (!el.name || el.disabled) continue;
    body[el.name] = el.type === "checkbox" ? el.checked : (el.value === "" ? null : el.value);
  }
  try {
    const r = await api("POST", "/api/settings", body);
    dirty = false;
    message("settings-msg", "Saved." + (r.restart_needed.length ? " " + r.restart_needed.join(", ") + " apply at the next restart." : ""), true);
  } catch (e) { message("settings-msg", e.message); }
};
const command = (path, body) => async () => {
  try { await api("POST", path, body); message("player-msg", "", true); }
  catch (e) { message("player-msg", e.message); }
};
$("playpause").onclick = command("/api/playpause", {});
$("next").onclick = command("/api/next", {});
$("prev").onclick = command("/api/previous", {});
$("volume").onchange = () => command("/api/volume", {percent: Number($("volume").value)})();

refresh().then(listen);
session();
