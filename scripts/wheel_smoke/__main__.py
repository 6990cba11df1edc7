"""`python -m scripts.wheel_smoke [--out DIR] [--keep]`: see the package's docstring."""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from scripts.wheel_smoke import build, installed
from scripts.wheel_smoke.common import SmokeError, clean_env, say, step
from scripts.wheel_smoke.standalone import standalone


def smoke(work: Path, timings: list[tuple[str, float]]) -> Path:
    """Every step, in order; the wheel that passed them."""
    outside = work / "outside"
    outside.mkdir()
    with step("build the wheel (pip wheel --no-deps, from a copy of the working tree)", timings):
        wheel, source = build.build(work)
        count = build.check_contents(wheel, source)
        say(f"    {wheel.name}: {count} files, {wheel.stat().st_size // 1024} KiB")
        say(f"    packages: {', '.join(build.present_packages())}, templates and static in controlplane_web")
    with step("a build without static/vendor/ refuses, saying why", timings):
        build.check_refused_without_vendor_files(source, work / "dist-refused")
    venv = work / "venv"
    with step("install the wheel and its pinned dependencies into a fresh virtualenv", timings):
        say(f"    torch {installed.install(wheel, venv, outside)}; pip check: ok")
    data, static_root = work / "data", work / "staticfiles"
    env = clean_env(CONTROLPLANE_DATA_DIR=str(data), STATIC_ROOT=str(static_root))
    with step("outside the source tree: imports, migrate, collectstatic, check --deploy", timings):
        installed.manage_outside(venv, outside, env, work)
    with step("controlplane-manage standalone: sign in, train tinygpt, download the model, SIGINT", timings):
        manage = venv / "bin" / "controlplane-manage"
        result = standalone(manage, outside, data, static_root, work / "standalone.log")
        run, seconds, size = result["run"], result["seconds"], result["bytes"]
        say(f"    run {run} succeeded in {seconds} s: {result['model']}, {size} bytes")
        say("    download's sha256 = the API's; the run's page preloads the chart module; SIGINT: exit 0")
    with step("workers.sdk from the wheel installed --no-deps (no Django, no torch)", timings):
        events = installed.sdk_without_django(wheel, work / "venv-sdk", outside)
        say(f"    {len(events)} JSON lines on the events pipe, e.g. {json.dumps(events[1])}")
    return wheel


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="./dev wheel-smoke", description="Build, install and run the wheel."
    )
    parser.add_argument("--out", type=Path, help="copy the wheel, once it passed, into this directory")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (path printed)")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="wheel-smoke-"))
    timings: list[tuple[str, float]] = []
    started = time.monotonic()
    try:
        wheel = smoke(work, timings)
        if args.out is not None:
            args.out.mkdir(parents=True, exist_ok=True)
            shutil.copy2(wheel, args.out / wheel.name)
            say(f"the wheel that passed: {args.out / wheel.name}")
    except (SmokeError, subprocess.TimeoutExpired) as error:
        sys.stderr.write(f"error: wheel smoke failed: {error}\n")
        log = work / "standalone.log"
        if log.is_file():
            sys.stderr.write(f"--- standalone log (last lines) ---\n{log.read_text()[-4000:]}\n")
        return 1
    finally:
        if args.keep:
            say(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    for name, seconds in timings:
        sys.stderr.write(f"  {seconds:6.1f} s  {name}\n")
    sys.stderr.write(f"  {time.monotonic() - started:6.1f} s  wheel smoke, in all: ok\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
