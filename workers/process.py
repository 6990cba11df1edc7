"""The training program's process: started under the guardian, read without blocking, ended as a group.

The program runs in its own session and process group, so cancel and shutdown signal the whole
group and children the program forks end with it; signals go to the guardian's whole process tree
too, since a launcher's ranks live in sessions of their own (workers/proctree.py). Its three pipes
(stdout, stderr, events) are read by one thread each, and its events socket (any process of the
run may connect: workers/events_socket.py) by one thread per connection, into one queue, so no
pipe ever blocks the program.

Logs go through the supervisor's bound logger, so every line of an attempt names the supervisor
and carries the run and the attempt.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from typing import Any

from runs.protocol import MAX_EVENT_LINE_BYTES
from workers.events_socket import EventsSocket
from workers.launch import Launch
from workers.proctree import signal_tree
from workers.streams import Chunk, LineParser, read_lines

READER_COUNT = 4  # stdout, stderr, the events pipe and socket: each ends with one end-of-file chunk
END_WAIT_SECONDS = 10


class ProgramProcess:
    def __init__(self, log: Any) -> None:
        self.log = log
        self.popen: subprocess.Popen[bytes] | None = None
        self.sigterm_sent_at: float | None = None
        self.killed = False
        # The write end of the lifeline pipe: only this process holds it, so when it dies (even by
        # SIGKILL) the guardian reads end-of-file and ends the program's whole group.
        self._lifeline: int | None = None
        self._events_socket: EventsSocket | None = None

    @property
    def terminated(self) -> bool:
        """Whether SIGTERM was sent (cancel, shutdown or the maximum duration)."""
        return self.sigterm_sent_at is not None

    def start(
        self,
        launch: Launch,
        chunks: queue.Queue[Chunk],
        line_limit: int,
        parse_event: LineParser | None = None,
    ) -> None:
        """Start the program under the guardian; raises OSError when it cannot start.
        `parse_event` runs in the events reader threads (pipe and socket) on each whole line."""
        events_socket = EventsSocket(
            launch.directory, chunks, MAX_EVENT_LINE_BYTES, self._alive, parse=parse_event
        )
        events_socket.bind()
        self._events_socket = events_socket
        read_fd, write_fd = os.pipe()
        lifeline_read, self._lifeline = os.pipe()
        command = launch.argv()
        try:
            self.popen = subprocess.Popen(
                [sys.executable, "-m", "workers.guardian", str(lifeline_read), "--", *command],
                cwd=launch.directory,
                env=launch.environment(write_fd, events_socket.path),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                pass_fds=(write_fd, lifeline_read),
                # Its own session and process group: cancel and shutdown signal the whole group,
                # so children the program forks end with it.
                start_new_session=True,
            )
        except OSError:
            os.close(read_fd)
            events_socket.close()
            raise
        finally:
            # The child holds its own copies; ours would keep the events pipe open after it exits.
            os.close(write_fd)
            os.close(lifeline_read)
        assert self.popen.stdout is not None and self.popen.stderr is not None
        readers = [
            (self.popen.stdout, "stdout", line_limit, None),
            (self.popen.stderr, "stderr", line_limit, None),
            (os.fdopen(read_fd, "rb"), "events", MAX_EVENT_LINE_BYTES, parse_event),
        ]
        for stream, source, size, parse in readers:
            threading.Thread(
                target=read_lines,
                args=(stream, source, chunks, size, parse),
                name=f"run-{launch.run_id}-{source}",
                daemon=True,
            ).start()
        events_socket.start(f"run-{launch.run_id}-socket")

    def _alive(self) -> bool:
        return self.popen is None or self.popen.poll() is None

    def signal_group(self, signum: int) -> None:
        if self.popen is None:
            return
        # The guardian's tree, then its group: the group may be gone already, or (on some
        # systems) left with only a zombie leader.
        signal_tree(self.popen.pid, signum)

    def terminate(self, reason: str) -> bool:
        """SIGTERM to the group, once; True when it was sent now (the caller says why in the log)."""
        if self.sigterm_sent_at is not None or self.popen is None:
            return False
        self.sigterm_sent_at = time.monotonic()
        self.log.info("process_terminating", reason=reason)
        self.signal_group(signal.SIGTERM)
        return True

    def escalate_if_needed(self, grace: float) -> None:
        """SIGKILL a program still running `grace` seconds after SIGTERM."""
        if (
            self.sigterm_sent_at is not None
            and not self.killed
            and time.monotonic() - self.sigterm_sent_at > grace
        ):
            self.kill(f"still running {grace:g} s after SIGTERM")

    def kill(self, reason: str) -> None:
        if self.killed:
            return
        self.killed = True
        self.log.warning("process_killed", reason=reason)
        self.signal_group(signal.SIGKILL)

    def end_group(self) -> None:
        """Kill whatever is left of the group, drop the lifeline and reap the guardian."""
        self.signal_group(signal.SIGKILL)
        if self._events_socket is not None:
            self._events_socket.close()
        if self._lifeline is not None:
            os.close(self._lifeline)
            self._lifeline = None
        if self.popen is not None:
            try:
                self.popen.wait(timeout=END_WAIT_SECONDS)
            except subprocess.TimeoutExpired:
                self.log.error("process_did_not_exit", pid=self.popen.pid)
