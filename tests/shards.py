"""Two halves of the suite that run at the same time (`./dev coverage`, docs/ci.md#shards).

`CONTROLPLANE_TEST_SHARD=live` keeps the tests that start or share live processes (the session
stack, the browser, the chaos suite's private servers, the e2e flows) and the API fuzzing (for
balance); `rest` keeps the others.
Each half runs against its own test database and Redis database, so the session stack's worker
and reconciler never see the rows, queues or frames of the in-process tests (which is where the
cross-suite flakes of CI came from), and the two halves overlap their waits on one machine.
Unset, every test runs.
"""

from __future__ import annotations

import os

import pytest

SHARDS = ("live", "rest")
_LIVE_PATHS = (
    "tests/e2e/",
    "tests/browser/",
    "tests/chaos/",
    # No live process, but ~5 min of the suite's ~65: it evens the halves (CI's JUnit times), and
    # its rows are never committed (rolled back per test), so the stack cannot see them.
    "tests/api/test_fuzz_schemathesis.py",
)


def shard_of(item: pytest.Item) -> str:
    if item.nodeid.startswith(_LIVE_PATHS) or "stack" in getattr(item, "fixturenames", ()):
        return "live"
    return "rest"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    wanted = os.environ.get("CONTROLPLANE_TEST_SHARD", "").strip()
    if not wanted:
        return
    if wanted not in SHARDS:
        raise pytest.UsageError(f"CONTROLPLANE_TEST_SHARD must be one of {', '.join(SHARDS)}, not {wanted!r}")
    kept = [item for item in items if shard_of(item) == wanted]
    left = [item for item in items if shard_of(item) != wanted]
    if left:
        config.hook.pytest_deselected(items=left)
    items[:] = kept
