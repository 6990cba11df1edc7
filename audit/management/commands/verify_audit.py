"""`python manage.py verify_audit`: exit 0 when the chain holds, 1 naming the first broken record.

The signed checkpoints are checked too; a checkpoint problem is printed on its own line.
"""

from __future__ import annotations

import sys
from typing import Any

from django.core.management.base import BaseCommand

from audit.chain import verify_chain


class Command(BaseCommand):
    help = "Verify the hash chain of the audit log and its signed checkpoints."

    def handle(self, *args: Any, **options: Any) -> None:
        result = verify_chain()
        if result.ok:
            self.stdout.write(
                f"audit chain ok: {result.checked} records, {result.checkpoints_checked} signed "
                f"checkpoints (records 1-{result.covered_up_to} covered)"
            )
            return
        self.stderr.write(f"audit chain broken at record {result.first_broken_id}: {result.reason}")
        if result.checkpoint_problem and result.checkpoint_problem != result.reason:
            self.stderr.write(result.checkpoint_problem)
        sys.exit(1)
