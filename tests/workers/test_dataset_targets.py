"""Dataset fetches reach only allowed addresses, over a connection pinned to the checked one.

Nothing here sends a packet anywhere but 127.0.0.1: every refusal must happen before a
connection is opened, which a listening socket that records accepts (and a guard on
`socket.create_connection`) proves.
"""

from __future__ import annotations

import http.server
import ipaddress
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.test import override_settings

from ops.breakers import breaker_states
from workers.datasets import DatasetError, SourceUnavailable, breaker_name, stage_dataset

pytestmark = pytest.mark.django_db
CORPUS = b"a small corpus of plain text.\n" * 50
LOOPBACK = (ipaddress.ip_network("127.0.0.1/32"),)


class Recorder:
    """A loopback listener that counts the connections it accepts and answers nothing useful."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.accepted = 0
        self.server.settimeout(0.2)
        self.running = True
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while self.running:
            try:
                connection, _ = self.server.accept()
            except TimeoutError:
                continue
            self.accepted += 1
            connection.close()

    def close(self) -> None:
        self.running = False
        self.thread.join()
        self.server.close()


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    listener = Recorder()
    yield listener
    listener.close()


@pytest.fixture
def connections(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """Every address the stager connects to; anything but loopback fails the test at once."""
    made: list[tuple[str, int]] = []
    real = socket.create_connection

    def guarded(address: tuple[str, int], *args: Any, **kwargs: Any) -> socket.socket:
        made.append(address)
        assert address[0] == "127.0.0.1", f"the stager tried to connect to {address}"
        return real(address, *args, **kwargs)

    monkeypatch.setattr("workers.pinned_http.socket.create_connection", guarded)
    return made


class Source(http.server.BaseHTTPRequestHandler):
    hosts: list[str] = []
    redirect_to = ""

    def do_GET(self) -> None:
        Source.hosts.append(self.headers.get("Host", ""))
        if self.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", Source.redirect_to)
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(CORPUS)))
        self.end_headers()
        self.wfile.write(CORPUS)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def source() -> Iterator[int]:
    Source.hosts = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Source)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()


def _resolving(monkeypatch: pytest.MonkeyPatch, answers: dict[str, list[str]]) -> list[str]:
    """Fake DNS for made-up names; records each lookup."""
    asked: list[str] = []
    real = socket.getaddrinfo

    def getaddrinfo(host: str, port: int, *args: Any, **kwargs: Any) -> list[Any]:
        if host not in answers:  # the same socket module serves the test's own lookups
            return real(host, port, *args, **kwargs)
        asked.append(host)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, port)) for ip in answers[host]]

    monkeypatch.setattr("ops.netguard.socket.getaddrinfo", getaddrinfo)
    return asked


@pytest.mark.parametrize(
    "target",
    [
        "http://127.0.0.1:{port}/corpus.txt",
        "http://localhost:{port}/corpus.txt",
        "http://[::1]:{port}/corpus.txt",
        "http://[::ffff:127.0.0.1]:{port}/corpus.txt",
        "http://169.254.169.254/latest/meta-data/",
        "http://10.1.2.3:{port}/corpus.txt",
        "http://100.64.0.1/corpus.txt",
        "http://0.0.0.0:{port}/corpus.txt",
    ],
)
def test_internal_targets_are_refused_before_any_connection(
    target: str, recorder: Recorder, connections: list[tuple[str, int]], tmp_path: Path
) -> None:
    url = target.format(port=recorder.port)
    with override_settings(DATASET_ALLOWED_NETWORKS=()), pytest.raises(DatasetError) as refused:
        stage_dataset(url, "", tmp_path / "corpus.txt")
    assert str(refused.value) == "dataset_url refused: address not allowed"
    assert str(recorder.port) not in str(refused.value)
    assert connections == []
    assert recorder.accepted == 0
    assert breaker_states() == []  # a refusal opens no breaker and counts against no one


def test_a_name_resolving_to_loopback_is_refused_without_connecting(
    monkeypatch: pytest.MonkeyPatch, recorder: Recorder, connections: list[tuple[str, int]], tmp_path: Path
) -> None:
    # One public and one internal answer: every resolved address must be allowed.
    _resolving(monkeypatch, {"data.example.test": ["93.184.216.34", "127.0.0.1"]})
    with override_settings(DATASET_ALLOWED_NETWORKS=()), pytest.raises(DatasetError, match=r"not allowed$"):
        stage_dataset(f"http://data.example.test:{recorder.port}/c.txt", "", tmp_path / "corpus.txt")
    assert connections == [] and recorder.accepted == 0


def test_the_connection_is_pinned_to_the_checked_address_with_the_original_host(
    monkeypatch: pytest.MonkeyPatch, source: int, connections: list[tuple[str, int]], tmp_path: Path
) -> None:
    asked = _resolving(monkeypatch, {"data.example.test": ["127.0.0.1"]})
    with override_settings(DATASET_ALLOWED_NETWORKS=LOOPBACK):
        staged = stage_dataset(f"http://data.example.test:{source}/c.txt", "", tmp_path / "corpus.txt")
    assert staged.path.read_bytes() == CORPUS
    # One lookup, checked and then used: no second lookup a rebinding DNS could answer differently.
    assert asked == ["data.example.test"]
    assert connections == [("127.0.0.1", source)]
    assert Source.hosts == [f"data.example.test:{source}"]


def test_a_redirect_to_an_internal_address_is_refused_before_following_it(
    source: int, recorder: Recorder, connections: list[tuple[str, int]], tmp_path: Path
) -> None:
    Source.redirect_to = f"http://10.0.0.7:{recorder.port}/secret"
    with (
        override_settings(DATASET_ALLOWED_NETWORKS=LOOPBACK),
        pytest.raises(DatasetError, match=r"not allowed$"),
    ):
        stage_dataset(f"http://127.0.0.1:{source}/redirect", "", tmp_path / "corpus.txt")
    assert connections == [("127.0.0.1", source)] and recorder.accepted == 0


def test_an_allowed_redirect_is_followed_through_the_same_check(source: int, tmp_path: Path) -> None:
    Source.redirect_to = f"http://127.0.0.1:{source}/corpus.txt"
    staged = stage_dataset(f"http://127.0.0.1:{source}/redirect", "", tmp_path / "corpus.txt")
    assert staged.path.read_bytes() == CORPUS


def test_an_allow_listed_loopback_source_is_fetched(source: int, tmp_path: Path) -> None:
    with override_settings(DATASET_ALLOWED_NETWORKS=LOOPBACK):
        staged = stage_dataset(f"http://localhost:{source}/c.txt", "", tmp_path / "corpus.txt")
    assert staged.size == len(CORPUS)


def test_a_malformed_sha256_is_refused_before_fetching(recorder: Recorder, tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="dataset_sha256 must be 64 hexadecimal"):
        stage_dataset(f"http://127.0.0.1:{recorder.port}/c.txt", "abc", tmp_path / "corpus.txt")
    assert recorder.accepted == 0


def test_one_owners_failing_source_does_not_open_the_breaker_for_another(
    recorder: Recorder, tmp_path: Path, settings: Any
) -> None:
    # The recorder closes every connection at once: a dependency failure on each try.
    settings.CONTROLPLANE = {
        **settings.CONTROLPLANE,
        "BREAKER_THRESHOLD": 2,
        "BREAKER_COOLDOWN_SECONDS": 60,
        "DATASET_RETRIES": 2,
    }
    url = f"http://127.0.0.1:{recorder.port}/c.txt"
    with pytest.raises(SourceUnavailable, match="after 2 tries"):
        stage_dataset(url, "", tmp_path / "corpus.txt", owner_id=1)
    with pytest.raises(SourceUnavailable, match="breaker"):
        stage_dataset(url, "", tmp_path / "corpus.txt", owner_id=1)
    accepted = recorder.accepted
    with pytest.raises(SourceUnavailable, match="after 2 tries"):  # tried, not refused by 1's breaker
        stage_dataset(url, "", tmp_path / "corpus.txt", owner_id=2)
    assert recorder.accepted == accepted + 2
    assert (breaker_name(1, "127.0.0.1"), "open", 2) in breaker_states()
