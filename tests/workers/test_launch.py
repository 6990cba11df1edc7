"""workers/launch.py: the program's environment is the protocol's contract and nothing more."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from runs.attempts import Claim
from runs.programs import Program
from workers.launch import SOURCE_ROOT, Launch


def launch(
    tmp_path: Path,
    resume_from: str | None = None,
    dataset: str | None = None,
    secrets: dict[str, str] | None = None,
) -> Launch:
    program = Program(name="p", command=("python",), description="", params={}, env={"OMP_NUM_THREADS": "2"})
    claim = Claim(run_id=7, attempt=2, program="p", params={}, secrets=[], request_id="req-1")
    return Launch(7, program, claim, tmp_path, tmp_path / "params.json", resume_from, dataset, secrets or {})


def test_the_environment_holds_the_protocol_variables_and_none_of_the_workers_configuration(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgres://worker-only")
    monkeypatch.setenv("TZ", "UTC")
    env = launch(tmp_path).environment(events_fd=9)
    assert "DATABASE_URL" not in env
    assert env["TZ"] == "UTC"
    assert env["PYTHONPATH"] == str(SOURCE_ROOT)
    assert (env["CONTROLPLANE_RUN_ID"], env["CONTROLPLANE_ATTEMPT"], env["CONTROLPLANE_EVENTS_FD"]) == (
        "7",
        "2",
        "9",
    )
    assert env["CONTROLPLANE_REQUEST_ID"] == "req-1"
    assert env["OMP_NUM_THREADS"] == "2"  # the program's own table comes last
    assert "CONTROLPLANE_RESUME_FROM" not in env and "CONTROLPLANE_DATASET_PATH" not in env


def test_a_resumed_attempt_with_a_dataset_and_secrets_gets_them_but_no_secret_overrides_the_control_plane(
    tmp_path: Path,
) -> None:
    secrets = {"HF_TOKEN": "s3cret", "CONTROLPLANE_RUN_ID": "forged"}
    env = launch(
        tmp_path, resume_from="checkpoints/step-4.pt", dataset="dataset/corpus.txt", secrets=secrets
    ).environment(events_fd=9)
    assert env["CONTROLPLANE_RESUME_FROM"] == "checkpoints/step-4.pt"
    assert env["CONTROLPLANE_DATASET_PATH"] == "dataset/corpus.txt"
    assert env["HF_TOKEN"] == "s3cret"
    assert env["CONTROLPLANE_RUN_ID"] == "7"


def torchrun_launch(
    tmp_path: Path, *, gpus: tuple[int, ...] | None, params: dict[str, object], nproc: int = 3
) -> Launch:
    program = Program(
        name="ddp",
        command=("python", "-m", "train"),
        description="",
        params={},
        launcher="torchrun",
        nproc_per_node=nproc,
    )
    claim = Claim(run_id=7, attempt=1, program="ddp", params=params, secrets=[], request_id="r")
    return Launch(7, program, claim, tmp_path, tmp_path / "params.json", gpus=gpus)


def test_a_direct_program_starts_its_own_command(tmp_path: Path) -> None:
    assert launch(tmp_path).argv() == ("python",)


def test_a_torchrun_program_starts_one_process_per_reserved_gpu_under_torchrun(tmp_path: Path) -> None:
    argv = torchrun_launch(tmp_path, gpus=(2, 5), params={"nproc_per_node": 8}).argv()
    assert argv[:4] == (sys.executable, "-m", "torch.distributed.run", "--standalone")
    assert "--nproc-per-node=2" in argv and "--max-restarts=0" in argv
    assert argv[-4:] == ("--no-python", "python", "-m", "train")


def test_on_a_cpu_slot_the_run_s_param_then_the_program_s_count_decide(tmp_path: Path) -> None:
    assert torchrun_launch(tmp_path, gpus=(), params={"nproc_per_node": 2}).processes_per_node() == 2
    assert torchrun_launch(tmp_path, gpus=None, params={}).processes_per_node() == 3
    assert torchrun_launch(tmp_path, gpus=(), params={"nproc_per_node": True}).processes_per_node() == 3


def test_the_events_socket_is_named_for_every_process_of_the_run(tmp_path: Path) -> None:
    env = launch(tmp_path).environment(events_fd=9, events_socket=tmp_path / "events.sock")
    assert env["CONTROLPLANE_EVENTS_SOCKET"] == str(tmp_path / "events.sock")
    assert env["CONTROLPLANE_EVENTS_FD"] == "9"
