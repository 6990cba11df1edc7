"""Alerting and dashboards: the Prometheus rules pass promtool's checks and unit tests, every alert
is tested firing and quiet, links a runbook that exists, and every expression (rules and Grafana
panels) uses only metrics that something really exports.

promtool comes from Debian's `prometheus` package (CI installs it); without it the promtool tests
skip and say so, and the static checks still run.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS = ROOT / "deploy" / "prometheus"
RULES = PROMETHEUS / "alerts.yml"
RULE_TESTS = sorted((PROMETHEUS / "tests").glob("*.yml"))
GRAFANA = ROOT / "deploy" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "controlplane.json"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool not on PATH (Debian/Ubuntu: apt-get install prometheus)"
)

# The metric names agreed for ops/metrics.py (docs/operations.md#monitoring lists them too).
GAUGES = {
    "controlplane_runs",
    "controlplane_dead_letters",
    "controlplane_queue_depth",
    "controlplane_queue_oldest_age_seconds",
    "controlplane_workers_live",
    "controlplane_fleet_devices",
    "controlplane_fleet_devices_in_use",
    "controlplane_fleet_queued_runs",
    "controlplane_fleet_queue_oldest_wait_seconds",
    "controlplane_websocket_connections",
    "controlplane_circuit_breaker_state",
    "controlplane_runs_supervised",
    "controlplane_audit_chain_ok",
    "controlplane_audit_last_verified_timestamp_seconds",
    "controlplane_audit_unanchored_seconds",
    "controlplane_gpu_memory_used_bytes",
    "controlplane_gpu_memory_total_bytes",
    "controlplane_gpu_utilization_ratio",
}
COUNTERS = {
    "controlplane_runs_finished_total",
    "controlplane_http_requests_rejected_total",
    "controlplane_training_tokens_total",
    "controlplane_lease_expiries_total",
    "controlplane_reconciler_actions_total",
    "controlplane_log_lines_dropped_total",
}
HISTOGRAMS = {
    "controlplane_dispatch_latency_seconds",
    "controlplane_training_step_seconds",
    "controlplane_ingest_batch_size",
    "controlplane_stream_lag_seconds",
    "controlplane_fleet_launch_to_start_seconds",
}
# node_exporter's filesystem metrics feed the disk alerts; `up` is Prometheus's own.
EXTERNAL = {"up", "node_filesystem_avail_bytes", "node_filesystem_size_bytes", "node_filesystem_readonly"}

PROMQL_WORDS = {
    "and",
    "or",
    "unless",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "offset",
}


def exposed(kind: str, name: str) -> set[str]:
    """The series names a metric family puts on the wire (prometheus_client's conventions)."""
    if kind == "Histogram":
        return {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
    if kind == "Counter" and not name.endswith("_total"):
        return {f"{name}_total"}
    return {name}


def django_prometheus_metrics() -> set[str]:
    """Every series name the installed django-prometheus declares, read from its source."""
    import django_prometheus

    names: set[str] = set()
    for source in Path(django_prometheus.__file__).parent.rglob("*.py"):
        if "tests" in source.parts:
            continue
        for kind, name in re.findall(
            r"\b(Counter|Histogram|Gauge)\s*[(,]\s*\"(django_\w+)\"", source.read_text()
        ):
            names |= exposed(kind, name)
    return names


def declared_metrics() -> set[str]:
    names = GAUGES | COUNTERS | EXTERNAL | django_prometheus_metrics()
    for histogram in HISTOGRAMS:
        names |= exposed("Histogram", histogram)
    return names


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (not functions, keywords or label names)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for match in re.finditer(r"(?<![\w.:$])[a-zA-Z_:][\w:]*", text):
        word = match.group()
        if word in PROMQL_WORDS or text[match.end() :].lstrip().startswith("("):
            continue
        names.add(word)
    return names


def rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(RULES.read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def alert_tests() -> Iterator[tuple[str, bool]]:
    """(alert name, fires) for every alert_rule_test case in the promtool unit tests."""
    for path in RULE_TESTS:
        for test in yaml.safe_load(path.read_text())["tests"]:
            for case in test["alert_rule_test"]:
                yield case["alertname"], bool(case["exp_alerts"])


def dashboard_exprs() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]


def promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run(
        [PROMTOOL, *map(str, args)], capture_output=True, text=True, timeout=120, check=False
    )


# --- promtool -------------------------------------------------------------------------------


@needs_promtool
def test_rules_and_scrape_config_pass_promtool_checks() -> None:
    checked = promtool("check", "rules", RULES)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(rules())} rules found" in checked.stdout
    config = promtool("check", "config", PROMETHEUS / "prometheus.yml")
    assert config.returncode == 0, config.stdout + config.stderr


@needs_promtool
def test_rule_unit_tests_pass() -> None:
    result = promtool("test", "rules", *RULE_TESTS)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == len(RULE_TESTS)


@needs_promtool
@pytest.mark.parametrize("alert", sorted(rule["alert"] for rule in rules()))
def test_rule_unit_tests_fail_when_the_alert_is_gone(alert: str, tmp_path: Path) -> None:
    # Proof that the unit tests really exercise each alert: without it, they must fail.
    document = yaml.safe_load(RULES.read_text())
    for group in document["groups"]:
        group["rules"] = [rule for rule in group["rules"] if rule["alert"] != alert]
    (tmp_path / "alerts.yml").write_text(yaml.safe_dump(document))
    copies = []
    for path in RULE_TESTS:
        if f"alertname: {alert}\n" not in path.read_text():
            continue  # the other files cannot notice; skipping them keeps this test quick
        test = yaml.safe_load(path.read_text())
        test["rule_files"] = [str(tmp_path / "alerts.yml")]
        copy = tmp_path / path.name
        copy.write_text(yaml.safe_dump(test))
        copies.append(copy)
    result = promtool("test", "rules", *copies)
    assert result.returncode != 0
    assert f"alertname: {alert}," in result.stdout + result.stderr


# --- the rules themselves ------------------------------------------------------------------------


def test_every_alert_has_a_severity_a_summary_and_a_runbook_that_exists() -> None:
    alerts = rules()
    names = [rule["alert"] for rule in alerts]
    assert len(names) == len(set(names)) >= 9
    for rule in alerts:
        assert rule["labels"]["severity"] in {"critical", "warning"}, rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]
        runbook = rule["annotations"]["runbook_url"]
        assert re.fullmatch(r"docs/runbooks/[a-z0-9-]+\.md", runbook), runbook
        assert (ROOT / runbook).is_file(), f"{rule['alert']}: {runbook} does not exist"
        assert rule["alert"] in (ROOT / runbook).read_text(), f"{runbook} does not name {rule['alert']}"


def test_the_issues_signals_each_have_an_alert() -> None:
    used = {name for rule in rules() for name in metric_names(rule["expr"])}
    for signal in (
        "django_http_responses_total_by_status_total",  # 5xx rate
        "controlplane_runs_finished_total",  # failure-kind spikes
        "controlplane_queue_oldest_age_seconds",  # backlog age
        "controlplane_workers_live",  # no live workers
        "controlplane_lease_expiries_total",
        "controlplane_dead_letters",
        "node_filesystem_avail_bytes",  # disk nearly full
        "controlplane_audit_chain_ok",
        "controlplane_audit_unanchored_seconds",  # the window in which records are not anchored
        "controlplane_stream_lag_seconds_bucket",
    ):
        assert signal in used, signal


def test_every_alert_is_tested_firing_and_quiet() -> None:
    cases = Counter(alert_tests())
    for rule in rules():
        assert cases[(rule["alert"], True)] >= 1, f"{rule['alert']} has no firing case"
        assert cases[(rule["alert"], False)] >= 1, f"{rule['alert']} has no quiet case"
    assert {name for name, _ in cases} <= {rule["alert"] for rule in rules()}


def test_rules_use_only_declared_metrics() -> None:
    declared = declared_metrics()
    for rule in rules():
        unknown = metric_names(rule["expr"]) - declared
        assert not unknown, f"{rule['alert']} uses undeclared {unknown}"


def test_the_metric_name_parser_sees_through_promql() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (le, queue) (rate(a_bucket{job="x", le=~"1|5m"}[5m] offset 1h)))'
        " / ignoring (gpu) b_total > 0.5 and on (instance) c == 0 or absent(d) unless time() - e > 1e3"
    )
    assert metric_names(expr) == {"a_bucket", "b_total", "c", "d", "e"}


def test_every_controlplane_metric_used_is_declared_in_ops_metrics() -> None:
    source = (ROOT / "ops" / "metrics.py").read_text()
    declared = {name.removesuffix("_total") for name in re.findall(r'"(controlplane_\w+)"', source)}
    used = {name for rule in rules() for name in metric_names(rule["expr"])}
    used |= {name for expr in dashboard_exprs() for name in metric_names(expr)}
    for name in sorted(n for n in used if n.startswith("controlplane_")):
        base = (
            re.sub(r"_(bucket|sum|count)$", "", name)
            if name.endswith(("_bucket", "_sum", "_count"))
            else name
        )
        assert base.removesuffix("_total") in declared, f"{name} is not declared in ops/metrics.py"


# --- Grafana ----------------------------------------------------------------------------------


def test_dashboard_panels_query_only_declared_metrics_through_the_provisioned_datasource() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    panels = dashboard["panels"]
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids))
    (variable,) = dashboard["templating"]["list"]
    provisioned = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())
    assert variable["current"]["value"] == provisioned["datasources"][0]["uid"]
    declared = declared_metrics()
    graphs = [panel for panel in panels if panel["type"] != "row"]
    assert len(graphs) >= 20
    for panel in graphs:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            unknown = metric_names(target["expr"]) - declared
            assert not unknown, f"panel {panel['title']!r} uses undeclared {unknown}"


def test_dashboard_shows_every_signal_the_alerts_watch() -> None:
    alerted = {name for rule in rules() for name in metric_names(rule["expr"])} - {"node_filesystem_readonly"}
    shown = {name for expr in dashboard_exprs() for name in metric_names(expr)}
    assert alerted <= shown, alerted - shown
    agreed = GAUGES | COUNTERS | {f"{h}_bucket" for h in HISTOGRAMS}
    assert agreed <= shown, agreed - shown


def test_grafana_provisioning_loads_the_dashboards_directory_compose_mounts() -> None:
    provider = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "controlplane.yml").read_text())
    path = provider["providers"][0]["options"]["path"]
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    volumes = compose["services"]["grafana"]["volumes"]
    assert f"./deploy/grafana/dashboards:{path}:ro" in volumes
    assert "./deploy/grafana/provisioning:/etc/grafana/provisioning:ro" in volumes
