"""Which runs have a message waiting in the broker, so the reconciler re-sends only lost ones.

Only the Redis transport can be inspected (kombu keeps each queue in a list and messages being
worked on in the `unacked` hash). For other brokers the answer is "unknown" and the reconciler
falls back to re-sending runs that were never enqueued.
"""

from __future__ import annotations

import base64
import contextlib
import json
from collections.abc import Iterable
from typing import Any

import redis
from django.conf import settings

from runs.services import SUPERVISE_TASK

MAX_SCANNED = 50_000


def _run_id(message: Any) -> int | None:
    if isinstance(message, list) and message:  # unacked entries: [message, exchange, routing key]
        message = message[0]
    if not isinstance(message, dict):
        return None
    headers = message.get("headers") or {}
    if headers.get("task") != SUPERVISE_TASK:
        return None
    with contextlib.suppress(ValueError, TypeError, json.JSONDecodeError):
        args = json.loads(headers["argsrepr"]) if "argsrepr" in headers else None
        if args is None:
            args = json.loads(base64.b64decode(message["body"]))[0]
        return int(args[0])
    return None


def pending_run_ids(queues: Iterable[str]) -> set[int] | None:
    """Run ids with a message queued or in flight, or None when the broker cannot tell."""
    url = str(settings.CELERY_BROKER_URL)
    if not url.startswith(("redis://", "rediss://")):
        return None
    client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=5)
    found: set[int] = set()
    try:
        for queue in queues:
            for raw in client.lrange(queue, 0, MAX_SCANNED):
                run_id = _run_id(json.loads(raw))
                if run_id is not None:
                    found.add(run_id)
        for raw in client.hvals("unacked"):
            run_id = _run_id(json.loads(raw))
            if run_id is not None:
                found.add(run_id)
    except (redis.RedisError, json.JSONDecodeError):
        return None
    finally:
        client.close()
    return found
