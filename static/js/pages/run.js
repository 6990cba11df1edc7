// The run page: opens the log at its tail, loads the charts, then follows the run over its
// websocket (log lines, metric points, status) and keeps the connection state visible.

import "./common.js";
import { postJSON } from "../lib/api.js";
import { formatDuration } from "../lib/format.js";
import { LogView } from "../live/log-view.js";
import { RunSocket } from "../live/socket.js";
import { chartTools } from "../charts/chart-tools.js";
import { enablePreviews } from "../ui/artifact-preview.js";
import { confirmAction } from "../ui/confirm.js";
import { RunStatus } from "../ui/run-status.js";

const page = document.getElementById("run-page");
const urls = page.dataset;
const $ = (id) => document.getElementById(id);

const log = new LogView({
  viewport: $("log-viewport"),
  sizer: $("log-sizer"),
  rows: $("log-rows"),
  state: $("log-state"),
  followButton: $("log-follow"),
  tailUrl: urls.logTailUrl,
  logsUrl: urls.logsUrl,
});
// The charts (and uPlot) load as a separate module: the log never waits for them, and a chart
// failure cannot take the log down with it.
let charts = null;
const chartOptions = chartTools($("chart-tools"), (options) => charts?.setOptions(options));
const chartsReady = import("../charts/run-charts.js")
  .then(({ RunCharts }) => {
    charts = new RunCharts({
      container: $("charts"),
      empty: $("charts-empty"),
      chartsUrl: urls.chartsUrl,
      options: chartOptions,
      systemSection: $("system-metrics"),
      systemContainer: $("system-charts"),
    });
    return charts;
  })
  .catch((error) => {
    $("charts-empty").textContent = `The charts could not load (${error.message}).`;
    return null;
  });
const status = new RunStatus({ page, announcer: $("announcer"), fragmentsUrl: urls.fragmentsUrl });
enablePreviews(page);

// -- log controls ----------------------------------------------------------------------------------

const filterInput = $("log-filter");
const streamBoxes = [...document.querySelectorAll('input[name="stream"]')];
let filterTimer = 0;
function applyFilter() {
  clearTimeout(filterTimer);
  filterTimer = setTimeout(() => {
    log.setFilter(filterInput.value, streamBoxes.filter((box) => box.checked).map((box) => box.value));
  }, 120);
}
filterInput.addEventListener("input", applyFilter);
streamBoxes.forEach((box) => box.addEventListener("change", applyFilter));
$("log-top").addEventListener("click", () => log.jumpToTop());
$("log-bottom").addEventListener("click", () => log.jumpToBottom());

// -- connection state ------------------------------------------------------------------------------

const conn = $("conn-state");
const connText = conn.querySelector(".conn-text");
let countdown = 0;
function showState({ state, retryAt, reason }) {
  clearInterval(countdown);
  conn.dataset.state = state;
  const write = () => {
    const texts = {
      connecting: "Connecting to the live stream…",
      live: "Live",
      offline: "Offline; reconnects when the network returns",
      failed: reason ?? "Disconnected",
      closed: "Stream closed",
    };
    if (state === "reconnecting") {
      const seconds = retryAt ? Math.max(0, Math.ceil((retryAt - Date.now()) / 1000)) : 0;
      connText.textContent = seconds ? `Connection lost; reconnecting in ${formatDuration(seconds)}` : "Reconnecting…";
    } else {
      connText.textContent = texts[state] ?? state;
    }
  };
  write();
  if (state === "reconnecting" && retryAt) countdown = setInterval(write, 1000);
}

// -- the stream ------------------------------------------------------------------------------------

let socket = null;

async function start() {
  // Charts load while the log opens, for a first paint; they load again each time the socket
  // (re)connects, since metric points have no seq to resume from.
  chartsReady.then((ready) => ready?.load()).catch(() => {});
  let after = 0;
  try {
    after = await log.open();
  } catch (error) {
    $("log-state").textContent = `The log could not be loaded (${error.message}); live lines still arrive.`;
  }
  socket = new RunSocket(urls.wsPath, { after });
  socket.addEventListener("state", (event) => showState(event.detail));
  // Points committed between the first chart fetch and the socket joining the run's group would
  // be in neither, so every (re)connect fetches the charts again (cheap: cached server-side).
  socket.addEventListener("open", () => charts?.load().catch(() => {}));
  socket.addEventListener("frame", (event) => {
    const frame = event.detail;
    if (frame.type === "log") log.append(frame.lines);
    else if (frame.type === "metric") {
      charts?.addPoints(frame.points);
      // A flood's frame is a sample of its batch: the chart re-reads the series (rate-limited).
      if (frame.sampled_from) charts?.reload();
    }
    else if (frame.type === "status") status.update(frame);
  });
  socket.start();
}

// -- cancel and retry ------------------------------------------------------------------------------

const dialog = $("confirm-dialog");
page.addEventListener("click", (event) => {
  const button = event.target.closest("[data-action]");
  if (!button) return;
  if (button.dataset.action === "cancel") {
    confirmAction(dialog, {
      title: "Cancel this run?",
      text: "A queued run is cancelled at once. A running one is stopped (SIGTERM, then SIGKILL after a grace period); its log and checkpoints stay.",
      confirmLabel: "Cancel run",
      dismissLabel: "Keep running",
      action: () => postJSON(urls.cancelUrl).then((run) => status.update({ ...run, progress_step: null, progress_total: null })),
    });
  } else if (button.dataset.action === "retry") {
    confirmAction(dialog, {
      title: "Retry this run?",
      text: "The run is queued again with the same parameters; its log continues, and it resumes from its newest checkpoint when it has one.",
      confirmLabel: "Retry",
      dismissLabel: "Not now",
      danger: false,
      action: () => postJSON(urls.retryUrl).then((run) => status.update({ ...run, progress_step: null, progress_total: null })),
    });
  }
});

// Hooks for the browser tests (and the curious): read what the page holds, cut the socket.
window.__cp = {
  dropSocket: (holdMs = 0) => socket?.drop(holdMs),
  socketState: () => socket?.state ?? "none",
  lastSeq: () => socket?.lastSeq ?? 0,
  logSeqs: () => log.seqs(),
  visibleSeqs: () => log.visibleSeqs(),
  metricKeys: () => charts?.store.keys() ?? [],
  metricSteps: (key) => charts?.store.steps(key) ?? [],
};

start();
