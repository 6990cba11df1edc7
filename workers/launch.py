"""What a training program starts with: its command, its run directory and its environment.

The environment is the program protocol's contract (docs/architecture.md, "The program protocol"):
a minimal set of the worker's variables, the control plane's own, then the run's secrets and the
program's `env` table. Never the worker's configuration (database URL, keys).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from runs.attempts import Claim
from runs.programs import LAUNCHER_TORCHRUN, Program

PASSED_THROUGH_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "CUDA_VISIBLE_DEVICES", "OMP_NUM_THREADS")
# On the program's PYTHONPATH, so `import workers.sdk` works from any run directory.
SOURCE_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class GangPart:
    """This worker's node of a multi-node run (fleet/gang.py): torchrun's static rendezvous,
    whose store node 0's torchrun hosts at `host:port`."""

    rank: int
    nodes: int
    host: str
    port: int
    join_seconds: int

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class Launch:
    """One attempt's program, ready to start."""

    run_id: int
    program: Program
    claim: Claim
    directory: Path
    params_file: Path
    resume_from: str | None = None  # a run-relative checkpoint path, on a later attempt
    dataset: str | None = None  # the staged dataset's path, when the run names a dataset_url
    secrets: Mapping[str, str] = field(default_factory=dict)
    # The GPU indices the fleet reserved for this attempt (() for a CPU slot); None: a run
    # dispatched without the fleet, which sees the worker's own CUDA_VISIBLE_DEVICES.
    gpus: tuple[int, ...] | None = None
    gang: GangPart | None = None  # a multi-node run's node; None: one node

    def processes_per_node(self) -> int:
        """How many processes a torchrun program starts: one per reserved GPU; on a CPU slot, the
        run's `nproc_per_node` param when the program declares one, else the program's own."""
        if self.gpus:
            return len(self.gpus)
        chosen = self.claim.params.get("nproc_per_node")
        if isinstance(chosen, int) and not isinstance(chosen, bool) and chosen >= 1:
            return chosen
        return self.program.nproc_per_node

    def argv(self) -> tuple[str, ...]:
        """The command to start: the program's own, or torchrun starting it once per process.

        torchrun is PyTorch's own launcher (`python -m torch.distributed.run`, with the worker's
        interpreter). `--standalone` hosts the c10d rendezvous in the launcher on a port the kernel
        picks when it binds (localhost:0): free by construction, where a port chosen beforehand
        could be taken by another run in between. `--no-python` runs the program's command as it
        is written, whatever its language; `--max-restarts=0`, since the control plane's own
        attempts (from the newest checkpoint) are the retries.
        """
        command = self.program.command
        if self.program.launcher != LAUNCHER_TORCHRUN:
            return command
        return (
            sys.executable,
            "-m",
            "torch.distributed.run",
            *self._rendezvous(),
            f"--nproc-per-node={self.processes_per_node()}",
            "--max-restarts=0",
            "--no-python",
            *command,
        )

    def _rendezvous(self) -> tuple[str, ...]:
        """One node: the launcher's own c10d store on a port the kernel picks. A gang: the static
        rendezvous at node 0's published endpoint, waiting for the others as long as they may take
        to join."""
        gang = self.gang
        if gang is None:
            return ("--standalone", "--nnodes=1")
        return (
            f"--nnodes={gang.nodes}",
            f"--node-rank={gang.rank}",
            f"--master-addr={gang.host}",
            f"--master-port={gang.port}",
            f"--rdzv-conf=timeout={gang.join_seconds}",
        )

    def environment(self, events_fd: int, events_socket: Path | None = None) -> dict[str, str]:
        """The program's whole environment, with `events_fd` as the write end of its events pipe
        and `events_socket` the path of the events socket any of its processes may connect to."""
        env = {name: os.environ[name] for name in PASSED_THROUGH_ENV if name in os.environ}
        env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
        env.setdefault("LANG", "C.UTF-8")
        env.update(
            {
                "PYTHONPATH": str(SOURCE_ROOT),
                "PYTHONUNBUFFERED": "1",
                "CONTROLPLANE_RUN_ID": str(self.run_id),
                "CONTROLPLANE_RUN_DIR": str(self.directory),
                "CONTROLPLANE_PARAMS": str(self.params_file),
                "CONTROLPLANE_EVENTS_FD": str(events_fd),
                "CONTROLPLANE_REQUEST_ID": self.claim.request_id,
                "CONTROLPLANE_ATTEMPT": str(self.claim.attempt),
            }
        )
        if events_socket is not None:
            env["CONTROLPLANE_EVENTS_SOCKET"] = str(events_socket)
        for name, value in self.secrets.items():
            env.setdefault(name, value)  # never over the control plane's own variables
        if self.gpus is not None:
            # Exactly its devices: two runs on one host never see each other's GPUs.
            env["CUDA_VISIBLE_DEVICES"] = env["CONTROLPLANE_GPUS"] = ",".join(str(i) for i in self.gpus)
        if self.gang is not None:
            # For any program of a gang; torchrun gives its workers their own MASTER_* as well.
            env.update(
                CONTROLPLANE_NODE_RANK=str(self.gang.rank),
                CONTROLPLANE_NODES=str(self.gang.nodes),
                CONTROLPLANE_RENDEZVOUS=self.gang.endpoint,
                MASTER_ADDR=self.gang.host,
                MASTER_PORT=str(self.gang.port),
            )
        if self.resume_from is not None:
            env["CONTROLPLANE_RESUME_FROM"] = self.resume_from
        if self.dataset is not None:
            env["CONTROLPLANE_DATASET_PATH"] = self.dataset
        env.update(self.program.env)
        return env
