"""Launching runs through the REST API: the contract, and every kind of bad input."""

from __future__ import annotations

import json
from typing import Any

import pytest
from rest_framework.test import APIClient

from runs.models import Run

pytestmark = pytest.mark.django_db


def launch(api: APIClient, body: Any) -> Any:
    return api.post("/api/v1/runs/", body, format="json")


def test_launch_with_no_params_resolves_every_default(api: APIClient) -> None:
    response = launch(api, {"name": "defaults", "program": "tinygpt"})
    assert response.status_code == 201, response.content
    run = response.json()
    assert run["status"] == "queued"
    assert run["attempt"] == 0
    assert run["params"]["steps"] > 0
    assert set(run["params"]) >= {
        "steps",
        "batch_size",
        "seq_len",
        "d_model",
        "n_layers",
        "n_heads",
        "lr",
        "warmup_steps",
        "weight_decay",
        "grad_clip",
        "seed",
        "eval_every",
        "checkpoint_every",
        "device",
        "precision",
    }
    assert Run.objects.get(pk=run["id"]).params == run["params"]


def test_launch_keeps_given_params_and_fills_the_rest(api: APIClient) -> None:
    response = launch(api, {"name": "custom", "program": "tinygpt", "params": {"steps": 7, "lr": 0.01}})
    assert response.status_code == 201
    params = response.json()["params"]
    assert params["steps"] == 7
    assert params["lr"] == 0.01
    assert params["device"] == "auto"


@pytest.mark.parametrize(
    ("body", "field", "fragment"),
    [
        ({"name": "x", "program": "nope"}, "program", "unknown program"),
        ({"name": "x"}, "program", "required"),
        ({"program": "tinygpt"}, "name", "non-empty"),
        ({"name": "", "program": "tinygpt"}, "name", "non-empty"),
        ({"name": 5, "program": "tinygpt"}, "name", "non-empty"),
        ({"name": "x" * 201, "program": "tinygpt"}, "name", "at most 200"),
        ({"name": "x", "program": "tinygpt", "params": {"steps": 0}}, "params.steps", ">= 1"),
        ({"name": "x", "program": "tinygpt", "params": {"steps": "ten"}}, "params.steps", "integer"),
        ({"name": "x", "program": "tinygpt", "params": {"steps": True}}, "params.steps", "integer"),
        ({"name": "x", "program": "tinygpt", "params": {"steps": 2.5}}, "params.steps", "integer"),
        ({"name": "x", "program": "tinygpt", "params": {"lr": -1}}, "params.lr", "must be"),
        ({"name": "x", "program": "tinygpt", "params": {"device": "tpu"}}, "params.device", "one of"),
        ({"name": "x", "program": "tinygpt", "params": {"precision": "fp8"}}, "params.precision", "one of"),
        ({"name": "x", "program": "tinygpt", "params": {"d_model": 10**9}}, "params.d_model", "<="),
        (
            {"name": "x", "program": "tinygpt", "params": {"d_model": 30, "n_heads": 4}},
            "params.n_heads",
            "divisible",
        ),
        ({"name": "x", "program": "tinygpt", "params": {"stpes": 3}}, "params.stpes", "unknown param"),
        ({"name": "x", "program": "tinygpt", "params": [1, 2]}, "params", "JSON object"),
        ({"name": "x", "program": "tinygpt", "secrets": "API_KEY"}, "secrets", "list"),
        (
            {"name": "x", "program": "tinygpt", "secrets": ["not valid!"]},
            "secrets",
            "not a valid secret name",
        ),
        ({"name": "x", "program": "tinygpt", "colour": "red"}, "colour", "unknown field"),
        ({"name": "x", "program": "scripted", "params": {"mode": "dance"}}, "params.mode", "one of"),
        ({"name": "x", "program": "tinygpt", "max_attempts": 0}, "max_attempts", "between 1 and 20"),
        ({"name": "x", "program": "tinygpt", "max_attempts": None}, "max_attempts", "integer"),
        (
            {"name": "x", "program": "tinygpt", "max_duration_seconds": "1h"},
            "max_duration_seconds",
            "integer",
        ),
        ({"name": "x", "program": "tinygpt", "queue_ttl_seconds": -5}, "queue_ttl_seconds", "between"),
    ],
)
def test_invalid_launch_is_refused_naming_the_field(
    api: APIClient, body: dict[str, Any], field: str, fragment: str
) -> None:
    response = launch(api, body)
    assert response.status_code == 400, response.content
    errors = response.json()
    assert field in errors, errors
    assert fragment in " ".join(errors[field])
    assert Run.objects.count() == 0


def test_limits_are_stored_with_the_run(api: APIClient) -> None:
    body = {
        "name": "bounded",
        "program": "tinygpt",
        "max_attempts": 5,
        "max_duration_seconds": 3600,
        "queue_ttl_seconds": 600,
    }
    run = launch(api, body).json()
    assert (run["max_attempts"], run["max_duration_seconds"], run["queue_ttl_seconds"]) == (5, 3600, 600)
    default = launch(api, {"name": "plain", "program": "tinygpt"}).json()
    assert (default["max_attempts"], default["max_duration_seconds"], default["queue_ttl_seconds"]) == (
        3,
        None,
        None,
    )


def test_malformed_json_is_a_400_not_a_500(api: APIClient) -> None:
    response = api.post("/api/v1/runs/", data="{not json", content_type="application/json")
    assert response.status_code == 400
    assert "detail" in response.json()
    assert Run.objects.count() == 0


def test_a_json_array_body_is_refused(api: APIClient) -> None:
    response = api.post("/api/v1/runs/", data=json.dumps([1, 2]), content_type="application/json")
    assert response.status_code == 400
    assert Run.objects.count() == 0


def test_a_huge_body_is_refused(api: APIClient) -> None:
    response = launch(api, {"name": "x", "program": "tinygpt", "params": {"seed": 1}, "pad": "y" * 3_000_000})
    assert response.status_code in {400, 413}
    assert Run.objects.count() == 0


def test_form_encoded_bodies_are_refused(api: APIClient) -> None:
    response = api.post("/api/v1/runs/", data={"name": "x", "program": "tinygpt"})
    assert response.status_code == 415


def test_anonymous_callers_get_401(anonymous_api: APIClient) -> None:
    assert anonymous_api.get("/api/v1/runs/").status_code == 401
    assert launch(anonymous_api, {"name": "x", "program": "tinygpt"}).status_code == 401
    assert Run.objects.count() == 0


@pytest.mark.parametrize("header", ["Bearer cp_nope", "Bearer ", "Bearer " + "a" * 5000, "Token abc"])
def test_bad_bearer_tokens_get_401(anonymous_api: APIClient, header: str) -> None:
    anonymous_api.credentials(HTTP_AUTHORIZATION=header)
    response = anonymous_api.get("/api/v1/runs/")
    assert response.status_code == 401
    assert response.json()["detail"]
