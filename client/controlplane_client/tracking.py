"""Tracking mode: a script anywhere reports into a run of its own (docs/client.md).

    import controlplane_client
    run = controlplane_client.start_run(name="sweep-3", params={"lr": 3e-4})
    run.log({"loss": 0.1}, step=1)
    run.finish()

`start_run` creates an external run (`POST /api/v1/runs/` with `"program": null`) with the
caller's token and returns the SDK's own `Reporter` (`controlplane_client.sdk`, the same file as
the control plane's `workers/sdk.py`), sending with the run-scoped token the server issued.
"""

from __future__ import annotations

from typing import Any

from controlplane_client import config
from controlplane_client.client import Client
from controlplane_client.sdk import Reporter


def start_run(
    name: str,
    *,
    params: dict[str, Any] | None = None,
    url: str | None = None,
    token: str | None = None,
    **options: Any,
) -> Reporter:
    """Start an external run and return its reporter. `url` and `token` default to
    CONTROLPLANE_URL and CONTROLPLANE_TOKEN, then cpctl's saved sign-in; `options` go to the
    HTTP sender (`max_batch_bytes`, `flush_seconds`, `max_buffer_bytes`, `heartbeat_seconds`)."""
    if url is None or token is None:
        saved = config.load()
        url, token = url or saved.url, token or saved.token
    with Client(url, token) as client:
        run = client.post_json("/api/v1/runs/", {"name": name, "program": None, "params": params or {}})
    return Reporter.over_http(url, int(run["id"]), str(run["run_token"]), **options)
