"""Reporting SDK for programs run by the control-plane supervisor.

The supervisor starts a training program as a subprocess and tells it where
things are through environment variables:

``CONTROLPLANE_RUN_ID``
    Identifier of the run (informational).
``CONTROLPLANE_RUN_DIR``
    The run's working directory (also the subprocess' cwd).
``CONTROLPLANE_PARAMS``
    Path of a JSON file holding the resolved parameters.
``CONTROLPLANE_EVENTS_SOCKET``
    Path of a Unix stream socket (in the run dir) that receives one JSON object
    per line, from any process of the run that connects to it: the channel
    that survives launchers (torchrun's ranks inherit no descriptors). The
    reporter prefers it when set.
``CONTROLPLANE_EVENTS_FD``
    Integer file descriptor, opened for writing, that receives the same lines;
    inherited by the program itself only.  When neither is set the
    :class:`Reporter` discards every event, so the same program runs unchanged
    outside the control plane.
``RANK``
    Set by torchrun for each process of a distributed run: by default only
    rank 0 reports (metrics, checkpoints, artifacts, progress, status), so a
    step is not reported once per rank.  Every rank may print log lines.
``CONTROLPLANE_URL``, ``CONTROLPLANE_RUN_ID``, ``CONTROLPLANE_RUN_TOKEN``
    Tracking mode: with no events channel but these set (or the token in
    ``CONTROLPLANE_TOKEN``), the same events go over HTTP into that external
    run (:mod:`workers.sdk_http`); ``close()`` (also at exit) sends the rest.
``CONTROLPLANE_RESUME_FROM``
    Optional checkpoint path (relative to the run dir, or absolute but inside
    it) to resume from.

Event shapes: docs/architecture.md, "The program protocol" (paths are relative
to the run dir, POSIX separators).

Non-finite metric values (NaN, +inf, -inf) are encoded as JSON ``null``: strict
JSON has no spelling for them, and a diverged loss is better shown as "no
value" than rejected by the consumer's parser.

Imports nothing heavy (no torch): any program, and the web process, use it.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import socket
import sys
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

# Relative: the client distribution ships both files too.
from .sdk_http import VALUES_PER_LINE, HttpSender, event_rows

__all__ = [
    "ENV_EVENTS_FD",
    "ENV_EVENTS_SOCKET",
    "ENV_PARAMS",
    "ENV_REQUEST_ID",
    "ENV_RESUME_FROM",
    "ENV_RUN_DIR",
    "ENV_RUN_ID",
    "ENV_RUN_TOKEN",
    "ENV_URL",
    "VALUES_PER_LINE",
    "Reporter",
    "ResumePathError",
    "load_params",
    "process_rank",
    "resume_from",
    "run_dir",
    "unix_socket_address",
]

ENV_RUN_ID = "CONTROLPLANE_RUN_ID"
ENV_RUN_DIR = "CONTROLPLANE_RUN_DIR"
ENV_PARAMS = "CONTROLPLANE_PARAMS"
ENV_EVENTS_FD = "CONTROLPLANE_EVENTS_FD"
ENV_EVENTS_SOCKET = "CONTROLPLANE_EVENTS_SOCKET"
ENV_RANK = "RANK"
# sun_path holds 108 bytes with its NUL: a longer path is reached through a directory descriptor.
MAX_UNIX_PATH_BYTES = 107
ENV_RESUME_FROM = "CONTROLPLANE_RESUME_FROM"
ENV_REQUEST_ID = "CONTROLPLANE_REQUEST_ID"
ENV_URL = "CONTROLPLANE_URL"
ENV_RUN_TOKEN = "CONTROLPLANE_RUN_TOKEN"  # noqa: S105 - a variable's name
ENV_TOKEN = "CONTROLPLANE_TOKEN"  # noqa: S105 - a variable's name


class ResumePathError(ValueError):
    """The resume checkpoint path is unusable (outside the run dir, or missing)."""


def run_dir() -> Path:
    """The run directory: ``CONTROLPLANE_RUN_DIR``, else the current directory."""
    value = os.environ.get(ENV_RUN_DIR)
    return Path(value) if value else Path.cwd()


def load_params() -> dict[str, Any]:
    """Parameters from the ``CONTROLPLANE_PARAMS`` JSON file; ``{}`` when unset.

    An empty dict lets a program fall back to its defaults when run by hand.
    """
    value = os.environ.get(ENV_PARAMS)
    if not value:
        return {}
    path = Path(value)
    if not path.is_absolute():
        path = run_dir() / path
    with path.open(encoding="utf-8") as fh:
        data = json.load(fh)
    if not isinstance(data, dict):
        raise ValueError(f"{ENV_PARAMS} file {path} must hold a JSON object, got {type(data).__name__}")
    return data


def resume_from() -> Path | None:
    """Absolute path of the checkpoint to resume from, or ``None``.

    The path must resolve (symlinks included) to an existing file inside the
    run dir: the supervisor only ever hands out its own checkpoints, so anything
    else is a mistake or an attempt to make the program read foreign files.
    """
    value = os.environ.get(ENV_RESUME_FROM)
    if not value:
        return None
    base = run_dir().resolve()
    candidate = Path(value)
    if not candidate.is_absolute():
        candidate = base / candidate
    resolved = candidate.resolve()
    if not resolved.is_relative_to(base):
        raise ResumePathError(f"resume path {value!r} is outside the run directory {str(base)!r}")
    if not resolved.is_file():
        raise ResumePathError(f"resume checkpoint {value!r} does not exist")
    return resolved


def process_rank() -> int:
    """This process' rank in a distributed run (``RANK``, set by torchrun); 0 when unset."""
    value = os.environ.get(ENV_RANK, "").strip()
    if not value:
        return 0
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{ENV_RANK} must be an integer, got {value!r}") from None


def unix_socket_address(path: Path) -> tuple[str, int | None]:
    """The address to bind or connect `path` with, and a directory descriptor to close after.

    A path longer than sun_path allows goes through ``/proc/self/fd/<dir>/<name>``, so a deep run
    directory still works (Linux)."""
    if len(os.fsencode(str(path))) <= MAX_UNIX_PATH_BYTES:
        return str(path), None
    directory = os.open(path.parent, os.O_PATH | os.O_DIRECTORY)
    return f"/proc/self/fd/{directory}/{path.name}", directory


def _connect_events_socket(path: str) -> int:
    """A connected descriptor for the events socket at `path`; ValueError when it cannot connect."""
    connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    address, directory = unix_socket_address(Path(path))
    try:
        connection.connect(address)
    except OSError as error:
        connection.close()
        raise ValueError(
            f"cannot connect to {ENV_EVENTS_SOCKET}={path!r}: {error.strerror or error}"
        ) from None
    finally:
        if directory is not None:
            os.close(directory)
    return connection.detach()


def _finite_or_none(value: float) -> float | None:
    number = float(value)
    return number if math.isfinite(number) else None


class Reporter:
    """Writes JSON-lines events to the supervisor's events socket or file descriptor.

    Each event is serialised up front and handed to the kernel with a single
    ``os.write`` (retried only for the rare short write), so a line is never
    interleaved with another and never sits in a user-space buffer.  Writes
    block when the reader stops draining the pipe: losing events silently would
    be worse than pausing training.  A lock makes the object safe to share
    between threads.

    If the reader goes away (``EPIPE``) the reporter disables itself and says so
    once on stderr, so that training can still finish and write its artifacts.
    """

    def __init__(
        self, fd: int | None, *, run_dir: Path | None = None, sender: HttpSender | None = None
    ) -> None:
        self._fd, self._run_dir, self._lock = fd, run_dir, threading.Lock()
        self._sender = sender  # tracking mode: events go over HTTP instead of a descriptor

    @classmethod
    def over_http(cls, url: str, run_id: int, token: str, **options: Any) -> Reporter:
        """A reporter into external run `run_id` at `url` with its run-scoped token (tracking mode)."""
        return cls(None, sender=HttpSender(url, run_id, token, **options))

    @classmethod
    def from_env(cls, *, all_ranks: bool = False) -> Reporter:
        """A reporter for ``CONTROLPLANE_EVENTS_SOCKET`` (preferred) or ``CONTROLPLANE_EVENTS_FD``;
        a silent one when neither is set, or on a rank other than 0 unless `all_ranks`."""
        if not all_ranks and process_rank() != 0:
            return cls(None, run_dir=run_dir())
        socket_path = os.environ.get(ENV_EVENTS_SOCKET, "").strip()
        if socket_path:
            try:
                return cls(_connect_events_socket(socket_path), run_dir=run_dir())
            except ValueError:
                if not os.environ.get(ENV_EVENTS_FD, "").strip():
                    raise
                # The pipe still works for the program the supervisor started itself.
        fd = os.environ.get(ENV_EVENTS_FD, "").strip()
        url, run_id = os.environ.get(ENV_URL, "").strip(), os.environ.get(ENV_RUN_ID, "").strip()
        token = os.environ.get(ENV_RUN_TOKEN, "").strip() or os.environ.get(ENV_TOKEN, "").strip()
        if not fd and url and token and run_id.isdigit():
            return cls.over_http(url, int(run_id), token)
        return cls._from_fd(fd)

    @classmethod
    def _from_fd(cls, value: str) -> Reporter:
        if not value:
            return cls(None, run_dir=run_dir())
        try:
            fd = int(value)
        except ValueError:
            raise ValueError(f"{ENV_EVENTS_FD} must be an integer file descriptor, got {value!r}") from None
        if fd < 0:
            raise ValueError(f"{ENV_EVENTS_FD} must be a non-negative file descriptor, got {fd}")
        try:
            os.fstat(fd)
        except OSError:
            # Fail at start-up with a clear message rather than at the first event.
            raise ValueError(f"{ENV_EVENTS_FD}={fd} is not an open file descriptor") from None
        return cls(fd, run_dir=run_dir())

    @property
    def enabled(self) -> bool:
        return self._fd is not None or (self._sender is not None and self._sender.enabled)

    @property
    def run_id(self) -> int | None:
        """The run reported into over HTTP (None on an events channel, which needs no id)."""
        return self._sender.run_id if self._sender is not None else None

    def __enter__(self) -> Reporter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def metric(self, step: int, values: Mapping[str, float]) -> None:
        if not self.enabled:
            return
        clean = {str(key): _finite_or_none(val) for key, val in values.items()}
        if self._sender is not None:  # over HTTP, consecutive steps share a columnar line
            return self._sender.put_metric(int(step), clean)
        self._emit({"type": "metric", "step": int(step), "values": clean})

    def metrics(self, points: Iterable[tuple[int, Mapping[str, float]]]) -> None:
        """Many steps at once, as few event lines as fit: for a program that reports faster than
        one line a step is worth, or replays a log. Consecutive steps that report the same keys
        share a columnar line (``"steps"`` and a list of values a key: a few times cheaper to
        write and to parse than an object a step). Lines stay well under the supervisor's 1 MiB
        event line limit (VALUES_PER_LINE values each)."""
        if not self.enabled:
            return
        steps: list[int] = []
        columns: dict[str, list[float | None]] = {}
        keys: list[str] = []
        for step, values in points:
            names = [str(key) for key in values]
            if steps and (names != keys or (len(steps) + 1) * len(names) > VALUES_PER_LINE):
                self._emit({"type": "metric", "steps": steps, "values": columns})
                steps = []
            if not steps:
                keys, columns = names, {name: [] for name in names}
            steps.append(int(step))
            for name, value in zip(names, values.values(), strict=True):
                columns[name].append(_finite_or_none(value))
        if steps:
            self._emit({"type": "metric", "steps": steps, "values": columns})

    def progress(self, step: int, total: int) -> None:
        if not self.enabled:
            return
        self._emit({"type": "progress", "step": int(step), "total": int(total)})

    def checkpoint(self, step: int, path: str | os.PathLike[str]) -> None:
        if not self.enabled:
            return
        self._emit({"type": "checkpoint", "step": int(step), "path": self._relative(path)})

    def artifact(self, path: str | os.PathLike[str], kind: str) -> None:
        """Over HTTP the file is uploaded (sha256-checked by the server); else an event names it."""
        if not self.enabled:
            return
        if self._sender is not None:
            self._sender.upload(os.fspath(path), kind=str(kind))
            return
        self._emit({"type": "artifact", "path": self._relative(path), "kind": str(kind)})

    def status(self, phase: str, *, device: str | None = None) -> None:
        """A phase of the program; `device` (e.g. "cuda:0 bf16") is shown on the run page."""
        if not self.enabled:
            return
        event: dict[str, Any] = {"type": "status", "phase": str(phase)}
        if device is not None:
            event["device"] = str(device)
        self._emit(event)

    def log(self, values: Mapping[str, float], *, step: int) -> None:
        """`metric` in the argument order of MLflow's and W&B's `log`."""
        self.metric(step, values)

    def print(self, line: str, *, stream: str = "stdout") -> None:
        """A log line: over HTTP an event; under the supervisor, printed (it captures the output)."""
        if self._sender is None:
            # nosemgrep: print-in-product-code - the program's own output, which the supervisor captures
            print(line, file=sys.stderr if stream == "stderr" else sys.stdout, flush=True)
            return
        self._emit({"type": "log", "stream": stream, "line": str(line)})

    def finish(self, status: str = "succeeded", *, message: str = "") -> None:
        """End the run (tracking mode: `succeeded`, `failed` or `cancelled`) and send what is left.
        Under the supervisor the program's exit status says how it ended: this only closes."""
        if self._sender is not None and self._sender.enabled:
            event: dict[str, Any] = {"type": "status", "status": str(status)}
            if message:
                event["message"] = str(message)
            self._emit(event)
        self.close()

    def flush(self, timeout: float | None = None) -> bool:
        """Over HTTP: wait until every event so far is accepted. On a channel: always sent."""
        return self._sender.flush(timeout) if self._sender is not None else True

    def close(self) -> None:
        if self._sender is not None:
            self._sender.close()
        with self._lock:
            fd, self._fd = self._fd, None
        if fd is not None:
            # Already closed by someone else: nothing is lost at this point.
            with contextlib.suppress(OSError):
                os.close(fd)

    def _relative(self, path: str | os.PathLike[str]) -> str:
        candidate = Path(path)
        if candidate.is_absolute() and self._run_dir is not None:
            # The protocol speaks run-dir-relative paths; callers may hold absolute ones.
            base = self._run_dir.resolve()
            resolved = candidate.resolve()
            if resolved.is_relative_to(base):
                candidate = resolved.relative_to(base)
        return candidate.as_posix()

    def _emit(self, event: dict[str, Any]) -> None:
        # allow_nan=False turns any stray non-finite float into an error here
        # instead of an unparseable line on the supervisor's side.
        data = (json.dumps(event, separators=(",", ":"), allow_nan=False) + "\n").encode("utf-8")
        if self._sender is not None:
            self._sender.put(data, event_rows(event))
            return
        with self._lock:
            fd = self._fd
            if fd is None:
                return
            view = memoryview(data)
            try:
                while view:
                    written = os.write(fd, view)
                    view = view[written:]
            except (BrokenPipeError, ConnectionResetError):
                self._fd = None
                sys.stderr.write("controlplane sdk: events reader has gone away; reporting disabled\n")
                sys.stderr.flush()
                with contextlib.suppress(OSError):
                    os.close(fd)
