"""The `quarantine` marker: a flaky test keeps running and reporting, but no longer gates.

    @pytest.mark.quarantine(reason="finishes on attempt 2 under load", issue="https://.../issues/16")

The test runs as a non-strict xfail carrying the reason and the issue: a failure is reported as
XFAIL, a pass as XPASS, and neither fails the session. Each outcome is also written as JUnit
properties (`quarantine`, `quarantine_outcome`), so `scripts/flaky_report.py` keeps counting it,
and listed in a "quarantined tests" section of the terminal summary, so it stays visible until
someone fixes it and removes the marker (docs/ci.md#flaky-tests).

tests/conftest.py imports the hooks; `pytest -p tests.quarantine` loads them anywhere else.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import pytest

MARKER = "quarantine"
_outcomes = pytest.StashKey[list[tuple[str, str, str, str]]]()


def pytest_configure(config: pytest.Config) -> None:
    # Also in pyproject.toml's markers; registered here so the plugin works on its own too.
    config.addinivalue_line("markers", f"{MARKER}(reason, issue): runs and reports a flaky test, never gates")
    config.stash[_outcomes] = []


def _details(item: pytest.Item) -> tuple[str, str] | None:
    marker = item.get_closest_marker(MARKER)
    if marker is None:
        return None
    reason, issue = marker.kwargs.get("reason"), marker.kwargs.get("issue")
    if not reason or not issue or marker.args:
        # A quarantine nobody can trace back is how flaky tests are forgotten.
        raise pytest.UsageError(f"{item.nodeid}: use @pytest.mark.quarantine(reason=..., issue=...)")
    return str(reason), str(issue)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        details = _details(item)
        if details is None:
            continue
        reason, issue = details
        item.add_marker(pytest.mark.xfail(reason=f"quarantined: {reason} ({issue})", strict=False))
        item.user_properties.append((MARKER, f"{issue} {reason}"))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, None]:
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    details = _details(item)
    # The call phase, or a setup that failed (then no call phase follows).
    counted = report.when == "call" or (report.when == "setup" and report.failed)
    if details is None or not counted:
        return
    # Under xfail a failure reads as "skipped" with `wasxfail`; a pass as "passed" with it.
    result = "failed" if report.skipped or report.failed else "passed"
    # junitxml writes the properties of the teardown report, which copies the item's.
    item.user_properties.append(("quarantine_outcome", result))
    item.config.stash[_outcomes].append((item.nodeid, result, *details))


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    outcomes = config.stash.get(_outcomes, [])
    if not outcomes:
        return
    terminalreporter.section("quarantined tests (reported, not gating)")
    for nodeid, result, reason, issue in outcomes:
        terminalreporter.line(f"QUARANTINED {result.upper()} {nodeid}: {reason} ({issue})")
