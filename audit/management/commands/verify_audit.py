"""`python manage.py verify_audit`: exit 0 when the chain holds, 1 naming the first broken record."""

from __future__ import annotations

import sys
from typing import Any

from django.core.management.base import BaseCommand

from audit.chain import verify_chain


class Command(BaseCommand):
    help = "Verify the hash chain of the audit log."

    def handle(self, *args: Any, **options: Any) -> None:
        result = verify_chain()
        if result.ok:
            self.stdout.write(f"audit chain ok: {result.checked} records")
            return
        self.stderr.write(f"audit chain broken at record {result.first_broken_id}: {result.reason}")
        sys.exit(1)
