// Confirmation in the page's <dialog>: the action runs only after "confirm", and an error
// (say, the run finished meanwhile) is shown in the dialog instead of vanishing.

export function confirmAction(dialog, { title, text, confirmLabel, dismissLabel = "Keep it", danger = true, action }) {
  const form = dialog.querySelector("form");
  const ok = dialog.querySelector("#confirm-ok");
  const dismiss = dialog.querySelector("#confirm-dismiss");
  const error = dialog.querySelector("#confirm-error");
  dialog.querySelector("#confirm-title").textContent = title;
  dialog.querySelector("#confirm-text").textContent = text;
  ok.textContent = confirmLabel;
  ok.className = `button ${danger ? "danger" : "primary"}`;
  dismiss.textContent = dismissLabel;
  error.hidden = true;
  ok.disabled = dismiss.disabled = false;
  const opener = document.activeElement;

  return new Promise((resolve) => {
    const onSubmit = async (event) => {
      if (event.submitter?.value !== "confirm") return; // "dismiss" closes the dialog
      event.preventDefault();
      ok.disabled = dismiss.disabled = true;
      try {
        await action();
        dialog.close("done");
      } catch (failure) {
        error.textContent = failure.message;
        error.hidden = false;
        ok.disabled = true;
        dismiss.disabled = false;
        dismiss.textContent = "Close";
        dismiss.focus();
      }
    };
    const onClose = () => {
      form.removeEventListener("submit", onSubmit);
      // Focus returns to what opened the dialog, if it is still on the page.
      if (opener?.isConnected) opener.focus();
      resolve(dialog.returnValue === "done");
    };
    form.addEventListener("submit", onSubmit);
    dialog.addEventListener("close", onClose, { once: true });
    dialog.returnValue = "";
    dialog.showModal();
    dismiss.focus();
  });
}
