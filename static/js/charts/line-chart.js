// One uPlot chart: several lines on one y axis, each with an optional min/max band (drawn when
// the server downsampled its series, so a spike inside a bucket stays visible).
//
// lines: [{label, color, x: number[], y: (number|null)[], low: [] | null, high: [] | null}]
// x is a step, a time in seconds since the epoch (xMode "time") or seconds elapsed ("elapsed").

import uPlot from "../../vendor/uplot/uPlot.esm.js";
import { formatDuration, formatInteger, formatValue } from "../lib/format.js";

const HEIGHT = 220;
let firstChartMarked = false;

function cssVar(name) {
  return getComputedStyle(document.documentElement).getPropertyValue(name).trim();
}

export function seriesColor(index) {
  return cssVar(`--series-${index % 10}`) || "#0969da";
}

function translucent(color, alpha) {
  const hex = color.replace("#", "");
  if (!/^[0-9a-f]{6}$/i.test(hex)) return color;
  const [r, g, b] = [0, 2, 4].map((i) => parseInt(hex.slice(i, i + 2), 16));
  return `rgba(${r}, ${g}, ${b}, ${alpha})`;
}

/** x strictly increasing (uPlot's join needs it): sorted, and equal times nudged apart. */
function table(line, logScale) {
  const order = line.x.map((_, i) => i);
  if (line.sortByX) order.sort((a, b) => line.x[a] - line.x[b]);
  const x = [];
  const y = [];
  const low = [];
  const high = [];
  let previous = -Infinity;
  const positive = (v) => (logScale && !(v > 0) ? null : v);
  for (const i of order) {
    let xi = line.x[i];
    if (xi == null) continue;
    if (xi <= previous) xi = previous + 1e-6;
    previous = xi;
    x.push(xi);
    y.push(positive(line.y[i]));
    if (line.low) {
      low.push(positive(line.low[i]));
      high.push(positive(line.high[i]));
    }
  }
  return line.low ? [x, y, low, high] : [x, y];
}

function shape(lines, options) {
  return JSON.stringify([options.xMode, options.logScale, lines.map((line) => [line.label, Boolean(line.low), line.color])]);
}

export class LineChart {
  constructor(host) {
    this.host = host;
    this.plot = null;
    this.shape = "";
    this.zoomed = false;
    this.resizer = new ResizeObserver(() => this.resize());
    this.resizer.observe(host);
  }

  update(lines, options) {
    const tables = lines.map((line) => table(line, options.logScale));
    const data = tables.length === 1 ? tables[0] : uPlot.join(tables);
    const nextShape = shape(lines, options);
    if (!this.plot || nextShape !== this.shape) {
      this.build(lines, options, data);
      this.shape = nextShape;
    } else {
      this.plot.setData(data, !this.zoomed);
    }
  }

  build(lines, options, data) {
    this.plot?.destroy();
    this.zoomed = false;
    const axisColor = cssVar("--chart-axis");
    const gridColor = cssVar("--chart-grid");
    const series = [{ label: options.xMode === "step" ? "step" : "time", value: xValue(options.xMode) }];
    const bands = [];
    for (const line of lines) {
      const index = series.length;
      const hasBand = Boolean(line.low);
      series.push({
        label: line.label,
        stroke: line.color,
        width: 1.5,
        spanGaps: true,
        value: (u, value, _series, idx) => {
          if (value == null) return "—";
          if (!hasBand || idx == null) return formatValue(value);
          const low = u.data[index + 1][idx];
          const high = u.data[index + 2][idx];
          return low === high ? formatValue(value) : `${formatValue(value)} (${formatValue(low)} – ${formatValue(high)})`;
        },
      });
      if (hasBand) {
        for (const edge of ["min", "max"]) {
          series.push({ label: `${line.label} ${edge}`, class: "band-edge", stroke: translucent(line.color, 0.35), width: 0.5, points: { show: false } });
        }
        bands.push({ series: [index + 2, index + 1], fill: translucent(line.color, 0.16) });
      }
    }
    const axis = { stroke: axisColor, grid: { stroke: gridColor, width: 1 }, ticks: { stroke: gridColor, width: 1 } };
    this.plot = new uPlot(
      {
        width: Math.max(200, this.host.clientWidth),
        height: HEIGHT,
        series,
        bands,
        scales: {
          x: { time: options.xMode === "time" },
          y: options.logScale ? { distr: 3 } : {},
        },
        axes: [
          { ...axis, values: xAxisValues(options.xMode) },
          { ...axis, size: 60, values: (_u, splits) => splits.map((v) => formatValue(v)) },
        ],
        legend: { live: true },
        cursor: { drag: { x: true, y: false }, points: { size: 6 } },
        hooks: {
          draw: [
            () => {
              if (!firstChartMarked) {
                firstChartMarked = true;
                performance.mark("cp:first-chart");
              }
            },
          ],
          setSelect: [() => (this.zoomed = true)],
        },
      },
      data,
      this.host,
    );
    // uPlot resets the zoom on double click; follow it so live updates autoscale again.
    this.plot.over.addEventListener("dblclick", () => (this.zoomed = false));
  }

  resize() {
    if (!this.plot) return;
    const width = Math.max(200, this.host.clientWidth);
    if (width !== this.plot.width) this.plot.setSize({ width, height: HEIGHT });
  }

  destroy() {
    this.resizer.disconnect();
    this.plot?.destroy();
    this.plot = null;
  }
}

function xValue(xMode) {
  if (xMode === "time") return (_u, v) => (v == null ? "—" : new Date(v * 1000).toLocaleTimeString());
  if (xMode === "elapsed") return (_u, v) => (v == null ? "—" : formatDuration(v));
  return (_u, v) => (v == null ? "—" : formatInteger(Math.round(v)));
}

function xAxisValues(xMode) {
  if (xMode === "time") return undefined; // uPlot's own time ticks
  if (xMode === "elapsed") return (_u, splits) => splits.map((v) => formatDuration(v));
  return (_u, splits) => splits.map((v) => (Number.isInteger(v) ? formatInteger(v) : ""));
}
