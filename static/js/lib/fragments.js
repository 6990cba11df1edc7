// Swaps server-rendered parts of a page ([data-fragment="name"]) for fresh ones from a URL.
// The server renders and escapes the HTML; nothing in it runs. A fragment whose data-key has not
// changed is left alone, so an open <details> or a focused button survives a refresh.

export async function refreshFragments(url, root = document) {
  const response = await fetch(url, { credentials: "same-origin", headers: { Accept: "text/html" } });
  if (!response.ok) throw new Error(`fragments: ${response.status}`);
  const fresh = new DOMParser().parseFromString(await response.text(), "text/html");
  const swapped = [];
  for (const next of fresh.querySelectorAll("[data-fragment]")) {
    const name = next.dataset.fragment;
    const current = root.querySelector(`[data-fragment="${CSS.escape(name)}"]`);
    if (!current) continue;
    if (next.dataset.key !== undefined && next.dataset.key === current.dataset.key) continue;
    const focused = current.contains(document.activeElement) ? document.activeElement.id : "";
    current.replaceWith(document.adoptNode(next));
    if (focused) document.getElementById(focused)?.focus();
    swapped.push(name);
  }
  return swapped;
}
