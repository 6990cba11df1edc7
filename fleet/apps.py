from django.apps import AppConfig


class FleetConfig(AppConfig):
    name = "fleet"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # runs sits below the fleet and never imports it: the fleet registers into runs instead.
        from fleet import hooks
        from fleet.metrics import read_fleet_view
        from fleet.selectors import placements_of
        from ops.fleet_view import register_fleet_view
        from runs import lifecycle
        from runs.launch_hooks import (
            register_launch_validator,
            register_placement_reader,
            register_pool_lister,
        )

        lifecycle.on_transition(hooks.after_transition, admits=True)
        register_launch_validator(hooks.validate_launch)
        register_placement_reader(placements_of)
        # ops imports no app: the fleet gives /metrics its device and queue counts.
        register_fleet_view(read_fleet_view)
        register_pool_lister(hooks.pool_capacities)
