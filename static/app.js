// crablet event browser: plain JavaScript, no framework, no network access
// beyond this server's own API.
"use strict";

const PAGE = 50;        // events per page
const LIVE_ROWS = 200;  // rows kept in the live table
const $ = (id) => document.getElementById(id);

// Where the page view stands: the positions shown, and the direction.
let page = { first: null, last: null };
let live = null;        // AbortController of the live stream, when following

// The bearer token, when the server asks for one (401): kept for this tab
// only (sessionStorage), sent as an Authorization header on every call.
// Streams use fetch, not EventSource, which cannot send headers.
const TOKEN_KEY = "crablet-token";
let token = sessionStorage.getItem(TOKEN_KEY) || "";

async function api(path, init = {}) {
  const headers = Object.assign({}, init.headers || {});
  if (token) headers.authorization = "Bearer " + token;
  const response = await fetch(path, Object.assign({}, init, { headers }));
  if (response.status === 401) {
    askForToken(token ? "The token was refused (unknown or expired): enter another."
                      : "This crablet needs a token to read events.");
  }
  return response;
}

function askForToken(message) {
  $("auth-message").textContent = message;
  $("auth").hidden = false;
}

function useToken(value) {
  token = value.trim();
  if (token) sessionStorage.setItem(TOKEN_KEY, token); else sessionStorage.removeItem(TOKEN_KEY);
  $("auth").hidden = true;
  $("token").value = "";
  newest();
  refreshStats();
  if (live) { stopLive(); startLive(); }
}

function list(text) {
  return text.split(",").map((s) => s.trim()).filter((s) => s.length > 0);
}

function currentQuery() {
  const types = list($("types").value);
  const tags = list($("tags").value);
  if (types.length === 0 && tags.length === 0) return { items: [] };
  const item = {};
  if (types.length) item.types = types;
  if (tags.length) item.tags = tags;
  return { items: [item] };
}

function showError(message) {
  const el = $("error");
  el.hidden = !message;
  el.textContent = message || "";
}

function row(event, fresh) {
  const tr = document.createElement("tr");
  if (fresh) tr.className = "fresh";
  const pos = document.createElement("td");
  pos.className = "pos";
  pos.textContent = event.position;
  const type = document.createElement("td");
  type.className = "type";
  type.textContent = event.type;
  type.title = "Search this type";
  type.onclick = () => { $("types").value = event.type; $("tags").value = ""; search(); };
  const tags = document.createElement("td");
  for (const tag of event.tags) {
    const chip = document.createElement("span");
    chip.className = "tag";
    chip.textContent = tag;
    chip.title = "Search this tag";
    chip.onclick = () => { $("tags").value = tag; $("types").value = ""; search(); };
    tags.appendChild(chip);
  }
  const data = document.createElement("td");
  data.className = "data";
  const text = document.createElement("div");
  text.className = "clip";
  text.textContent = event.data;
  text.title = "Click to expand";
  text.onclick = () => text.classList.toggle("clip");
  data.appendChild(text);
  tr.append(pos, type, tags, data);
  return tr;
}

function fill(tbody, events, emptyText) {
  tbody.replaceChildren();
  if (events.length === 0) {
    const tr = document.createElement("tr");
    tr.className = "empty";
    const td = document.createElement("td");
    td.colSpan = 4;
    td.textContent = emptyText;
    tr.appendChild(td);
    tbody.appendChild(tr);
    return;
  }
  for (const e of events) tbody.appendChild(row(e, false));
}

async function read(options) {
  const params = new URLSearchParams({
    query: JSON.stringify(currentQuery()),
    options: JSON.stringify(options),
  });
  const response = await api("/read?" + params, { headers: { accept: "application/json" } });
  const body = await response.json();
  if (!response.ok) throw new Error(body.error ? body.error.message : response.statusText);
  return body;
}

// Shows a page; events are displayed newest first.
async function show(options) {
  try {
    let events = await read(options);
    if (!options.backwards) events.reverse();
    if (events.length === 0 && (options.from || options.after)) return; // nothing further
    showError("");
    fill($("page"), events, "No matching events.");
    page.first = events.length ? events[0].position : null;            // newest shown
    page.last = events.length ? events[events.length - 1].position : null; // oldest shown
    $("page-info").textContent = events.length
      ? `positions ${page.last}–${page.first} (${events.length} shown)`
      : "";
  } catch (e) {
    showError(e.message);
  }
}

const newest = () => show({ backwards: true, limit: PAGE });
const oldest = () => show({ limit: PAGE });
const older = () => page.last && page.last > 1
  ? show({ backwards: true, from: page.last - 1, limit: PAGE }) : undefined;
const newer = () => page.first ? show({ after: page.first, limit: PAGE }) : undefined;

function search() {
  newest();
  if (live) { stopLive(); startLive(); }
}

// Follows the log with fetch + ReadableStream (NDJSON), so that the
// Authorization header can be sent, which EventSource cannot do.
async function startLive() {
  const controller = new AbortController();
  live = controller;
  $("follow").classList.add("on");
  $("follow").textContent = "Stop";
  $("live-panel").hidden = false;
  const status = $("live-status");
  let after = 0;
  try {
    const head = await (await api("/head")).json();
    after = head.position;
  } catch (_) { /* start from the beginning */ }
  const tbody = $("live");
  fill(tbody, [], "Waiting for events…");
  let empty = true;
  while (live === controller) {
    try {
      const params = new URLSearchParams({ query: JSON.stringify(currentQuery()), after: String(after) });
      const response = await api("/subscribe?" + params, {
        headers: { accept: "application/x-ndjson" },
        signal: controller.signal,
      });
      if (!response.ok) {
        const body = await response.json().catch(() => ({}));
        throw new Error(body.error ? body.error.message : response.statusText);
      }
      status.textContent = "following";
      status.className = "status live";
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, { stream: true });
        let newline;
        while ((newline = buffer.indexOf("\n")) >= 0) {
          const line = buffer.slice(0, newline);
          buffer = buffer.slice(newline + 1);
          if (!line.trim()) continue;
          const item = JSON.parse(line);
          if (item.heartbeat) {
            $("head").textContent = item.heartbeat.head.toLocaleString();
          } else if (item.end) {
            after = item.end.after;
            status.textContent = `ended (${item.end.reason}); resuming…`;
          } else {
            after = item.position;
            if (empty) { tbody.replaceChildren(); empty = false; }
            tbody.insertBefore(row(item, true), tbody.firstChild);
            while (tbody.children.length > LIVE_ROWS) tbody.removeChild(tbody.lastChild);
            $("head").textContent = Math.max(item.position, Number(($("head").textContent || "0").replace(/\D/g, ""))).toLocaleString();
          }
        }
      }
    } catch (e) {
      if (controller.signal.aborted) break;
      status.textContent = "disconnected: " + e.message + "; retrying";
      status.className = "status";
    }
    if (live === controller) await new Promise((r) => setTimeout(r, 1000));
  }
}

function stopLive() {
  if (live) live.abort();
  live = null;
  $("follow").classList.remove("on");
  $("follow").textContent = "Follow live";
  $("live-status").textContent = "stopped";
  $("live-status").className = "status";
}

function metric(text, name) {
  let total = 0, found = false;
  for (const line of text.split("\n")) {
    if (line.startsWith(name + " ") || line.startsWith(name + "{")) {
      total += Number(line.slice(line.lastIndexOf(" ") + 1));
      found = true;
    }
  }
  return found ? total.toLocaleString() : "–";
}

async function refreshStats() {
  try {
    const head = await (await api("/head")).json();
    $("head").textContent = head.position.toLocaleString();
    // A token may lack the metrics scope (403): the counters then stay "–".
    const metrics = await api("/metrics");
    if (!metrics.ok) return;
    const text = await metrics.text();
    $("m-appended").textContent = metric(text, "crablet_events_appended_total");
    $("m-subs").textContent = metric(text, "crablet_subscriptions_active");
    $("m-delivered").textContent = metric(text, "crablet_subscription_events_delivered_total");
    $("m-requests").textContent = metric(text, "crablet_http_requests_total");
  } catch (_) { /* the next refresh tries again */ }
}

$("query").addEventListener("submit", (e) => { e.preventDefault(); search(); });
$("auth").addEventListener("submit", (e) => { e.preventDefault(); useToken($("token").value); });
$("follow").onclick = () => (live ? stopLive() : startLive());
$("newest").onclick = newest;
$("oldest").onclick = oldest;
$("older").onclick = older;
$("newer").onclick = newer;
newest();
refreshStats();
setInterval(refreshStats, 2000);
