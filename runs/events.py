"""Websocket frames: their shapes, and publishing them to the channel layer.

Publishing is fire-and-forget from any thread. Redis (or the in-process layer) only carries
frames; the rows are already committed, so a lost frame costs a client nothing but a refetch
by seq.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future
from datetime import datetime
from typing import Any, Literal, TypedDict

import structlog
from channels.layers import get_channel_layer

log = structlog.get_logger(__name__)


class LogLineFrame(TypedDict):
    seq: int
    ts: str
    stream: str
    line: str


class MetricPointFrame(TypedDict):
    step: int
    values: dict[str, float | None]


class LogFrame(TypedDict):
    type: Literal["log"]
    lines: list[LogLineFrame]


class MetricFrame(TypedDict, total=False):
    type: Literal["metric"]
    points: list[MetricPointFrame]
    sampled_from: int  # present when the frame holds a sample of this many points


class StatusFrame(TypedDict, total=False):
    type: Literal["status"]
    status: str
    attempt: int
    phase: str
    progress_step: int | None
    progress_total: int | None
    error_kind: str
    error_message: str


Frame = LogFrame | MetricFrame | StatusFrame
# One channel-layer message per batch, its frames already JSON (runs.consumers.RunConsumer.run_frames):
# a run with many viewers costs one encoding per frame, not one per viewer, and one delivery per
# viewer for the batch, not one per frame. "run.frame" (one frame, as a dict) is still handled,
# for messages from workers older than the web.
CONSUMER_MESSAGE_TYPE = "run.frames"


class EncodedFrame(TypedDict, total=False):
    text: str  # the frame as the websocket sends it
    first_seq: int  # a log frame's first and last seq: a viewer checks them without decoding it
    last_seq: int


def encode(frame: Frame | dict[str, Any]) -> str:
    """A frame as the websocket sends it (one compact JSON text)."""
    return json.dumps(frame, separators=(",", ":"))


def encoded(frame: Frame) -> EncodedFrame:
    item: EncodedFrame = {"text": encode(frame)}
    lines = frame.get("lines") if frame.get("type") == "log" else None
    if isinstance(lines, list) and lines:
        item["first_seq"], item["last_seq"] = int(lines[0]["seq"]), int(lines[-1]["seq"])
    return item


def run_group(run_id: int) -> str:
    return f"run.{run_id}"


def log_frame(rows: Sequence[tuple[int, datetime, str, str]]) -> LogFrame:
    return {
        "type": "log",
        "lines": [
            {"seq": seq, "ts": ts.isoformat(), "stream": stream, "line": line}
            for seq, ts, stream, line in rows
        ],
    }


# A batch's metric frame carries at most this many points (key, step pairs). A flood's batch holds
# up to 20,000: one frame of every point cost the supervisor more than the COPY of them, and no
# live chart draws them (it re-reads its series from the rollups once live points outgrow it).
MAX_FRAME_POINTS = 2_000


# (key, step, value), or a batch's point row (key, step, value, ts): only the first three are read.
FramePoint = tuple[str, int, float | None] | tuple[str, int, float | None, datetime]


def metric_frame(points: Sequence[FramePoint]) -> MetricFrame:
    """The batch's points by step; a batch larger than MAX_FRAME_POINTS is sampled at an even
    stride (every key's newest point kept) and says so with `sampled_from`, so a client knows to
    read the series itself for every point."""
    sampled_from = 0
    if len(points) > MAX_FRAME_POINTS:
        sampled_from = len(points)
        stride = -(-len(points) // MAX_FRAME_POINTS)
        points = [*points[::stride], *_newest_per_key(points)]
    by_step: dict[int, dict[str, float | None]] = {}
    for point in points:
        by_step.setdefault(point[1], {})[point[0]] = point[2]
    frame: MetricFrame = {
        "type": "metric",
        "points": [{"step": step, "values": values} for step, values in sorted(by_step.items())],
    }
    if sampled_from:
        frame["sampled_from"] = sampled_from
    return frame


def _newest_per_key(points: Sequence[FramePoint]) -> list[FramePoint]:
    """Each key's last point, scanning back over at most MAX_FRAME_POINTS points (a key reported
    only early in a flood's batch may be missed; the chart's re-read shows it)."""
    newest: dict[str, FramePoint] = {}
    for point in points[: -MAX_FRAME_POINTS - 1 : -1]:
        newest.setdefault(point[0], point)
    return list(newest.values())


class _Publisher:
    """Sends frames on one long-lived event loop.

    In the web process that is the server's loop (the in-process channel layer only works there);
    in a worker it is a private loop in a daemon thread, so each publish reuses one connection
    instead of opening one per `async_to_sync` call.
    """

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()

    def use_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        with self._lock:
            self._loop = loop

    def _get_loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None or self._loop.is_closed():
                loop = asyncio.new_event_loop()
                threading.Thread(target=loop.run_forever, name="frame-publisher", daemon=True).start()
                self._loop = loop
            return self._loop

    def publish(self, run_id: int, *frames: Frame) -> Future[Any] | None:
        layer = get_channel_layer()
        if layer is None or not frames:
            return None
        message = {"type": CONSUMER_MESSAGE_TYPE, "frames": [encoded(frame) for frame in frames]}
        future = asyncio.run_coroutine_threadsafe(
            layer.group_send(run_group(run_id), message), self._get_loop()
        )
        future.add_done_callback(_log_failure)
        return future


class _FailureLog:
    """One warning per interval while the channel layer is down, with the count it stands for."""

    interval = 10.0

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last = 0.0
        self._suppressed = 0

    def __call__(self, future: Future[Any]) -> None:
        error = future.exception()
        if error is None:
            return
        with self._lock:
            now = time.monotonic()
            if now - self._last < self.interval:
                self._suppressed += 1
                return
            suppressed, self._suppressed, self._last = self._suppressed, 0, now
        log.warning("frame_publish_failed", error=repr(error)[:300], suppressed_since_last=suppressed)


_log_failure = _FailureLog()


publisher = _Publisher()


def publish(run_id: int, *frames: Frame) -> Future[Any] | None:
    """Send a run's frames to its viewers, in order, as one message."""
    return publisher.publish(run_id, *frames)
