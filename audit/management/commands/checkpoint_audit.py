"""`python manage.py checkpoint_audit`: verify the chain and sign its head (what beat does)."""

from __future__ import annotations

import sys
from typing import Any

from django.core.management.base import BaseCommand

from audit.checkpoints import do_write_checkpoint


class Command(BaseCommand):
    help = "Verify the audit chain and write a signed checkpoint of its head."

    def handle(self, *args: Any, **options: Any) -> None:
        outcome = do_write_checkpoint()
        if outcome.ok:
            self.stdout.write(f"audit checkpoint: {outcome.note}")
            return
        problem = outcome.walk.reason or outcome.checks.problem
        broken = outcome.walk.first_broken_id or outcome.checks.first_broken_id
        self.stderr.write(f"audit chain broken at record {broken}: {problem}; nothing was signed")
        sys.exit(1)
