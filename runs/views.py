"""Server-rendered pages. The dashboard proper grows here; the API is the source of data."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from runs.selectors import visible_runs


@login_required
def run_list(request: HttpRequest) -> HttpResponse:
    runs = visible_runs(request.user).select_related("owner").order_by("-id")[:100]
    return render(request, "runs/run_list.html", {"runs": runs})
