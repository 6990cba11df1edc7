"""A supervisor through database outages that the chaos suite's timings do not reach.

The supervisor runs in its own process (as in a worker) and reaches Postgres through a TCP relay
that the test cuts and restores: every open connection drops and new ones are closed at once, as
when the database host goes away. The outages are shaped to hit one rule each: a lease that cannot
be renewed stops the program; a final flush waits for the database while the lease lasts; a
buffer that outgrows its bound drops its oldest lines and says how many.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.contrib.auth.models import User

from runs.models import LogLine, Run, RunStatus
from runs.programs import get_program, resolve_params
from runs.reconciler import reconcile
from tests.conftest import ROOT, process_alive, process_env, wait_for
from tests.workers.test_supervisor_edges import PROGRAMS as EDGE_PROGRAMS

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]
QUEUE = "test-supervisor-outages"  # nothing consumes it: each run is supervised by the test

SUPERVISE = (
    "import sys, django; django.setup(); from pathlib import Path; "
    "from workers.supervisor import Supervisor; "
    "Path(sys.argv[2]).write_text(Supervisor(int(sys.argv[1])).run())"
)


class Relay:
    """127.0.0.1:<port> → Postgres, with a switch that drops every connection through it."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self.down = threading.Event()
        self.sockets: list[socket.socket] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self.down.is_set():
                client.close()
                continue
            try:
                server = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            with self.lock:
                self.sockets += [client, server]
            for source, target in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(source, target), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, target: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                target.sendall(data)
        for sock in (source, target):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        self.down.set()
        with self.lock:
            sockets, self.sockets = self.sockets, []
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def restore(self) -> None:
        self.down.clear()

    def close(self) -> None:
        self.cut()
        self.listener.close()


@dataclass
class Worker:
    process: subprocess.Popen[bytes]
    result_file: Path
    data_dir: Path
    log: Path

    def result(self, timeout: float) -> str:
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise AssertionError(f"the supervisor did not end:\n{self.log.read_text()[-3000:]}") from None
        assert self.process.returncode == 0, self.log.read_text()[-3000:]
        return self.result_file.read_text()

    def run_dir(self, run: Run) -> Path:
        return self.data_dir / "runs" / str(run.pk)


@pytest.fixture
def relay() -> Iterator[Relay]:
    db = settings.DATABASES["default"]
    link = Relay((db["HOST"] or "127.0.0.1", int(db["PORT"] or 5432)))
    yield link
    link.close()


@pytest.fixture
def programs_file(settings: Any, tmp_path: Path) -> Path:
    """The suite's programs plus tests/workers/edge_program.py, for this process and the supervisor's."""
    path = tmp_path / "programs.toml"
    path.write_text((ROOT / "tests" / "fixtures" / "programs.toml").read_text() + EDGE_PROGRAMS)
    settings.PROGRAMS_FILE = str(path)
    return path


@pytest.fixture
def supervise(relay: Relay, programs_file: Path, tmp_path: Path) -> Iterator[Any]:
    started: list[Worker] = []

    def start(run: Run, **timings: str) -> Worker:
        db = settings.DATABASES["default"]
        data_dir = tmp_path / f"data-{run.pk}"
        env = process_env(
            data_dir,
            DATABASE_URL=f"postgres://{db['USER']}@127.0.0.1:{relay.port}/{db['NAME']}",
            REDIS_URL=settings.REDIS_URL,
            CELERY_BROKER_URL=settings.CELERY_BROKER_URL,
            SECRET_KEY=settings.SECRET_KEY,
            DATABASE_POOL_TIMEOUT="1",
            CONTROLPLANE_PROGRAMS_FILE=str(programs_file),
            CONTROLPLANE_FLUSH_INTERVAL_SECONDS="0.1",
            **timings,
        )
        log = tmp_path / f"supervisor-{run.pk}.log"
        worker = Worker(
            subprocess.Popen(
                [sys.executable, "-c", SUPERVISE, str(run.pk), str(tmp_path / f"result-{run.pk}")],
                cwd=ROOT,
                env=env,
                stdout=log.open("wb"),
                stderr=subprocess.STDOUT,
            ),
            tmp_path / f"result-{run.pk}",
            data_dir,
            log,
        )
        started.append(worker)
        return worker

    yield start
    for worker in started:
        if worker.process.poll() is None:
            worker.process.kill()
            worker.process.wait()


def scripted_run(owner: User, program_name: str = "scripted", **params: Any) -> Run:
    program = get_program(program_name)
    assert program is not None
    return Run.objects.create(
        name="outage", owner=owner, program=program_name, params=resolve_params(program, params), queue=QUEUE
    )


def lines(run: Run) -> list[str]:
    return list(LogLine.objects.filter(run=run).order_by("seq").values_list("line", flat=True))


def test_a_lease_that_cannot_be_renewed_stops_the_program_before_anyone_else_starts(
    owner: User, relay: Relay, supervise: Any
) -> None:
    run = scripted_run(owner, mode="sleep", sleep=120)
    worker = supervise(run, CONTROLPLANE_LEASE_SECONDS="3", CONTROLPLANE_HEARTBEAT_SECONDS="0.5")
    pid_file = worker.run_dir(run) / "program.pid"
    wait_for(pid_file.exists, 60, message="the program to start")
    relay.cut()
    cut_at = time.monotonic()
    assert worker.result(timeout=30) == "abandoned"
    # 0.9 of the 3 s lease after the last renewal, plus 1 s per failed renewal: seconds, where
    # the program would have run for two minutes (20 s leaves room for a saturated machine).
    assert time.monotonic() - cut_at < 20
    assert not process_alive(int(pid_file.read_text()))
    relay.restore()
    run.refresh_from_db()
    assert run.status == RunStatus.RUNNING  # nothing could be written; the lease speaks for it
    assert run.lease_expires_at is not None
    report = reconcile(run.lease_expires_at + timedelta(seconds=1))
    assert report.requeued == [run.pk]


def test_a_database_still_down_when_the_lease_would_end_makes_the_supervisor_give_up_the_attempt(
    owner: User, relay: Relay, supervise: Any
) -> None:
    run = scripted_run(owner, "edge", mode="print", lines=200, seconds=1)
    # A 6 s lease: the program (about a second of output) ends well before the watch loop could
    # call the lease lost, so it is the final flush that gives up.
    worker = supervise(run, CONTROLPLANE_LEASE_SECONDS="6", CONTROLPLANE_HEARTBEAT_SECONDS="0.5")
    wait_for(lambda: LogLine.objects.filter(run=run, line__startswith="line ").exists(), 60, message="output")
    relay.cut()
    # The program ends during the outage; the final flush retries for 0.9 of the lease, then stops.
    assert worker.result(timeout=60) == "abandoned"
    assert '"event": "final_flush_failed"' in worker.log.read_text()
    relay.restore()
    run.refresh_from_db()
    assert run.status == RunStatus.RUNNING
    assert run.lease_expires_at is not None
    assert reconcile(run.lease_expires_at + timedelta(seconds=1)).requeued == [run.pk]


def test_a_final_flush_waits_out_a_short_outage_and_the_run_succeeds_with_every_line(
    owner: User, relay: Relay, supervise: Any
) -> None:
    run = scripted_run(owner, mode="drip", lines=40, sleep=2)
    worker = supervise(run, CONTROLPLANE_LEASE_SECONDS="30", CONTROLPLANE_HEARTBEAT_SECONDS="0.5")
    wait_for(lambda: LogLine.objects.filter(run=run, line__startswith="line ").exists(), 60, message="output")
    relay.cut()
    # The program prints its last lines and exits while the database is away.
    time.sleep(4)
    relay.restore()
    assert worker.result(timeout=60) == RunStatus.SUCCEEDED
    text = lines(run)
    printed = [line.split()[1] for line in text if line.startswith("line ")]
    assert printed == [str(number) for number in range(1, 41)]
    seqs = list(LogLine.objects.filter(run=run).order_by("seq").values_list("seq", flat=True))
    assert seqs == list(range(1, len(seqs) + 1))
    assert Run.objects.get(pk=run.pk).finished_at is not None


def run_through_an_outage(owner: User, relay: Relay, supervise: Any, run: Run, *, outage: float) -> list[str]:
    worker = supervise(
        run,
        CONTROLPLANE_LEASE_SECONDS="30",
        CONTROLPLANE_HEARTBEAT_SECONDS="0.5",
        CONTROLPLANE_MAX_BUFFERED_LINES="1000",
    )
    wait_for(lambda: LogLine.objects.filter(run=run, line__startswith="line ").exists(), 60, message="output")
    relay.cut()
    time.sleep(outage)
    relay.restore()
    assert worker.result(timeout=60) == RunStatus.SUCCEEDED
    return lines(run)


def assert_oldest_lines_dropped_and_reported(text: list[str], lines_total: int) -> None:
    notes = [line for line in text if "log lines were dropped while the database was unreachable" in line]
    assert len(notes) == 1, notes
    dropped = int(notes[0].split()[0])
    printed = [int(line.split()[1]) for line in text if line.startswith("line ")]
    # Oldest first: a head written before the cut, one gap of exactly the count the note gives,
    # and an unbroken tail to the program's last line.
    gaps = [i for i in range(1, len(printed)) if printed[i] != printed[i - 1] + 1]
    assert (printed[0], printed[-1], len(gaps)) == (1, lines_total, 1)
    assert printed[gaps[0]] - printed[gaps[0] - 1] - 1 == dropped
    # Said once the database is back: after the lines of the cut, never before them.
    assert text.index(notes[0]) > text.index(f"line {printed[gaps[0] - 1]} " + "x" * 10)


def test_lines_past_the_buffer_bound_are_dropped_oldest_first_and_the_gap_is_reported(
    owner: User, relay: Relay, supervise: Any
) -> None:
    # 12000 lines over 12 s (or more, on a busy machine), 6 s of them without a database: the
    # failed writes (1 s each, backing off 0.2, 0.4, 0.8 s) come late enough to hold well over
    # the 1000-line bound, and the database is back while the program still prints.
    run = scripted_run(owner, mode="drip", lines=12000, sleep=12)
    text = run_through_an_outage(owner, relay, supervise, run, outage=6)
    assert_oldest_lines_dropped_and_reported(text, 12000)


def test_the_gap_is_reported_even_when_the_database_returns_only_for_the_final_flush(
    owner: User, relay: Relay, supervise: Any
) -> None:
    # A program that prints and reports nothing else, done long before the database returns:
    # the recovering write is the supervisor's last.
    run = scripted_run(owner, "edge", mode="print", lines=3000, seconds=2)
    text = run_through_an_outage(owner, relay, supervise, run, outage=8)
    assert_oldest_lines_dropped_and_reported(text, 3000)
