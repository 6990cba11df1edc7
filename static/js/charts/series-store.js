// Metric series of one run, as the charts draw them: loaded from /charts/ (raw points or
// min/max/mean buckets), then extended by live points. A point is identified by (key, step):
// a step that arrives twice (a resumed attempt, a frame replayed after a reconnect) keeps one row.

export class SeriesStore {
  constructor() {
    this.series = new Map(); // key -> {bucketSteps, covered, rows: Map<step, [ts, value, low, high]>}
  }

  keys() {
    return [...this.series.keys()].sort();
  }

  /** Replace each series the server sent; live rows past what it covered are kept. */
  load(payload) {
    for (const item of payload.series) {
      const rows = new Map();
      for (let i = 0; i < item.steps.length; i++) {
        const low = item.low ? item.low[i] : item.values[i];
        const high = item.high ? item.high[i] : item.values[i];
        rows.set(item.steps[i], [item.ts[i], item.values[i], low, high]);
      }
      const lastStep = item.steps.length ? item.steps[item.steps.length - 1] : -Infinity;
      // A bucket stands for bucketSteps steps from its first one; a live point inside it is
      // already counted, so only points past the last bucket's end are added on top.
      const covered = item.bucket_steps > 1 ? Math.floor(lastStep / item.bucket_steps) * item.bucket_steps + item.bucket_steps - 1 : lastStep;
      const previous = this.series.get(item.key);
      if (previous) {
        for (const [step, row] of previous.rows) if (step > covered) rows.set(step, row);
      }
      this.series.set(item.key, { bucketSteps: item.bucket_steps, covered, rows, sorted: null });
    }
  }

  /** Live points from a metric frame: [{step, values: {key: value}}]. Returns the keys touched. */
  add(points, tsMs = Date.now()) {
    const touched = new Set();
    for (const point of points) {
      for (const [key, value] of Object.entries(point.values)) {
        let series = this.series.get(key);
        if (!series) {
          series = { bucketSteps: 1, covered: -Infinity, rows: new Map(), sorted: null };
          this.series.set(key, series);
        }
        if (series.bucketSteps > 1 && point.step <= series.covered) continue;
        const existing = series.rows.get(point.step);
        series.rows.set(point.step, [existing ? existing[0] : tsMs, value, value, value]);
        series.sorted = null;
        touched.add(key);
      }
    }
    return touched;
  }

  /** Rows sorted by step: [steps, ts, values, lows, highs]. */
  columns(key) {
    const series = this.series.get(key);
    if (!series) return [[], [], [], [], []];
    if (!series.sorted) {
      const steps = [...series.rows.keys()].sort((a, b) => a - b);
      const ts = [];
      const values = [];
      const lows = [];
      const highs = [];
      for (const step of steps) {
        const [t, value, low, high] = series.rows.get(step);
        ts.push(t);
        values.push(value);
        lows.push(low);
        highs.push(high);
      }
      series.sorted = [steps, ts, values, lows, highs];
    }
    return series.sorted;
  }

  bucketSteps(key) {
    return this.series.get(key)?.bucketSteps ?? 1;
  }

  size(key) {
    return this.series.get(key)?.rows.size ?? 0;
  }

  steps(key) {
    return this.columns(key)[0].slice();
  }
}

/** TensorBoard's smoothing: an exponential moving average, debiased so it starts at the data. */
export function smooth(values, weight) {
  if (!weight) return values;
  const out = new Array(values.length);
  let average = 0;
  let count = 0;
  for (let i = 0; i < values.length; i++) {
    const value = values[i];
    if (value == null || !Number.isFinite(value)) {
      out[i] = null;
      continue;
    }
    average = average * weight + (1 - weight) * value;
    count += 1;
    out[i] = average / (1 - weight ** count);
  }
  return out;
}
