"""What each cpctl command does, given parsed arguments and a Client."""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from controlplane_client import config, output, params
from controlplane_client.client import Client
from controlplane_client.errors import ClientError
from controlplane_client.types import EXIT_CODES, Event, Run


def login(args: argparse.Namespace) -> int:
    url = args.url.rstrip("/")
    with Client(url, args.token) as client:
        if not args.token:
            username = args.username or input("username: ")
            password = (
                sys.stdin.readline().rstrip("\n") if args.password_stdin else getpass.getpass("password: ")
            )
            client.sign_in(username, password)
        me = client.whoami()
        assert client.token is not None
        path = config.save(url, client.token)
    if args.json:
        output.emit_json({"url": url, "user": me, "config": str(path)})
    else:
        output.say(f"signed in to {url} as {me.get('username')} ({me.get('role')}); saved in {path}")
    return 0


def programs(args: argparse.Namespace, client: Client) -> int:
    found = client.programs()
    if args.json:
        output.emit_json(found)
        return 0
    rows = []
    for p in found:
        names = ", ".join(f"{k}={v}" for k, v in p["defaults"].items())
        rows.append([p["name"], "yes" if p["builtin"] else "", p["description"][:60], names[:80]])
    output.table(["PROGRAM", "BUILTIN", "DESCRIPTION", "PARAMS (defaults)"], rows)
    return 0


def _schema_of(client: Client, program: str) -> dict[str, Any] | None:
    try:
        return client.program(program)["params_schema"]
    except ClientError as error:
        if error.status == 404:
            return None  # the launch itself gets the server's message for an unknown program
        raise


def _launch_code(args: argparse.Namespace, client: Client) -> Run:
    # After `--` every word is positional: the first lands in `program`, the rest in `command`.
    command = [args.program, *args.code_command] if args.program else list(args.code_command)
    if not command:
        raise ClientError("--code needs a command after --, e.g. cpctl launch --code . -- python train.py")
    if args.param or args.file:
        raise ClientError("--param and --file are for programs; pass a code run's arguments in its command")
    snapshot, sent = client.upload_snapshot(args.code)
    short = snapshot["sha256"][:12]
    if sent:
        detail = f"{len(snapshot['files'])} files, {snapshot['size']} bytes"
        output.say(f"uploaded snapshot {short} ({detail})", file=sys.stderr)
    else:
        output.say(f"snapshot {short} already uploaded", file=sys.stderr)
    name = args.name or Path(args.code).resolve().name
    return client.launch_snapshot(
        snapshot["sha256"],
        command,
        name=name,
        gpus=args.gpus,
        pool=args.pool,
        priority=args.priority,
        nodes=args.nodes,
    )


def launch(args: argparse.Namespace, client: Client) -> int:
    if args.code is not None:
        run = _launch_code(args, client)
    elif not args.program or args.code_command:
        raise ClientError("a program name is required (or --code DIR -- COMMAND to run your own code)")
    else:
        values = params.build(args.param or [], args.file or [], _schema_of(client, args.program))
        run = client.launch(
            args.program,
            values,
            name=args.name,
            gpus=args.gpus,
            pool=args.pool,
            priority=args.priority,
            nodes=args.nodes,
        )
    if args.follow:
        return _follow_and_wait(args, client, run)
    if args.json:
        output.emit_json(run)
    else:
        output.say(f"launched {output.run_summary(run)}")
    return 0


def _follow_and_wait(args: argparse.Namespace, client: Client, run: Run) -> int:
    if not args.json:
        output.say(f"launched {output.run_summary(run)}", file=sys.stderr)
    _print_events(args, client.follow(run["id"]))
    final = client.wait(run["id"])
    _report(args, final)
    return EXIT_CODES.get(final["status"], 1)


def _print_events(args: argparse.Namespace, events: Iterator[Event]) -> None:
    for event in events:
        if event["type"] == "log":
            line = event["line"]
            sys.stdout.write(_json_line(line) if args.json else f"{line['line']}\n")
        elif not args.json:
            output.say(f"-- {event['status']}", file=sys.stderr)
        sys.stdout.flush()


def _json_line(value: Any) -> str:
    return json.dumps(value, separators=(",", ":")) + "\n"


def _report(args: argparse.Namespace, run: Run) -> None:
    if args.json:
        output.emit_json(run)
    else:
        output.say(output.run_summary(run), file=sys.stderr)


def ls(args: argparse.Namespace, client: Client) -> int:
    runs = client.runs(status=args.status, limit=args.limit, program=args.program)
    if args.json:
        output.emit_json(runs)
    else:
        output.table(["ID", "NAME", "PROGRAM", "STATUS", "OWNER", "CREATED"], output.run_rows(runs))
    return 0


def logs(args: argparse.Namespace, client: Client) -> int:
    if args.follow:
        _print_events(args, client.follow(args.run, args.after, drop_every=args.debug_drop_every))
        return 0
    after = args.after
    while True:
        page = client.logs(args.run, after=after)
        for line in page["results"]:
            sys.stdout.write(_json_line(line) if args.json else f"{line['line']}\n")
        if not page["has_more"]:
            return 0
        after = page["next_after"]


def wait(args: argparse.Namespace, client: Client) -> int:
    run = client.wait(args.run, timeout=args.timeout)
    _report(args, run)
    return EXIT_CODES.get(run["status"], 1)


def cancel(args: argparse.Namespace, client: Client) -> int:
    _report(args, client.cancel(args.run))
    return 0


def retry(args: argparse.Namespace, client: Client) -> int:
    _report(args, client.retry(args.run))
    return 0


def clone(args: argparse.Namespace, client: Client) -> int:
    _report(args, client.clone(args.run))
    return 0


def download(args: argparse.Namespace, client: Client) -> int:
    paths = client.download(args.run, Path(args.output), name=args.name, progress=output.Progress())
    if args.json:
        output.emit_json([str(p) for p in paths])
    else:
        for path in paths:
            output.say(path)
    return 0


def compare(args: argparse.Namespace, client: Client) -> int:
    a, b = client.run(args.runs[0]), client.run(args.runs[1])
    fa, fb = client.metric_finals(a["id"]), client.metric_finals(b["id"])
    pa, pb = a.get("params", {}), b.get("params", {})
    param_rows = [
        [k, pa.get(k), pb.get(k), "" if pa.get(k) == pb.get(k) else "*"] for k in sorted({*pa, *pb})
    ]
    metric_rows = [[k, fa.get(k), fb.get(k)] for k in sorted({*fa, *fb})]
    if args.json:
        output.emit_json(
            {
                "runs": [a, b],
                "params": {r[0]: {"a": r[1], "b": r[2], "differs": bool(r[3])} for r in param_rows},
                "metrics": {r[0]: {"a": r[1], "b": r[2]} for r in metric_rows},
            }
        )
        return 0
    output.say(f"A: {output.run_summary(a)}\nB: {output.run_summary(b)}\n")
    output.table(["PARAM", f"A ({a['id']})", f"B ({b['id']})", "DIFF"], param_rows)
    output.say()
    output.table(["FINAL METRIC", f"A ({a['id']})", f"B ({b['id']})"], metric_rows)
    return 0
