"""runs/lifecycle/table.py: the transition table keeps its promises, read without a database.

The specification (which statuses are terminal or live, which actions may reopen a run) is
written out in tests/unit/test_run_lifecycle_states.py, which also walks the table for real.
"""

from __future__ import annotations

import re

import pytest

from runs import lifecycle
from runs.lifecycle import Trigger
from runs.models import Run, RunStatus
from tests.conftest import ROOT
from tests.unit.test_run_lifecycle_states import LIVE, TERMINAL


def test_only_user_actions_take_a_run_out_of_a_terminal_status() -> None:
    assert lifecycle.TERMINAL_STATUSES == TERMINAL
    assert lifecycle.LIVE_STATUSES == LIVE
    leaving_terminal = {
        row.trigger
        for row in lifecycle.TRANSITIONS
        if row.sources & TERMINAL and row.target not in row.sources
    }
    assert leaving_terminal == {Trigger.RETRY, Trigger.DEAD_LETTER_REQUEUE} == lifecycle.REOPENING_TRIGGERS
    assert all(lifecycle.RULES[trigger].cause in {"user", "admin"} for trigger in leaving_terminal)


def test_supervisor_and_lease_rows_are_fenced_on_the_attempt() -> None:
    for row in lifecycle.TRANSITIONS:
        if row.sources and row.sources <= LIVE:
            assert row.fenced or row.cause == "user", f"{row.trigger} may be written by a stale attempt"


def test_every_user_action_row_is_audited_under_its_existing_name() -> None:
    audited = {row.trigger: row.audit_action for row in lifecycle.TRANSITIONS if row.audit_action}
    assert set(audited.values()) == {
        "run.launch",
        "run.cancel",
        "run.retry",
        "dead_letter.requeue",
        "dead_letter.discard",
    }
    assert all(lifecycle.RULES[trigger].cause in {"user", "admin"} for trigger in audited)


@pytest.mark.parametrize("status", RunStatus.values)
def test_the_page_buttons_follow_the_table(status: str) -> None:
    run = Run(status=status)
    assert lifecycle.may_cancel(run) == (status in {"queued", "running", "preempted", "lost"})
    assert lifecycle.may_retry(run) == (status in {"failed", "cancelled", "dead"})
    assert lifecycle.may_requeue(run) == lifecycle.may_discard(run) == (status == "dead")


def test_the_browser_groups_statuses_like_the_server() -> None:
    source = (ROOT / "static" / "js" / "lib" / "status.js").read_text()

    def js_set(name: str) -> set[str]:
        found = re.search(rf"export const {name} = new Set\(\[([^\]]*)\]\)", source)
        assert found is not None, name
        return set(re.findall(r'"([a-z]+)"', found.group(1)))

    assert js_set("TERMINAL") == set(lifecycle.TERMINAL_STATUSES)
    assert js_set("LIVE") == set(lifecycle.LIVE_STATUSES)
