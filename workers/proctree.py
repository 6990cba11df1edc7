"""The processes below a training program's guardian, wherever their process group.

A program's process group is not always the whole program: torchrun starts every rank in a
session of its own (`start_new_session=True` in torch's SubprocessHandler), so a signal to the
guardian's group reaches the torchrun agent but none of its ranks. SIGKILL the agent, and the ranks
would train on, unsupervised. So the guardian and the supervisor signal the guardian's whole
*tree*, read from /proc, and the guardian is a child subreaper (PR_SET_CHILD_SUBREAPER), so a rank
whose agent died is re-parented to the guardian and stays in the tree until it is ended.

No Django here: the guardian imports it.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
from pathlib import Path

PR_SET_CHILD_SUBREAPER = 36
PROC = Path("/proc")
# Rounds of "find the tree, SIGKILL it": a process forking while it is killed leaves an orphan,
# which (re-parented to the subreaper guardian) the next round finds.
KILL_ROUNDS = 5


def become_subreaper() -> bool:
    """Make this process the reaper of its orphaned descendants (Linux); False where unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


def _parent_of(pid: int) -> int | None:
    try:
        stat = (PROC / str(pid) / "stat").read_bytes()
    except OSError:
        return None
    # The command name (2nd field) is in parentheses and may hold spaces or ')': split after the last.
    fields = stat[stat.rfind(b")") + 2 :].split()
    if len(fields) < 2 or fields[0] == b"Z":
        return None  # a zombie holds nothing: nothing to signal
    return int(fields[1])


def descendants(root: int) -> list[int]:
    """Every live process below `root` (children first found, breadth-first); [] without /proc."""
    children: dict[int, list[int]] = {}
    try:
        entries = [int(entry.name) for entry in PROC.iterdir() if entry.name.isdigit()]
    except OSError:
        return []
    for pid in entries:
        parent = _parent_of(pid)
        if parent is not None:
            children.setdefault(parent, []).append(pid)
    found: list[int] = []
    frontier = [root]
    while frontier:
        below = [child for pid in frontier for child in children.get(pid, [])]
        found.extend(below)
        frontier = below
    return found


def signal_tree(root: int, signum: int, *, include_root_group: bool = True) -> None:
    """Send `signum` to every process below `root`, then to `root`'s process group.

    SIGKILL goes round by round, until no descendant is left, before the group (and so, when the
    root is the guardian, the guardian itself): the guardian has to outlive its descendants to
    keep adopting the orphans they leave.
    """
    rounds = KILL_ROUNDS if signum == signal.SIGKILL else 1
    for _ in range(rounds):
        pids = descendants(root)
        if not pids:
            break
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signum)
    if include_root_group:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(root, signum)
