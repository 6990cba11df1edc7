"""Turning what a program prints and reports into the batch: log lines, events, the stderr tail.

Secret values are masked here, before anything reaches the batch, so the database never holds
them. Malformed events are skipped with a note in the run's log, never fatal.
"""

from __future__ import annotations

import collections
from typing import Any

from django.utils import timezone

from ops import worker_metrics
from redaction import Redactor
from runs.attempts import system_line
from runs.models import LogStream
from runs.protocol import MAX_EVENT_LINE_BYTES, ParsedEvent, apply_event, parse_event
from workers.streams import Chunk, decode_line
from workers.writer import AttemptWriter

# Enough of stderr to classify how the program ended (workers.failures.classify_exit).
STDERR_TAIL_LINES = 50
# What one parsed point holds in memory (the tuple, its float, its COPY text; key and timestamp
# are shared):
# counted against the chunk queue's byte bound, so parsed lines waiting there stay bounded too.
POINT_ROW_BYTES = 170


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
        parsed = parse_event(data, self.redactor)
        return parsed, len(parsed.points or ()) * POINT_ROW_BYTES

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
