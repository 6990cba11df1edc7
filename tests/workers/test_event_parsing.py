"""Event lines parsed in the events reader thread: what the loop receives, and what it costs the
chunk queue's bound; a parse that fails leaves the line to the loop, which reports it."""

from __future__ import annotations

import io
import json
import queue
from typing import Any

import structlog

from runs.batches import Batch
from runs.protocol import ParsedEvent
from workers.ingest import POINT_ROW_BYTES, Ingest
from workers.streams import CHUNK_OVERHEAD_BYTES, Chunk, ChunkQueue, read_lines


class Writer:
    """What Ingest writes into: the batch and the pending files (no database involved)."""

    def __init__(self) -> None:
        self.batch = Batch()
        self.pending_files: list[dict[str, Any]] = []

    def say(self, line: tuple[Any, str, str]) -> None:
        self.batch.lines.append(line)


def ingest() -> tuple[Ingest, Writer]:
    writer = Writer()
    return Ingest(901, writer, structlog.get_logger()), writer  # type: ignore[arg-type]


def points_line(steps: range, keys: tuple[str, ...] = ("loss",)) -> bytes:
    points = [{"step": step, "values": {key: step / 2 for key in keys}} for step in steps]
    return (json.dumps({"type": "metric", "points": points}) + "\n").encode()


def read_events(data: bytes, parse: Any) -> list[Chunk]:
    sink: queue.Queue[Chunk] = queue.Queue()
    read_lines(io.BytesIO(data), "events", sink, 1 << 20, parse)
    return [sink.get_nowait() for _ in range(sink.qsize())]


def test_a_multi_point_line_arrives_parsed_with_its_rows_weight_and_the_loop_only_appends_them() -> None:
    parser, writer = ingest()
    line = points_line(range(10, 13), ("a", "b"))
    first, end = read_events(line, parser.parse_event)
    assert end == Chunk("events", None)
    assert isinstance(first.parsed, ParsedEvent) and first.weight == 6 * POINT_ROW_BYTES
    assert first.parsed.newest == {"step": 12, "values": {"a": 6.0, "b": 6.0}}
    parser.take(first)
    assert [(key, step, value) for key, step, value, _ in writer.batch.points] == [
        ("a", 10, 5.0),
        ("b", 10, 5.0),
        ("a", 11, 5.5),
        ("b", 11, 5.5),
        ("a", 12, 6.0),
        ("b", 12, 6.0),
    ]
    assert writer.batch.nbytes == len(line) and writer.batch.lines == []


def test_the_chunk_queue_counts_a_parsed_lines_rows_against_its_byte_bound() -> None:
    chunks = ChunkQueue(max_chunks=100, max_bytes=10_000)
    chunks.put(Chunk("events", b"x" * 100, weight=5_000))
    assert chunks.bytes == CHUNK_OVERHEAD_BYTES + 100 + 5_000
    assert chunks.qsize() == 100 * chunks.bytes // 10_000  # half full in bytes, though one chunk
    chunks.get_nowait()
    assert chunks.bytes == 0


def test_other_events_are_parsed_in_the_reader_and_applied_by_the_loop() -> None:
    parser, writer = ingest()
    progress, phase = read_events(
        b'{"type": "progress", "step": 4, "total": 10}\n{"type": "status", "phase": "eval"}\n',
        parser.parse_event,
    )[:2]
    assert progress.parsed == ParsedEvent(event={"type": "progress", "step": 4, "total": 10})
    assert progress.weight == 0
    parser.take(progress)
    parser.take(phase)
    assert writer.batch.progress == (4, 10) and writer.batch.phase == "eval"


def test_malformed_lines_parsed_in_the_reader_are_skipped_with_a_note_in_the_log() -> None:
    parser, writer = ingest()
    chunks = read_events(
        b'not json\n{"type": "metric", "points": [{"step": -1, "values": {"a": 1}}]}\n', parser.parse_event
    )
    assert chunks[0].parsed == ParsedEvent(problem="not JSON (JSONDecodeError)")
    for chunk in chunks[:2]:
        parser.take(chunk)
    assert writer.batch.points == []
    notes = [line for _, _, line in writer.batch.lines]
    assert notes[0].startswith("skipped a malformed event (not JSON (JSONDecodeError)): not json")
    assert notes[1].startswith("skipped a malformed event (metric needs an integer step >= 0")


def test_a_parse_that_raises_leaves_the_line_unparsed_for_the_loop_and_reading_goes_on() -> None:
    def broken(data: bytes) -> tuple[Any, int]:
        raise RecursionError("nested too deep")

    parser, writer = ingest()
    chunks = read_events(points_line(range(2)) + points_line(range(2, 3)), broken)
    assert [chunk.parsed for chunk in chunks] == [None, None, None] and len(chunks) == 3
    for chunk in chunks[:2]:
        parser.take(chunk)  # the loop parses them itself
    assert [step for _, step, _, _ in writer.batch.points] == [0, 1, 2]


def test_a_truncated_event_line_is_skipped_whatever_the_reader_made_of_it() -> None:
    parser, writer = ingest()
    parser.take(Chunk("events", b'{"type": "sta', truncated=5))
    assert writer.batch.lines[0][2].startswith("skipped a malformed event (event line longer than")


def test_the_batch_keeps_copy_texts_only_while_they_cover_every_point() -> None:
    parser, writer = ingest()
    for chunk in read_events(
        points_line(range(3)) + points_line(range(3, 5), ("a", "b")), parser.parse_event
    )[:2]:
        parser.take(chunk)
    batch = writer.batch
    assert batch.text_points == len(batch.points) == 7
    assert [text.key for text in batch.texts] == ["loss", "a", "b"]
    assert batch.texts[0].text.splitlines()[1].split("\t")[:2] == ["1", "0.5"]
    # A one-point event has no text: from here the points are formatted at write time.
    parser.take(Chunk("events", b'{"type": "metric", "step": 9, "values": {"loss": 1}}\n'))
    parser.take(read_events(points_line(range(10, 12)), parser.parse_event)[0])
    assert len(batch.points) == 10 and batch.text_points == 7


def test_a_columnar_line_is_parsed_in_the_reader_with_its_newest_step() -> None:
    parser, writer = ingest()
    line = b'{"type": "metric", "steps": [1, 2], "values": {"loss": [0.5, 0.25], "lr": [1, 1]}}\n'
    chunk = read_events(line, parser.parse_event)[0]
    assert chunk.parsed.newest == {"step": 2, "values": {"loss": 0.25, "lr": 1}}
    parser.take(chunk)
    assert sorted((key, step, value) for key, step, value, _ in writer.batch.points) == [
        ("loss", 1, 0.5),
        ("loss", 2, 0.25),
        ("lr", 1, 1.0),
        ("lr", 2, 1.0),
    ]
    assert writer.batch.text_points == 4
    bad = read_events(b'{"type": "metric", "steps": [1], "values": {"loss": []}}\n', parser.parse_event)[0]
    assert bad.parsed.problem is not None and bad.weight == 0
