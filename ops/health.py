"""Liveness and readiness: JSON with each check's state and latency.

`/healthz` does no I/O: the process answers, so it is alive. `/readyz` checks what serving needs:
the database, Redis (when configured), the broker, free space in the data directory, and at least
one live worker (by heartbeat) per queue in `CONTROLPLANE_READY_QUEUES`. The checks run at once,
each bounded by `CHECK_TIMEOUT_SECONDS`, so a dead dependency costs a probe seconds, not minutes;
the database check opens its own short-lived connection instead of waiting on the pool.
"""

from __future__ import annotations

import contextlib
import shutil
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import DatabaseError, connection, connections
from django.http import HttpRequest, JsonResponse
from django.views.decorators.http import require_safe

from ops.breakers import breaker_states
from ops.worker_heartbeat import live_workers

CHECK_TIMEOUT_SECONDS = 2.0
Details = dict[str, Any] | None
_executor = ThreadPoolExecutor(max_workers=8, thread_name_prefix="readyz")


class NotReady(Exception):
    """A check ran and found the dependency unfit (not merely unreachable)."""


def _database() -> Details:
    if connection.vendor == "postgresql":
        import psycopg

        params = connection.get_connection_params()
        params["connect_timeout"] = max(1, int(CHECK_TIMEOUT_SECONDS))
        with psycopg.connect(**params) as direct:
            direct.execute("SELECT 1")
        return None
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    finally:
        connections.close_all()  # this thread's own connection
    return None


def _redis_ping(url: str) -> None:
    import redis

    client = redis.Redis.from_url(
        url, socket_connect_timeout=CHECK_TIMEOUT_SECONDS, socket_timeout=CHECK_TIMEOUT_SECONDS
    )
    try:
        client.ping()
    finally:
        client.close()


def _redis() -> Details:
    _redis_ping(str(settings.REDIS_URL))
    return None


def _broker() -> Details:
    url = str(settings.CELERY_BROKER_URL)
    if url.startswith("memory://"):
        return {"transport": "memory"}  # in this process: alive as long as it is
    if url.startswith(("redis://", "rediss://")):
        _redis_ping(url)
        return None
    from kombu import Connection

    with Connection(url, connect_timeout=CHECK_TIMEOUT_SECONDS) as broker:
        broker.ensure_connection(max_retries=1, interval_start=0, timeout=int(CHECK_TIMEOUT_SECONDS))
    return None


def _disk() -> Details:
    # The data directory is made on first use (its runs/ and artifacts/ are): until then the
    # filesystem that will hold it is its nearest existing parent's.
    path = Path(settings.DATA_DIR)
    while not path.exists() and path != path.parent:
        path = path.parent
    free = shutil.disk_usage(path).free
    minimum = int(settings.READY_MIN_FREE_BYTES)
    if free < minimum:
        raise NotReady(f"{free} bytes free in {settings.DATA_DIR}, below the minimum of {minimum}")
    return {"free_bytes": free}


def _workers() -> Details:
    live = live_workers()
    wanted = {queue: live.get(queue, 0) for queue in settings.READY_QUEUES}
    missing = sorted(queue for queue, count in wanted.items() if count < 1)
    if missing:
        raise NotReady(f"no live worker consumes {', '.join(missing)}")
    return {"live": wanted}


def _checks() -> dict[str, Callable[[], Details]]:
    checks: dict[str, Callable[[], Details]] = {"database": _database}
    if settings.REDIS_URL:
        checks["redis"] = _redis
    checks["broker"] = _broker
    checks["disk"] = _disk
    if settings.READY_QUEUES:
        checks["workers"] = _workers
    return checks


def _timed(check: Callable[[], Details]) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        details = check()
    except Exception as error:  # a readiness probe reports every failure, it never raises
        return {
            "ok": False,
            "error": f"{error.__class__.__name__}: {str(error)[:200]}",
            "latency_ms": round((time.perf_counter() - started) * 1000, 2),
        }
    result: dict[str, Any] = {"ok": True, "latency_ms": round((time.perf_counter() - started) * 1000, 2)}
    if details:
        result.update(details)
    return result


def run_checks() -> dict[str, dict[str, Any]]:
    futures = {name: _executor.submit(_timed, check) for name, check in _checks().items()}
    results: dict[str, dict[str, Any]] = {}
    for name, future in futures.items():
        try:
            results[name] = future.result(timeout=CHECK_TIMEOUT_SECONDS * 2)
        except FutureTimeout:
            results[name] = {"ok": False, "error": "timed out", "latency_ms": CHECK_TIMEOUT_SECONDS * 2000}
    return results


@require_safe
def healthz(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"status": "ok"})


@require_safe
def readyz(request: HttpRequest) -> JsonResponse:
    checks = run_checks()
    ready = all(check["ok"] for check in checks.values())
    body: dict[str, Any] = {"status": "ready" if ready else "not_ready", "checks": checks}
    if checks["database"]["ok"]:
        # Informational: an open breaker means a dependency of runs is down, not this server.
        # The database may have gone since its check: the next probe says so.
        with contextlib.suppress(DatabaseError):
            body["breakers"] = {
                name: {"state": state, "failures": failures} for name, state, failures in breaker_states()
            }
    return JsonResponse(body, status=200 if ready else 503)
