"""The deployment files stay consistent with the code (validated here: no Docker engine in CI)."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def documented_variables() -> set[str]:
    readme = (ROOT / "README.md").read_text()
    table = readme.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| `([A-Z_]+)` \|", table, flags=re.MULTILINE))


def variables_read_by_settings() -> set[str]:
    source = (ROOT / "controlplane" / "settings.py").read_text()
    return set(re.findall(r'env_(?:str|bool|int|float|list|path)\(\s*"([A-Z_]+)"', source))


def test_every_environment_variable_is_in_the_readme_table() -> None:
    read = variables_read_by_settings()
    assert len(read) > 20
    assert read <= documented_variables(), sorted(read - documented_variables())


def test_the_readme_documents_no_variable_that_nothing_reads() -> None:
    assert documented_variables() <= variables_read_by_settings()


def test_compose_runs_the_production_topology_with_health_gated_starts() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"postgres", "redis", "web", "worker", "beat"} <= set(services)
    for name in ("postgres", "redis", "web"):
        assert "healthcheck" in services[name], name
    for name in ("web", "worker", "beat"):
        depends = services[name]["depends_on"]
        assert depends["postgres"]["condition"] == "service_healthy"
        assert depends["redis"]["condition"] == "service_healthy"
        assert depends["migrate"]["condition"] == "service_completed_successfully"
        env = services[name]["environment"]
        assert set(env) <= documented_variables(), set(env) - documented_variables()
        assert env["DATABASE_URL"].startswith("postgres://")
    assert "uvicorn" in (ROOT / "Dockerfile").read_text()
    assert services["worker"]["command"][:3] == ["celery", "-A", "controlplane"]
    assert services["beat"]["command"][3] == "beat"


def test_the_image_runs_as_a_non_root_user_with_a_healthcheck() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    final_stage = dockerfile.rsplit("\nFROM ", 1)[1]
    assert re.search(r"^USER controlplane$", final_stage, flags=re.MULTILINE)
    assert "HEALTHCHECK" in final_stage
    assert "build-essential" not in final_stage
    assert "node_modules/uplot/dist/uPlot.esm.js" in final_stage  # the dashboard's charts ship in the image


def test_ci_workflow_runs_the_same_command_as_ci_run() -> None:
    workflow = yaml.safe_load((ROOT / ".github" / "workflows" / "ci.yml").read_text())
    steps = workflow["jobs"]["test"]["steps"]
    assert any("./dev test" in step.get("run", "") for step in steps)
    assert "./dev test" in (ROOT / ".ci" / "run").read_text()
    assert workflow["permissions"] == {"contents": "read"}
