"""Worker heartbeats: which workers are alive, and which queues they consume.

Each worker writes one Redis key (`controlplane:worker:<name>`, JSON with its queues) every
`INTERVAL_SECONDS` with a time-to-live of `TTL_SECONDS`, from a daemon thread. A worker that dies
stops refreshing and its key expires, so counting live workers per queue is one SCAN and one MGET:
no broadcast to the workers (Celery's `inspect` waits for replies and sees only reachable ones).

Without Redis (standalone) the only worker is the embedded one, in this very process: it
registers in a process-local table that the readiness check and `/metrics` read.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import redis
import structlog
from django.conf import settings

from ops.worker_probe import write_heartbeat

log = structlog.get_logger(__name__)

KEY_PREFIX = "controlplane:worker:"
INTERVAL_SECONDS = 5.0
TTL_SECONDS = 20
_local: dict[str, tuple[str, ...]] = {}
_local_lock = threading.Lock()


def store_url() -> str | None:
    """The Redis that holds heartbeats: REDIS_URL, else a Redis broker; None: in-process only."""
    if settings.REDIS_URL:
        return str(settings.REDIS_URL)
    broker = str(settings.CELERY_BROKER_URL)
    return broker if broker.startswith(("redis://", "rediss://")) else None


def _client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)


class Heartbeat:
    """Publishes one worker's heartbeat until `stop()`."""

    def __init__(self, name: str, queues: Iterable[str], *, interval: float = INTERVAL_SECONDS) -> None:
        self.name = f"{name}:{os.getpid()}"
        self.queues = tuple(sorted(set(queues)))
        self.interval = interval
        self._url = store_url()
        # Liveness and readiness probes read this file's age (ops.worker_probe); empty: none.
        self._file = Path(settings.WORKER_HEARTBEAT_FILE) if settings.WORKER_HEARTBEAT_FILE else None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def key(self) -> str:
        return KEY_PREFIX + self.name

    def start(self) -> None:
        if self._url is None:
            with _local_lock:
                _local[self.name] = self.queues
            return
        self._thread = threading.Thread(target=self._loop, name="worker-heartbeat", daemon=True)
        self._thread.start()

    def _payload(self) -> str:
        return json.dumps({"queues": list(self.queues), "host": socket.gethostname(), "at": time.time()})

    def _loop(self) -> None:
        assert self._url is not None
        client = _client(self._url)
        failing = False
        while not self._stop.is_set():
            try:
                client.set(self.key, self._payload(), ex=TTL_SECONDS)
                if failing:
                    log.info("worker_heartbeat_recovered", worker=self.name)
                failing = False
            except redis.RedisError as error:
                if not failing:  # once per outage, not every few seconds
                    log.warning("worker_heartbeat_failed", worker=self.name, error=str(error)[:200])
                failing = True
            self._touch(published=not failing)
            self._stop.wait(self.interval)
        client.close()

    def _touch(self, *, published: bool) -> None:
        if self._file is None:
            return
        try:
            write_heartbeat(self._file, published)
        except OSError as error:
            # A probe will notice the stale file; the Redis heartbeat must go on regardless.
            log.warning("worker_heartbeat_file_failed", path=str(self._file), error=str(error)[:200])

    def stop(self) -> None:
        self._stop.set()
        if self._url is None:
            with _local_lock:
                _local.pop(self.name, None)
            return
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:
            client = _client(self._url)
            client.delete(self.key)
            client.close()
        except redis.RedisError:
            pass  # the key expires by itself


def live_workers() -> dict[str, int]:
    """Live workers per queue. Raises redis.RedisError when the store cannot be read."""
    url = store_url()
    if url is None:
        with _local_lock:
            return dict(Counter(queue for queues in _local.values() for queue in queues))
    client = _client(url)
    try:
        keys = list(client.scan_iter(match=KEY_PREFIX + "*", count=1000))
        values = client.mget(keys) if keys else []
    finally:
        client.close()
    counts: Counter[str] = Counter()
    for raw in values:
        if raw is None:
            continue  # expired between SCAN and MGET
        try:
            queues = json.loads(raw)["queues"]
        except (ValueError, KeyError, TypeError):
            continue
        counts.update(str(queue) for queue in queues)
    return dict(counts)
