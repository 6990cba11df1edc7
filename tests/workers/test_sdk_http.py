"""workers/sdk_http.py: how the SDK's HTTP transport batches, numbers and retries, against a tiny
stdlib HTTP server that records what arrives (no Django: the server's side is tests/api/ and
tests/e2e/test_tracking.py)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from workers.sdk import Reporter
from workers.sdk_http import event_rows


class Recorder(ThreadingHTTPServer):
    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.batches: list[tuple[int, list[dict[str, Any]]]] = []
        self.fail_next = 0  # answer this many requests 503 before accepting again
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class Handler(BaseHTTPRequestHandler):
    server: Recorder

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if not self.path.startswith("/api/v1/runs/7/report/?batch="):
            self._answer(404, {"detail": "No such run."})
            return
        number = int(self.path.split("batch=")[1])
        with self.server.lock:
            if self.server.fail_next:
                self.server.fail_next -= 1
                self._answer(503, {"detail": "down"})
                return
            self.server.batches.append((number, [json.loads(line) for line in body.splitlines()]))
        self._answer(200, {"batch": number, "duplicate": False})

    def _answer(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    server = Recorder()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()


def test_a_line_after_an_idle_wait_is_sent_within_the_flush_interval(recorder: Recorder) -> None:
    run = Reporter.over_http(recorder.url, 7, "cp_x_y", flush_seconds=0.1, heartbeat_seconds=60)
    time.sleep(0.5)  # idle: the sender waits for a heartbeat
    started = time.monotonic()
    run.metric(1, {"loss": 0.5})
    while not recorder.batches and time.monotonic() - started < 5:
        time.sleep(0.02)
    # one step's values, in the columnar form consecutive steps share
    assert recorder.batches == [(1, [{"type": "metric", "steps": [1], "values": {"loss": [0.5]}}])]
    assert time.monotonic() - started < 1.0
    run.finish()


def test_batches_are_numbered_bounded_by_rows_and_retried_unchanged(recorder: Recorder) -> None:
    recorder.fail_next = 2
    run = Reporter.over_http(recorder.url, 7, "cp_x_y", flush_seconds=60, max_batch_rows=1_000)
    for step in range(500):
        run.log({"a": 1.0, "b": 2.0, "c": 3.0}, step=step)  # 1,500 points: two batches by rows
    run.print("done")
    run.finish("failed", message="diverged")
    numbers = [number for number, _ in recorder.batches]
    assert numbers == list(range(1, len(numbers) + 1)) and len(numbers) >= 2
    events = [event for _, batch in recorder.batches for event in batch]
    metrics = [e for e in events if e["type"] == "metric"]
    assert [step for e in metrics for step in e["steps"]] == list(range(500))
    assert [v for e in metrics for v in e["values"]["b"]] == [2.0] * 500
    assert events[-2:] == [
        {"type": "log", "stream": "stdout", "line": "done"},
        {"type": "status", "status": "failed", "message": "diverged"},
    ]
    assert all(sum(event_rows(e) for e in batch) <= 1_000 for _, batch in recorder.batches)
    assert not run.enabled  # closed by finish


def test_a_refusal_turns_reporting_off_without_raising(recorder: Recorder, capsys: Any) -> None:
    run = Reporter.over_http(recorder.url + "/nowhere", 7, "cp_x_y", flush_seconds=0.05)
    run.metric(1, {"loss": 1.0})
    run.flush(5)
    assert not run.enabled
    run.metric(2, {"loss": 1.0})  # ignored, no error
    run.finish()
    assert "reporting disabled: HTTP 404: No such run." in capsys.readouterr().err
    assert recorder.batches == []
