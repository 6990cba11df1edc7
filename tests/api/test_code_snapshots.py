"""Code snapshots through the REST API: upload, launch, clone, policy, audit and the run page."""

from __future__ import annotations

import gzip
import hashlib
import io
import tarfile
from typing import Any

import pytest
from django.test import Client
from rest_framework.test import APIClient

from accounts.tokens import do_issue_token
from audit.models import AuditRecord
from runs.models import CodeSnapshot, Run
from tests.conftest import make_user

pytestmark = pytest.mark.django_db


def tar_gz(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with (
        gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0) as zipped,
        tarfile.open(fileobj=zipped, mode="w") as tar,
    ):
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


PROJECT = tar_gz({"train.py": b"print('hello')\n", "lib/util.py": b"x = 1\n"})
SHA = hashlib.sha256(PROJECT).hexdigest()


def put(api: APIClient, data: bytes, sha: str | None = None) -> Any:
    sha = sha or hashlib.sha256(data).hexdigest()
    return api.put(f"/api/v1/snapshots/{sha}/", data, content_type="application/gzip")


def api_for(role: str, name: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {do_issue_token(make_user(name, role)).plaintext}")
    return client


def launch_code(api: APIClient, command: Any = None, **extra: Any) -> Any:
    body = {"name": "mine", "code": {"snapshot": SHA, "command": command or ["python", "train.py"]}, **extra}
    return api.post("/api/v1/runs/", body, format="json")


def test_upload_registers_the_snapshot_once_with_its_files_and_audits_it(api: APIClient, owner: Any) -> None:
    assert api.get(f"/api/v1/snapshots/{SHA}/").status_code == 404
    first = put(api, PROJECT)
    assert first.status_code == 201, first.content
    body = first.json()
    assert body["sha256"] == SHA and body["size"] == len(PROJECT) and body["created_by"] == "olivia"
    assert [f["path"] for f in body["files"]] == ["lib/util.py", "train.py"]
    assert body["files"][1]["sha256"] == hashlib.sha256(b"print('hello')\n").hexdigest()
    assert body["unpacked_size"] == len(b"print('hello')\n") + len(b"x = 1\n")
    again = put(api, PROJECT)
    assert again.status_code == 200  # content-addressed: already there
    assert api.get(f"/api/v1/snapshots/{SHA}/").status_code == 200
    assert api.head(f"/api/v1/snapshots/{SHA}/").status_code == 200
    assert CodeSnapshot.objects.count() == 1
    records = AuditRecord.objects.filter(action="snapshot.upload")
    assert records.count() == 1
    assert records.get().details["sha256"] == SHA and records.get().actor == "olivia"


def test_limits_are_published(api: APIClient, settings: Any) -> None:
    settings.CODE_SNAPSHOT = {"MAX_BYTES": 1234, "MAX_UNPACKED_BYTES": 5678, "MAX_FILES": 9}
    assert api.get("/api/v1/snapshots/limits/").json() == {
        "max_bytes": 1234,
        "max_unpacked_bytes": 5678,
        "max_files": 9,
    }


def test_a_hash_mismatch_a_truncated_body_or_a_bad_hash_registers_nothing(api: APIClient) -> None:
    wrong = put(api, PROJECT, sha="0" * 64)
    assert wrong.status_code == 400 and "sha256" in wrong.json()
    truncated = put(api, PROJECT[: len(PROJECT) // 2], sha=SHA)  # an upload cut short
    assert truncated.status_code == 400 and "does not match" in truncated.json()["sha256"][0]
    assert put(api, PROJECT, sha="NOT-A-HASH").status_code == 400
    assert CodeSnapshot.objects.count() == 0


def test_an_archive_over_the_limit_is_a_413_naming_the_field(api: APIClient, settings: Any) -> None:
    settings.CODE_SNAPSHOT = {**settings.CODE_SNAPSHOT, "MAX_BYTES": 100}
    response = put(api, PROJECT)
    assert response.status_code == 413
    assert "limit is 100" in response.json()["archive"][0]
    assert CodeSnapshot.objects.count() == 0


def test_a_traversal_or_a_link_in_the_archive_is_refused(api: APIClient) -> None:
    evil = tar_gz({"../../etc/cron.d/x": b"* * * * * root sh\n"})
    response = put(api, evil)
    assert response.status_code == 400
    assert "outside the directory" in response.json()["archive"][0]
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        link = tarfile.TarInfo("passwd")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
    assert "links" in put(api, buffer.getvalue()).json()["archive"][0]
    assert CodeSnapshot.objects.count() == 0


def test_a_viewer_may_not_upload_or_launch_code_and_the_refusal_is_audited(db: Any) -> None:
    viewer = api_for("viewer", "vera")
    refused = put(viewer, PROJECT)
    assert refused.status_code == 403
    assert "may not run their own code" in refused.json()["detail"]
    assert viewer.get("/api/v1/snapshots/limits/").status_code == 403
    assert CodeSnapshot.objects.count() == 0
    denied = AuditRecord.objects.filter(action="access.denied", actor="vera")
    assert denied.filter(details__action="run.code").exists()


def test_with_the_setting_at_admin_operators_are_refused_and_admins_allowed(
    api: APIClient, settings: Any
) -> None:
    assert put(api, PROJECT).status_code == 201
    settings.RUN_CODE_ROLE = "admin"
    assert put(api, PROJECT).status_code == 403
    refused = launch_code(api)
    assert (
        refused.status_code == 403
        and "Your role (operator) may not run their own code" in refused.json()["detail"]
    )
    assert Run.objects.count() == 0
    admin = api_for("admin", "ada")
    assert put(admin, PROJECT).status_code == 200
    assert launch_code(admin).status_code == 201


def test_launch_a_code_run_stores_its_snapshot_and_command_and_audits_them(api: APIClient) -> None:
    put(api, PROJECT)
    response = launch_code(api, ["python", "train.py", "--epochs", "3"])
    assert response.status_code == 201, response.content
    run = response.json()
    assert run["kind"] == "code" and run["program"] == "code" and run["params"] == {}
    assert run["snapshot"] == SHA and run["command"] == ["python", "train.py", "--epochs", "3"]
    stored = Run.objects.get(pk=run["id"])
    assert stored.snapshot_id == SHA and stored.command == ["python", "train.py", "--epochs", "3"]
    record = AuditRecord.objects.get(action="run.launch", target_id=str(run["id"]))
    assert record.details["snapshot"] == SHA and record.details["command"][1] == "train.py"
    listed = api.get("/api/v1/runs/?program=code").json()["results"]
    assert [r["id"] for r in listed] == [run["id"]]
    plain = api.get(f"/api/v1/runs/{run['id']}/").json()
    assert plain["snapshot"] == SHA


@pytest.mark.parametrize(
    ("body", "field", "fragment"),
    [
        ({"code": {"snapshot": "f" * 64, "command": ["python", "x.py"]}}, "code.snapshot", "upload it first"),
        ({"code": {"snapshot": "nope", "command": ["python"]}}, "code.snapshot", "sha256"),
        ({"code": {"snapshot": SHA, "command": []}}, "code.command", "non-empty list"),
        ({"code": {"snapshot": SHA, "command": "python train.py"}}, "code.command", "list of strings"),
        ({"code": {"snapshot": SHA, "command": ["python", "a" * 5000]}}, "code.command", "at most 4096"),
        ({"code": {"snapshot": SHA, "command": ["x"], "env": {}}}, "code.env", "unknown field"),
        ({"code": {"snapshot": SHA, "command": ["x"]}, "program": "tinygpt"}, "program", "names no program"),
        ({"code": {"snapshot": SHA, "command": ["x"]}, "params": {"steps": 1}}, "params", "takes no params"),
        ({"code": "train.py"}, "code", "must be an object"),
    ],
)
def test_bad_code_launches_are_400s_naming_the_field(
    api: APIClient, body: Any, field: str, fragment: str
) -> None:
    put(api, PROJECT)
    response = api.post("/api/v1/runs/", {"name": "bad", **body}, format="json")
    assert response.status_code == 400, response.content
    assert fragment in response.json()[field][0]
    assert Run.objects.count() == 0


def test_clone_of_a_code_run_reruns_the_same_snapshot_and_command(api: APIClient) -> None:
    put(api, PROJECT)
    source = launch_code(api, ["python", "train.py", "--lr", "0.1"]).json()
    clone = api.post(f"/api/v1/runs/{source['id']}/clone/")
    assert clone.status_code == 201, clone.content
    body = clone.json()
    assert body["id"] != source["id"] and body["name"] == "mine (clone)"
    assert (body["kind"], body["snapshot"], body["command"]) == (
        "code",
        SHA,
        ["python", "train.py", "--lr", "0.1"],
    )
    viewer = api_for("viewer", "vera")
    assert viewer.post(f"/api/v1/runs/{source['id']}/clone/").status_code == 403


def test_a_snapshot_in_use_cannot_be_deleted_from_under_its_runs(api: APIClient) -> None:
    from django.db.models import ProtectedError

    put(api, PROJECT)
    launch_code(api)
    with pytest.raises(ProtectedError):
        CodeSnapshot.objects.filter(pk=SHA).delete()


def test_the_run_page_shows_the_snapshot_and_the_exact_command(api: APIClient, owner: Any) -> None:
    put(api, PROJECT)
    run = launch_code(api, ["python", "train.py", "--name", "two words"]).json()
    browser = Client()
    browser.force_login(owner)
    page = browser.get(f"/runs/{run['id']}/").content.decode()
    assert SHA in page
    assert "python train.py --name &#x27;two words&#x27;" in page
    assert "lib/util.py" in page and "train.py" in page
    assert 'id="action-clone"' in page
    cloned = browser.post(f"/runs/{run['id']}/clone/")
    assert cloned.status_code == 302
    newest = Run.objects.order_by("-pk").first()
    assert newest is not None and newest.pk != run["id"] and newest.snapshot_id == SHA
    assert cloned["Location"] == f"/runs/{newest.pk}/"


def test_a_snapshot_larger_than_djangos_form_body_limit_uploads(api: APIClient) -> None:
    import os

    big = tar_gz({"train.py": b"print(1)\n", "weights.bin": os.urandom(3 * 1024**2)})
    response = put(api, big)
    assert response.status_code == 201, response.content
    stored = CodeSnapshot.objects.get(pk=hashlib.sha256(big).hexdigest())
    assert bytes(stored.archive) == big and stored.unpacked_size == 3 * 1024**2 + 9


def test_retrying_a_code_run_needs_the_role_that_runs_code(api: APIClient, owner: Any, settings: Any) -> None:
    put(api, PROJECT)
    run = launch_code(api).json()
    Run.objects.filter(pk=run["id"]).update(status="failed")
    settings.RUN_CODE_ROLE = "admin"
    refused = api.post(f"/api/v1/runs/{run['id']}/retry/")
    assert refused.status_code == 403 and "run their own code" in refused.json()["detail"]
    # The run page offers no button the API refuses (accounts.policy.decide holds the rule).
    browser = Client()
    browser.force_login(owner)
    assert 'id="action-retry"' not in browser.get(f"/runs/{run['id']}/").content.decode()
    settings.RUN_CODE_ROLE = "operator"
    assert 'id="action-retry"' in browser.get(f"/runs/{run['id']}/").content.decode()
    assert api.post(f"/api/v1/runs/{run['id']}/retry/").status_code == 202
