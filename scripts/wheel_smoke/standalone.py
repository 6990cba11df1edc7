"""Step 4: `controlplane-manage standalone` from the wheel, driven over HTTP, stopped by SIGINT."""

from __future__ import annotations

import hashlib
import http.cookiejar
import json
import re
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from scripts.wheel_smoke.common import SmokeError, clean_env, wait_for

# Small enough to train in seconds on two cores (workers/programs/tinygpt/schema.py).
TINY_RUN = {"steps": 30, "batch_size": 4, "seq_len": 32, "d_model": 32, "n_layers": 1, "n_heads": 2}
TINY_RUN |= {"eval_every": 15, "checkpoint_every": 15, "warmup_steps": 3}
TERMINAL = {"succeeded", "failed", "cancelled", "dead"}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class Client:
    """The API on 127.0.0.1 with a bearer token (the standard library only)."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.token = ""

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, bytes]:
        url = path if path.startswith("http") else self.base + path
        headers = {"Content-Type": "application/json"} if body is not None else {}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(url, data=data, headers=headers, method=method)  # noqa: S310 - 127.0.0.1
        try:
            with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 - as above
                return int(response.status), bytes(response.read())
        except urllib.error.HTTPError as error:
            return int(error.code), bytes(error.read())

    def json(self, method: str, path: str, body: Any = None, expect: int = 200) -> Any:
        status, content = self.request(method, path, body)
        if status != expect:
            raise SmokeError(f"{method} {path}: {status} (expected {expect}): {content[:500]!r}")
        return json.loads(content)

    def up(self) -> bool:
        try:
            return self.request("GET", "/healthz")[0] == 200
        except OSError:
            return False


def sign_in(client: Client, data: Path, process: subprocess.Popen[bytes]) -> str:
    """Waits for the server and the admin password it generates; takes a token; the password."""
    password_file = data / "admin-password.txt"
    wait_for(
        lambda: process.poll() is None and password_file.is_file() and password_file.read_text().strip(),
        90,
        "the admin password file",
    )
    wait_for(client.up, 60, "the server's /healthz")
    password = password_file.read_text().strip()
    body = {"username": "admin", "password": password}
    client.token = client.json("POST", "/api/v1/auth/token/", body)["token"]
    status, script = client.request("GET", "/static/vendor/uplot/uPlot.esm.js")
    if status != 200 or len(script) < 1000:
        raise SmokeError(f"GET /static/vendor/uplot/uPlot.esm.js: {status}; the static files are not served")
    return password


def train_and_download(client: Client) -> dict[str, Any]:
    """A tinygpt run to `succeeded`; its model downloaded and checked against the API's sha256."""
    started = time.monotonic()
    body = {"name": "wheel-smoke", "program": "tinygpt", "params": TINY_RUN}
    run_id = client.json("POST", "/api/v1/runs/", body, expect=201)["id"]

    def finished() -> dict[str, Any] | None:
        current: dict[str, Any] = client.json("GET", f"/api/v1/runs/{run_id}/")
        return current if current["status"] in TERMINAL else None

    final = wait_for(finished, 150, f"run {run_id} to finish")
    if final["status"] != "succeeded":
        raise SmokeError(f"run {run_id} ended {final['status']}: {json.dumps(final)[:2000]}")
    seconds = time.monotonic() - started
    artifacts = client.json("GET", f"/api/v1/runs/{run_id}/artifacts/")
    model = next((a for a in artifacts if a["kind"] == "model"), None)
    if model is None:
        raise SmokeError(f"run {run_id} has no model artifact: {artifacts}")
    status, content = client.request("GET", model["download_url"])
    digest = hashlib.sha256(content).hexdigest()
    if status != 200 or digest != model["sha256"] or len(content) != model["size"]:
        raise SmokeError(
            f"the model download ({status}, {len(content)} bytes, sha256 {digest}) is not the "
            f"artifact the API describes ({model['size']} bytes, sha256 {model['sha256']})"
        )
    return {"run": run_id, "seconds": round(seconds, 1), "model": model["name"], "bytes": len(content)}


def check_run_page(base: str, password: str, run_id: int) -> None:
    """The run's page, signed in through the form: templates render, the chart module is preloaded."""
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
    with opener.open(f"{base}/login/", timeout=30) as response:
        form = response.read().decode()
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', form)
    if token is None:
        raise SmokeError(f"the sign-in page has no CSRF token; the templates did not render:\n{form[:1000]}")
    fields = {"username": "admin", "password": password, "csrfmiddlewaretoken": token.group(1)}
    data, referer = urllib.parse.urlencode(fields).encode(), {"Referer": f"{base}/login/"}
    signing_in = urllib.request.Request(f"{base}/login/", data=data, headers=referer)  # noqa: S310 - 127.0.0.1
    with opener.open(signing_in, timeout=30) as response:
        if urllib.parse.urlparse(response.url).path == "/login/":
            raise SmokeError("signing in through the form failed")
    with opener.open(f"{base}/runs/{run_id}/", timeout=30) as response:
        page = response.read().decode()
    for needed in (
        "vendor/uplot/uPlot.min.css",
        'rel="modulepreload" href="/static/vendor/uplot/uPlot.esm.js"',
    ):
        if needed not in page:
            raise SmokeError(f"the run's page lacks {needed!r}")


def stop(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGINT)
    try:
        code = process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise SmokeError("standalone did not stop within 30 s of SIGINT") from None
    if code != 0:
        raise SmokeError(f"standalone exited {code} on SIGINT")


def standalone(manage: Path, cwd: Path, data: Path, static_root: Path, log: Path) -> dict[str, Any]:
    port = free_port()
    env = clean_env(CONTROLPLANE_DATA_DIR=str(data), STATIC_ROOT=str(static_root))
    with log.open("wb") as output:
        command = [str(manage), "standalone", "--port", str(port)]
        process = subprocess.Popen(command, cwd=cwd, env=env, stdout=output, stderr=subprocess.STDOUT)
    try:
        client = Client(f"http://127.0.0.1:{port}")
        password = sign_in(client, data, process)
        result = train_and_download(client)
        check_run_page(client.base, password, result["run"])
    except BaseException:
        process.kill()
        process.wait()
        raise
    stop(process)
    return result
