"""The training control plane's Python client (`Client`) and command line (`cpctl`).

from controlplane_client import Client
with Client("http://127.0.0.1:8000", token) as cp:
    run = cp.launch("tinygpt", {"steps": 30})
    for event in cp.follow(run["id"]):
        ...
    cp.wait(run["id"])
    cp.download(run["id"], "out/")

Tracking mode (a script anywhere reports into a run of its own; docs/client.md):
run = controlplane_client.start_run(name="sweep-3")
run.log({"loss": 0.1}, step=1)
run.finish()
"""

from controlplane_client.client import Client
from controlplane_client.errors import ClientError
from controlplane_client.sdk import Reporter
from controlplane_client.tracking import start_run
from controlplane_client.types import EXIT_CODES, TERMINAL, Artifact, Event, LogLine, LogPage, Program, Run

__all__ = [
    "EXIT_CODES",
    "TERMINAL",
    "Artifact",
    "Client",
    "ClientError",
    "Event",
    "LogLine",
    "LogPage",
    "Program",
    "Reporter",
    "Run",
    "start_run",
]
