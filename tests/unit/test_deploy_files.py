"""The deployment files stay consistent with the code (validated here: no Docker engine in CI)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]


def documented_variables() -> set[str]:
    readme = (ROOT / "README.md").read_text()
    table = readme.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| `([A-Z_]+)` \|", table, flags=re.MULTILINE))


def variables_read_by_settings() -> set[str]:
    # settings.py, the settings modules it imports every name of (controlplane/code_settings.py),
    # and the compound readers of env.py it calls (storage_config, channel_prefix).
    source = "".join(
        (ROOT / "controlplane" / name).read_text() for name in ("settings.py", "code_settings.py", "env.py")
    )
    return set(re.findall(r'env_(?:str|bool|int|float|list|path|choice)\(\s*"([A-Z_]+)"', source))


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


def _stages() -> dict[str, str]:
    """The Dockerfile's stages by name (`FROM … AS name`), each with its instructions."""
    dockerfile = (ROOT / "Dockerfile").read_text()
    return {
        match.group(1): body
        for match, body in zip(
            re.finditer(r"^FROM \S+ AS (\w+)$", dockerfile, flags=re.MULTILINE),
            re.split(r"^FROM \S+ AS \w+$", dockerfile, flags=re.MULTILINE)[1:],
            strict=True,
        )
    }


def test_the_image_runs_as_a_non_root_user_with_a_healthcheck() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    final_stage = dockerfile.rsplit("\nFROM ", 1)[1]
    assert final_stage.startswith("python:${PYTHON_VERSION}-slim-bookworm AS runtime")
    assert re.search(r"^USER controlplane$", final_stage, flags=re.MULTILINE)
    assert "HEALTHCHECK" in final_stage
    assert "build-essential" not in final_stage
    assert 'CMD ["uvicorn", "controlplane.asgi:application"' in final_stage
    assert "collectstatic --noinput" in final_stage


def test_the_image_installs_the_wheel_and_carries_no_source_tree() -> None:
    stages = _stages()
    assert list(stages) == ["assets", "build", "runtime"]
    build, runtime = stages["build"], stages["runtime"]
    # The wheel is built after the npm-built files land in static/vendor/ (setup.py checks them).
    vendor = build.index("node_modules/uplot/dist/uPlot.esm.js")
    assert build.index("static/vendor/uplot/", vendor) < build.index(
        "pip wheel --no-deps --wheel-dir /wheels ."
    )
    # The runtime stage installs that wheel and copies nothing of the source tree but manage.py.
    assert re.search(r"pip install --no-deps --no-index .*/wheels/controlplane-\*\.whl", runtime)
    assert "pip check" in runtime
    copies = re.findall(r"^COPY (.+)$", runtime, flags=re.MULTILINE)
    assert copies == ["--from=build /opt/venv /opt/venv", "manage.py ./"], copies
    assert "PYTHONPATH=" not in (ROOT / "Dockerfile").read_text()
    assert not re.search(r"^COPY .*\s\.\s+\.$", runtime, flags=re.MULTILINE)


def test_the_wheel_carries_every_app_and_the_pages_files() -> None:
    import tomllib

    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    setuptools = pyproject["tool"]["setuptools"]
    patterns = setuptools["packages"]["find"]["include"]
    apps = {path.parent.name for path in ROOT.glob("*/apps.py")}
    for package in apps | {"controlplane", "controlplane_web", "workers", "redaction"}:
        assert any(re.fullmatch(pattern.replace("*", ".*"), package) for pattern in patterns), package
    assert setuptools["package-data"]["*"] == ["*.html"]  # apps' own templates/
    assert pyproject["project"]["scripts"]["controlplane-manage"] == "controlplane.manage:main"
    manifest = (ROOT / "MANIFEST.in").read_text()
    assert "graft templates" in manifest
    assert "graft static" in manifest


def _setup_module() -> Any:
    import importlib.util

    spec = importlib.util.spec_from_file_location("controlplane_setup", ROOT / "setup.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # not __main__: setup() does not run
    return module


def test_the_wheel_build_names_the_vendor_files_the_pages_need_and_lack(tmp_path: Path) -> None:
    setup = _setup_module()
    (tmp_path / "templates" / "runs").mkdir(parents=True)
    (tmp_path / "static" / "js").mkdir(parents=True)
    (tmp_path / "templates" / "runs" / "detail.html").write_text(
        '<link rel="stylesheet" href="{% static \'vendor/uplot/uPlot.min.css\' %}">'
    )
    (tmp_path / "static" / "js" / "chart.js").write_text(
        'import uPlot from "../vendor/uplot/uPlot.esm.js";\n'
    )
    assert setup.missing_vendor_files(tmp_path) == ["vendor/uplot/uPlot.esm.js", "vendor/uplot/uPlot.min.css"]
    (tmp_path / "static" / "vendor" / "uplot").mkdir(parents=True)
    (tmp_path / "static" / "vendor" / "uplot" / "uPlot.esm.js").write_text("export default 1;\n")
    assert setup.missing_vendor_files(tmp_path) == ["vendor/uplot/uPlot.min.css"]
    # The repository's pages name the files ./dev setup copies there.
    named = setup.missing_vendor_files(ROOT) + [
        f"vendor/uplot/{name}" for name in ("uPlot.esm.js", "uPlot.min.css")
    ]
    assert {"vendor/uplot/uPlot.esm.js", "vendor/uplot/uPlot.min.css"} <= set(named)


def test_settings_find_templates_and_static_in_a_checkout_and_in_a_wheel(tmp_path: Path) -> None:
    import importlib.util

    from django.conf import settings

    import controlplane_web

    # A checkout (and an editable install): the repository's own directories.
    assert controlplane_web.TEMPLATES_DIR == ROOT / "templates"
    assert controlplane_web.STATIC_DIR == ROOT / "static"
    template_dirs = settings.TEMPLATES[0]["DIRS"]
    assert isinstance(template_dirs, list)
    assert ROOT / "templates" in template_dirs
    assert ROOT / "static" in settings.STATICFILES_DIRS
    # Installed from a wheel: the copies beside the package.
    package = tmp_path / "site-packages" / "controlplane_web"
    (package / "templates").mkdir(parents=True)
    (package / "static").mkdir()
    (package / "__init__.py").write_text((ROOT / "controlplane_web" / "__init__.py").read_text())
    spec = importlib.util.spec_from_file_location("installed_web", package / "__init__.py")
    assert spec is not None
    assert spec.loader is not None
    installed = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(installed)
    assert package / "templates" == installed.TEMPLATES_DIR
    assert package / "static" == installed.STATIC_DIR


# The CI workflows (split by concern; ci.yml is gone) are checked in tests/unit/test_ci_workflows.py.


def _compose() -> dict[str, Any]:
    compose: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return compose


def test_compose_runs_monitoring_beside_the_product() -> None:
    services = _compose()["services"]
    assert {"prometheus", "grafana", "node-exporter", "housekeeping"} <= set(services)
    assert "./deploy/prometheus:/etc/prometheus:ro" in services["prometheus"]["volumes"]
    assert "--config.file=/etc/prometheus/prometheus.yml" in services["prometheus"]["command"]
    assert services["grafana"]["depends_on"] == {"prometheus": {"condition": "service_healthy"}}
    # No default admin password: compose refuses to start Grafana without one.
    assert ":?" in services["grafana"]["environment"]["GF_SECURITY_ADMIN_PASSWORD"]
    for name in ("prometheus", "grafana"):
        published = services[name]["ports"]
        assert all(port.startswith("127.0.0.1:") for port in published), (
            f"{name} is published beyond localhost"
        )


def test_every_compose_dependency_waits_for_a_real_health_check() -> None:
    services = _compose()["services"]
    for name, service in services.items():
        for target, rule in service.get("depends_on", {}).items():
            assert target in services, f"{name} depends on unknown service {target}"
            condition = rule["condition"]
            assert condition in {"service_healthy", "service_completed_successfully"}, (name, target)
            if condition == "service_healthy":
                check = services[target].get("healthcheck", {})
                assert check.get("test") and not check.get("disable"), f"{target} has no health check"
    # The image's check probes the web port: services that serve none must replace or disable it.
    for name in ("worker", "housekeeping", "beat"):
        assert "healthcheck" in services[name], name


def test_compose_volumes_are_declared_or_files_in_the_repository() -> None:
    compose = _compose()
    declared = set(compose["volumes"])
    used = set()
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), f"{name} mounts missing {source}"
            elif source.startswith("/"):
                # Only Promtail reads the host: Docker's container logs, read-only.
                assert (name, volume) == (
                    "promtail",
                    "/var/lib/docker/containers:/var/lib/docker/containers:ro",
                )
            else:
                assert source in declared, f"{name} uses undeclared volume {source}"
                used.add(source)
    assert used == declared
    assert {"pgdata", "data", "prometheus-data", "grafana-data"} <= declared


def test_prometheus_scrapes_the_web_and_every_worker_metrics_port() -> None:
    services = _compose()["services"]
    config = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert {"controlplane-web", "controlplane-worker", "node"} <= set(jobs)
    assert config["rule_files"] == ["alerts.yml"]
    # Django checks the Host header: the web job scrapes by a name ALLOWED_HOSTS always holds.
    assert jobs["controlplane-web"]["static_configs"] == [{"targets": ["web:8000"]}]
    assert "web" in services["web"]["environment"]["ALLOWED_HOSTS"].split("}", 1)[1].split(",")
    (discovery,) = jobs["controlplane-worker"]["dns_sd_configs"]
    workers = {
        name
        for name, s in services.items()
        if s.get("command", [])[:4] == ["celery", "-A", "controlplane", "worker"]
    }
    assert set(discovery["names"]) == workers == {"worker", "worker-gpu", "housekeeping"}
    for name in workers:
        assert services[name]["environment"]["CONTROLPLANE_WORKER_METRICS_PORT"] == str(discovery["port"])
        command = services[name]["command"]
        # Metrics recorded inside tasks reach the worker's port only with the threads pool.
        assert command[command.index("--pool") + 1] == "threads", name
    assert f"EXPOSE 8000 {discovery['port']}" in (ROOT / "Dockerfile").read_text()


def test_the_build_context_leaves_out_local_state_and_secrets() -> None:
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert {".git", ".venv", "var", "node_modules", ".env", ".env.*"} <= ignored
    # No stale build/lib in the wheel; the vendor files come from the image's npm stage.
    assert {"build", "dist", "static/vendor", "*.egg-info"} <= ignored


def _anchors(markdown: str) -> set[str]:
    # GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens.
    headings = re.findall(r"^#{1,6} (.+)$", markdown, flags=re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-") for heading in headings}


def test_operations_docs_link_to_files_and_headings_that_exist() -> None:
    pages = [ROOT / "docs" / "operations.md", ROOT / "docs" / "troubleshooting.md"]
    pages += sorted((ROOT / "docs" / "runbooks").glob("*.md"))
    assert len(pages) >= 11
    for page in pages:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if target.startswith(("http://", "https://")):
                continue
            path, _, anchor = target.partition("#")
            resolved = (page.parent / path).resolve() if path else page
            assert resolved.exists(), f"{page.name}: {target} does not exist"
            if anchor:
                assert anchor in _anchors(resolved.read_text()), (
                    f"{page.name}: no heading #{anchor} in {path or page.name}"
                )


def test_every_runbook_says_what_to_look_at_how_to_fix_and_how_to_verify() -> None:
    for runbook in sorted((ROOT / "docs" / "runbooks").glob("*.md")):
        text = runbook.read_text()
        assert "## Symptoms" in text, runbook.name
        assert "## What to look at" in text, runbook.name
        assert "## Verify" in text, runbook.name
        assert "## Fix" in text or "## Procedure" in text, runbook.name


def test_the_gpu_profile_builds_the_cuda_image_and_reserves_the_hosts_gpus() -> None:
    gpu = _compose()["services"]["worker-gpu"]
    assert gpu["profiles"] == ["gpu"]
    assert gpu["image"] == "controlplane-cuda:latest"
    assert gpu["build"]["args"]["TORCH_INDEX_URL"].endswith("/cu128")
    assert gpu["build"]["args"]["GPU_PACKAGES"].startswith("nvidia-ml-py==")
    (reservation,) = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert reservation["driver"] == "nvidia" and "gpu" in reservation["capabilities"]
    assert gpu["environment"]["CONTROLPLANE_WORKER_POOL"].startswith("${GPU_POOL")
    assert gpu["environment"]["NVIDIA_DRIVER_CAPABILITIES"] == "compute,utility"
    assert gpu["shm_size"] and gpu["ulimits"]["memlock"] == -1
    # The Dockerfile takes both build args the profile passes.
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "ARG TORCH_INDEX_URL=" in dockerfile and 'ARG GPU_PACKAGES=""' in dockerfile
    assert "${GPU_PACKAGES}" in dockerfile
