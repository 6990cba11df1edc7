"""Following a run's log over `/ws/runs/{id}/?after=N`, resuming after a dropped connection.

The server sends a status frame, the backlog after N, then live frames. The client keeps the last
seq it yielded, drops anything at or below it, and reconnects with `after=<that seq>` when the
socket breaks: no gap, no duplicate. When the run reaches a final state the socket is closed and
the remaining lines are read over REST, so the last lines are never lost to a race with the
final status frame.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI
from websockets.sync.client import ClientConnection, connect

from controlplane_client.errors import ClientError
from controlplane_client.types import TERMINAL, Event

if TYPE_CHECKING:
    from controlplane_client.client import Client

REFUSALS = {
    4401: "not signed in or the token is no longer valid; run `cpctl login`",
    4403: "not allowed to read this run",
    4404: "no such run",
}
IDLE_SECONDS = 15.0
MAX_FAILURES = 20


class _Dropped(Exception):
    """The socket broke (or was closed on purpose for testing): reconnect after the last seq."""


class _Follower:
    def __init__(self, client: Client, run_id: int, after: int, drop_every: int | None) -> None:
        self.client = client
        self.run_id = run_id
        self.last_seq = after
        self.status = ""
        self.drop_every = drop_every
        self.finished = False

    def ws_url(self) -> str:
        base = self.client.url.replace("https://", "wss://", 1).replace("http://", "ws://", 1)
        return f"{base}/ws/runs/{self.run_id}/?after={self.last_seq}"

    def events(self) -> Iterator[Event]:
        failures = 0
        while not self.finished:
            seen = self.last_seq
            try:
                yield from self._one_connection()
            except _Dropped:
                failures = 0 if self.last_seq > seen else failures + 1
                if failures >= MAX_FAILURES:
                    raise ClientError(f"lost the log stream of run {self.run_id}; giving up") from None
                time.sleep(min(5.0, 0.2 * 2**failures) if failures else 0)
        yield from self._drain()

    def _open(self) -> ClientConnection:
        headers = {"Authorization": f"Bearer {self.client.token}"} if self.client.token else {}
        try:
            return connect(self.ws_url(), additional_headers=headers, open_timeout=10, max_size=2**24)
        except (OSError, InvalidHandshake, TimeoutError) as error:
            raise _Dropped(str(error)) from None
        except InvalidURI as error:
            raise ClientError(f"bad server URL: {error}") from None

    def _one_connection(self) -> Iterator[Event]:
        socket = self._open()
        frames = 0
        try:
            while True:
                try:
                    text = socket.recv(timeout=IDLE_SECONDS)
                except TimeoutError:
                    if self.client.run(self.run_id)["status"] in TERMINAL:
                        self.finished = True
                        return
                    continue
                frames += 1
                yield from self._frame(json.loads(text))
                if self.finished:
                    return
                if self.drop_every and frames >= self.drop_every:
                    raise _Dropped("closed on purpose (drop_every)")
        except ConnectionClosed as closed:
            code = closed.rcvd.code if closed.rcvd is not None else None
            if code in REFUSALS:
                raise ClientError(f"{REFUSALS[code]} (websocket close {code})") from None
            raise _Dropped(str(closed)) from None
        except OSError as error:
            raise _Dropped(str(error)) from None
        finally:
            socket.close()

    def _frame(self, frame: dict[str, Any]) -> Iterator[Event]:
        if frame.get("type") == "status":
            status = str(frame.get("status", ""))
            if status != self.status:
                self.status = status
                yield {"type": "status", "status": status}
            if status in TERMINAL:
                self.finished = True
        elif frame.get("type") == "log":
            for line in frame.get("lines", []):
                if line["seq"] > self.last_seq:
                    self.last_seq = line["seq"]
                    yield {"type": "log", "line": line}

    def _drain(self) -> Iterator[Event]:
        """The lines written before the final status that the socket had not delivered yet."""
        while True:
            page = self.client.logs(self.run_id, after=self.last_seq)
            for line in page["results"]:
                if line["seq"] > self.last_seq:
                    self.last_seq = line["seq"]
                    yield {"type": "log", "line": line}
            if not page["results"] or not page["has_more"]:
                return


def follow(client: Client, run_id: int, after: int = 0, *, drop_every: int | None = None) -> Iterator[Event]:
    client.run(run_id)  # a missing run or a bad token fails here, with the REST message
    return _Follower(client, run_id, after, drop_every).events()
