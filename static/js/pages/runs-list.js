// The runs list, live: every few seconds one cheap request (/api/v1/runs/states/?ids=...)
// refreshes the status, progress, duration and waiting reason of the runs on the page;
// durations of running runs tick every second in between. Polling pauses while the tab is hidden.

import "./common.js";
import { getJSON, withParams } from "../lib/api.js";
import { formatDuration } from "../lib/format.js";
import { ACTIVE, LIVE, applyBadge, percent } from "../lib/status.js";

const ACTIVE_POLL_MS = 3000;
const IDLE_POLL_MS = 15000;
const table = document.getElementById("runs-table");
const rows = new Map([...table.querySelectorAll("tbody tr[data-run-id]")].map((row) => [Number(row.dataset.runId), row]));
const newestOnPage = Math.max(0, ...rows.keys());
let offset = 0; // server clock minus ours
let timer = 0;

function progressCell(cell, runId, progress) {
  const pct = progress ? percent(progress.step, progress.total) : null;
  cell.textContent = "";
  if (pct == null) {
    const dash = document.createElement("span");
    dash.className = "muted";
    dash.textContent = "—";
    cell.append(dash);
    return;
  }
  const bar = document.createElement("progress");
  bar.max = 100;
  bar.value = pct;
  bar.setAttribute("aria-label", `Progress of run ${runId}`);
  const text = document.createElement("span");
  text.className = "num";
  text.textContent = `${pct}%`;
  cell.append(bar, " ", text);
}

// Why a queued run waits ("3 runs ahead of it in a100"), under its badge; hidden otherwise.
function waitingLine(line, reason) {
  if (!line) return;
  line.textContent = reason ?? "";
  line.hidden = !reason;
}

function durationSeconds(row) {
  const { started, finished, status } = row.dataset;
  if (!started || status === "queued") return null;
  const end = finished ? Date.parse(finished) : LIVE.has(status) ? Date.now() + offset : null;
  return end == null ? null : Math.max(0, (end - Date.parse(started)) / 1000);
}

function tick() {
  for (const row of rows.values()) {
    if (LIVE.has(row.dataset.status) || row.dataset.dirty) {
      row.querySelector('[data-cell="duration"]').textContent = formatDuration(durationSeconds(row));
      delete row.dataset.dirty;
    }
  }
}

async function poll() {
  clearTimeout(timer);
  if (document.hidden || !rows.size) return;
  try {
    const data = await getJSON(withParams(table.dataset.statesUrl, { ids: [...rows.keys()].join(",") }));
    offset = Date.parse(data.now) - Date.now();
    for (const run of data.runs) {
      const row = rows.get(run.id);
      if (!row) continue;
      if (row.dataset.status !== run.status) applyBadge(row.querySelector('[data-live="status"]'), run.status);
      row.dataset.status = run.status;
      row.dataset.started = run.started_at ?? "";
      row.dataset.finished = run.finished_at ?? "";
      row.dataset.dirty = "true";
      progressCell(row.querySelector('[data-live="progress-cell"]'), run.id, run.progress);
      waitingLine(row.querySelector('[data-live="waiting"]'), run.waiting_reason);
    }
    tick();
    const banner = document.getElementById("new-runs");
    if (table.dataset.firstPage === "true" && data.latest_id > newestOnPage) banner.hidden = false;
  } catch {
    // A failed poll is retried on the next tick; the page keeps what it shows.
  }
  const active = [...rows.values()].some((row) => ACTIVE.has(row.dataset.status));
  timer = setTimeout(poll, active ? ACTIVE_POLL_MS : IDLE_POLL_MS);
}

document.addEventListener("visibilitychange", () => {
  if (!document.hidden) poll();
});
setInterval(tick, 1000);
timer = setTimeout(poll, ACTIVE_POLL_MS);

// -- compare selection -------------------------------------------------------------------------

const form = document.getElementById("compare-form");
const button = document.getElementById("compare-button");
const hint = document.getElementById("compare-hint");
hint.setAttribute("aria-live", "polite");
function updateSelection() {
  const picked = form.querySelectorAll('input[name="run"]:checked').length;
  const ready = picked >= 2 && picked <= 10;
  button.disabled = !ready;
  hint.textContent = picked === 0 ? "Tick 2 to 10 runs to compare them." : picked > 10 ? `${picked} runs ticked; compare at most 10.` : `${picked} run${picked === 1 ? "" : "s"} ticked${ready ? "" : "; tick at least 2"}.`;
}
form.addEventListener("change", updateSelection);
updateSelection();
