"""Reading a training program's pipes without ever blocking it.

One thread per pipe pushes lines into one queue; a line longer than its limit keeps its head and
counts the rest, so a program printing a gigabyte without a newline costs bounded memory.
"""

from __future__ import annotations

import queue
from dataclasses import dataclass
from typing import IO, Literal

Source = Literal["stdout", "stderr", "events"]


@dataclass(frozen=True)
class Chunk:
    source: Source
    data: bytes | None  # None: the stream reached end of file
    truncated: int = 0


def read_lines(stream: IO[bytes], source: Source, sink: queue.Queue[Chunk], limit: int) -> None:
    """Read one pipe line by line; a line longer than `limit` keeps its head and counts the rest."""
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
                sink.put(Chunk(source, line))
    except (OSError, ValueError):
        pass
    finally:
        sink.put(Chunk(source, None))


def decode_line(data: bytes, truncated: int = 0) -> str:
    # Invalid UTF-8 becomes U+FFFD and NUL (which Postgres text refuses) is dropped, so binary
    # garbage is shown, never fatal.
    text = data.decode("utf-8", errors="replace").rstrip("\r\n").replace("\x00", "")
    if truncated:
        text += f" … [{truncated} more bytes truncated]"
    return text
