"""The events socket (workers/events_socket.py): any process of a run reports through it, lines of
concurrent writers never mix, a full queue makes the writers wait, and the channel ends once the
program is gone and its connections are closed. Real processes, real sockets, no database."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.conftest import ROOT
from workers.events_socket import EventsSocket
from workers.sdk import ENV_EVENTS_FD, ENV_EVENTS_SOCKET, Reporter
from workers.streams import Chunk, ChunkQueue


class Program:
    """Stands in for the guardian: the channel lives while `alive` is set."""

    def __init__(self) -> None:
        self.alive = threading.Event()
        self.alive.set()


def open_channel(directory: Path, chunks: queue.Queue[Chunk]) -> tuple[EventsSocket, Program]:
    program = Program()
    channel = EventsSocket(directory, chunks, 1024 * 1024, program.alive.is_set)
    channel.bind()
    channel.start("test-socket")
    return channel, program


def start_writer(
    channel: EventsSocket, name: str, *, rank: int, all_ranks: bool, threads: int, lines: int, keys: int
) -> subprocess.Popen[bytes]:
    env = {
        "PATH": os.environ["PATH"],
        "PYTHONPATH": str(ROOT),
        ENV_EVENTS_SOCKET: str(channel.path),
        "RANK": str(rank),
        "ALL_RANKS": "1" if all_ranks else "0",
    }
    command = [sys.executable, "-m", "tests.workers.socket_writer", name, str(threads), str(lines), str(keys)]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE)


def drain_until_end(chunks: queue.Queue[Chunk], timeout: float) -> list[bytes]:
    lines: list[bytes] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        chunk = chunks.get(timeout=max(0.01, deadline - time.monotonic()))
        if chunk.data is None:
            return lines
        lines.append(chunk.data)
    raise AssertionError("the channel never announced its end")


def writer_of(line: bytes) -> tuple[str, int]:
    event = json.loads(line)
    key = next(iter(event["values"]))
    writer, thread, _ = key.split("/")
    return f"{writer}/{thread}", event["step"]


def test_every_rank_s_lines_arrive_whole_and_in_order_from_concurrent_writers(tmp_path: Path) -> None:
    chunks: queue.Queue[Chunk] = ChunkQueue()
    channel, program = open_channel(tmp_path, chunks)
    # Three "ranks" with two threads each, lines of ~2 KB (longer than one socket write can be
    # atomic about), all at once; and a rank 1 that reports without all_ranks: silent.
    writers = [
        start_writer(channel, f"r{rank}", rank=rank, all_ranks=True, threads=2, lines=400, keys=60)
        for rank in range(3)
    ]
    writers.append(start_writer(channel, "quiet", rank=1, all_ranks=False, threads=1, lines=50, keys=1))
    lines: list[bytes] = []
    # Drained as the supervisor does, while they write (more than the queue holds).
    collector = threading.Thread(target=lambda: lines.extend(drain_until_end(chunks, 120)))
    collector.start()
    outputs = [writer.communicate(timeout=60)[0] for writer in writers]
    assert [writer.returncode for writer in writers] == [0, 0, 0, 0]
    assert b"writer quiet enabled=False" in outputs[3]
    program.alive.clear()
    collector.join(timeout=30)

    seen = [writer_of(line) for line in lines]  # every line parses: none was cut or mixed
    assert Counter(name for name, _ in seen) == {
        f"r{rank}/{thread}": 400 for rank in range(3) for thread in (0, 1)
    }
    for name in {name for name, _ in seen}:
        assert [step for writer, step in seen if writer == name] == list(range(400))
    assert not channel.path.exists()  # removed once the program is gone


def test_a_full_queue_makes_the_writers_wait_and_loses_nothing(tmp_path: Path) -> None:
    chunks: queue.Queue[Chunk] = ChunkQueue(max_chunks=20)
    channel, program = open_channel(tmp_path, chunks)
    writers = [
        start_writer(channel, f"r{rank}", rank=rank, all_ranks=True, threads=1, lines=3000, keys=40)
        for rank in range(2)
    ]
    # Nobody drains: the queue fills to its bound, then the socket buffers, then the writers block.
    time.sleep(3)
    assert chunks.qsize() <= 20
    assert [writer.poll() for writer in writers] == [None, None]
    received: list[bytes] = []
    while len(received) < 6000:
        chunk = chunks.get(timeout=30)
        assert chunk.data is not None
        received.append(chunk.data)
    assert [writer.wait(timeout=30) for writer in writers] == [0, 0]
    program.alive.clear()
    assert drain_until_end(chunks, 10) == []
    assert Counter(writer_of(line)[0] for line in received) == {"r0/0": 3000, "r1/0": 3000}


def test_a_run_directory_deeper_than_a_socket_path_allows_still_works(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    assert len(str(deep / "events.sock")) > 108
    chunks: queue.Queue[Chunk] = ChunkQueue()
    channel, program = open_channel(deep, chunks)
    writer = start_writer(channel, "deep", rank=0, all_ranks=False, threads=1, lines=5, keys=1)
    assert writer.wait(timeout=30) == 0
    program.alive.clear()
    assert [writer_of(line) for line in drain_until_end(chunks, 10)] == [
        ("deep/0", step) for step in range(5)
    ]


def test_the_reporter_falls_back_to_the_pipe_when_the_socket_is_unreachable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    read_end, write_end = os.pipe()
    monkeypatch.setenv(ENV_EVENTS_SOCKET, str(tmp_path / "nobody-listens.sock"))
    monkeypatch.setenv(ENV_EVENTS_FD, str(write_end))
    monkeypatch.delenv("RANK", raising=False)
    with Reporter.from_env() as reporter:
        reporter.progress(1, 2)
    with os.fdopen(read_end, "rb") as pipe:
        assert json.loads(pipe.read()) == {"type": "progress", "step": 1, "total": 2}

    monkeypatch.delenv(ENV_EVENTS_FD)
    with pytest.raises(ValueError, match="cannot connect to CONTROLPLANE_EVENTS_SOCKET"):
        Reporter.from_env()


def test_only_rank_zero_reports_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    read_end, write_end = os.pipe()
    monkeypatch.delenv(ENV_EVENTS_SOCKET, raising=False)
    monkeypatch.setenv(ENV_EVENTS_FD, str(write_end))
    monkeypatch.setenv("RANK", "1")
    assert not Reporter.from_env().enabled
    with Reporter.from_env(all_ranks=True) as reporter:
        reporter.status("training")
    with os.fdopen(read_end, "rb") as pipe:
        assert json.loads(pipe.read()) == {"type": "status", "phase": "training"}
    monkeypatch.setenv("RANK", "x")
    with pytest.raises(ValueError, match="RANK must be an integer"):
        Reporter.from_env()
