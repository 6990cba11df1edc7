"""The supervisors alive in this process, so a shutdown can end their training processes."""

from __future__ import annotations

import threading
from typing import Protocol

from ops.metrics import RUNS_SUPERVISED


class Stoppable(Protocol):
    def request_shutdown(self) -> None: ...


class _ActiveSupervisors:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: set[Stoppable] = set()

    def add(self, supervisor: Stoppable) -> None:
        with self._lock:
            self._items.add(supervisor)

    def discard(self, supervisor: Stoppable) -> None:
        with self._lock:
            self._items.discard(supervisor)

    def count(self) -> int:
        with self._lock:
            return len(self._items)

    def shutdown_all(self) -> int:
        with self._lock:
            items = list(self._items)
        for supervisor in items:
            supervisor.request_shutdown()
        return len(items)


active_supervisors = _ActiveSupervisors()
# Workers register into ops (ops imports no app): the gauge reads this process's registry.
RUNS_SUPERVISED.set_function(lambda: float(active_supervisors.count()))
