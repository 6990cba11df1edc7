"""workers/streams.py: lines from a program's pipes, bounded in memory, always ending with EOF."""

from __future__ import annotations

import io
import queue

from workers.streams import Chunk, decode_line, read_lines


def read_all(stream: io.BufferedIOBase, limit: int) -> list[Chunk]:
    sink: queue.Queue[Chunk] = queue.Queue()
    read_lines(stream, "stdout", sink, limit)  # type: ignore[arg-type]
    return [sink.get_nowait() for _ in range(sink.qsize())]


def test_lines_arrive_whole_and_the_stream_ends_with_an_eof_marker() -> None:
    chunks = read_all(io.BytesIO(b"one\ntwo\nlast without newline"), limit=100)
    assert [chunk.data for chunk in chunks] == [b"one\n", b"two\n", b"last without newline", None]
    assert {chunk.truncated for chunk in chunks} == {0}


def test_a_line_over_the_limit_keeps_its_head_and_counts_the_rest_then_reading_goes_on() -> None:
    long_line = b"h" * 10 + b"t" * 3_000_000 + b"\n"
    chunks = read_all(io.BytesIO(long_line + b"next\n"), limit=10)
    assert chunks[0] == Chunk("stdout", b"h" * 10, truncated=3_000_001)
    assert [chunk.data for chunk in chunks[1:]] == [b"next\n", None]
    assert decode_line(chunks[0].data or b"", chunks[0].truncated) == (
        "hhhhhhhhhh … [3000001 more bytes truncated]"
    )


def test_a_stream_that_cannot_be_read_ends_with_the_eof_marker_instead_of_raising() -> None:
    closed = io.BytesIO(b"never read\n")
    closed.close()  # the supervisor tore the pipe down first
    assert read_all(closed, limit=100) == [Chunk("stdout", None)]


def test_binary_garbage_and_nul_bytes_decode_to_text_postgres_accepts() -> None:
    assert decode_line(b"ok \xff\xfe\x00end\r\n") == "ok \ufffd\ufffdend"
