"""`Client(url, token)`: the control plane's REST API, typed, over httpx."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import httpx

from controlplane_client import download as downloads
from controlplane_client import snapshot as snapshots
from controlplane_client import stream
from controlplane_client.errors import ClientError, from_response
from controlplane_client.types import TERMINAL, Artifact, Event, LogPage, Program, Run

# Options of a launch that go into its `resources`.
RESOURCE_OPTIONS = ("pool", "gpus", "nodes")


class Client:
    def __init__(self, url: str, token: str | None = None, *, timeout: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self.token = token
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- plumbing ----------------------------------------------------------------------------

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One request; a connection failure or a 4xx/5xx becomes a ClientError."""
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.HTTPError as error:
            raise ClientError(f"cannot reach {self.url}: {error or type(error).__name__}") from None
        if response.status_code >= 400:
            raise from_response(response)
        return response

    def get_json(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params={k: v for k, v in params.items() if v is not None}).json()

    def post_json(self, path: str, body: Any = None) -> Any:
        return self.request("POST", path, json=body).json()

    # -- sign-in ------------------------------------------------------------------------------

    def sign_in(self, username: str, password: str, name: str = "cpctl") -> str:
        """Exchange a username and password for a token; this client uses it from now on."""
        body = self.post_json(
            "/api/v1/auth/token/", {"username": username, "password": password, "name": name}
        )
        self.token = str(body["token"])
        self.http.headers["Authorization"] = f"Bearer {self.token}"
        return self.token

    def whoami(self) -> dict[str, Any]:
        return cast(dict[str, Any], self.get_json("/api/v1/auth/whoami/"))

    # -- programs and runs -------------------------------------------------------------------

    def programs(self) -> list[Program]:
        return cast(list[Program], self.get_json("/api/v1/programs/"))

    def program(self, name: str) -> Program:
        return cast(Program, self.get_json(f"/api/v1/programs/{name}/"))

    def launch(
        self,
        program: str,
        params: dict[str, Any] | None = None,
        *,
        name: str | None = None,
        gpus: int | None = None,
        pool: str | None = None,
        priority: int | None = None,
        nodes: int | None = None,
        **extra: Any,
    ) -> Run:
        """Launch a run; `gpus`/`pool`/`nodes` become `resources`, sent (like `priority`) only
        when given."""
        body: dict[str, Any] = {"name": name or program, "program": program, "params": params or {}}
        resources = {k: v for k, v in (("pool", pool), ("gpus", gpus), ("nodes", nodes)) if v is not None}
        if resources:
            body["resources"] = resources
        if priority is not None:
            body["priority"] = priority
        body.update({k: v for k, v in extra.items() if v is not None})
        return cast(Run, self.post_json("/api/v1/runs/", body))

    # -- code snapshots ------------------------------------------------------------------------

    def snapshot_limits(self) -> snapshots.Limits:
        """The server's limits; also where a caller not allowed to run code is refused (403)."""
        body = self.get_json("/api/v1/snapshots/limits/")
        return snapshots.Limits(
            int(body["max_bytes"]), int(body["max_unpacked_bytes"]), int(body["max_files"])
        )

    def upload_snapshot(self, directory: Path | str) -> tuple[dict[str, Any], bool]:
        """Pack `directory` and send it unless the server has it already; (snapshot, sent)."""
        if not Path(directory).is_dir():
            raise ClientError(f"no such directory: {directory}")
        packed = snapshots.pack(directory, self.snapshot_limits())
        path = f"/api/v1/snapshots/{packed.sha256}/"
        try:
            return cast(dict[str, Any], self.get_json(path)), False
        except ClientError as error:
            if error.status != 404:
                raise
        headers = {"Content-Type": "application/gzip"}
        response = self.request("PUT", path, content=packed.data, headers=headers)
        return cast(dict[str, Any], response.json()), True

    def launch_code(
        self,
        directory: Path | str,
        command: list[str],
        *,
        name: str | None = None,
        gpus: int | None = None,
        pool: str | None = None,
        priority: int | None = None,
        **extra: Any,
    ) -> Run:
        """Upload `directory` (once) and launch `command` in it; the run's `snapshot` is its sha256."""
        snapshot, _ = self.upload_snapshot(directory)
        return self.launch_snapshot(
            snapshot["sha256"],
            command,
            name=name or Path(directory).resolve().name,
            gpus=gpus,
            pool=pool,
            priority=priority,
            **extra,
        )

    def launch_snapshot(self, sha256: str, command: list[str], *, name: str, **options: Any) -> Run:
        """Launch `command` in an uploaded snapshot; options as for `launch`."""
        body: dict[str, Any] = {"name": name, "code": {"snapshot": sha256, "command": command}}
        resources = {k: options.pop(k) for k in RESOURCE_OPTIONS if options.get(k) is not None}
        if resources:
            body["resources"] = resources
        body.update({k: v for k, v in options.items() if v is not None and k not in RESOURCE_OPTIONS})
        return cast(Run, self.post_json("/api/v1/runs/", body))

    def clone(self, run_id: int) -> Run:
        """A new run like `run_id`: its program and params, or its code snapshot and command."""
        return cast(Run, self.post_json(f"/api/v1/runs/{run_id}/clone/"))

    def runs(self, *, status: str | None = None, limit: int = 50, **filters: str | None) -> list[Run]:
        """Newest first, following the cursor pages until `limit` runs."""
        found: list[Run] = []
        params: dict[str, Any] = {"status": status, "page_size": min(limit, 200), **filters}
        page = self.get_json("/api/v1/runs/", **params)
        while True:
            found.extend(page["results"])
            if len(found) >= limit or not page.get("next"):
                return found[:limit]
            page = self.request("GET", page["next"]).json()

    def run(self, run_id: int) -> Run:
        return cast(Run, self.get_json(f"/api/v1/runs/{run_id}/"))

    def cancel(self, run_id: int) -> Run:
        return cast(Run, self.post_json(f"/api/v1/runs/{run_id}/cancel/"))

    def retry(self, run_id: int) -> Run:
        return cast(Run, self.post_json(f"/api/v1/runs/{run_id}/retry/"))

    def logs(self, run_id: int, after: int = 0, limit: int = 1000) -> LogPage:
        """One page of log lines with seq > `after`."""
        return cast(LogPage, self.get_json(f"/api/v1/runs/{run_id}/logs/", after=after, limit=limit))

    def follow(self, run_id: int, after: int = 0, *, drop_every: int | None = None) -> Iterator[Event]:
        """Log lines (and status changes) as they happen, until the run ends.

        Over the websocket; a dropped connection resumes after the last seq seen, so no line is
        missed or repeated. `drop_every` closes the socket after that many frames (for testing).
        """
        return stream.follow(self, run_id, after, drop_every=drop_every)

    def wait(self, run_id: int, *, interval: float = 1.0, timeout: float | None = None) -> Run:
        """Poll until the run is in a final state; returns it."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            run = self.run(run_id)
            if run["status"] in TERMINAL:
                return run
            if deadline is not None and time.monotonic() > deadline:
                raise ClientError(f"run {run_id} is still {run['status']} after {timeout:g}s")
            time.sleep(interval)

    def artifacts(self, run_id: int) -> list[Artifact]:
        return cast(list[Artifact], self.get_json(f"/api/v1/runs/{run_id}/artifacts/"))

    def download(
        self,
        run_id: int,
        out_dir: Path | str = ".",
        *,
        name: str | None = None,
        progress: Callable[[str, int, int], None] | None = None,
    ) -> list[Path]:
        """Every artifact (or the one called `name`) into `out_dir`, resumed and sha256-checked."""
        artifacts = self.artifacts(run_id)
        if name is not None:
            artifacts = [a for a in artifacts if a["name"] == name]
            if not artifacts:
                raise ClientError(f"run {run_id} has no artifact named {name!r}")
        return [downloads.fetch(self, artifact, Path(out_dir), progress) for artifact in artifacts]

    def metric_finals(self, run_id: int) -> dict[str, float | None]:
        """Each metric's last value."""
        body = self.get_json(f"/api/v1/runs/{run_id}/charts/", max_points=20_000)
        finals: dict[str, float | None] = {}
        for series in body.get("series", []):
            values = series.get("values") or []
            finals[series["key"]] = values[-1] if values else None
        return finals
