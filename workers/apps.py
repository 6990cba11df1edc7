from __future__ import annotations

import sys

from django.apps import AppConfig


class WorkersConfig(AppConfig):
    """The worker side: supervisors, Celery tasks, the standalone command and built-in programs."""

    name = "workers"

    def ready(self) -> None:
        # The program registry (runs.programs) sits below this package in the layer map, so the
        # programs shipped here register themselves into it, in every process (web and worker).
        from runs.programs import register_builtin
        from workers.programs.tinygpt import schema as tinygpt

        register_builtin(
            "tinygpt",
            command=(sys.executable, "-m", "workers.programs.tinygpt"),
            description=tinygpt.DESCRIPTION,
            params=tinygpt.PARAMS,
            cross_check=tinygpt.cross_field_errors,
        )
