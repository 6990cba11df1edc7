// The chart toolbar (x axis, log scale, smoothing): reads its controls and reports changes.

export function chartTools(root, onChange) {
  const smoothing = root.querySelector("#smoothing");
  const output = root.querySelector("#smoothing-value");
  const logScale = root.querySelector("#log-scale");
  const read = () => ({
    xMode: root.querySelector('input[name="x-axis"]:checked')?.value ?? "step",
    logScale: logScale.checked,
    smoothing: Number(smoothing.value),
  });
  root.addEventListener("change", () => onChange(read()));
  smoothing.addEventListener("input", () => {
    output.value = Number(smoothing.value).toFixed(2);
    onChange(read());
  });
  output.value = Number(smoothing.value).toFixed(2);
  return read();
}
