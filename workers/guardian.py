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

Launchers such as torchrun start each rank in a session of its own, out of reach of a signal to
the group: the guardian is a child subreaper (orphaned ranks are re-parented to it, and reaped by
it) and ends its whole process tree, not only its group (workers/proctree.py).
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import sys
import time

from workers.proctree import KILL_ROUNDS, become_subreaper, descendants, signal_tree

GRACE_SECONDS = 5.0


def _end_group(grace: float) -> None:
    me = os.getpid()
    signal_tree(me, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        time.sleep(0.1)
        _reap_orphans(None)
    # SIGKILL reaches the guardian too (last, after its tree), which is what we want by now.
    signal_tree(me, signal.SIGKILL)


def _end_escaped_descendants() -> None:
    """The program is gone: end what is left of its tree in other sessions (ranks whose launcher
    died), which would leave with this guardian's exit. What is left in the group is the
    supervisor's to end, after the grace it gives the program's pipes (workers/watch.py)."""
    group = os.getpgrp()
    for _ in range(KILL_ROUNDS):
        escaped = [pid for pid in descendants(os.getpid()) if _group_of(pid) not in (group, None)]
        if not escaped:
            return
        for pid in escaped:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)
        _reap_orphans(None)


def _group_of(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


def _reap_orphans(program_pid: int | None) -> int | None:
    """Reap every child that has ended (the program, or a re-parented orphan); the program's
    return code (as subprocess writes it) once it has ended, else None."""
    returncode = None
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return returncode
        if pid == 0:
            return returncode
        if pid == program_pid:
            returncode = os.waitstatus_to_exitcode(status)


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
    # A child's end wakes the loop at once (a byte on this pipe), not at its next timeout: the
    # supervisor learns of the exit, and the device goes to the next run, that much sooner.
    # Installed before the program starts, so no exit can come before it.
    child_ended = _wake_on_sigchld()
    become_subreaper()
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
        ready, _, _ = select.select([lifeline, child_ended], [], [], 0.5)
        if child_ended in ready:
            with contextlib.suppress(BlockingIOError):
                os.read(child_ended, 512)
        if lifeline in ready and not os.read(lifeline, 1):
            # Its stderr is a pipe to the supervisor that just died: a write raises EPIPE there,
            # which must not end the guardian before it has ended the program.
            with contextlib.suppress(OSError):
                sys.stderr.write("guardian: the supervisor is gone; ending the program\n")
                sys.stderr.flush()
            _end_group(GRACE_SECONDS)
        # One waitpid for every child: the program, and the orphans this subreaper adopts.
        returncode = _reap_orphans(program.pid)
        if returncode is not None:
            _end_escaped_descendants()
            _exit_like(returncode)


def _wake_on_sigchld() -> int:
    """The read end of a pipe that gets a byte whenever SIGCHLD arrives."""
    read_end, write_end = os.pipe()
    os.set_blocking(read_end, False)
    os.set_blocking(write_end, False)
    signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)
    signal.signal(signal.SIGCHLD, lambda _signum, _frame: None)  # a handler, so the fd is written
    return read_end


def _restore_signals() -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)


if __name__ == "__main__":
    main(sys.argv[1:])
