"""The Celery application; tasks live in `workers.tasks`."""

from __future__ import annotations

import os
from typing import Any

import structlog
from celery import Celery, signals

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "controlplane.settings")

app = Celery("controlplane")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks(["workers"])


@signals.before_task_publish.connect
def _carry_request_id(headers: dict[str, Any] | None = None, **_: Any) -> None:
    # The request id rides in the message headers so the worker binds the same id.
    request_id = structlog.contextvars.get_contextvars().get("request_id")
    if headers is not None and request_id and "request_id" not in headers:
        headers["request_id"] = request_id


@signals.task_prerun.connect
def _bind_task_context(task_id: str | None = None, task: Any = None, **_: Any) -> None:
    structlog.contextvars.clear_contextvars()
    request_id = getattr(task.request, "request_id", None) if task is not None else None
    structlog.contextvars.bind_contextvars(task_id=task_id, request_id=request_id)


@signals.task_postrun.connect
def _unbind_task_context(**_: Any) -> None:
    structlog.contextvars.clear_contextvars()


@signals.worker_shutting_down.connect
def _stop_training_on_shutdown(**_: Any) -> None:
    # A warm shutdown (SIGTERM, a deploy) would otherwise wait for runs that last hours. The
    # supervisors stop their programs (SIGTERM: a final checkpoint) and the runs are queued again
    # to resume elsewhere. Needs the threads pool, where supervisors live in this process.
    from workers.registry import active_supervisors

    active_supervisors.shutdown_all()


@signals.setup_logging.connect
def _keep_our_logging(**_: Any) -> None:
    # Connecting this signal stops Celery from replacing the structlog configuration.
    from django.conf import settings

    settings.INSTALLED_APPS  # noqa: B018 - importing settings configures logging
