"""`/healthz` (alive, no I/O) and `/readyz` (database, Redis, broker, disk, live workers): JSON per
check, 503 when not ready, and back to 200 when a stopped Postgres or Redis returns."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from django.conf import settings
from django.test import Client, override_settings

from ops.worker_heartbeat import Heartbeat
from tests.conftest import wait_for

CHECKS = {"database", "redis", "broker", "disk", "workers"}


@pytest.fixture
def live_default_worker() -> Iterator[Heartbeat]:
    heartbeat = Heartbeat("health-test-worker", [settings.CELERY_TASK_DEFAULT_QUEUE], interval=0.1)
    heartbeat.start()
    from ops.worker_heartbeat import live_workers

    wait_for(lambda: live_workers().get(settings.CELERY_TASK_DEFAULT_QUEUE), 5, 0.05, "the heartbeat")
    yield heartbeat
    heartbeat.stop()


def readyz() -> tuple[int, dict[str, Any]]:
    response = Client().get("/readyz")
    return response.status_code, response.json()


def test_healthz_answers_without_touching_the_database() -> None:
    # No django_db mark: pytest-django makes any database access in this test an error.
    response = Client().get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


@pytest.mark.django_db
def test_readyz_reports_every_check_with_its_latency(live_default_worker: Heartbeat) -> None:
    status, body = readyz()
    assert status == 200, body
    assert body["status"] == "ready"
    assert set(body["checks"]) == CHECKS
    for name, check in body["checks"].items():
        assert check["ok"] is True, (name, check)
        assert isinstance(check["latency_ms"], int | float) and check["latency_ms"] >= 0
    assert body["checks"]["disk"]["free_bytes"] > 0
    assert body["checks"]["workers"]["live"][settings.CELERY_TASK_DEFAULT_QUEUE] >= 1


@pytest.mark.django_db
def test_readyz_is_503_without_a_live_worker_for_a_required_queue(live_default_worker: Heartbeat) -> None:
    with override_settings(READY_QUEUES=[settings.CELERY_TASK_DEFAULT_QUEUE, "gpu-nobody-serves"]):
        status, body = readyz()
    assert status == 503
    assert body["status"] == "not_ready"
    assert body["checks"]["workers"]["ok"] is False
    assert "gpu-nobody-serves" in body["checks"]["workers"]["error"]
    assert all(body["checks"][name]["ok"] for name in CHECKS - {"workers"})


@pytest.mark.django_db
def test_an_empty_queue_list_skips_the_worker_check() -> None:
    with override_settings(READY_QUEUES=[]):
        status, body = readyz()
    assert status == 200, body
    assert "workers" not in body["checks"]


@pytest.mark.django_db
def test_readyz_is_503_when_the_data_directory_is_nearly_full() -> None:
    with override_settings(READY_QUEUES=[], READY_MIN_FREE_BYTES=2**62):
        status, body = readyz()
    assert status == 503
    assert body["checks"]["disk"]["ok"] is False
    assert "below the minimum" in body["checks"]["disk"]["error"]


# -- real outages: a private Postgres and Redis (the chaos suite's helpers) ----------------------


@pytest.mark.chaos
@pytest.mark.timeout(300)
def test_readyz_turns_503_when_postgres_or_redis_stops_and_200_when_back(tmp_path: Path) -> None:
    from tests.chaos.conftest import make_stack

    stack = make_stack(tmp_path, CONTROLPLANE_READY_QUEUES="")
    try:
        stack.start_web()

        def probe() -> tuple[int, dict[str, Any], float]:
            started = time.monotonic()
            response = httpx.get(f"{stack.base_url}/readyz", timeout=15)
            return response.status_code, response.json(), time.monotonic() - started

        status, body, _ = probe()
        assert status == 200, body
        assert {"database", "redis", "broker", "disk"} == set(body["checks"])

        stack.postgres.stop()
        status, body, took = probe()
        assert status == 503
        assert body["checks"]["database"]["ok"] is False
        assert body["checks"]["redis"]["ok"] and body["checks"]["broker"]["ok"]
        assert took < 6  # bounded by the check timeout, not the pool's
        assert httpx.get(f"{stack.base_url}/healthz", timeout=5).status_code == 200
        # A scrape still answers: the database families are left out, the rest is there.
        scrape = httpx.get(f"{stack.base_url}/metrics", timeout=15)
        assert scrape.status_code == 200
        assert "controlplane_workers_live" in scrape.text

        stack.postgres.start()
        assert wait_for(lambda: probe()[0] == 200, 30, 0.5, "ready after Postgres returns")

        stack.redis.stop()
        status, body, took = probe()
        assert status == 503
        assert body["checks"]["redis"]["ok"] is False
        assert body["checks"]["broker"]["ok"] is False
        assert body["checks"]["database"]["ok"] is True
        assert took < 6

        stack.redis.start()
        assert wait_for(lambda: probe()[0] == 200, 30, 0.5, "ready after Redis returns")
    finally:
        stack.teardown()
