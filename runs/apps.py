from typing import Any

from django.apps import AppConfig
from django.conf import settings
from django.db.models.signals import post_migrate


def seed_programs_after_migrate(plan: Any = None, using: str = "default", **_: Any) -> None:
    """`migrate` seeds the catalog from CONTROLPLANE_PROGRAMS_FILE (compose's migrate service, the
    Kubernetes migrate Job and `standalone` all run it before a release serves). Not after a
    `flush` (no plan): that is a test emptying its database."""
    if plan is None or not settings.PROGRAMS_SEED_ON_MIGRATE or not settings.PROGRAMS_FILE:
        return
    from runs.catalog import seed_programs

    seed_programs()


class RunsConfig(AppConfig):
    name = "runs"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # The runs app registers into ops (ops imports no app): its counts for /metrics.
        from ops.collectors import register_queue_source, register_run_counts
        from runs.metrics import program_queues, read_run_counts

        register_run_counts(read_run_counts)
        register_queue_source(program_queues)
        # A bad CONTROLPLANE_X_ACCEL_PREFIX stops the start, not the first download.
        from runs.downloads import check_x_accel_prefix

        check_x_accel_prefix()
        post_migrate.connect(seed_programs_after_migrate, sender=self, dispatch_uid="runs.seed_programs")
        # Tracking mode: a run-scoped token stops working when its run ends, however it ends.
        from runs.lifecycle import on_transition
        from runs.tracking import revoke_tokens_of_ended_runs

        on_transition(revoke_tokens_of_ended_runs)
