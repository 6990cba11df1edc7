"""`python manage.py standalone`: the whole product in one process, on embedded defaults.

Serves UI, API and websockets with uvicorn and runs an embedded Celery worker in a thread of the
same process (the in-memory broker and channel layer only work within one process). Ctrl-C stops
the server, ends every training process and records their runs as failed (infrastructure).
"""

from __future__ import annotations

import secrets
import threading
import time
from pathlib import Path
from typing import Any

import structlog
import uvicorn
from celery import current_app as celery_app  # the project app (controlplane.celery), set as current
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import close_old_connections

from audit.tasks import housekeeping_audit_checkpoint
from fleet.agent import SLOTS_OVERRIDE
from fleet.inventory import discover
from fleet.scheduler import schedule_pass
from runs.reconciler import reconcile, recover_in_process_broker
from workers.registry import active_supervisors

log = structlog.get_logger(__name__)


class Command(BaseCommand):
    help = "Run web, API, websockets and an embedded worker in one process (no services needed)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1)")
        parser.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000)")
        parser.add_argument("--slots", type=int, default=1, help="runs trained at the same time (default 1)")
        parser.add_argument("--no-worker", action="store_true", help="serve only; runs stay queued")

    def handle(self, *args: Any, **options: Any) -> None:
        if not 0 < options["port"] < 65536:
            raise CommandError(f"--port must be between 1 and 65535, got {options['port']}")
        if options["slots"] < 1:
            raise CommandError("--slots must be at least 1")
        call_command("migrate", interactive=False, verbosity=0)
        login_hint = self._ensure_admin()
        worker_thread = None if options["no_worker"] else self._start_worker(options["slots"])
        reconciler = None if options["no_worker"] else self._start_reconciler()
        server = uvicorn.Server(
            uvicorn.Config(
                "controlplane.asgi:application",
                host=options["host"],
                port=options["port"],
                lifespan="on",
                log_config=None,
                access_log=False,
                # The app applies CONTROLPLANE_TRUSTED_PROXIES itself (ops.forwarded) and needs the
                # real peer; uvicorn's own rule would trust X-Forwarded-For from 127.0.0.1.
                proxy_headers=False,
                ws_max_size=1024 * 1024,
            )
        )
        url = f"http://{options['host']}:{options['port']}/"
        self.stdout.write(
            f"Control plane (standalone) at {url}\n{login_hint}\nData in {settings.DATA_DIR}. Ctrl-C stops."
        )
        try:
            server.run()
        except KeyboardInterrupt:
            # uvicorn re-raises the Ctrl-C it handled; the shutdown below is the clean exit.
            pass
        finally:
            if reconciler is not None:
                reconciler.set()
            self._stop(worker_thread)

    def _ensure_admin(self) -> str:
        user_model = get_user_model()
        password_file = Path(settings.DATA_DIR) / "admin-password.txt"
        if user_model.objects.filter(is_superuser=True).exists():
            if password_file.exists():
                return f"Sign in as 'admin' with the password in {password_file}"
            return "Sign in with your admin account."
        password = secrets.token_urlsafe(12)
        user_model.objects.create_superuser("admin", "admin@localhost", password)
        password_file.parent.mkdir(parents=True, exist_ok=True)
        password_file.write_text(password + "\n")
        password_file.chmod(0o600)
        return f"Sign in as 'admin' with password {password} (also saved in {password_file})"

    def _start_worker(self, slots: int) -> threading.Thread:
        # The embedded worker joins the fleet like any other (controlplane.celery): its GPUs
        # through NVML or CONTROLPLANE_WORKER_GPUS, else --slots CPU slots.
        SLOTS_OVERRIDE["slots"] = slots
        slots = len(discover(slots=slots))  # as many runs at once as it offers devices
        broker = str(settings.CELERY_BROKER_URL)
        if not broker.startswith("memory://"):
            self.stderr.write(f"note: the embedded worker consumes from {broker} (CELERY_BROKER_URL)")
        worker = celery_app.WorkController(
            pool_cls="threads" if slots > 1 else "solo",
            concurrency=slots,
            queues=[settings.CELERY_TASK_DEFAULT_QUEUE, "housekeeping"],
            without_heartbeat=True,
            without_mingle=True,
            without_gossip=True,
        )
        self._worker = worker
        thread = threading.Thread(target=worker.start, name="embedded-worker", daemon=True)
        thread.start()
        return thread

    def _start_reconciler(self) -> threading.Event:
        """Standalone's beat: reconcile every CONTROLPLANE_RECONCILE_SECONDS in a thread, and
        verify and sign the audit chain on the beat's schedule."""
        stop = threading.Event()
        in_process = str(settings.CELERY_BROKER_URL).startswith("memory://")
        beat_entry: dict[str, Any] = settings.CELERY_BEAT_SCHEDULE["audit-checkpoint"]
        checkpoint_every = float(beat_entry["schedule"])

        def loop() -> None:
            if in_process:
                recover_in_process_broker()
            next_checkpoint = time.monotonic()
            while not stop.is_set():
                try:
                    reconcile()
                    schedule_pass()  # the fleet's safety net, as the beat runs it in production
                    if time.monotonic() >= next_checkpoint:
                        # Moved on first: a pass that raises waits its period, never a busy loop.
                        next_checkpoint = time.monotonic() + checkpoint_every
                        housekeeping_audit_checkpoint()
                except Exception as error:  # one bad pass must not end the loop
                    log.error("reconcile_failed", error=repr(error)[:300])
                finally:
                    close_old_connections()
                # Wake for whichever is due first, so a checkpoint period shorter than the
                # reconcile period (CONTROLPLANE_AUDIT_CHECKPOINT_SECONDS=5) is honoured.
                until_checkpoint = max(0.0, next_checkpoint - time.monotonic())
                stop.wait(min(float(settings.CONTROLPLANE["RECONCILE_SECONDS"]), until_checkpoint))

        threading.Thread(target=loop, name="reconciler", daemon=True).start()
        return stop

    def _stop(self, worker_thread: threading.Thread | None) -> None:
        stopped = active_supervisors.shutdown_all()
        if stopped:
            self.stdout.write(f"Stopping {stopped} training process(es)…")
        deadline = time.monotonic() + float(settings.CONTROLPLANE["CANCEL_GRACE_SECONDS"]) + 10
        while active_supervisors.count() and time.monotonic() < deadline:
            time.sleep(0.1)
        if worker_thread is not None:
            self._worker.stop(in_sighandler=False)
            worker_thread.join(timeout=10)
        self.stdout.write("Stopped.")
