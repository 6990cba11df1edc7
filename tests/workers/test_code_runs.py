"""Code runs under a supervisor in this process: the snapshot unpacked from Postgres into the run
directory, `python` as the worker's interpreter, artifacts, retries from the code as uploaded,
and a damaged snapshot failing the run before anything starts."""

from __future__ import annotations

import gzip
import hashlib
import io
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User

from runs import services
from runs.models import Artifact, CodeSnapshot, ErrorKind, LogLine, Run, RunStatus
from runs.storage import run_dir
from workers.supervisor import Supervisor

pytestmark = pytest.mark.django_db(transaction=True)
QUEUE = "test-code-runs"  # nothing consumes it: the test supervises

TRAIN = b"""\
import json, os, sys
from helpers.values import ANSWER
from workers.sdk import Reporter

print("interpreter", sys.executable)
print("args", sys.argv[1:])
print("params", json.load(open("params.json")))
with open("result.txt", "w") as out:
    out.write(str(ANSWER))
with Reporter.from_env() as report:
    report.metric(1, {"answer": ANSWER})
    report.artifact("result.txt", "result")
"""


@pytest.fixture(autouse=True)
def worker_settings(settings: Any, tmp_path: Path) -> None:
    settings.RUNS_DIR = tmp_path / "runs"
    settings.ARTIFACTS_DIR = tmp_path / "artifacts"
    settings.CONTROLPLANE = {
        **settings.CONTROLPLANE,
        "HEARTBEAT_SECONDS": 0.2,
        "FLUSH_INTERVAL_SECONDS": 0.05,
    }


def register(owner: User, files: dict[str, bytes]) -> str:
    buffer = io.BytesIO()
    with (
        gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0) as zipped,
        tarfile.open(fileobj=zipped, mode="w") as tar,
    ):
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    data = buffer.getvalue()
    sha = hashlib.sha256(data).hexdigest()
    CodeSnapshot.objects.create(
        sha256=sha, size=len(data), unpacked_size=0, files=[], archive=data, created_by=owner
    )
    return sha


def code_run(owner: User, sha: str, command: list[str]) -> Run:
    return Run.objects.create(
        name="code", owner=owner, kind="code", program="code", snapshot_id=sha, command=command, queue=QUEUE
    )


def log_of(run: Run) -> str:
    return "\n".join(LogLine.objects.filter(run=run).order_by("seq").values_list("line", flat=True))


def test_a_code_run_unpacks_its_snapshot_runs_python_as_the_workers_interpreter_and_reports(
    owner: User,
) -> None:
    project = {"train.py": TRAIN, "helpers/values.py": b"ANSWER = 42\n", "params.json": b'{"mine": 1}'}
    run = code_run(owner, register(owner, project), ["python", "train.py", "--epochs", "3"])
    assert Supervisor(run.pk).run() == RunStatus.SUCCEEDED
    run.refresh_from_db()
    assert run.status == RunStatus.SUCCEEDED, (run.error_message, log_of(run))
    log = log_of(run)
    assert "unpacked: 3 files" in log
    assert f"interpreter {sys.executable}" in log
    assert "args ['--epochs', '3']" in log
    assert "params {}" in log  # the control plane's params.json is written over the snapshot's
    assert (run_dir(run.pk) / "helpers" / "values.py").read_text() == "ANSWER = 42\n"
    artifact = Artifact.objects.get(run=run)
    assert (artifact.name, artifact.size) == ("result.txt", 2)


def test_a_retry_starts_from_the_code_as_uploaded_and_never_follows_a_planted_link(
    owner: User, tmp_path: Path
) -> None:
    failing = b"import sys\nprint(open('train.py').read().splitlines()[0])\nsys.exit(3)\n"
    run = code_run(owner, register(owner, {"train.py": b"# original\n" + failing}), ["python3", "train.py"])
    assert Supervisor(run.pk).run() == RunStatus.FAILED
    # What the program (or anyone on the host) may leave: a link where the snapshot has a file.
    victim = tmp_path / "victim.txt"
    victim.write_text("untouched")
    (run_dir(run.pk) / "train.py").unlink()
    (run_dir(run.pk) / "train.py").symlink_to(victim)
    services.do_retry_run(Run.objects.get(pk=run.pk), actor=owner)
    assert Supervisor(run.pk).run() == RunStatus.FAILED
    run.refresh_from_db()
    assert run.attempt == 2 and run.exit_code == 3
    assert log_of(run).count("# original") == 2
    assert victim.read_text() == "untouched"
    assert not (run_dir(run.pk) / "train.py").is_symlink()


def test_a_damaged_snapshot_fails_the_run_before_anything_starts(owner: User) -> None:
    sha = register(owner, {"train.py": b"print('never')\n"})
    CodeSnapshot.objects.filter(pk=sha).update(archive=b"not the bytes that were uploaded")
    run = code_run(owner, sha, ["python", "train.py"])
    assert Supervisor(run.pk).run() == RunStatus.FAILED
    run.refresh_from_db()
    assert (run.error_kind, run.error_code) == (ErrorKind.DATA, "snapshot_damaged")
    assert "never" not in log_of(run)
    assert not (run_dir(run.pk) / "train.py").exists()
