"""The two gauges of the periodic audit chain verification (`audit.tasks`, on the housekeeping
worker): `controlplane_audit_chain_ok` and `controlplane_audit_last_verified_timestamp_seconds`.

They exist only in a process that has verified the chain, so a training worker never exports a 0
that would read as "broken".
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

from prometheus_client import REGISTRY
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from ops.metrics import AUDIT_CHAIN_OK, AUDIT_LAST_VERIFIED


class AuditStateCollector(Collector):
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last: tuple[bool, float] | None = None

    def set(self, ok: bool, at: float) -> None:
        with self._lock:
            self._last = (ok, at)

    def describe(self) -> Iterator[Metric]:
        yield AUDIT_CHAIN_OK.build()
        yield AUDIT_LAST_VERIFIED.build()

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            last = self._last
        if last is None:
            return
        ok_family, at_family = AUDIT_CHAIN_OK.build(), AUDIT_LAST_VERIFIED.build()
        ok_family.add_metric([], 1.0 if last[0] else 0.0)
        at_family.add_metric([], last[1])
        yield ok_family
        yield at_family


audit_state = AuditStateCollector()
REGISTRY.register(audit_state)
