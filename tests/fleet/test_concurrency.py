"""Two scheduler passes at once, on the real Postgres, never give one device twice.

Each thread has its own connection and transaction. With the advisory lock the passes are
serialized and the second places what is left; without it (patched out) the OneToOne constraint
on Reservation.device still refuses the second booking: the pass that lost rolls back whole.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest
from django.db import IntegrityError, connection

from fleet import scheduler
from fleet.models import Device, Reservation
from fleet.scheduler import schedule_pass
from tests.conftest import make_user
from tests.fleet.helpers import gpu_worker, waiting_run

pytestmark = pytest.mark.django_db(transaction=True)


def _at_once(task: Callable[[], Any], threads: int) -> list[BaseException]:
    barrier = threading.Barrier(threads)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            barrier.wait()
            task()
        except BaseException as error:  # collected for the assertions
            errors.append(error)
        finally:
            connection.close()

    workers = [threading.Thread(target=run) for _ in range(threads)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join(timeout=60)
    return errors


def _setup(runs: int) -> None:
    owner = make_user("alice", "admin")
    for n in range(4):
        gpu_worker(f"w{n}", 2)
    for _ in range(runs):
        waiting_run(owner, gpus=1)


def _no_device_twice() -> None:
    reserved = list(Reservation.objects.values_list("device_id", flat=True))
    assert len(reserved) == len(set(reserved))
    assert len(reserved) <= Device.objects.count()
    per_run = list(Reservation.objects.values_list("run_id", flat=True))
    assert len(per_run) == len(set(per_run))  # 1-GPU runs: one device each


def test_concurrent_passes_never_reserve_a_device_twice() -> None:
    _setup(runs=20)
    errors = _at_once(schedule_pass, threads=4)
    assert errors == []
    _no_device_twice()
    assert Reservation.objects.count() == 8  # every device used once


def test_without_the_lock_the_constraint_still_refuses_a_double_booking(monkeypatch: Any) -> None:
    _setup(runs=20)
    monkeypatch.setattr(scheduler, "_lock", lambda: None)
    errors = _at_once(schedule_pass, threads=4)
    _no_device_twice()
    # Passes that read the same free devices lost on the constraint (and wrote nothing).
    assert all(isinstance(error, IntegrityError) for error in errors)
