"""`manage.py seed_programs [--file PATH]`: upsert the programs file into the catalog.

`migrate` runs the same seed (CONTROLPLANE_PROGRAMS_SEED_ON_MIGRATE); this command is for a file
changed between releases. Programs an admin edited or retired since are kept as they are.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from ops.configuration import ConfigError
from runs.catalog import seed_programs


class Command(BaseCommand):
    help = "Upsert CONTROLPLANE_PROGRAMS_FILE's programs into the catalog; admins' edits are kept."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--file", type=Path, help="a programs TOML file (default: CONTROLPLANE_PROGRAMS_FILE)"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            report = seed_programs(options["file"])
        except ConfigError as error:
            raise CommandError(str(error)) from None
        for outcome in ("created", "updated", "unchanged", "kept", "skipped"):
            names = getattr(report, outcome)
            if names:
                self.stdout.write(f"{outcome}: {', '.join(names)}")
