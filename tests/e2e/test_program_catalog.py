"""A program registered through the API, with no programs file entry, runs on a real worker: the
worker reads the catalog from Postgres. Retiring it refuses new launches."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from django.contrib.auth.models import User

from accounts.tokens import do_issue_token
from tests.conftest import Stack, make_user, wait_for_status
from tests.e2e.test_training_flow import TERMINAL, all_logs

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

SCRIPT = """
import argparse, json, os

parser = argparse.ArgumentParser()
parser.add_argument("--greeting", default="hello", help="what to say")
parser.add_argument("--times", type=int, default=1)
# The run's params fill the parser; the command line may still override them.
args = parser.parse_args(namespace=argparse.Namespace(**json.load(open(os.environ["CONTROLPLANE_PARAMS"]))))
for _ in range(args.times):
    print(f"catalog program says {args.greeting} (MODE={os.environ['MODE']})")
"""


def test_a_program_registered_through_the_api_runs_on_a_worker_without_any_file(
    stack: Stack, live_api: httpx.Client, live_owner: tuple[User, str], tmp_path: Path
) -> None:
    script = tmp_path / "catalog_train.py"
    script.write_text(SCRIPT)
    admin = make_user("ada", "admin")
    with stack.client(do_issue_token(admin).plaintext) as admin_api:
        inferred = admin_api.post(
            "/api/v1/programs/infer-schema/", json={"command": ["{python}", str(script)]}
        )
        assert inferred.status_code == 200, inferred.text
        schema = inferred.json()["params_schema"]
        assert schema["properties"]["times"] == {"type": "integer", "default": 1}
        body = {
            "name": "catalogued",
            "command": ["{python}", str(script)],
            "params_schema": schema,
            "env": {"MODE": "e2e"},
        }
        assert admin_api.post("/api/v1/programs/", json=body).status_code == 201
        launched = live_api.post(
            "/api/v1/runs/",
            json={
                "name": "from the catalog",
                "program": "catalogued",
                "params": {"times": 3, "greeting": "hi"},
            },
        )
        assert launched.status_code == 201, launched.text
        run = wait_for_status(live_api, launched.json()["id"], TERMINAL)
        assert run["status"] == "succeeded", run
        said = [
            line["line"] for line in all_logs(live_api, run["id"]) if "catalog program says" in line["line"]
        ]
        assert said == ["catalog program says hi (MODE=e2e)"] * 3
        assert admin_api.post("/api/v1/programs/catalogued/retire/").status_code == 200
        refused = live_api.post("/api/v1/runs/", json={"name": "again", "program": "catalogued"})
        assert refused.status_code == 400
        assert "retired" in refused.json()["program"][0]
        assert live_api.get(f"/api/v1/runs/{run['id']}/").json()["program"] == "catalogued"
