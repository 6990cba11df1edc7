"""A program's params schema, inferred from its script: `argparse` options or a declared dataclass.

The script runs under `runs/params_shim.py` (standard library only, shipped in the package, so the
web host and every worker have the same one) in a subprocess: the interpreter the command names
("{python}": this host's), a fresh temporary directory as its working directory, an environment
of PATH, LANG and the program's own `env` (none of the web process's settings or keys), sockets
refused, a CPU and memory limit, and a wall-clock timeout. Only admins may ask (`program.manage`),
and each request is audited (`program.infer_schema`): it runs an admin-supplied command on the web
host, as registering one runs it on every worker. The script must exist on the host that infers
(`manage.py infer_params_schema` runs the same inference on a worker host).
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser

from audit import chain as audit
from runs.program_schema import schema_errors
from runs.programs import PYTHON

SHIM = Path(__file__).resolve().with_name("params_shim.py")
SOURCE_ROOT = Path(__file__).resolve().parent.parent  # so `-m workers...` and the SDK import
MARK = "CONTROLPLANE_PARAMS_SCHEMA="
TIMEOUT_SECONDS = 20.0
MEMORY_BYTES = 2 * 1024**3
USAGE = 'needs a Python command: ["{python}", "script.py", ...] or ["{python}", "-m", "package.module", ...]'


class InferenceError(Exception):
    """The schema cannot be inferred; `errors` maps the field (`command`) to why."""

    def __init__(self, errors: dict[str, str]) -> None:
        super().__init__("; ".join(f"{k}: {v}" for k, v in errors.items()))
        self.errors = errors


def _shim_argv(command: Any) -> list[str]:
    """The shim's command line for a program command; InferenceError unless it is Python. Its
    source goes in `-c`: run by path, its directory (runs/, with a `selectors` module) would come
    first on sys.path and shadow the standard library's."""
    if not isinstance(command, list) or not command or not all(isinstance(c, str) and c for c in command):
        raise InferenceError({"command": "must be a non-empty list of strings"})
    interpreter = sys.executable if command[0] == PYTHON else command[0]
    if not Path(interpreter).name.startswith("python"):
        raise InferenceError({"command": USAGE})
    rest = command[1:]
    if len(rest) >= 2 and rest[0] == "-m":
        return [interpreter, "-c", SHIM.read_text(), "module", rest[1], *rest[2:]]
    if rest and rest[0].endswith(".py"):
        return [interpreter, "-c", SHIM.read_text(), "script", rest[0], *rest[1:]]
    raise InferenceError({"command": USAGE})


def _limits() -> None:  # pragma: no cover - runs in the child, between fork and exec
    resource.setrlimit(resource.RLIMIT_CPU, (int(TIMEOUT_SECONDS), int(TIMEOUT_SECONDS) + 1))
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_BYTES, MEMORY_BYTES))
    os.setsid()


def _run_shim(argv: list[str], env: dict[str, str]) -> dict[str, Any]:
    child_env = {
        "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
        "LANG": "C.UTF-8",
        "PYTHONPATH": str(SOURCE_ROOT),
        "PYTHONDONTWRITEBYTECODE": "1",
        **env,
    }
    with tempfile.TemporaryDirectory(prefix="params-schema-") as home:
        # As a run's environment has them (no params yet: `{}`), so a script that reads its
        # params before it parses gets as far as its parser.
        (Path(home) / "params.json").write_text("{}")
        child_env.update(
            {"HOME": home, "CONTROLPLANE_RUN_DIR": home, "CONTROLPLANE_PARAMS": f"{home}/params.json"}
        )
        try:
            done = subprocess.run(
                argv,
                cwd=home,
                env=child_env,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=TIMEOUT_SECONDS,
                preexec_fn=_limits,
                check=False,
            )
        except subprocess.TimeoutExpired:
            why = f"the script ran {TIMEOUT_SECONDS:.0f}s without parsing its arguments: no argparse parser"
            raise InferenceError(
                {"command": f"{why} or CONTROLPLANE_PARAMS found before its work started"}
            ) from None
        except OSError as error:
            raise InferenceError(
                {"command": f"cannot start {argv[0]!r}: {error.strerror or error}"}
            ) from None
    for line in done.stdout.decode(errors="replace").splitlines():
        if line.startswith(MARK):
            found: dict[str, Any] = json.loads(line[len(MARK) :])
            return found
    tail = done.stderr.decode(errors="replace").strip().splitlines()[-1:] or [
        f"exit status {done.returncode}"
    ]
    raise InferenceError({"command": f"the script gave no params: {tail[0][:500]}"})


def infer_params_schema(command: Any, env: Any = None) -> dict[str, Any]:
    """{"source": "argparse" | "dataclass", "params_schema": {...}, "skipped": {option: why}};
    the schema passes the catalog's own checks (`schema_errors`), so it can be registered as is."""
    if env is not None and (not isinstance(env, dict) or not all(isinstance(v, str) for v in env.values())):
        raise InferenceError({"env": "must be a table of strings"})
    found = _run_shim(_shim_argv(command), {str(k): v for k, v in (env or {}).items()})
    if "error" in found:
        raise InferenceError({"command": str(found["error"])[:1000]})
    properties, errors = schema_errors(found.get("properties", {}), "params_schema")
    skipped = {str(k): str(v) for k, v in found.get("problems", {}).items()}
    skipped.update({field.split(".")[1]: message for field, message in errors.items() if "." in field})
    return {
        "source": found.get("source", ""),
        "params_schema": {"type": "object", "properties": properties, "additionalProperties": False},
        "skipped": skipped,
    }


def do_infer_params_schema(
    actor: AbstractBaseUser | AnonymousUser | None, command: Any, env: Any = None
) -> dict[str, Any]:
    """`infer_params_schema` for an admin, audited whether it worked or not."""
    shown = [str(part)[:200] for part in command[:20]] if isinstance(command, list) else str(type(command))
    try:
        result = infer_params_schema(command, env)
    except InferenceError as error:
        details = {"command": shown, "errors": error.errors}
        audit.record("program.infer_schema", actor=actor, outcome="failure", details=details)
        raise
    details = {
        "command": shown,
        "source": result["source"],
        "params": sorted(result["params_schema"]["properties"]),
    }
    audit.record("program.infer_schema", actor=actor, details=details)
    return result
