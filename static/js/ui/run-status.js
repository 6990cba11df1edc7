// The run's status on its page: badge, phase, progress bar, elapsed time and ETA, updated from
// status frames. When the status itself changes, the server-rendered parts (actions, timeline,
// attempts, artifacts) are fetched again and swapped in; while the run is queued, every few seconds
// too, so its queue position and waiting reason stay current.

import { refreshFragments } from "../lib/fragments.js";
import { formatDuration, formatInteger, localizeTimes } from "../lib/format.js";
import { LABELS, LIVE, applyBadge, percent } from "../lib/status.js";

const RATE_WINDOW_MS = 60000;
// While the run waits, why it waits (its queue position, a quota, a busy pool) changes without a
// status frame: the summary is fetched again this often, never while the tab is hidden.
const WAITING_REFRESH_MS = 5000;

export class RunStatus extends EventTarget {
  constructor({ page, announcer, fragmentsUrl }) {
    super();
    Object.assign(this, { page, announcer, fragmentsUrl });
    this.samples = []; // [clientMs, step] for the ETA
    this.readSummary();
    this.timer = setInterval(() => this.tick(), 1000);
    this.waitingTimer = setInterval(() => {
      if (this.status === "queued" && !document.hidden) this.refresh();
    }, WAITING_REFRESH_MS);
    this.tick();
  }

  get summary() {
    return this.page.querySelector('[data-fragment="summary"]');
  }

  /** Facts the server rendered (times in its clock; `offset` maps them to ours). */
  readSummary() {
    const data = this.summary.dataset;
    const time = (value) => (value ? Date.parse(value) : null);
    this.status = data.status;
    this.attempt = Number(data.attempt);
    this.startedAt = time(data.started);
    this.finishedAt = time(data.finished);
    this.offset = Date.now() - (time(data.now) ?? Date.now());
    this.step = data.progressStep === "" ? null : Number(data.progressStep);
    this.total = data.progressTotal === "" ? null : Number(data.progressTotal);
    this.page.dataset.status = this.status;
  }

  update(frame) {
    const changed = frame.status !== this.status || (frame.attempt ?? this.attempt) !== this.attempt;
    this.attempt = frame.attempt ?? this.attempt;
    if (frame.progress_step != null && frame.progress_step !== this.step) {
      this.samples.push([Date.now(), frame.progress_step]);
      while (this.samples.length > 2 && this.samples[0][0] < Date.now() - RATE_WINDOW_MS) this.samples.shift();
    }
    this.step = frame.progress_step ?? this.step;
    this.total = frame.progress_total ?? this.total;
    const previous = this.status;
    this.status = frame.status;
    this.page.dataset.status = this.status;
    const summary = this.summary;
    applyBadge(summary.querySelector('[data-live="status"]'), this.status);
    const phase = summary.querySelector('[data-live="phase"]');
    if (phase) phase.textContent = frame.phase ?? "";
    this.renderProgress();
    this.tick();
    if (changed) {
      if (previous !== undefined && previous !== this.status) this.announce(`Run ${LABELS[this.status] ?? this.status}.`);
      this.samples = [];
      this.refresh();
    }
  }

  async refresh() {
    try {
      const swapped = await refreshFragments(this.fragmentsUrl, this.page);
      localizeTimes(this.page);
      if (swapped.includes("summary")) this.readSummary();
      this.renderProgress();
      this.tick();
      this.dispatchEvent(new CustomEvent("refreshed", { detail: swapped }));
    } catch {
      // The next status frame tries again; the live facts above are already current.
    }
  }

  renderProgress() {
    const summary = this.summary;
    const bar = summary.querySelector('[data-live="progress"]');
    const text = summary.querySelector('[data-live="progress-text"]');
    const pct = percent(this.step, this.total);
    if (pct != null) {
      bar.max = this.total;
      bar.value = this.step;
      text.textContent = `Step ${formatInteger(this.step)} of ${formatInteger(this.total)} (${pct}%)`;
    } else if (this.step != null) {
      text.textContent = `Step ${formatInteger(this.step)}`;
    }
    if (this.status === "succeeded") {
      bar.max = bar.max || 1;
      bar.value = bar.max;
    }
  }

  elapsedSeconds() {
    if (this.startedAt == null || this.status === "queued") return null;
    const end = this.finishedAt ?? (LIVE.has(this.status) ? Date.now() - this.offset : null);
    return end == null ? null : Math.max(0, (end - this.startedAt) / 1000);
  }

  etaSeconds() {
    if (!LIVE.has(this.status) || this.step == null || !this.total || this.step >= this.total) return null;
    let rate = null;
    if (this.samples.length >= 2) {
      const [t0, s0] = this.samples[0];
      const [t1, s1] = this.samples[this.samples.length - 1];
      if (t1 - t0 >= 2000 && s1 > s0) rate = (s1 - s0) / ((t1 - t0) / 1000);
    }
    if (rate == null) {
      const elapsed = this.elapsedSeconds();
      if (elapsed && this.step > 0) rate = this.step / elapsed;
    }
    return rate ? (this.total - this.step) / rate : null;
  }

  tick() {
    const summary = this.summary;
    const elapsed = summary.querySelector('[data-live="elapsed"]');
    const eta = summary.querySelector('[data-live="eta"]');
    if (elapsed) elapsed.textContent = formatDuration(this.elapsedSeconds());
    if (eta) {
      const seconds = this.etaSeconds();
      eta.textContent = seconds == null ? (this.status === "succeeded" ? "Done" : "—") : `≈ ${formatDuration(seconds)}`;
    }
  }

  announce(text) {
    this.announcer.textContent = text;
  }
}
