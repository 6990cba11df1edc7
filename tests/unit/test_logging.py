"""Structured logging: the line schema, errors, redaction, the flood guard, sampling and rotation.

Whole-process behaviour (settings read from the environment, a 100k-line loop) runs in a child
process, as a web server or worker would; the guard's arithmetic runs in process.
"""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
import textwrap
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import structlog
from prometheus_client import REGISTRY

from ops.logs import (
    FLOOD_SUMMARY_EVENT,
    GuardedHandler,
    LogConfig,
    LogGuard,
    build_handler,
    error_kind_of,
    structured_formatter,
)
from redaction import registry

ROOT = Path(__file__).resolve().parents[2]
FIGURES = ROOT / "test-output" / "logging-figures.json"
SCHEMA = {"timestamp", "level", "logger", "event"}


def _child(script: str, tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """Run `script` after importing the real settings, with standalone defaults in tmp_path."""
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(
            ("DATABASE_URL", "REDIS_URL", "CELERY", "SECRET_KEY", "DJANGO", "LOG_", "CONTROLPLANE")
        )
    }
    prelude = "import os; os.environ['DJANGO_SETTINGS_MODULE'] = 'controlplane.settings'\n"
    prelude += "import django; django.setup()\n"
    return subprocess.run(
        [sys.executable, "-c", prelude + textwrap.dedent(script)],
        cwd=ROOT,
        env={**clean, "CONTROLPLANE_DATA_DIR": str(tmp_path / "data"), "LOG_FORMAT": "json", **env},
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _record_figures(name: str, **figures: Any) -> None:
    FIGURES.parent.mkdir(parents=True, exist_ok=True)
    data = json.loads(FIGURES.read_text()) if FIGURES.exists() else {}
    data[name] = figures
    FIGURES.write_text(json.dumps(data, indent=2, sort_keys=True))


def test_every_line_is_json_with_the_schema_bound_context_and_error_fields(tmp_path: Path) -> None:
    log_file = tmp_path / "logs" / "app.log"
    result = _child(
        """
        import logging, structlog
        structlog.contextvars.bind_contextvars(
            request_id="req-1", run_id=7, attempt=2, task_id="task-9", user_id=3
        )
        log = structlog.get_logger("tests.schema")
        log.info("run_observed", step=10)
        logging.getLogger("django.request").warning("Not Found: %s", "/nowhere")
        try:
            {}["missing"]
        except KeyError:
            log.exception("lookup_failed")
        try:
            raise ConnectionRefusedError(111, "refused")
        except OSError:
            logging.getLogger("celery.app.trace").error("Task failed", exc_info=True)
        log.error("gave_up", reason="budget")
        log.error("classified", error_kind="config", error_code="bad_value")
        """,
        tmp_path,
        CONTROLPLANE_LOG_FILE=str(log_file),
    )
    assert result.returncode == 0, result.stderr
    # stderr carries the same lines as the file (JSON: not a terminal).
    stderr_lines = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    lines = _lines(log_file)
    assert [line["event"] for line in lines] == [line["event"] for line in stderr_lines]
    assert len(lines) == 6
    for line in lines:
        assert set(line) >= SCHEMA, line
        assert line["timestamp"].endswith("Z")
        stamp = datetime.fromisoformat(line["timestamp"].replace("Z", "+00:00"))
        assert stamp.tzinfo == UTC
        assert abs((datetime.now(UTC) - stamp).total_seconds()) < 120
        assert (line["request_id"], line["run_id"], line["attempt"], line["task_id"], line["user_id"]) == (
            "req-1",
            7,
            2,
            "task-9",
            3,
        )
    observed, foreign, lookup, task, gave_up, classified = lines
    assert (observed["level"], observed["logger"], observed["step"]) == ("info", "tests.schema", 10)
    assert "error_kind" not in observed
    assert (foreign["event"], foreign["level"], foreign["logger"]) == (
        "Not Found: /nowhere",
        "warning",
        "django.request",
    )
    assert lookup["error_kind"] == "internal" and lookup["error_code"] == "KeyError"
    assert lookup["exception"].startswith("Traceback (most recent call last):")
    assert "KeyError: 'missing'" in lookup["exception"]
    assert (task["error_kind"], task["error_code"]) == ("io", "ConnectionRefusedError")
    assert "ConnectionRefusedError" in task["exception"]
    assert (gave_up["error_kind"], gave_up["error_code"]) == ("internal", "gave_up")
    assert (classified["error_kind"], classified["error_code"]) == ("config", "bad_value")


def test_a_terminal_gets_the_console_renderer_unless_told_otherwise(tmp_path: Path) -> None:
    result = _child(
        """
        import structlog
        structlog.get_logger("tests.console").info("hello_console", answer=42)
        """,
        tmp_path,
        LOG_FORMAT="console",
    )
    assert result.returncode == 0, result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert "hello_console" in line and "answer=42" in line
    assert not line.startswith("{")


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("LOG_LEVEL", "LOUD", "LOG_LEVEL must be one of"),
        ("LOG_FORMAT", "xml", "LOG_FORMAT must be json or console"),
        ("CONTROLPLANE_LOG_DEBUG_SAMPLE_RATE", "1.5", "CONTROLPLANE_LOG_DEBUG_SAMPLE_RATE must be <= 1.0"),
        ("CONTROLPLANE_LOG_FLOOD_LIMIT", "-1", "CONTROLPLANE_LOG_FLOOD_LIMIT must be >= 0"),
        ("CONTROLPLANE_LOG_MAX_BYTES", "lots", "CONTROLPLANE_LOG_MAX_BYTES must be an integer"),
    ],
)
def test_bad_logging_settings_stop_the_process_naming_the_variable(
    tmp_path: Path, variable: str, value: str, message: str
) -> None:
    result = _child("", tmp_path, **{variable: value})
    assert result.returncode != 0
    assert message in result.stderr


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (ConnectionRefusedError(), "io"),
        (TimeoutError(), "timeout"),
        (ValueError(), "internal"),
    ],
)
def test_exceptions_get_a_bounded_error_kind(error: BaseException, kind: str) -> None:
    assert error_kind_of(error) == kind


def test_database_and_redis_errors_are_told_apart() -> None:
    import redis
    from django.db import OperationalError

    assert error_kind_of(OperationalError("server closed the connection")) == "database"
    assert error_kind_of(redis.ConnectionError("refused")) == "redis"


def _capture(logger_name: str) -> tuple[logging.Logger, io.StringIO, logging.Handler]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(structured_formatter("json"))
    logger = logging.getLogger(logger_name)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    return logger, stream, handler


def test_a_registered_secret_never_appears_in_a_rendered_line() -> None:
    secret = "s3cret-Value-0xC0FFEE"
    logger, stream, handler = _capture("tests.redaction")
    handle = registry.add([secret])
    try:
        log = structlog.get_logger("tests.redaction").bind(dsn=f"postgres://u:{secret}@db/x")
        log.info(f"connecting with {secret}", nested={"k": [secret]})
        try:
            raise RuntimeError(f"auth failed for {secret}")
        except RuntimeError:
            log.exception("login_failed")
        logger.warning("stdlib says %s", secret)  # a foreign record, through the same chain
    finally:
        registry.discard(handle)
        logger.removeHandler(handler)
        logger.propagate = True
    rendered = stream.getvalue()
    lines = [json.loads(line) for line in rendered.splitlines()]
    assert len(lines) == 3
    assert secret not in rendered
    assert lines[0]["event"] == "connecting with ***"
    assert lines[0]["dsn"] == "postgres://u:***@db/x"
    assert lines[0]["nested"] == {"k": ["***"]}
    assert "Traceback" in lines[1]["exception"] and "auth failed for ***" in lines[1]["exception"]
    assert lines[2]["event"] == "stdlib says ***"


def test_the_flood_guard_bounds_a_100k_line_loop(tmp_path: Path) -> None:
    log_file = tmp_path / "flood.log"
    limit = 100
    result = _child(
        """
        import json, time, structlog
        from prometheus_client import REGISTRY
        log = structlog.get_logger("tests.flood")
        started = time.monotonic()
        for i in range(100_000):
            log.info("runaway_loop", i=i)
        elapsed = time.monotonic() - started
        log.info("after_the_loop")
        time.sleep(2.5)  # the last window ends and its summary is written
        dropped = REGISTRY.get_sample_value("controlplane_log_lines_dropped_total", {"reason": "flood"})
        print(json.dumps({"elapsed": elapsed, "dropped_metric": dropped}))
        """,
        tmp_path,
        CONTROLPLANE_LOG_FILE=str(log_file),
        CONTROLPLANE_LOG_FLOOD_LIMIT=str(limit),
    )
    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    lines = _lines(log_file)
    kept = [line for line in lines if line["event"] == "runaway_loop"]
    summaries = [line for line in lines if line["event"] == FLOOD_SUMMARY_EVENT]
    windows = int(figures["elapsed"]) + 2
    assert 0 < len(kept) <= limit * windows
    assert summaries and all(s["flood_event"] == "runaway_loop" for s in summaries)
    assert all(s["flood_logger"] == "tests.flood" and s["limit_per_second"] == limit for s in summaries)
    dropped = sum(s["dropped"] for s in summaries)
    assert len(kept) + dropped == 100_000  # every line is either written or counted
    assert figures["dropped_metric"] == dropped
    assert any(line["event"] == "after_the_loop" for line in lines)  # other keys are untouched
    size = log_file.stat().st_size
    kept_line_bytes = size / len(lines)
    _record_figures(
        "flood_guard_100k",
        limit_per_second=limit,
        loop_seconds=round(figures["elapsed"], 2),
        lines_written=len(lines),
        loop_lines_kept=len(kept),
        summary_lines=len(summaries),
        dropped=dropped,
        bytes_written=size,
        bytes_without_guard_estimate=round(kept_line_bytes * 100_000),
    )
    # About 125 bytes a line: bounded by the windows the loop spanned, not by its 100,000 lines.
    assert size < 200 * (limit * windows + len(summaries) + 5)


def test_a_flood_window_sums_up_in_one_line_when_it_ends() -> None:
    now = [0.0]
    drops: list[tuple[str, int]] = []
    guard = LogGuard(flood_limit=3, clock=lambda: now[0], on_drop=lambda reason, n: drops.append((reason, n)))
    logger, stream, handler = _capture("tests.window")
    logger.removeHandler(handler)
    logger.addHandler(GuardedHandler(guard, [handler]))
    summary_logger, summary_stream, summary_handler = _capture("ops.logs")
    try:
        for _ in range(10):
            logger.info("tick")
        logger.info("other_event")
        assert summary_stream.getvalue() == ""
        now[0] = 1.5  # the next line opens a new window: the last one is summed up first
        logger.info("tick")
    finally:
        summary_logger.removeHandler(summary_handler)
        summary_logger.propagate = True
        logger.handlers.clear()
        logger.propagate = True
    events = [json.loads(line)["event"] for line in stream.getvalue().splitlines()]
    assert events == ["tick"] * 3 + ["other_event", "tick"]
    (summary,) = [json.loads(line) for line in summary_stream.getvalue().splitlines()]
    assert (summary["event"], summary["dropped"], summary["flood_event"]) == (FLOOD_SUMMARY_EVENT, 7, "tick")
    assert drops == [("flood", 1)] * 7


def _sampled_drops() -> float:
    return REGISTRY.get_sample_value("controlplane_log_lines_dropped_total", {"reason": "sampled"}) or 0.0


def test_debug_sampling_keeps_the_configured_fraction() -> None:
    before = _sampled_drops()
    guard = LogGuard(debug_sample_rate=0.25)
    record = logging.LogRecord("tests.sampling", logging.DEBUG, __file__, 1, "detail", (), None)
    kept = sum(guard.filter(record) for _ in range(20_000))
    assert 0.23 <= kept / 20_000 <= 0.27
    info = logging.LogRecord("tests.sampling", logging.INFO, __file__, 1, "summary", (), None)
    assert all(guard.filter(info) for _ in range(1_000))  # only DEBUG is sampled
    assert _sampled_drops() - before == 20_000 - kept


def test_the_log_file_rotates_at_its_size_limit_keeping_n_backups(tmp_path: Path) -> None:
    path = tmp_path / "rotating.log"
    handler = build_handler(LogConfig(file=path, max_bytes=4_000, backups=3))
    handler.outputs = handler.outputs[1:]  # the file only: keep the test's stderr quiet
    logger = logging.getLogger("tests.rotation")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        for i in range(400):
            structlog.get_logger("tests.rotation").info("rotating", i=i, pad="x" * 40)
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
        handler.close()
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["rotating.log", "rotating.log.1", "rotating.log.2", "rotating.log.3"]
    for name in files:
        assert (tmp_path / name).stat().st_size <= 4_000
        assert all("event" in line for line in _lines(tmp_path / name))
    newest = _lines(path)[-1]
    assert newest["i"] == 399
