// Renders a log line's ANSI colour codes (SGR) as spans, and drops every other escape or
// control sequence. Text only ever goes in through text nodes: a line is data, never markup.

// CSI sequences, OSC/DCS/APC strings, two-byte escapes, and C0 controls other than tab.
// eslint-disable-next-line no-control-regex
const SEQUENCE = /\x1b\[([0-9;:?<>=]*)([@-~])|\x1b[\]PX^_][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b[@-Z\\-_]?|[\x00-\x08\x0a-\x1f\x7f]/g;

function freshStyle() {
  return { fg: null, bg: null, fgRgb: null, bgRgb: null, bold: false, dim: false, italic: false, underline: false };
}

const CUBE = [0, 95, 135, 175, 215, 255];

function xterm256(n) {
  if (n < 16) return { index: n };
  if (n < 232) {
    const i = n - 16;
    return { rgb: `rgb(${CUBE[Math.floor(i / 36)]} ${CUBE[Math.floor(i / 6) % 6]} ${CUBE[i % 6]})` };
  }
  const grey = 8 + (n - 232) * 10;
  return { rgb: `rgb(${grey} ${grey} ${grey})` };
}

function applySgr(style, params) {
  const codes = params === "" ? [0] : params.split(/[;:]/).map((part) => Number(part) || 0);
  for (let i = 0; i < codes.length; i++) {
    const code = codes[i];
    if (code === 0) Object.assign(style, freshStyle());
    else if (code === 1) style.bold = true;
    else if (code === 2) style.dim = true;
    else if (code === 3) style.italic = true;
    else if (code === 4) style.underline = true;
    else if (code === 22) style.bold = style.dim = false;
    else if (code === 23) style.italic = false;
    else if (code === 24) style.underline = false;
    else if (code >= 30 && code <= 37) [style.fg, style.fgRgb] = [code - 30, null];
    else if (code >= 90 && code <= 97) [style.fg, style.fgRgb] = [code - 90 + 8, null];
    else if (code === 39) [style.fg, style.fgRgb] = [null, null];
    else if (code >= 40 && code <= 47) [style.bg, style.bgRgb] = [code - 40, null];
    else if (code >= 100 && code <= 107) [style.bg, style.bgRgb] = [code - 100, null];
    else if (code === 49) [style.bg, style.bgRgb] = [null, null];
    else if (code === 38 || code === 48) {
      let colour = null;
      if (codes[i + 1] === 5 && i + 2 < codes.length) {
        colour = xterm256(codes[i + 2] & 255);
        i += 2;
      } else if (codes[i + 1] === 2 && i + 4 < codes.length) {
        const [r, g, b] = codes.slice(i + 2, i + 5).map((v) => Math.max(0, Math.min(255, v)));
        colour = { rgb: `rgb(${r} ${g} ${b})` };
        i += 4;
      }
      if (colour && code === 38) [style.fg, style.fgRgb] = [colour.index ?? null, colour.rgb ?? null];
      if (colour && code === 48) [style.bg, style.bgRgb] = [colour.index != null ? colour.index % 8 : null, colour.rgb ?? null];
    }
  }
}

function classes(style) {
  const names = [];
  if (style.fg != null) names.push(`ansi-fg-${style.fg}`);
  if (style.bg != null) names.push(`ansi-bg-${style.bg}`);
  if (style.bold) names.push("ansi-bold");
  if (style.dim) names.push("ansi-dim");
  if (style.italic) names.push("ansi-italic");
  if (style.underline) names.push("ansi-underline");
  return names.join(" ");
}

/** What a terminal would show of a line that redraws itself with carriage returns. */
function lastRedraw(text) {
  const cut = text.lastIndexOf("\r", text.length - 2);
  return cut === -1 ? text : text.slice(cut + 1);
}

/** Fill `element` with `text`: coloured spans for SGR codes, every other control removed. */
export function renderAnsi(element, text) {
  text = lastRedraw(text);
  if (!/[\x00-\x08\x0a-\x1f\x7f]/.test(text)) {
    element.textContent = text;
    return;
  }
  element.textContent = "";
  const style = freshStyle();
  let position = 0;
  const emit = (chunk) => {
    if (!chunk) return;
    const className = classes(style);
    if (!className && !style.fgRgb && !style.bgRgb) {
      element.append(chunk);
      return;
    }
    const span = document.createElement("span");
    span.className = className;
    // CSSOM, not a style attribute: allowed under style-src 'self'.
    if (style.fgRgb) span.style.color = style.fgRgb;
    if (style.bgRgb) span.style.backgroundColor = style.bgRgb;
    span.textContent = chunk;
    element.append(span);
  };
  SEQUENCE.lastIndex = 0;
  for (let match = SEQUENCE.exec(text); match; match = SEQUENCE.exec(text)) {
    emit(text.slice(position, match.index));
    position = SEQUENCE.lastIndex;
    if (match[2] === "m") applySgr(style, match[1]);
  }
  emit(text.slice(position));
}

/** The line without any escape or control sequence (what a text filter matches against). */
export function plainText(text) {
  return lastRedraw(text).replace(SEQUENCE, "");
}
