"""`-p key=value` and `-f file` into launch params, typed by the program's JSON Schema."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from controlplane_client.errors import ClientError

_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def read_file(path: str) -> dict[str, Any]:
    """A YAML or JSON mapping (JSON is YAML)."""
    try:
        text = Path(path).read_text()
    except OSError as error:
        raise ClientError(f"cannot read params file {path}: {error.strerror or error}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ClientError(f"params file {path} is not YAML or JSON: {str(error).splitlines()[0]}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ClientError(f"params file {path} must hold a mapping of param names to values")
    return {str(k): v for k, v in data.items()}


def convert(name: str, raw: str, spec: dict[str, Any] | None) -> Any:
    """The value typed as the schema says; without a schema (an unknown param), JSON if it parses."""
    kind = (spec or {}).get("type")
    try:
        if kind == "integer":
            return int(raw)
        if kind == "number":
            return float(raw)
    except ValueError:
        raise ClientError(
            f"-p {name}: {raw!r} is not a{'n integer' if kind == 'integer' else ' number'}"
        ) from None
    if kind == "boolean":
        if raw.lower() in _TRUE | _FALSE:
            return raw.lower() in _TRUE
        raise ClientError(f"-p {name}: {raw!r} is not true or false")
    if kind == "string":
        return raw
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def build(pairs: list[str], files: list[str], schema: dict[str, Any] | None) -> dict[str, Any]:
    """Files first (in order), then each -p on top."""
    params: dict[str, Any] = {}
    for path in files:
        params.update(read_file(path))
    properties = (schema or {}).get("properties", {})
    for pair in pairs:
        name, sep, raw = pair.partition("=")
        if not sep or not name:
            raise ClientError(f"-p {pair!r}: expected NAME=VALUE")
        params[name] = convert(name, raw, properties.get(name))
    return params
