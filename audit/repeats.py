"""Repeated records collapsed into one record and one summary per window.

The audit table is append-only, and every append takes the chain's global lock, so an endless
loop of the same failure (a script retrying a locked username) must not become an endless stream
of rows. `record_repeated` writes the first occurrence of a key (action + caller-chosen fields) in
full and opens a window; further occurrences within it only increment a counter in the cache.
When the window closes, a Celery task (`audit.tasks.flush_repeated_records`, scheduled on commit
with a countdown) appends ONE summary record carrying `count` (every occurrence in the window, the
first included), `window_seconds` and `first_record_id`; a window with no repeat writes nothing
more. So the table grows by at most two rows per key per window, however many attempts there are.

Fail-safe direction: when the cache is down, a counter is missing, or the first record is not in
the database any more (rolled back, restored), the occurrence is recorded in full, as before.
"""

from __future__ import annotations

import hashlib
import uuid
from typing import Any

import structlog
from celery import current_app
from django.core.cache import cache
from django.db import transaction

from audit import chain
from audit.context import RequestContext, current, use_context
from audit.models import AuditRecord

log = structlog.get_logger(__name__)
FLUSH_TASK = "audit.tasks.flush_repeated_records"
_GRACE_SECONDS = 3600  # counters outlive their window by this long, for a late flush task


def _window_key(action: str, key: tuple[str, ...]) -> str:
    digest = hashlib.sha256("\x1f".join((action, *key)).encode()).hexdigest()[:32]
    return f"audit:repeat:{digest}"


def _count_key(token: str) -> str:
    return f"audit:repeat:{token}:count"


def _meta_key(token: str) -> str:
    return f"audit:repeat:{token}:meta"


def open_window(action: str, key: tuple[str, ...]) -> str | None:
    """The token of the window now open for this key, if any (the flush task takes it)."""
    token = cache.get(_window_key(action, key))
    return str(token) if token else None


def _counted(action: str, key: tuple[str, ...]) -> bool:
    """Count one more occurrence in the open window; False when it must be recorded in full."""
    token = open_window(action, key)
    if token is None:
        return False
    meta = cache.get(_meta_key(token))
    if not meta:
        return False  # the window's first record is still being written, or the meta expired
    # The first record must still be there (hash is unique): a rolled-back or restored first
    # record would leave the count of this window with nothing to summarize.
    if not AuditRecord.objects.filter(pk=meta["first_record_id"], hash=meta["first_hash"]).exists():
        return False
    cache.incr(_count_key(token))  # ValueError when the counter expired: recorded in full
    return True


def record_repeated(
    action: str, *, key: tuple[str, ...], details: dict[str, Any], outcome: str, window: float
) -> AuditRecord | None:
    """Record the first occurrence of `key` in `window` seconds; count the rest (None returned)."""
    try:
        if _counted(action, key):
            return None
        token = uuid.uuid4().hex
        opened = cache.add(_window_key(action, key), token, window)
    except Exception:  # the cache is down: record every occurrence rather than none
        opened = False
    entry = chain.record(action, actor=None, outcome=outcome, details=details)
    if opened:
        context = current()
        meta = {
            "action": action,
            "outcome": outcome,
            "details": entry.details,
            "first_record_id": entry.pk,
            "first_hash": entry.hash,
            "window_seconds": window,
            "context": [context.ip, context.user_agent, context.request_id],
        }
        try:
            cache.set_many({_count_key(token): 1, _meta_key(token): meta}, window + _GRACE_SECONDS)
        except Exception:
            return entry  # nothing will be counted in this window: each occurrence is recorded
        transaction.on_commit(lambda: _schedule_flush(token, window))
    return entry


def _schedule_flush(token: str, window: float) -> None:
    try:
        # retry=False: a broker that is down must not hold a sign-in answer for seconds.
        current_app.send_task(FLUSH_TASK, args=[token], countdown=window, queue="housekeeping", retry=False)
    except Exception as error:
        log.error("audit_repeat_flush_unscheduled", error=repr(error)[:300], error_kind="broker")


def flush_repeated(token: str) -> AuditRecord | None:
    """Append the summary of a closed window; nothing when it saw no repeat or was flushed already."""
    meta = cache.get(_meta_key(token))
    count = cache.get(_count_key(token))
    # Deleted before the record is written: a redelivered task finds nothing (at most one summary).
    cache.delete_many([_meta_key(token), _count_key(token)])
    if not meta or not count or int(count) < 2:
        return None
    ip, user_agent, request_id = meta["context"]
    with use_context(RequestContext(ip=ip, user_agent=user_agent, request_id=request_id)):
        return chain.record(
            meta["action"],
            actor=None,
            outcome=meta["outcome"],
            details={
                **meta["details"],
                "count": int(count),
                "window_seconds": meta["window_seconds"],
                "first_record_id": meta["first_record_id"],
            },
        )
