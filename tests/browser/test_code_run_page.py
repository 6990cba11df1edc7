"""A code run's page in Chromium: its snapshot (hash, size, files, collapsed when long), its
exact command, and Clone, which launches the same snapshot and command."""

from __future__ import annotations

import gzip
import hashlib
import io
import tarfile

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import Session, shoot
from tests.conftest import wait_for_status

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def snapshot_bytes() -> bytes:
    files = {"train.py": b"print('hello from a snapshot')\n"}
    files.update({f"pkg/mod_{i:02}.py": f"X = {i}\n".encode() for i in range(24)})
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


def test_the_code_run_page_shows_snapshot_and_command_and_clone_relaunches_it(session: Session) -> None:
    data = snapshot_bytes()
    sha = hashlib.sha256(data).hexdigest()
    uploaded = session.api.put(f"/api/v1/snapshots/{sha}/", content=data)
    assert uploaded.status_code in (200, 201), uploaded.text
    command = ["python", "train.py", "--tag", "a b"]
    body = {"name": "page-check", "code": {"snapshot": sha, "command": command}}
    run = session.api.post("/api/v1/runs/", json=body).json()
    assert wait_for_status(session.api, run["id"], {"succeeded", "failed"})["status"] == "succeeded"

    page = session.page
    page.goto(f"/runs/{run['id']}/")
    expect(page.locator("#code-command")).to_have_text("python train.py --tag 'a b'")
    expect(page.locator("#code-sha256")).to_have_text(sha)
    expect(page.locator("#code-size")).to_contain_text("25 files")
    files = page.locator("#code-files")
    assert files.get_attribute("open") is None  # 25 files: collapsed
    expect(page.locator("#code-files table")).to_be_hidden()
    page.click("#code-files summary")
    expect(page.locator("#code-files table")).to_contain_text("pkg/mod_23.py")
    expect(page.locator("#log-viewport")).to_contain_text("hello from a snapshot")
    shoot(page, "code-run")

    page.click("#action-clone")
    page.wait_for_url(f"**/runs/{run['id'] + 1}/")
    expect(page.locator("#code-sha256")).to_have_text(sha)
    clone = session.api.get(f"/api/v1/runs/{run['id'] + 1}/").json()
    assert (clone["snapshot"], clone["command"], clone["name"]) == (
        sha,
        command,
        "page-check (clone)",
    )
    wait_for_status(session.api, clone["id"], {"succeeded", "failed"})
