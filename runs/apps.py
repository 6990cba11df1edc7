from django.apps import AppConfig


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
        # Tracking mode: a run-scoped token stops working when its run ends, however it ends.
        from runs.lifecycle import on_transition
        from runs.tracking import revoke_tokens_of_ended_runs

        on_transition(revoke_tokens_of_ended_runs)
