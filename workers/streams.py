"""Reading a training program's pipes without ever blocking it.

One thread per pipe pushes lines into one queue; a line longer than its limit keeps its head and
counts the rest, so a program printing a gigabyte without a newline costs bounded memory.

The queue is bounded in lines and in bytes (`ChunkQueue`): when the database is slower than the
program, the queue fills, the reader threads block in `put`, the pipes fill and the program waits
in its `write`. That is the backpressure that keeps the supervisor's memory flat under a flood.
"""

from __future__ import annotations

import queue
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Any, Literal

Source = Literal["stdout", "stderr", "events"]


@dataclass(frozen=True)
class Chunk:
    source: Source
    data: bytes | None  # None: the stream reached end of file
    truncated: int = 0
    parsed: Any = None  # what the reader's `parse` made of the line (events: workers/ingest.py)
    weight: int = 0  # bytes the parsed form holds beyond `data`: counted against the queue's bound


# Parses a line in its reader thread: (what it made of it, the bytes that holds beyond the line).
LineParser = Callable[[bytes], tuple[Any, int]]


# What one queued chunk costs beyond its bytes (the Chunk, the bytes object's header, the deque slot).
CHUNK_OVERHEAD_BYTES = 120
DEFAULT_QUEUE_CHUNKS = 50_000
# Small next to a batch: 2 MiB of multi-point JSON parses into ~120k points (~25 MiB in Python).
DEFAULT_QUEUE_BYTES = 2 * 1024 * 1024


class ChunkQueue(queue.Queue[Chunk]):
    """A queue full at `max_chunks` chunks or at `max_bytes` bytes, whichever comes first.

    `queue.Queue` blocks `put` while `_qsize() >= maxsize`: reporting the fuller of the two
    measures (bytes scaled to chunks) makes it block on either bound with its own locking. A chunk
    larger than the byte bound still goes into an empty queue (one event line, at most 1 MiB).
    """

    def __init__(self, max_chunks: int = DEFAULT_QUEUE_CHUNKS, max_bytes: int = DEFAULT_QUEUE_BYTES) -> None:
        super().__init__(maxsize=max_chunks)
        self.max_bytes = max_bytes
        self.bytes = 0

    @staticmethod
    def _cost(chunk: Chunk) -> int:
        return CHUNK_OVERHEAD_BYTES + chunk.weight + (len(chunk.data) if chunk.data is not None else 0)

    def _qsize(self) -> int:
        count = len(self.queue)
        if not count:
            return 0
        return max(count, self.bytes * self.maxsize // self.max_bytes)

    def _put(self, item: Chunk) -> None:
        self.bytes += self._cost(item)
        super()._put(item)

    def _get(self) -> Chunk:
        item: Chunk = super()._get()
        self.bytes -= self._cost(item)
        return item


def read_lines(
    stream: IO[bytes],
    source: Source,
    sink: queue.Queue[Chunk],
    limit: int,
    parse: LineParser | None = None,
    *,
    announce_end: bool = True,
) -> None:
    """Read one pipe line by line; a line longer than `limit` keeps its head and counts the rest.

    `parse`, when given, runs here on every whole line: the work of understanding a line happens
    in this thread while the loop's thread waits on the database, not after it.
    `announce_end=False`: one of several connections of a channel (workers/events_socket.py),
    which announces its own end once all of them are done."""
    try:
        while True:
            line = stream.readline(limit + 1)
            if not line:
                break
            if len(line) > limit and not line.endswith(b"\n"):
                dropped = 0
                while True:
                    rest = stream.readline(1024 * 1024)
                    dropped += len(rest)
                    if not rest or rest.endswith(b"\n"):
                        break
                sink.put(Chunk(source, line[:limit], truncated=dropped + len(line) - limit))
            else:
                sink.put(_whole_line(source, line, parse))
    except (OSError, ValueError):
        pass
    finally:
        if announce_end:
            sink.put(Chunk(source, None))


def _whole_line(source: Source, line: bytes, parse: LineParser | None) -> Chunk:
    if parse is None:
        return Chunk(source, line)
    try:
        parsed, weight = parse(line)
    except Exception:  # unparsed: the loop parses it again and reports the problem
        return Chunk(source, line)
    return Chunk(source, line, parsed=parsed, weight=weight)


def decode_line(data: bytes, truncated: int = 0) -> str:
    # Invalid UTF-8 becomes U+FFFD and NUL (which Postgres text refuses) is dropped, so binary
    # garbage is shown, never fatal.
    text = data.decode("utf-8", errors="replace").rstrip("\r\n").replace("\x00", "")
    if truncated:
        text += f" … [{truncated} more bytes truncated]"
    return text
