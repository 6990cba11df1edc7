"""The GitHub workflows, .ci/run and ./dev agree, and the workflows follow the hardening rules.

actionlint (run by `./dev lint`) checks the workflows' syntax and expressions; these tests check
what it cannot know: our rules (pinned actions, least permissions, timeouts, cancel on PRs) and
that every command a workflow runs exists in ./dev.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))
SHA_PIN = re.compile(r"^\s*(?:-\s+)?uses:\s+([\w.-]+/[\w./-]+)@([0-9a-f]{40}) # v\d+(\.\d+)*\s*$")


def load(name: str) -> dict[str, Any]:
    data: dict[Any, Any] = yaml.safe_load((ROOT / ".github" / "workflows" / name).read_text())
    # YAML 1.1 reads the key `on` as True.
    return {str(key) if key is not True else "on": value for key, value in data.items()}


def steps(workflow: dict[str, Any], job: str) -> list[dict[str, Any]]:
    return list(workflow["jobs"][job]["steps"])


def runs(workflow: dict[str, Any], job: str) -> str:
    return "\n".join(step.get("run", "") for step in steps(workflow, job))


def uses(workflow: dict[str, Any], job: str) -> list[str]:
    return [step["uses"].split("@")[0] for step in steps(workflow, job) if "uses" in step]


def dev_commands() -> set[str]:
    case = (ROOT / "dev").read_text().split('case "$command" in', 1)[1]
    return set(re.findall(r"^\s+([a-z-]+)\) cmd_", case, flags=re.MULTILINE))


def test_the_workflows_are_split_by_concern_and_the_old_single_ci_file_is_gone() -> None:
    assert [path.name for path in WORKFLOWS] == [
        "image.yml",
        "lint.yml",
        "reference-model.yml",
        "security.yml",
        "tests.yml",
    ]


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda path: path.name)
def test_every_action_is_pinned_to_a_full_commit_sha_with_its_version(path: Path) -> None:
    lines = [line for line in path.read_text().splitlines() if re.match(r"^\s*(-\s+)?uses:", line)]
    assert lines
    assert [line for line in lines if not SHA_PIN.match(line)] == []


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda path: path.name)
def test_every_workflow_reads_only_and_every_job_has_a_timeout(path: Path) -> None:
    workflow = load(path.name)
    assert workflow["permissions"] == {"contents": "read"}
    for name, job in workflow["jobs"].items():
        assert 0 < job["timeout-minutes"] <= 45, name
        # Only publishing the image may write, and only to packages.
        if "permissions" in job:
            assert (path.name, name, job["permissions"]) == (
                "image.yml",
                "publish",
                {"contents": "read", "packages": "write"},
            )
        for step in job["steps"]:
            if step.get("uses", "").startswith("actions/checkout@"):
                assert step["with"]["persist-credentials"] is False, name


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda path: path.name)
def test_a_new_push_to_a_pull_request_cancels_the_run_in_progress(path: Path) -> None:
    workflow = load(path.name)
    concurrency = workflow["concurrency"]
    assert "${{ github.ref }}" in concurrency["group"]
    assert "${{ github.workflow }}" in concurrency["group"]
    if "pull_request" in workflow["on"]:
        assert concurrency["cancel-in-progress"] == "${{ github.event_name == 'pull_request' }}"


def test_tests_run_against_postgres_and_redis_services_with_chromium_and_npm() -> None:
    workflow = load("tests.yml")
    job = workflow["jobs"]["test"]
    assert {"postgres", "redis"} <= set(job["services"])
    assert "chromium" in runs(workflow, "test")
    assert "actions/setup-node" in uses(workflow, "test")
    assert "./dev coverage" in runs(workflow, "test")
    assert "actions/upload-artifact" in uses(workflow, "test")


def test_the_coverage_gate_is_its_own_job_on_the_test_jobs_report() -> None:
    workflow = load("tests.yml")
    gate = workflow["jobs"]["coverage"]
    assert gate["needs"] == "test"
    assert "actions/download-artifact" in uses(workflow, "coverage")
    assert "scripts/check_coverage.py test-output/coverage.json" in runs(workflow, "coverage")


def test_the_load_tests_small_run_is_a_job_and_a_ci_run_stage() -> None:
    assert "./dev load-small" in runs(load("tests.yml"), "load-test")
    assert "./dev load-small" in (ROOT / ".ci" / "run").read_text()
    dev = (ROOT / "dev").read_text()
    assert (
        '"$VENV/bin/python" bench/load_test.py --small --out test-output/load-small.json \\\n'
        '    && "$VENV/bin/python" bench/check_load_results.py test-output/load-small.json'
    ) in dev


def test_security_scans_pip_audit_and_dependency_review_on_pull_requests() -> None:
    workflow = load("security.yml")
    assert "./dev scan" in runs(workflow, "scan")
    assert "pip-audit" in runs(workflow, "pip-audit")
    review = workflow["jobs"]["dependency-review"]
    assert review["if"] == "github.event_name == 'pull_request'"
    assert "actions/dependency-review-action" in uses(workflow, "dependency-review")


def test_the_image_is_built_without_pushing_and_published_only_from_pushes() -> None:
    workflow = load("image.yml")
    build = [
        step for step in steps(workflow, "build") if step.get("uses", "").startswith("docker/build-push")
    ]
    assert [step["with"]["push"] for step in build] == [False]
    assert "docker compose config -q" in runs(workflow, "build")
    assert workflow["jobs"]["publish"]["if"] == "github.event_name == 'push'"
    assert workflow["jobs"]["publish"]["needs"] == "build"
    # The CUDA variant is built too, with the arguments the compose gpu profile passes.
    (cuda,) = [s for s in steps(workflow, "build-cuda") if s.get("uses", "").startswith("docker/build-push")]
    assert cuda["with"]["push"] is False
    assert "TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128" in cuda["with"]["build-args"]
    assert "GPU_PACKAGES=nvidia-ml-py==" in cuda["with"]["build-args"]
    assert "docker compose --profile gpu config -q" in runs(workflow, "build-cuda")


def test_the_reference_model_is_built_on_pushes_to_main_and_tags_and_kept_as_an_artifact() -> None:
    workflow = load("reference-model.yml")
    assert "pull_request" not in workflow["on"]
    assert workflow["on"]["push"] == {"branches": ["main"], "tags": ["v*"]}
    assert "./dev reference-model --out test-output/reference-model" in runs(workflow, "reference-model")
    upload = next(
        s for s in steps(workflow, "reference-model") if s.get("uses", "").startswith("actions/upload")
    )
    assert upload["with"]["if-no-files-found"] == "error"
    assert set(upload["with"]["path"].split()) == {
        "test-output/reference-model/model.safetensors",
        "test-output/reference-model/model.safetensors.sha256",
        "test-output/reference-model/metadata.json",
    }


def test_every_dev_command_a_workflow_or_ci_run_calls_exists() -> None:
    texts = [path.read_text() for path in WORKFLOWS] + [(ROOT / ".ci" / "run").read_text()]
    called = {name for text in texts for name in re.findall(r"\./dev ([a-z-]+)", text)}
    assert {"lint", "scan", "coverage", "test", "reference-model", "load-small"} <= called
    assert called <= dev_commands()


def test_ci_run_runs_the_readme_test_command_then_the_model_and_the_load_run() -> None:
    script = (ROOT / ".ci" / "run").read_text()
    assert "./dev test" in (ROOT / "README.md").read_text()
    order = [script.index(f"./dev {name}") for name in ("test", "reference-model", "load-small")]
    assert order == sorted(order)
    # No pytest arguments: ./dev test then runs the whole suite under coverage and the gate.
    assert re.search(r"stage \"[^\"]+\" \./dev test$", script, flags=re.MULTILINE)


def test_the_load_run_fails_loudly_when_its_scripts_are_missing(tmp_path: Path) -> None:
    # A copy of ./dev in a tree without bench/: it must refuse before installing or starting anything.
    shutil.copy(ROOT / "dev", tmp_path / "dev")
    result = subprocess.run(
        ["bash", str(tmp_path / "dev"), "load-small"], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 1
    assert "error: bench/load_test.py is missing: the load test's small run cannot run" in result.stderr


def _setup_steps(action: str) -> list[dict[str, Any]]:
    return [
        step
        for path in WORKFLOWS
        for job in load(path.name)["jobs"].values()
        for step in job["steps"]
        if step.get("uses", "").startswith(f"actions/{action}@")
    ]


def test_tools_are_pinned_to_versions_and_caches_are_keyed_on_the_lock_files() -> None:
    pythons = _setup_steps("setup-python")
    assert pythons
    for step in pythons:
        assert re.fullmatch(r"3\.11\.\d+", step["with"]["python-version"]), step
        if "cache" in step["with"]:
            assert step["with"] == step["with"] | {"cache": "pip", "cache-dependency-path": "pyproject.toml"}
    nodes = _setup_steps("setup-node")
    assert nodes
    for step in nodes:
        assert re.fullmatch(r"\d+\.\d+\.\d+", step["with"]["node-version"]), step
        assert step["with"]["cache"] == "npm"
        assert step["with"]["cache-dependency-path"] == "package-lock.json"
    for path in WORKFLOWS:
        for name, job in load(path.name)["jobs"].items():
            for service in job.get("services", {}).values():
                assert re.fullmatch(r"[a-z]+:\d+\.\d+(\.\d+)?", service["image"]), (name, service["image"])


def test_postgres_and_redis_come_from_service_containers_and_apt_starts_no_daemon_on_their_ports() -> None:
    workflow = load("tests.yml")
    for name in ("test", "load-test"):
        job = workflow["jobs"][name]
        assert {"postgres", "redis"} <= set(job["services"])
        assert {"5432:5432", "6379:6379"} <= {p for s in job["services"].values() for p in s["ports"]}
        script = runs(workflow, name)
        if "redis-server" in script or "postgresql " in script:
            # Installing the servers' packages would start daemons on the services' ports.
            before, _, after = script.partition("apt-get install")
            assert "/usr/sbin/policy-rc.d" in before and "exit 101" in before, name
            assert "rm /usr/sbin/policy-rc.d" in after, name
    dev = (ROOT / "dev").read_text()
    # ./dev reuses whatever already answers (the service containers) before starting anything.
    assert "if pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then return; fi" in dev
    assert "if redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then return; fi" in dev


def test_check_deploy_in_lint_needs_no_database() -> None:
    lint = (ROOT / "dev").read_text().split("cmd_lint() {", 1)[1].split("\n}\n", 1)[0]
    check = lint.split('say "deployment settings pass check --deploy"', 1)[1]
    assert 'DATABASE_URL="sqlite:///$scratch/check-deploy.sqlite3"' in check
    assert "postgres://" not in check
    assert "services" not in load("lint.yml")["jobs"]["lint"]


def test_test_output_junit_and_the_reference_model_are_kept_even_when_a_step_fails() -> None:
    tests = load("tests.yml")
    uploads = {
        step["with"]["name"]: step
        for step in steps(tests, "test")
        if step.get("uses", "").startswith("actions/upload-artifact@")
    }
    assert uploads["test-output"]["with"]["path"] == "test-output/"
    junit = uploads["junit-${{ github.sha }}-${{ github.run_id }}-${{ github.run_attempt }}"]
    assert junit["with"]["path"] == "test-output/junit.xml"
    assert junit["with"]["retention-days"] >= 90
    # The name is what scripts/flaky_report.py reads commit and run from.
    assert re.search(r"junit-(?P<commit>[0-9a-f]{7,40})-(?P<run>\d+)", "junit-0123abc-42-1")
    # ./dev coverage writes it: the JUnit of the suite's two halves merged (docs/ci.md).
    assert "./dev coverage" in runs(tests, "test")
    assert "scripts/merge_junit.py test-output/junit.xml" in (ROOT / "dev").read_text()
    model = load("reference-model.yml")
    for workflow, job in ((tests, "test"), (tests, "load-test"), (model, "reference-model")):
        for step in steps(workflow, job):
            if step.get("uses", "").startswith("actions/upload-artifact@"):
                assert step["if"] == "always()", (job, step.get("name"))
