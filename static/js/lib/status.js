// Run statuses as the page shows them (the labels match runs/web/display.py).

export const LABELS = {
  queued: "Queued",
  running: "Running",
  cancelling: "Cancelling",
  preempted: "Preempted",
  succeeded: "Succeeded",
  failed: "Failed",
  cancelled: "Cancelled",
  lost: "Lost",
  dead: "Dead",
};
export const TERMINAL = new Set(["succeeded", "failed", "cancelled", "dead"]);
export const LIVE = new Set(["running", "cancelling", "preempted"]);
export const ACTIVE = new Set(["queued", "running", "cancelling", "preempted", "lost"]);

export function applyBadge(badge, status) {
  if (!badge) return;
  badge.className = `badge status-${status}`;
  badge.textContent = LABELS[status] ?? status;
}

export function percent(step, total) {
  if (step == null || !total) return null;
  return Math.max(0, Math.min(100, Math.floor((100 * step) / total)));
}
