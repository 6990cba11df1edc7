"""A client generated from the live OpenAPI schema (openapi-python-client) works against the real
stack: it launches a run, follows it by polling its log, and downloads its artifact. The schema is
what third parties build on; this proves it describes what the server answers."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import Stack

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]
PACKAGE = "training_control_plane_api_client"
BIN = Path(sys.executable).parent

SCRIPT = textwrap.dedent(
    """
    import hashlib, json, sys, time
    from training_control_plane_api_client import AuthenticatedClient
    from training_control_plane_api_client.api.runs import (
        runs_artifacts_list, runs_create, runs_logs_retrieve, runs_retrieve)
    from training_control_plane_api_client.api.artifacts import artifacts_download_retrieve
    from training_control_plane_api_client.api.programs import programs_list
    from training_control_plane_api_client.models import FieldErrors, Launch, LaunchParams, LogPage, Run

    client = AuthenticatedClient(base_url=sys.argv[1], token=sys.argv[2])
    names = [p.name for p in programs_list.sync(client=client)]
    refused = runs_create.sync(client=client, body=Launch(name="x", program="no-such-program"))
    assert isinstance(refused, FieldErrors), refused
    params = LaunchParams.from_dict({"lines": 25})
    run = runs_create.sync(client=client, body=Launch(name="generated", program="scripted", params=params))
    assert isinstance(run, Run), run
    seqs, after = [], 0
    while True:
        page = runs_logs_retrieve.sync(str(run.id), client=client, after=after)
        assert isinstance(page, LogPage), page
        seqs += [line.seq for line in page.results]
        after = page.next_after
        if page.run_status in ("succeeded", "failed", "cancelled", "dead") and not page.results:
            break
        time.sleep(0.3)
    final = runs_retrieve.sync(str(run.id), client=client)
    artifact = runs_artifacts_list.sync(str(run.id), client=client)[0]
    body = artifacts_download_retrieve.sync(artifact.id, client=client)
    data = body.payload.read()
    print(json.dumps({
        "programs": names, "status": str(final.status.value), "seqs": seqs, "name": artifact.name,
        "sha_ok": hashlib.sha256(data).hexdigest() == artifact.sha256, "text": data.decode(),
    }))
    """
)


def _venv_with_generated_client(stack: Stack, token: str, where: Path) -> Path:
    schema = httpx.get(
        f"{stack.base_url}/api/v1/schema/?format=json",
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    )
    assert schema.status_code == 200, schema.text
    (where / "schema.json").write_text(schema.text)
    generated = where / "generated"
    subprocess.run(
        [str(BIN / "openapi-python-client"), "generate", "--path", str(where / "schema.json"),
         "--meta", "setup", "--output-path", str(generated)],
        check=True, capture_output=True, env={"PATH": f"{BIN}:/usr/bin:/bin"}, timeout=120,
    )  # fmt: skip
    venv = where / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run(
        [str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check", str(generated)],
        check=True, capture_output=True, timeout=600,
    )  # fmt: skip
    return venv


def test_a_generated_client_launches_follows_and_downloads(
    stack: Stack, live_owner: Any, tmp_path: Path
) -> None:
    token = live_owner[1]
    venv = _venv_with_generated_client(stack, token, tmp_path)
    result = subprocess.run(
        [str(venv / "bin" / "python"), "-c", SCRIPT, stack.base_url, token],
        capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    assert {"tinygpt", "scripted"} <= set(report["programs"])
    assert report["status"] == "succeeded"
    assert report["seqs"] == list(range(1, len(report["seqs"]) + 1))
    assert len(report["seqs"]) >= 25
    assert report["name"] == "result.txt"
    assert report["sha_ok"]
    assert report["text"] == "done\n"
