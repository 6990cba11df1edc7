"""A run's dataset params are checked at launch: a 400 naming the field, never a queued run
that fails later on a worker."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest
from django.test import override_settings
from rest_framework.test import APIClient

from runs.models import Run

pytestmark = pytest.mark.django_db


def launch(api: APIClient, **params: Any) -> Any:
    return api.post("/api/v1/runs/", {"name": "data", "program": "tinygpt", "params": params}, format="json")


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data/iam/",
        "http://127.0.0.1:5432/",
        "http://10.0.0.8/corpus.txt",
        "http://[::1]:8080/corpus.txt",
        "http://[::ffff:169.254.169.254]/",
        "http://localhost:6379/corpus.txt",
    ],
)
def test_an_internal_dataset_url_is_a_400_naming_the_field(api: APIClient, url: str) -> None:
    with override_settings(DATASET_ALLOWED_NETWORKS=()):
        response = launch(api, dataset_url=url)
    assert response.status_code == 400, response.content
    assert response.json() == {"params.dataset_url": ["refused: address not allowed"]}
    assert not Run.objects.exists()


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("file:///etc/passwd", "must be an http(s) URL"),
        ("gopher://example.org/", "must be an http(s) URL"),
        ("http://", "must name a host"),
        ("https://u:p@example.org/c.txt", "must not carry credentials"),
    ],
)
def test_a_malformed_dataset_url_is_a_400(api: APIClient, url: str, message: str) -> None:
    response = launch(api, dataset_url=url)
    assert response.status_code == 400
    assert message in response.json()["params.dataset_url"][0]


def test_an_allow_listed_loopback_source_may_be_launched(api: APIClient) -> None:
    with override_settings(DATASET_ALLOWED_NETWORKS=(ipaddress.ip_network("127.0.0.1/32"),)):
        response = launch(api, dataset_url="http://127.0.0.1:8000/corpus.txt")
    assert response.status_code == 201, response.content


def test_a_public_name_is_accepted_at_launch_and_checked_again_at_fetch(api: APIClient) -> None:
    response = launch(api, dataset_url="https://data.example.org/c.txt", dataset_sha256="A" * 64)
    assert response.status_code == 201, response.content


@pytest.mark.parametrize("sha256", ["abc", "g" * 64, "a" * 63 + " "])
def test_a_malformed_sha256_is_a_400_naming_dataset_sha256(api: APIClient, sha256: str) -> None:
    response = launch(api, dataset_url="https://data.example.org/c.txt", dataset_sha256=sha256)
    assert response.status_code == 400
    assert response.json() == {"params.dataset_sha256": ["must be 64 hexadecimal characters (a sha256)"]}
