"""Audit log pages for admins: the list with filters, one record, and a "verify now" result.

Reads only; the same filters as `GET /api/v1/audit/` (audit.filters). The list pages by id
(`before`/`after`), newest first, so a page costs one indexed query and no COUNT.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlencode

from django.db.models import QuerySet
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from accounts.pages import page_principal, requires
from accounts.policy import Action, restrict
from audit.chain import verify_chain
from audit.filters import ALL_FIELDS, FilterError, filter_records, parse_filters
from audit.models import AuditRecord

PAGE_SIZE = 50
MAX_ID = 2**63 - 1


def _cursor(raw: str | None) -> int | None:
    if raw is None or not raw.isdigit() or len(raw) > 19:
        return None
    value = int(raw)
    return value if 0 < value <= MAX_ID else None


def _link(params: dict[str, str], **extra: int) -> str:
    return "?" + urlencode({**params, **{name: str(value) for name, value in extra.items()}})


def _records(request: HttpRequest) -> QuerySet[AuditRecord]:
    return restrict(page_principal(request), Action.AUDIT_READ, AuditRecord.objects.all())


@require_GET
@requires(Action.AUDIT_READ)
def audit_list(request: HttpRequest) -> HttpResponse:
    kept = {name: request.GET[name][:200] for name in ALL_FIELDS if request.GET.get(name)}
    errors: dict[str, str] = {}
    records: list[AuditRecord] = []
    older = newer = None
    try:
        filters = parse_filters(request.GET)
    except FilterError as error:
        errors = error.errors
    else:
        queryset = filter_records(_records(request), filters)
        before, after = _cursor(request.GET.get("before")), _cursor(request.GET.get("after"))
        if after is not None:
            # The page just newer than `after`: the oldest PAGE_SIZE above it, shown newest first.
            records = list(queryset.filter(pk__gt=after).order_by("id")[: PAGE_SIZE + 1])
            has_more_newer = len(records) > PAGE_SIZE
            records = records[:PAGE_SIZE][::-1]
            newer = _link(kept, after=records[0].pk) if has_more_newer and records else None
            older = _link(kept, before=records[-1].pk) if records else None
        else:
            if before is not None:
                queryset = queryset.filter(pk__lt=before)
            records = list(queryset.order_by("-id")[: PAGE_SIZE + 1])
            has_more_older = len(records) > PAGE_SIZE
            records = records[:PAGE_SIZE]
            older = _link(kept, before=records[-1].pk) if has_more_older and records else None
            newer = _link(kept, after=records[0].pk) if before is not None and records else None
    return render(
        request,
        "audit/list.html",
        {
            "records": records,
            "values": kept,
            "errors": errors,
            "filtered": bool(kept),
            "older_url": older,
            "newer_url": newer,
        },
    )


@require_GET
@requires(Action.AUDIT_READ)
def audit_detail(request: HttpRequest, pk: int) -> HttpResponse:
    records = _records(request)
    record = records.filter(pk=pk).first() if pk <= MAX_ID else None
    if record is None:
        raise Http404("No such audit record.")
    context: dict[str, Any] = {
        "record": record,
        "details_json": json.dumps(record.details, indent=2, sort_keys=True, ensure_ascii=False),
        "previous_id": records.filter(pk__lt=record.pk).order_by("-id").values_list("pk", flat=True).first(),
        "next_id": records.filter(pk__gt=record.pk).order_by("id").values_list("pk", flat=True).first(),
    }
    return render(request, "audit/detail.html", context)


@require_GET
@requires(Action.AUDIT_READ)
def audit_verify(request: HttpRequest) -> HttpResponse:
    return render(request, "audit/verify.html", {"result": verify_chain()})
