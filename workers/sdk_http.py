"""The reporting SDK's HTTP transport (tracking mode): events from a script anywhere.

Standard library only (``http.client``), like :mod:`workers.sdk`, so it runs wherever torch does;
the client distribution ships these two files as ``controlplane_client.sdk`` and
``controlplane_client.sdk_http`` (the same files: symbolic links in ``client/``).

The reporter hands each serialised event line (and each metric step, which the sender folds with
the steps before it into one columnar line) to :class:`HttpSender`, which never blocks on the
network: a background thread sends the lines in batches to
``POST <url>/api/v1/runs/<id>/report/?batch=N`` when ``max_batch_bytes`` are waiting, or
``flush_seconds`` after the oldest waiting line, or at ``close()``. A batch that fails (no
connection, a 5xx, a timeout) is sent again, unchanged and with the same number, after a jittered
exponential backoff (up to ``MAX_BACKOFF_SECONDS``), until it is accepted: the server applies each
batch number once, so a batch whose response was lost is not written twice. Meanwhile new lines
wait in memory, up to ``max_buffer_bytes``; past that, the reporting call blocks until the
connection is back (the same backpressure as the supervisor's pipe: losing events silently would
be worse than pausing training). A refusal that retrying cannot fix (401, 403, 404, 409 when the
run has ended, 413) disables the reporter with one line on stderr. When idle, the thread sends an
empty batch every ``heartbeat_seconds`` so a script busy computing is not taken for dead.
"""

from __future__ import annotations

import atexit
import hashlib
import http.client
import json
import os
import random
import sys
import threading
import time
from typing import Any
from urllib.parse import quote, urlsplit

__all__ = ["VALUES_PER_LINE", "HttpSender", "ReportRefused", "event_rows"]

MAX_BACKOFF_SECONDS = 10.0
# Values per multi-point line: ~30 bytes each, so a line stays near 250 KB, far below the 1 MiB cap.
VALUES_PER_LINE = 8_192


def event_rows(event: dict[str, Any]) -> int:
    """The rows (points, or one line) an event adds to a batch: the sender's row bound."""
    values = event.get("values")
    if "steps" in event:
        return len(event["steps"]) * len(values or ())
    if isinstance(event.get("points"), list):
        return sum(len(point.get("values") or ()) for point in event["points"])
    return len(values) if isinstance(values, dict) else 1


class ReportRefused(Exception):
    """The server refused a batch for good (not a transient failure)."""


class HttpSender:
    """Batches event lines and sends them, in order, each batch exactly once."""

    def __init__(
        self,
        url: str,
        run_id: int,
        token: str,
        *,
        max_batch_bytes: int = 4 * 1024 * 1024,
        max_batch_rows: int = 200_000,
        flush_seconds: float = 0.5,
        max_buffer_bytes: int = 256 * 1024 * 1024,
        heartbeat_seconds: float = 60.0,
        timeout: float = 60.0,
    ) -> None:
        parts = urlsplit(url.rstrip("/"))
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"CONTROLPLANE_URL must be an http(s) URL, got {url!r}")
        self.url, self.run_id = url.rstrip("/"), int(run_id)
        self._parts, self._token, self._timeout = parts, token, timeout
        self._path = f"{parts.path}/api/v1/runs/{self.run_id}/report/"
        self.max_batch_bytes, self.flush_seconds = max_batch_bytes, flush_seconds
        # Rows (log lines + metric points) too: a compact columnar line holds a point in a few bytes,
        # and the server bounds a batch's rows (CONTROLPLANE_REPORT_MAX_ROWS, 500,000 by default).
        self.max_batch_rows = max_batch_rows
        self.max_buffer_bytes, self.heartbeat_seconds = max_buffer_bytes, heartbeat_seconds
        self._lines: list[tuple[bytes, int]] = []  # a serialised line and the rows it holds
        self._bytes = 0
        self._rows = 0
        # Metric steps not yet serialised: consecutive `put_metric` calls with the same keys become
        # one columnar line (what `Reporter.metrics` writes), a few times cheaper to send and parse.
        self._steps: list[int] = []
        self._keys: tuple[str, ...] = ()
        self._columns: list[list[float | None]] = []
        self._oldest = 0.0  # monotonic time the oldest waiting line arrived
        self._cond = threading.Condition()
        self._closing = False
        self._sending = False
        self.batch = 0  # the number of the last batch sent (and accepted)
        self.failures = 0  # failed tries since the last success (a lost connection)
        self.last_response: dict[str, Any] = {}
        self.refused: str | None = None
        self._connection: http.client.HTTPConnection | None = None
        self._thread = threading.Thread(target=self._run, name="controlplane-report", daemon=True)
        self._thread.start()
        atexit.register(self.close)

    @property
    def enabled(self) -> bool:
        """False once refused for good, or closed."""
        return self.refused is None and not self._closing

    def put_metric(self, step: int, values: dict[str, float | None]) -> None:
        """Queue one step's values (finite or None) into the pending columnar line."""
        with self._cond:
            while self._bytes > self.max_buffer_bytes and self.refused is None and self._lines:
                self._cond.wait(0.5)
            if self.refused is not None or self._closing:
                return
            keys = tuple(values)
            limit = min(VALUES_PER_LINE, self.max_batch_rows)  # a line must fit in a batch
            if keys != self._keys or (len(self._steps) + 1) * len(keys) > limit:
                self._seal()
                self._keys, self._columns = keys, [[] for _ in keys]
            if not self._lines and not self._steps:
                self._oldest = time.monotonic()
                self._cond.notify_all()  # wakes a sender idling for a heartbeat
            self._steps.append(step)
            for column, value in zip(self._columns, values.values(), strict=True):
                column.append(value)

    def _seal(self) -> None:
        """The pending steps as one columnar event line at the end of the queue (lock held)."""
        if not self._steps:
            return
        event = {
            "type": "metric",
            "steps": self._steps,
            "values": dict(zip(self._keys, self._columns, strict=True)),
        }
        line = (json.dumps(event, separators=(",", ":"), allow_nan=False) + "\n").encode("utf-8")
        rows = len(self._steps) * len(self._keys)
        self._steps, self._columns = [], [[] for _ in self._keys]
        self._lines.append((line, rows))
        self._bytes += len(line)
        self._rows += rows

    def put(self, line: bytes, rows: int = 1) -> None:
        """Queue one serialised event line holding `rows` log lines or points; blocks only while
        the buffer is full."""
        with self._cond:
            while self._bytes + len(line) > self.max_buffer_bytes and self.refused is None and self._lines:
                self._cond.wait(0.5)
            if self.refused is not None or self._closing:
                return
            self._seal()  # steps logged before this line go before it
            first = not self._lines
            if first:
                self._oldest = time.monotonic()
            self._lines.append((line, rows))
            self._bytes += len(line)
            self._rows += rows
            # The first line wakes a sender idling for a heartbeat (it then waits flush_seconds).
            if first or self._bytes >= self.max_batch_bytes or self._rows >= self.max_batch_rows:
                self._cond.notify_all()

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every queued line is sent; False when `timeout` passed first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            self._oldest = 0.0  # due now
            self._cond.notify_all()
            while (self._lines or self._steps or self._sending) and self.refused is None:
                self._oldest = 0.0  # what is left is due now too
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._cond.wait(0.1 if left is None else min(left, 0.1))
        return self.refused is None

    def close(self, timeout: float = 60.0) -> None:
        """Send what is queued (for at most `timeout` seconds), then stop the thread."""
        with self._cond:
            if self._closing:
                return
        self.flush(timeout)
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join(timeout=5)
        if self._lines and self.refused is None:
            sys.stderr.write(f"controlplane sdk: {len(self._lines)} events not sent (no connection)\n")
        if self._connection is not None:
            self._connection.close()

    def upload(self, path: str, *, name: str | None = None, kind: str = "file") -> dict[str, Any]:
        """PUT a file as an artifact of the run, with its sha256 (the server checks it); waits
        for the events queued before it first. Retried like a batch; the artifact's JSON."""
        self.flush()
        digest, size = hashlib.sha256(), 0
        with open(path, "rb") as handle:
            while chunk := handle.read(1024 * 1024):
                digest.update(chunk)
                size += len(chunk)
        target = (
            f"{self._parts.path}/api/v1/runs/{self.run_id}/artifacts/{quote(name or os.path.basename(path))}"
        )
        headers = {
            "Authorization": f"Bearer {self._token}",
            "Content-Type": "application/octet-stream",
            "Content-Length": str(size),
            "X-Content-SHA256": digest.hexdigest(),
        }
        delay = 0.2
        for _ in range(8):
            kind_ = (
                http.client.HTTPSConnection if self._parts.scheme == "https" else http.client.HTTPConnection
            )
            connection = kind_(self._parts.hostname or "", self._parts.port, timeout=self._timeout)
            try:
                with open(path, "rb") as handle:
                    connection.request("PUT", f"{target}?kind={quote(kind)}", body=handle, headers=headers)
                    response = connection.getresponse()
                    data = response.read()
                if response.status < 500:
                    payload = json.loads(data) if data else {}
                    if response.status != 201:
                        raise ReportRefused(f"upload of {path}: HTTP {response.status}: {payload}")
                    return dict(payload)
            except (OSError, http.client.HTTPException):
                pass
            finally:
                connection.close()
            time.sleep(delay * (0.5 + random.random()))  # noqa: S311 - jitter, not a secret
            delay = min(MAX_BACKOFF_SECONDS, delay * 2)
        raise ReportRefused(f"upload of {path} failed 8 times")

    # -- the sending thread ------------------------------------------------------

    def _take(self) -> list[bytes] | None:
        """The next batch's lines once one is due (None: closing with nothing left)."""
        with self._cond:
            while True:
                now = time.monotonic()
                if self._steps and (self._closing or now - self._oldest >= self.flush_seconds):
                    self._seal()
                due = self._lines and (
                    self._bytes >= self.max_batch_bytes
                    or self._rows >= self.max_batch_rows
                    or now - self._oldest >= self.flush_seconds
                )
                if due:
                    count, size, rows = 0, 0, 0
                    for line, weight in self._lines:  # whole lines within both bounds (at least one)
                        if count and (
                            size + len(line) > self.max_batch_bytes or rows + weight > self.max_batch_rows
                        ):
                            break
                        size += len(line)
                        rows += weight
                        count += 1
                    taken = [line for line, _ in self._lines[:count]]
                    del self._lines[:count]
                    self._bytes -= size
                    self._rows -= rows
                    self._oldest = now
                    self._sending = True
                    self._cond.notify_all()
                    return taken
                if self._closing:
                    return None
                pending = self._lines or self._steps
                wait = self.flush_seconds - (now - self._oldest) if pending else self.heartbeat_seconds
                if not self._cond.wait(max(wait, 0.01)) and not pending and not self._closing:
                    self._sending = True
                    return []  # idle for a heartbeat: an empty batch renews the run's lease

    def _run(self) -> None:
        while True:
            lines = self._take()
            if lines is None:
                return
            try:
                self._send(b"".join(lines))
            except ReportRefused as error:
                with self._cond:
                    self.refused = str(error)
                    self._lines.clear()
                    self._steps.clear()
                    self._bytes = self._rows = 0
                sys.stderr.write(f"controlplane sdk: reporting disabled: {error}\n")
                sys.stderr.flush()
            finally:
                with self._cond:
                    self._sending = False
                    self._cond.notify_all()
            if self.refused is not None:
                return

    def _send(self, body: bytes) -> None:
        """POST one batch until it is accepted; the same number on every try."""
        number = self.batch + 1
        delay = 0.2
        while True:
            try:
                status, payload = self._post(number, body)
            except (OSError, http.client.HTTPException) as error:
                status, payload = 0, {"detail": str(error)}
            if status == 200:
                self.batch, self.failures, self.last_response = number, 0, payload
                return
            if (
                status == 409
                and payload.get("code") == "batch_gap"
                and payload.get("expected_batch") == number + 1
            ):
                self.batch, self.failures = number, 0  # applied already: its response was lost
                return
            if status in (400, 401, 403, 404, 409, 413):
                raise ReportRefused(f"HTTP {status}: {str(payload.get('detail', payload))[:300]}")
            self.failures += 1
            if self._closing and self.failures > 3:
                raise ReportRefused(f"gave up at close after {self.failures} failures: {payload}")
            time.sleep(delay * (0.5 + random.random()))  # noqa: S311 - jitter, not a secret
            delay = min(MAX_BACKOFF_SECONDS, delay * 2)

    def _post(self, number: int, body: bytes) -> tuple[int, dict[str, Any]]:
        if self._connection is None:
            kind = (
                http.client.HTTPSConnection if self._parts.scheme == "https" else http.client.HTTPConnection
            )
            self._connection = kind(self._parts.hostname or "", self._parts.port, timeout=self._timeout)
        headers = {
            "Authorization": f"Bearer {self._token}",
            "Content-Type": "application/x-ndjson",
            "Content-Length": str(len(body)),
        }
        try:
            self._connection.request("POST", f"{self._path}?batch={number}", body=body, headers=headers)
            response = self._connection.getresponse()
            data = response.read()
        except BaseException:
            self._connection.close()
            self._connection = None
            raise
        try:
            payload = json.loads(data) if data else {}
        except ValueError:
            payload = {"detail": data[:200].decode("utf-8", "replace")}
        return response.status, payload if isinstance(payload, dict) else {"detail": payload}
