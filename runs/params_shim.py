"""Prints the params a training script declares, as JSON, without running its training.

Run as `python -c <this file's text>`, with the interpreter of the program's command (standard
library only, so any Python 3.11 runs it, the worker's or a program's own virtualenv):

    python -c "$SHIM" script PATH [ARGS...]    or    python -c "$SHIM" module NAME [ARGS...]

Two declarations are understood:
- an `argparse` parser: `ArgumentParser.parse_args`/`parse_known_args` are intercepted, so the
  first parse prints the parser's options (dest, type, default, choices, help) and the process
  exits before the script's work starts;
- a dataclass named by a module-level `CONTROLPLANE_PARAMS = MyParams` (fields with defaults;
  `metadata` may carry `description`, `minimum`, `maximum`, `enum`...).

The script is first loaded under another `__name__` (its `if __name__ == "__main__":` block does
not run): a module-level parser or `CONTROLPLANE_PARAMS` is found then; only if neither is, it is
run as `__main__`, where its parser is intercepted at the first parse. Sockets are refused while it
runs. The one line of output starts with MARK; `runs.params_inference` reads it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import runpy
import socket
import sys
import typing
from typing import Any, NoReturn

MARK = "CONTROLPLANE_PARAMS_SCHEMA="
KEYWORDS = (
    "description",
    "title",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "enum",
    "maxLength",
)
TYPES: dict[Any, str] = {int: "integer", float: "number", str: "string", bool: "boolean"}


def emit(found: dict[str, Any]) -> NoReturn:
    sys.stdout.flush()
    os.write(1, (MARK + json.dumps(found, default=str) + "\n").encode())
    os._exit(0)  # the script's own work (and its atexit hooks) must not run


def _help(action: argparse.Action) -> str:
    text = action.help or ""
    if text == argparse.SUPPRESS:
        return ""
    try:
        return text % {"default": action.default, "prog": "", "type": ""}
    except (KeyError, TypeError, ValueError):
        return text


def _option(action: argparse.Action) -> tuple[dict[str, Any] | None, str | None]:
    """One option as a JSON-Schema property, or why it cannot be one."""
    if isinstance(
        action, argparse._StoreTrueAction | argparse._StoreFalseAction | argparse.BooleanOptionalAction
    ):
        spec: dict[str, Any] = {"type": "boolean", "default": bool(action.default)}
    elif type(action) is argparse._StoreAction and action.nargs is None:
        kind = TYPES.get(action.type or str)
        if kind is None:
            return (
                None,
                f"type {getattr(action.type, '__name__', action.type)!s} is not int, float, str or bool",
            )
        if action.default is None or action.required:
            return None, "needs a default (every param has one)"
        spec = {"type": kind, "default": action.default}
        if action.choices is not None:
            spec["enum"] = list(action.choices)
    else:
        return (
            None,
            f"{type(action).__name__.strip('_')} options (lists, counts, constants) are not supported",
        )
    if description := _help(action):
        spec["description"] = description
    return spec, None


def describe_parser(parser: argparse.ArgumentParser) -> NoReturn:
    properties: dict[str, Any] = {}
    problems: dict[str, str] = {}
    for action in parser._actions:
        if (
            isinstance(action, argparse._HelpAction | argparse._VersionAction)
            or action.dest == argparse.SUPPRESS
        ):
            continue
        if not action.option_strings:
            problems[action.dest] = "positional arguments are not supported: use an --option with a default"
            continue
        spec, problem = _option(action)
        if spec is None:
            problems[action.dest] = problem or "not supported"
        else:
            properties[action.dest] = spec
    emit({"source": "argparse", "properties": properties, "problems": problems})


def describe_dataclass(cls: Any, namespace: dict[str, Any]) -> NoReturn:
    if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
        emit({"error": "CONTROLPLANE_PARAMS must name a dataclass"})
    hints = typing.get_type_hints(cls, globalns=namespace)
    properties: dict[str, Any] = {}
    problems: dict[str, str] = {}
    for item in dataclasses.fields(cls):
        hint = hints.get(item.name)
        choices = typing.get_args(hint) if typing.get_origin(hint) is typing.Literal else ()
        kind = TYPES.get(type(choices[0]) if choices else hint)
        if item.default is not dataclasses.MISSING:
            default: Any = item.default
        elif item.default_factory is not dataclasses.MISSING:
            default = item.default_factory()
        else:
            problems[item.name] = "needs a default (every param has one)"
            continue
        if kind is None:
            problems[item.name] = f"type {hint!s} is not int, float, str, bool or a Literal of them"
            continue
        spec: dict[str, Any] = {"type": kind, "default": default}
        if choices:
            spec["enum"] = list(choices)
        spec.update({key: item.metadata[key] for key in KEYWORDS if key in item.metadata})
        if "help" in item.metadata and "description" not in spec:
            spec["description"] = str(item.metadata["help"])
        properties[item.name] = spec
    emit({"source": "dataclass", "properties": properties, "problems": problems})


def _intercept() -> None:
    def parse(self: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> NoReturn:
        describe_parser(self)

    argparse.ArgumentParser.parse_args = parse  # type: ignore[method-assign]
    argparse.ArgumentParser.parse_known_args = parse  # type: ignore[method-assign]
    argparse.ArgumentParser.parse_intermixed_args = parse  # type: ignore[method-assign]

    def refused(*args: Any, **kwargs: Any) -> NoReturn:
        raise OSError("network access is refused while the params schema is inferred")

    socket.socket.connect = refused  # type: ignore[method-assign]
    socket.socket.connect_ex = refused  # type: ignore[method-assign]
    socket.create_connection = refused
    socket.getaddrinfo = refused


def _run(kind: str, target: str, run_name: str) -> dict[str, Any]:
    if kind == "module":
        return runpy.run_module(target, run_name=run_name, alter_sys=True)
    return runpy.run_path(target, run_name=run_name)


def main(argv: list[str]) -> NoReturn:
    if len(argv) < 2 or argv[0] not in {"script", "module"}:
        emit({"error": "usage: params_shim.py script PATH | module NAME [ARGS...]"})
    kind, target, rest = argv[0], argv[1], argv[2:]
    sys.argv = [target, *rest]
    if kind == "script":
        sys.path.insert(0, os.path.dirname(os.path.abspath(target)))
    _intercept()
    try:
        namespace = _run(kind, target, "__controlplane_params__")
        if "CONTROLPLANE_PARAMS" in namespace:
            describe_dataclass(namespace["CONTROLPLANE_PARAMS"], namespace)
        _run(kind, target, "__main__")
    except SystemExit as error:
        emit({"error": f"the script exited ({error.code}) before it parsed its arguments"})
    except BaseException as error:
        emit({"error": f"the script raised {type(error).__name__}: {str(error)[:500]}"})
    emit({"error": "found neither an argparse parser nor CONTROLPLANE_PARAMS (a dataclass)"})


if __name__ == "__main__":
    main(sys.argv[1:])
