// stageline console: helpers every page shares (DOM building, the API, times, statuses).
//
// Run data is never parsed as HTML: every node is made with createElement and filled with
// textContent, so a state value such as "<script>" shows as text.

export const STATUSES = [
  "pending", "queued", "running", "paused", "sleeping",
  "succeeded", "failed", "aborted", "expired", "quarantined",
];

// The CLI's colours (stageline/_cli_format.py COLOURS).
const COLOURS = {
  succeeded: "green",
  failed: "red", aborted: "red", quarantined: "red",
  paused: "yellow", sleeping: "yellow", expired: "yellow",
  running: "cyan", pending: "cyan", queued: "cyan",
  corrupt: "magenta",
};

// Every event name the stream may send (core/events.py EVENT_NAMES), a few the server may
// add, and the stream's own `end`. Named SSE events never reach `onmessage`.
export const EVENT_NAMES = [
  "pipeline:start", "pipeline:success", "pipeline:paused", "pipeline:failure",
  "pipeline:sleeping", "pipeline:aborted", "pipeline:expired", "pipeline:resumed",
  "pipeline:retried", "pipeline:queued",
  "stage:start", "stage:success", "stage:paused", "stage:failure", "stage:sleeping",
  "step:start", "step:success", "step:retry", "step:failure",
];

/** An element: el("td", {class: "x", title: "y"}, "text", childNode, ...). */
export function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "dataset") Object.assign(node.dataset, value);
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  append(node, children);
  return node;
}

function append(node, children) {
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

/** Replace what `node` holds with `children`. */
export function fill(node, ...children) {
  node.replaceChildren();
  append(node, children);
  return node;
}

export function colourOf(status) {
  return COLOURS[status] || "none";
}

/** A status word in its colour. */
export function badge(status, attrs) {
  const word = status || "unknown";
  return el("span", { ...attrs, class: `badge st-${colourOf(status)}` }, word);
}

/** Set an existing badge element to `status`. */
export function setBadge(node, status) {
  node.className = `badge st-${colourOf(status)}`;
  node.textContent = status || "unknown";
  node.dataset.status = status || "";
}

// --- times ------------------------------------------------------------------------------

export function parseTime(value) {
  if (value === null || value === undefined || value === "") return null;
  if (typeof value === "number") return new Date(value * 1000);
  const date = new Date(value);
  return Number.isNaN(date.getTime()) ? null : date;
}

/** "3 min ago", "in 2 h", "just now". */
export function relative(value, now = Date.now()) {
  const date = parseTime(value);
  if (date === null) return "—";
  const seconds = (date.getTime() - now) / 1000;
  const size = Math.abs(seconds);
  if (size < 5) return "just now";
  let text;
  if (size < 60) text = `${Math.round(size)} s`;
  else if (size < 3600) text = `${Math.round(size / 60)} min`;
  else if (size < 86400) text = `${Math.round(size / 360) / 10} h`.replace(".0 h", " h");
  else text = `${Math.round(size / 8640) / 10} d`.replace(".0 d", " d");
  return seconds < 0 ? `${text} ago` : `in ${text}`;
}

/** The absolute time, in the reader's time zone and in UTC. */
export function absolute(value) {
  const date = parseTime(value);
  if (date === null) return "";
  const local = date.toLocaleString(undefined, {
    year: "numeric", month: "short", day: "numeric",
    hour: "2-digit", minute: "2-digit", second: "2-digit",
  });
  return `${local} (${date.toISOString()})`;
}

/** A <time> showing the relative time, the absolute one in its title; kept fresh by
 * refreshTimes(). */
export function timeEl(value) {
  const date = parseTime(value);
  if (date === null) return el("span", { class: "muted" }, "—");
  return el("time", { datetime: date.toISOString(), title: absolute(value),
    dataset: { rel: "1" } }, relative(value));
}

export function refreshTimes(root = document) {
  const now = Date.now();
  for (const node of root.querySelectorAll("time[data-rel]")) {
    node.textContent = relative(node.getAttribute("datetime"), now);
  }
}

/** Seconds as "850 ms", "4.2 s", "3 min 5 s", "2 h 4 min". */
export function duration(seconds) {
  if (seconds === null || seconds === undefined || Number.isNaN(seconds)) return "—";
  if (seconds < 1) return `${Math.round(seconds * 1000)} ms`;
  if (seconds < 60) return `${(Math.round(seconds * 10) / 10).toFixed(1)} s`;
  if (seconds < 3600) {
    const minutes = Math.floor(seconds / 60);
    return `${minutes} min ${Math.round(seconds - minutes * 60)} s`;
  }
  const hours = Math.floor(seconds / 3600);
  return `${hours} h ${Math.round((seconds - hours * 3600) / 60)} min`;
}

export function prettyJson(value) {
  return JSON.stringify(value === undefined ? null : value, null, 2);
}

// --- the API ------------------------------------------------------------------------------

export class ApiError extends Error {
  constructor(message, status) {
    super(message);
    this.status = status;
  }
}

/** Send the reader to the login form, to come back here. */
export function toLogin() {
  const here = location.pathname + location.search;
  location.assign(`/login?next=${encodeURIComponent(here)}`);
}

/** fetch() a JSON answer; a 401 goes to the login form; an error answer throws ApiError
 * with the server's one line. */
export async function api(path, { method = "GET", body } = {}) {
  const init = { method, headers: { Accept: "application/json" }, credentials: "same-origin" };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (error) {
    throw new ApiError("cannot reach the console server", 0);
  }
  if (response.status === 401) {
    toLogin();
    throw new ApiError("not logged in", 401);
  }
  let data = null;
  try {
    data = await response.json();
  } catch (error) {
    data = null;
  }
  if (!response.ok) {
    const line = data && typeof data.error === "string" ? data.error : `HTTP ${response.status}`;
    throw new ApiError(line, response.status);
  }
  return { status: response.status, data };
}

export function runUrl(runId) {
  return `/runs/${encodeURIComponent(runId)}`;
}

export function apiRunUrl(runId, tail = "") {
  return `/api/runs/${encodeURIComponent(runId)}${tail}`;
}

/** Register `handler(name, messageEvent)` for every known event name on `source`. */
export function listen(source, handler) {
  for (const name of [...EVENT_NAMES, "end"]) {
    source.addEventListener(name, (message) => handler(name, message));
  }
  source.onmessage = (message) => handler("message", message);
}

/** Show `message` in the page's notice bar (null hides it). */
export function notice(message) {
  const bar = document.getElementById("notice");
  if (!bar) return;
  bar.textContent = message || "";
  bar.classList.toggle("hidden", !message);
}

/** The header's mailbox/daemon line, from /api/stats. */
export async function showStats() {
  const node = document.getElementById("stats");
  if (!node) return;
  try {
    const { data } = await api("/api/stats");
    const mailbox = (data && data.mailbox) || {};
    const daemons = ((data && data.daemons) || []).filter((d) => !d.gone);
    const word = daemons.length === 1 ? "daemon" : "daemons";
    node.textContent = `${daemons.length} ${word} alive · mailbox ${mailbox.pending ?? 0} `
      + `pending, ${mailbox.claimed ?? 0} claimed`;
  } catch (error) {
    if (error.status !== 401) node.textContent = "";
  }
}

/** Show whether the page is receiving live updates. */
export function setLive(on, title) {
  const dot = document.getElementById("live");
  if (!dot) return;
  dot.classList.toggle("on", on);
  dot.title = title || (on ? "live" : "not live");
}

// --- the login form (login.html has no script of its own) ------------------------------

/** Only a path on this site may be the `next` page. */
export function safeNext(value) {
  if (typeof value !== "string" || !value.startsWith("/") || value.startsWith("//")
      || value.startsWith("/\\")) {
    return "/";
  }
  return value;
}

function initLogin(form) {
  const query = new URLSearchParams(location.search);
  form.elements.next.value = safeNext(query.get("next"));
  const error = document.getElementById("login-error");
  if (query.get("error")) error.classList.remove("hidden");
  form.elements.token.focus();
}

const loginForm = document.getElementById("login-form");
if (loginForm) initLogin(loginForm);
