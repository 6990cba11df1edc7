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
            if outcome.anchor_failures:
                # Signed, but not yet outside the database: the next pass retries (exit 1 to say so).
                self.stderr.write(f"could not anchor in {', '.join(outcome.anchor_failures)}")
                sys.exit(1)
            return
        self.stderr.write(
            f"audit chain broken at record {outcome.first_broken_id}: {outcome.problem}; nothing was signed"
        )
        sys.exit(1)
