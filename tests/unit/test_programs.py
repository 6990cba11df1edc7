"""Program registry: the TOML file admins write, and param validation."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from controlplane.env import ConfigError
from runs.programs import ParamsError, Program, load_programs_file, resolve_params

GOOD = """
[programs.finetune]
command = ["{python}", "/srv/train/finetune.py"]
description = "Fine-tune"
queue = "gpu-a100"
resources = { pool = "a100", gpus = 2 }
[programs.finetune.params]
steps = { type = "integer", default = 100, minimum = 1 }
lr = { type = "number", default = 3e-4, exclusiveMinimum = 0 }
mode = { type = "string", default = "full", enum = ["full", "lora"] }
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "programs.toml"
    path.write_text(text)
    return path


def test_a_programs_file_registers_programs_with_their_schema(tmp_path: Path) -> None:
    programs = load_programs_file(write(tmp_path, GOOD))
    finetune = programs["finetune"]
    assert finetune.command == (sys.executable, "/srv/train/finetune.py")
    assert finetune.queue == "gpu-a100"
    assert finetune.resources == {"pool": "a100", "gpus": 2}
    assert resolve_params(finetune, {}) == {"steps": 100, "lr": 3e-4, "mode": "full"}
    assert resolve_params(finetune, {"lr": 1, "mode": "lora"})["lr"] == 1.0


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[programs.x]\ncommand = []", "command must be a non-empty list"),
        ("[programs.x]\ncommand = 'python x.py'", "command must be a non-empty list"),
        ("[programs.X]\ncommand = ['a']", "must match"),
        ("[programs.x]\ncommand = ['a']\n[programs.x.params]\nn = { type = 'integer' }", "needs a default"),
        (
            "[programs.x]\ncommand = ['a']\n[programs.x.params]\nn = { type = 'complex', default = 1 }",
            "type must be",
        ),
        (
            "[programs.x]\ncommand = ['a']\n[programs.x.params]\nn = { type = 'integer', default = 0, minimum = 1 }",
            "default is invalid",
        ),
        (
            "[programs.x]\ncommand = ['a']\n[programs.x.params]\nn = { type = 'integer', default = 1, pattern = 'x' }",
            "unsupported keywords",
        ),
        ("this is = not toml [", "CONTROLPLANE_PROGRAMS_FILE"),
        (
            "[programs.x]\ncommand = ['a']\nresources = { pool = 'A100' }",
            r"programs.x.resources.pool a pool name",
        ),
        (
            "[programs.x]\ncommand = ['a']\nresources = { gpus = 99 }",
            r"programs.x.resources.gpus must be between",
        ),
        (
            "[programs.x]\ncommand = ['a']\nresources = { nodes = 0 }",
            r"programs.x.resources.nodes must be between 1 and 64",
        ),
        ("[programs.x]\ncommand = ['a']\nresources = 'a100'", r"programs.x.resources must be an object"),
        (
            "[programs.x]\ncommand = ['a']\nlauncher = 'mpirun'",
            "programs.x.launcher must be one of direct, torchrun",
        ),
        (
            "[programs.x]\ncommand = ['a']\nlauncher = 'torchrun'\nnproc_per_node = 0",
            "programs.x.nproc_per_node must be",
        ),
        (
            "[programs.x]\ncommand = ['a']\nlauncher = 'torchrun'\nnproc_per_node = '2'",
            "programs.x.nproc_per_node must be",
        ),
        ("[programs.x]\ncommand = ['a']\nnproc_per_node = 2", "nproc_per_node needs launcher = 'torchrun'"),
    ],
)
def test_bad_programs_files_are_refused_with_the_offending_entry(
    tmp_path: Path, text: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        load_programs_file(write(tmp_path, text))


def test_param_errors_name_every_bad_field() -> None:
    program = Program(
        name="p",
        command=("x",),
        description="",
        params={
            "n": {"type": "integer", "default": 1, "minimum": 1, "maximum": 10},
            "flag": {"type": "boolean", "default": False},
            "label": {"type": "string", "default": "", "maxLength": 5},
            "rate": {"type": "number", "default": 0.5, "exclusiveMaximum": 1},
        },
    )
    with pytest.raises(ParamsError) as caught:
        resolve_params(program, {"n": 11, "flag": "yes", "label": "toolong", "rate": 1, "extra": 1})
    assert set(caught.value.errors) == {
        "params.n",
        "params.flag",
        "params.label",
        "params.rate",
        "params.extra",
    }
    with pytest.raises(ParamsError) as nan:
        resolve_params(program, {"rate": float("nan")})
    assert "finite" in nan.value.errors["params.rate"]


def test_a_program_runs_directly_unless_its_entry_names_torchrun(tmp_path: Path) -> None:
    programs = load_programs_file(
        write(
            tmp_path,
            "[programs.plain]\ncommand = ['a']\n"
            "[programs.ddp]\ncommand = ['a']\nlauncher = 'torchrun'\nnproc_per_node = 4\n",
        )
    )
    assert (programs["plain"].launcher, programs["plain"].nproc_per_node) == ("direct", 1)
    assert (programs["ddp"].launcher, programs["ddp"].nproc_per_node) == ("torchrun", 4)
