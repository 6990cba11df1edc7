"""Settings of code snapshots (docs/architecture.md "Code snapshots"), from the environment; kept
apart so controlplane/settings.py stays under the module size limit. settings.py imports each name.
"""

from __future__ import annotations

from controlplane.env import env_choice, env_int

__all__ = ["CODE_SNAPSHOT", "RUN_CODE_ROLE"]

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
