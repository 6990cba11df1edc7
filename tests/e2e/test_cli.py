"""cpctl as a user runs it: a virtualenv with only the client installed, against the real stack.

Sign in, list programs, launch with typed params from -p and a YAML file, follow, wait, download
(resumed from a .part file, sha256-checked) and load the model with safetensors; follow a log
through dropped connections without a gap or a duplicate; exit codes of wait; and every kind of
bad input answered with one `error:` line and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import json
import stat
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
from safetensors import safe_open

from accounts.tokens import do_issue_token
from tests.conftest import PASSWORD, TINY_TINYGPT, Stack, free_port
from tests.e2e.conftest import ClientVenv

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def ok(result: Any) -> str:
    assert result.returncode == 0, (result.returncode, result.stdout[-2000:], result.stderr[-2000:])
    return str(result.stdout)


def one_error_line(result: Any, *fragments: str) -> str:
    assert result.returncode != 0, result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), lines[0]
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return str(lines[0])


def as_user(client_venv: ClientVenv, stack: Stack, token: str) -> dict[str, str]:
    return {"CONTROLPLANE_URL": stack.base_url, "CONTROLPLANE_TOKEN": token}


def test_the_client_venv_has_no_django_and_no_torch(client_venv: ClientVenv) -> None:
    for module in ("django", "torch"):
        result = client_venv.cpctl("--help")  # the entry point works
        assert result.returncode == 0
        probe = subprocess.run(
            [str(client_venv.python), "-c", f"import {module}"], capture_output=True, env=client_venv.env()
        )
        assert probe.returncode != 0, module


def test_login_launch_follow_wait_download_and_load_the_model(
    stack: Stack, live_owner: Any, live_api: httpx.Client, client_venv: ClientVenv, tmp_path: Path
) -> None:
    signed_in = client_venv.cpctl(
        "login", stack.base_url, "--username", "olivia", "--password-stdin", "--json", stdin=PASSWORD + "\n"
    )
    assert json.loads(ok(signed_in))["user"]["username"] == "olivia"
    config = client_venv.home / ".config" / "cpctl" / "config.json"
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    assert json.loads(config.read_text())["url"] == stack.base_url

    programs = {p["name"]: p for p in json.loads(ok(client_venv.cpctl("programs", "--json")))}
    assert {"tinygpt", "scripted"} <= set(programs)
    assert "scripted" in ok(client_venv.cpctl("programs"))

    params_file = tmp_path / "params.yaml"
    params_file.write_text("".join(f"{k}: {v}\n" for k, v in TINY_TINYGPT.items() if k != "steps"))
    launched = client_venv.cpctl(
        "launch", "tinygpt", "-f", str(params_file), "-p", f"steps={TINY_TINYGPT['steps']}", "--follow"
    )
    assert "succeeded" in ok(launched) + launched.stderr
    run = json.loads(ok(client_venv.cpctl("ls", "--json", "--limit", "1")))[0]
    assert run["program"] == "tinygpt"
    assert run["params"]["steps"] == TINY_TINYGPT["steps"]  # typed: an integer, not "12"
    assert run["params"]["d_model"] == TINY_TINYGPT["d_model"]
    assert ok(client_venv.cpctl("wait", str(run["id"]))) == ""
    assert json.loads(ok(client_venv.cpctl("wait", str(run["id"]), "--json")))["status"] == "succeeded"

    out = tmp_path / "out"
    paths = json.loads(ok(client_venv.cpctl("download", str(run["id"]), "-o", str(out), "--json")))
    model = out / "model.safetensors"
    assert str(model) in paths
    with safe_open(str(model), framework="pt") as handle:
        assert int(handle.metadata()["step"]) == TINY_TINYGPT["steps"]
        names = list(handle.keys())
        assert names
        assert handle.get_tensor(names[0]).numel() > 0
    _resumes_and_refuses_a_corrupt_part(client_venv, run["id"], model, tmp_path)


def _resumes_and_refuses_a_corrupt_part(client_venv: ClientVenv, run_id: int, model: Path, tmp: Path) -> None:
    whole = model.read_bytes()
    resumed = tmp / "resumed"
    resumed.mkdir()
    (resumed / "model.safetensors.part").write_bytes(whole[: len(whole) // 2])
    ok(client_venv.cpctl("download", str(run_id), "-o", str(resumed), "--name", "model.safetensors"))
    assert (resumed / "model.safetensors").read_bytes() == whole
    assert not (resumed / "model.safetensors.part").exists()

    corrupt = tmp / "corrupt"
    corrupt.mkdir()
    (corrupt / "model.safetensors.part").write_bytes(b"\x00" * (len(whole) // 2))
    failed = client_venv.cpctl("download", str(run_id), "-o", str(corrupt), "--name", "model.safetensors")
    one_error_line(failed, "sha256 mismatch")
    assert not (corrupt / "model.safetensors.part").exists()
    ok(client_venv.cpctl("download", str(run_id), "-o", str(corrupt), "--name", "model.safetensors"))
    assert (corrupt / "model.safetensors").read_bytes() == whole
    one_error_line(client_venv.cpctl("download", str(run_id), "--name", "nope.bin"), "no artifact named")


def test_logs_follow_through_dropped_connections_has_no_gap_or_duplicate(
    stack: Stack, live_owner: Any, live_api: httpx.Client, client_venv: ClientVenv
) -> None:
    env = as_user(client_venv, stack, live_owner[1])
    launched = client_venv.cpctl(
        "launch", "scripted", "-p", "mode=drip", "-p", "lines=300", "-p", "sleep=4", "--json", env=env
    )
    run = json.loads(ok(launched))
    # The socket is closed every 3 frames, mid-run; each reconnect resumes after the last seq.
    followed = client_venv.cpctl("logs", str(run["id"]), "-f", "--json", "--debug-drop-every", "3", env=env)
    seqs = [json.loads(line)["seq"] for line in ok(followed).splitlines()]
    total = live_api.get(f"/api/v1/runs/{run['id']}/").json()
    assert total["status"] == "succeeded"
    assert seqs == list(range(1, len(seqs) + 1))
    rest = ok(client_venv.cpctl("logs", str(run["id"]), "--json", env=env)).splitlines()
    assert len(seqs) == len(rest) >= 300


def test_wait_cancel_retry_compare_and_their_exit_codes(
    stack: Stack, live_owner: Any, client_venv: ClientVenv
) -> None:
    env = as_user(client_venv, stack, live_owner[1])
    failing = json.loads(ok(client_venv.cpctl("launch", "scripted", "-p", "mode=fail", "--json", env=env)))
    assert client_venv.cpctl("wait", str(failing["id"]), env=env).returncode == 1
    retried = json.loads(ok(client_venv.cpctl("retry", str(failing["id"]), "--json", env=env)))
    assert retried["id"] == failing["id"]
    assert client_venv.cpctl("wait", str(failing["id"]), env=env).returncode == 1

    sleeper = json.loads(
        ok(client_venv.cpctl("launch", "scripted", "-p", "mode=sleep", "-p", "sleep=600", "--json", env=env))
    )
    ok(client_venv.cpctl("cancel", str(sleeper["id"]), env=env))
    assert client_venv.cpctl("wait", str(sleeper["id"]), "--timeout", "60", env=env).returncode == 3

    compared = json.loads(
        ok(client_venv.cpctl("compare", str(failing["id"]), str(sleeper["id"]), "--json", env=env))
    )
    assert compared["params"]["mode"] == {"a": "fail", "b": "sleep", "differs": True}
    assert "train/loss" in compared["metrics"]
    table = ok(client_venv.cpctl("compare", str(failing["id"]), str(sleeper["id"]), env=env))
    assert "PARAM" in table and "mode" in table
    listed = json.loads(ok(client_venv.cpctl("ls", "--status", "cancelled", "--json", env=env)))
    assert [r["id"] for r in listed] == [sleeper["id"]]


def test_bad_input_gets_one_error_line_and_a_non_zero_exit(
    stack: Stack, live_owner: Any, client_venv: ClientVenv, tmp_path: Path
) -> None:
    env = as_user(client_venv, stack, live_owner[1])
    one_error_line(client_venv.cpctl("launch", "no-such-program", env=env), "program: unknown program")
    one_error_line(
        client_venv.cpctl("launch", "scripted", "-p", "nope=1", env=env), "params.nope", "unknown param"
    )
    one_error_line(client_venv.cpctl("launch", "scripted", "-p", "lines=many", env=env), "lines")
    one_error_line(
        client_venv.cpctl("launch", "scripted", "-f", str(tmp_path / "missing.yaml"), env=env), "missing.yaml"
    )
    one_error_line(client_venv.cpctl("logs", "999999", env=env), "No such run")
    one_error_line(client_venv.cpctl("launch", env=env), "program")  # usage
    assert client_venv.cpctl("launch", env=env).returncode == 2

    revoked = do_issue_token(live_owner[0], name="to-revoke")
    with httpx.Client(base_url=stack.base_url, headers={"Authorization": f"Bearer {live_owner[1]}"}) as api:
        assert api.delete(f"/api/v1/tokens/{revoked.token.pk}/").status_code == 200
    one_error_line(
        client_venv.cpctl("ls", env=as_user(client_venv, stack, revoked.plaintext)), "401", "cpctl login"
    )

    down = {"CONTROLPLANE_URL": f"http://127.0.0.1:{free_port()}", "CONTROLPLANE_TOKEN": "x"}
    one_error_line(client_venv.cpctl("programs", env=down), "cannot reach")
    one_error_line(client_venv.cpctl("ls", env={"HOME": str(tmp_path)}), "cpctl login")  # nothing configured
