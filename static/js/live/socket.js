// The run's websocket: connects, reports its state, reconnects with backoff, and resumes from
// the last log seq it delivered, so a cut connection costs neither a gap nor a duplicate.
//
// Events: "frame" (detail: a frame; log frames carry only lines past the last seq delivered),
// "open" (after every (re)connect: a caller refetches what has no seq, such as metric points),
// "state" (detail: {state, retryAt, reason}).
// States: connecting, live, reconnecting, offline, failed (will not retry), closed (stopped).

const BACKOFF_MS = [500, 1000, 2000, 4000, 8000, 15000];
const PING_EVERY_MS = 15000;
const SILENCE_LIMIT_MS = 40000;
const CLOSE_UNAUTHENTICATED = 4401;
const CLOSE_FORBIDDEN = 4403;
const CLOSE_NOT_FOUND = 4404;

export class RunSocket extends EventTarget {
  constructor(path, { after = 0 } = {}) {
    super();
    this.path = path;
    this.lastSeq = after;
    this.state = "connecting";
    this.attempts = 0;
    this.ws = null;
    this.retryTimer = 0;
    this.pingTimer = 0;
    this.lastMessageAt = 0;
    this.holdUntil = 0;
    this.stopped = false;
    this.opens = 0;
    addEventListener("online", () => {
      if (this.state === "offline") this.connectNow();
    });
  }

  start() {
    this.stopped = false;
    this.connect();
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.retryTimer);
    clearInterval(this.pingTimer);
    this.ws?.close(1000, "done");
    this.setState("closed");
  }

  /** Reconnect at once (a "Reconnect now" button, or the browser coming back online). */
  connectNow() {
    clearTimeout(this.retryTimer);
    this.holdUntil = 0;
    if (!this.ws || this.ws.readyState === WebSocket.CLOSED) this.connect();
  }

  /** Cut the connection as a network failure would; hold reconnecting for `holdMs` (tests). */
  drop(holdMs = 0) {
    this.holdUntil = Date.now() + holdMs;
    this.ws?.close(4000, "dropped by the page");
  }

  url() {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    return `${scheme}//${location.host}${this.path}?after=${this.lastSeq}`;
  }

  connect() {
    clearTimeout(this.retryTimer);
    this.setState(this.opens === 0 ? "connecting" : "reconnecting");
    const ws = new WebSocket(this.url());
    this.ws = ws;
    ws.addEventListener("open", () => {
      if (ws !== this.ws) return;
      this.opens += 1;
      this.lastMessageAt = Date.now();
      this.setState("live");
      clearInterval(this.pingTimer);
      this.pingTimer = setInterval(() => this.keepAlive(), PING_EVERY_MS);
      this.dispatchEvent(new Event("open"));
    });
    ws.addEventListener("message", (event) => {
      if (ws !== this.ws) return;
      this.lastMessageAt = Date.now();
      // Backoff starts over only once the server has talked: a socket that opens and
      // closes at once still backs off.
      this.attempts = 0;
      if (event.data === "pong") return;
      let frame;
      try {
        frame = JSON.parse(event.data);
      } catch {
        return;
      }
      this.deliver(frame);
    });
    ws.addEventListener("close", (event) => {
      if (ws !== this.ws) return;
      clearInterval(this.pingTimer);
      if (this.stopped) return;
      if (event.code === CLOSE_UNAUTHENTICATED) {
        this.setState("failed", { reason: "You were signed out; reload the page to sign in again." });
        return;
      }
      if (event.code === CLOSE_FORBIDDEN) {
        // Refused at the handshake (role, token scope, origin) or later, when the grant changed.
        this.setState("failed", { reason: "You may no longer watch this run; reload the page." });
        return;
      }
      if (event.code === CLOSE_NOT_FOUND) {
        this.setState("failed", { reason: "This run is gone or you may no longer see it." });
        return;
      }
      this.scheduleReconnect();
    });
  }

  deliver(frame) {
    if (frame.type === "log") {
      // The server already resumes from ?after=N; this guards against any replay all the same.
      const lines = frame.lines.filter((line) => line.seq > this.lastSeq);
      if (!lines.length) return;
      this.lastSeq = lines[lines.length - 1].seq;
      frame = { ...frame, lines };
    }
    this.dispatchEvent(new CustomEvent("frame", { detail: frame }));
  }

  scheduleReconnect() {
    if (!navigator.onLine) {
      this.setState("offline");
      return;
    }
    const base = BACKOFF_MS[Math.min(this.attempts, BACKOFF_MS.length - 1)];
    this.attempts += 1;
    // Jitter spreads the reconnects of many tabs after a server restart.
    const delay = Math.max(base * (0.5 + Math.random() / 2), this.holdUntil - Date.now());
    const retryAt = Date.now() + delay;
    this.setState("reconnecting", { retryAt });
    this.retryTimer = setTimeout(() => this.connect(), delay);
  }

  keepAlive() {
    const ws = this.ws;
    if (!ws || ws.readyState !== WebSocket.OPEN) return;
    if (Date.now() - this.lastMessageAt > SILENCE_LIMIT_MS) {
      // A half-open connection (a sleeping laptop, a dropped NAT entry) never reports itself.
      ws.close(4000, "silent");
      return;
    }
    ws.send("ping");
  }

  setState(state, extra = {}) {
    this.state = state;
    this.dispatchEvent(new CustomEvent("state", { detail: { state, ...extra } }));
  }
}
