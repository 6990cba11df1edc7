"""`cpctl`: the control plane from a terminal. Every command takes --json; errors are one line.

Exit codes: 0 success; 1 the run failed or is dead (`wait`, `launch --follow`); 2 a usage,
connection or server error; 3 the run was cancelled.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from controlplane_client import commands, config
from controlplane_client.client import Client
from controlplane_client.errors import ClientError

USAGE_ERROR = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"error: {message} (see cpctl {self.prog.split(' ', 1)[-1]} --help)\n")
        raise SystemExit(USAGE_ERROR)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _add_run_commands(sub: argparse._SubParsersAction[_Parser], common: _Parser) -> None:
    launch = sub.add_parser(
        "launch",
        parents=[common],
        help="launch a run of PROGRAM, or (--code DIR -- COMMAND...) of your own code",
        usage="cpctl launch [options] PROGRAM | cpctl launch [options] --code DIR -- COMMAND [ARG ...]",
    )
    launch.add_argument("program", nargs="?", help="a registered program (not with --code)")
    launch.add_argument("code_command", nargs="*", help=argparse.SUPPRESS)
    launch.add_argument("--code", metavar="DIR", help="upload DIR as a code snapshot and run COMMAND in it")
    launch.add_argument("-p", "--param", action="append", metavar="NAME=VALUE", help="a param (repeatable)")
    launch.add_argument("-f", "--file", action="append", metavar="FILE", help="params from YAML or JSON")
    launch.add_argument("--name", help="the run's name (default: the program's)")
    launch.add_argument("--gpus", type=_positive, help="GPUs to reserve (resources.gpus)")
    launch.add_argument("--pool", help="GPU pool (resources.pool)")
    launch.add_argument("--nodes", type=_positive, help="workers of a multi-node run (resources.nodes)")
    launch.add_argument("--priority", type=int, help="scheduling priority")
    launch.add_argument("--follow", action="store_true", help="stream its log, then wait for the end")
    ls = sub.add_parser("ls", parents=[common], help="list runs, newest first")
    ls.add_argument("--status", help="comma-separated statuses")
    ls.add_argument("--program")
    ls.add_argument("--limit", type=_positive, default=20)
    logs = sub.add_parser("logs", parents=[common], help="print a run's log")
    logs.add_argument("run", type=int)
    logs.add_argument("-f", "--follow", action="store_true", help="keep streaming until the run ends")
    logs.add_argument("--after", type=int, default=0, help="only lines after this seq")
    logs.add_argument("--debug-drop-every", type=_positive, help=argparse.SUPPRESS)
    wait = sub.add_parser("wait", parents=[common], help="wait for a run to end (exit code: its outcome)")
    wait.add_argument("run", type=int)
    wait.add_argument("--timeout", type=float)
    for name, what in (
        ("cancel", "cancel a run"),
        ("retry", "launch a failed run again"),
        ("clone", "launch a new run like RUN (the same program and params, or snapshot and command)"),
    ):
        sub.add_parser(name, parents=[common], help=what).add_argument("run", type=int)
    download = sub.add_parser("download", parents=[common], help="download a run's artifacts")
    download.add_argument("run", type=int)
    download.add_argument("-o", "--output", default=".", metavar="DIR")
    download.add_argument("--name", help="only this artifact")
    compare = sub.add_parser("compare", parents=[common], help="params and final metrics of two runs")
    compare.add_argument("runs", type=int, nargs=2, metavar="RUN")


def parser() -> _Parser:
    common = _Parser(add_help=False)
    common.add_argument("--json", action="store_true", help="machine-readable output")
    top = _Parser(prog="cpctl", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = top.add_subparsers(dest="command", required=True, parser_class=_Parser)
    login = sub.add_parser("login", parents=[common], help="sign in and remember the server")
    login.add_argument("url")
    login.add_argument("--token", help="use this API token instead of a password")
    login.add_argument("--username")
    login.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    sub.add_parser("programs", parents=[common], help="what you may launch")
    _add_run_commands(sub, common)
    return top


HANDLERS: dict[str, Callable[[argparse.Namespace, Client], int]] = {
    "programs": commands.programs,
    "launch": commands.launch,
    "ls": commands.ls,
    "logs": commands.logs,
    "wait": commands.wait,
    "cancel": commands.cancel,
    "retry": commands.retry,
    "clone": commands.clone,
    "download": commands.download,
    "compare": commands.compare,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        if args.command == "login":
            return commands.login(args)
        settings = config.load()
        with Client(settings.url, settings.token) as client:
            return HANDLERS[args.command](args, client)
    except ClientError as error:
        sys.stderr.write(f"error: {error}\n")
        return USAGE_ERROR
    except KeyboardInterrupt:
        sys.stderr.write("error: interrupted\n")
        return 130
    except (OSError, ValueError) as error:  # a broken pipe, a file that cannot be written
        sys.stderr.write(f"error: {error}\n")
        return USAGE_ERROR


if __name__ == "__main__":
    sys.exit(main())
