"""`python manage.py verify_audit`: exit 0 when the chain holds, 1 naming the first broken record.

The signed checkpoints and the external anchors are checked too; a checkpoint or anchor problem
is printed on its own line.
"""

from __future__ import annotations

import sys
from typing import Any

from django.core.management.base import BaseCommand

from audit.chain import verify_chain


class Command(BaseCommand):
    help = "Verify the hash chain of the audit log, its signed checkpoints and their external anchors."

    def handle(self, *args: Any, **options: Any) -> None:
        result = verify_chain()
        if result.ok:
            self.stdout.write(
                f"audit chain ok: {result.checked} records, {result.checkpoints_checked} signed "
                f"checkpoints (records 1-{result.covered_up_to} covered)"
            )
            self.stdout.write(
                f"external anchors: checkpoint {result.anchored_checkpoint_id} (records "
                f"1-{result.anchored_up_to}) in {result.anchor_sinks_checked} sink(s)"
            )
            return
        where = f" at record {result.first_broken_id}" if result.first_broken_id is not None else ""
        self.stderr.write(f"audit chain broken{where}: {result.reason}")
        if result.checkpoint_problem and result.checkpoint_problem != result.reason:
            self.stderr.write(result.checkpoint_problem)
        if result.anchor_problem and result.anchor_problem != result.reason:
            self.stderr.write(result.anchor_problem)
        sys.exit(1)
