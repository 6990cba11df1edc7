"""The events socket: a Unix stream socket in the run directory that any process of a run may open.

The events pipe (`CONTROLPLANE_EVENTS_FD`) reaches only the processes that inherit it; a launcher
such as torchrun closes inherited descriptors, so its ranks could not report. The socket is named
by a path (`CONTROLPLANE_EVENTS_SOCKET`), which every process of the run can connect to. Each
connection is read line by line by a thread of its own into the supervisor's one queue, exactly as
the pipe is: the same line limit, and the same backpressure (a full queue blocks the reader, the
socket buffer fills, the writer waits in its `send`). Lines of different connections never mix,
since each connection is its own byte stream; a writer shares its connection between threads
under a lock (workers/sdk.py).

The channel ends (one end-of-file chunk, like a pipe's) once the program is gone and every
connection has closed: a process that outlives the program (and holds its connection) is ended
with the group by the watch loop, after the same grace the pipes get.
"""

from __future__ import annotations

import contextlib
import os
import queue
import select
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import IO

from workers.sdk import unix_socket_address
from workers.streams import Chunk, LineParser, read_lines

SOCKET_NAME = "events.sock"
# Connections at once: one per rank is the use; the bound keeps a runaway program from using up
# the worker's descriptors and threads.
MAX_CONNECTIONS = 256
ACCEPT_POLL_SECONDS = 0.1


class EventsSocket:
    def __init__(
        self,
        directory: Path,
        sink: queue.Queue[Chunk],
        limit: int,
        program_alive: Callable[[], bool],
        *,
        parse: LineParser | None = None,
    ) -> None:
        self.path = directory / SOCKET_NAME
        self._sink = sink
        self._limit = limit
        self._parse = parse  # as on the pipe: each whole line understood in its reader thread
        self._program_alive = program_alive
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._readers: list[threading.Thread] = []
        self.refused = 0

    def bind(self) -> None:
        """Create the socket file (replacing one a previous attempt left) and listen on it."""
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        try:
            address, directory_fd = unix_socket_address(self.path)
            try:
                self._listener.bind(address)
            finally:
                if directory_fd is not None:
                    os.close(directory_fd)
            # Only this user's processes (the worker and its programs) may connect.
            os.chmod(self.path, 0o600)
            self._listener.listen(64)
        except OSError:
            self._listener.close()  # the attempt fails to start (cannot_start); no descriptor kept
            raise

    def start(self, name: str) -> None:
        threading.Thread(target=self._serve, name=name, daemon=True).start()

    def close(self) -> None:
        """Stop listening (idempotent); the channel's end-of-file follows its last connection."""
        with contextlib.suppress(OSError):
            self._listener.close()
        with contextlib.suppress(OSError):
            self.path.unlink()

    def _serve(self) -> None:
        try:
            while self._program_alive():
                ready, _, _ = select.select([self._listener], [], [], ACCEPT_POLL_SECONDS)
                if ready:
                    self._accept()
            # The program is gone: take the connections it made just before it ended.
            self._listener.setblocking(False)
            while self._accept():
                pass
        except (OSError, ValueError):
            pass  # closed under us (the supervisor ended the attempt)
        finally:
            self.close()
            for reader in self._readers:
                reader.join()
            self._sink.put(Chunk("events", None))

    def _accept(self) -> bool:
        try:
            connection, _ = self._listener.accept()
        except (BlockingIOError, InterruptedError):
            return False
        connection.setblocking(True)
        self._readers = [reader for reader in self._readers if reader.is_alive()]
        if len(self._readers) >= MAX_CONNECTIONS:
            self.refused += 1
            connection.close()
            return True
        stream = connection.makefile("rb")
        connection.close()  # the file object holds its own reference to the socket
        reader = threading.Thread(
            target=_read_connection,
            args=(stream, self._sink, self._limit, self._parse),
            name=f"{threading.current_thread().name}-{len(self._readers)}",
            daemon=True,
        )
        reader.start()
        self._readers.append(reader)
        return True


def _read_connection(
    stream: IO[bytes], sink: queue.Queue[Chunk], limit: int, parse: LineParser | None
) -> None:
    try:
        read_lines(stream, "events", sink, limit, parse, announce_end=False)
    finally:
        with contextlib.suppress(OSError):
            stream.close()
