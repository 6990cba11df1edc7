"""Log shipping: Loki's retention, Promtail's labels, both deployments (compose's `logs` profile
and deploy/k8s/logging) and the logs dashboard. No Loki or Promtail binary exists here (neither
Debian nor PyPI packages one), so the configurations are checked for the keys that carry each
decision; the Kubernetes objects go through the same renderer and strict schema validation as the
overlays."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

from tests.unit.test_k8s_manifests import KUBERNETES_VERSION, containers, find, pod_specs, render

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
LOGGING = DEPLOY / "k8s" / "logging"
AUDIT_TEMPLATE = (
    '{{ if or (HasPrefix (print .logger) "audit") (eq (print .event) "audit_checkpoint_written") '
    '(HasPrefix (print .event) "auth.") }}true{{ else }}false{{ end }}'
)


def _yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def _pipeline(config: dict[str, Any]) -> list[dict[str, Any]]:
    (job,) = config["scrape_configs"]
    stages: list[dict[str, Any]] = job["pipeline_stages"]
    return stages


@pytest.mark.parametrize("path", [DEPLOY / "loki" / "loki.yml", LOGGING / "loki.yml"], ids=["compose", "k8s"])
def test_loki_keeps_lines_30_days_and_audit_streams_90_with_the_compactor(path: Path) -> None:
    loki = _yaml(path)
    limits = loki["limits_config"]
    assert limits["retention_period"] == "720h"
    assert limits["retention_stream"] == [{"selector": '{audit="true"}', "priority": 1, "period": "2160h"}]
    assert limits["allow_structured_metadata"] is True
    compactor = loki["compactor"]
    # Without the compactor's retention, retention_period is only a number in a file.
    assert compactor["retention_enabled"] is True
    assert compactor["delete_request_store"] == "filesystem"
    assert loki["schema_config"]["configs"][-1]["schema"] == "v13"  # structured metadata needs v13/tsdb
    assert loki["schema_config"]["configs"][-1]["store"] == "tsdb"


def test_compose_and_kubernetes_loki_settings_are_the_same() -> None:
    assert _yaml(DEPLOY / "loki" / "loki.yml") == _yaml(LOGGING / "loki.yml")


@pytest.mark.parametrize(
    "path", [DEPLOY / "promtail" / "promtail.yml", LOGGING / "promtail.yml"], ids=["compose", "k8s"]
)
def test_promtail_labels_are_bounded_and_ids_travel_as_structured_metadata(path: Path) -> None:
    stages = _pipeline(_yaml(path))
    parsed = [stage["json"]["expressions"] for stage in stages if "json" in stage][-1]
    assert {"level", "logger", "event", "run_id", "request_id"} <= set(parsed)
    labels = {name for stage in stages if "labels" in stage for name in stage["labels"]}
    assert {"level", "audit"} <= labels
    assert not labels & {"run_id", "request_id", "logger", "event"}, "unbounded values as labels"
    (metadata,) = [stage["structured_metadata"] for stage in stages if "structured_metadata" in stage]
    assert set(metadata) == {"run_id", "request_id", "logger", "event"}
    (template,) = [stage["template"] for stage in stages if "template" in stage]
    assert template == {"source": "audit", "template": AUDIT_TEMPLATE}


def test_promtail_in_compose_reads_docker_json_files_and_names_the_service() -> None:
    config = _yaml(DEPLOY / "promtail" / "promtail.yml")
    (job,) = config["scrape_configs"]
    assert job["static_configs"][0]["labels"]["__path__"] == "/var/lib/docker/containers/*/*-json.log"
    assert config["clients"] == [{"url": "http://loki:3100/loki/api/v1/push"}]
    envelope = _pipeline(config)[0]["json"]["expressions"]
    assert envelope["service"] == 'attrs."com.docker.compose.service"'
    compose = _yaml(ROOT / "docker-compose.yml")
    services = compose["services"]
    assert services["loki"]["profiles"] == services["promtail"]["profiles"] == ["logs"]
    assert "./deploy/loki:/etc/loki:ro" in services["loki"]["volumes"]
    assert "./deploy/promtail:/etc/promtail:ro" in services["promtail"]["volumes"]
    for name in ("web", "worker", "housekeeping", "beat", "migrate"):
        # json-file with the service name in each line's attrs, rotated so the disk does not fill.
        options = services[name]["logging"]["options"]
        assert services[name]["logging"]["driver"] == "json-file"
        assert options["labels"] == "com.docker.compose.service" and options["max-size"]


def test_promtail_in_kubernetes_reads_the_pods_log_files_of_its_node() -> None:
    config = _yaml(LOGGING / "promtail.yml")
    (job,) = config["scrape_configs"]
    assert job["kubernetes_sd_configs"][0]["selectors"] == [
        {"role": "pod", "field": "spec.nodeName=${HOSTNAME}"}
    ]
    path_rule = next(rule for rule in job["relabel_configs"] if rule.get("target_label") == "__path__")
    assert path_rule["replacement"] == "/var/log/pods/*$1/*.log"
    assert _pipeline(config)[0] == {"cri": {}}


def test_the_logging_kustomization_renders_valid_objects() -> None:
    objects = render(LOGGING)
    kinds = {obj["kind"] for obj in objects}
    assert {
        "Namespace",
        "StatefulSet",
        "DaemonSet",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
    } <= kinds
    for obj in objects:
        try:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as error:
            pytest.fail(f"{obj['kind']}/{obj['metadata']['name']}: {error.message} at {list(error.path)}")
    (daemonset,) = find(objects, "DaemonSet")
    pod = daemonset["spec"]["template"]["spec"]
    mounts = {m["mountPath"]: m for m in pod["containers"][0]["volumeMounts"]}
    assert mounts["/var/log/pods"]["readOnly"] is True
    assert "-config.expand-env=true" in pod["containers"][0]["args"]  # ${HOSTNAME} in the config
    (binding,) = find(objects, "ClusterRoleBinding")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": pod["serviceAccountName"], "namespace": "controlplane-logging"}
    ]
    (role,) = find(objects, "ClusterRole")
    assert {verb for rule in role["rules"] for verb in rule["verbs"]} == {"get", "list", "watch"}
    for obj in objects:
        for spec in pod_specs(obj):
            for container in containers(spec):
                assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
                assert container["securityContext"]["readOnlyRootFilesystem"] is True
                assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
                assert re.fullmatch(r"grafana/(loki|promtail):\d+\.\d+\.\d+", container["image"])
    client = _yaml(LOGGING / "promtail.yml")["clients"][0]["url"]
    (service,) = [s for s in find(objects, "Service") if s["metadata"]["name"] == "loki"]
    assert client == f"http://loki.{service['metadata']['namespace']}.svc:3100/loki/api/v1/push"


def test_the_logs_dashboard_filters_on_run_and_request_ids_and_links_to_them() -> None:
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "logs.json").read_text())
    variables = {variable["name"]: variable for variable in dashboard["templating"]["list"]}
    assert {"loki", "service", "run_id", "request_id"} <= set(variables)
    datasource = _yaml(DEPLOY / "grafana" / "provisioning" / "datasources" / "loki.yml")["datasources"][0]
    assert variables["loki"]["current"]["value"] == datasource["uid"]
    panels = dashboard["panels"]
    assert len({panel["id"] for panel in panels}) == len(panels)
    for panel in panels:
        assert panel["datasource"] == {"type": "loki", "uid": "${loki}"}, panel["title"]
    logs = {panel["targets"][0]["expr"] for panel in panels if panel["type"] == "logs"}
    assert '{job="controlplane", service=~"$service"} | run_id="$run_id"' in logs
    assert '{job="controlplane", service=~"$service"} | request_id="$request_id"' in logs
    links = [
        link["url"]
        for panel in panels
        for override in panel.get("fieldConfig", {}).get("overrides", [])
        for prop in override["properties"]
        if prop["id"] == "links"
        for link in prop["value"]
    ]
    uid = dashboard["uid"]
    assert any(f"/d/{uid}/" in url and "var-run_id=${__value.raw}" in url for url in links)
    assert any(f"/d/{uid}/" in url and "var-request_id=${__value.raw}" in url for url in links)
    # Log lines link too: derived fields ($$ escapes Grafana's env expansion in provisioning).
    derived = {field["name"]: field for field in datasource["jsonData"]["derivedFields"]}
    assert derived["run_id"]["url"].startswith(f"/d/{uid}/") and "$${__value.raw}" in derived["run_id"]["url"]
    assert re.search(derived["request_id"]["matcherRegex"], '{"request_id": "abc-1"}')
    assert re.search(derived["run_id"]["matcherRegex"].replace("\\\\", "\\"), '{"run_id": 42}')
