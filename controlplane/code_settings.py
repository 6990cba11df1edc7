"""Settings of what runs execute and where they report from: the programs file and catalog seed,
code snapshots, tracking mode, multi-node runs (docs/architecture.md "Programs", "Code snapshots",
"External runs"; docs/distributed.md), from the environment; kept apart so
controlplane/settings.py stays under the module size limit. settings.py imports each name.
"""

from __future__ import annotations

from controlplane.env import env_bool, env_choice, env_float, env_int, env_str

__all__ = ["CODE_SNAPSHOT", "GANG", "PROGRAMS_FILE", "PROGRAMS_SEED_ON_MIGRATE", "RUN_CODE_ROLE", "TRACKING"]

PROGRAMS_FILE = env_str("CONTROLPLANE_PROGRAMS_FILE", "") or None
# `migrate` upserts the file's programs into the catalog (runs/catalog.py: admins' edits win).
PROGRAMS_SEED_ON_MIGRATE = env_bool("CONTROLPLANE_PROGRAMS_SEED_ON_MIGRATE", True)

# Bounds of one snapshot: its archive (compressed), the bytes it unpacks to (zip bombs) and its
# member count; runs/snapshots.py and the client (GET /api/v1/snapshots/limits/) read them.
CODE_SNAPSHOT: dict[str, int] = {
    "MAX_BYTES": env_int("CONTROLPLANE_CODE_SNAPSHOT_MAX_BYTES", 50 * 1024**2, minimum=1024),
    "MAX_UNPACKED_BYTES": env_int("CONTROLPLANE_CODE_SNAPSHOT_MAX_UNPACKED_BYTES", 200 << 20, minimum=1024),
    "MAX_FILES": env_int("CONTROLPLANE_CODE_SNAPSHOT_MAX_FILES", 10_000, minimum=1),
}
# The lowest role that may upload and run its own code (accounts.policy.Action.RUN_CODE); viewers
# launch nothing, so "viewer" would mean nothing.
RUN_CODE_ROLE = env_choice("CONTROLPLANE_RUN_CODE_ROLE", "operator", ("operator", "admin"))

# Tracking mode (runs/tracking.py): how long an external run may stay silent before it fails, and
# the bounds of one report batch and of one artifact upload. Part of settings.CONTROLPLANE.
TRACKING: dict[str, float | int] = {
    "EXTERNAL_RUN_TIMEOUT_SECONDS": env_float("CONTROLPLANE_EXTERNAL_RUN_TIMEOUT_SECONDS", 300, minimum=1),
    "REPORT_MAX_BYTES": env_int("CONTROLPLANE_REPORT_MAX_BYTES", 16 * 1024**2, minimum=64 * 1024),
    "REPORT_MAX_ROWS": env_int("CONTROLPLANE_REPORT_MAX_ROWS", 500_000, minimum=1_000),
    "ARTIFACT_UPLOAD_MAX_BYTES": env_int("CONTROLPLANE_ARTIFACT_UPLOAD_MAX_BYTES", 10 * 1024**3, minimum=1),
}

# Multi-node runs (fleet/gang.py, docs/distributed.md): the address other hosts reach this worker
# at (node 0 hosts the rendezvous there; default: the address its host name resolves to), how
# long the gang's nodes have to join an attempt, and how long node 0, once its program ended,
# waits for the others to report theirs before it records the attempt.
GANG: dict[str, str | float] = {
    "WORKER_ADDRESS": env_str("CONTROLPLANE_WORKER_ADDRESS", ""),
    # Where node 0's rendezvous port is chosen: below the kernel's ephemeral range, so no other
    # process's `bind(port 0)` can take it between the choice and torchrun's bind, and one range
    # to open between the hosts (torchrun's own default port is 29500).
    "PORTS": env_str("CONTROLPLANE_GANG_PORTS", "29500-29999"),
    "JOIN_SECONDS": env_float("CONTROLPLANE_GANG_JOIN_SECONDS", 300, minimum=5),
    "EXIT_WAIT_SECONDS": env_float("CONTROLPLANE_GANG_EXIT_WAIT_SECONDS", 15, minimum=0),
}
