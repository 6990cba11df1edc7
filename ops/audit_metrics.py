"""The gauges of the periodic audit chain verification (`audit.tasks`, on the housekeeping
worker): `controlplane_audit_chain_ok`, `controlplane_audit_last_verified_timestamp_seconds` and
`controlplane_audit_unanchored_seconds` (its age is computed at each scrape, so it keeps growing
when passes stop anchoring, whatever the reason).

They exist only in a process that has verified the chain, so a training worker never exports a 0
that would read as "broken".
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

from prometheus_client import REGISTRY
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from ops.metrics import AUDIT_CHAIN_OK, AUDIT_LAST_VERIFIED, AUDIT_UNANCHORED


class AuditStateCollector(Collector):
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last: tuple[bool, float] | None = None
        self._anchored_at: float | None = None

    def set(self, ok: bool, at: float, anchored_at: float | None = None) -> None:
        """`anchored_at`: every record that existed then is anchored; None keeps the previous time,
        so a pass that could not anchor lets the age grow."""
        with self._lock:
            self._last = (ok, at)
            if anchored_at is not None:
                self._anchored_at = anchored_at

    def describe(self) -> Iterator[Metric]:
        yield AUDIT_CHAIN_OK.build()
        yield AUDIT_LAST_VERIFIED.build()
        yield AUDIT_UNANCHORED.build()

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            last, anchored_at = self._last, self._anchored_at
        if last is None:
            return
        ok_family, at_family = AUDIT_CHAIN_OK.build(), AUDIT_LAST_VERIFIED.build()
        ok_family.add_metric([], 1.0 if last[0] else 0.0)
        at_family.add_metric([], last[1])
        yield ok_family
        yield at_family
        if anchored_at is not None:
            unanchored = AUDIT_UNANCHORED.build()
            unanchored.add_metric([], max(0.0, time.time() - anchored_at))
            yield unanchored


audit_state = AuditStateCollector()
REGISTRY.register(audit_state)
