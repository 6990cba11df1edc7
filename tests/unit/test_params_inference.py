"""A program's params schema, inferred from its script: argparse options or a declared dataclass,
read by running the script under the shim (a real subprocess), without running its work."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
from rest_framework.test import APIClient

from accounts.tokens import do_issue_token
from audit.models import AuditRecord
from runs.params_inference import InferenceError, infer_params_schema
from tests.conftest import make_user

ARGPARSE = """
import argparse
import pathlib
import sys

def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--lr", type=float, default=3e-4, help="learning rate (default %(default)s)")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--mode", default="full", choices=["full", "lora"])
    parser.add_argument("--fp16", action="store_true", help="half precision")
    parser.add_argument("--tags", nargs="+", default=["a"])
    args = parser.parse_args()
    pathlib.Path(sys.argv[0]).with_name("trained").write_text("the work ran")

if __name__ == "__main__":
    main()
"""

DATACLASS = """
from __future__ import annotations
from dataclasses import dataclass, field
from typing import Literal

@dataclass
class Params:
    lr: float = 0.001
    steps: int = field(default=10, metadata={"minimum": 1, "description": "optimizer steps"})
    optimizer: Literal["adam", "sgd"] = "adam"
    shuffle: bool = True

CONTROLPLANE_PARAMS = Params

if __name__ == "__main__":
    raise SystemExit("the work ran")
"""


def script(tmp_path: Path, text: str) -> str:
    path = tmp_path / "train.py"
    path.write_text(text)
    return str(path)


def test_an_argparse_script_gives_its_options_with_types_defaults_and_choices(tmp_path: Path) -> None:
    result = infer_params_schema(["{python}", script(tmp_path, ARGPARSE), "--steps", "5"])
    assert result["source"] == "argparse"
    properties = result["params_schema"]["properties"]
    assert properties["lr"] == {
        "type": "number",
        "default": 3e-4,
        "description": "learning rate (default 0.0003)",
    }
    assert properties["steps"] == {"type": "integer", "default": 100}
    assert properties["mode"] == {"type": "string", "default": "full", "enum": ["full", "lora"]}
    assert properties["fp16"] == {"type": "boolean", "default": False, "description": "half precision"}
    assert "tags" in result["skipped"] and "tags" not in properties
    assert not (tmp_path / "trained").exists()  # its work never started


def test_a_declared_dataclass_gives_its_fields(tmp_path: Path) -> None:
    result = infer_params_schema([sys.executable, script(tmp_path, DATACLASS)])
    assert result["source"] == "dataclass"
    assert result["params_schema"]["properties"] == {
        "lr": {"type": "number", "default": 0.001},
        "steps": {"type": "integer", "default": 10, "minimum": 1, "description": "optimizer steps"},
        "optimizer": {"type": "string", "default": "adam", "enum": ["adam", "sgd"]},
        "shuffle": {"type": "boolean", "default": True},
    }


def test_a_module_command_is_inferred_too(tmp_path: Path) -> None:
    (tmp_path / "mytrainer.py").write_text(ARGPARSE)
    result = infer_params_schema(["{python}", "-m", "mytrainer"], {"PYTHONPATH": str(tmp_path)})
    assert set(result["params_schema"]["properties"]) == {"lr", "steps", "mode", "fp16"}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("raise RuntimeError('boom')", "raised RuntimeError: boom"),
        ("import sys\nsys.exit(3)", "exited (3)"),
        ("x = 1", "found neither an argparse parser nor CONTROLPLANE_PARAMS"),
        ("CONTROLPLANE_PARAMS = 42", "must name a dataclass"),
        ("import socket\nsocket.create_connection(('example.com', 80))", "network access is refused"),
    ],
)
def test_a_script_without_params_is_a_clear_error(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(InferenceError) as caught:
        infer_params_schema(["{python}", script(tmp_path, text)])
    assert message in caught.value.errors["command"]


@pytest.mark.parametrize(
    "command", [["/bin/true"], ["{python}"], ["{python}", "-c", "print(1)"], "python x.py", []]
)
def test_only_python_commands_can_be_inferred(command: Any) -> None:
    with pytest.raises(InferenceError) as caught:
        infer_params_schema(command)
    assert "command" in caught.value.errors


def test_the_script_sees_none_of_the_web_processs_settings(tmp_path: Path) -> None:
    leak = "import os, argparse\np = argparse.ArgumentParser()\np.add_argument('--env', default=','.join(sorted(os.environ)))\np.parse_args()"
    seen = infer_params_schema(["{python}", script(tmp_path, leak)])["params_schema"]["properties"]["env"][
        "default"
    ]
    assert "DATABASE_URL" not in seen and "SECRET_KEY" not in seen and "CONTROLPLANE_SECRETS_KEY" not in seen


def test_the_api_infers_for_admins_and_audits_it(db: Any, tmp_path: Path) -> None:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {do_issue_token(make_user('ada', 'admin')).plaintext}")
    answer = client.post(
        "/api/v1/programs/infer-schema/", {"command": ["{python}", script(tmp_path, ARGPARSE)]}, format="json"
    )
    assert answer.status_code == 200, answer.json()
    schema = answer.json()["params_schema"]
    bad = client.post("/api/v1/programs/infer-schema/", {"command": ["/bin/true"]}, format="json")
    assert bad.status_code == 400 and "command" in bad.json()
    # What it answers registers as is.
    body = {"name": "inferred", "command": ["{python}", "train.py"], "params_schema": schema}
    assert client.post("/api/v1/programs/", body, format="json").status_code == 201
    outcomes = list(
        AuditRecord.objects.filter(action="program.infer_schema")
        .order_by("pk")
        .values_list("outcome", flat=True)
    )
    assert outcomes == ["success", "failure"]
