// Unit tests of the dashboard's pure modules, run by Node's own test runner
// (tests/browser/test_js_units.py runs `node --test` on this directory).
import assert from "node:assert/strict";
import test from "node:test";

import { plainText } from "../../../static/js/live/ansi.js";
import { groupOf, groupOrder, isSystemGroup } from "../../../static/js/charts/groups.js";
import { SeriesStore, smooth } from "../../../static/js/charts/series-store.js";
import { formatDuration, formatValue } from "../../../static/js/lib/format.js";
import { percent } from "../../../static/js/lib/status.js";

test("plainText drops colour codes, cursor moves and controls, and keeps the last redraw", () => {
  assert.equal(plainText("\x1b[1;31mred\x1b[0m plain"), "red plain");
  assert.equal(plainText("a\x1b[2K\x1b[1Gb\x07c"), "abc");
  assert.equal(plainText("\x1b]0;window title\x07text"), "text");
  assert.equal(plainText("10%\r50%\r100%"), "100%");
  assert.equal(plainText("done\r"), "done");
  assert.equal(plainText("tab\tkept"), "tab\tkept");
});

test("a step reported twice keeps one point, the last value", () => {
  const store = new SeriesStore();
  store.add([{ step: 1, values: { loss: 2 } }, { step: 2, values: { loss: 1.5 } }]);
  store.add([{ step: 2, values: { loss: 1.4 } }, { step: 3, values: { loss: 1.2, acc: 0.5 } }]);
  assert.deepEqual(store.steps("loss"), [1, 2, 3]);
  assert.deepEqual(store.columns("loss")[2], [2, 1.4, 1.2]);
  assert.deepEqual(store.keys(), ["acc", "loss"]);
});

test("loading buckets keeps the live points past them and drops those inside", () => {
  const store = new SeriesStore();
  store.add([{ step: 5000, values: { loss: 9 } }, { step: 4100, values: { loss: 8 } }]);
  store.load({
    series: [{ key: "loss", bucket_steps: 1024, steps: [0, 1024, 2048, 3072], ts: [0, 1, 2, 3], values: [4, 3, 2, 1], low: [3, 2, 1, 0], high: [5, 4, 3, 2] }],
  });
  // The last bucket covers 3072..4095: 4100 and 5000 are past it and stay.
  assert.deepEqual(store.steps("loss"), [0, 1024, 2048, 3072, 4100, 5000]);
  store.add([{ step: 3500, values: { loss: 100 } }]); // inside a bucket: already counted
  assert.equal(store.size("loss"), 6);
});

test("smoothing is a debiased moving average that starts at the data", () => {
  assert.deepEqual(smooth([1, 2, 3], 0), [1, 2, 3]);
  const out = smooth([2, 2, null, 2], 0.9);
  assert.ok(Math.abs(out[0] - 2) < 1e-12 && Math.abs(out[3] - 2) < 1e-12);
  assert.equal(out[2], null);
});

test("durations and values read at a glance", () => {
  assert.equal(formatDuration(59.9), "59s");
  assert.equal(formatDuration(61), "1m 01s");
  assert.equal(formatDuration(3600 * 26), "1d 02h");
  assert.equal(formatDuration(null), "—");
  assert.equal(formatValue(0.000123), "1.230e-4");
  assert.equal(formatValue(2.3456789), "2.346");
  assert.equal(percent(5, 0), null);
  assert.equal(percent(150, 100), 100);
});

test("system series get a chart per measure, every GPU of the run in one, after the training charts", () => {
  assert.equal(groupOf("train/loss"), "train/*");
  assert.equal(groupOf("lr"), "lr");
  assert.equal(groupOf("system/cpu_percent"), "system/cpu_percent");
  assert.equal(groupOf("system/rss_mib"), "system/rss_mib");
  assert.equal(groupOf("system/gpu0/util_percent"), "system/gpu*/util_percent");
  assert.equal(groupOf("system/gpu12/util_percent"), "system/gpu*/util_percent");
  assert.equal(groupOf("system/gpu3/memory_mib"), "system/gpu*/memory_mib");
  assert.ok(isSystemGroup("system/gpu*/memory_mib") && !isSystemGroup("train/*") && !isSystemGroup("systemic"));
  const names = ["system/rss_mib", "lr", "val/*", "system/cpu_percent", "train/*", "eval/*"];
  names.sort((a, b) => groupOrder(a).localeCompare(groupOrder(b)));
  assert.deepEqual(names, ["train/*", "val/*", "eval/*", "lr", "system/cpu_percent", "system/rss_mib"]);
});
