"""The params of a program: a deliberately small subset of JSON Schema property definitions (type,
default, minimum/maximum, exclusive bounds, enum, maxLength, description, title). One home for
the rules, used by built-ins, the TOML file, the catalog API (`runs.programs.check_definition`)
and every launch (`validate_value`)."""

from __future__ import annotations

import math
from typing import Any

_TYPES = {"integer", "number", "string", "boolean"}
_KEYWORDS = {
    "type",
    "default",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "enum",
    "maxLength",
    "description",
    "title",
}
MAX_STRING_PARAM = 10_000
MAX_PARAMS = 200


def _keyword_problem(keyword: str, value: Any) -> str | None:
    """What is wrong with one keyword's own value (a bad `enum` would break every launch)."""
    if keyword in {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"}:
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            return "must be a finite number"
    elif keyword == "maxLength":
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_STRING_PARAM:
            return f"must be an integer from 0 to {MAX_STRING_PARAM}"
    elif keyword == "enum":
        scalars = (
            all(isinstance(v, str | int | float | bool) for v in value) if isinstance(value, list) else False
        )
        if not scalars or not value:
            return "must be a non-empty list of values"
    elif keyword in {"description", "title"} and not isinstance(value, str):
        return "must be a string"
    return None


def schema_errors(params: Any, field: str) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """The params (JSON-Schema property definitions) checked, and each problem by field
    (`<field>.<param>.<keyword>`): the one home of the rules, for built-ins, the TOML file and the API."""
    if not isinstance(params, dict):
        return {}, {field: "must be a table of param definitions"}
    if len(params) > MAX_PARAMS:
        return {}, {field: f"at most {MAX_PARAMS} params"}
    checked: dict[str, dict[str, Any]] = {}
    errors: dict[str, str] = {}
    for name, spec in params.items():
        where = f"{field}.{str(name)[:64]}"
        if not isinstance(name, str) or not 0 < len(name) <= 64:
            errors[where] = "a param name is 1 to 64 characters"
            continue
        if not isinstance(spec, dict):
            errors[where] = "must be a table"
            continue
        unknown = set(spec) - _KEYWORDS
        if unknown:
            errors[where] = f"unsupported keywords {sorted(unknown)}"
            continue
        if spec.get("type") not in _TYPES:
            errors[f"{where}.type"] = f"must be one of {sorted(_TYPES)}"
            continue
        bad = {k: p for k in sorted(spec) if k != "default" and (p := _keyword_problem(k, spec[k]))}
        if bad:
            errors.update({f"{where}.{k}": p for k, p in bad.items()})
            continue
        if "default" not in spec:
            errors[f"{where}.default"] = "is required: every param needs a default"
            continue
        problem = validate_value(name, spec, spec["default"])
        if problem:
            errors[f"{where}.default"] = f"default is invalid: {problem}"
            continue
        checked[name] = dict(spec)
    return checked, errors


def validate_value(name: str, spec: dict[str, Any], value: Any) -> str | None:
    """A message when `value` breaks `spec`, else None."""
    kind = spec["type"]
    if kind == "boolean":
        return None if isinstance(value, bool) else "must be true or false"
    if kind == "string":
        if not isinstance(value, str):
            return "must be a string"
        limit = int(spec.get("maxLength", MAX_STRING_PARAM))
        if len(value) > limit:
            return f"must be at most {limit} characters"
    elif kind == "integer":
        # JSON Schema counts 5.0 as an integer; JSON clients sometimes send it that way.
        whole_float = isinstance(value, float) and value.is_integer() and abs(value) < 2**53
        if isinstance(value, bool) or not (isinstance(value, int) or whole_float):
            return "must be an integer"
    elif kind == "number":
        if isinstance(value, bool) or not isinstance(value, int | float):
            return "must be a number"
        if not math.isfinite(value):
            return "must be a finite number"
    if "enum" in spec and value not in spec["enum"]:
        choices = ", ".join(str(choice) for choice in spec["enum"])
        return f"must be one of: {choices}"
    return _in_bounds(spec, value) if kind in {"integer", "number"} else None


def _in_bounds(spec: dict[str, Any], value: float) -> str | None:
    if "minimum" in spec and value < spec["minimum"]:
        return f"must be >= {spec['minimum']}"
    if "maximum" in spec and value > spec["maximum"]:
        return f"must be <= {spec['maximum']}"
    if "exclusiveMinimum" in spec and value <= spec["exclusiveMinimum"]:
        return f"must be > {spec['exclusiveMinimum']}"
    if "exclusiveMaximum" in spec and value >= spec["exclusiveMaximum"]:
        return f"must be < {spec['exclusiveMaximum']}"
    return None
