"""The Workers page (`/workers/`) and its Drain button (`POST /workers/{id}/drain/`, admins).

Reads go through `fleet.selectors.describe_workers`, the drain through
`fleet.services.do_drain_worker`: the same code as `GET /api/v1/workers/` and
`POST /api/v1/workers/{id}/drain/`, so the page can neither show nor do anything the API would not.
"""

from __future__ import annotations

from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils import timezone
from django.views.decorators.http import require_GET, require_POST

from accounts.pages import page_principal, requires
from accounts.policy import Action, can
from fleet import overview
from fleet.models import Worker
from fleet.selectors import describe_workers
from fleet.services import do_drain_worker

MAX_WORKERS = 1000  # as the API lists them


@require_GET
@requires(Action.FLEET_READ)
def worker_list(request: HttpRequest) -> HttpResponse:
    principal = page_principal(request)
    workers = describe_workers(list(Worker.objects.order_by("pool", "name")[:MAX_WORKERS]))
    groups = overview.pools(principal, workers, timezone.now())
    return render(
        request,
        "fleet/workers.html",
        {
            "pools": groups,
            "worker_count": len(workers),
            "may_drain": can(principal, Action.FLEET_MANAGE),
        },
    )


@require_POST
@requires(Action.FLEET_MANAGE)
def worker_drain(request: HttpRequest, pk: int) -> HttpResponse:
    preempt = request.POST.get("preempt") == "true"
    worker, stopped = do_drain_worker(request.user, pk, preempt=preempt)
    done = f"Worker {worker.name} is draining: no new runs go to it; its runs finish"
    if preempt:
        done += f", and {len(stopped)} preemptible run{'s' if len(stopped) != 1 else ''} were asked to stop"
    messages.success(request, done + ".")
    return redirect("worker-page-list")
