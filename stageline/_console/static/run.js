// The run page: header, what a waiting run waits for, the stage timeline, the error and its
// tracebacks, child pipelines, state and checkpoint, the controls, and the journal tailing
// live over server-sent events. The run id is the page's path: /runs/{run_id}.

import {
  absolute, api, apiRunUrl, badge, duration, el, fill, listen, notice, parseTime, prettyJson,
  refreshTimes, setBadge, setLive, timeEl,
} from "/static/console.js";

const ACTIVE = new Set(["pending", "queued", "running"]);
const CAN = {
  resume: new Set(["paused"]),
  retry: new Set(["failed", "quarantined"]),
  abort: new Set(["pending", "running", "paused", "queued", "sleeping"]),
};
const WATCH_MS = 2000;
const MAX_LIVE = 300;

const runId = decodeURIComponent(location.pathname.replace(/^\/runs\//, "").replace(/\/$/, ""));
const page = {
  run: null,
  lastSeq: 0,
  source: null,
  endedAt: null, // the run's updated_at when the stream last ended (undefined: to read)
  refreshing: null,
  again: false,
  busy: new Set(), // controls whose request is under way
  inFlight: null, // the root stage a live stage:start said is running
};

const $ = (id) => document.getElementById(id);

// --- the run ------------------------------------------------------------------------------

/** Read the run again; calls made meanwhile are folded into one more read. */
function refresh() {
  if (page.refreshing) {
    page.again = true;
    return page.refreshing;
  }
  page.refreshing = (async () => {
    try {
      do {
        page.again = false;
        await readRun();
      } while (page.again);
    } finally {
      page.refreshing = null;
    }
  })();
  return page.refreshing;
}

async function readRun() {
  let run;
  try {
    ({ data: run } = await api(apiRunUrl(runId)));
  } catch (error) {
    if (error.status === 401) return;
    if (error.status === 404) {
      setBadge($("status"), "not found");
      notice(`No run ${JSON.stringify(runId)}: ${error.message}`);
    } else {
      notice(`Could not read the run: ${error.message}`);
    }
    return;
  }
  notice(null);
  page.run = run;
  show(run);
  followIfMoved(run);
}

function show(run) {
  showHead(run);
  showWaiting(run.waiting);
  showTimeline(run.timeline || []);
  showError(run.error, run.tracebacks || []);
  showChildren(run.children || []);
  $("state").textContent = prettyJson(run.state);
  $("checkpoint").textContent = run.checkpoint ? prettyJson(run.checkpoint) : "none";
  enableControls(run.status);
}

function showHead(run) {
  document.title = `${run.run_id} · ${run.status} · stageline`;
  $("run-id").textContent = run.run_id;
  const version = run.pipeline_version !== null && run.pipeline_version !== undefined
    ? ` v${run.pipeline_version}` : "";
  $("pipeline").textContent = `${run.pipeline_id}${version}`;
  setBadge($("status"), run.status);
  const stage = $("stage");
  stage.classList.remove("inflight");
  stage.textContent = run.stage ?? "—";
  const last = (run.timeline || []).at(-1);
  if (last && last.outcome === "running" && run.status === "running") {
    stage.textContent = `${last.label || last.stage_id} (running)`;
    stage.classList.add("inflight");
  }
  if (page.inFlight && run.status === "running") {
    stage.textContent = `${page.inFlight.label || page.inFlight.stage_id} (in flight)`;
    stage.classList.add("inflight");
  }
  fill($("created"), timeEl(run.created_at));
  fill($("updated"), timeEl(run.updated_at));
  $("owner").textContent = run.owner ?? "";
  $("owner-line").classList.toggle("hidden", !run.owner || !ACTIVE.has(run.status));
  $("priority").textContent = run.priority ?? "";
  $("priority-line").classList.toggle("hidden", !run.priority);
}

const WAIT_WORDS = { paused: "Paused", sleeping: "Sleeping", queued: "Queued" };

function showWaiting(waiting) {
  const box = $("waiting");
  box.classList.toggle("hidden", !waiting);
  if (!waiting) return;
  box.className = `panel waiting kind-${waiting.kind}`;
  fill($("waiting-what"), el("b", {}, WAIT_WORDS[waiting.kind] || waiting.kind),
    ` — waits for ${waiting.for}`);
  const when = [];
  if (waiting.since) when.push("since ", timeEl(waiting.since));
  if (waiting.until) {
    if (when.length) when.push(" · ");
    when.push(waiting.kind === "sleeping" ? "wakes " : "deadline ", timeEl(waiting.until));
    if (waiting.on_expiry) when.push(` (then ${waiting.on_expiry})`);
  }
  fill($("waiting-when"), when);
}

function showTimeline(journaled) {
  const box = $("timeline");
  const bars = withInFlight(journaled);
  if (bars.length === 0) {
    fill(box, el("span", { class: "muted" }, "No stage has run yet."));
    return;
  }
  const now = Date.now();
  const lengths = bars.map((bar) => lengthOf(bar, now));
  const longest = Math.max(...lengths, 0.001);
  fill(box, bars.map((bar, index) => barRow(bar, lengths[index], longest)));
}

/** The journal holds a stage once it is over; the stage in flight (a live stage:start)
 * is drawn after the journal's bars until its commit arrives. */
function withInFlight(bars) {
  const flying = page.inFlight;
  if (!flying || !page.run || page.run.status !== "running") return bars;
  const last = bars.at(-1);
  if (last && last.stage_id === flying.stage_id && last.outcome === "running") return bars;
  const runs = bars.filter((bar) => bar.stage_id === flying.stage_id).length + 1;
  return [...bars, { stage_id: flying.stage_id, label: flying.label, started_at: flying.ts,
    ended_at: null, duration: null, outcome: "running", run: runs, retried: runs > 1 }];
}

function lengthOf(bar, now) {
  if (typeof bar.duration === "number") return bar.duration;
  const started = parseTime(bar.started_at);
  return started ? Math.max(0, (now - started.getTime()) / 1000) : 0;
}

function barRow(bar, length, longest) {
  const again = bar.retried || bar.run > 1;
  const fillBar = el("div", { class: `tl-bar ${bar.outcome}` });
  fillBar.style.width = `${Math.max(0.5, (length / longest) * 100)}%`;
  const name = bar.label || bar.stage_id;
  return el("div", {
    class: `tl-row${again ? " retried" : ""}`,
    dataset: { stage: bar.stage_id, outcome: bar.outcome, run: String(bar.run ?? 1) },
    title: `${bar.stage_id}: started ${absolute(bar.started_at)}`
      + (bar.ended_at ? `, ended ${absolute(bar.ended_at)}` : ""),
  },
  el("div", { class: "tl-label" }, name,
    again ? el("span", { class: "retry", title: "this stage ran before" }, `↻ run ${bar.run}`)
      : null,
    bar.attempts > 1 ? el("span", { class: "retry step-retry",
      title: `a step of this stage was retried: ${bar.attempts} attempts` },
    `⟳ ×${bar.attempts}`) : null),
  el("div", { class: "tl-track" }, fillBar),
  el("div", { class: "tl-dur" }, bar.duration === null || bar.duration === undefined
    ? (bar.outcome === "running" ? `${duration(length)}…` : "—") : duration(bar.duration)),
  el("div", { class: "tl-outcome" }, el("span", { class: `badge st-${outcomeColour(bar.outcome)}` },
    bar.outcome)));
}

function outcomeColour(outcome) {
  return { succeeded: "green", failed: "red", paused: "yellow", sleeping: "yellow",
    running: "cyan" }[outcome] || "none";
}

function showError(error, tracebacks) {
  const panel = $("error-panel");
  panel.classList.toggle("hidden", !error);
  if (!error) return;
  const parts = [errorLine(error)];
  for (const step of error.steps || []) {
    if (step && step.message && step.message !== error.message) {
      parts.push(el("div", { class: "small" }, `step ${step.step_id}: `,
        el("span", { class: "mono" }, step.type || "Error"), `: ${step.message}`));
    }
  }
  const traces = tracebacks.length || !error.traceback
    ? tracebacks : [{ where: "stage", text: error.traceback }];
  for (const trace of traces) {
    parts.push(el("div", { class: "trace-where" }, trace.where),
      el("pre", { class: "trace" }, trace.text));
  }
  if (Array.isArray(error.attempts) && error.attempts.length) {
    parts.push(el("details", {}, el("summary", {}, `${error.attempts.length} attempts`),
      el("pre", { class: "json" }, prettyJson(error.attempts))));
  }
  fill($("error"), parts);
}

function errorLine(error) {
  if (typeof error !== "object") return el("div", { class: "error-line" }, String(error));
  return el("div", { class: "error-line" },
    error.type ? el("span", { class: "type" }, `${error.type}: `) : null,
    error.message ?? prettyJson(error));
}

function showChildren(children) {
  $("children-panel").classList.toggle("hidden", children.length === 0);
  fill($("children-body"), children.map((child) => el("tr", { dataset: { key: child.key } },
    el("td", { class: "mono" }, child.key),
    el("td", {}, badge(child.status)),
    el("td", {}, child.stage ?? "—"))));
}

// --- the controls -------------------------------------------------------------------------

function enableControls(status) {
  for (const [kind, statuses] of Object.entries(CAN)) {
    $(`${kind}-button`).disabled = !statuses.has(status) || page.busy.has(kind);
  }
}

/** The patch in `textareaId` as an object, or null with the reason shown. */
function patchFrom(textareaId, resultId) {
  const text = $(textareaId).value.trim() || "{}";
  let patch;
  try {
    patch = JSON.parse(text);
  } catch (error) {
    say(resultId, "bad", `Not JSON: ${error.message}. Nothing was sent.`);
    return null;
  }
  if (patch === null || typeof patch !== "object" || Array.isArray(patch)) {
    say(resultId, "bad", "The patch must be a JSON object, like {\"approved\": true}. "
      + "Nothing was sent.");
    return null;
  }
  return patch;
}

function say(resultId, tone, text) {
  const node = $(resultId);
  node.className = `outcome ${tone}`;
  node.textContent = text;
}

async function act(kind, body) {
  const resultId = `${kind}-result`;
  page.busy.add(kind);
  $(`${kind}-button`).disabled = true;
  say(resultId, "wait", "Sent; waiting for a daemon to act…");
  try {
    const { data } = await api(apiRunUrl(runId, `/${kind}?wait=true`), { method: "POST", body });
    tellOutcome(resultId, kind, data);
  } catch (error) {
    if (error.status !== 401) say(resultId, "bad", error.message);
  } finally {
    page.busy.delete(kind);
    openStream();
    await refresh();
  }
}

function tellOutcome(resultId, kind, answer) {
  const id = answer && answer.request_id ? ` (request ${answer.request_id})` : "";
  if (!answer || answer.status === "pending") {
    say(resultId, "wait", `Queued${id}: no daemon has acted on it yet.`);
  } else if (answer.status === "done") {
    say(resultId, "ok", `Done: the daemon acted on the ${kind}${id}.`);
  } else {
    say(resultId, "bad", `Failed: ${answer.answer || "the daemon refused it"}${id}.`);
  }
}

function setUpControls() {
  $("resume-button").addEventListener("click", () => {
    const patch = patchFrom("resume-patch", "resume-result");
    if (patch !== null) act("resume", { patch });
  });
  $("retry-button").addEventListener("click", () => {
    const patch = patchFrom("retry-patch", "retry-result");
    if (patch !== null) act("retry", { patch });
  });
  $("abort-button").addEventListener("click", () => {
    const reason = $("abort-reason").value.trim();
    act("abort", reason ? { reason } : {});
  });
  for (const [area, resultId] of [["resume-patch", "resume-result"],
    ["retry-patch", "retry-result"]]) {
    $(area).addEventListener("input", () => say(resultId, "", ""));
  }
}

// --- the journal --------------------------------------------------------------------------

function openStream() {
  if (page.source) return;
  const after = page.lastSeq ? `?after=${page.lastSeq}` : "";
  const source = new EventSource(apiRunUrl(runId, `/events${after}`));
  page.source = source;
  page.endedAt = null;
  source.onopen = () => setLive(true, "tailing the journal");
  source.onerror = () => {
    if (source.readyState === EventSource.CLOSED) {
      closeStream(source);
      refresh(); // a 401 goes to the login form from here
    } else {
      setLive(false, "reconnecting");
    }
  };
  listen(source, (name, message) => onEvent(source, name, message));
}

function closeStream(source) {
  source.close();
  if (page.source === source) page.source = null;
  page.endedAt = undefined; // the next read of the run notes where it stood
  setLive(false, "the journal is complete; watching the run");
}

/** With no stream open, open one again when the run moved (a resume from elsewhere, a
 * sleeping run waking up). */
function followIfMoved(run) {
  if (page.source) return;
  if (page.endedAt === undefined) {
    page.endedAt = run.updated_at;
  } else if (ACTIVE.has(run.status) || run.updated_at !== page.endedAt) {
    openStream();
  }
}

function onEvent(source, name, message) {
  if (name === "end") {
    closeStream(source);
    refresh();
    return;
  }
  let data = {};
  try {
    data = JSON.parse(message.data || "{}") || {};
  } catch (error) {
    data = { detail: String(message.data) };
  }
  const eventName = data.name || name;
  const root = (data.path || []).length <= 1;
  if (data.live) {
    addRow(eventName, data, true);
    if (eventName === "stage:start" && root) showInFlight(data);
    return;
  }
  const seq = Number(data.seq ?? message.lastEventId);
  if (Number.isFinite(seq) && seq > 0) {
    if (seq <= page.lastSeq) return;
    page.lastSeq = seq;
  }
  addRow(eventName, data, false);
  if (root && page.inFlight && (eventName.startsWith("pipeline:")
      || (data.stage_id === page.inFlight.stage_id && eventName !== "stage:start"))) {
    page.inFlight = null; // its commit is in the journal now
  }
  if (eventName.startsWith("stage:") || eventName.startsWith("pipeline:")) refresh();
}

function showInFlight(data) {
  page.inFlight = { stage_id: data.stage_id, label: data.label, ts: data.ts };
  if (page.run) {
    page.run.status = "running";
    showTimeline(page.run.timeline || []);
  }
  const stage = $("stage");
  stage.textContent = `${data.label || data.stage_id} (in flight)`;
  stage.classList.add("inflight");
}

function addRow(name, data, live) {
  const wrap = $("journal-wrap");
  const atBottom = wrap.scrollHeight - wrap.scrollTop - wrap.clientHeight < 24;
  const kind = name.split(":")[1] || "";
  const tone = { success: "ev-success", failure: "ev-failure", paused: "ev-paused",
    sleeping: "ev-sleeping", start: "ev-start", retry: "ev-failure" }[kind] || "";
  const ts = parseTime(data.ts);
  const stage = [whereOf(data), data.step_id].filter(Boolean).join(" · ");
  $("journal-body").append(el("tr", {
    class: live ? "live" : "",
    dataset: { name, seq: live ? "" : String(data.seq ?? "") },
    title: live ? "live: not kept in the journal" : null,
  },
  el("td", { class: "seq" }, live ? "live" : String(data.seq ?? "")),
  el("td", { class: "ts", title: absolute(data.ts) }, ts ? clock(ts) : ""),
  el("td", { class: `name ${tone}` }, name),
  el("td", { class: "where" }, stage),
  el("td", { class: "detail" }, detailOf(name, data))));
  if (live) dropOldLive();
  if (atBottom) wrap.scrollTop = wrap.scrollHeight;
}

/** Live lines are transient: keep the last MAX_LIVE of them. */
function dropOldLive() {
  const lines = $("journal-body").querySelectorAll("tr.live");
  for (let index = 0; index < lines.length - MAX_LIVE; index += 1) lines[index].remove();
}

function clock(date) {
  const pad = (n, width = 2) => String(n).padStart(width, "0");
  return `${pad(date.getHours())}:${pad(date.getMinutes())}:${pad(date.getSeconds())}`
    + `.${pad(date.getMilliseconds(), 3)}`;
}

/** The stage; in a child pipeline, "child:stage" below the root (as `stageline logs`). */
function whereOf(data) {
  const path = data.path || [];
  if (path.length > 1) {
    return path.slice(1).map((node) => (Array.isArray(node)
      ? `${node[0]}:${node[1] ?? ""}` : String(node))).join("/");
  }
  return data.stage_id || "";
}

/** One line saying what the event carries beyond its name and stage. */
function detailOf(name, data) {
  const parts = [];
  if (data.entry) parts.push(`entry ${data.entry}`);
  if (data.resumed) parts.push("resumed");
  // a step's attempt; a stage's most attempts of one step, shown only when a step retried
  if (data.attempt && (data.step_id || data.attempt > 1)) parts.push(`attempt ${data.attempt}`);
  if (typeof data.duration === "number") parts.push(duration(data.duration));
  if (data.routing) parts.push(`→ ${data.routing}`);
  if (data.resume_at) parts.push(`resumes at ${data.resume_at}`);
  if (data.wake_at) parts.push(`wakes ${absolute(data.wake_at)}`);
  if (data.error) parts.push(errorText(data.error));
  if (data.results && typeof data.results === "object" && Object.keys(data.results).length) {
    parts.push(`results ${clip(JSON.stringify(data.results), 160)}`);
  }
  if (data.detail) parts.push(data.detail);
  return parts.join(" · ");
}

function errorText(error) {
  if (typeof error !== "object") return String(error);
  return `${error.type ? `${error.type}: ` : ""}${error.message ?? JSON.stringify(error)}`;
}

function clip(text, size) {
  return text.length > size ? `${text.slice(0, size - 1)}…` : text;
}

// --- start --------------------------------------------------------------------------------

function start() {
  $("run-id").textContent = runId;
  document.title = `${runId} · stageline`;
  setUpControls();
  refresh();
  openStream();
  setInterval(() => {
    if (document.hidden) return;
    refreshTimes();
    const run = page.run;
    if (!page.source || (run && run.status === "running")) refresh();
  }, WATCH_MS);
}

start();
