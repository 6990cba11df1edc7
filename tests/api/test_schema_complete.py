"""The OpenAPI schema describes every API path, including the plain Django views, and the error
answers each operation can give, so a generated client has a type for each."""

from __future__ import annotations

from typing import Any

from rest_framework.test import APIClient


def _schema(api: APIClient) -> dict[str, Any]:
    response = api.get("/api/v1/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert response.status_code == 200
    return response.json()  # type: ignore[no-any-return]


def test_downloads_logs_text_previews_and_programs_are_described(api: APIClient) -> None:
    paths = _schema(api)["paths"]
    download = paths["/api/v1/artifacts/{artifact_id}/download/"]["get"]
    assert {"200", "206", "304", "401", "403", "404", "410", "416"} <= set(download["responses"])
    assert "application/octet-stream" in download["responses"]["200"]["content"]
    assert {p["name"] for p in download["parameters"]} >= {"artifact_id", "Range", "If-None-Match"}
    assert "text/plain" in paths["/api/v1/runs/{run_id}/logs.txt"]["get"]["responses"]["200"]["content"]
    preview = paths["/api/v1/artifacts/{artifact_id}/preview/"]["get"]["responses"]["200"]
    assert preview["content"]["application/json"]["schema"]["$ref"].endswith("/ArtifactPreview")
    assert "/api/v1/programs/" in paths
    assert "/api/v1/programs/{name}/" in paths


def test_every_operation_documents_its_errors(api: APIClient) -> None:
    schema = _schema(api)
    assert {"ErrorDetail", "FieldErrors", "BadRequest"} <= set(schema["components"]["schemas"])
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            responses = set(operation["responses"])
            where = f"{method.upper()} {path}"
            assert {"401", "429"} <= responses, where
            if path != "/api/v1/auth/token/":
                assert "403" in responses, where
            if "{" in path:
                assert "404" in responses, where
            if "requestBody" in operation:
                assert "400" in responses, where
    launch = schema["paths"]["/api/v1/runs/"]["post"]["responses"]["400"]
    assert launch["content"]["application/json"]["schema"]["$ref"].endswith("/BadRequest")
    cancel = schema["paths"]["/api/v1/runs/{id}/cancel/"]["post"]["responses"]
    assert "409" in cancel
