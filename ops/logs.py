"""One structlog configuration for every process: web, worker, beat and the supervisor.

Standard-library records (Django, Celery, uvicorn) are rendered by the same processors, so every
line is one JSON object with `timestamp` (UTC), `level`, `logger`, `event` and the context bound
in `structlog.contextvars` (`request_id`, `run_id`, `attempt`, `task_id`) plus `user_id` on
authenticated requests. Error lines carry `error_kind` and `error_code`, and the full traceback in
`exception` when there is one. Secrets registered in `redaction.registry` are masked
in every rendered line.

All records pass one `LogGuard` before any handler sees them: DEBUG lines are sampled
(`CONTROLPLANE_LOG_DEBUG_SAMPLE_RATE`) and each (logger, event) key may write at most
`CONTROLPLANE_LOG_FLOOD_LIMIT` lines per second; the excess is dropped, counted in
`controlplane_log_lines_dropped_total`, and summed up by one `log_flood_suppressed` line when the
key's one-second window ends, so a runaway loop cannot fill a disk.
"""

from __future__ import annotations

import logging
import logging.handlers
import random
import sys
import threading
import time
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from ops.configuration import ConfigError
from ops.request_id import add_request_context
from redaction import redact_event

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
FORMATS = ("json", "console")
FLOOD_WINDOW_SECONDS = 1.0
FLOOD_SUMMARY_EVENT = "log_flood_suppressed"
_GUARD_LOGGER = "ops.logs"
# Loggers that install their own handlers (uvicorn's CLI does) are brought back to the root
# handler, so their lines are JSON too.
_ADOPTED_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access", "celery", "django")
_QUIET_LOGGERS = {
    "django.db.backends": "WARNING",
    "uvicorn.access": "WARNING",
    "celery.worker.strategy": "WARNING",
}

_configured = False


@dataclass(frozen=True)
class LogConfig:
    level: str = "INFO"
    fmt: str = "json"
    file: Path | None = None
    max_bytes: int = 100 * 1024 * 1024
    backups: int = 5
    debug_sample_rate: float = 1.0
    flood_limit: int = 0  # lines per second per (logger, event); 0 switches the guard off

    def check(self) -> LogConfig:
        if self.level not in LEVELS:
            raise ConfigError(f"LOG_LEVEL must be one of {', '.join(LEVELS)}, got {self.level!r}")
        if self.fmt not in FORMATS:
            raise ConfigError(f"LOG_FORMAT must be json or console, got {self.fmt!r}")
        if not 0.0 <= self.debug_sample_rate <= 1.0:
            raise ConfigError("CONTROLPLANE_LOG_DEBUG_SAMPLE_RATE must be between 0 and 1")
        return self


# -- processors -------------------------------------------------------------------------------


def _exception_of(exc_info: Any) -> BaseException | None:
    if isinstance(exc_info, BaseException):
        return exc_info
    if isinstance(exc_info, tuple) and len(exc_info) == 3 and isinstance(exc_info[1], BaseException):
        return exc_info[1]
    if exc_info is True:
        return sys.exc_info()[1]
    return None


_KINDS_BY_MODULE = (
    (("django.db", "psycopg", "psycopg_pool", "sqlite3"), "database"),
    (("redis",), "redis"),
    (("kombu", "amqp"), "broker"),
)


def error_kind_of(error: BaseException) -> str:
    """A coarse, bounded kind for an exception, so lines can be counted and alerted on by kind."""
    for cls in type(error).__mro__:
        for prefixes, kind in _KINDS_BY_MODULE:
            if cls.__module__.startswith(prefixes):
                return kind
    if isinstance(error, ConfigError) or type(error).__name__ == "ImproperlyConfigured":
        return "config"
    if isinstance(error, TimeoutError):
        return "timeout"
    if isinstance(error, OSError):
        return "io"
    return "internal"


def add_error_fields(logger: Any, method_name: str, event_dict: MutableMapping[str, Any]) -> Any:
    """Every error line (and every line with an exception) carries `error_kind` and `error_code`.

    Runs before `format_exc_info`, while the exception object is still there to classify.
    """
    error = _exception_of(event_dict.get("exc_info"))
    if error is None and method_name not in {"error", "critical", "exception"}:
        return event_dict
    if error is not None:
        event_dict.setdefault("error_kind", error_kind_of(error))
        event_dict.setdefault("error_code", type(error).__name__)
    else:
        event_dict.setdefault("error_kind", "internal")
        event_dict.setdefault("error_code", str(event_dict.get("event", ""))[:64])
    return event_dict


def _drop_terminal_copies(logger: Any, method_name: str, event_dict: MutableMapping[str, Any]) -> Any:
    # uvicorn passes an ANSI-coloured copy of its message as an extra: noise in a JSON line.
    event_dict.pop("color_message", None)
    return event_dict


def _shared_processors() -> list[Any]:
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.stdlib.ExtraAdder(),
        _drop_terminal_copies,
        add_request_context,  # after ExtraAdder: it reads the request Django passes as an extra
    ]


def structured_formatter(fmt: str) -> structlog.stdlib.ProcessorFormatter:
    """The formatter of every handler: the same chain for structlog and standard-library records."""
    renderer: Any = (
        structlog.dev.ConsoleRenderer(colors=False)
        if fmt == "console"
        else structlog.processors.JSONRenderer()
    )
    return structlog.stdlib.ProcessorFormatter(
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            add_error_fields,
            structlog.processors.format_exc_info,
            # After format_exc_info, so a secret inside a traceback is already text to mask.
            redact_event,
            renderer,
        ],
        foreign_pre_chain=_shared_processors(),
    )


# -- the guard: debug sampling and the flood limit --------------------------------------------


def _event_of(record: logging.LogRecord) -> str:
    # A structlog record carries its event dict as msg; a standard-library one its format string
    # (not the formatted text, so the key stays bounded whatever the arguments).
    msg = record.msg
    event = msg.get("event", "") if isinstance(msg, dict) else msg
    return str(event)[:200]


@dataclass
class _Window:
    started: float
    count: int = 0
    dropped: int = 0


class LogGuard(logging.Filter):
    """Sampling of DEBUG lines and a per-(logger, event) lines-per-second limit."""

    MAX_KEYS = 10_000

    def __init__(
        self,
        *,
        debug_sample_rate: float = 1.0,
        flood_limit: int = 0,
        clock: Callable[[], float] = time.monotonic,
        chance: Callable[[], float] = random.random,
        on_drop: Callable[[str, int], None] | None = None,
    ) -> None:
        super().__init__()
        self.debug_sample_rate = debug_sample_rate
        self.flood_limit = flood_limit
        self._clock = clock
        self._chance = chance
        self._on_drop = on_drop or _count_dropped
        self._lock = threading.Lock()
        self._windows: dict[tuple[str, str], _Window] = {}
        self._sweeper: threading.Thread | None = None

    def filter(self, record: logging.LogRecord) -> bool:
        sampled = record.levelno == logging.DEBUG and self.debug_sample_rate < 1.0
        if sampled and self._chance() >= self.debug_sample_rate:
            self._on_drop("sampled", 1)
            return False
        if self.flood_limit <= 0:
            return True
        key = (record.name, _event_of(record))
        if key == (_GUARD_LOGGER, FLOOD_SUMMARY_EVENT):
            return True  # at most one per key and window: bounded by the keys themselves
        now = self._clock()
        ended: list[tuple[tuple[str, str], int]] = []
        with self._lock:
            window = self._windows.get(key)
            if window is None or now - window.started >= FLOOD_WINDOW_SECONDS:
                if window is not None and window.dropped:
                    ended.append((key, window.dropped))
                if len(self._windows) >= self.MAX_KEYS:
                    ended += self._prune(now)
                window = self._windows[key] = _Window(started=now)
            window.count += 1
            keep = window.count <= self.flood_limit
            if not keep:
                window.dropped += 1
                self._ensure_sweeper()
        # Summaries are logged outside the lock: they pass through this filter again.
        self._summarize(ended)
        if not keep:
            self._on_drop("flood", 1)
        return keep

    def flush(self) -> None:
        """Write the summaries of every window that has ended (the sweeper calls this each second)."""
        with self._lock:
            ended = self._prune(self._clock())
        self._summarize(ended)

    def _prune(self, now: float) -> list[tuple[tuple[str, str], int]]:
        ended = []
        for key, window in list(self._windows.items()):
            if now - window.started >= FLOOD_WINDOW_SECONDS:
                if window.dropped:
                    ended.append((key, window.dropped))
                del self._windows[key]
        return ended

    def _ensure_sweeper(self) -> None:
        if self._sweeper is None:
            self._sweeper = threading.Thread(target=self._sweep, name="log-flood-sweeper", daemon=True)
            self._sweeper.start()

    def _sweep(self) -> None:
        while True:
            time.sleep(FLOOD_WINDOW_SECONDS)
            self.flush()

    def _summarize(self, ended: list[tuple[tuple[str, str], int]]) -> None:
        for (logger_name, event), dropped in ended:
            structlog.get_logger(_GUARD_LOGGER).warning(
                FLOOD_SUMMARY_EVENT,
                flood_logger=logger_name,
                flood_event=event,
                dropped=dropped,
                limit_per_second=self.flood_limit,
            )


def _count_dropped(reason: str, count: int) -> None:
    from ops.metrics import LOG_LINES_DROPPED

    LOG_LINES_DROPPED.labels(reason=reason).inc(count)


class GuardedHandler(logging.Handler):
    """The root logger's only handler: decides once per record, then hands it to every output.

    A filter on each output handler would run the guard once per output and count a drop twice.
    """

    def __init__(self, guard: LogGuard, outputs: list[logging.Handler]) -> None:
        super().__init__()
        self.guard = guard
        self.outputs = outputs

    def handle(self, record: logging.LogRecord) -> bool:
        if not self.guard.filter(record):
            return False
        for output in self.outputs:
            if record.levelno >= output.level:
                output.handle(record)
        return True

    def emit(self, record: logging.LogRecord) -> None:  # handle() does the work
        pass

    def flush(self) -> None:
        for output in self.outputs:
            output.flush()

    def close(self) -> None:
        for output in self.outputs:
            output.close()
        super().close()


def build_handler(config: LogConfig) -> GuardedHandler:
    stderr = logging.StreamHandler(sys.stderr)
    stderr.setFormatter(structured_formatter(config.fmt))
    outputs: list[logging.Handler] = [stderr]
    if config.file is not None:
        config.file.parent.mkdir(parents=True, exist_ok=True)
        # The file is for machines: always JSON, whatever the terminal gets.
        rotating = logging.handlers.RotatingFileHandler(
            config.file, maxBytes=config.max_bytes, backupCount=config.backups, encoding="utf-8"
        )
        rotating.setFormatter(structured_formatter("json"))
        outputs.append(rotating)
    guard = LogGuard(debug_sample_rate=config.debug_sample_rate, flood_limit=config.flood_limit)
    return GuardedHandler(guard, outputs)


def configure_logging(
    level: str = "INFO", fmt: str = "json", *, config: LogConfig | None = None, force: bool = False
) -> None:
    """Install the configuration once per process (`force` re-installs it, for tests)."""
    global _configured
    if _configured and not force:
        return
    config = (config or LogConfig(level=level, fmt=fmt)).check()
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
        if isinstance(old, GuardedHandler):
            old.close()
    root.addHandler(build_handler(config))
    root.setLevel(config.level)
    for name in _ADOPTED_LOGGERS:
        adopted = logging.getLogger(name)
        adopted.handlers.clear()
        adopted.propagate = True
        adopted.setLevel(logging.NOTSET)
    for name, quiet_level in _QUIET_LOGGERS.items():
        logging.getLogger(name).setLevel(quiet_level)
    logging.captureWarnings(True)  # Python warnings become JSON lines too, not bare stderr text
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *_shared_processors(),
            structlog.processors.StackInfoRenderer(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    _configured = True
