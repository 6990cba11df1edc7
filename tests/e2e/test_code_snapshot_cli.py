"""Issue #14's "done means": a user's own PyTorch project, run as a code snapshot with cpctl.

In a virtualenv with only the client installed, against the real stack (web, Celery worker,
Postgres, Redis): sign in, `cpctl launch --code DIR -- python train.py --epochs 3`, follow the
log to the end, download the `.safetensors` and load it here (this process has torch). Then the
bad input: each a one-line error and a non-zero exit, with nothing half uploaded registered.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import httpx
import pytest
from safetensors import safe_open
from safetensors.torch import load_file

from accounts.tokens import do_issue_token
from runs.models import CodeSnapshot
from tests.conftest import PASSWORD, Stack, free_port, make_user
from tests.e2e.conftest import ClientVenv
from tests.e2e.test_cli import as_user, ok, one_error_line

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

TRAIN_PY = '''\
"""A tiny regression: learn y = 3x - 1 with a linear layer; report and save the model."""
import argparse

import torch
from safetensors.torch import save_file

from model import make_model
from workers.sdk import Reporter

parser = argparse.ArgumentParser()
parser.add_argument("--epochs", type=int, default=1)
args = parser.parse_args()
torch.manual_seed(0)
x = torch.linspace(-1, 1, 64).unsqueeze(1)
y = 3 * x - 1
net = make_model()
optimizer = torch.optim.SGD(net.parameters(), lr=0.5)
with Reporter.from_env() as report:
    for epoch in range(1, args.epochs + 1):
        for _ in range(20):
            optimizer.zero_grad()
            loss = torch.nn.functional.mse_loss(net(x), y)
            loss.backward()
            optimizer.step()
        report.metric(epoch, {"train/loss": loss.item()})
        print(f"epoch {epoch} loss {loss.item():.6f}", flush=True)
    save_file(net.state_dict(), "model.safetensors", metadata={"epochs": str(args.epochs)})
    report.artifact("model.safetensors", "model")
print("training done", flush=True)
'''

MODEL_PY = """\
import torch


def make_model() -> torch.nn.Module:
    return torch.nn.Linear(1, 1)
"""


def write_project(root: Path) -> Path:
    root.mkdir(parents=True)
    (root / "train.py").write_text(TRAIN_PY)
    (root / "model.py").write_text(MODEL_PY)
    (root / ".gitignore").write_text("data/\n*.ckpt\n")
    (root / "data").mkdir()
    (root / "data" / "huge.bin").write_bytes(b"\0" * 1024)
    (root / "old.ckpt").write_text("not for the snapshot")
    return root


def test_launch_a_code_snapshot_follow_it_download_and_load_the_model(
    stack: Stack, live_owner: Any, live_api: httpx.Client, client_venv: ClientVenv, tmp_path: Path
) -> None:
    project = write_project(tmp_path / "my_project")
    signed_in = client_venv.cpctl(
        "login", stack.base_url, "--username", "olivia", "--password-stdin", stdin=PASSWORD + "\n"
    )
    ok(signed_in)

    launched = client_venv.cpctl(
        "launch", "--code", str(project), "--json", "--", "python", "train.py", "--epochs", "3"
    )
    run = json.loads(ok(launched))
    assert "uploaded snapshot" in launched.stderr
    assert run["kind"] == "code" and run["program"] == "code"
    assert run["command"] == ["python", "train.py", "--epochs", "3"]
    assert run["name"] == "my_project"

    followed = ok(client_venv.cpctl("logs", str(run["id"]), "-f"))
    assert "code snapshot" in followed and "unpacked: 3 files" in followed  # train.py, model.py, .gitignore
    assert "epoch 3 loss" in followed and "training done" in followed
    final = json.loads(ok(client_venv.cpctl("wait", str(run["id"]), "--json")))
    assert final["status"] == "succeeded", final

    snapshot = live_api.get(f"/api/v1/snapshots/{run['snapshot']}/").json()
    assert [f["path"] for f in snapshot["files"]] == [".gitignore", "model.py", "train.py"]

    out = tmp_path / "out"
    paths = json.loads(ok(client_venv.cpctl("download", str(run["id"]), "-o", str(out), "--json")))
    model = out / "model.safetensors"
    assert str(model) in paths
    weights = load_file(str(model))
    assert set(weights) == {"weight", "bias"}
    assert abs(weights["weight"].item() - 3.0) < 0.1 and abs(weights["bias"].item() + 1.0) < 0.1
    with safe_open(str(model), framework="pt") as handle:
        assert handle.metadata()["epochs"] == "3"
    loss = live_api.get(f"/api/v1/runs/{run['id']}/metrics/", params={"key": "train/loss"}).json()
    assert [p["step"] for p in loss["points"]] == [1, 2, 3]

    # Unchanged: not sent again. The clone runs the same snapshot and command.
    again = client_venv.cpctl("launch", "--code", str(project), "--json", "--", "python", "-c", "print(42)")
    second = json.loads(ok(again))
    assert f"snapshot {run['snapshot'][:12]} already uploaded" in again.stderr
    assert second["snapshot"] == run["snapshot"]
    clone = json.loads(ok(client_venv.cpctl("clone", str(run["id"]), "--json")))
    assert (clone["snapshot"], clone["command"]) == (run["snapshot"], run["command"])
    for extra in (second, clone):
        ended = json.loads(ok(client_venv.cpctl("wait", str(extra["id"]), "--json", "--timeout", "120")))
        assert ended["status"] == "succeeded", ended
    assert "42" in ok(client_venv.cpctl("logs", str(second["id"])))


def test_bad_code_launches_get_one_error_line_and_register_nothing(
    stack: Stack, live_owner: Any, client_venv: ClientVenv, tmp_path: Path
) -> None:
    env = as_user(client_venv, stack, live_owner[1])
    project = write_project(tmp_path / "p")
    before = CodeSnapshot.objects.count()

    def code(directory: Path | str, *command: str, as_env: dict[str, str] = env) -> Any:
        return client_venv.cpctl("launch", "--code", str(directory), "--", *command, env=as_env)

    one_error_line(code(tmp_path / "missing", "python", "train.py"), "no such directory")
    one_error_line(client_venv.cpctl("launch", "--code", str(project), env=env), "needs a command")
    big = write_project(tmp_path / "big")
    (big / "weights.bin").write_bytes(os.urandom(51 * 1024**2))  # incompressible, over 50 MiB
    one_error_line(code(big, "python", "train.py"), "over the server's limit", ".cpignore")
    one_error_line(client_venv.cpctl("launch", "no-such-program", env=env), "unknown program")
    one_error_line(client_venv.cpctl("launch", "scripted", "-p", "nope=1", env=env), "unknown param")

    revoked = do_issue_token(live_owner[0], name="to-revoke")
    with httpx.Client(base_url=stack.base_url, headers={"Authorization": f"Bearer {live_owner[1]}"}) as api:
        assert api.delete(f"/api/v1/tokens/{revoked.token.pk}/").status_code == 200
    stale = as_user(client_venv, stack, revoked.plaintext)
    one_error_line(code(project, "python", "train.py", as_env=stale), "401", "cpctl login")

    viewer = as_user(client_venv, stack, do_issue_token(make_user("vera", "viewer")).plaintext)
    one_error_line(code(project, "python", "train.py", as_env=viewer), "may not run their own code", "403")

    down = {"CONTROLPLANE_URL": f"http://127.0.0.1:{free_port()}", "CONTROLPLANE_TOKEN": "x"}
    one_error_line(code(project, "python", "train.py", as_env=down), "cannot reach")
    assert CodeSnapshot.objects.count() == before  # nothing half uploaded, nothing registered
