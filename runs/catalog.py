"""Writes on the program catalog: register, edit, retire and restore (admins, through the API and
the Programs page), and the seed from CONTROLPLANE_PROGRAMS_FILE.

Every write is checked by `runs.programs.check_definition` (the one home of the rules, which the
TOML loader uses too) and audited in its own transaction (`program.create`, `program.update`,
`program.retire`, `program.restore`, `program.seed`; a refused write as `outcome=denied`).

The seed and the admins' edits: a row remembers who wrote it last (`source`). The seed creates the
programs the catalog lacks and updates only rows it wrote itself; once an admin has edited or
retired a program through the API or the page, the file never overwrites it again (an edit is not
lost on restart). Delete the row's edits by hand only: there is no "reset to file".
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import structlog
from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser, AnonymousUser, User
from django.db import IntegrityError, transaction
from django.utils import timezone

from audit import chain as audit
from ops.configuration import ConfigError
from runs.models import ProgramDefinition, ProgramSource
from runs.programs import (
    DefinitionError,
    Program,
    all_programs,
    check_definition,
    load_programs_file,
)

log = structlog.get_logger(__name__)

# Run kinds that are not programs (code snapshots, tracked external scripts), and a URL of the API.
RESERVED_NAMES = frozenset({"code", "external", "infer-schema"})
# The API's field names; `params_schema` is the JSON Schema object the listing shows.
FIELDS = (
    "description",
    "command",
    "params_schema",
    "launcher",
    "nproc_per_node",
    "env",
    "resources",
    "queue",
)
SCHEMA_KEYS = {"type", "properties", "additionalProperties"}

Actor = AbstractBaseUser | AnonymousUser | None


class CatalogError(Exception):
    """A refused write; `errors` maps each field to one message. `status`: 400, or 404 (no such
    program)."""

    def __init__(self, errors: dict[str, str], status: int = 400) -> None:
        super().__init__("; ".join(f"{k}: {v}" for k, v in errors.items()))
        self.errors = errors
        self.status = status


def _refuse(errors: dict[str, str], status: int = 400) -> NoReturn:
    raise CatalogError(errors, status)


@contextmanager
def _denials_audited(actor: Actor, action: str, name: Any) -> Iterator[None]:
    """A refused write is audited (`outcome=denied`), outside the transaction it rolled back."""
    try:
        yield
    except CatalogError as error:
        shown = name[:64] if isinstance(name, str) else type(name).__name__
        audit.record(action, actor=actor, outcome="denied", details={"name": shown, "errors": error.errors})
        raise


def _entry(body: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """An API body (or the page's form) in the shape `check_definition` reads; problems with the
    `params_schema` wrapper itself (its `properties` are checked by `check_definition`)."""
    errors: dict[str, str] = {}
    entry = {key: value for key, value in body.items() if key in FIELDS and key != "params_schema"}
    schema = body.get("params_schema", {"type": "object", "properties": {}})
    if not isinstance(schema, dict):
        errors["params_schema"] = 'must be a JSON Schema object: {"type": "object", "properties": {...}}'
        return entry, errors
    for key in sorted(set(schema) - SCHEMA_KEYS)[:10]:
        errors[f"params_schema.{str(key)[:64]}"] = "unsupported keyword"
    if schema.get("type", "object") != "object":
        errors["params_schema.type"] = 'must be "object"'
    if schema.get("additionalProperties", False) is not False:
        errors["params_schema.additionalProperties"] = (
            "must be false: a program takes only the params it declares"
        )
    entry["params"] = schema.get("properties", {})
    if entry["params"] == {} and "properties" in schema and not isinstance(schema["properties"], dict):
        errors["params_schema.properties"] = "must be an object"
    return entry, errors


def _columns(program: Program) -> dict[str, Any]:
    """A checked definition as the catalog row's columns (the command as written)."""
    return {
        "description": program.description,
        "command": list(program.command),
        "params": program.params,
        "launcher": program.launcher,
        "nproc_per_node": program.nproc_per_node,
        "env": program.env,
        "resources": program.resources,
        "queue": program.queue or "",
    }


def _summary(row: ProgramDefinition) -> dict[str, Any]:
    """What an audit record says of a definition: no env values (they are configuration, but
    a record cannot be edited later)."""
    return {
        "name": row.name,
        "version": row.version,
        "command": row.command,
        "launcher": row.launcher,
        "queue": row.queue,
        "resources": row.resources,
        "params": sorted(row.params),
        "env": sorted(row.env),
    }


def _check(name: Any, entry: dict[str, Any], errors: dict[str, str]) -> Program | None:
    try:
        program = check_definition(name, entry)
    except DefinitionError as error:
        errors.update(error.errors)
        return None
    return None if errors else program


def _by(actor: Actor) -> User | None:
    return actor if isinstance(actor, User) else None


def do_register_program(actor: Actor, body: dict[str, Any]) -> ProgramDefinition:
    """Register a new program (from the API or the page); CatalogError naming each bad field."""
    name = body.get("name")
    with _denials_audited(actor, "program.create", name):
        return _register(actor, name, body)


def _register(actor: Actor, name: Any, body: dict[str, Any]) -> ProgramDefinition:
    entry, errors = _entry(body)
    program = _check(name, entry, errors)
    if isinstance(name, str) and "name" not in errors:
        if name in RESERVED_NAMES:
            errors["name"] = f"{name!r} is reserved"
        elif (known := all_programs().get(name)) is not None and known.builtin:
            errors["name"] = f"{name!r} is a built-in program"
        elif ProgramDefinition.objects.filter(name=name).exists():
            errors["name"] = f"a program named {name!r} already exists (a retired one can be restored)"
    if errors or program is None:
        _refuse(errors)
    try:
        with transaction.atomic():
            row = ProgramDefinition.objects.create(
                name=program.name,
                source=ProgramSource.API,
                created_by=_by(actor),
                updated_by=_by(actor),
                **_columns(program),
            )
            audit.record("program.create", actor=actor, target=row, details=_summary(row))
    except IntegrityError:
        # Two registrations of one name raced past the check above; the unique index decided.
        raise CatalogError({"name": f"a program named {program.name!r} already exists"}) from None
    log.info("program_registered", program=row.name)
    return row


def _catalog_row(name: str) -> ProgramDefinition:
    """The row of `name`, locked; a program of the file not seeded yet is seeded first, so an
    admin may edit it. Built-ins and unknown names are refused."""
    program = all_programs(include_retired=True).get(name)
    if program is not None and program.builtin:
        _refuse({"name": f"{name!r} is a built-in program: it cannot be changed"})
    row = ProgramDefinition.objects.select_for_update().filter(name=name).first()
    if row is None and program is not None:
        seed_one(name, file_entries().get(name, {}))
        row = ProgramDefinition.objects.select_for_update().filter(name=name).first()
    if row is None:
        _refuse({"name": f"no program named {name[:64]!r}"}, status=404)
    return row


def do_update_program(actor: Actor, name: str, changes: dict[str, Any]) -> ProgramDefinition:
    """Change some fields of a catalog program (PATCH); the version grows when anything changed.
    The row then belongs to the admins: the seed no longer touches it."""
    with _denials_audited(actor, "program.update", name), transaction.atomic():
        row = _catalog_row(name)
        body = {**row.as_entry(), **changes}
        body["params_schema"] = changes.get("params_schema", {"type": "object", "properties": row.params})
        body.pop("params", None)
        if changes.get("launcher", row.launcher) != "torchrun" and "nproc_per_node" not in changes:
            body.pop("nproc_per_node", None)
        entry, errors = _entry(body)
        program = _check(name, entry, errors)
        if errors or program is None:
            _refuse(errors)
        columns = _columns(program)
        changed = sorted(key for key, value in columns.items() if getattr(row, key) != value)
        for key, value in columns.items():
            setattr(row, key, value)
        if changed:
            row.version += 1
        row.source = ProgramSource.API
        row.updated_by = _by(actor)
        row.updated_at = timezone.now()
        row.save()
        audit.record("program.update", actor=actor, target=row, details={**_summary(row), "changed": changed})
    log.info("program_updated", program=name, changed=changed)
    return row


def do_retire_program(actor: Actor, name: str, *, retire: bool = True) -> ProgramDefinition:
    """Retire a program (no new launches or retries; its runs keep showing it) or restore it."""
    action = "program.retire" if retire else "program.restore"
    with _denials_audited(actor, action, name), transaction.atomic():
        row = _catalog_row(name)
        row.retired_at = (row.retired_at or timezone.now()) if retire else None
        row.source = ProgramSource.API  # the seed must not bring a retired program back
        row.updated_by = _by(actor)
        row.updated_at = timezone.now()
        row.save()
        audit.record(action, actor=actor, target=row, details={"name": row.name, "version": row.version})
    log.info("program_retired" if retire else "program_restored", program=name)
    return row


# -- the seed ----------------------------------------------------------------------------------


@dataclass
class SeedReport:
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)  # edited by an admin since: the file does not win
    skipped: list[str] = field(default_factory=list)  # built-in or reserved names


def file_entries(path: Path | None = None) -> dict[str, dict[str, Any]]:
    """The file's program tables as written, each checked (ConfigError names a bad one)."""
    chosen = path or (Path(settings.PROGRAMS_FILE) if settings.PROGRAMS_FILE else None)
    if chosen is None:
        return {}
    load_programs_file(chosen)  # the checks, with the file's error messages
    section = tomllib.loads(chosen.read_text()).get("programs", {})
    return {name: dict(entry) for name, entry in section.items()}


def seed_one(name: str, entry: dict[str, Any]) -> str:
    """Upsert one program of the file: "created", "updated", "unchanged" or "kept"."""
    program = check_definition(name, entry, params_field="params")
    columns = _columns(program)
    with transaction.atomic():
        row = ProgramDefinition.objects.select_for_update().filter(name=name).first()
        if row is None:
            try:
                with transaction.atomic():
                    row = ProgramDefinition.objects.create(name=name, source=ProgramSource.SEED, **columns)
            except IntegrityError:
                return "unchanged"  # another process seeded it at the same moment
            audit.record(
                "program.seed", actor=None, target=row, details={**_summary(row), "change": "created"}
            )
            return "created"
        if row.source != ProgramSource.SEED:
            return "kept"
        changed = sorted(key for key, value in columns.items() if getattr(row, key) != value)
        if not changed:
            return "unchanged"
        for key in changed:
            setattr(row, key, columns[key])
        row.version += 1
        row.updated_at = timezone.now()
        row.updated_by = None
        row.save()
        details = {**_summary(row), "change": "updated", "changed": changed}
        audit.record("program.seed", actor=None, target=row, details=details)
        return "updated"


def seed_programs(path: Path | None = None) -> SeedReport:
    """Upsert the programs of CONTROLPLANE_PROGRAMS_FILE (or `path`) into the catalog. Idempotent;
    safe to run from several processes at once. ConfigError when the file is unreadable or bad."""
    report = SeedReport()
    builtins = {name for name, program in all_programs().items() if program.builtin}
    try:
        entries = file_entries(path)
    except OSError as error:
        raise ConfigError(f"CONTROLPLANE_PROGRAMS_FILE {path}: {error}") from error
    for name, entry in entries.items():
        if name in builtins or name in RESERVED_NAMES:
            report.skipped.append(name)
            continue
        getattr(report, seed_one(name, entry)).append(name)
    log.info("programs_seeded", **{key: value for key, value in vars(report).items() if value})
    return report
