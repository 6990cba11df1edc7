"""Launch-time checks of a run's dataset params, so a bad source is a 400 naming the field
instead of a run that queues and then fails on a worker.

Any program may take `dataset_url` / `dataset_sha256` (the worker stages the URL for every
program that names one), so these checks apply to the resolved params of every program.
"""

from __future__ import annotations

import re
from typing import Any

from django.conf import settings

from ops.netguard import check_url

SHA256 = re.compile(r"[0-9a-fA-F]{64}")


def check_dataset_params(params: dict[str, Any]) -> dict[str, str]:
    """Field errors (`params.<name>`: message) of the dataset params; empty when they are fine."""
    errors: dict[str, str] = {}
    url = params.get("dataset_url")
    if url not in (None, ""):
        problem = "must be a string" if not isinstance(url, str) else None
        # Only what is certain without DNS: a literal internal address or a loopback name.
        # Names are resolved and every address checked again when the worker fetches.
        problem = problem or check_url(str(url), getattr(settings, "DATASET_ALLOWED_NETWORKS", ()))
        if problem:
            errors["params.dataset_url"] = problem
    sha256 = params.get("dataset_sha256")
    if sha256 not in (None, "") and not (isinstance(sha256, str) and SHA256.fullmatch(sha256)):
        errors["params.dataset_sha256"] = "must be 64 hexadecimal characters (a sha256)"
    return errors
