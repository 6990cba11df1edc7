"""What the load test counts: per-operation latencies and errors, websocket delivery, runs.

Plain containers filled by the actors in `bench/load_clients.py` and turned into the JSON that
`bench/check_load_results.py` reads. Appends come from the event loop and from the Postgres
probe thread; a list append is atomic under the GIL, so no lock is needed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

MAX_ERROR_SAMPLES = 5


def percentile(values: list[float], fraction: float) -> float | None:
    """Nearest-rank percentile (no interpolation: every figure reported was really observed)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


@dataclass
class OpStats:
    """One operation in one phase: latencies of its successes, and its failures."""

    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)

    def ok(self, seconds: float) -> None:
        self.latencies.append(seconds)

    def error(self, what: str) -> None:
        self.errors += 1
        if len(self.error_samples) < MAX_ERROR_SAMPLES:
            self.error_samples.append(what[:300])

    def summary(self, window_seconds: float) -> dict[str, Any]:
        count = len(self.latencies) + self.errors
        return {
            "count": count,
            "errors": self.errors,
            "error_rate": round(self.errors / count, 6) if count else 0.0,
            "p50_ms": _ms(percentile(self.latencies, 0.50)),
            "p95_ms": _ms(percentile(self.latencies, 0.95)),
            "p99_ms": _ms(percentile(self.latencies, 0.99)),
            "max_ms": _ms(max(self.latencies, default=None)),
            "throughput_per_s": round(len(self.latencies) / window_seconds, 3) if window_seconds > 0 else 0.0,
            "error_samples": list(self.error_samples),
        }


@dataclass
class Recorder:
    """The operations of one phase (no-load baseline, or load)."""

    ops: dict[str, OpStats] = field(default_factory=dict)

    def op(self, name: str) -> OpStats:
        stats = self.ops.get(name)
        if stats is None:
            stats = self.ops[name] = OpStats()
        return stats

    def summary(self, window_seconds: float) -> dict[str, Any]:
        return {name: stats.summary(window_seconds) for name, stats in sorted(self.ops.items())}


@dataclass
class Viewing:
    """One websocket connection to one run, from open to close."""

    run_id: int
    last_seq: int
    saw_terminal: bool
    opened: float  # epoch seconds
    first_status: str | None  # the status frame the consumer sends on connect


@dataclass
class SocketStats:
    connections: int = 0
    connect_errors: int = 0
    stalls: int = 0
    frames: int = 0
    log_frames: int = 0
    lines: int = 0
    # A gap: a line arrived whose seq is beyond the next expected one (gap_lines counts the seqs
    # skipped). A duplicate: a line at or below the last seq already received on that socket.
    gaps: int = 0
    gap_lines: int = 0
    duplicates: int = 0
    # Seconds from the line's `ts` (the supervisor read it from the program's pipe) to receipt,
    # and from the program's print (the time the line carries) to receipt; only for lines
    # produced after the socket opened, since backlog lines are old by design.
    delivery: list[float] = field(default_factory=list)
    print_to_receipt: list[float] = field(default_factory=list)
    viewings: list[Viewing] = field(default_factory=list)
    error_samples: list[str] = field(default_factory=list)

    def error(self, what: str) -> None:
        if len(self.error_samples) < MAX_ERROR_SAMPLES:
            self.error_samples.append(what[:300])

    def summary(
        self, missing_lines: int, incomplete: list[dict[str, Any]], missed_terminal: int
    ) -> dict[str, Any]:
        return {
            "connections": self.connections,
            "connect_errors": self.connect_errors,
            "stalls": self.stalls,
            "frames": self.frames,
            "log_frames": self.log_frames,
            "lines": self.lines,
            "gaps": self.gaps,
            "gap_lines": self.gap_lines,
            "duplicates": self.duplicates,
            "missing_lines": missing_lines,
            "viewings": len(self.viewings),
            "viewings_to_the_end": sum(1 for viewing in self.viewings if viewing.saw_terminal),
            "incomplete_viewings": len(incomplete),
            # Of those, the ones whose run was finished in the database: the socket missed the
            # run's terminal status frame rather than the run hanging.
            "missed_terminal_status": missed_terminal,
            "incomplete_details": incomplete[:MAX_ERROR_SAMPLES],
            "delivery_latency_ms": _latency_summary(self.delivery),
            "print_to_receipt_ms": _latency_summary(self.print_to_receipt),
            "error_samples": list(self.error_samples),
        }


def _latency_summary(values: list[float]) -> dict[str, Any]:
    return {
        "count": len(values),
        "p50": _ms(percentile(values, 0.50)),
        "p95": _ms(percentile(values, 0.95)),
        "p99": _ms(percentile(values, 0.99)),
        "max": _ms(max(values, default=None)),
    }


@dataclass
class RunBook:
    """Runs launched during the load phase, and what became of them (filled at the end)."""

    launched: list[int] = field(default_factory=list)
    # The status each launcher last saw; the final word comes from the database at the end.
    seen_terminal: dict[int, str] = field(default_factory=dict)
