"""OpenAPI completions (a drf-spectacular postprocessing hook, SPECTACULAR_SETTINGS).

Two things the generated schema lacks on its own: the plain Django views of the API (artifact
downloads and the whole log as text, streamed by async views that DRF does not see), and the
error answers every operation can give (400 field errors, 401, 403, 404, 409, 429, 503), so a
generated client has a type for each.
"""

from __future__ import annotations

from typing import Any

JSON = "application/json"
BEARER: list[dict[str, list[str]]] = [{"bearerAuth": []}, {"cookieAuth": []}]

ERROR_SCHEMAS: dict[str, Any] = {
    "ErrorDetail": {
        "type": "object",
        "description": "A refusal: a readable message and, for some, a machine-readable code.",
        "properties": {"detail": {"type": "string"}, "code": {"type": "string"}},
        "required": ["detail"],
    },
    "FieldErrors": {
        "type": "object",
        "description": "Invalid input: each bad field (`params.lr` for a param) with its messages.",
        "additionalProperties": {"type": "array", "items": {"type": "string"}},
    },
    "ArtifactPreview": {
        "type": "object",
        "description": "A .safetensors file's header, read without loading any tensor.",
        "properties": {
            "id": {"type": "integer"},
            "name": {"type": "string"},
            "size": {"type": "integer"},
            "sha256": {"type": "string"},
            "parameters": {"type": "integer"},
            "tensor_count": {"type": "integer"},
            "tensors": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "name": {"type": "string"},
                        "dtype": {"type": "string"},
                        "shape": {"type": "array", "items": {"type": "integer"}},
                        "parameters": {"type": "integer"},
                    },
                },
            },
            "metadata": {"type": "object", "additionalProperties": {"type": "string"}},
        },
        "required": ["id", "name", "size", "sha256", "parameters", "tensor_count", "tensors", "metadata"],
    },
    "BadRequest": {
        "description": "Field errors, or a detail for a body that is not JSON at all.",
        "anyOf": [{"$ref": "#/components/schemas/FieldErrors"}, {"$ref": "#/components/schemas/ErrorDetail"}],
    },
}

_DETAIL = {"$ref": "#/components/schemas/ErrorDetail"}
ERRORS: dict[str, tuple[str, dict[str, Any]]] = {
    "400": ("Invalid input, by field", {"$ref": "#/components/schemas/BadRequest"}),
    "401": ("Credentials missing, wrong, expired or revoked", _DETAIL),
    "403": ("Signed in, but not allowed (role or token scope)", _DETAIL),
    "404": ("No such object, or not one the caller may see", _DETAIL),
    "409": ("Not in a state that allows it", _DETAIL),
    "429": ("Rate limited (code `throttled`); see Retry-After", _DETAIL),
    "503": ("The database is unavailable; retry after Retry-After", _DETAIL),
}
_STATE_ACTIONS = ("/cancel/", "/retry/", "/requeue/", "/discard/")


def _error(status: str) -> dict[str, Any]:
    description, schema = ERRORS[status]
    return {"description": description, "content": {JSON: {"schema": schema}}}


def _path_param(name: str, description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "schema": {"type": "integer"},
        "description": description,
    }


def _header(name: str, description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "header",
        "required": False,
        "schema": {"type": "string"},
        "description": description,
    }


DOWNLOAD: dict[str, Any] = {
    "operationId": "artifacts_download_retrieve",
    "summary": "Download an artifact's file",
    "description": (
        "Streams the file. `Range: bytes=N-` resumes a broken download (206 with Content-Range); "
        "the ETag is the quoted sha256 (If-None-Match gives 304, If-Range a whole file when it "
        "changed). HEAD answers the headers only."
    ),
    "tags": ["artifacts"],
    "parameters": [
        _path_param("artifact_id", "the artifact's id (from /runs/{id}/artifacts/)"),
        _header("Range", "one byte range, `bytes=N-`, `bytes=N-M` or `bytes=-N`"),
        _header("If-Range", "the ETag the Range applies to"),
        _header("If-None-Match", "an ETag: 304 when the file still has it"),
    ],
    "security": BEARER,
    "responses": {
        "200": {
            "description": "The whole file",
            "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
        },
        "206": {
            "description": "The requested range",
            "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
        },
        "304": {"description": "Not modified (If-None-Match)"},
        "410": {"description": "The file is missing from storage", "content": {JSON: {"schema": _DETAIL}}},
        "416": {"description": "The range is not satisfiable (Content-Range: bytes */size)"},
    },
}

LOG_TEXT: dict[str, Any] = {
    "operationId": "runs_logs_txt_retrieve",
    "summary": "The whole log as text",
    "description": "Every line up to now, one `<ts> <stream> <line>` per line, streamed.",
    "tags": ["runs"],
    "parameters": [_path_param("run_id", "the run's id")],
    "security": BEARER,
    "responses": {
        "200": {"description": "The log", "content": {"text/plain": {"schema": {"type": "string"}}}},
    },
}

PLAIN_VIEWS = {
    "/api/v1/artifacts/{artifact_id}/download/": DOWNLOAD,
    "/api/v1/runs/{run_id}/logs.txt": LOG_TEXT,
}


def _errors_for(path: str, method: str, operation: dict[str, Any]) -> list[str]:
    statuses = ["429", "503"]
    if operation.get("security") != [] and path != "/api/v1/auth/token/":
        statuses += ["401", "403"]
    elif path == "/api/v1/auth/token/":
        statuses += ["401"]
    params = operation.get("parameters", [])
    if "requestBody" in operation or any(p.get("in") == "query" for p in params):
        statuses.append("400")
    if any(p.get("in") == "path" for p in params):
        statuses.append("404")
    if method == "post" and path.endswith(_STATE_ACTIONS):
        statuses.append("409")
    return statuses


def complete_schema(result: dict[str, Any], generator: Any, request: Any, public: bool) -> dict[str, Any]:
    """POSTPROCESSING_HOOKS entry: add the plain views and every operation's error answers."""
    paths: dict[str, Any] = result.setdefault("paths", {})
    for path, operation in PLAIN_VIEWS.items():
        paths.setdefault(path, {"get": _copy(operation)})
    components = result.setdefault("components", {}).setdefault("schemas", {})
    for name, schema in ERROR_SCHEMAS.items():
        components.setdefault(name, schema)
    _describe_preview(paths.get("/api/v1/artifacts/{artifact_id}/preview/", {}).get("get"))
    for path, operations in paths.items():
        for method, operation in operations.items():
            if not isinstance(operation, dict) or "responses" not in operation:
                continue
            for status in _errors_for(path, method, operation):
                operation["responses"].setdefault(status, _error(status))
    return result


def _describe_preview(operation: dict[str, Any] | None) -> None:
    """The preview view (runs/api/dashboard.py) declares a bare object; name its fields."""
    if operation is None:
        return
    responses = operation["responses"]
    responses["200"] = {
        "description": "The header",
        "content": {JSON: {"schema": {"$ref": "#/components/schemas/ArtifactPreview"}}},
    }
    responses.setdefault(
        "410", {"description": "The file is missing from storage", "content": {JSON: {"schema": _DETAIL}}}
    )
    responses.setdefault(
        "422", {"description": "The header is unreadable", "content": {JSON: {"schema": _DETAIL}}}
    )


def _copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _copy(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_copy(item) for item in value]
    return value
