"""Turn the end of a training process into a failure kind, a code and a readable message."""

from __future__ import annotations

import signal
from collections.abc import Sequence
from dataclasses import dataclass

from runs.models import ErrorKind

CONFIG_EXIT_CODE = 2
DATA_EXIT_CODE = 3
CANNOT_START_EXIT_CODE = 127  # the guardian's answer when the program's command cannot run


@dataclass(frozen=True)
class Failure:
    kind: str
    code: str
    message: str


def _tail(lines: Sequence[str], count: int = 5) -> str:
    return "\n".join(lines[-count:])


def classify_exit(exit_code: int, stderr_tail: Sequence[str]) -> Failure:
    text = "\n".join(stderr_tail)
    lowered = text.lower()
    if "out of memory" in lowered or "outofmemoryerror" in lowered:
        return Failure(
            ErrorKind.OOM, "out_of_memory", f"the program ran out of memory:\n{_tail(stderr_tail)}"
        )
    if "cuda error" in lowered or "nccl" in lowered or "cudnn_status" in lowered:
        return Failure(
            ErrorKind.DEVICE, "device_error", f"a GPU error ended the program:\n{_tail(stderr_tail)}"
        )
    if exit_code == CANNOT_START_EXIT_CODE and "could not start" in lowered:
        lines = [line for line in stderr_tail if "could not start" in line]
        return Failure(ErrorKind.CONFIG, "cannot_start", lines[-1])
    if exit_code == CONFIG_EXIT_CODE and "config error" in lowered:
        lines = [line for line in stderr_tail if "config error" in line.lower()]
        return Failure(ErrorKind.CONFIG, "invalid_config", lines[-1] if lines else text[-500:])
    if exit_code == DATA_EXIT_CODE and "data error" in lowered:
        return Failure(ErrorKind.DATA, "invalid_data", _tail(stderr_tail, 2))
    if exit_code < 0:
        try:
            name = signal.Signals(-exit_code).name
        except ValueError:
            name = f"signal {-exit_code}"
        hint = " (the kernel's out-of-memory killer sends SIGKILL)" if name == "SIGKILL" else ""
        return Failure(ErrorKind.PROGRAM, f"killed_{name.lower()}", f"the program was killed by {name}{hint}")
    detail = _tail(stderr_tail) or "(no output on stderr)"
    return Failure(
        ErrorKind.PROGRAM, f"exit_{exit_code}", f"the program exited with code {exit_code}:\n{detail}"
    )
