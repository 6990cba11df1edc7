// Which chart a metric key goes to, and in what order the charts come (pure: tested under Node).
// train/* first, val/* next, any other prefix, keys without one, then the worker's system/*
// series, one chart per measure (every GPU of the run in one).

const GPU_SERIES = /^system\/gpu\d+\//;

export function isSystemGroup(name) {
  return name.startsWith("system/");
}

export function groupOf(key) {
  // Percent and MiB on one axis would flatten one of them: one chart per system measure.
  if (isSystemGroup(key)) return key.replace(GPU_SERIES, "system/gpu*/");
  const slash = key.indexOf("/");
  return slash > 0 ? `${key.slice(0, slash)}/*` : key;
}

export function groupOrder(name) {
  if (name === "train/*") return "0";
  if (name === "val/*") return "1";
  if (isSystemGroup(name)) return `4${name}`;
  return name.endsWith("/*") ? `2${name}` : `3${name}`;
}
