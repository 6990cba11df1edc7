"""The training control plane's Python client (`Client`) and command line (`cpctl`).

from controlplane_client import Client
with Client("http://127.0.0.1:8000", token) as cp:
    run = cp.launch("tinygpt", {"steps": 30})
    for event in cp.follow(run["id"]):
        ...
    cp.wait(run["id"])
    cp.download(run["id"], "out/")
"""

from controlplane_client.client import Client
from controlplane_client.errors import ClientError
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
    "Run",
]
