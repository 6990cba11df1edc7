// The run page's charts: one per metric group (train/*, val/*, any other prefix; a key without
// a prefix gets its own), fed by /charts/ and then by live metric frames. The worker's system/*
// series (CPU, memory, GPUs of the program) come last, each measure in its own chart (every GPU
// of the run in one), in their own section when the page has one.

import { getJSON, withParams } from "../lib/api.js";
import { formatInteger, formatValue } from "../lib/format.js";
import { LineChart, seriesColor } from "./line-chart.js";
import { groupOf, groupOrder, isSystemGroup } from "./groups.js";
import { SeriesStore, smooth } from "./series-store.js";

export { groupOf, groupOrder, isSystemGroup };

const REDRAW_MS = 250; // live points redraw at most four times a second
const RELOAD_MIN_MS = 5000;

export class RunCharts {
  constructor({ container, empty, chartsUrl, options, systemSection = null, systemContainer = null }) {
    Object.assign(this, { container, empty, chartsUrl, options, systemSection, systemContainer });
    this.store = new SeriesStore();
    this.cards = new Map(); // group -> {figure, note, chart}
    this.redrawTimer = 0;
    this.reloadTimer = 0;
    this.lastLoad = 0;
    this.loading = null;
    this.again = false;
    this.maxPoints = 2000;
  }

  /** About two values per pixel of plot width: the server never sends more than can show. */
  pointsForWidth() {
    const width = this.container.querySelector(".chart-host")?.clientWidth || Math.min(this.container.clientWidth, 620);
    return Math.max(200, Math.min(8000, Math.round(2 * width)));
  }

  /** Fetch every series. A call while a fetch is in flight runs once more after it (not beside
   * it: on a cold server cache two at once would both aggregate the whole series). */
  load() {
    if (this.loading) {
      this.again = true;
      return this.loading;
    }
    this.loading = (async () => {
      try {
        do {
          this.again = false;
          this.lastLoad = Date.now();
          this.maxPoints = this.pointsForWidth();
          try {
            const payload = await getJSON(withParams(this.chartsUrl, { max_points: this.maxPoints }));
            this.store.load(payload);
            this.draw();
          } catch (error) {
            if (!this.again) throw error; // a fetch asked for meanwhile still runs
          }
        } while (this.again);
      } finally {
        this.loading = null;
      }
    })();
    return this.loading;
  }

  /** Refetch soon (after a reconnect, or when live points outgrow the chart), not in bursts. */
  reload() {
    if (this.reloadTimer) return;
    const wait = Math.max(0, this.lastLoad + RELOAD_MIN_MS - Date.now());
    this.reloadTimer = setTimeout(() => {
      this.reloadTimer = 0;
      this.load().catch(() => {});
    }, wait);
  }

  addPoints(points) {
    const touched = this.store.add(points);
    for (const key of touched) {
      if (this.store.size(key) > this.maxPoints * 1.5) this.reload();
    }
    if (touched.size && !this.redrawTimer) {
      this.redrawTimer = setTimeout(() => {
        this.redrawTimer = 0;
        this.draw();
      }, REDRAW_MS);
    }
  }

  setOptions(options) {
    this.options = options;
    this.draw();
  }

  groups() {
    const groups = new Map();
    for (const key of this.store.keys()) {
      const name = groupOf(key);
      if (!groups.has(name)) groups.set(name, []);
      groups.get(name).push(key);
    }
    return [...groups.entries()].sort(([a], [b]) => groupOrder(a).localeCompare(groupOrder(b)));
  }

  draw() {
    const groups = this.groups();
    this.empty.hidden = groups.length > 0;
    const { xMode, logScale, smoothing } = this.options;
    for (const [name, keys] of groups) {
      const card = this.card(name);
      const lines = keys.map((key, i) => {
        const [steps, ts, values, lows, highs] = this.store.columns(key);
        const banded = this.store.bucketSteps(key) > 1;
        return {
          label: key,
          color: seriesColor(i),
          x: xMode === "time" ? ts.map((t) => t / 1000) : steps,
          sortByX: xMode === "time",
          y: smooth(values, smoothing),
          low: banded ? lows : null,
          high: banded ? highs : null,
        };
      });
      card.chart.update(lines, { xMode, logScale });
      card.note.textContent = keys.map((key) => this.describe(key)).join(" · ");
    }
  }

  describe(key) {
    const [steps, , values] = this.store.columns(key);
    if (!steps.length) return `${key}: no points`;
    const last = steps.length - 1;
    const bucket = this.store.bucketSteps(key);
    const band = bucket > 1 ? `, band = min/max of ${formatInteger(bucket)} steps` : "";
    return `${key} ${formatValue(values[last])} at step ${formatInteger(steps[last])}${band}`;
  }

  card(name) {
    let card = this.cards.get(name);
    if (card) return card;
    const figure = document.createElement("figure");
    figure.className = "chart-card";
    figure.dataset.group = name;
    const title = document.createElement("h3");
    title.textContent = name;
    const note = document.createElement("p");
    note.className = "chart-note";
    const caption = document.createElement("figcaption");
    caption.append(title, note);
    const host = document.createElement("div");
    host.className = "chart-host";
    figure.append(caption, host);
    // Keep the cards in group order as new groups appear.
    const order = groupOrder(name);
    const system = isSystemGroup(name) && this.systemContainer;
    const container = system ? this.systemContainer : this.container;
    if (system && this.systemSection) this.systemSection.hidden = false;
    const next = [...container.children].find((el) => groupOrder(el.dataset.group) > order);
    container.insertBefore(figure, next ?? null);
    card = { figure, note, chart: new LineChart(host) };
    this.cards.set(name, card);
    return card;
  }
}
