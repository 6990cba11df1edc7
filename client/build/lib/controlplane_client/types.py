"""The API's bodies as the client sees them (TypedDicts: plain dicts at run time)."""

from __future__ import annotations

from typing import Any, Literal, TypedDict

TERMINAL = frozenset({"succeeded", "failed", "cancelled", "dead"})
# `cpctl wait`'s exit codes, by final status (2 is a usage or connection error).
EXIT_CODES = {"succeeded": 0, "failed": 1, "dead": 1, "cancelled": 3}


class Program(TypedDict):
    name: str
    description: str
    builtin: bool
    queue: str
    params_schema: dict[str, Any]
    defaults: dict[str, Any]


class RunError(TypedDict):
    kind: str
    code: str
    message: str


class Progress(TypedDict):
    step: int
    total: int | None


class Run(TypedDict, total=False):
    id: int
    name: str
    status: str
    program: str
    params: dict[str, Any]
    owner: str
    attempt: int
    max_attempts: int
    queue: str
    phase: str
    device: str
    progress: Progress | None
    worker: str
    exit_code: int | None
    error: RunError | None
    created_at: str
    started_at: str | None
    finished_at: str | None


class LogLine(TypedDict):
    seq: int
    ts: str
    stream: str
    line: str


class LogPage(TypedDict):
    results: list[LogLine]
    next_after: int
    has_more: bool
    run_status: str


class Artifact(TypedDict):
    id: int
    name: str
    kind: str
    size: int
    sha256: str
    download_url: str
    created_at: str
    attempt: int
    metadata: dict[str, Any]


class StatusEvent(TypedDict):
    type: Literal["status"]
    status: str


class LineEvent(TypedDict):
    type: Literal["log"]
    line: LogLine


Event = StatusEvent | LineEvent
