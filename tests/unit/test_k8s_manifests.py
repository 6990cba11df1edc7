"""Kubernetes manifests: every overlay renders, validates against the Kubernetes schemas offline
(strict: no unknown fields), and the overlays differ only by environment, replicas, resources,
host and image tag.

There is no kustomize binary here, so `render` implements exactly the kustomization features
deploy/k8s uses (resources, namespace, configMapGenerator with literals, files and
`behavior: merge`, the content-hash name suffix, JSON 6902 patches with a kind/name target,
images) and refuses anything else, so the manifests cannot drift into features it would
render differently from kustomize.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

from runs.programs import load_programs_file
from tests.unit.test_deploy_files import documented_variables
from workers.programs.tinygpt.schema import resolve_params as tinygpt_params

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
OVERLAYS = ("dev", "staging", "prod")
KUBERNETES_VERSION = "1.31.0"

Obj = dict[str, Any]

KUSTOMIZATION_KEYS = {
    "apiVersion",
    "kind",
    "resources",
    "namespace",
    "configMapGenerator",
    "patches",
    "images",
}
GENERATOR_KEYS = {"name", "behavior", "literals", "files"}
PATCH_KEYS = {"target", "patch"}
TARGET_KEYS = {"kind", "name"}
IMAGE_KEYS = {"name", "newName", "newTag"}
POD_OWNERS = {"Deployment", "Job", "StatefulSet", "DaemonSet"}
# kustomize gives these no namespace (deploy/k8s/logging has the RBAC of its DaemonSet).
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding"}


# --- the renderer ----------------------------------------------------------------------------


@dataclass
class Build:
    objects: list[Obj] = field(default_factory=list)
    generated: dict[str, Obj] = field(default_factory=dict)  # ConfigMaps by name, before hashing

    def everything(self) -> list[Obj]:
        return self.objects + list(self.generated.values())


def kustomize_hash(config_map: Obj) -> str:
    """kustomize's api/hasher: sha256 of Go's json.Marshal of kind, name and data, 10 characters."""
    encoded: dict[str, Any] = {
        "kind": "ConfigMap",
        "name": config_map["metadata"]["name"],
        "data": config_map.get("data") or "",
    }
    text = json.dumps(encoded, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    # Go's encoder escapes these for HTML safety.
    for char, escape in (("&", "\\u0026"), ("<", "\\u003c"), (">", "\\u003e")):
        text = text.replace(char, escape)
    text = text.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")
    digest = hashlib.sha256(text.encode()).hexdigest()[:10]
    return digest.translate(str.maketrans("013ae", "ghkmt"))


def pod_specs(obj: Obj) -> Iterator[Obj]:
    if obj["kind"] in POD_OWNERS:
        yield obj["spec"]["template"]["spec"]


def containers(pod: Obj) -> Iterator[Obj]:
    yield from pod.get("initContainers", [])
    yield from pod.get("containers", [])


def _generate(directory: Path, generator: Obj, generated: dict[str, Obj]) -> None:
    assert set(generator) <= GENERATOR_KEYS, f"renderer does not implement {set(generator) - GENERATOR_KEYS}"
    data: dict[str, str] = {}
    for literal in generator.get("literals", []):
        key, sep, value = literal.partition("=")
        assert sep and key, f"literal {literal!r} is not KEY=value"
        # kustomize strips one pair of surrounding quotes; the renderer does not, so none are used.
        assert not re.fullmatch(r"([\"']).*\1", value), f"quoted literal {literal!r}"
        data[key] = value
    for file in generator.get("files", []):
        assert "=" not in file, f"renderer does not implement key=path file sources ({file})"
        data[Path(file).name] = (directory / file).read_text()
    name = generator["name"]
    behavior = generator.get("behavior", "create")
    if behavior == "create":
        assert name not in generated, f"ConfigMap {name} generated twice"
        generated[name] = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": data}
    elif behavior == "merge":
        assert name in generated, f"merge into ConfigMap {name}, which no base generates"
        generated[name]["data"].update(data)
    else:
        raise AssertionError(f"renderer does not implement behavior {behavior!r}")


def _pointer(path: str) -> list[str]:
    assert path.startswith("/"), path
    return [part.replace("~1", "/").replace("~0", "~") for part in path.split("/")[1:]]


def _apply_operation(document: Obj, operation: Obj) -> None:
    assert set(operation) <= {"op", "path", "value"}, operation
    *parents, last = _pointer(operation["path"])
    node: Any = document
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    kind = operation["op"]
    if kind == "replace":
        if isinstance(node, list):
            assert int(last) < len(node), f"replace of a missing element {operation['path']}"
            node[int(last)] = copy.deepcopy(operation["value"])
        else:
            assert last in node, f"replace of a missing member {operation['path']}"
            node[last] = copy.deepcopy(operation["value"])
    elif kind == "add":
        if isinstance(node, list):
            index = len(node) if last == "-" else int(last)
            node.insert(index, copy.deepcopy(operation["value"]))
        else:
            node[last] = copy.deepcopy(operation["value"])
    elif kind == "remove":
        del node[int(last) if isinstance(node, list) else last]
    else:
        raise AssertionError(f"renderer does not implement JSON patch op {kind!r}")


def _patch(objects: list[Obj], patch: Obj) -> None:
    assert set(patch) <= PATCH_KEYS, f"renderer does not implement {set(patch) - PATCH_KEYS}"
    target = patch["target"]
    assert set(target) <= TARGET_KEYS, f"renderer does not implement target {set(target) - TARGET_KEYS}"
    operations = yaml.safe_load(patch["patch"])
    assert isinstance(operations, list), "only JSON 6902 patches (a list of operations) are implemented"
    matches = [
        obj for obj in objects if obj["kind"] == target["kind"] and obj["metadata"]["name"] == target["name"]
    ]
    assert len(matches) == 1, f"patch target {target} matches {len(matches)} objects"
    for operation in operations:
        _apply_operation(matches[0], operation)


def _split_image(image: str) -> tuple[str, str | None]:
    assert "@" not in image, "renderer does not implement digests"
    name, sep, tag = image.rpartition(":")
    if sep and "/" not in tag:
        return name, tag
    return image, None


def _set_image(objects: list[Obj], rule: Obj) -> None:
    assert set(rule) <= IMAGE_KEYS, f"renderer does not implement {set(rule) - IMAGE_KEYS}"
    for obj in objects:
        for pod in pod_specs(obj):
            for container in containers(pod):
                name, tag = _split_image(container["image"])
                if name == rule["name"]:
                    new_tag = rule.get("newTag", tag)
                    new_name = rule.get("newName", name)
                    container["image"] = f"{new_name}:{new_tag}" if new_tag else new_name


def _load(directory: Path) -> Build:
    spec = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unknown = set(spec) - KUSTOMIZATION_KEYS
    assert not unknown, f"{directory}: renderer does not implement {sorted(unknown)}"
    build = Build()
    for entry in spec.get("resources", []):
        path = (directory / entry).resolve()
        if path.is_dir():
            base = _load(path)
            assert not set(base.generated) & set(build.generated)
            build.objects += base.objects
            build.generated.update(base.generated)
        else:
            build.objects += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    for generator in spec.get("configMapGenerator", []):
        _generate(directory, generator, build.generated)
    for patch in spec.get("patches", []):
        _patch(build.everything(), patch)
    for rule in spec.get("images", []):
        _set_image(build.objects, rule)
    if "namespace" in spec:
        for obj in build.everything():
            if obj["kind"] not in CLUSTER_SCOPED:
                obj["metadata"]["namespace"] = spec["namespace"]
    return build


def _strings(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for value in node.values():
            yield from _strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from _strings(value)
    elif isinstance(node, str):
        yield node


def render(directory: Path) -> list[Obj]:
    build = _load(directory)
    hashed = {name: f"{name}-{kustomize_hash(cm)}" for name, cm in build.generated.items()}
    for name, config_map in build.generated.items():
        config_map["metadata"]["name"] = hashed[name]
    for obj in build.objects:
        for pod in pod_specs(obj):
            for container in containers(pod):
                for source in container.get("envFrom", []):
                    if "configMapRef" in source:
                        ref = source["configMapRef"]
                        ref["name"] = hashed.get(ref["name"], ref["name"])
                for variable in container.get("env", []):
                    ref = variable.get("valueFrom", {}).get("configMapKeyRef")
                    if ref:
                        ref["name"] = hashed.get(ref["name"], ref["name"])
            for volume in pod.get("volumes", []):
                if "configMap" in volume:
                    volume["configMap"]["name"] = hashed.get(
                        volume["configMap"]["name"], volume["configMap"]["name"]
                    )
        # A reference anywhere else would keep the unhashed name and point at nothing.
        stale = set(_strings(obj)) & set(hashed)
        assert not stale, (
            f"{obj['kind']}/{obj['metadata']['name']} refers to {stale} where the renderer cannot rename it"
        )
    return build.everything()


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[Obj]]:
    return {overlay: render(K8S / "overlays" / overlay) for overlay in OVERLAYS}


def find(objects: list[Obj], kind: str, name: str | None = None) -> list[Obj]:
    return [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]


def one(objects: list[Obj], kind: str, name: str) -> Obj:
    (obj,) = find(objects, kind, name)
    return obj


def template_labels(obj: Obj) -> dict[str, str]:
    labels: dict[str, str] = obj["spec"]["template"]["metadata"]["labels"]
    return labels


def matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


def queue_of(worker: Obj) -> str:
    command: list[str] = worker["spec"]["template"]["spec"]["containers"][0]["command"]
    return command[command.index("-Q") + 1]


def pool_of(worker: Obj) -> str:
    """The fleet pool a worker Deployment serves (CONTROLPLANE_WORKER_POOL, default `default`)."""
    env = worker["spec"]["template"]["spec"]["containers"][0].get("env", [])
    return next((e["value"] for e in env if e["name"] == "CONTROLPLANE_WORKER_POOL"), "default")


def worker_pools(objects: list[Obj]) -> list[Obj]:
    return [
        o
        for o in find(objects, "Deployment")
        if o["spec"]["template"]["metadata"]["labels"].get("app.kubernetes.io/component") == "worker"
    ]


def config(objects: list[Obj]) -> dict[str, str]:
    (config_map,) = [
        o for o in find(objects, "ConfigMap") if o["metadata"]["name"].startswith("controlplane-config-")
    ]
    data: dict[str, str] = config_map["data"]
    return data


# --- the renderer is exact where it matters ------------------------------------------------------


def test_config_map_hash_matches_kustomizes_own_test_vectors() -> None:
    # From kustomize's api/hasher/hasher_test.go.
    assert kustomize_hash({"metadata": {"name": ""}, "data": {"one": ""}}) == "9g67k2htb6"
    assert (
        kustomize_hash({"metadata": {"name": ""}, "data": {"two": 2, "one": "", "three": 3}}) == "7757f9kkct"
    )
    assert kustomize_hash({"metadata": {"name": ""}}) == "6ct58987ht"


def test_renderer_refuses_a_kustomization_feature_it_does_not_implement(tmp_path: Path) -> None:
    (tmp_path / "kustomization.yaml").write_text("resources: []\ncommonLabels: {team: ml}\n")
    with pytest.raises(AssertionError, match="commonLabels"):
        render(tmp_path)


def test_a_config_change_renames_the_config_map_so_pods_roll(rendered: dict[str, list[Obj]]) -> None:
    names = {overlay: config(objects) for overlay, objects in rendered.items()}
    hashed = {
        overlay: next(
            o["metadata"]["name"] for o in find(objects, "ConfigMap") if "config" in o["metadata"]["name"]
        )
        for overlay, objects in rendered.items()
    }
    assert len(set(hashed.values())) == len(OVERLAYS), hashed
    assert names["dev"]["LOG_LEVEL"] == "DEBUG"
    assert names["prod"]["LOG_LEVEL"] == "INFO"
    web = one(rendered["prod"], "Deployment", "controlplane-web")
    env_from = web["spec"]["template"]["spec"]["containers"][0]["envFrom"]
    assert {"configMapRef": {"name": hashed["prod"]}} in env_from


# --- schema validation ----------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_rendered_object_is_valid_against_the_kubernetes_schemas(
    rendered: dict[str, list[Obj]], overlay: str
) -> None:
    objects = rendered[overlay]
    kinds = {o["kind"] for o in objects}
    assert {
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "Ingress",
        "ConfigMap",
        "Job",
        "PersistentVolumeClaim",
        "ServiceAccount",
    } <= kinds
    for obj in objects:
        assert obj["metadata"]["namespace"] == f"controlplane-{overlay}"
        try:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as error:
            pytest.fail(
                f"{overlay}: {obj['kind']}/{obj['metadata']['name']}: {error.message} at {list(error.path)}"
            )
    assert len(objects) >= 20


def test_overlays_differ_only_by_environment_replicas_resources_host_and_tag(
    rendered: dict[str, list[Obj]],
) -> None:
    def normalized(objects: list[Obj]) -> list[Obj]:
        result = []
        for original in objects:
            obj = copy.deepcopy(original)
            obj["metadata"].pop("namespace")
            if obj["kind"] == "ConfigMap" and obj["metadata"]["name"].startswith("controlplane-config-"):
                obj["data"] = {}
            spec = obj.get("spec", {})
            spec.pop("replicas", None)
            if obj["kind"] == "HorizontalPodAutoscaler":
                spec.pop("minReplicas")
                spec.pop("maxReplicas")
            if obj["kind"] == "PersistentVolumeClaim":
                spec.pop("resources")
            if obj["kind"] == "Ingress":
                for rule in spec["rules"]:
                    rule.pop("host")
                for tls in spec["tls"]:
                    tls.pop("hosts")
            for pod in pod_specs(obj):
                for container in containers(pod):
                    container.pop("resources")
                    container["image"] = _split_image(container["image"])[0]
            text = json.dumps(obj, sort_keys=True)
            # The config hash differs with the environment; the rest must not.
            text = re.sub(r"controlplane-config-[a-z0-9]{10}", "controlplane-config", text)
            result.append(json.loads(text))
        return sorted(result, key=lambda o: (o["kind"], o["metadata"]["name"]))

    dev, staging, prod = (normalized(rendered[overlay]) for overlay in OVERLAYS)
    assert dev == staging == prod


# --- the topology -----------------------------------------------------------------------------


def test_web_has_probes_resources_and_an_autoscaler(rendered: dict[str, list[Obj]]) -> None:
    for overlay, objects in rendered.items():
        web = one(objects, "Deployment", "controlplane-web")
        assert "replicas" not in web["spec"], "the HPA owns the web replica count"
        container = web["spec"]["template"]["spec"]["containers"][0]
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert container["command"][0] == "uvicorn"
        hosts = config(objects)["ALLOWED_HOSTS"].split(",")
        # Prometheus scrapes the pod by its IP: the web pod appends it to the configured hosts.
        env = {variable["name"]: variable for variable in container["env"]}
        assert env["POD_IP"]["valueFrom"] == {"fieldRef": {"fieldPath": "status.podIP"}}
        assert env["ALLOWED_HOSTS"]["value"] == "$(ALLOWED_HOSTS),$(POD_IP)"
        assert list(env) == ["POD_IP", "ALLOWED_HOSTS"], (
            "a $(VAR) reference sees only variables defined before it"
        )
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            headers = {h["name"]: h["value"] for h in container[probe]["httpGet"]["httpHeaders"]}
            assert headers["Host"] in hosts, f"{overlay}: the {probe} would get 400 DisallowedHost"
        hpa = one(objects, "HorizontalPodAutoscaler", "controlplane-web")
        assert hpa["spec"]["scaleTargetRef"] == {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "name": "controlplane-web",
        }
        assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    assert one(rendered["prod"], "HorizontalPodAutoscaler", "controlplane-web")["spec"]["minReplicas"] >= 2


def test_every_container_has_resources_and_runs_unprivileged(rendered: dict[str, list[Obj]]) -> None:
    for obj in rendered["prod"]:
        for pod in pod_specs(obj):
            assert pod["securityContext"]["runAsNonRoot"] is True
            assert pod["securityContext"]["runAsUser"] == 10001  # the image's user
            assert pod["automountServiceAccountToken"] is False
            for container in containers(pod):
                where = f"{obj['metadata']['name']}/{container['name']}"
                assert container["resources"]["requests"]["cpu"], where
                assert container["resources"]["requests"]["memory"], where
                assert container["resources"]["limits"]["memory"], where
                assert container["securityContext"]["allowPrivilegeEscalation"] is False, where
                assert container["securityContext"]["capabilities"]["drop"] == ["ALL"], where
                assert container["image"].startswith("registry.example.com/controlplane"), where


def test_each_gpu_pool_has_its_fleet_pool_gpus_and_nodes(rendered: dict[str, list[Obj]]) -> None:
    objects = rendered["prod"]
    pools = worker_pools(objects)
    names = {pool_of(pool): pool for pool in pools}
    assert len(names) == len(pools) >= 3, "one Deployment per fleet pool"
    gpu_pools = [p for p in pools if "nodeSelector" in p["spec"]["template"]["spec"]]
    assert len(gpu_pools) >= 2
    for pool in gpu_pools:
        pod = pool["spec"]["template"]["spec"]
        worker = pod["containers"][0]
        gpus = worker["resources"]["limits"]["nvidia.com/gpu"]
        assert worker["resources"]["requests"]["nvidia.com/gpu"] == gpus
        # The scheduler places runs on the pod's GPUs: as many runs at once as it has GPUs.
        assert worker["command"][worker["command"].index("--concurrency") + 1] == gpus
        assert "controlplane/gpu-pool" in pod["nodeSelector"]
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
        assert worker["image"].startswith("registry.example.com/controlplane-cuda:")
        shm = next(v for v in pod["volumes"] if v["name"] == "dshm")
        assert shm["emptyDir"]["medium"] == "Memory"
        assert {"name": "dshm", "mountPath": "/dev/shm"} in worker["volumeMounts"]
    cpu_pools = [p for p in pools if p not in gpu_pools]
    assert [pool_of(p) for p in cpu_pools] == ["default"]
    for pool in pools:
        worker = pool["spec"]["template"]["spec"]["containers"][0]
        assert worker["command"][:4] == ["celery", "-A", "controlplane", "worker"]
        assert worker["command"][worker["command"].index("--pool") + 1] == "threads"
        assert queue_of(pool) == config(objects)["CONTROLPLANE_DEFAULT_QUEUE"]
        # The warm shutdown checkpoints the runs: the grace period must cover it.
        assert pool["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] >= 60
        assert {
            "name": "metrics",
            "containerPort": int(config(objects)["CONTROLPLANE_WORKER_METRICS_PORT"]),
        } in worker["ports"]


def test_every_program_pool_has_a_worker_pool(rendered: dict[str, list[Obj]]) -> None:
    programs = load_programs_file(K8S / "base" / "programs.toml")
    assert programs, "the example programs file registers programs"
    for program in programs.values():
        if program.command[1:] == ("-m", "workers.programs.tinygpt"):
            # The pool's defaults must be values tinygpt itself accepts, or every run fails as config.
            defaults = {name: spec["default"] for name, spec in program.params.items()}
            assert tinygpt_params(defaults)["device"] == "cuda"
    program_pools = {p.resources.get("pool", "default") for p in programs.values()}
    assert program_pools | {"default"} == {pool_of(pool) for pool in worker_pools(rendered["prod"])}


def test_housekeeping_and_exactly_one_beat(rendered: dict[str, list[Obj]]) -> None:
    for objects in rendered.values():
        beats = [
            o
            for o in find(objects, "Deployment")
            if "beat" in o["spec"]["template"]["spec"]["containers"][0]["command"]
        ]
        assert len(beats) == 1
        (beat,) = beats
        assert beat["spec"]["replicas"] == 1
        assert beat["spec"]["strategy"] == {"type": "Recreate"}
        assert not [
            h
            for h in find(objects, "HorizontalPodAutoscaler")
            if h["spec"]["scaleTargetRef"]["name"] == beat["metadata"]["name"]
        ]
        housekeeping = one(objects, "Deployment", "controlplane-housekeeping")
        command = housekeeping["spec"]["template"]["spec"]["containers"][0]["command"]
        assert command[command.index("-Q") + 1] == "housekeeping"


def test_migrations_run_in_a_job_that_every_other_pod_waits_for(rendered: dict[str, list[Obj]]) -> None:
    objects = rendered["prod"]
    job = one(objects, "Job", "controlplane-migrate")
    assert job["spec"]["template"]["spec"]["containers"][0]["command"] == [
        "python",
        "manage.py",
        "migrate",
        "--noinput",
    ]
    for deployment in find(objects, "Deployment"):
        (init,) = deployment["spec"]["template"]["spec"]["initContainers"]
        assert "manage.py migrate --check" in init["command"][-1], deployment["metadata"]["name"]
        assert init["image"] == deployment["spec"]["template"]["spec"]["containers"][0]["image"]


def test_services_budgets_and_ingress_select_real_pods(rendered: dict[str, list[Obj]]) -> None:
    objects = rendered["prod"]
    pods = [template_labels(d) for d in find(objects, "Deployment")]
    for service in find(objects, "Service"):
        assert any(matches(service["spec"]["selector"], labels) for labels in pods), service["metadata"][
            "name"
        ]
    budgets = find(objects, "PodDisruptionBudget")
    for budget in budgets:
        assert any(matches(budget["spec"]["selector"]["matchLabels"], labels) for labels in pods)
    budgeted = {
        d["metadata"]["name"]
        for d in find(objects, "Deployment")
        if any(matches(b["spec"]["selector"]["matchLabels"], template_labels(d)) for b in budgets)
    }
    assert budgeted == {d["metadata"]["name"] for d in find(objects, "Deployment")} - {"controlplane-beat"}
    metrics = one(objects, "Service", "controlplane-worker-metrics")
    scraped = [labels for labels in pods if matches(metrics["spec"]["selector"], labels)]
    assert len(scraped) == len(worker_pools(objects)) + 1  # the pools and housekeeping


def test_ingress_passes_websockets_to_the_web_service(rendered: dict[str, list[Obj]]) -> None:
    for overlay, objects in rendered.items():
        ingress = one(objects, "Ingress", "controlplane")
        annotations = ingress["metadata"]["annotations"]
        assert int(annotations["nginx.ingress.kubernetes.io/proxy-read-timeout"]) >= 3600
        assert int(annotations["nginx.ingress.kubernetes.io/proxy-send-timeout"]) >= 3600
        (rule,) = ingress["spec"]["rules"]
        assert ingress["spec"]["tls"][0]["hosts"] == [rule["host"]]
        assert rule["host"] in config(objects)["ALLOWED_HOSTS"].split(","), overlay
        assert f"https://{rule['host']}" in config(objects)["CSRF_TRUSTED_ORIGINS"].split(","), overlay
        backend = rule["http"]["paths"][0]["backend"]["service"]
        service = one(objects, "Service", backend["name"])
        assert backend["port"]["name"] in {p["name"] for p in service["spec"]["ports"]}
    hosts = {
        one(objects, "Ingress", "controlplane")["spec"]["rules"][0]["host"] for objects in rendered.values()
    }
    assert len(hosts) == len(OVERLAYS)


def test_config_comes_from_config_maps_and_a_secret_kept_out_of_the_repository(
    rendered: dict[str, list[Obj]],
) -> None:
    for objects in rendered.values():
        assert not find(objects, "Secret"), "secrets are created outside the repository"
        for obj in objects:
            for pod in pod_specs(obj):
                for container in containers(pod):
                    refs = [s["secretRef"]["name"] for s in container["envFrom"] if "secretRef" in s]
                    assert refs == ["controlplane-secrets"]
    example = (K8S / "secrets.example.env").read_text().splitlines()
    values = dict(line.split("=", 1) for line in example if line and not line.startswith("#"))
    assert {"SECRET_KEY", "DATABASE_URL"} <= set(values)
    for key, value in values.items():
        assert "CHANGE-ME" in value or ".example.internal" in value, f"{key} looks like a real value"


def test_every_environment_variable_the_pods_get_is_documented(rendered: dict[str, list[Obj]]) -> None:
    names: set[str] = set()
    for objects in rendered.values():
        names |= set(config(objects))
        for obj in objects:
            for pod in pod_specs(obj):
                for container in containers(pod):
                    names |= {variable["name"] for variable in container.get("env", [])}
    example = (K8S / "secrets.example.env").read_text().splitlines()
    names |= {line.split("=", 1)[0] for line in example if line and not line.startswith("#")}
    # POD_IP only feeds the expansion of ALLOWED_HOSTS on web pods; the product never reads it.
    assert names - documented_variables() == {"POD_IP"}


# --- hardening ----------------------------------------------------------------------------------


def _mounts(container: Obj) -> dict[str, str]:
    return {mount["mountPath"]: mount["name"] for mount in container.get("volumeMounts", [])}


def test_every_container_has_a_read_only_root_and_mounts_what_it_writes(
    rendered: dict[str, list[Obj]],
) -> None:
    for obj in rendered["prod"]:
        for pod in pod_specs(obj):
            volumes = {volume["name"]: volume for volume in pod["volumes"]}
            for container in containers(pod):
                where = f"{obj['metadata']['name']}/{container['name']}"
                assert container["securityContext"]["readOnlyRootFilesystem"] is True, where
                assert "emptyDir" in volumes[_mounts(container)["/tmp"]], where
                if container["name"] in {"web", "worker", "housekeeping"}:
                    assert "persistentVolumeClaim" in volumes[_mounts(container)["/data"]], where
                if container["name"] == "worker":
                    assert "emptyDir" in volumes[_mounts(container)["/app/.cache"]], where
                if container["name"] == "beat":
                    schedule = container["command"][container["command"].index("--schedule") + 1]
                    assert schedule.startswith("/var/lib/beat/")
                    assert "emptyDir" in volumes[_mounts(container)["/var/lib/beat"]], where


def _probe(container: Obj, kind: str) -> list[str]:
    command: list[str] = container[kind]["exec"]["command"]
    return command


def test_workers_and_beat_have_cheap_local_liveness_and_readiness_probes(
    rendered: dict[str, list[Obj]],
) -> None:
    objects = rendered["prod"]
    heartbeat = config(objects)["CONTROLPLANE_WORKER_HEARTBEAT_FILE"]
    assert heartbeat.startswith("/tmp/"), "the heartbeat file must be on the writable /tmp"
    celery_workers = [*worker_pools(objects), one(objects, "Deployment", "controlplane-housekeeping")]
    for deployment in celery_workers:
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        for kind, mode in (("startupProbe", "live"), ("livenessProbe", "live"), ("readinessProbe", "ready")):
            assert _probe(container, kind)[:4] == ["python", "-m", "ops.worker_probe", mode], kind
        live = container["livenessProbe"]
        max_age = float(_probe(container, "livenessProbe")[-1])
        # Lax on purpose: the heartbeat ticks every 5 s; killing a training worker costs progress.
        assert max_age >= 60 and live["failureThreshold"] * live["periodSeconds"] >= 60
    beat = one(objects, "Deployment", "controlplane-beat")["spec"]["template"]["spec"]["containers"][0]
    schedule = beat["command"][beat["command"].index("--schedule") + 1]
    for kind in ("livenessProbe", "readinessProbe"):
        assert _probe(beat, kind)[:5] == ["python", "-m", "ops.worker_probe", "file", schedule]
        assert float(_probe(beat, kind)[-1]) >= 600  # beat syncs the file every 3 min


def test_only_web_and_prometheus_reach_the_workers_metrics_port(rendered: dict[str, list[Obj]]) -> None:
    objects = rendered["prod"]
    (policy,) = find(objects, "NetworkPolicy")
    spec = policy["spec"]
    assert spec["policyTypes"] == ["Ingress"]
    guarded = [
        d
        for d in find(objects, "Deployment")
        if matches(spec["podSelector"]["matchLabels"], template_labels(d))
    ]
    assert {d["metadata"]["name"] for d in guarded} == {
        d["metadata"]["name"] for d in worker_pools(objects)
    } | {"controlplane-housekeeping"}
    (rule,) = spec["ingress"]
    assert rule["ports"] == [{"protocol": "TCP", "port": "metrics"}]
    web, prometheus = rule["from"]
    assert matches(
        web["podSelector"]["matchLabels"], template_labels(one(objects, "Deployment", "controlplane-web"))
    )
    assert "namespaceSelector" not in web  # the web pods of this namespace only
    assert prometheus["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "prometheus"}
    assert prometheus["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "monitoring"}
    for deployment in guarded:
        ports = deployment["spec"]["template"]["spec"]["containers"][0]["ports"]
        assert {"name": "metrics", "containerPort": 9808} in ports
