// The launch form. Choosing another program swaps in its parameter fields (the same
// server-rendered fragment the "Load its parameters" button would reload the page for), and
// after a refused submit, focus goes to the summary of what needs fixing.

import "./common.js";
import { refreshFragments } from "../lib/fragments.js";

const picker = document.getElementById("id_program");
const hidden = document.getElementById("id_program_value");
const loadButton = document.getElementById("load-program");
loadButton.hidden = true;

picker.addEventListener("change", async () => {
  const url = new URL(location.href);
  url.searchParams.set("program", picker.value);
  url.searchParams.delete("clone");
  try {
    await refreshFragments(url.pathname + url.search);
    hidden.value = picker.value;
    history.replaceState(null, "", url.pathname + url.search);
  } catch {
    loadButton.hidden = false; // fall back to the full reload
  }
});

document.getElementById("error-summary")?.focus();
