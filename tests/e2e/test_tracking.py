"""Tracking mode end to end: a script with only the client distribution installed (no Django, no
torch) reports into an external run through the SDK's HTTP transport, against the real stack;
the websocket carries its frames; a proxy that drops connections (and eats a response whose
batch the server applied) costs no point and no log line, and duplicates none.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import httpx
from websockets.sync.client import connect

from tests.conftest import Stack, free_port, wait_for
from tests.e2e.conftest import ClientVenv

STEPS = 400

SCRIPT = """
import os, sys, time
import controlplane_client
from controlplane_client.sdk import Reporter

mode = sys.argv[1]
if mode == "start":
    run = controlplane_client.start_run(name="from-anywhere", params={"lr": 0.1}, flush_seconds=0.1)
else:
    run = Reporter.from_env()  # CONTROLPLANE_URL, CONTROLPLANE_RUN_ID, CONTROLPLANE_RUN_TOKEN
    run._sender.flush_seconds = 0.1
print(run.run_id, flush=True)
pause = float(sys.argv[2]) if len(sys.argv) > 2 else 0.0
for step in range(1, %(steps)d + 1):
    run.log({"loss": 1.0 / step, "acc": step / %(steps)d}, step=step)
    if step %% 20 == 0:
        run.print(f"step {step}")
        time.sleep(pause)
run.progress(%(steps)d, %(steps)d)
with open("model.bin", "wb") as handle:
    handle.write(b"weights" * 5000)
run.artifact("model.bin", kind="model")
run.finish()
print("sent", run._sender.batch, flush=True)
""".replace("%(steps)d", str(STEPS)).replace("%%", "%")


def run_script(
    client_venv: ClientVenv, tmp_path: Path, env: dict[str, str], *args: str
) -> subprocess.Popen[str]:
    script = tmp_path / "track.py"
    script.write_text(SCRIPT)
    return subprocess.Popen(
        [str(client_venv.python), str(script), *args],
        cwd=tmp_path,
        env=client_venv.env(**env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finished(process: subprocess.Popen[str], timeout: float = 120) -> str:
    out, err = process.communicate(timeout=timeout)
    assert process.returncode == 0, err
    return out


def check_reported_run(api: httpx.Client, run_id: int) -> None:
    run = api.get(f"/api/v1/runs/{run_id}/").json()
    assert (run["status"], run["kind"], run["progress"]["step"]) == (
        "succeeded",
        "external",
        STEPS,
    )
    for key, value in (("loss", lambda s: 1.0 / s), ("acc", lambda s: s / STEPS)):
        points = api.get(f"/api/v1/runs/{run_id}/metrics/", params={"key": key}).json()["points"]
        assert [p["step"] for p in points] == list(range(1, STEPS + 1))
        assert all(abs(p["value"] - value(p["step"])) < 1e-9 for p in points)
    logs = api.get(f"/api/v1/runs/{run_id}/logs/", params={"after": 0}).json()["results"]
    assert [line["seq"] for line in logs] == list(range(1, len(logs) + 1))
    assert [line["line"] for line in logs if line["stream"] == "stdout"] == [
        f"step {s}" for s in range(20, STEPS + 1, 20)
    ]
    [artifact] = api.get(f"/api/v1/runs/{run_id}/artifacts/").json()
    body = api.get(artifact["download_url"]).content
    assert artifact["name"] == "model.bin" and hashlib.sha256(body).hexdigest() == artifact["sha256"]
    assert body == b"weights" * 5000


def test_a_script_with_only_the_client_starts_reports_and_finishes_a_run(
    stack: Stack, live_owner: Any, live_api: httpx.Client, client_venv: ClientVenv, tmp_path: Path
) -> None:
    env = {"CONTROLPLANE_URL": stack.base_url, "CONTROLPLANE_TOKEN": live_owner[1]}
    out = finished(run_script(client_venv, tmp_path, env, "start"))
    run_id = int(out.split()[0])
    check_reported_run(live_api, run_id)
    audit = live_api.get("/api/v1/audit/", params={"target_id": run_id})
    if audit.status_code == 200:  # operators may not read the audit: checked in tests/api
        assert "run.launch" in audit.text


def test_websocket_frames_arrive_from_an_external_run(
    stack: Stack, live_owner: Any, live_api: httpx.Client, client_venv: ClientVenv, tmp_path: Path
) -> None:
    started = live_api.post("/api/v1/runs/", json={"name": "watched", "program": None}).json()
    frames: list[dict[str, Any]] = []

    def listen() -> None:
        with connect(
            stack.ws_url(f"/ws/runs/{started['id']}/?after=0"),
            additional_headers={"Authorization": f"Bearer {live_owner[1]}"},
            open_timeout=10,
        ) as ws:
            while True:
                frame = json.loads(ws.recv(timeout=60))
                frames.append(frame)
                if frame["type"] == "status" and frame["status"] == "succeeded":
                    return

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    time.sleep(1.0)
    env = {
        "CONTROLPLANE_URL": stack.base_url,
        "CONTROLPLANE_RUN_ID": str(started["id"]),
        "CONTROLPLANE_RUN_TOKEN": started["run_token"],
    }
    finished(run_script(client_venv, tmp_path, env, "env", "0.02"))
    listener.join(timeout=60)
    kinds = {frame["type"] for frame in frames}
    assert {"log", "metric", "status"} <= kinds, kinds
    seqs = [line["seq"] for frame in frames if frame["type"] == "log" for line in frame["lines"]]
    assert seqs == list(range(1, len(seqs) + 1)) and len(seqs) == STEPS // 20
    check_reported_run(live_api, started["id"])


class DroppingProxy:
    """A TCP proxy that can refuse connections for a while, and eat the next response whole (the
    server applied the batch; the client never hears so)."""

    def __init__(self, upstream_port: int) -> None:
        self.port = free_port()
        self.upstream = upstream_port
        self.down = False
        self.eat_next_response = False
        self.eaten = 0
        self.refused = 0
        self.server = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            client, _ = self.server.accept()
            if self.down:
                self.refused += 1
                client.close()
                continue
            upstream = socket.create_connection(("127.0.0.1", self.upstream))
            threading.Thread(target=self._pump, args=(client, upstream, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, True), daemon=True).start()

    def _pump(self, source: socket.socket, target: socket.socket, response: bool) -> None:
        try:
            while data := source.recv(65536):
                if response and self.eat_next_response:
                    self.eat_next_response = False
                    self.eaten += 1
                    break
                if self.down:
                    break
                target.sendall(data)
        except OSError:
            pass
        for end in (source, target):
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)
            end.close()


def test_a_dropped_connection_buffers_and_retries_without_duplicates(
    stack: Stack, live_owner: Any, live_api: httpx.Client, client_venv: ClientVenv, tmp_path: Path
) -> None:
    proxy = DroppingProxy(int(stack.base_url.rsplit(":", 1)[1]))
    started = live_api.post("/api/v1/runs/", json={"name": "flaky", "program": None}).json()
    env = {
        "CONTROLPLANE_URL": f"http://127.0.0.1:{proxy.port}",
        "CONTROLPLANE_RUN_ID": str(started["id"]),
        "CONTROLPLANE_RUN_TOKEN": started["run_token"],
    }
    process = run_script(client_venv, tmp_path, env, "env", "1.0")  # ~20 s of reporting
    wait_for(
        lambda: live_api.get(f"/api/v1/runs/{started['id']}/logs/").json()["results"], 30, message="a line"
    )
    proxy.eat_next_response = True  # a batch applied, its response lost: sent again, applied once
    wait_for(lambda: proxy.eaten == 1, 30, message="an eaten response")
    proxy.down = True  # the server unreachable: lines wait in the SDK's buffer, sends are retried
    wait_for(lambda: proxy.refused >= 2, 30, message="connections refused while down")
    proxy.down = False
    assert process.poll() is None, "the script ended before the outage did: nothing was buffered"
    out = finished(process)
    assert int(out.split()[-1]) >= 2  # batches sent
    check_reported_run(live_api, started["id"])
