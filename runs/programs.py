"""The programs a run may execute, and the validation of their params.

`tinygpt` is built in; admins register more in the catalog (`ProgramDefinition` rows in Postgres,
written through `runs.catalog` by the API and the Programs page, read by every worker), which the
TOML file named by CONTROLPLANE_PROGRAMS_FILE seeds (`manage.py seed_programs`).
Params are described by JSON-Schema property definitions (a deliberately small subset: type,
default, minimum/maximum, exclusive bounds, enum, maxLength), and every param has a default, so
`{}` is always a valid request and the stored run holds the fully resolved params.
"""

from __future__ import annotations

import re
import sys
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import structlog
from django.conf import settings

from ops.configuration import ConfigError
from runs.models import ProgramDefinition
from runs.placement_request import resources_problem
from runs.program_schema import schema_errors, validate_value

log = structlog.get_logger(__name__)

_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")
_QUEUE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
PYTHON = "{python}"  # in a command: the interpreter of the host that runs it
MAX_COMMAND_PARTS = 256
SOURCE_BUILTIN = "builtin"
SOURCE_FILE = "file"  # read from CONTROLPLANE_PROGRAMS_FILE, not (yet) in the catalog
LAUNCHER_DIRECT = "direct"
LAUNCHER_TORCHRUN = "torchrun"
LAUNCHERS = (LAUNCHER_DIRECT, LAUNCHER_TORCHRUN)
MAX_PROCESSES_PER_NODE = 256


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
    # Where the definition comes from: builtin, file, or the catalog's last writer (seed, api).
    source: str = ""
    version: int = 0  # the catalog row's version; 0 outside the catalog
    written: tuple[str, ...] = ()  # the command as defined ("{python}" kept), when it differs
    retired_at: datetime | None = None


class ParamsError(Exception):
    """Invalid params; `errors` maps each bad field to a readable message."""

    def __init__(self, errors: dict[str, str]) -> None:
        super().__init__("; ".join(f"{k}: {v}" for k, v in errors.items()))
        self.errors = errors


class DefinitionError(Exception):
    """An invalid program definition; `errors` maps each bad field (`command`,
    `params_schema.lr.type`, `resources.pool`) to a readable message."""

    def __init__(self, errors: dict[str, str]) -> None:
        super().__init__("; ".join(f"{k} {v}" for k, v in errors.items()))
        self.errors = errors


def _check_schema(program: str, params: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """A built-in program's params, checked; ConfigError naming the program and field."""
    checked, errors = schema_errors(params, "params")
    if errors:
        raise ConfigError("; ".join(f"program {program!r} {f}: {m}" for f, m in errors.items()))
    return checked


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
        source=SOURCE_BUILTIN,
    )


def _builtin_programs() -> dict[str, Program]:
    return dict(_builtin)


def check_definition(name: Any, entry: Any, *, params_field: str = "params_schema") -> Program:
    """A program definition (a TOML table or an API body: command, description, params, env, queue,
    resources, launcher, nproc_per_node), checked; DefinitionError naming every bad field. The
    command stays as written: `materialize` turns "{python}" into this host's interpreter."""
    errors: dict[str, str] = {}
    if not isinstance(name, str) or not _NAME.match(name):
        errors["name"] = f"must match {_NAME.pattern}"
    if not isinstance(entry, dict):
        raise DefinitionError({**errors, "definition": "must be a table"})
    for key in filter(lambda key: _holds_nul(entry[key]), sorted(entry)):
        # Postgres stores no NUL in text or jsonb, and no environment or argv can hold one.
        errors[str(key)[:64] if key != "params" else params_field] = "must not contain NUL characters"
    if errors.keys() - {"name"}:
        raise DefinitionError(errors)
    command = entry.get("command")
    if not isinstance(command, list) or not command or not all(isinstance(c, str) and c for c in command):
        errors["command"] = "must be a non-empty list of strings"
    elif len(command) > MAX_COMMAND_PARTS or any(len(c) > 4096 for c in command):
        errors["command"] = f"at most {MAX_COMMAND_PARTS} parts of at most 4096 characters"
    description = entry.get("description", "")
    if not isinstance(description, str) or len(description) > 2000:
        errors["description"] = "must be a string of at most 2000 characters"
    extra_env = entry.get("env", {})
    if not isinstance(extra_env, dict) or not all(
        isinstance(k, str) and k and isinstance(v, str) for k, v in extra_env.items()
    ):
        errors["env"] = "must be a table of strings"
    queue = entry.get("queue")
    if queue not in (None, "") and (not isinstance(queue, str) or not _QUEUE.match(queue)):
        errors["queue"] = "must be a string: a queue name (letters, digits, '.', '_', '-', at most 64)"
    resources = entry.get("resources", {})
    if (problem := resources_problem(resources)) is not None:
        errors[problem[0]] = problem[1]
    launcher, nproc = _check_launcher(entry, errors)
    params, param_errors = schema_errors(entry.get("params", {}), params_field)
    errors.update(param_errors)
    if errors:
        raise DefinitionError(errors)
    assert isinstance(command, list)  # checked above
    return Program(
        name=name,
        command=tuple(command),
        description=description,
        params=params,
        queue=queue or None,
        env=dict(extra_env),
        resources=dict(resources or {}),
        launcher=launcher,
        nproc_per_node=nproc,
    )


def _holds_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_holds_nul(k) or _holds_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_holds_nul(item) for item in value)
    return False


def materialize(program: Program) -> Program:
    """The program as this host runs it: "{python}" is the worker's own interpreter, which can
    import our reporting SDK (each host its own, so the catalog stores the placeholder)."""
    command = tuple(sys.executable if part == PYTHON else part for part in program.command)
    return replace(program, command=command, written=program.command)


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
        try:
            program = check_definition(name, entry, params_field="params")
        except DefinitionError as error:
            problems = "; ".join(
                f"programs.{name}.{field} {message}" for field, message in error.errors.items()
            )
            raise ConfigError(f"{path}: {problems}") from None
        programs[name] = replace(materialize(program), source=SOURCE_FILE)
    return programs


def _check_launcher(entry: dict[str, Any], errors: dict[str, str]) -> tuple[str, int]:
    """A program entry's `launcher` and `nproc_per_node`; a problem goes to `errors` by key."""
    launcher = entry.get("launcher", LAUNCHER_DIRECT)
    if launcher not in LAUNCHERS:
        errors["launcher"] = f"must be one of {', '.join(LAUNCHERS)}, got {str(launcher)[:32]!r}"
        launcher = LAUNCHER_DIRECT
    nproc = entry.get("nproc_per_node", 1)
    if isinstance(nproc, bool) or not isinstance(nproc, int) or not 1 <= nproc <= MAX_PROCESSES_PER_NODE:
        errors["nproc_per_node"] = f"must be an integer from 1 to {MAX_PROCESSES_PER_NODE}"
        nproc = 1
    elif "nproc_per_node" in entry and launcher != LAUNCHER_TORCHRUN:
        errors["nproc_per_node"] = f"needs launcher = {LAUNCHER_TORCHRUN!r}"
    return launcher, nproc


_cache: dict[tuple[str, float], dict[str, Program]] = {}


def file_programs() -> dict[str, Program]:
    """The programs of CONTROLPLANE_PROGRAMS_FILE on this host, re-read when the file changes."""
    if not settings.PROGRAMS_FILE:
        return {}
    path = Path(settings.PROGRAMS_FILE)
    try:
        stamp = path.stat().st_mtime
    except OSError as error:
        raise ConfigError(f"CONTROLPLANE_PROGRAMS_FILE {path}: {error}") from error
    key = (str(path), stamp)
    if key not in _cache:
        _cache.clear()
        _cache[key] = load_programs_file(path)
    return dict(_cache[key])


# Each catalog row's checked Program, by row id, with the row's columns it was built from: a row
# unchanged since is not checked again (a lookup per launch and per attempt start stays cheap).
_checked: dict[int, tuple[dict[str, Any], Program | None]] = {}


def _program_of(row: ProgramDefinition) -> Program | None:
    """A catalog row as this host runs it; None for a row that fails the checks."""
    columns = {**row.as_entry(), "version": row.version, "source": row.source, "retired_at": row.retired_at}
    cached = _checked.get(row.pk)
    if cached is not None and cached[0] == columns:
        return cached[1]
    try:
        program: Program | None = replace(
            materialize(check_definition(row.name, row.as_entry())),
            source=row.source,
            version=row.version,
            retired_at=row.retired_at,
        )
    except DefinitionError as error:
        # Written through check_definition, so only a hand edit of the table gets here.
        log.error("program_definition_invalid", program=row.name, errors=error.errors)
        program = None
    _checked[row.pk] = (columns, program)
    return program


def catalog_programs() -> dict[str, Program]:
    """The programs of the catalog (Postgres), retired ones included, as this host runs them."""
    programs: dict[str, Program] = {}
    for row in ProgramDefinition.objects.all():
        if (program := _program_of(row)) is not None:
            programs[row.name] = program
    return programs


def all_programs(*, include_retired: bool = False) -> dict[str, Program]:
    """Built-ins, then the catalog, then the file's programs the catalog does not name yet (not
    seeded on this database): a name in the catalog, retired or not, is the catalog's."""
    programs = _builtin_programs()
    catalog = catalog_programs()
    for name, program in catalog.items():
        # A registered program may not shadow a built-in one.
        if include_retired or program.retired_at is None:
            programs.setdefault(name, program)
    for name, program in file_programs().items():
        if name not in catalog:
            programs.setdefault(name, program)
    return programs


def get_program(name: str, *, include_retired: bool = False) -> Program | None:
    """The program named `name`, as `all_programs` would find it, with one row read; a retired
    one only with `include_retired` (what the supervisor asks for a run launched before the
    retirement, and pages showing old runs)."""
    if name in _builtin:
        return _builtin[name]
    row = ProgramDefinition.objects.filter(name=name).first()
    if row is None:
        return file_programs().get(name)
    program = _program_of(row)
    if program is None or (program.retired_at is not None and not include_retired):
        return None
    return program
