// Opens a .safetensors header preview the first time its <details> is expanded: tensor names,
// dtypes, shapes, the parameter count and the metadata, from the header alone.

import { getJSON } from "../lib/api.js";
import { formatInteger } from "../lib/format.js";

const MAX_ROWS = 500;

function element(tag, text, className) {
  const node = document.createElement(tag);
  if (text != null) node.textContent = text;
  if (className) node.className = className;
  return node;
}

function table(label, headings, rows, className = "") {
  // A table that may scroll sideways is a focusable region, so a keyboard can scroll it.
  const wrap = element("div", null, "table-wrap");
  wrap.tabIndex = 0;
  wrap.setAttribute("role", "region");
  wrap.setAttribute("aria-label", label);
  const tableElement = element("table", null, `data-table ${className}`.trim());
  const head = tableElement.createTHead().insertRow();
  for (const heading of headings) {
    const th = element("th", heading);
    th.scope = "col";
    head.append(th);
  }
  const body = tableElement.createTBody();
  for (const cells of rows) {
    const row = body.insertRow();
    for (const cell of cells) row.append(cell instanceof Node ? cell : element("td", cell));
  }
  wrap.append(tableElement);
  return wrap;
}

function code(text) {
  const td = element("td");
  td.append(element("code", text));
  return td;
}

/** A metadata value: JSON objects (such as a config) pretty-printed, anything else as is. */
function metadataValue(value) {
  const td = element("td");
  try {
    const parsed = JSON.parse(value);
    if (parsed && typeof parsed === "object") {
      td.append(element("pre", JSON.stringify(parsed, null, 2)));
      return td;
    }
  } catch {
    // not JSON: shown as text
  }
  td.append(element("code", value));
  return td;
}

export function render(body, preview) {
  body.textContent = "";
  const facts = element("dl", null, "preview-facts");
  const dtypes = [...new Set(preview.tensors.map((t) => t.dtype))].join(", ");
  for (const [term, value] of [
    ["Parameters", formatInteger(preview.parameters)],
    ["Tensors", formatInteger(preview.tensor_count)],
    ["Dtypes", dtypes || "—"],
  ]) {
    const group = element("div");
    group.append(element("dt", term), element("dd", value));
    facts.append(group);
  }
  body.append(facts);
  const metadata = Object.entries(preview.metadata).sort(([a], [b]) => a.localeCompare(b));
  if (metadata.length) {
    body.append(element("h3", "Metadata"));
    body.append(table("Metadata", ["Key", "Value"], metadata.map(([key, value]) => [code(key), metadataValue(value)])));
  }
  body.append(element("h3", "Tensors"));
  const rows = preview.tensors.slice(0, MAX_ROWS).map((t) => [code(t.name), t.dtype, `[${t.shape.join(", ")}]`, formatInteger(t.parameters)]);
  body.append(table("Tensors", ["Name", "Dtype", "Shape", "Parameters"], rows, "tensors"));
  if (preview.tensor_count > rows.length) {
    body.append(element("p", `The first ${formatInteger(rows.length)} of ${formatInteger(preview.tensor_count)} tensors.`, "muted"));
  }
}

/** Listens on `root` (toggle does not bubble, hence the capture). */
export function enablePreviews(root) {
  root.addEventListener(
    "toggle",
    async (event) => {
      const details = event.target;
      if (!(details instanceof HTMLDetailsElement) || !details.open || !details.dataset.previewUrl) return;
      if (details.dataset.loaded) return;
      details.dataset.loaded = "true";
      const body = details.querySelector(".preview-body");
      try {
        render(body, await getJSON(details.dataset.previewUrl));
      } catch (error) {
        delete details.dataset.loaded;
        body.textContent = "";
        body.append(element("p", `No preview: ${error.message}`, "field-error"));
      }
    },
    true,
  );
}
