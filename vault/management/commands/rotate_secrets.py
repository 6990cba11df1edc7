"""`python manage.py rotate_secrets`: re-encrypt every secret with the newest key.

Put the new key first in CONTROLPLANE_SECRETS_KEY (`NEW,OLD`), run this, then drop OLD.
Exits 1 with one line when secrets are not configured or some secret no key can open.
"""

from __future__ import annotations

import sys
from typing import Any

from django.core.management.base import BaseCommand

from vault import crypto
from vault.rotation import rotate_all


class Command(BaseCommand):
    help = "Re-encrypt every secret with the newest key of CONTROLPLANE_SECRETS_KEY."

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            report = rotate_all()
        except crypto.NotConfigured as error:
            self.stderr.write(f"rotate_secrets: {error}")
            sys.exit(1)
        self.stdout.write(
            f"rotated {report.rotated} secrets to key {report.key_id}; "
            f"{report.current} already used it; {len(report.failed)} could not be decrypted"
        )
        if report.failed:
            self.stderr.write(
                "rotate_secrets: no configured key decrypts "
                + ", ".join(report.failed[:20])
                + ": keep the key that encrypted them in CONTROLPLANE_SECRETS_KEY"
            )
            sys.exit(1)
