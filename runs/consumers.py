"""The run websocket: the log backlog after N from the database, then live frames.

Order of operations guarantees no gap and no duplicate: the consumer joins the run's group
before it reads the backlog, so any batch committed later arrives as a live frame; lines already
sent are dropped by seq, and a live frame that starts past the next expected seq makes the
consumer fill the gap from the database (a frame lost in transport costs nothing).

Refusals are close codes, at the handshake and later (docs/security.md): 4401 the credentials are
missing or no longer valid, 4403 not (or no longer) allowed, 4404 no such run. The handshake is
accepted before it is closed, because a close before accept reaches the client as a bare HTTP 403
it cannot tell apart. While open, the consumer re-reads its caller every `RECHECK_SECONDS` (the
token or session row by key), so a revoked token or deactivated user stops streaming within that
time, as REST refuses it at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any
from urllib.parse import parse_qs

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from django.db import DatabaseError
from django.http import Http404

from accounts.policy import Action, decide, principal_for, record_denial
from accounts.websocket import current_principal
from ops import metrics
from runs import events, selectors
from runs.lifecycle import status_frame
from runs.models import LogLine

BACKLOG_PAGE = 2_000
CLOSE_UNAUTHENTICATED = 4401
CLOSE_FORBIDDEN = 4403
CLOSE_NOT_FOUND = 4404
RECHECK_SECONDS = 2.0


def _line_frame(line: LogLine) -> events.LogLineFrame:
    return {"seq": line.seq, "ts": line.ts.isoformat(), "stream": line.stream, "line": line.line}


class RunConsumer(AsyncWebsocketConsumer):  # type: ignore[misc]  # channels ships no types
    run_id: int
    last_seq: int

    async def connect(self) -> None:
        if self.scope.get("auth") == "refused_origin":
            await self._refuse(CLOSE_FORBIDDEN)  # a cookie from a page that is not ours
            return
        principal = await database_sync_to_async(principal_for)(
            self.scope.get("user"), self.scope.get("token")
        )
        decision = decide(principal, Action.RUN_READ)
        if not decision.allowed:
            if decision.status == 403:
                await database_sync_to_async(record_denial)(principal, Action.RUN_READ, decision)
            await self._refuse(CLOSE_UNAUTHENTICATED if decision.status == 401 else CLOSE_FORBIDDEN)
            return
        self.run_id = int(self.scope["url_route"]["kwargs"]["run_id"])
        query = parse_qs(self.scope.get("query_string", b"").decode("latin-1"))
        try:
            self.last_seq = max(0, int(query.get("after", ["0"])[0]))
        except ValueError:
            self.last_seq = 0
        try:
            run = await database_sync_to_async(selectors.access_run)(principal, self.run_id)
        except Http404:
            await self._refuse(CLOSE_NOT_FOUND)
            return
        await self.channel_layer.group_add(events.run_group(self.run_id), self.channel_name)
        # Read the status again now that the group is joined: a run that finished between the
        # first read and the join broadcast its final status to a group we were not in yet.
        run = await database_sync_to_async(selectors.access_run)(principal, self.run_id)
        await self.accept()
        metrics.websocket_opened(self)
        self._watch = asyncio.create_task(self._watch_caller())
        await self._send(status_frame(run))
        await self._send_from_database()

    async def _refuse(self, code: int) -> None:
        await self.accept()
        await self.close(code=code)

    async def _watch_caller(self) -> None:
        while True:
            await asyncio.sleep(RECHECK_SECONDS)
            try:
                code = await database_sync_to_async(self._refusal_now)()
            except DatabaseError:
                continue  # unknown while the database is away: frames keep flowing, asked again
            if code is not None:
                await self.close(code=code)
                return

    def _refusal_now(self) -> int | None:
        """The close code for a caller that may no longer read this run, else None."""
        principal = current_principal(self.scope)
        decision = decide(principal, Action.RUN_READ)
        if not decision.allowed:
            record_denial(principal, Action.RUN_READ, decision)  # 403s only
            return CLOSE_UNAUTHENTICATED if decision.status == 401 else CLOSE_FORBIDDEN
        if not selectors.visible_runs(principal).filter(pk=self.run_id).exists():
            return CLOSE_FORBIDDEN  # seen at the handshake, not any more
        return None

    async def disconnect(self, code: int) -> None:
        metrics.websocket_closed(self)
        watch = getattr(self, "_watch", None)
        if watch is not None:
            watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watch
        if hasattr(self, "run_id"):
            await self.channel_layer.group_discard(events.run_group(self.run_id), self.channel_name)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        # The stream is one-way; a client's "ping" gets a "pong" so it can measure liveness.
        if text_data == "ping":
            await self.send(text_data="pong")

    async def run_frames(self, message: dict[str, Any]) -> None:
        """A batch's frames, already encoded (runs.events): sent as they are, unless a log frame
        holds lines this viewer has (after its backlog read) or starts past a gap."""
        for item in message["frames"]:
            first = item.get("first_seq")
            if first is None:
                await self.send(text_data=item["text"])
            elif first == self.last_seq + 1:
                self.last_seq = item["last_seq"]
                await self.send(text_data=item["text"])
            elif item["last_seq"] > self.last_seq:
                await self.run_frame({"frame": json.loads(item["text"])})

    async def run_frame(self, message: dict[str, Any]) -> None:
        """One frame as a dict ("run.frame": workers older than this web, and `run_frames`)."""
        frame = message["frame"]
        if frame.get("type") != "log":
            await self._send(frame)
            return
        lines = [line for line in frame["lines"] if line["seq"] > self.last_seq]
        if not lines:
            return
        if lines[0]["seq"] != self.last_seq + 1:
            await self._send_from_database()
            lines = [line for line in lines if line["seq"] > self.last_seq]
            if not lines:
                return
        self.last_seq = lines[-1]["seq"]
        await self._send({"type": "log", "lines": lines})

    async def _send_from_database(self) -> None:
        while True:
            page = await database_sync_to_async(selectors.log_lines_after)(
                self.run_id, self.last_seq, BACKLOG_PAGE
            )
            if not page:
                return
            self.last_seq = page[-1].seq
            await self._send({"type": "log", "lines": [_line_frame(line) for line in page]})
            if len(page) < BACKLOG_PAGE:
                return

    async def _send(self, frame: events.Frame | dict[str, Any]) -> None:
        await self.send(text_data=events.encode(frame))
