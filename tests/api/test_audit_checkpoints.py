"""Signed checkpoints of the audit chain head: tampering that the hash chain alone cannot see (a
rewrite of the whole chain, a truncated tail) is caught, as is tampering with the checkpoints."""

from __future__ import annotations

import io
import os
import stat
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.contrib.auth.models import User
from django.core.management import call_command
from django.db import DatabaseError, connection, transaction
from django.test import override_settings
from prometheus_client import REGISTRY
from rest_framework.test import APIClient

from accounts.tokens import do_issue_token
from audit import chain
from audit.chain import GENESIS, _digest, verify_chain
from audit.checkpoints import do_write_checkpoint, signature_valid
from audit.keys import KEY_FILE_NAME, current_key, key_id_of
from audit.models import AuditCheckpoint, AuditRecord
from audit.tasks import housekeeping_audit_checkpoint
from tests.conftest import make_user

pytestmark = pytest.mark.django_db

OTHER_KEY = "another-audit-key-that-is-long-enough-0123456789"


def _records(n: int) -> list[AuditRecord]:
    actor = User.objects.filter(username="olivia").first() or make_user("olivia")
    return [chain.record("test.event", actor=actor, details={"n": i}) for i in range(n)]


def _behind_the_apps_back(sql: str, params: list[Any] | None = None) -> None:
    with connection.cursor() as cursor:
        for table, trigger in (
            ("audit_auditrecord", "audit_record_no_update_delete"),
            ("audit_auditcheckpoint", "audit_checkpoint_no_update_delete"),
        ):
            cursor.execute(f"ALTER TABLE {table} DISABLE TRIGGER {trigger}")
        cursor.execute(sql, params)
        for table, trigger in (
            ("audit_auditrecord", "audit_record_no_update_delete"),
            ("audit_auditcheckpoint", "audit_checkpoint_no_update_delete"),
        ):
            cursor.execute(f"ALTER TABLE {table} ENABLE TRIGGER {trigger}")


def _rewrite_chain_from(first_id: int, actor: str = "mallory") -> None:
    """What an attacker with write access does: change a record, then recompute every hash after
    it so that the chain agrees with itself again."""
    previous = AuditRecord.objects.filter(pk=first_id - 1).values_list("hash", flat=True).first() or GENESIS
    for entry in AuditRecord.objects.filter(pk__gte=first_id).order_by("id"):
        if entry.pk == first_id:
            entry.actor = actor
        entry.prev_hash = previous
        entry.hash = _digest(entry)
        _behind_the_apps_back(
            "UPDATE audit_auditrecord SET actor = %s, prev_hash = %s, hash = %s WHERE id = %s",
            [entry.actor, entry.prev_hash, entry.hash, entry.pk],
        )
        previous = entry.hash


def test_a_checkpoint_signs_the_verified_head_and_verification_checks_it() -> None:
    records = _records(4)
    outcome = do_write_checkpoint()
    checkpoint = outcome.checkpoint
    assert outcome.ok and checkpoint is not None
    assert (checkpoint.pk, checkpoint.head_id, checkpoint.record_count) == (1, records[-1].pk, 4)
    assert checkpoint.head_hash == records[-1].hash
    assert checkpoint.key_id == current_key().key_id
    assert checkpoint.prev_signature == GENESIS
    assert signature_valid(checkpoint) is True
    result = verify_chain()
    assert (result.ok, result.checked, result.checkpoints_checked, result.covered_up_to) == (True, 4, 1, 4)


def test_a_second_checkpoint_links_to_the_first_and_an_unchanged_head_is_not_signed_twice() -> None:
    _records(2)
    first = do_write_checkpoint().checkpoint
    assert first is not None
    again = do_write_checkpoint()
    assert again.ok and again.checkpoint is None
    assert again.note == "records up to 2 are already signed"
    _records(3)
    second = do_write_checkpoint().checkpoint
    assert second is not None
    assert (second.pk, second.head_id, second.prev_signature) == (2, 5, first.signature)
    assert verify_chain().covered_up_to == 5


def test_an_empty_chain_has_nothing_to_sign() -> None:
    outcome = do_write_checkpoint()
    assert outcome.ok
    assert outcome.checkpoint is None
    assert AuditCheckpoint.objects.count() == 0


def test_rewriting_the_whole_chain_consistently_is_caught_by_the_checkpoint() -> None:
    _records(6)
    assert do_write_checkpoint().checkpoint is not None
    _rewrite_chain_from(2)
    walk = chain.walk_records()
    assert walk.ok, "the rewritten chain agrees with itself: only the checkpoint can tell"
    result = verify_chain()
    assert not result.ok
    assert result.first_broken_id == 1
    assert result.broken_checkpoint_id == 1
    assert "records 1-6 were rewritten" in result.reason
    assert result.checkpoint_problem == result.reason


def test_a_rewrite_after_an_older_checkpoint_is_placed_between_the_two_checkpoints() -> None:
    _records(3)
    do_write_checkpoint()
    _records(3)
    do_write_checkpoint()
    _rewrite_chain_from(5)
    result = verify_chain()
    assert not result.ok
    assert (result.first_broken_id, result.broken_checkpoint_id) == (4, 2)
    assert "records 4-6 were rewritten" in result.reason


def test_truncating_the_tail_below_the_newest_checkpoint_is_caught() -> None:
    _records(5)
    do_write_checkpoint()
    _behind_the_apps_back("DELETE FROM audit_auditrecord WHERE id >= 4")
    assert chain.walk_records().ok, "a cut tail leaves a chain that agrees with itself"
    result = verify_chain()
    assert not result.ok
    assert result.first_broken_id == 4
    assert "vouches for records up to 5, but the chain ends at 3 (truncated)" in result.reason


def test_reordering_records_is_caught() -> None:
    _records(4)
    for sql in (
        "UPDATE audit_auditrecord SET id = 1000 WHERE id = 2",
        "UPDATE audit_auditrecord SET id = 2 WHERE id = 3",
        "UPDATE audit_auditrecord SET id = 3 WHERE id = 1000",
    ):
        _behind_the_apps_back(sql)
    result = verify_chain()
    assert not result.ok
    assert result.first_broken_id == 2
    assert result.reason == "its link to the previous record does not match"


def test_a_forged_or_edited_checkpoint_is_caught() -> None:
    _records(3)
    checkpoint = do_write_checkpoint().checkpoint
    assert checkpoint is not None
    # Someone moves the checkpoint to a rewritten head; without the key the signature cannot follow.
    _behind_the_apps_back("UPDATE audit_auditcheckpoint SET head_hash = %s WHERE id = 1", ["f" * 64])
    result = verify_chain()
    assert not result.ok
    assert result.broken_checkpoint_id == 1
    assert result.checkpoint_problem == "checkpoint 1: its signature does not verify (forged or edited)"


def test_deleting_a_checkpoint_is_caught() -> None:
    _records(2)
    do_write_checkpoint()
    _records(2)
    do_write_checkpoint()
    _records(2)
    do_write_checkpoint()
    _behind_the_apps_back("DELETE FROM audit_auditcheckpoint WHERE id = 2")
    result = verify_chain()
    assert not result.ok
    assert result.checkpoint_problem == "checkpoint 3: checkpoint 2 is missing (deleted)"


def test_the_database_refuses_to_update_or_delete_checkpoints() -> None:
    _records(1)
    do_write_checkpoint()
    for statement in ("UPDATE audit_auditcheckpoint SET head_id = 9", "DELETE FROM audit_auditcheckpoint"):
        with (
            pytest.raises(DatabaseError, match="append-only"),
            transaction.atomic(),
            connection.cursor() as cursor,
        ):
            cursor.execute(statement)
    assert AuditCheckpoint.objects.get().head_id == 1


def test_a_broken_chain_is_never_signed() -> None:
    _records(3)
    _behind_the_apps_back("UPDATE audit_auditrecord SET actor = 'mallory' WHERE id = 2")
    outcome = do_write_checkpoint()
    assert not outcome.ok
    assert outcome.checkpoint is None
    assert AuditCheckpoint.objects.count() == 0


def test_keys_rotate_old_checkpoints_verify_and_new_ones_use_the_first_key() -> None:
    _records(2)
    old = do_write_checkpoint().checkpoint
    assert old is not None
    from django.conf import settings

    with override_settings(AUDIT_KEYS=[OTHER_KEY, *settings.AUDIT_KEYS]):
        _records(1)
        new = do_write_checkpoint().checkpoint
        assert new is not None
        assert new.key_id == key_id_of(OTHER_KEY.encode()) != old.key_id
        assert verify_chain().ok
    with override_settings(AUDIT_KEYS=[OTHER_KEY]):
        result = verify_chain()
    assert not result.ok
    assert result.checkpoint_problem == (
        f"checkpoint 1: signed with key {old.key_id}, which is not configured (CONTROLPLANE_AUDIT_KEY)"
    )


def test_without_a_configured_key_one_is_generated_once_into_the_data_directory(tmp_path: Path) -> None:
    with override_settings(AUDIT_KEYS=[], DATA_DIR=tmp_path):
        first = current_key()
        second = current_key()
    key_file = tmp_path / KEY_FILE_NAME
    assert first == second
    assert len(key_file.read_text()) >= 32
    assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600
    assert first.key_id == key_id_of(key_file.read_text().strip().encode())


def test_the_checkpoint_command_signs_and_refuses_a_broken_chain() -> None:
    _records(2)
    out = io.StringIO()
    call_command("checkpoint_audit", stdout=out)
    assert out.getvalue().strip() == "audit checkpoint: signed records 1-2"
    _behind_the_apps_back("UPDATE audit_auditrecord SET outcome = 'failure' WHERE id = 1")
    err = io.StringIO()
    with pytest.raises(SystemExit) as exited:
        call_command("checkpoint_audit", stderr=err)
    assert exited.value.code == 1
    assert err.getvalue().strip() == (
        "audit chain broken at record 1: its contents do not match its hash (edited); nothing was signed"
    )


def test_verify_audit_reports_the_first_broken_record_and_the_checkpoint_problem() -> None:
    _records(3)
    call_command("checkpoint_audit", stdout=io.StringIO())
    out = io.StringIO()
    call_command("verify_audit", stdout=out)
    assert (
        out.getvalue().splitlines()[0]
        == "audit chain ok: 3 records, 1 signed checkpoints (records 1-3 covered)"
    )
    _rewrite_chain_from(3)
    err = io.StringIO()
    with pytest.raises(SystemExit) as exited:
        call_command("verify_audit", stderr=err)
    assert exited.value.code == 1
    assert err.getvalue().splitlines()[0] == (
        "audit chain broken at record 1: checkpoint 1: record 3's hash differs from the signed one: "
        "records 1-3 were rewritten"
    )


def test_the_verify_endpoint_reports_the_checkpoint_problem() -> None:
    admin = make_user("ada", "admin")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {do_issue_token(admin).plaintext}")  # record 1
    _records(2)
    do_write_checkpoint()
    _behind_the_apps_back("DELETE FROM audit_auditrecord WHERE id >= 2")
    body = client.get("/api/v1/audit/verify/").json()
    assert body == {
        "ok": False,
        "checked": 1,
        "first_broken_id": 2,
        "reason": "checkpoint 1: it vouches for records up to 3, but the chain ends at 1 (truncated)",
        "checkpoints_checked": 0,
        "broken_checkpoint_id": 1,
        "checkpoint_problem": "checkpoint 1: it vouches for records up to 3, but the chain ends at 1 (truncated)",
        "covered_up_to": 0,
        "anchor_sinks_checked": 1,
        "anchored_checkpoint_id": 1,
        "anchored_up_to": 3,
        "anchor_problem": (
            f"anchor of checkpoint 1 in {settings.AUDIT_ANCHORS[0]}: it vouches for records up to 3, "
            "but the chain ends at 1 (truncated)"
        ),
    }


def test_the_beat_task_writes_a_checkpoint_and_sets_the_gauges() -> None:
    _records(2)
    result = housekeeping_audit_checkpoint()
    assert result["ok"] is True
    assert result["checkpoint_id"] == 1
    assert REGISTRY.get_sample_value("controlplane_audit_chain_ok") == 1.0
    verified_at = REGISTRY.get_sample_value("controlplane_audit_last_verified_timestamp_seconds")
    assert verified_at is not None and verified_at > 1.7e9
    _behind_the_apps_back("UPDATE audit_auditrecord SET actor = 'mallory' WHERE id = 1")
    assert housekeeping_audit_checkpoint()["ok"] is False
    assert REGISTRY.get_sample_value("controlplane_audit_chain_ok") == 0.0


@pytest.mark.django_db(transaction=True)
def test_a_real_housekeeping_worker_runs_the_checkpoint_task(stack: Any) -> None:
    from tests.conftest import wait_for

    _records(3)
    housekeeping_audit_checkpoint.apply_async(queue="housekeeping")
    checkpoint = wait_for(lambda: AuditCheckpoint.objects.first(), 60, message="the worker's checkpoint")
    assert (checkpoint.head_id, checkpoint.record_count) == (3, 3)
    assert signature_valid(checkpoint) is True
    # The worker anchored it in its own data directory, after the commit.
    anchors = stack.data_dir / "audit-anchors.jsonl"
    wait_for(
        lambda: anchors.exists() and '"checkpoint_id":1,' in anchors.read_text(), 10, message="the anchor"
    )
    with override_settings(AUDIT_ANCHORS=[f"file://{anchors}"]):
        assert verify_chain().ok
