"""External anchors: every signed checkpoint is also appended outside the database, and
verification compares the database with the newest anchor, so deleting checkpoints (all of them,
or the newest) along with a rewrite or a cut tail no longer passes.

Each tamper case here passed `verify_chain` before anchors existed."""

from __future__ import annotations

import io
import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.core.management import call_command
from django.test import override_settings
from prometheus_client import REGISTRY

from audit.anchors import FILE_NAME, Anchor, FileSink, configured_sinks
from audit.chain import verify_chain
from audit.checkpoints import do_write_checkpoint
from audit.models import AuditCheckpoint
from audit.tasks import housekeeping_audit_checkpoint
from ops.audit_metrics import audit_state
from tests.api.test_audit_checkpoints import _behind_the_apps_back, _records, _rewrite_chain_from

pytestmark = pytest.mark.django_db

ROOT = Path(__file__).resolve().parents[2]


def anchor_file() -> Path:
    (sink,) = configured_sinks()
    assert isinstance(sink, FileSink)
    return sink.path


def anchor_lines() -> list[dict[str, Any]]:
    return [json.loads(line) for line in anchor_file().read_text().splitlines()]


def _three_checkpoints() -> None:
    for _ in range(3):
        _records(2)
        assert do_write_checkpoint().checkpoint is not None


# -- what is written ------------------------------------------------------------------------------


def test_each_checkpoint_is_appended_to_the_anchor_file_as_a_private_json_line() -> None:
    _three_checkpoints()
    lines = anchor_lines()
    assert [line["checkpoint_id"] for line in lines] == [1, 2, 3]
    newest = AuditCheckpoint.objects.get(pk=3)
    assert lines[-1] == {
        "format": "controlplane-audit-anchor-v1",
        "checkpoint_id": 3,
        "created_at": newest.created_at.isoformat(),
        "head_id": 6,
        "head_hash": newest.head_hash,
        "record_count": 6,
        "key_id": newest.key_id,
        "prev_signature": newest.prev_signature,
        "signature": newest.signature,
    }
    assert stat.S_IMODE(os.stat(anchor_file()).st_mode) == 0o600
    result = verify_chain()
    assert result.ok
    assert (result.anchor_sinks_checked, result.anchored_checkpoint_id, result.anchored_up_to) == (1, 3, 6)


def test_the_default_anchor_is_a_file_in_the_data_directory(tmp_path: Path) -> None:
    code = "from django.conf import settings; print(settings.AUDIT_ANCHORS)"
    env = {k: v for k, v in os.environ.items() if not k.startswith("DJANGO")}
    env.update(DJANGO_SETTINGS_MODULE="controlplane.settings", CONTROLPLANE_DATA_DIR=str(tmp_path))
    env.pop("CONTROLPLANE_AUDIT_ANCHORS", None)
    shown = subprocess.run(
        [sys.executable, "-c", f"import django; django.setup(); {code}"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert shown.stdout.strip() == str([f"file://{tmp_path / FILE_NAME}"])
    env["CONTROLPLANE_AUDIT_ANCHORS"] = "s3://bucket/anchors"
    refused = subprocess.run(
        [sys.executable, "-c", "import controlplane.settings"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert refused.returncode != 0
    assert "CONTROLPLANE_AUDIT_ANCHORS must list file:///absolute/path sinks" in refused.stderr


def test_a_line_cut_short_by_a_crash_is_skipped_and_the_next_anchor_starts_a_line_of_its_own() -> None:
    _records(2)
    do_write_checkpoint()
    with anchor_file().open("a") as handle:
        handle.write('{"format": "controlplane-audit-anch')  # the crash
    assert verify_chain().ok, "an unfinished last line is not an anchor yet"
    _records(1)
    do_write_checkpoint()
    text = anchor_file().read_text()
    assert text.endswith("\n")
    assert json.loads(text.splitlines()[-1])["checkpoint_id"] == 2
    assert verify_chain().ok


# -- tamper cases ---------------------------------------------------------------------------------


def test_deleting_every_checkpoint_and_rewriting_the_chain_is_caught() -> None:
    _three_checkpoints()
    _behind_the_apps_back("DELETE FROM audit_auditcheckpoint")
    _rewrite_chain_from(2)
    result = verify_chain()
    assert not result.ok
    assert result.checkpoints_checked == 0
    assert result.anchor_problem == (
        f"anchor of checkpoint 3 in file://{anchor_file()}: the database has 0 signed checkpoints, "
        "checkpoint 3 is missing (deleted); record 6's hash differs from the anchored one (the chain "
        "was rewritten)"
    )
    assert result.reason == result.anchor_problem


def test_deleting_every_checkpoint_alone_is_caught() -> None:
    _three_checkpoints()
    _behind_the_apps_back("DELETE FROM audit_auditcheckpoint")
    result = verify_chain()
    assert not result.ok
    assert "checkpoint 3 is missing (deleted)" in result.anchor_problem


def test_deleting_the_newest_checkpoints_is_caught() -> None:
    _three_checkpoints()
    _behind_the_apps_back("DELETE FROM audit_auditcheckpoint WHERE id >= 2")
    result = verify_chain()
    assert not result.ok
    assert result.checkpoint_problem == "", "the checkpoints left still agree with each other"
    assert result.anchor_problem.endswith(
        "the database has 1 signed checkpoints, checkpoint 3 is missing (deleted)"
    ), "the records are all there: only the checkpoints went"


def test_cutting_the_tail_with_the_checkpoints_that_vouched_for_it_is_caught() -> None:
    _three_checkpoints()  # records 1-6, checkpoints at 2, 4 and 6
    _behind_the_apps_back("DELETE FROM audit_auditcheckpoint WHERE id >= 2")
    _behind_the_apps_back("DELETE FROM audit_auditrecord WHERE id >= 4")
    result = verify_chain()
    assert not result.ok
    assert result.first_broken_id == 4
    assert result.anchor_problem.endswith(
        "checkpoint 3 is missing (deleted); it vouches for records up to 6, but the chain ends at 3 (truncated)"
    )


def test_a_rewritten_head_under_an_anchored_checkpoint_that_was_rewritten_too_is_caught() -> None:
    """The anchored checkpoint is still there but edited to match a rewritten chain: only the
    signature could follow, and the attacker has no key."""
    _three_checkpoints()
    _rewrite_chain_from(5)
    _behind_the_apps_back(
        "UPDATE audit_auditcheckpoint SET head_hash = (SELECT hash FROM audit_auditrecord WHERE id = 6) "
        "WHERE id = 3"
    )
    result = verify_chain()
    assert not result.ok
    assert result.anchor_problem.endswith(
        "checkpoint 3 in the database differs from it (edited); record 6's hash differs from the "
        "anchored one (the chain was rewritten)"
    )


def test_deleting_a_record_below_the_anchor_and_renumbering_the_rest_is_caught() -> None:
    _three_checkpoints()
    # Record 3 gone, the rest renumbered and rehashed, checkpoints deleted: a chain of 5 that holds.
    _behind_the_apps_back("DELETE FROM audit_auditcheckpoint")
    _behind_the_apps_back("DELETE FROM audit_auditrecord WHERE id = 3")
    for old in (4, 5, 6):
        _behind_the_apps_back("UPDATE audit_auditrecord SET id = %s WHERE id = %s", [old - 1, old])
    _rewrite_chain_from(3)
    result = verify_chain()
    assert not result.ok
    assert result.first_broken_id == 6
    assert result.anchor_problem.endswith(
        "checkpoint 3 is missing (deleted); it vouches for records up to 6, but the chain ends at 5 (truncated)"
    )


def test_an_edited_anchor_fails_its_signature() -> None:
    _three_checkpoints()
    lines = anchor_file().read_text().splitlines()
    newest = json.loads(lines[-1])
    newest["head_id"] = 4  # someone moves the anchor back to hide the newest records
    lines[-1] = json.dumps(newest)
    anchor_file().write_text("\n".join(lines) + "\n")
    result = verify_chain()
    assert not result.ok
    assert result.anchor_problem == (
        f"anchor of checkpoint 3 in file://{anchor_file()}: its signature does not verify "
        "(the anchor was edited or forged)"
    )
    assert not do_write_checkpoint().ok, "a pass refuses to sign while an anchor does not verify"


def test_a_garbled_anchor_file_is_reported() -> None:
    _three_checkpoints()
    with anchor_file().open("a") as handle:
        handle.write("not an anchor\n")
    result = verify_chain()
    assert not result.ok
    assert result.anchor_problem.startswith(f"anchor file://{anchor_file()}: its last line is not an anchor")


def test_a_removed_anchor_file_is_reported_and_the_next_pass_anchors_the_newest_checkpoint_again() -> None:
    _three_checkpoints()
    anchor_file().unlink()
    result = verify_chain()
    assert not result.ok
    assert "holds no anchor, but the database has 3 signed checkpoints" in result.anchor_problem
    # The same state as the first pass after upgrading to anchors: the chain holds, so it heals.
    outcome = do_write_checkpoint()
    assert outcome.ok and outcome.checkpoint is None
    assert [line["checkpoint_id"] for line in anchor_lines()] == [3]
    assert verify_chain().ok


# -- a sink that fails, and the window ----------------------------------------------------------


def test_a_failing_sink_leaves_the_checkpoint_signed_and_the_next_pass_anchors_it(tmp_path: Path) -> None:
    _records(2)
    do_write_checkpoint()
    good = settings.AUDIT_ANCHORS[0]
    blocked = tmp_path / "not-a-directory"
    blocked.write_text("")
    with override_settings(AUDIT_ANCHORS=[good, f"file://{blocked / FILE_NAME}"]):
        _records(1)
        outcome = do_write_checkpoint()
    assert outcome.ok and outcome.checkpoint is not None
    assert outcome.anchor_failures == (f"file://{blocked / FILE_NAME}",)
    assert outcome.anchored_at is None, "not everything is outside the database yet"
    err = io.StringIO()
    with override_settings(AUDIT_ANCHORS=[f"file://{blocked / FILE_NAME}"]), pytest.raises(SystemExit):
        call_command("checkpoint_audit", stdout=io.StringIO(), stderr=err)
    assert "could not anchor in file://" in err.getvalue()
    retried = do_write_checkpoint()  # the good sink alone again: it already has checkpoint 2
    assert retried.anchor_failures == () and retried.anchored_at is not None
    assert [line["checkpoint_id"] for line in anchor_lines()] == [1, 2]


def test_the_unanchored_window_is_a_gauge_that_grows_until_a_pass_anchors(tmp_path: Path) -> None:
    _records(2)
    housekeeping_audit_checkpoint()
    fresh = REGISTRY.get_sample_value("controlplane_audit_unanchored_seconds")
    assert fresh is not None and fresh < 5
    blocked = tmp_path / "not-a-directory"
    blocked.write_text("")
    with override_settings(AUDIT_ANCHORS=[f"file://{blocked / FILE_NAME}"]):
        _records(1)
        assert housekeeping_audit_checkpoint()["anchor_failures"] == [f"file://{blocked / FILE_NAME}"]
    # The failed pass kept the last time everything was anchored: the age goes on growing.
    assert audit_state._anchored_at is not None
    assert (REGISTRY.get_sample_value("controlplane_audit_unanchored_seconds") or 0.0) >= fresh
    audit_state.set(True, 0.0, 1.0)  # anchored long ago: the age is the time since
    assert (REGISTRY.get_sample_value("controlplane_audit_unanchored_seconds") or 0.0) > 1.7e9


def test_verify_audit_names_the_anchor_problem() -> None:
    _three_checkpoints()
    out = io.StringIO()
    call_command("verify_audit", stdout=out)
    assert out.getvalue().splitlines() == [
        "audit chain ok: 6 records, 3 signed checkpoints (records 1-6 covered)",
        "external anchors: checkpoint 3 (records 1-6) in 1 sink(s)",
    ]
    _behind_the_apps_back("DELETE FROM audit_auditcheckpoint WHERE id = 3")
    err = io.StringIO()
    with pytest.raises(SystemExit) as exited:
        call_command("verify_audit", stderr=err)
    assert exited.value.code == 1
    assert err.getvalue().splitlines() == [
        f"audit chain broken: anchor of checkpoint 3 in file://{anchor_file()}: "
        "the database has 2 signed checkpoints, checkpoint 3 is missing (deleted)"
    ]


def test_an_anchor_round_trips_and_rejects_a_wrong_type() -> None:
    anchor = Anchor(1, "2026-01-01T00:00:00+00:00", 2, "a" * 64, 2, "k" * 16, "0" * 64, "b" * 64)
    assert Anchor.from_line(anchor.to_line()) == anchor
    from audit.anchors import AnchorUnreadable

    with pytest.raises(AnchorUnreadable, match="'head_id' is missing or not int"):
        Anchor.from_line(anchor.to_line().replace('"head_id":2', '"head_id":"2"'))
