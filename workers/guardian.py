"""The guardian: a tiny parent for a training program that ends it when its supervisor dies.

The supervisor starts `python -m workers.guardian LIFELINE_FD -- COMMAND...` in a new session.
The guardian starts COMMAND in the same process group and waits. The supervisor holds the write
end of the lifeline pipe and never writes to it; when the supervisor dies for any reason
(SIGKILL included) the kernel closes that end, the guardian reads end-of-file, and it ends the
whole process group: SIGTERM, then SIGKILL after a grace period. Without it, a program (and the
workers torchrun forks) would train on unsupervised after a worker crash, and a resumed attempt
would run beside it.

The guardian exits the way the program did (same exit code, or killed by the same signal), so the
supervisor sees the program's own ending.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import sys
import time

GRACE_SECONDS = 5.0


def _end_group(grace: float) -> None:
    group = os.getpgrp()
    with contextlib.suppress(ProcessLookupError):
        os.killpg(group, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        time.sleep(0.1)
    # SIGKILL reaches the guardian too, which is what we want by now.
    os.killpg(group, signal.SIGKILL)


def _exit_like(returncode: int) -> None:
    if returncode < 0:
        # SIGKILL and SIGSTOP cannot have handlers; every other signal gets its default back.
        with contextlib.suppress(OSError, ValueError):
            signal.signal(-returncode, signal.SIG_DFL)
        os.kill(os.getpid(), -returncode)
        time.sleep(1)
    sys.exit(returncode if returncode >= 0 else 128 - returncode)


def main(argv: list[str]) -> None:
    if len(argv) < 3 or argv[1] != "--":
        sys.stderr.write("usage: python -m workers.guardian LIFELINE_FD -- COMMAND [ARGS...]\n")
        sys.exit(64)
    lifeline = int(argv[0])
    command = argv[2:]
    # The group's SIGTERM (a cancel) is meant for the program; the guardian stays to report how
    # the program ended.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    events_fd = os.environ.get("CONTROLPLANE_EVENTS_FD")
    pass_fds = (int(events_fd),) if events_fd and events_fd.isdigit() else ()
    try:
        program = subprocess.Popen(
            command,
            pass_fds=pass_fds,
            # The program gets default signal handling back, not the guardian's SIG_IGN.
            preexec_fn=_restore_signals,  # safe: the guardian has no threads
        )
    except OSError as error:
        sys.stderr.write(f"could not start {command[0]!r}: {error.strerror or error}\n")
        sys.exit(127)
    for fd in pass_fds:
        os.close(fd)
    while True:
        ready, _, _ = select.select([lifeline], [], [], 0.5)
        if ready and not os.read(lifeline, 1):
            sys.stderr.write("guardian: the supervisor is gone; ending the program\n")
            _end_group(GRACE_SECONDS)
        returncode = program.poll()
        if returncode is not None:
            _exit_like(returncode)


def _restore_signals() -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)


if __name__ == "__main__":
    main(sys.argv[1:])
