"""An upgrade loses no run: a database written by the previous release migrates to today's schema.

The previous release is commit 17a39af; PREVIOUS_RELEASE names each app's last migration there.
The test migrates the test database back to that state, fills it through the historical models
(apps.get_model: the schema as that release had it) with runs in every status and everything a run
owns, migrates forward to the newest migration of every app (whatever it is: the graph's leaves,
so migrations added later are covered without touching this file), and reads it all back through
today's models, services and API. Going back needs every migration since the release to be
reversible (a no-op reverse is fine), which is also what `kubectl rollout undo` relies on
(docs/operations.md#upgrading).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.apps.registry import Apps
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.utils import timezone

from accounts.tokens import access_token
from audit.chain import _digest as audit_digest
from audit.chain import walk_records
from runs.lifecycle import (
    LIVE_STATUSES,
    TERMINAL_STATUSES,
    WAITING_STATUSES,
    is_live,
    is_terminal,
    may_cancel,
    may_requeue,
    may_retry,
)
from runs.models import Artifact, LogLine, MetricPoint, Run, RunAttempt
from vault.crypto import keyring
from vault.models import Secret

pytestmark = pytest.mark.django_db(transaction=True)

PREVIOUS_RELEASE = [
    ("accounts", "0002_user_roles"),
    ("audit", "0004_checkpoints_append_only"),
    ("ops", "0002_run_outcome_counts"),
    ("runs", "0002_reliability"),
    ("vault", "0001_initial"),
]
STATUSES = ["queued", "running", "cancelling", "succeeded", "failed", "cancelled", "lost", "dead"]
TOKEN = "cp_0123abcd_upgrade-test-token-that-is-long-enough"


def _migrate(targets: list[tuple[str, str]]) -> Apps:
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(targets)
    return executor.loader.project_state(targets).apps


def _latest() -> list[tuple[str, str]]:
    return sorted(MigrationExecutor(connection).loader.graph.leaf_nodes())


def _fill(apps: Apps) -> dict[str, Any]:
    """Rows of the previous release's shapes, written with its models."""
    now = timezone.now()
    user = apps.get_model("auth", "User").objects.create(username="ada", is_staff=True)
    apps.get_model("accounts", "UserRole").objects.create(user=user, role="admin")
    apps.get_model("accounts", "ApiToken").objects.create(
        user=user, name="ci", prefix=TOKEN.split("_")[1], digest=_sha256(TOKEN),
        scopes=["read", "launch"], expires_at=now + timedelta(days=30),
    )  # fmt: skip
    secret = apps.get_model("vault", "Secret").objects.create(
        name="HF_TOKEN", ciphertext=keyring().encrypt("hf-secret-value"), key_id=keyring().newest_id,
        created_by=user, updated_by=user,
    )  # fmt: skip
    secret.allowed_users.add(user)
    ids = {}
    for number, status in enumerate(STATUSES, start=1):
        attempts = 0 if status == "queued" else 2
        run = apps.get_model("runs", "Run").objects.create(
            name=f"run-{status}", owner=user, program="tinygpt", params={"steps": 100}, secrets=["HF_TOKEN"],
            queue="training", status=status, attempt=attempts, max_attempts=3, request_id=f"req-{number}",
            started_at=now if attempts else None, finished_at=now if status not in {"queued", "running", "cancelling"} else None,
            lease_expires_at=now + timedelta(seconds=60) if status in {"running", "cancelling"} else None,
            log_seq=3, progress_step=50, progress_total=100,
        )  # fmt: skip
        ids[status] = run.pk
        for attempt in range(1, attempts + 1):
            apps.get_model("runs", "RunAttempt").objects.create(
                run=run, number=attempt, worker="training@host", status="lost" if attempt == 1 else status,
                resumed_from_step=None if attempt == 1 else 40,
            )  # fmt: skip
        apps.get_model("runs", "LogLine").objects.bulk_create(
            apps.get_model("runs", "LogLine")(run=run, seq=seq, ts=now, stream="stdout", line=f"step {seq}")
            for seq in (1, 2, 3)
        )
        series = apps.get_model("runs", "MetricSeries").objects.create(run=run, key="train/loss")
        apps.get_model("runs", "MetricPoint").objects.bulk_create(
            apps.get_model("runs", "MetricPoint")(series=series, step=step, value=1.0 / step, ts=now)
            for step in (1, 2, 3)
        )
        if status == "succeeded":
            apps.get_model("runs", "Artifact").objects.create(
                run=run, attempt=2, name="model.safetensors", kind="model", size=10, sha256="ab" * 32,
                storage_key=f"{run.pk}/model.safetensors", metadata={"params": 834304},
            )  # fmt: skip
    _audit(apps, user.pk)
    return ids


def _sha256(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode()).hexdigest()


def _audit(apps: Apps, actor_id: int) -> None:
    """Two chained records, hashed as the release hashed them (the chain's rule is unchanged)."""
    model = apps.get_model("audit", "AuditRecord")
    prev = "0" * 64
    for pk, action in ((1, "run.launch"), (2, "token.issue")):
        record = model(pk=pk, actor_id=actor_id, actor="ada", actor_role="admin", action=action,
                       target_type="run", target_id="1", request_id="req-1", details={}, prev_hash=prev)  # fmt: skip
        record.hash = audit_digest(record)
        record.save(force_insert=True)
        prev = record.hash


def test_a_database_of_the_previous_release_upgrades_with_every_run_intact(client: Any) -> None:
    latest = _latest()
    try:
        ids = _fill(_migrate(PREVIOUS_RELEASE))
        _migrate(latest)
        assert MigrationExecutor(connection).migration_plan(latest) == []

        runs = {run.status: run for run in Run.objects.all()}
        assert set(runs) == set(STATUSES)
        for status, run in runs.items():
            assert run.pk == ids[status]
            assert LogLine.objects.filter(run=run).count() == 3
            assert MetricPoint.objects.filter(series__run=run).count() == 3
            assert RunAttempt.objects.filter(run=run).count() == (0 if status == "queued" else 2)
            # Every status an old release wrote is one today's lifecycle knows what to do with.
            assert status in LIVE_STATUSES | WAITING_STATUSES | TERMINAL_STATUSES, status
            assert is_live(run) == (status in LIVE_STATUSES)
            assert is_terminal(run) == (status in TERMINAL_STATUSES)
        assert may_cancel(runs["queued"]) and may_cancel(runs["running"])
        assert may_retry(runs["failed"]) and not may_retry(runs["succeeded"])
        assert may_requeue(runs["dead"])
        assert Artifact.objects.get(run=runs["succeeded"]).metadata == {"params": 834304}

        token = access_token(TOKEN)
        assert token is not None and token.user.username == "ada"
        assert keyring().decrypt(Secret.objects.get(name="HF_TOKEN").ciphertext) == "hf-secret-value"
        walk = walk_records()
        assert walk.first_broken_id is None, walk.reason

        response = client.get("/api/v1/runs/?page_size=50", HTTP_AUTHORIZATION=f"Bearer {TOKEN}")
        assert response.status_code == 200, response.content
        listed = response.json()
        rows = listed["results"] if isinstance(listed, dict) else listed
        assert {row["status"] for row in rows} == set(STATUSES)
    finally:
        # Leave the schema as every other test expects it, even after a failure half-way.
        _migrate(latest)
