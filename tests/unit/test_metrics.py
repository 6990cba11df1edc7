"""`/metrics` of the web process: every family, sane values, a constant query budget, no run data,
and access limited by token and network."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import redis
from django.conf import settings
from django.contrib.auth.models import User
from django.db import connection
from django.test import Client, override_settings
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from controlplane.env import parse_networks
from ops.models import CircuitBreaker
from ops.worker_heartbeat import Heartbeat
from runs.attempts import Outcome, claim_run, finish_attempt
from runs.models import ErrorKind, Run, RunStatus
from runs.reconciler import reconcile
from runs.services import do_cancel_run

pytestmark = pytest.mark.django_db
ROOT = Path(__file__).resolve().parents[2]
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]

WEB_FAMILIES = {
    "controlplane_runs",
    "controlplane_runs_finished",
    "controlplane_dead_letters",
    "controlplane_queue_depth",
    "controlplane_queue_oldest_age_seconds",
    "controlplane_workers_live",
    "controlplane_fleet_devices",
    "controlplane_fleet_devices_in_use",
    "controlplane_fleet_queued_runs",
    "controlplane_fleet_queue_oldest_wait_seconds",
    "controlplane_websocket_connections",
    "controlplane_circuit_breaker_state",
    "controlplane_http_requests_rejected",
    "django_http_requests_before_middlewares",
    "django_http_responses_total_by_status",
    "django_db_execute",
    "django_cache_get",
}
# Label names our families may carry: all bounded by configuration, never by data.
BOUNDED_LABELS = {
    "status",
    "program",
    "outcome",
    "failure_kind",
    "queue",
    "breaker",
    "reason",
    "action",
    "kind",
    "pool",
    "worker_state",
    "priority_band",
}


def scrape(client: Client | None = None, **extra: str) -> str:
    response = (client or Client()).get("/metrics", **extra)  # type: ignore[arg-type]
    assert response.status_code == 200, response.content
    return response.content.decode()


def families(body: str) -> set[str]:
    return {family.name for family in text_string_to_metric_families(body)}


def samples(body: str) -> Samples:
    found: Samples = {}
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def value(body: str, name: str, **labels: str) -> float | None:
    return samples(body).get((name, frozenset(labels.items())))


def number(body: str, name: str, **labels: str) -> float:
    found = value(body, name, **labels)
    assert found is not None, (name, labels)
    return found


def _finished(owner: User, program: str, outcome: Outcome, **fields: object) -> Run:
    run = Run.objects.create(name="m", owner=owner, program=program, queue="metrics-q", **fields)
    claim = claim_run(run.pk, "test-worker")
    assert claim is not None
    finish_attempt(run.pk, claim.attempt, outcome)
    run.refresh_from_db()
    return run


def test_every_web_family_is_exposed(owner: User) -> None:
    Client().get("/healthz")
    body = scrape()
    missing = WEB_FAMILIES - families(body)
    assert not missing, sorted(missing)


def test_runs_finished_counts_terminal_outcomes_by_program_and_failure_kind(owner: User) -> None:
    _finished(owner, "scripted", Outcome(RunStatus.SUCCEEDED, 0))
    _finished(owner, "scripted", Outcome(RunStatus.SUCCEEDED, 0))
    _finished(owner, "tinygpt", Outcome(RunStatus.FAILED, 2, ErrorKind.CONFIG, "bad", "bad config"))
    # A transient failure with attempts left is queued again: not finished, not counted.
    retried = _finished(owner, "tinygpt", Outcome(RunStatus.FAILED, None, ErrorKind.INFRASTRUCTURE, "x", "x"))
    assert retried.status == RunStatus.QUEUED
    dead = _finished(
        owner,
        "tinygpt",
        Outcome(RunStatus.FAILED, None, ErrorKind.DEVICE, "xid", "gpu fell off"),
        max_attempts=1,
    )
    assert dead.status == RunStatus.DEAD
    queued = Run.objects.create(name="c", owner=owner, program="scripted", queue="metrics-q")
    do_cancel_run(queued, actor=owner)
    expired = Run.objects.create(
        name="t",
        owner=owner,
        program="scripted",
        queue="metrics-q",
        queue_ttl_seconds=1,
        created_at=timezone.now() - timedelta(minutes=5),
    )
    reconcile()
    expired.refresh_from_db()
    assert expired.status == RunStatus.FAILED

    body = scrape()
    name = "controlplane_runs_finished_total"
    assert value(body, name, program="scripted", outcome="succeeded", failure_kind="") == 2
    assert value(body, name, program="tinygpt", outcome="failed", failure_kind="config") == 1
    assert value(body, name, program="tinygpt", outcome="dead", failure_kind="device") == 1
    assert value(body, name, program="scripted", outcome="cancelled", failure_kind="cancelled") == 1
    assert value(body, name, program="scripted", outcome="failed", failure_kind="timeout") == 1
    assert value(body, name, program="tinygpt", outcome="failed", failure_kind="infrastructure") is None
    assert value(body, "controlplane_dead_letters") == 1
    assert value(body, "controlplane_runs", status="queued") == 1
    assert value(body, "controlplane_runs", status="succeeded") == 2


def test_the_oldest_queued_run_ages_from_when_it_became_due(owner: User) -> None:
    now = timezone.now()
    Run.objects.create(name="old", owner=owner, program="scripted", queue="age-q")
    Run.objects.filter(name="old").update(updated_at=now - timedelta(seconds=300))
    Run.objects.create(name="new", owner=owner, program="scripted", queue="age-q")
    # Waiting for a backoff that ends in the future: not yet due, so it adds no age.
    Run.objects.create(name="later", owner=owner, program="scripted", queue="later-q")
    Run.objects.filter(name="later").update(not_before=now + timedelta(seconds=600))
    body = scrape()
    age = value(body, "controlplane_queue_oldest_age_seconds", queue="age-q")
    assert age is not None and 300 <= age < 360
    assert value(body, "controlplane_queue_oldest_age_seconds", queue="later-q") == 0
    assert value(body, "controlplane_queue_oldest_age_seconds", queue=settings.CELERY_TASK_DEFAULT_QUEUE) == 0


def test_scraping_costs_the_same_few_queries_whatever_the_data(owner: User) -> None:
    Run.objects.create(name="one", owner=owner, program="scripted", queue="q0")
    scrape()  # registers the collectors

    def queries() -> int:
        with CaptureQueriesContext(connection) as captured:
            scrape()
        return len(captured.captured_queries)

    small = queries()
    for i in range(60):
        run = Run.objects.create(name=f"r{i}", owner=owner, program="scripted", queue=f"q{i % 7}")
        if i % 3 == 0:
            claim = claim_run(run.pk, "w")
            assert claim is not None
            finish_attempt(run.pk, claim.attempt, Outcome(RunStatus.FAILED, 1, f"kind{i % 5}"[:16], "c", "m"))
    for i in range(10):
        CircuitBreaker.objects.create(name=f"dataset:host{i}", state="open", opened_until=timezone.now())
    large = queries()
    assert small == large
    # Runs by status, oldest queued per queue, finished counts, breakers; the fleet's devices and
    # its admission queue (ops.fleet_view); the programs' queues (the catalog, runs.metrics).
    assert large <= 7


def test_metrics_expose_counts_never_run_data(owner: User) -> None:
    run = Run.objects.create(
        name="confidential-project-zephyr",
        owner=owner,
        program="scripted",
        queue="training",
        params={"dataset_url": "https://internal.example/zephyr.txt"},
        request_id="req-zephyr-1",
    )
    claim = claim_run(run.pk, "worker-zephyr")
    assert claim is not None
    finish_attempt(
        run.pk, claim.attempt, Outcome(RunStatus.FAILED, 1, ErrorKind.PROGRAM, "exit_1", "zephyr!")
    )
    body = scrape()
    for secret in ("zephyr", owner.username, owner.email, "req-zephyr-1", "worker-zephyr"):
        assert secret not in body
    for family in text_string_to_metric_families(body):
        if not family.name.startswith("controlplane_"):
            continue
        for sample in family.samples:
            assert set(sample.labels) - {"le"} <= BOUNDED_LABELS, (family.name, sample.labels)


def test_a_metrics_token_is_required_when_configured(owner: User) -> None:
    with override_settings(METRICS_TOKEN="scrape-token-0123456789abcdef"):
        missing = Client().get("/metrics")
        assert missing.status_code == 401
        assert missing["WWW-Authenticate"].startswith("Bearer")
        assert "controlplane_runs" not in missing.content.decode()
        assert Client().get("/metrics", HTTP_AUTHORIZATION="Bearer wrong").status_code == 401
        assert Client().get("/metrics", HTTP_AUTHORIZATION="Basic c2NyYXBlOng=").status_code == 401
        body = scrape(HTTP_AUTHORIZATION="Bearer scrape-token-0123456789abcdef")
    assert number(body, "controlplane_http_requests_rejected_total", reason="metrics_token") >= 3


def test_metrics_can_be_limited_to_networks(owner: User) -> None:
    networks = parse_networks("X", ["10.0.0.0/8", "fd00::/8"])
    with override_settings(METRICS_ALLOWED_NETWORKS=networks):
        assert Client().get("/metrics").status_code == 403  # the test client is 127.0.0.1
        assert Client(REMOTE_ADDR="192.168.1.5").get("/metrics").status_code == 403
        assert Client(REMOTE_ADDR="10.1.2.3").get("/metrics").status_code == 200
        assert Client(REMOTE_ADDR="::ffff:10.9.9.9").get("/metrics").status_code == 200
        assert Client(REMOTE_ADDR="fd12::1").get("/metrics").status_code == 200
        assert Client(REMOTE_ADDR="not-an-ip").get("/metrics").status_code == 403
        # A forwarded header is the client's own claim: it opens nothing.
        assert Client(HTTP_X_FORWARDED_FOR="10.1.2.3").get("/metrics").status_code == 403
        with override_settings(METRICS_TOKEN="both-required-token-xyz"):
            inside = Client(REMOTE_ADDR="10.1.2.3")
            assert inside.get("/metrics").status_code == 401
            assert (
                inside.get("/metrics", HTTP_AUTHORIZATION="Bearer both-required-token-xyz").status_code == 200
            )
            outside = Client(REMOTE_ADDR="192.168.1.5")
            assert (
                outside.get("/metrics", HTTP_AUTHORIZATION="Bearer both-required-token-xyz").status_code
                == 403
            )
    assert Client().get("/healthz").status_code == 200  # only /metrics is restricted


def test_a_bad_network_stops_the_process_naming_the_variable(tmp_path: Path) -> None:
    clean = {
        k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "SECRET_KEY", "DJANGO"))
    }
    result = subprocess.run(
        [sys.executable, "-c", "import controlplane.settings"],
        cwd=ROOT,
        env={
            **clean,
            "CONTROLPLANE_DATA_DIR": str(tmp_path),
            "CONTROLPLANE_METRICS_ALLOWED_NETWORKS": "10.0.0.0/8,not-a-network",
        },
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode != 0
    assert "CONTROLPLANE_METRICS_ALLOWED_NETWORKS: 'not-a-network' is not an IP network" in result.stderr


@pytest.fixture
def broker() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    yield client
    client.delete("metrics-depth-q", "metrics-depth-q\x06\x163")
    client.close()


def test_queue_depth_counts_messages_waiting_in_the_broker(owner: User, broker: redis.Redis) -> None:
    broker.lpush("metrics-depth-q", b"{}", b"{}", b"{}")
    broker.lpush("metrics-depth-q\x06\x163", b"{}")  # a priority-3 message
    with override_settings(READY_QUEUES=["metrics-depth-q"]):
        body = scrape()
    assert value(body, "controlplane_queue_depth", queue="metrics-depth-q") == 4


def test_live_workers_are_counted_per_queue_from_their_heartbeats(owner: User) -> None:
    first = Heartbeat("metrics-worker-a", ["hb-q1", "hb-q2"], interval=0.1)
    second = Heartbeat("metrics-worker-b", ["hb-q2"], interval=0.1)
    first.start()
    second.start()
    try:
        deadline = time.monotonic() + 5
        body = scrape()
        while value(body, "controlplane_workers_live", queue="hb-q2") != 2 and time.monotonic() < deadline:
            time.sleep(0.1)
            body = scrape()
        assert value(body, "controlplane_workers_live", queue="hb-q1") == 1
        assert value(body, "controlplane_workers_live", queue="hb-q2") == 2
    finally:
        first.stop()
        second.stop()
    body = scrape()
    assert value(body, "controlplane_workers_live", queue="hb-q1") in (None, 0)
