"""Dataset staging over real HTTP (a server on loopback), with retries and the circuit breaker."""

from __future__ import annotations

import hashlib
import http.server
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.test import override_settings

from ops.breakers import BreakerOpen, breaker_states
from ops.models import CircuitBreaker
from workers.datasets import DatasetError, SourceUnavailable, stage_dataset

pytestmark = pytest.mark.django_db
CORPUS = ("the quick brown fox jumps over the lazy dog. " * 200).encode()


class Source(http.server.BaseHTTPRequestHandler):
    """Serves /good, /empty, /binary, /missing, and /flaky (500 until `heal_after` requests)."""

    requests: list[str] = []
    heal_after = 0

    def do_GET(self) -> None:
        Source.requests.append(self.path)
        if self.path == "/flaky" and len([p for p in Source.requests if p == "/flaky"]) <= Source.heal_after:
            self.send_error(503)
            return
        body = {"/good": CORPUS, "/flaky": CORPUS, "/empty": b"", "/binary": b"\xff\xfe\x00\x81" * 10}.get(
            self.path
        )
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def source() -> Iterator[str]:
    Source.requests = []
    Source.heal_after = 0
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Source)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


FAST = {"CONTROLPLANE_DATASET_RETRIES": 3}


def test_a_good_corpus_is_staged_with_its_sha256(source: str, tmp_path: Path) -> None:
    staged = stage_dataset(f"{source}/good", "", tmp_path / "corpus.txt")
    assert staged.path.read_bytes() == CORPUS
    assert staged.sha256 == hashlib.sha256(CORPUS).hexdigest()
    assert staged.size == len(CORPUS)
    assert not list(tmp_path.glob("*.partial"))


@pytest.mark.parametrize(
    ("path", "expected_sha", "message"),
    [
        ("/empty", "", "empty"),
        ("/binary", "", "not UTF-8"),
        ("/missing", "", "HTTP 404"),
        ("/good", "0" * 64, "does not match"),
    ],
)
def test_bad_datasets_fail_as_data_errors_without_retrying(
    source: str, tmp_path: Path, path: str, expected_sha: str, message: str
) -> None:
    with pytest.raises(DatasetError, match=message):
        stage_dataset(f"{source}{path}", expected_sha, tmp_path / "corpus.txt")
    assert Source.requests == [path]
    assert not (tmp_path / "corpus.txt").exists()


def test_a_dataset_over_the_size_bound_is_refused(source: str, tmp_path: Path) -> None:
    with (
        override_settings(CONTROLPLANE={**_config(), "DATASET_MAX_BYTES": 100}),
        pytest.raises(DatasetError, match="bound"),
    ):
        stage_dataset(f"{source}/good", "", tmp_path / "corpus.txt")


def test_transient_source_errors_are_retried_with_backoff(source: str, tmp_path: Path) -> None:
    Source.heal_after = 2
    started = time.monotonic()
    staged = stage_dataset(f"{source}/flaky", "", tmp_path / "corpus.txt")
    assert staged.path.read_bytes() == CORPUS
    assert Source.requests == ["/flaky"] * 3
    assert time.monotonic() - started >= 0.25 + 0.5  # at least the minimum jittered delays


def test_the_breaker_opens_after_repeated_failures_and_refuses_fast(source: str, tmp_path: Path) -> None:
    Source.heal_after = 1000
    config = {**_config(), "BREAKER_THRESHOLD": 3, "BREAKER_COOLDOWN_SECONDS": 60, "DATASET_RETRIES": 3}
    with override_settings(CONTROLPLANE=config):
        with pytest.raises(SourceUnavailable, match="after 3 tries"):
            stage_dataset(f"{source}/flaky", "", tmp_path / "corpus.txt")
        assert ("dataset:-:127.0.0.1", "open", 3) in breaker_states()
        calls = len(Source.requests)
        started = time.monotonic()
        with pytest.raises(SourceUnavailable, match="breaker"):
            stage_dataset(f"{source}/flaky", "", tmp_path / "corpus.txt")
        assert time.monotonic() - started < 0.5
        assert len(Source.requests) == calls  # refused without touching the source


def test_after_the_cooldown_one_trial_call_closes_the_breaker(source: str, tmp_path: Path) -> None:
    CircuitBreaker.objects.create(
        name="dataset:-:127.0.0.1", state="open", consecutive_failures=5, opened_until="2000-01-01T00:00:00Z"
    )
    staged = stage_dataset(f"{source}/good", "", tmp_path / "corpus.txt")
    assert staged.size == len(CORPUS)
    assert ("dataset:-:127.0.0.1", "closed", 0) in breaker_states()


def test_breaker_open_carries_the_time_to_the_next_try() -> None:
    error = BreakerOpen("x", 12.4)
    assert "next try in 12 s" in str(error)


def _config() -> dict[str, float | int]:
    from django.conf import settings

    return dict(settings.CONTROLPLANE)


def test_breaker_state_is_on_metrics_and_readyz(client: object) -> None:
    from django.test import Client

    CircuitBreaker.objects.create(
        name="dataset:example.org", state="open", consecutive_failures=5, opened_until="2999-01-01T00:00:00Z"
    )
    browser = Client()
    metrics = browser.get("/metrics").content.decode()
    assert 'controlplane_circuit_breaker_state{breaker="dataset:example.org"} 2.0' in metrics
    assert 'controlplane_runs{status="queued"}' in metrics
    ready = browser.get("/readyz").json()
    assert ready["breakers"]["dataset:example.org"] == {"state": "open", "failures": 5}
