"""A real S3 API server for the tests (moto in server mode, a subprocess on a free port) and a
fault proxy in front of it that can play a bucket that is down, or answer 500 mid-upload."""

from __future__ import annotations

import http.client
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import boto3

# Not from tests.conftest: this module also runs as its own process (`main`), without Django.


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(predicate: Callable[[], Any], timeout: float, message: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(0.2)


REGION = "us-east-1"


class MotoServer:
    def __init__(self, log: Path) -> None:
        self.port = free_port()
        self.log = log
        self.process = subprocess.Popen(
            [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=log.open("ab"),
            stderr=subprocess.STDOUT,
        )
        wait_for(self._up, 30, message="moto server")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _up(self) -> bool:
        try:
            connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=1)
            connection.request("GET", "/moto-api/")
            return connection.getresponse().status < 500
        except OSError:
            return False

    def client(self, endpoint: str | None = None) -> Any:
        return boto3.session.Session().client(
            "s3",
            endpoint_url=endpoint or self.url,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            region_name=REGION,
        )

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def aws_env(endpoint: str) -> dict[str, str]:
    """The standard AWS variables boto3 reads, pointing at the test server."""
    return {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": REGION,
    }


class FaultProxy:
    """HTTP proxy to the S3 server. `down = True`: every request fails as a dead service would
    (connection closed without an answer); `fail_parts = n`: the next n UploadPart requests get a
    500 InternalError after their body was read (a fault mid-upload); `fail_puts = n`: the same
    for the next n PUTs of any kind; `delay_puts = s`: every PUT with a body is forwarded `s`
    seconds late (a slow link)."""

    def __init__(self, upstream_port: int, port: int | None = None) -> None:
        self.upstream_port = upstream_port
        self.down = False
        self.fail_parts = 0
        self.failed_parts = 0
        self.fail_puts = 0  # any PUT with a body: a whole object or a part
        self.delay_puts = 0.0
        self.failed_puts = 0
        self.refused = 0
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _handle(self) -> None:
                body = self._body()
                if proxy.down:
                    proxy.refused += 1
                    self.close_connection = True
                    return
                is_part = "partNumber=" in self.path
                if self.command == "PUT" and body and proxy.delay_puts:
                    time.sleep(proxy.delay_puts)
                if self.command == "PUT" and body and proxy._take_fault(is_part):
                    error = b"<Error><Code>InternalError</Code><Message>injected</Message></Error>"
                    self.send_response(500)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(error)))
                    self.end_headers()
                    self.wfile.write(error)
                    return
                self._forward(body)

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    raise RuntimeError("chunked request bodies are not expected from boto3 here")
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _forward(self, body: bytes) -> None:
                upstream = http.client.HTTPConnection("127.0.0.1", proxy.upstream_port, timeout=60)
                headers = {k: v for k, v in self.headers.items() if k.lower() != "connection"}
                upstream.request(self.command, self.path, body=body, headers=headers)
                answer = upstream.getresponse()
                data = answer.read()
                self.send_response(answer.status)
                for key, value in answer.getheaders():
                    if key.lower() not in {"connection", "transfer-encoding", "content-length"}:
                        self.send_header(key, value)
                # A HEAD's answer names the object's length, not its own (empty) body's.
                length = answer.getheader("Content-Length") if self.command == "HEAD" else None
                self.send_header("Content-Length", length or str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                upstream.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", port or free_port()), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self._lock = threading.Lock()
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _take_fault(self, is_part: bool) -> bool:
        with self._lock:
            if self.fail_puts > 0:
                self.fail_puts -= 1
                self.failed_puts += 1
                return True
            if not is_part or self.fail_parts <= 0:
                return False
            self.fail_parts -= 1
            self.failed_parts += 1
            return True

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def main() -> None:
    """`python -m tests.storage.s3server PORT UPSTREAM_PORT CONTROL_FILE`: a FaultProxy as its own
    process (for the chaos stack's workers): it reads `down` / `fail_parts=N` from CONTROL_FILE."""
    port, upstream, control = int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
    proxy = FaultProxy(upstream, port)
    seen = ""
    while True:
        text = control.read_text() if control.exists() else ""
        if text != seen:
            seen = text
            proxy.down = "down" in text
            for word in text.split():
                if word.startswith("fail_parts="):
                    proxy.fail_parts = int(word.split("=", 1)[1])
                if word.startswith("fail_puts="):
                    proxy.fail_puts = int(word.split("=", 1)[1])
        (control.parent / (control.name + ".state")).write_text(
            f"refused={proxy.refused} failed_puts={proxy.failed_puts} failed_parts={proxy.failed_parts}"
        )
        time.sleep(0.1)


if __name__ == "__main__":
    main()
