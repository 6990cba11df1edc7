"""The launch form, generated from a program's param schema.

Validation is not done here: posted strings are turned into the JSON values they spell (or left
as strings when they spell none) and handed to `services.check_launch`, the same function the API
calls. Its error keys (`name`, `params.steps`, ...) are the form's input names, so every message
lands next to its field.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from django.http import QueryDict

from runs.programs import Program

GENERAL = "__all__"


def input_name(param: str) -> str:
    return f"params.{param}"


@dataclass(frozen=True)
class ParamField:
    name: str
    input_name: str
    input_id: str
    widget: str  # "integer", "number", "text", "select", "checkbox"
    value: str
    checked: bool
    choices: tuple[str, ...]
    default: str
    inputmode: str  # the on-screen keyboard a phone offers ("" for the default)
    bounds: str  # readable bounds, e.g. "1 to 4096" or "> 0"
    help: str
    max_length: int | None
    error: str


def _text(value: Any) -> str:
    """A value as a person types it: 0.003 not 3e-03, true not True."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value) if not isinstance(value, dict | list) else json.dumps(value)


def _sentence(text: str) -> str:
    text = text.strip()
    return text if not text or text[-1] in ".!?" else text + "."


def _number(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else _text(value)


def _bounds(spec: dict[str, Any]) -> str:
    """Bounds as a person reads them: "1 to 4,096", "> 0 and ≤ 1.0"."""
    if "minimum" in spec and "maximum" in spec:
        return f"{_number(spec['minimum'])} to {_number(spec['maximum'])}"
    parts = []
    for keyword, sign in (
        ("minimum", "≥"),
        ("exclusiveMinimum", ">"),
        ("maximum", "≤"),
        ("exclusiveMaximum", "<"),
    ):
        if keyword in spec:
            parts.append(f"{sign} {_number(spec[keyword])}")
    return " and ".join(parts)


def param_fields(program: Program, values: dict[str, Any], errors: dict[str, str]) -> list[ParamField]:
    """One field per param, showing `values` (typed, or the strings a user posted)."""
    fields = []
    for name, spec in program.params.items():
        kind = spec["type"]
        value = values.get(name, spec["default"])
        if kind == "boolean":
            widget = "checkbox"
        elif "enum" in spec:
            widget = "select"
        elif kind in ("integer", "number"):
            widget = kind
        else:
            widget = "text"
        # Numbers are text inputs: a number input silently submits "" for "1e" or "abc", which
        # would launch with the default instead of saying what is wrong.
        non_negative = spec.get("minimum", spec.get("exclusiveMinimum", -1)) >= 0
        inputmode = {
            "integer": "numeric" if non_negative else "",
            "number": "decimal" if non_negative else "",
        }
        fields.append(
            ParamField(
                name=name,
                input_name=input_name(name),
                input_id=f"param-{name}",
                widget=widget,
                value=_text(value),
                checked=value is True,
                choices=tuple(_text(choice) for choice in spec.get("enum", ())),
                default=_text(spec["default"]) if spec["default"] != "" else "(empty)",
                inputmode=inputmode.get(widget, ""),
                bounds=_bounds(spec),
                help=_sentence(str(spec.get("description") or spec.get("title") or "")),
                max_length=spec.get("maxLength"),
                error=errors.get(input_name(name), ""),
            )
        )
    return fields


def _parse(spec: dict[str, Any], raw: str) -> Any:
    """The JSON value a typed string spells for this param's type; the string itself otherwise,
    so that `check_launch` names the problem ("must be an integer") exactly as the API does."""
    kind = spec["type"]
    if kind == "integer":
        for parse in (int, float):
            try:
                return parse(raw)
            except ValueError:
                continue
        return raw
    if kind == "number":
        try:
            return float(raw)
        except ValueError:
            return raw
    if "enum" in spec:
        for choice in spec["enum"]:
            if _text(choice) == raw:
                return choice
    return raw


def posted_params(program: Program, data: QueryDict) -> tuple[dict[str, Any], dict[str, Any]]:
    """(params for check_launch, values to show again): an empty field means "the default"."""
    params: dict[str, Any] = {}
    shown: dict[str, Any] = {}
    for name, spec in program.params.items():
        field = input_name(name)
        if spec["type"] == "boolean":
            params[name] = shown[name] = data.get(field) == "true"
            continue
        raw = data.get(field, "")
        # Numbers are trimmed; strings are kept as typed (a leading space may matter to a program).
        if spec["type"] in ("integer", "number"):
            raw = raw.strip()
        shown[name] = raw
        if raw == "":
            continue
        params[name] = _parse(spec, raw)
    return params, shown


def split_errors(errors: dict[str, str], field_names: set[str]) -> tuple[dict[str, str], list[str]]:
    """(errors keyed by input name, messages that belong to no field)."""
    by_field: dict[str, str] = {}
    general: list[str] = []
    for key, message in errors.items():
        if key in field_names:
            by_field[key] = message
        else:
            general.append(f"{key}: {message}")
    return by_field, general
