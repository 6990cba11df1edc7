// Compare: the params diff can hide what is equal, and one chart per metric key overlays the
// runs (x by step or by time elapsed since each run's first point).

import "./common.js";
import { getJSON, withParams } from "../lib/api.js";
import { chartTools } from "../charts/chart-tools.js";
import { LineChart, seriesColor } from "../charts/line-chart.js";
import { SeriesStore, smooth } from "../charts/series-store.js";
import { groupOf, groupOrder } from "../charts/run-charts.js";

const diff = document.getElementById("diff-table");
const only = document.getElementById("only-differences");
only?.addEventListener("change", () => diff.classList.toggle("only-differences", only.checked));

const container = document.getElementById("charts");
const empty = document.getElementById("charts-empty");
const runs = [...document.querySelectorAll("#compare-runs li[data-run-id]")].map((item, index) => ({
  id: item.dataset.runId,
  name: item.dataset.runName,
  url: item.dataset.chartsUrl,
  color: seriesColor(index),
  store: new SeriesStore(),
  t0: 0,
}));
const charts = new Map();

function card(key) {
  if (charts.has(key)) return charts.get(key);
  const figure = document.createElement("figure");
  figure.className = "chart-card";
  const caption = document.createElement("figcaption");
  const title = document.createElement("h3");
  title.textContent = key;
  caption.append(title);
  const host = document.createElement("div");
  host.className = "chart-host";
  figure.append(caption, host);
  container.append(figure);
  const chart = new LineChart(host);
  charts.set(key, chart);
  return chart;
}

function draw(options) {
  const keys = [...new Set(runs.flatMap((run) => run.store.keys()))].sort((a, b) => groupOrder(groupOf(a)).localeCompare(groupOrder(groupOf(b))) || a.localeCompare(b));
  empty.hidden = keys.length > 0;
  if (!keys.length) empty.textContent = "None of these runs reported metrics.";
  for (const key of keys) {
    const lines = runs
      .filter((run) => run.store.size(key))
      .map((run) => {
        const [steps, ts, values, lows, highs] = run.store.columns(key);
        const banded = run.store.bucketSteps(key) > 1;
        return {
          label: `#${run.id} ${run.name}`,
          color: run.color,
          x: options.xMode === "step" ? steps : ts.map((t) => (t - run.t0) / 1000),
          sortByX: options.xMode !== "step",
          y: smooth(values, options.smoothing),
          low: banded ? lows : null,
          high: banded ? highs : null,
        };
      });
    card(key).update(lines, { ...options, xMode: options.xMode === "time" ? "elapsed" : "step" });
  }
}

if (container && runs.length) {
  let options = chartTools(document.getElementById("chart-tools"), (next) => {
    options = next;
    draw(options);
  });
  const maxPoints = Math.max(200, Math.min(8000, Math.round(2 * Math.min(container.clientWidth, 620))));
  Promise.all(
    runs.map(async (run) => {
      const payload = await getJSON(withParams(run.url, { max_points: maxPoints }));
      run.store.load(payload);
      run.t0 = Math.min(...payload.series.map((s) => (s.ts.length ? s.ts[0] : Infinity)));
    }),
  )
    .then(() => draw(options))
    .catch((error) => {
      empty.textContent = `Metrics could not be loaded: ${error.message}`;
    });
}
