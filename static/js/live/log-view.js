// The run log: a window of at most MAX_LINES lines in memory, of which only the rows on screen
// (plus a small overscan) exist in the DOM. It opens at the tail, follows new lines while the
// reader is at the bottom, pauses when they scroll up, fetches older pages when they reach the
// top and newer ones when the window has come loose from the tail, and filters what it holds.
//
// The window is contiguous in seq. Live lines are appended only while the window touches the
// tail; otherwise they stay in the database until the reader scrolls down or jumps to the bottom.

import { getJSON, withParams } from "../lib/api.js";
import { formatClock, formatInteger } from "../lib/format.js";
import { plainText, renderAnsi } from "./ansi.js";

const PAGE = 1000; // lines per fetch
const MAX_LINES = 20000; // lines held in memory
const TRIM = 2000; // lines dropped at a time when the window is full (amortizes the work)
const OVERSCAN = 12; // rows rendered above and below the visible ones
const EDGE_ROWS = 30; // how close to an end of the window a fetch starts
const DISPLAY_CHARS = 2000; // longer lines show their head and how much was left out
const STREAM_LABELS = { stdout: "out", stderr: "err", system: "sys" };

export class LogView {
  constructor({ viewport, sizer, rows, state, followButton, tailUrl, logsUrl }) {
    Object.assign(this, { viewport, sizer, rows, stateElement: state, followButton, tailUrl, logsUrl });
    this.lines = []; // {seq, ts, stream, line}, contiguous and ascending
    this.view = null; // indices into lines that pass the filter; null when nothing is filtered
    this.query = "";
    this.streams = new Set(["stdout", "stderr", "system"]);
    this.hasOlder = false;
    this.hasNewer = false; // the window ends before the tail
    this.following = true;
    this.unseen = 0; // lines that arrived while paused
    this.lastKnownSeq = 0;
    this.loading = null;
    this.frame = 0;
    this.rowHeight = 20;
    this.pool = [];
    this.firstRendered = false;
    this.listen();
  }

  // -- loading ----------------------------------------------------------------------------------

  /** Opens at the tail; returns the last seq seen, where the live stream should resume. */
  async open() {
    this.measure();
    const page = await getJSON(withParams(this.tailUrl, { limit: PAGE }));
    this.lines = page.results;
    this.hasOlder = page.has_older;
    this.hasNewer = false;
    this.lastKnownSeq = Math.max(page.last_seq, this.lastSeq());
    this.rebuildView();
    this.following = true;
    this.render();
    this.updateState();
    return this.lastSeq();
  }

  lastSeq() {
    return this.lines.length ? this.lines[this.lines.length - 1].seq : 0;
  }

  /** Live lines from the socket (already past the socket's last seq). */
  append(lines) {
    if (!lines.length) return;
    this.lastKnownSeq = Math.max(this.lastKnownSeq, lines[lines.length - 1].seq);
    if (this.hasNewer) {
      this.unseen += lines.length;
      this.updateFollowButton();
      return;
    }
    const last = this.lastSeq();
    const fresh = lines.filter((line) => line.seq > last);
    if (!fresh.length) return;
    if (this.lines.length && fresh[0].seq !== last + 1) {
      // A gap (lines committed while the window was being fetched): fill it from the API.
      this.hasNewer = true;
      this.loadNewer();
      return;
    }
    const start = this.lines.length;
    for (const line of fresh) this.lines.push(line);
    if (this.view) {
      for (let i = start; i < this.lines.length; i++) if (this.matches(this.lines[i])) this.view.push(i);
    }
    if (!this.following) this.unseen += fresh.length;
    if (this.lines.length > MAX_LINES + TRIM) {
      if (this.following) this.trimFront();
      else this.trimBack();
    }
    this.schedule();
  }

  trimFront() {
    const drop = this.lines.length - MAX_LINES;
    this.lines.splice(0, drop);
    this.hasOlder = true;
    this.rebuildView();
  }

  trimBack() {
    this.lines.length = MAX_LINES;
    this.hasNewer = true;
    this.rebuildView();
  }

  async loadOlder() {
    if (this.loading || !this.hasOlder || !this.lines.length) return;
    this.loading = "older";
    this.updateState();
    try {
      const page = await getJSON(withParams(this.tailUrl, { before: this.lines[0].seq, limit: PAGE }));
      const before = this.count();
      this.lines = page.results.concat(this.lines);
      this.hasOlder = page.has_older;
      if (this.lines.length > MAX_LINES) this.trimBack();
      this.rebuildView();
      // Keep the rows the reader is looking at where they are (the taller content first, or
      // the browser clamps the new scroll position to the old height).
      this.fitHeight();
      this.viewport.scrollTop += (this.count() - before) * this.rowHeight;
    } finally {
      this.loading = null;
      this.render();
      this.updateState();
    }
  }

  async loadNewer() {
    if (this.loading || !this.hasNewer) return;
    this.loading = "newer";
    this.updateState();
    try {
      const page = await getJSON(withParams(this.logsUrl, { after: this.lastSeq(), limit: PAGE }));
      const fresh = page.results.filter((line) => line.seq > this.lastSeq());
      for (const line of fresh) this.lines.push(line);
      this.hasNewer = page.has_more;
      if (!this.hasNewer) this.unseen = 0;
      if (this.lines.length > MAX_LINES) {
        const before = this.count();
        this.trimFront();
        this.viewport.scrollTop -= (before - this.count()) * this.rowHeight;
        this.fitHeight();
      } else {
        this.rebuildView();
      }
    } finally {
      this.loading = null;
      this.render();
      this.updateState();
    }
  }

  async jumpToTop() {
    this.following = false;
    if (this.hasOlder) {
      const page = await getJSON(withParams(this.logsUrl, { after: 0, limit: PAGE }));
      this.lines = page.results;
      this.hasOlder = false;
      this.hasNewer = page.has_more || this.lastSeq() < this.lastKnownSeq;
      this.rebuildView();
    }
    this.render();
    this.viewport.scrollTop = 0;
    this.render();
    this.updateState();
  }

  async jumpToBottom() {
    if (this.hasNewer) {
      const page = await getJSON(withParams(this.tailUrl, { limit: PAGE }));
      this.lines = page.results;
      this.hasOlder = page.has_older;
      this.hasNewer = false;
      this.rebuildView();
    }
    this.following = true;
    this.unseen = 0;
    this.render();
    this.updateState();
  }

  // -- filtering --------------------------------------------------------------------------------

  setFilter(query, streams) {
    this.query = query.trim().toLowerCase();
    this.streams = new Set(streams);
    this.rebuildView();
    this.render();
    this.updateState();
  }

  matches(line) {
    if (!this.streams.has(line.stream)) return false;
    if (!this.query) return true;
    line.plain ??= plainText(line.line).toLowerCase();
    return line.plain.includes(this.query);
  }

  rebuildView() {
    if (!this.query && this.streams.size === 3) {
      this.view = null;
      return;
    }
    this.view = [];
    for (let i = 0; i < this.lines.length; i++) if (this.matches(this.lines[i])) this.view.push(i);
  }

  count() {
    return this.view ? this.view.length : this.lines.length;
  }

  lineAt(index) {
    return this.lines[this.view ? this.view[index] : index];
  }

  /** The seqs held, in order (a test hook compares them with the API's). */
  seqs() {
    return this.lines.map((line) => line.seq);
  }

  /** The seqs of the first and last rows on screen. */
  visibleSeqs() {
    const total = this.count();
    if (!total) return [];
    const first = Math.min(total - 1, Math.floor(this.viewport.scrollTop / this.rowHeight));
    const last = Math.min(total - 1, Math.ceil((this.viewport.scrollTop + this.viewport.clientHeight) / this.rowHeight) - 1);
    return [this.lineAt(first).seq, this.lineAt(last).seq];
  }

  // -- rendering --------------------------------------------------------------------------------

  measure() {
    const probe = document.createElement("div");
    probe.className = "log-row";
    probe.textContent = "x";
    this.rows.append(probe);
    this.rowHeight = probe.getBoundingClientRect().height || 20;
    probe.remove();
  }

  /** The scroll height: every line the view could show, at one row each. */
  fitHeight() {
    const height = this.count() * this.rowHeight;
    this.sizer.style.height = `${height}px`;
    return height;
  }

  schedule() {
    if (!this.frame) this.frame = requestAnimationFrame(() => this.render());
  }

  render() {
    cancelAnimationFrame(this.frame);
    this.frame = 0;
    const total = this.count();
    const height = this.fitHeight();
    if (this.following) this.viewport.scrollTop = height;
    const first = Math.max(0, Math.floor(this.viewport.scrollTop / this.rowHeight) - OVERSCAN);
    const visible = Math.ceil(this.viewport.clientHeight / this.rowHeight) + 2 * OVERSCAN;
    const last = Math.min(total, first + visible);
    while (this.pool.length < last - first) {
      const row = makeRow();
      this.pool.push(row);
      this.rows.append(row.element);
    }
    for (let i = 0; i < this.pool.length; i++) {
      const row = this.pool[i];
      const line = first + i < last ? this.lineAt(first + i) : null;
      row.element.hidden = line === null;
      if (line && row.seq !== line.seq) fillRow(row, line);
    }
    this.rows.style.transform = `translateY(${first * this.rowHeight}px)`;
    if (!this.firstRendered && total) {
      this.firstRendered = true;
      performance.mark("cp:first-log-line");
    }
    this.updateFollowButton();
  }

  // -- reading position -------------------------------------------------------------------------

  atBottom() {
    const { scrollTop, clientHeight, scrollHeight } = this.viewport;
    return scrollHeight - scrollTop - clientHeight <= this.rowHeight;
  }

  listen() {
    this.viewport.addEventListener("scroll", () => {
      const top = this.viewport.scrollTop;
      const bottom = this.atBottom();
      if (!bottom) this.following = false;
      else if (!this.hasNewer && !this.following) {
        this.following = true;
        this.unseen = 0;
        this.updateState();
      }
      if (top < EDGE_ROWS * this.rowHeight && this.hasOlder) this.loadOlder();
      if (this.hasNewer && this.viewport.scrollHeight - top - this.viewport.clientHeight < EDGE_ROWS * this.rowHeight) {
        this.loadNewer();
      }
      this.schedule();
      if (!this.following) this.updateState();
    });
    // Scrolling up pauses at once, even while a burst of lines keeps the view at the bottom.
    this.viewport.addEventListener("wheel", (event) => {
      if (event.deltaY < 0) this.pause();
    }, { passive: true });
    this.viewport.addEventListener("keydown", (event) => {
      if (event.key === "Home") {
        event.preventDefault();
        this.jumpToTop();
      } else if (event.key === "End") {
        event.preventDefault();
        this.jumpToBottom();
      } else if (["ArrowUp", "PageUp"].includes(event.key)) {
        this.pause();
      }
    });
    this.viewport.addEventListener("touchstart", () => this.pause(), { passive: true });
    this.followButton.addEventListener("click", () => {
      this.jumpToBottom();
      this.viewport.focus();
    });
    new ResizeObserver(() => this.schedule()).observe(this.viewport);
  }

  pause() {
    if (!this.following) return;
    this.following = false;
    this.updateState();
  }

  updateFollowButton() {
    const show = !this.following && (this.unseen > 0 || this.hasNewer);
    this.followButton.hidden = !show;
    if (show) {
      this.followButton.textContent = this.unseen
        ? `↓ ${formatInteger(this.unseen)} new line${this.unseen === 1 ? "" : "s"} · follow`
        : "↓ Back to the latest lines";
    }
  }

  /** The status line: rewritten only when the mode changes, since screen readers announce it. */
  updateState() {
    let text;
    if (this.loading === "older") text = "Loading earlier lines…";
    else if (this.loading === "newer") text = "Loading later lines…";
    else if (!this.lines.length) text = "No log lines yet.";
    else {
      const filtered = this.view ? `${formatInteger(this.view.length)} of ${formatInteger(this.lines.length)} loaded lines match. ` : "";
      const mode = this.following ? "Following new lines." : "Paused; press End or scroll to the bottom to follow.";
      text = filtered + mode;
    }
    if (this.stateElement.textContent !== text) this.stateElement.textContent = text;
    this.updateFollowButton();
  }
}

function makeRow() {
  const element = document.createElement("div");
  element.className = "log-row";
  const seq = document.createElement("span");
  seq.className = "seq";
  const ts = document.createElement("span");
  ts.className = "ts";
  const stream = document.createElement("span");
  stream.className = "st";
  const text = document.createElement("span");
  text.className = "text";
  element.append(seq, ts, stream, text);
  return { element, seq: null, parts: { seq, ts, stream, text } };
}

function fillRow(row, line) {
  row.seq = line.seq;
  row.element.className = `log-row ${line.stream}`;
  row.parts.seq.textContent = line.seq;
  line.clock ??= formatClock(new Date(line.ts));
  row.parts.ts.textContent = line.clock;
  row.parts.stream.textContent = STREAM_LABELS[line.stream] ?? line.stream;
  const text = row.parts.text;
  if (line.line.length > DISPLAY_CHARS) {
    renderAnsi(text, line.line.slice(0, DISPLAY_CHARS));
    const cut = document.createElement("span");
    cut.className = "cut";
    cut.textContent = ` … ${formatInteger(line.line.length - DISPLAY_CHARS)} more characters (download the log for all)`;
    text.append(cut);
  } else {
    renderAnsi(text, line.line);
  }
}
