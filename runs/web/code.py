"""The code-run parts of the run page: the snapshot (hash, size, files) and the exact command,
and the Clone button of a code run, which launches the same snapshot and command at once (the
launch form is for programs; a code run has no params to edit)."""

from __future__ import annotations

import shlex
from typing import Any

from django.contrib import messages
from django.contrib.auth.models import User
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.views.decorators.http import require_POST

from accounts.pages import check_row, page_principal, requires
from accounts.policy import Action, can
from runs import selectors, services, snapshots
from runs.models import Run, RunKind
from runs.web import display

# The file list is collapsed above this many files (a <details> the user opens).
OPEN_FILE_LIST = 20


def context(request: HttpRequest, run: Run) -> dict[str, Any]:
    """Template context for a code run: `code` is None for other runs."""
    if run.kind != RunKind.CODE or run.snapshot_id is None:
        return {"code": None}
    snapshot = snapshots.find_snapshot(run.snapshot_id)
    files = list(snapshot.files) if snapshot is not None else []
    return {
        "code": {
            "sha256": run.snapshot_id,
            "command": shlex.join(run.command),
            "size": display.format_bytes(snapshot.size) if snapshot else "",
            "unpacked_size": display.format_bytes(snapshot.unpacked_size) if snapshot else "",
            "files": [{**f, "size_text": display.format_bytes(int(f["size"]))} for f in files],
            "file_count": len(files),
            "open": len(files) <= OPEN_FILE_LIST,
            "may_clone": can(page_principal(request), Action.RUN_CODE),
        }
    }


@require_POST
@requires(Action.RUN_LAUNCH)
def clone_code_run(request: HttpRequest, run_id: int) -> HttpResponse:
    source = selectors.access_run(page_principal(request), run_id)
    check_row(request, Action.RUN_CODE, source)
    assert isinstance(request.user, User)  # `requires` has run
    try:
        run = services.do_clone_run(source, request.user, request_id=getattr(request, "request_id", ""))
    except services.LaunchError as error:
        messages.error(request, f"Could not clone run {source.pk}: {error}")
        return redirect("run-detail", run_id=source.pk)
    return redirect("run-detail", run_id=run.pk)
