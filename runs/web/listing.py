"""The runs list: parsing its filters, sorting, and keyset (cursor) paging.

Keyset paging reads `page_size + 1` rows past the cursor: no COUNT(*) and no OFFSET, so page
1,000 costs what page 1 does, and pages stay stable while new runs arrive. Every sort ends with
the id, which makes the order total and the cursor unambiguous.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.db.models import DurationField, ExpressionWrapper, F, Q, QuerySet
from django.http import QueryDict

from runs.models import Run, RunStatus
from runs.selectors import RunFilters

PAGE_SIZES = (25, 50, 100, 200)
DEFAULT_PAGE_SIZE = 50
ACTIVE = (RunStatus.QUEUED, RunStatus.RUNNING, RunStatus.CANCELLING, RunStatus.PREEMPTED)


@dataclass(frozen=True)
class Sort:
    label: str
    # (field, descending); the last field is always the id.
    fields: tuple[tuple[str, bool], ...]
    # Index-friendly sorts walk an index; the others sort the filtered rows (fine at 10k runs).
    indexed: bool


SORTS: dict[str, Sort] = {
    "-created": Sort("Newest first", (("id", True),), indexed=True),
    "created": Sort("Oldest first", (("id", False),), indexed=True),
    "status": Sort("Status", (("status", False), ("id", True)), indexed=True),
    "name": Sort("Name", (("name", False), ("id", False)), indexed=False),
    "-duration": Sort("Longest first", (("duration", True), ("id", True)), indexed=False),
}
DEFAULT_SORT = "-created"


@dataclass(frozen=True)
class ListQuery:
    filters: RunFilters
    status_choice: str  # what the status picker shows: "", "active" or one status
    sort: str
    page_size: int
    cursor: str


def parse_list_query(params: QueryDict) -> ListQuery:
    """The list's query string, with anything unknown ignored (a page never 400s on a filter)."""
    status_choice = params.get("status", "")
    if status_choice == "active":
        statuses: tuple[str, ...] = tuple(ACTIVE)
    elif status_choice in RunStatus.values:
        statuses = (status_choice,)
    else:
        status_choice, statuses = "", ()
    sort = params.get("sort", DEFAULT_SORT)
    if sort not in SORTS:
        sort = DEFAULT_SORT
    try:
        page_size = int(params.get("page_size", DEFAULT_PAGE_SIZE))
    except ValueError:
        page_size = DEFAULT_PAGE_SIZE
    if page_size not in PAGE_SIZES:
        page_size = DEFAULT_PAGE_SIZE
    return ListQuery(
        filters=RunFilters(
            statuses=statuses,
            owner=params.get("owner", "").strip()[:150],
            program=params.get("program", "").strip()[:64],
            text=params.get("q", "").strip()[:200],
        ),
        status_choice=status_choice,
        sort=sort,
        page_size=page_size,
        cursor=params.get("cursor", "")[:500],
    )


@dataclass(frozen=True)
class Page:
    runs: list[Run]
    next_cursor: str | None
    previous_cursor: str | None


def _encode(direction: str, values: list[Any]) -> str:
    raw = json.dumps([direction, values], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode(cursor: str) -> tuple[str, list[Any]] | None:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        direction, values = json.loads(raw)
    except (ValueError, binascii.Error, TypeError):
        return None
    if direction not in ("next", "prev") or not isinstance(values, list):
        return None
    return direction, values


def _key(run: Run, sort: Sort) -> list[Any]:
    values: list[Any] = []
    for field, _ in sort.fields:
        value = getattr(run, field)
        values.append(value.total_seconds() if isinstance(value, timedelta) else value)
    return values


def _after(sort: Sort, values: list[Any], backwards: bool) -> Q | None:
    """Rows strictly after `values` in the sort's order (strictly before them when `backwards`).

    None for a cursor that does not fit the sort (a hand-edited URL): the list starts over.
    """
    if len(values) != len(sort.fields):
        return None
    condition: Q | None = None
    equal = Q()
    for (field, descending), raw in zip(sort.fields, values, strict=True):
        nullable = field == "duration"
        value: Any
        if raw is None:
            if not nullable:
                return None
            # The cursor sits among the NULL durations, which come last going forward.
            if backwards:
                condition = _or(condition, equal & Q(**{f"{field}__isnull": False}))
            equal &= Q(**{f"{field}__isnull": True})
            continue
        if field == "id" and isinstance(raw, int):
            value = raw
        elif nullable and isinstance(raw, int | float):
            value = timedelta(seconds=raw)
        elif field in ("name", "status") and isinstance(raw, str):
            value = raw
        else:
            return None
        step = Q(**{f"{field}__{'lt' if descending != backwards else 'gt'}": value})
        if nullable and not backwards:
            step |= Q(**{f"{field}__isnull": True})
        condition = _or(condition, equal & step)
        equal &= Q(**{field: value})
    return condition


def _or(left: Q | None, right: Q) -> Q:
    return right if left is None else left | right


def paginate(queryset: QuerySet[Run], query: ListQuery) -> Page:
    sort = SORTS[query.sort]
    if any(field == "duration" for field, _ in sort.fields):
        queryset = queryset.annotate(
            duration=ExpressionWrapper(F("finished_at") - F("started_at"), output_field=DurationField())
        )
    decoded = _decode(query.cursor) if query.cursor else None
    backwards = decoded is not None and decoded[0] == "prev"
    if decoded is not None:
        condition = _after(sort, decoded[1], backwards)
        if condition is not None:
            queryset = queryset.filter(condition)
        else:
            decoded, backwards = None, False
    ordering = []
    for field, descending in sort.fields:
        # NULL durations come last going forward, hence first when walking backwards.
        nulls = {"nulls_last": True} if not backwards else {"nulls_first": True}
        options = nulls if field == "duration" else {}
        expression = F(field)
        ordering.append(expression.desc(**options) if descending != backwards else expression.asc(**options))
    rows = list(queryset.order_by(*ordering)[: query.page_size + 1])
    more = len(rows) > query.page_size
    rows = rows[: query.page_size]
    if backwards:
        rows.reverse()
    if not rows:
        return Page(runs=[], next_cursor=None, previous_cursor=None)
    has_next = more if not backwards else True
    has_previous = decoded is not None and (more if backwards else True)
    return Page(
        runs=rows,
        next_cursor=_encode("next", _key(rows[-1], sort)) if has_next else None,
        previous_cursor=_encode("prev", _key(rows[0], sort)) if has_previous else None,
    )
