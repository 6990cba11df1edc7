"""Audit log filters, shared by `GET /api/v1/audit/` and the admin pages.

`action` (one or several, comma-separated), `actor` (a username), `outcome`, `target_type`,
`target_id`, and a time window `since`/`until` (ISO 8601 date or date-time; a date without a time
means the whole day, a time without a zone means UTC). Bad values are refused by name.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta

from django.db.models import QuerySet
from django.utils.dateparse import parse_date, parse_datetime

from audit.models import AuditRecord

MAX_TEXT = 150
MAX_ACTIONS = 20
TEXT_FIELDS = ("actor", "outcome", "target_type", "target_id")
ALL_FIELDS = ("action", *TEXT_FIELDS, "since", "until")


class FilterError(ValueError):
    def __init__(self, errors: dict[str, str]) -> None:
        super().__init__("; ".join(f"{name}: {message}" for name, message in errors.items()))
        self.errors = errors


@dataclass(frozen=True)
class AuditFilters:
    actions: tuple[str, ...] = ()
    actor: str = ""
    outcome: str = ""
    target_type: str = ""
    target_id: str = ""
    since: datetime | None = None
    until: datetime | None = None  # exclusive

    @property
    def active(self) -> bool:
        return bool(self.actions or self.since or self.until or any(getattr(self, f) for f in TEXT_FIELDS))


def _moment(raw: str, *, end_of_day: bool) -> datetime:
    """A date-time, or a date (its start; the next day's start when it closes a window)."""
    try:
        # The date first: Python's fromisoformat, under parse_datetime, reads "2026-01-31" as midnight.
        day = parse_date(raw)
        moment = None if day is not None else parse_datetime(raw)
    except ValueError:
        moment = day = None
    if moment is not None:
        return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
    if day is not None:
        start = datetime.combine(day, time.min, tzinfo=UTC)
        return start + timedelta(days=1) if end_of_day else start
    raise ValueError(raw)


def parse_filters(params: Mapping[str, str]) -> AuditFilters:
    errors: dict[str, str] = {}
    values: dict[str, str] = {}
    for name in ("action", *TEXT_FIELDS):
        value = str(params.get(name, "") or "").strip()
        if len(value) > MAX_TEXT * (MAX_ACTIONS if name == "action" else 1):
            errors[name] = f"at most {MAX_TEXT} characters"
        elif "\x00" in value:
            errors[name] = "must not contain NUL characters"
        else:
            values[name] = value
    actions = tuple(a.strip() for a in values.get("action", "").split(",") if a.strip())
    if len(actions) > MAX_ACTIONS:
        errors["action"] = f"at most {MAX_ACTIONS} actions"
    window: dict[str, datetime | None] = {"since": None, "until": None}
    for name in window:
        raw = str(params.get(name, "") or "").strip()
        if not raw:
            continue
        try:
            window[name] = _moment(raw[:64], end_of_day=name == "until")
        except (ValueError, OverflowError):
            errors[name] = "an ISO 8601 date or date-time, e.g. 2026-01-31 or 2026-01-31T12:00:00Z"
    if window["since"] and window["until"] and window["since"] >= window["until"]:
        errors["until"] = "must be later than since"
    if errors:
        raise FilterError(errors)
    return AuditFilters(
        actions=actions,
        actor=values.get("actor", ""),
        outcome=values.get("outcome", ""),
        target_type=values.get("target_type", ""),
        target_id=values.get("target_id", ""),
        since=window["since"],
        until=window["until"],
    )


def filter_records(queryset: QuerySet[AuditRecord], filters: AuditFilters) -> QuerySet[AuditRecord]:
    if filters.actions:
        queryset = queryset.filter(action__in=filters.actions)
    for name in TEXT_FIELDS:
        value = getattr(filters, name)
        if value:
            queryset = queryset.filter(**{name: value})
    if filters.since is not None:
        queryset = queryset.filter(created_at__gte=filters.since)
    if filters.until is not None:
        queryset = queryset.filter(created_at__lt=filters.until)
    return queryset
