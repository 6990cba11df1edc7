"""The dead-letter page: runs that spent their attempts, with Requeue and Discard for admins.

It replaced the Django admin's run list (removed: it let a staff account change users and flags
outside the role model and the audit). Both buttons call the services the REST API calls
(`POST /api/v1/dead-letters/{id}/requeue/`, `.../discard/`), which audit each action.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.contrib import messages
from django.contrib.auth.models import User
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from accounts.pages import page_principal, requires
from accounts.policy import Action
from runs import selectors, services

PAGE_SIZE = 200


@requires(Action.DEAD_LETTER_MANAGE)
def dead_letter_list(request: HttpRequest) -> HttpResponse:
    runs = list(selectors.dead_letters(page_principal(request))[:PAGE_SIZE])
    return render(
        request, "runs/dead_letters.html", {"runs": runs, "here": "dead-letters", "limit": PAGE_SIZE}
    )


def _act(request: HttpRequest, run_id: int, action: Callable[..., Any], done: str) -> HttpResponse:
    run = selectors.dead_letters(page_principal(request)).filter(pk=run_id).first()
    if run is None:
        raise Http404("No such dead letter.")
    assert isinstance(request.user, User)  # `requires` has run
    try:
        action(run, actor=request.user)
        messages.success(request, f"Run {run.pk} {done}.")
    except services.DeadLetterError as error:
        messages.warning(request, str(error))
    return redirect("dead-letter-list")


@require_POST
@requires(Action.DEAD_LETTER_MANAGE)
def dead_letter_requeue(request: HttpRequest, run_id: int) -> HttpResponse:
    return _act(request, run_id, services.do_requeue_dead_run, "requeued")


@require_POST
@requires(Action.DEAD_LETTER_MANAGE)
def dead_letter_discard(request: HttpRequest, run_id: int) -> HttpResponse:
    return _act(request, run_id, services.do_discard_dead_run, "discarded")
