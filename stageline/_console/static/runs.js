// The runs page: the runs table, newest first, filtered by status and pipeline (both in the
// URL), paged with the API's cursor, and kept live by polling the page shown every 2 s.

import {
  STATUSES, api, badge, el, fill, notice, refreshTimes, runUrl, setLive, showStats, timeEl,
} from "/static/console.js";

const POLL_MS = 2000;
const LIMIT = 50;

const view = {
  status: "",
  pipeline: "",
  before: null, // the cursor of the page shown; null: the newest page
  next: null, // the cursor of the page after it
  loaded: 0, // which load answered last (older answers are dropped)
};
const rows = new Map(); // run_id -> {row, key}
let loads = 0;

function readUrl() {
  const query = new URLSearchParams(location.search);
  view.status = query.get("status") || "";
  view.pipeline = query.get("pipeline") || "";
  view.before = query.get("before") || null;
}

function writeUrl() {
  const query = new URLSearchParams();
  if (view.status) query.set("status", view.status);
  if (view.pipeline) query.set("pipeline", view.pipeline);
  if (view.before) query.set("before", view.before);
  const text = query.toString();
  history.replaceState(null, "", text ? `/?${text}` : "/");
}

function apiQuery() {
  const query = new URLSearchParams({ limit: String(LIMIT) });
  if (view.status) query.set("status", view.status);
  if (view.pipeline) query.set("pipeline", view.pipeline);
  if (view.before) query.set("before", view.before);
  return `/api/runs?${query}`;
}

// --- rows -------------------------------------------------------------------------------

function cells(run) {
  const wake = run.wake_at
    ? el("span", { class: "wake" }, run.status === "sleeping" ? "wakes " : "deadline ",
      timeEl(run.wake_at))
    : null;
  return [
    el("td", { class: "run-id" }, el("a", { href: runUrl(run.run_id) }, run.run_id)),
    el("td", { class: "pipeline" }, run.pipeline_id ?? "",
      run.pipeline_version !== undefined && run.pipeline_version !== null
        ? el("span", { class: "version" }, `v${run.pipeline_version}`) : null),
    el("td", { class: "status" }, badge(run.status, { "data-status": run.status }), wake),
    el("td", { class: "stage" }, run.stage ?? el("span", { class: "muted" }, "—")),
    el("td", { class: "when created" }, timeEl(run.created_at)),
    el("td", { class: "when updated" }, timeEl(run.updated_at)),
  ];
}

function rowFor(run, first) {
  const key = JSON.stringify(run);
  let entry = rows.get(run.run_id);
  if (!entry) {
    const row = el("tr", { dataset: { runId: run.run_id },
      onanimationend: () => row.classList.remove("flash") });
    entry = { row, key: null };
    rows.set(run.run_id, entry);
  }
  if (entry.key !== key) {
    fill(entry.row, cells(run));
    entry.row.dataset.status = run.status;
    if (entry.key !== null || !first) flash(entry.row);
    entry.key = key;
  }
  return entry.row;
}

function flash(row) {
  row.classList.remove("flash");
  void row.offsetWidth; // restart the animation
  row.classList.add("flash");
}

function render(runs, first) {
  const body = document.getElementById("runs-body");
  const shown = new Set();
  const ordered = runs.map((run) => {
    shown.add(run.run_id);
    return rowFor(run, first);
  });
  for (const [runId, entry] of rows) {
    if (!shown.has(runId)) {
      entry.row.remove();
      rows.delete(runId);
    }
  }
  if (ordered.length === 0) {
    const filtered = view.status || view.pipeline;
    fill(body, el("tr", {}, el("td", { class: "empty", colspan: "6" },
      filtered ? "No runs match these filters." : "No runs yet.")));
  } else {
    for (const stale of body.querySelectorAll("tr:not([data-run-id])")) stale.remove();
    ordered.forEach((row, index) => {
      if (body.children[index] !== row) body.insertBefore(row, body.children[index] || null);
    });
  }
  refreshTimes(body);
  const count = document.getElementById("count");
  count.textContent = runs.length === 1 ? "1 run" : `${runs.length} runs`;
  if (view.before) count.textContent += " (older page)";
  document.getElementById("older-button").disabled = !view.next;
  document.getElementById("newest-button").disabled = !view.before;
}

// --- loading ----------------------------------------------------------------------------

async function load({ first = false } = {}) {
  const mine = ++loads;
  try {
    const { data } = await api(apiQuery());
    if (mine < view.loaded) return;
    view.loaded = mine;
    view.next = data.next ?? null;
    render(data.runs || [], first);
    notice(null);
    setLive(true, `updated ${new Date().toLocaleTimeString()}`);
  } catch (error) {
    if (error.status === 401) return;
    setLive(false, error.message);
    notice(`Could not load the runs: ${error.message}`);
  }
}

function reset() {
  for (const entry of rows.values()) entry.row.remove();
  rows.clear();
  writeUrl();
  load({ first: true });
}

function setUp() {
  const select = document.getElementById("status-filter");
  for (const status of STATUSES) select.append(el("option", { value: status }, status));
  readUrl();
  select.value = view.status;
  const pipeline = document.getElementById("pipeline-filter");
  pipeline.value = view.pipeline;

  document.getElementById("filters").addEventListener("submit", (event) => {
    event.preventDefault();
    view.status = select.value;
    view.pipeline = pipeline.value.trim();
    view.before = null;
    reset();
  });
  select.addEventListener("change", () => {
    view.status = select.value;
    view.before = null;
    reset();
  });
  document.getElementById("clear-filters").addEventListener("click", () => {
    select.value = "";
    pipeline.value = "";
    view.status = "";
    view.pipeline = "";
    view.before = null;
    reset();
  });
  document.getElementById("older-button").addEventListener("click", () => {
    if (!view.next) return;
    view.before = view.next;
    reset();
  });
  document.getElementById("newest-button").addEventListener("click", () => {
    view.before = null;
    reset();
  });

  load({ first: true });
  showStats();
  setInterval(() => {
    if (!document.hidden) load();
  }, POLL_MS);
  setInterval(() => {
    if (!document.hidden) showStats();
  }, POLL_MS * 3);
}

setUp();
