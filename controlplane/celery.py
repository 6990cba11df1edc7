"""The Celery application; tasks live in `workers.tasks` (and `audit.tasks`, imported by its app).

Signals wire the observability of a worker: the request id and task id bound on every line a task
logs, the heartbeat that `/readyz` and `controlplane_workers_live` count, the metrics endpoint on
`CONTROLPLANE_WORKER_METRICS_PORT`, and GPU metrics where NVML finds a GPU.
"""

from __future__ import annotations

import os
from typing import Any

import structlog
from celery import Celery, signals

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "controlplane.settings")

app = Celery("controlplane")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks(["workers", "fleet"])

log = structlog.get_logger(__name__)
_heartbeats: dict[int, Any] = {}
_agents: dict[int, Any] = {}


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
    structlog.contextvars.bind_contextvars(task_id=task_id, request_id=request_id or None)


@signals.task_postrun.connect
def _unbind_task_context(**_: Any) -> None:
    structlog.contextvars.clear_contextvars()


@signals.worker_shutting_down.connect
def _stop_training_on_shutdown(**_: Any) -> None:
    # A warm shutdown (SIGTERM, a deploy) would otherwise wait for runs that last hours. The
    # supervisors stop their programs (SIGTERM: a final checkpoint) and the runs are queued again
    # to resume elsewhere. Needs the threads pool, where supervisors live in this process.
    from workers.registry import active_supervisors

    # Leave the fleet first: the runs queued again below must be placed on other workers.
    for agent in list(_agents.values()):
        agent.stop()
    active_supervisors.shutdown_all()


@signals.celeryd_init.connect
def _serve_worker_metrics(**_: Any) -> None:
    # Only a worker started from the command line: the standalone embedded worker never sends
    # celeryd_init, and shares the web process's registry and /metrics instead.
    from ops.worker_metrics import start_server

    start_server()


@signals.worker_init.connect
def _join_fleet(sender: Any = None, **_: Any) -> None:
    # Before the consumer starts: the worker consumes its own queue (where the scheduler sends the
    # runs it placed here) besides its -Q queues, and heartbeats its row with its devices.
    if sender is None or not hasattr(sender, "app"):
        return
    consumed = set(sender.app.amqp.queues.consume_from)
    if consumed and consumed <= {"housekeeping"}:
        return  # a housekeeping worker (`-Q housekeeping`) runs no training: it offers no devices
    from fleet.agent import SLOTS_OVERRIDE, Agent, queue_for

    agent = Agent(str(sender.hostname), slots=SLOTS_OVERRIDE.get("slots"))
    sender.app.amqp.queues.select_add(queue_for(str(sender.hostname)))
    agent.start()
    _agents[id(sender)] = agent
    offered = len(agent.devices)
    if isinstance(sender.concurrency, int) and sender.concurrency < offered:
        log.warning("worker_concurrency_below_devices", concurrency=sender.concurrency, devices=offered)


@signals.worker_init.connect
def _start_worker_observability(sender: Any = None, **_: Any) -> None:
    from ops import gpu
    from ops.worker_heartbeat import Heartbeat

    queues = sorted(sender.app.amqp.queues.consume_from) if sender is not None else []
    heartbeat = Heartbeat(str(getattr(sender, "hostname", "worker")), queues)
    heartbeat.start()
    _heartbeats[id(sender)] = heartbeat
    gpu.register()
    if "prefork" in str(getattr(sender, "pool_cls", "")).lower():
        # Tasks run in child processes whose metrics never reach this process's endpoint.
        log.warning("worker_metrics_need_threads_pool", pool="prefork", hint="start with --pool threads")
    log.info("worker_observability_started", queues=queues, heartbeat_key=heartbeat.key)


@signals.worker_shutdown.connect
def _leave_fleet(sender: Any = None, **_: Any) -> None:
    agent = _agents.pop(id(sender), None)
    if agent is not None:
        agent.stop()


@signals.worker_shutdown.connect
def _stop_worker_observability(sender: Any = None, **_: Any) -> None:
    heartbeat = _heartbeats.pop(id(sender), None)
    if heartbeat is not None:
        heartbeat.stop()


@signals.setup_logging.connect
def _keep_our_logging(**_: Any) -> None:
    # Connecting this signal stops Celery from replacing the structlog configuration.
    from django.conf import settings

    settings.INSTALLED_APPS  # noqa: B018 - importing settings configures logging
