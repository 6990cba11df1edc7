"""The programs API: what a caller may launch, with each program's params as a JSON Schema."""

from __future__ import annotations

from typing import Any

from rest_framework.test import APIClient


def test_the_list_names_every_program_with_a_params_schema(api: APIClient) -> None:
    response = api.get("/api/v1/programs/")
    assert response.status_code == 200
    programs = {p["name"]: p for p in response.json()}
    assert {"tinygpt", "scripted"} <= set(programs)
    assert next(iter(programs)) == "tinygpt"  # built-in first
    scripted = programs["scripted"]
    assert scripted["builtin"] is False
    assert scripted["queue"] == "training"
    schema = scripted["params_schema"]
    assert schema["type"] == "object"
    assert schema["additionalProperties"] is False
    assert schema["properties"]["mode"]["enum"][0] == "ok"
    assert scripted["defaults"]["lines"] == 10
    assert "command" not in scripted  # how it runs stays on the server
    assert programs["tinygpt"]["builtin"] is True
    assert (programs["tinygpt"]["launcher"], programs["tinygpt-ddp"]["launcher"]) == ("direct", "torchrun")
    assert programs["tinygpt"]["params_schema"]["properties"]["steps"]["type"] == "integer"


def test_one_program_and_an_unknown_one(api: APIClient) -> None:
    body: Any = api.get("/api/v1/programs/scripted/").json()
    assert body["name"] == "scripted"
    missing = api.get("/api/v1/programs/nope/")
    assert missing.status_code == 404
    assert missing.json()["detail"]


def test_programs_need_a_signed_in_caller(anonymous_api: APIClient) -> None:
    assert anonymous_api.get("/api/v1/programs/").status_code == 401
