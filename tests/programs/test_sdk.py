"""Tests of the torch-free reporting SDK (``workers.sdk``)."""

from __future__ import annotations

import contextlib
import json
import math
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from workers import sdk


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in list(os.environ):
        if name.startswith("CONTROLPLANE_"):
            monkeypatch.delenv(name)
    return monkeypatch


@pytest.fixture
def pipe() -> Iterator[tuple[int, int]]:
    read_fd, write_fd = os.pipe()
    yield read_fd, write_fd
    for fd in (read_fd, write_fd):
        # The code under test may have closed its end already.
        with contextlib.suppress(OSError):
            os.close(fd)


def _collect(read_fd: int) -> tuple[threading.Thread, list[bytes]]:
    """Drain ``read_fd`` on a thread, so writers never block on a full pipe."""
    chunks: list[bytes] = []

    def drain() -> None:
        while chunk := os.read(read_fd, 65536):
            chunks.append(chunk)

    thread = threading.Thread(target=drain)
    thread.start()
    return thread, chunks


def _record(read_fd: int, write_fd: int, body: Callable[[sdk.Reporter], None], **kwargs: Any) -> list[bytes]:
    """Run ``body`` against a reporter on a fresh dup of ``write_fd`` and return the raw lines."""
    thread, chunks = _collect(read_fd)
    reporter = sdk.Reporter(os.dup(write_fd), **kwargs)
    body(reporter)
    reporter.close()
    os.close(write_fd)
    thread.join(timeout=10)
    data = b"".join(chunks)
    assert data.endswith(b"\n")
    return data.split(b"\n")[:-1]


def test_events_have_the_documented_shapes(pipe: tuple[int, int], tmp_path: Path) -> None:
    def body(reporter: sdk.Reporter) -> None:
        reporter.status("loading")
        reporter.metric(10, {"train/loss": 2.31, "lr": 1e-3})
        reporter.progress(10, 200)
        reporter.checkpoint(50, "checkpoints/step-50.pt")
        reporter.checkpoint(60, tmp_path / "checkpoints" / "step-60.pt")
        reporter.artifact(Path("model.safetensors"), "model")

    lines = _record(*pipe, body, run_dir=tmp_path)
    assert [json.loads(line) for line in lines] == [
        {"type": "status", "phase": "loading"},
        {"type": "metric", "step": 10, "values": {"train/loss": 2.31, "lr": 1e-3}},
        {"type": "progress", "step": 10, "total": 200},
        {"type": "checkpoint", "step": 50, "path": "checkpoints/step-50.pt"},
        # Absolute paths inside the run dir are made relative, as the protocol wants.
        {"type": "checkpoint", "step": 60, "path": "checkpoints/step-60.pt"},
        {"type": "artifact", "path": "model.safetensors", "kind": "model"},
    ]


def test_non_finite_metrics_become_null(pipe: tuple[int, int]) -> None:
    def body(reporter: sdk.Reporter) -> None:
        reporter.metric(1, {"nan": math.nan, "inf": math.inf, "ninf": -math.inf, "ok": 1.5, "int": 3})

    (line,) = _record(*pipe, body)

    # Strict parsing: Python's json would otherwise accept the NaN/Infinity extensions.
    def reject(token: str) -> None:
        raise AssertionError(f"non-standard JSON token {token}")

    event = json.loads(line, parse_constant=reject)
    assert event["values"] == {"nan": None, "inf": None, "ninf": None, "ok": 1.5, "int": 3.0}


def test_concurrent_writers_never_interleave_lines(pipe: tuple[int, int]) -> None:
    n_threads, per_thread = 4, 500

    def body(reporter: sdk.Reporter) -> None:
        def work(worker: int) -> None:
            for i in range(per_thread):
                reporter.metric(i, {f"worker{worker}/value": float(i), "padding": 0.123456789})

        threads = [threading.Thread(target=work, args=(w,)) for w in range(n_threads)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    lines = _record(*pipe, body)
    assert len(lines) == n_threads * per_thread
    seen = {(next(iter(json.loads(line)["values"])), json.loads(line)["step"]) for line in lines}
    assert len(seen) == n_threads * per_thread


def test_reporter_without_fd_writes_nothing(clean_env: pytest.MonkeyPatch) -> None:
    reporter = sdk.Reporter.from_env()
    assert not reporter.enabled
    with reporter:
        reporter.metric(1, {"x": 1.0})
        reporter.progress(1, 2)
        reporter.checkpoint(1, "a.pt")
        reporter.artifact("model.safetensors", "model")
        reporter.status("training")


def test_reporter_from_env(clean_env: pytest.MonkeyPatch, pipe: tuple[int, int]) -> None:
    read_fd, write_fd = pipe
    clean_env.setenv(sdk.ENV_EVENTS_FD, str(os.dup(write_fd)))
    thread, chunks = _collect(read_fd)
    with sdk.Reporter.from_env() as reporter:
        assert reporter.enabled
        reporter.status("training")
    os.close(write_fd)
    thread.join(timeout=10)
    assert b"".join(chunks) == b'{"type":"status","phase":"training"}\n'


@pytest.mark.parametrize("value", ["three", "-1", "1.5", "987654"])
def test_bad_events_fd_is_rejected(clean_env: pytest.MonkeyPatch, value: str) -> None:
    clean_env.setenv(sdk.ENV_EVENTS_FD, value)
    with pytest.raises(ValueError, match=sdk.ENV_EVENTS_FD):
        sdk.Reporter.from_env()


def test_reader_going_away_disables_reporting(
    pipe: tuple[int, int], capsys: pytest.CaptureFixture[str]
) -> None:
    read_fd, write_fd = pipe
    os.close(read_fd)
    reporter = sdk.Reporter(os.dup(write_fd))
    reporter.status("training")  # must not raise: training outlives its observer
    assert not reporter.enabled
    reporter.status("saving")
    reporter.close()
    assert "reporting disabled" in capsys.readouterr().err


def test_load_params(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert sdk.load_params() == {}
    (tmp_path / "params.json").write_text(json.dumps({"steps": 5, "lr": 0.1}))
    clean_env.setenv(sdk.ENV_RUN_DIR, str(tmp_path))
    clean_env.setenv(sdk.ENV_PARAMS, "params.json")  # relative: resolved against the run dir
    assert sdk.load_params() == {"steps": 5, "lr": 0.1}
    (tmp_path / "list.json").write_text("[1, 2]")
    clean_env.setenv(sdk.ENV_PARAMS, str(tmp_path / "list.json"))
    with pytest.raises(ValueError, match="JSON object"):
        sdk.load_params()


def test_run_dir(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    clean_env.chdir(tmp_path)
    assert sdk.run_dir() == tmp_path
    clean_env.setenv(sdk.ENV_RUN_DIR, "/somewhere/else")
    assert sdk.run_dir() == Path("/somewhere/else")


def test_resume_from(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    checkpoint = run / "checkpoints" / "step-5.pt"
    checkpoint.write_bytes(b"x")
    outside = tmp_path / "outside.pt"
    outside.write_bytes(b"x")
    (run / "link.pt").symlink_to(outside)
    clean_env.setenv(sdk.ENV_RUN_DIR, str(run))

    assert sdk.resume_from() is None
    for inside in ("checkpoints/step-5.pt", str(checkpoint), "checkpoints/../checkpoints/step-5.pt"):
        clean_env.setenv(sdk.ENV_RESUME_FROM, inside)
        assert sdk.resume_from() == checkpoint.resolve()
    for escape in ("../outside.pt", str(outside), "link.pt", "/etc/passwd"):
        clean_env.setenv(sdk.ENV_RESUME_FROM, escape)
        with pytest.raises(sdk.ResumePathError, match="outside the run directory"):
            sdk.resume_from()
    clean_env.setenv(sdk.ENV_RESUME_FROM, "checkpoints/missing.pt")
    with pytest.raises(sdk.ResumePathError, match="does not exist"):
        sdk.resume_from()
