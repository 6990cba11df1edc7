"""The programs a run may execute, and the validation of their params.

`tinygpt` is built in; admins register more in the TOML file named by CONTROLPLANE_PROGRAMS_FILE.
Params are described by JSON-Schema property definitions (a deliberately small subset: type,
default, minimum/maximum, exclusive bounds, enum, maxLength), and every param has a default, so
`{}` is always a valid request and the stored run holds the fully resolved params.
"""

from __future__ import annotations

import math
import re
import sys
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from django.conf import settings

from ops.configuration import ConfigError
from runs.placement_request import resources_problem

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
_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")
LAUNCHER_DIRECT = "direct"
LAUNCHER_TORCHRUN = "torchrun"
LAUNCHERS = (LAUNCHER_DIRECT, LAUNCHER_TORCHRUN)
MAX_PROCESSES_PER_NODE = 256
MAX_STRING_PARAM = 10_000


@dataclass(frozen=True)
class Program:
    name: str
    command: tuple[str, ...]
    description: str
    params: dict[str, dict[str, Any]]
    builtin: bool = False
    queue: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    # Where its runs go when a launch names no `resources`: {"pool": ..., "gpus": ...}.
    resources: dict[str, Any] = field(default_factory=dict)
    # How the supervisor starts it: "direct" (the command itself) or "torchrun" (the command once
    # per process, under PyTorch's launcher: workers/launch.py).
    launcher: str = LAUNCHER_DIRECT
    # torchrun processes on a CPU slot (a GPU run starts one per reserved GPU).
    nproc_per_node: int = 1
    # Rules between params (a built-in program's own), by param name; run after each param passed.
    cross_check: Callable[[dict[str, Any]], dict[str, str]] | None = None


class ParamsError(Exception):
    """Invalid params; `errors` maps each bad field to a readable message."""

    def __init__(self, errors: dict[str, str]) -> None:
        super().__init__("; ".join(f"{k}: {v}" for k, v in errors.items()))
        self.errors = errors


def _check_schema(program: str, params: dict[str, Any]) -> dict[str, dict[str, Any]]:
    checked: dict[str, dict[str, Any]] = {}
    for name, spec in params.items():
        where = f"program {program!r} param {name!r}"
        if not isinstance(spec, dict):
            raise ConfigError(f"{where}: must be a table")
        unknown = set(spec) - _KEYWORDS
        if unknown:
            raise ConfigError(f"{where}: unsupported keywords {sorted(unknown)}")
        if spec.get("type") not in _TYPES:
            raise ConfigError(f"{where}: type must be one of {sorted(_TYPES)}")
        if "default" not in spec:
            raise ConfigError(f"{where}: every param needs a default")
        errors = validate_value(name, spec, spec["default"])
        if errors:
            raise ConfigError(f"{where}: default is invalid: {errors}")
        checked[name] = dict(spec)
    return checked


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


def resolve_params(program: Program, raw: Any) -> dict[str, Any]:
    """Fill defaults and validate; raises ParamsError naming each bad field (`params.<name>`)."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ParamsError({"params": "must be a JSON object"})
    errors: dict[str, str] = {}
    for name in raw:
        if name not in program.params:
            known = ", ".join(sorted(program.params)) or "none"
            errors[f"params.{name}"] = f"unknown param for program {program.name!r} (known: {known})"
    resolved: dict[str, Any] = {}
    for name, spec in program.params.items():
        value = raw.get(name, spec["default"])
        message = validate_value(name, spec, value)
        if message:
            errors[f"params.{name}"] = message
            continue
        if spec["type"] == "integer":
            value = int(value)
        elif spec["type"] == "number":
            value = float(value)
        resolved[name] = value
    if not errors and program.cross_check is not None:
        errors = {f"params.{name}": message for name, message in program.cross_check(resolved).items()}
    if errors:
        raise ParamsError(errors)
    return resolved


# Built-in programs are registered by the app that ships them (workers.apps), because the
# registry sits below the workers package in the layer map.
_builtin: dict[str, Program] = {}


def register_builtin(
    name: str,
    *,
    command: tuple[str, ...],
    description: str,
    params: dict[str, Any],
    cross_check: Callable[[dict[str, Any]], dict[str, str]] | None = None,
) -> None:
    _builtin[name] = Program(
        name=name,
        command=command,
        description=description,
        params=_check_schema(name, params),
        builtin=True,
        cross_check=cross_check,
    )


def _builtin_programs() -> dict[str, Program]:
    return dict(_builtin)


def load_programs_file(path: Path) -> dict[str, Program]:
    """Parse a programs TOML file; raises ConfigError with the offending program and key."""
    try:
        document = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise ConfigError(f"CONTROLPLANE_PROGRAMS_FILE {path}: {error}") from error
    programs: dict[str, Program] = {}
    section = document.get("programs", {})
    if not isinstance(section, dict):
        raise ConfigError(f"{path}: [programs] must be a table")
    for name, entry in section.items():
        if not _NAME.match(name):
            raise ConfigError(f"{path}: program name {name!r} must match {_NAME.pattern}")
        if not isinstance(entry, dict):
            raise ConfigError(f"{path}: programs.{name} must be a table")
        command = entry.get("command")
        if not isinstance(command, list) or not command or not all(isinstance(c, str) for c in command):
            raise ConfigError(f"{path}: programs.{name}.command must be a non-empty list of strings")
        extra_env = entry.get("env", {})
        if not isinstance(extra_env, dict) or not all(isinstance(v, str) for v in extra_env.values()):
            raise ConfigError(f"{path}: programs.{name}.env must be a table of strings")
        queue = entry.get("queue")
        if queue is not None and not isinstance(queue, str):
            raise ConfigError(f"{path}: programs.{name}.queue must be a string")
        resources = entry.get("resources", {})
        problem = resources_problem(resources)
        if problem is not None:
            raise ConfigError(f"{path}: programs.{name}.{problem[0]} {problem[1]}")
        launcher, nproc = _check_launcher(f"{path}: programs.{name}", entry)
        programs[name] = Program(
            name=name,
            # "{python}" is the worker's own interpreter, which can import our reporting SDK.
            command=tuple(sys.executable if part == "{python}" else part for part in command),
            description=str(entry.get("description", "")),
            params=_check_schema(name, entry.get("params", {})),
            queue=queue,
            env=dict(extra_env),
            resources=dict(resources),
            launcher=launcher,
            nproc_per_node=nproc,
        )
    return programs


def _check_launcher(where: str, entry: dict[str, Any]) -> tuple[str, int]:
    """A program entry's `launcher` and `nproc_per_node`, checked; ConfigError naming the key."""
    launcher = entry.get("launcher", LAUNCHER_DIRECT)
    if launcher not in LAUNCHERS:
        raise ConfigError(f"{where}.launcher must be one of {', '.join(LAUNCHERS)}, got {launcher!r}")
    nproc = entry.get("nproc_per_node", 1)
    if isinstance(nproc, bool) or not isinstance(nproc, int) or not 1 <= nproc <= MAX_PROCESSES_PER_NODE:
        raise ConfigError(f"{where}.nproc_per_node must be an integer from 1 to {MAX_PROCESSES_PER_NODE}")
    if "nproc_per_node" in entry and launcher != LAUNCHER_TORCHRUN:
        raise ConfigError(f"{where}.nproc_per_node needs launcher = {LAUNCHER_TORCHRUN!r}")
    return launcher, nproc


_cache: dict[tuple[str, float], dict[str, Program]] = {}


def all_programs() -> dict[str, Program]:
    programs = _builtin_programs()
    if settings.PROGRAMS_FILE:
        path = Path(settings.PROGRAMS_FILE)
        try:
            stamp = path.stat().st_mtime
        except OSError as error:
            raise ConfigError(f"CONTROLPLANE_PROGRAMS_FILE {path}: {error}") from error
        key = (str(path), stamp)
        if key not in _cache:
            _cache.clear()
            _cache[key] = load_programs_file(path)
        for name, program in _cache[key].items():
            # A registered program may not shadow a built-in one.
            programs.setdefault(name, program)
    return programs


def get_program(name: str) -> Program | None:
    return all_programs().get(name)
