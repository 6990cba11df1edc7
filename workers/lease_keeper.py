"""The lease kept alive from a thread while the watch loop is busy with one long step.

Storing a checkpoint or an artifact hashes and uploads it in the loop's thread (workers/files.py):
a 20 GiB checkpoint to a bucket takes minutes, longer than a lease. Without a renewal meanwhile
the reconciler would take the run for lost and start a second attempt beside the first. The
program's output waits in the bounded queue meanwhile (workers/streams.py), and is written
once the step is done.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from django.db import DatabaseError, close_old_connections, connection

from runs.attempts import StaleAttempt


@contextmanager
def lease_kept(renew: Callable[[], object], every: float, log: Any) -> Iterator[threading.Event]:
    """Call `renew` every `every` seconds from a thread until the block ends; the event yielded
    is set when `renew` found the attempt gone (StaleAttempt): the caller fences off."""
    stop, lost = threading.Event(), threading.Event()

    def keep() -> None:
        try:
            while not stop.wait(every):
                try:
                    renew()
                except StaleAttempt:
                    lost.set()
                    return
                except DatabaseError as error:  # the loop's own renewals judge an outage
                    log.warning("lease_keeper_renewal_failed", error=str(error)[:200])
                    close_old_connections()
        finally:
            connection.close()  # this thread's own connection, if it opened one

    keeper = threading.Thread(target=keep, name="lease-keeper", daemon=True)
    keeper.start()
    try:
        yield lost
    finally:
        stop.set()
        keeper.join()
