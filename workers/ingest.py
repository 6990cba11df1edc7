"""Turning what a program prints and reports into the batch: log lines, events, the stderr tail.

Secret values are masked here, before anything reaches the batch, so the database never holds
them. Malformed events are skipped with a note in the run's log, never fatal.
"""

from __future__ import annotations

import collections
import json
from dataclasses import dataclass, field
from typing import Any

from django.utils import timezone

from ops import worker_metrics
from redaction import Redactor
from runs.attempts import system_line
from runs.ingest import PointText, point_texts
from runs.models import LogStream
from workers.protocol import MAX_EVENT_LINE_BYTES, PointEntry, apply_event, prepare_columns, prepare_points
from workers.streams import Chunk, decode_line
from workers.writer import AttemptWriter

# Enough of stderr to classify how the program ended (workers.failures.classify_exit).
STDERR_TAIL_LINES = 50
# What one parsed point holds in memory (the tuple, its float, its COPY text; key and timestamp
# are shared):
# counted against the chunk queue's byte bound, so parsed lines waiting there stay bounded too.
POINT_ROW_BYTES = 170


@dataclass(frozen=True)
class ParsedEvent:
    """An event line as its reader thread understood it."""

    event: Any = None  # the event, secrets masked (None for a multi-point metric line)
    problem: str | None = None  # why the line is skipped
    points: list[PointEntry] | None = None  # a multi-point metric line's points, checked
    texts: list[PointText] = field(default_factory=list)  # those points formatted for COPY
    newest: Any = None  # that line's newest point


class Ingest:
    def __init__(self, run_id: int, writer: AttemptWriter, log: Any) -> None:
        self.run_id = run_id
        self.writer = writer
        self.log = log
        self.redactor = Redactor()  # replaced by one holding the run's secrets, when it has some
        self.stderr_tail: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL_LINES)

    def take(self, chunk: Chunk) -> None:
        """Add one line of the program's output (not an end-of-file chunk) to the batch."""
        assert chunk.data is not None
        self.writer.batch.nbytes += len(chunk.data)
        if chunk.source == "events":
            self._take_event(chunk.data, chunk.truncated, chunk.parsed)
            return
        text = self._redacted_line(chunk.data, chunk.truncated)
        if chunk.source == "stderr":
            self.stderr_tail.append(text)
        self.writer.say((timezone.now(), LogStream(chunk.source).value, text))

    def _redacted_line(self, data: bytes, truncated: int) -> str:
        if not self.redactor:
            return decode_line(data, truncated)
        # Masked before the truncation note is added: a line cut inside a secret hides its head too.
        text = self.redactor.text(decode_line(data), cut=bool(truncated))
        return text + decode_line(b"", truncated) if truncated else text

    def parse_event(self, data: bytes) -> tuple[ParsedEvent, int]:
        """Parse one whole event line, and check a multi-point line's points into batch rows;
        with the bytes those rows hold. Runs in the events reader thread (workers/streams.py):
        reads only the redactor, which is set before the program starts."""
        try:
            event = self.redactor.value(json.loads(data))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            return ParsedEvent(problem=f"not JSON ({error.__class__.__name__})"), 0
        if not isinstance(event, dict) or event.get("type") != "metric":
            return ParsedEvent(event=event), 0
        points: Any = event.get("points")
        steps: Any = event.get("steps")
        values: Any = event.get("values")
        if points is not None:
            rows = prepare_points(points, timezone.now())
        elif steps is not None:
            rows = prepare_columns(steps, values, timezone.now())
        else:
            return ParsedEvent(event=event), 0
        if isinstance(rows, str):
            return ParsedEvent(problem=rows), 0
        if points is not None:
            newest = points[-1]
        else:  # checked: a dict of lists, as many values a key as steps
            newest = {"step": steps[-1], "values": {key: column[-1] for key, column in values.items()}}
        # Only the newest point is kept beside the rows (it times the training loop); the rows
        # are also formatted for COPY here, so the loop's thread does not format them.
        parsed = ParsedEvent(points=rows, texts=point_texts(rows), newest=newest)
        return parsed, len(rows) * POINT_ROW_BYTES

    def _take_event(self, data: bytes, truncated: int, parsed: Any) -> None:
        if truncated:
            parsed = ParsedEvent(problem=f"event line longer than {MAX_EVENT_LINE_BYTES} bytes")
        elif not isinstance(parsed, ParsedEvent):
            parsed = self.parse_event(data)[0]
        problem = parsed.problem
        if problem is None and parsed.points is not None:
            batch = self.writer.batch
            if batch.text_points == len(batch.points):  # the texts still cover the batch
                batch.texts.extend(parsed.texts)
                batch.text_points += len(parsed.points)
            batch.points.extend(parsed.points)
            worker_metrics.observe_event(self.run_id, {"type": "metric", **parsed.newest})
        elif problem is None:
            problem = apply_event(parsed.event, self.writer.batch, self.writer.pending_files)
            worker_metrics.observe_event(self.run_id, parsed.event)
        if problem is not None:
            preview = self._redacted_line(data, truncated)[:200]
            self.log.warning("malformed_event_skipped", problem=problem, preview=preview)
            self.writer.say(system_line(f"skipped a malformed event ({problem}): {preview}"))
