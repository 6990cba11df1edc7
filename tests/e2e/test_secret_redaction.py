"""The canary: a secret that its program prints, encodes, reports and raises appears nowhere
else — not in the database (log lines, run rows, audit records, a pg_dump), not in any REST
response or websocket frame, not in the web's or the worker's structlog lines — while the program
itself did get the real value. Runs on the real stack: uvicorn, a Celery worker, Postgres, Redis."""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import string
import subprocess
from typing import Any

import httpx
import pytest
from django.db import connection
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from accounts.tokens import do_issue_token
from redaction import MASK
from redaction.forms import leak_pattern
from tests.conftest import Stack, make_user, wait_for_status

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]
TERMINAL = {"succeeded", "failed", "cancelled", "dead"}


def canary_value() -> str:
    # Characters that URL-encoding changes, so that form is a different string to look for.
    alphabet = string.ascii_letters + string.digits + "+/=&"
    while True:
        value = "".join(secrets.choice(alphabet) for _ in range(32))
        if any(c in value for c in "+/=&") and not any(c.isdigit() for c in value[:1]):
            return value


def leaks(text: str, value: str) -> list[str]:
    """The leak forms of `value` found in `text` (every form redaction knows: plain, base64 and
    hex also at an offset, escaped), plus its head (a line cut inside the value)."""
    found = sorted(set(re.findall(leak_pattern(value), text)))
    if value[:10] in text:
        found.append(f"head:{value[:10]}")
    return found


def socket_frames(stack: Stack, token: str, run_id: int) -> list[str]:
    """Every frame (raw text) from launch until the run ends and its last lines have arrived."""
    frames: list[str] = []
    with connect(
        stack.ws_url(f"/ws/runs/{run_id}/?after=0"),
        additional_headers={"Authorization": f"Bearer {token}"},
        open_timeout=10,
    ) as socket:
        ended = False
        while True:
            try:
                raw = socket.recv(timeout=3 if ended else 120)
            except (TimeoutError, ConnectionClosed):
                if ended:
                    return frames
                raise
            frames.append(str(raw))
            frame = json.loads(raw)
            ended = ended or (frame["type"] == "status" and frame["status"] in TERMINAL)


def rest_responses(api: httpx.Client, run_id: int) -> dict[str, str]:
    base = f"/api/v1/runs/{run_id}"
    paths = [
        f"{base}/",
        "/api/v1/runs/",
        f"{base}/logs/?after=0&limit=5000",
        f"{base}/logs.txt",
        f"{base}/logs/tail/",
        f"{base}/metrics/",  # 400 that lists the run's metric keys
        f"{base}/artifacts/",
        f"{base}/charts/",
    ]
    responses = {path: api.get(path) for path in paths}
    for artifact in responses[f"{base}/artifacts/"].json():
        if artifact["name"].endswith(".safetensors"):
            responses[f"preview {artifact['name']}"] = api.get(f"/api/v1/artifacts/{artifact['id']}/preview/")
    keys = responses[f"{base}/metrics/"].json()["key"][0].split(": ", 1)[1].split(", ")
    for key in keys:
        responses[f"metrics {key}"] = api.get(f"{base}/metrics/", params={"key": key})
    for path, response in responses.items():
        assert response.status_code in (200, 400), (path, response.status_code)
    return {path: response.text for path, response in responses.items()}


def database_text(run_id: int) -> dict[str, str]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT seq, stream, line FROM runs_logline")
        lines = cursor.fetchall()
        cursor.execute("SELECT row_to_json(r)::text FROM runs_run r WHERE id = %s", [run_id])
        run = cursor.fetchall()
        cursor.execute("SELECT row_to_json(a)::text FROM runs_runattempt a WHERE run_id = %s", [run_id])
        attempts = cursor.fetchall()
        cursor.execute("SELECT row_to_json(a)::text FROM audit_auditrecord a")
        audit = cursor.fetchall()
        cursor.execute("SELECT key FROM runs_metricseries")
        keys = cursor.fetchall()
        cursor.execute("SELECT row_to_json(a)::text FROM runs_artifact a WHERE run_id = %s", [run_id])
        artifacts = cursor.fetchall()
    return {
        "runs_logline": json.dumps(lines, ensure_ascii=False),
        "runs_run": json.dumps(run, ensure_ascii=False),
        "runs_runattempt": json.dumps(attempts, ensure_ascii=False),
        "audit_auditrecord": json.dumps(audit, ensure_ascii=False),
        "runs_metricseries": json.dumps(keys, ensure_ascii=False),
        "runs_artifact": json.dumps(artifacts, ensure_ascii=False),
    }


def pg_dump() -> str:
    settings = connection.settings_dict
    result = subprocess.run(
        [
            "pg_dump",
            "-h",
            settings["HOST"] or "127.0.0.1",
            "-U",
            settings["USER"] or "postgres",
            settings["NAME"],
        ],
        capture_output=True,
        check=True,
        timeout=120,
    )
    return result.stdout.decode("utf-8", errors="replace")


def test_a_canary_secret_reaches_its_program_and_nothing_else(
    stack: Stack, live_api: httpx.Client, live_owner: Any
) -> None:
    value = canary_value()
    admin = make_user("ada", "admin")
    with stack.client(do_issue_token(admin).plaintext) as admin_api:
        created = admin_api.post(
            "/api/v1/secrets/", json={"name": "CANARY_TOKEN", "value": value, "allowed_users": ["olivia"]}
        )
        assert created.status_code == 201, created.text
        assert leaks(created.text, value) == []
        secret_reads = [
            admin_api.get("/api/v1/secrets/").text,
            admin_api.get("/api/v1/secrets/CANARY_TOKEN/").text,
        ]

    launched = live_api.post(
        "/api/v1/runs/", json={"name": "canary", "program": "canary", "secrets": ["CANARY_TOKEN"]}
    )
    assert launched.status_code == 201, launched.text
    run_id = launched.json()["id"]
    frames = socket_frames(stack, live_owner[1], run_id)
    run = wait_for_status(live_api, run_id, TERMINAL, timeout=120)
    assert (run["status"], run["error"]["kind"]) == ("failed", "program"), run

    responses = rest_responses(live_api, run_id)
    lines = json.loads(responses[f"/api/v1/runs/{run_id}/logs/?after=0&limit=5000"])["results"]
    text = {line["line"] for line in lines}
    # The program got the real value: it printed the value's sha256, which is not a leak form.
    assert f"canary sha256 {hashlib.sha256(value.encode()).hexdigest()}" in text
    # And everything it leaked arrived, masked.
    assert {f"stdout raw {MASK}", f"stderr raw {MASK}", f"base64 {MASK} urlsafe {MASK}"} <= text
    assert f"hex {MASK} HEX {MASK}" in text and f"url {MASK} plus {MASK}" in text
    long_line = next(line for line in text if line.startswith("xxxx"))
    assert long_line.endswith(f"x{MASK} … [{len(value) - 10 + len(' and more') + 1} more bytes truncated]")
    assert any(line.startswith("RuntimeError: the canary *** escaped (***)") for line in text)
    assert "the canary *** escaped" in run["error"]["message"]
    assert any(f'"phase": "{MASK}"' in frame or f'"phase":"{MASK}"' in frame for frame in frames)
    assert f"leak/{MASK}" in responses[f"/api/v1/runs/{run_id}/metrics/"]
    # A model file's header: the stored metadata and the preview read from the file, both masked.
    preview = json.loads(responses["preview model.safetensors"])
    assert preview["metadata"] == {"token": MASK, MASK: "k"}
    assert [tensor["name"] for tensor in preview["tensors"]] == [f"w.{MASK}"]
    model = next(
        a for a in json.loads(responses[f"/api/v1/runs/{run_id}/artifacts/"]) if a["kind"] == "model"
    )
    assert model["metadata"]["safetensors"] == {"token": MASK, MASK: "k"}
    # Escaped forms, base64 at an offset and the malformed event's escaped preview: masked.
    assert any(line.startswith("json {") and MASK in line for line in text)
    assert sum(line.startswith("skipped a malformed event") and MASK in line for line in text) == 2

    stored = database_text(run_id)
    dump = pg_dump()
    assert "CANARY_TOKEN" in dump and f"stdout raw {MASK}" in dump  # the dump is of the right database
    logs = {name: (stack.logs / name).read_text(errors="replace") for name in ("web.log", "worker.log")}
    assert f'"run_id": {run_id}' in logs["worker.log"] or f'"run_id":{run_id}' in logs["worker.log"]

    places = {
        **{f"database {table}": content for table, content in stored.items()},
        "pg_dump": dump,
        **{f"REST {path}": body for path, body in responses.items()},
        **{f"REST secrets {i}": body for i, body in enumerate(secret_reads)},
        "websocket frames": "\n".join(frames),
        **{f"structlog {name}": content for name, content in logs.items()},
    }
    found = {place: leaks(content, value) for place, content in places.items()}
    assert {place: forms for place, forms in found.items() if forms} == {}

    uses = json.loads(stored["audit_auditrecord"])
    use = [json.loads(row[0]) for row in uses if '"secret.use"' in row[0]]
    assert [(u["actor"], u["details"]["run_id"], u["outcome"]) for u in use] == [
        ("olivia", run_id, "success")
    ]
