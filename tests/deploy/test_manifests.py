"""deploy/ renders, passes Kubernetes schema validation and yamllint, and holds together.

Schema validation is `kubernetes-validate --strict` (bundled OpenAPI schemas) against the oldest
Kubernetes this deployment supports (1.30: `preStop.sleep` is beta and on by default from 1.30)
and the newest the validator knows. The consistency checks catch what no schema can: a probe on
the wrong port, a selector that matches no pod, a grace period shorter than the drain, a setting
the service does not know, a metric name that does not exist, a model repository that the server
could write to or that the init container would seed wrongly (its script runs here, on temporary
directories).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from service.health import LIVENESS, READINESS
from service.metrics import Metrics
from service.settings import ServiceSettings
from tests.deploy.helpers import (
    CRD_GROUPS,
    DASHBOARD,
    DEPLOY,
    OVERLAYS,
    REPO,
    alert_rules,
    api_group,
    dashboard_queries,
    find,
    run,
)

KUBERNETES_VERSIONS = ("1.30.0", "1.37.0")

# The service's metrics (service/metrics.py); histograms also have _bucket, _sum and _count.
COUNTERS = {
    "translator_requests_total",
    "translator_input_tokens_total",
    "translator_output_tokens_total",
    "translator_rejections_total",
    "translator_model_loads_total",
}
GAUGES = {"translator_queue_depth", "translator_active_rows", "translator_build_info"}
HISTOGRAMS = {
    "translator_request_duration_seconds",
    "translator_queue_wait_seconds",
    "translator_time_to_first_token_seconds",
    "translator_time_per_output_token_seconds",
    "translator_encoder_seconds",
    "translator_decoder_step_seconds",
    "translator_batch_rows",
    "translator_padding_efficiency",
}
SERIES_NAMES = (
    COUNTERS | GAUGES | {f"{h}{s}" for h in HISTOGRAMS for s in ("_bucket", "_sum", "_count")}
)
EXPECTED_KINDS = {
    "Namespace": 1,
    "ConfigMap": 2,
    "Service": 2,
    "Deployment": 1,
    "PodDisruptionBudget": 1,
    "PersistentVolumeClaim": 1,
    "ScaledObject": 1,
    "ServiceMonitor": 1,
    "PrometheusRule": 1,
}
# The pod that publishes models into the repository; applied by hand, not by the overlays.
LOADER = DEPLOY / "tools" / "model-loader.yaml"
RESTRICTED_CONTAINER = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "runAsNonRoot": True,
    "privileged": False,
    "capabilities": {"drop": ["ALL"]},
}


def pod_spec(objects: list[dict[str, Any]]) -> dict[str, Any]:
    spec: dict[str, Any] = find(objects, "Deployment")["spec"]["template"]["spec"]
    return spec


def container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    pod = pod_spec(objects)
    assert len(pod["containers"]) == 1
    c: dict[str, Any] = pod["containers"][0]
    return c


def seed_container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    init = pod_spec(objects)["initContainers"]
    assert [c["name"] for c in init] == ["seed-repository"]
    c: dict[str, Any] = init[0]
    return c


def models_mount(c: dict[str, Any], objects: list[dict[str, Any]]) -> dict[str, Any]:
    """The container's mount of the model repository's volume (the one on the PVC)."""
    claim = find(objects, "PersistentVolumeClaim")["metadata"]["name"]
    volumes = {
        v["name"]
        for v in pod_spec(objects)["volumes"]
        if v.get("persistentVolumeClaim", {}).get("claimName") == claim
    }
    assert len(volumes) == 1, volumes
    mounts: list[dict[str, Any]] = [m for m in c["volumeMounts"] if m["name"] in volumes]
    assert len(mounts) == 1, mounts
    return mounts[0]


def settings(objects: list[dict[str, Any]]) -> dict[str, str]:
    data: dict[str, str] = find(objects, "ConfigMap", "translator-settings")["data"]
    return data


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_every_object(overlay: str, objects: dict[str, list[dict[str, Any]]]):
    kinds: dict[str, int] = {}
    for obj in objects[overlay]:
        kinds[obj["kind"]] = kinds.get(obj["kind"], 0) + 1
        if obj["kind"] != "Namespace":
            assert obj["metadata"]["namespace"] == "translator", obj["metadata"]["name"]
    assert kinds == EXPECTED_KINDS


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_kubernetes_schema_strict(
    overlay: str, version: str, objects: dict[str, list[dict[str, Any]]]
):
    checked = 0
    for obj in objects[overlay]:
        if api_group(obj) in CRD_GROUPS:
            continue  # test_crds.py validates these against their CRD schemas
        kubernetes_validate.validate(obj, version, strict=True)
        checked += 1
    assert checked == sum(
        n
        for k, n in EXPECTED_KINDS.items()
        if k not in {"ScaledObject", "ServiceMonitor", "PrometheusRule"}
    )


def test_kubernetes_schema_catches_a_typo(objects: dict[str, list[dict[str, Any]]]):
    deployment = json.loads(json.dumps(find(objects["cpu"], "Deployment")))
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["periodSecs"] = 5
    with pytest.raises(kubernetes_validate.ValidationError, match="periodSecs"):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[-1], strict=True)


def test_yamllint_sources():
    result = run(
        [
            str(REPO / ".venv/bin/yamllint"),
            "--strict",
            "-c",
            str(REPO / ".yamllint.yaml"),
            "deploy",
            "tests/deploy",
            ".yamllint.yaml",
        ],
        cwd=REPO,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_yamllint_rendered(overlay: str, rendered: dict[str, str], tmp_path):
    # kustomize's own output style (sequences not indented); long lines are allowed: the
    # dashboard JSON and the PromQL are embedded as strings.
    rules = {
        "line-length": "disable",
        "document-start": "disable",
        "indentation": {"indent-sequences": "consistent"},
    }
    config = {"extends": "default", "rules": rules}
    path = tmp_path / f"{overlay}.yaml"
    path.write_text(rendered[overlay])
    result = run(
        [str(REPO / ".venv/bin/yamllint"), "--strict", "-d", json.dumps(config), str(path)]
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_settings_are_the_service_settings(
    overlay: str, objects: dict[str, list[dict[str, Any]]], monkeypatch: pytest.MonkeyPatch
):
    values = settings(objects[overlay])
    fields = {f"TRANSLATOR_{name.upper()}" for name in ServiceSettings.model_fields}
    assert set(values) <= fields, f"not in service/settings.py: {sorted(set(values) - fields)}"
    # Read exactly as in the pod: from the environment, nothing else set.
    for name in fields:
        monkeypatch.delenv(name, raising=False)
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    loaded = ServiceSettings()
    assert str(loaded.bundle_path) == values["TRANSLATOR_BUNDLE_PATH"]
    assert str(loaded.model_repository) == values["TRANSLATOR_MODEL_REPOSITORY"]
    assert loaded.reflection is False


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes_and_ports(overlay: str, objects: dict[str, list[dict[str, Any]]]):
    c = container(objects[overlay])
    values = settings(objects[overlay])
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {
        "grpc": int(values["TRANSLATOR_PORT"]),
        "metrics": int(values["TRANSLATOR_METRICS_PORT"]),
    }
    expected = {"startupProbe": LIVENESS, "livenessProbe": LIVENESS, "readinessProbe": READINESS}
    for probe, health_service in expected.items():
        assert c[probe]["grpc"] == {"port": ports["grpc"], "service": health_service}
    startup = c["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_grace_period_covers_the_drain(overlay: str, objects: dict[str, list[dict[str, Any]]]):
    pod = find(objects[overlay], "Deployment")["spec"]["template"]["spec"]
    pre_stop = container(objects[overlay])["lifecycle"]["preStop"]["sleep"]["seconds"]
    values = settings(objects[overlay])
    drain = float(values["TRANSLATOR_DRAIN_DELAY_S"]) + float(values["TRANSLATOR_GRACE_PERIOD_S"])
    assert pre_stop >= 5
    assert pod["terminationGracePeriodSeconds"] >= pre_stop + drain + 5


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_restricted_security_context(overlay: str, objects: dict[str, list[dict[str, Any]]]):
    pod = find(objects[overlay], "Deployment")["spec"]["template"]["spec"]
    c = container(objects[overlay])
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    for each in pod["containers"] + pod.get("initContainers", []):
        assert each["securityContext"] == RESTRICTED_CONTAINER, each["name"]
    dockerfile = (REPO / "Dockerfile").read_text()
    user = re.findall(r"^USER (\d+):(\d+)$", dockerfile, re.M)
    assert user == [
        (str(pod["securityContext"]["runAsUser"]), str(pod["securityContext"]["runAsGroup"]))
    ]
    exposed = re.findall(r"^EXPOSE (.+)$", dockerfile, re.M)
    assert exposed == [" ".join(str(p["containerPort"]) for p in c["ports"])]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_selectors_match(overlay: str, objects: dict[str, list[dict[str, Any]]]):
    objs = objects[overlay]
    deployment = find(objs, "Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert selects(deployment["spec"]["selector"]["matchLabels"], pod_labels)
    assert selects(find(objs, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"], pod_labels)
    port_names = {p["name"] for p in container(objs)["ports"]}
    for service in (o for o in objs if o["kind"] == "Service"):
        assert selects(service["spec"]["selector"], pod_labels), service["metadata"]["name"]
        assert {p["targetPort"] for p in service["spec"]["ports"]} <= port_names

    monitor = find(objs, "ServiceMonitor")["spec"]
    scraped = [
        s
        for s in objs
        if s["kind"] == "Service"
        and selects(monitor["selector"]["matchLabels"], s["metadata"]["labels"])
        and "metrics" in {p["name"] for p in s["spec"]["ports"]}
    ]
    assert len(scraped) == 1
    assert [e["port"] for e in monitor["endpoints"]] == ["metrics"]
    assert set(monitor["podTargetLabels"]) <= set(pod_labels)

    target = find(objs, "ScaledObject")["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_autoscaling_thresholds_follow_the_batch_size(
    overlay: str, objects: dict[str, list[dict[str, Any]]]
):
    spec = find(objects[overlay], "ScaledObject")["spec"]
    triggers = {t["name"]: t for t in spec["triggers"]}
    assert set(triggers) == {"active-rows", "queue-depth"}
    max_rows = int(settings(objects[overlay])["TRANSLATOR_MAX_ACTIVE_ROWS"])
    assert float(triggers["active-rows"]["metadata"]["threshold"]) == 0.75 * max_rows
    assert 2 <= spec["minReplicaCount"] <= spec["fallback"]["replicas"] <= spec["maxReplicaCount"]
    for trigger in triggers.values():
        assert trigger["type"] == "prometheus"
        assert trigger["metricType"] == "AverageValue"


def test_gpu_overlay_asks_for_a_gpu(objects: dict[str, list[dict[str, Any]]]):
    gpu, cpu = objects["gpu"], objects["cpu"]
    assert container(gpu)["resources"]["limits"]["nvidia.com/gpu"] == 1
    pod = find(gpu, "Deployment")["spec"]["template"]["spec"]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod[
        "tolerations"
    ]
    assert pod["nodeSelector"]
    assert settings(gpu)["TRANSLATOR_DEVICE"] == "cuda"
    assert find(gpu, "Deployment")["spec"]["template"]["metadata"]["labels"]["accelerator"] == "gpu"

    assert "nvidia.com/gpu" not in json.dumps(find(cpu, "Deployment"))
    assert settings(cpu)["TRANSLATOR_DEVICE"] == "cpu"
    assert find(cpu, "Deployment")["spec"]["template"]["metadata"]["labels"]["accelerator"] == "cpu"


def test_cpu_and_memory_requests_equal_limits_on_cpu(objects: dict[str, list[dict[str, Any]]]):
    """Guaranteed QoS (dedicated cores): every container, init containers too, must qualify."""
    pod = pod_spec(objects["cpu"])
    for c in pod["containers"] + pod.get("initContainers", []):
        resources = c["resources"]
        for kind in ("cpu", "memory"):
            assert resources["requests"][kind] == resources["limits"][kind], (c["name"], kind)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_model_repository_volume(overlay: str, objects: dict[str, list[dict[str, Any]]]):
    objs = objects[overlay]
    claim = find(objs, "PersistentVolumeClaim")
    # Pods on several nodes mount it, and it is written in place; a selector would stop dynamic
    # provisioning.
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    assert "selector" not in claim["spec"]
    server, seed = container(objs), seed_container(objs)
    server_mount, seed_mount = models_mount(server, objs), models_mount(seed, objs)
    assert server_mount["readOnly"] is True
    assert seed_mount.get("readOnly", False) is False
    # The same paths in both: the settings name the repository for the server and the seeder.
    assert server_mount["mountPath"] == seed_mount["mountPath"]
    values = settings(objs)
    repository = Path(values["TRANSLATOR_MODEL_REPOSITORY"])
    assert repository.is_relative_to(server_mount["mountPath"])
    assert not Path(values["TRANSLATOR_BUNDLE_PATH"]).is_relative_to(server_mount["mountPath"])
    assert seed["image"] == server["image"]  # it copies the bundle of the image that serves it


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_seed_script_gets_its_variables(overlay: str, objects: dict[str, list[dict[str, Any]]]):
    seed = seed_container(objects[overlay])
    assert [e["configMapRef"]["name"] for e in seed["envFrom"]] == [
        e["configMapRef"]["name"] for e in container(objects[overlay])["envFrom"]
    ]
    provided = set(settings(objects[overlay])) | {e["name"] for e in seed["env"]}
    used = set(re.findall(r"\$\{?([A-Z_]+)", seed["args"][0]))
    assert used <= provided, sorted(used - provided)
    assert {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in seed["env"]} == {
        "POD_NAME": "metadata.name"
    }


def seed(objects: dict[str, list[dict[str, Any]]], repo: Path, bundle: Path, path: str = "") -> str:
    """Run the init container's script here, on `repo`, as pod translator-abc."""
    c = seed_container(objects["cpu"])
    env = {
        "PATH": path + os.environ["PATH"],
        "TRANSLATOR_MODEL_REPOSITORY": str(repo),
        "TRANSLATOR_BUNDLE_PATH": str(bundle),
        "POD_NAME": "translator-abc",
    }
    result = run([*c["command"], *c["args"]], env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): p.read_text() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    path = tmp_path / "image" / "default"
    path.mkdir(parents=True)
    (path / "manifest.json").write_text('{"name": "default"}')
    (path / "encoder.onnx").write_text("graph")
    return path


def test_seed_fills_an_empty_repository_once(
    objects: dict[str, list[dict[str, Any]]], bundle: Path, tmp_path: Path
):
    repo = tmp_path / "volume" / "repository"  # a fresh volume: not even the directory
    assert "seeded" in seed(objects, repo, bundle)
    assert tree(repo) == {f"default/1/{name}": text for name, text in tree(bundle).items()}
    assert sorted(p.name for p in repo.iterdir()) == ["default"]  # no staging left behind

    (repo / "default" / "2").mkdir()  # a later version; the image's bundle is not seeded again
    assert "nothing to seed" in seed(objects, repo, bundle)
    assert sorted(p.name for p in (repo / "default").iterdir()) == ["1", "2"]


def test_seed_leaves_a_repository_with_models_alone(
    objects: dict[str, list[dict[str, Any]]], bundle: Path, tmp_path: Path
):
    repo = tmp_path / "repository"
    (repo / "fr-en" / "3").mkdir(parents=True)  # the default model was removed on purpose
    (repo / "fr-en" / "3" / "manifest.json").write_text("{}")
    assert "nothing to seed" in seed(objects, repo, bundle)
    assert sorted(p.name for p in repo.iterdir()) == ["fr-en"]


def test_seed_ignores_hidden_leftovers(
    objects: dict[str, list[dict[str, Any]]], bundle: Path, tmp_path: Path
):
    repo = tmp_path / "repository"
    (repo / ".seed-translator-old" / "1").mkdir(parents=True)  # a pod killed while copying
    (repo / ".seed-translator-abc" / "1").mkdir(parents=True)  # this pod, restarted
    assert "seeded" in seed(objects, repo, bundle)
    assert sorted(p.name for p in repo.iterdir()) == [".seed-translator-old", "default"]
    assert tree(repo / "default" / "1") == tree(bundle)


def test_seed_loses_a_race_cleanly(
    objects: dict[str, list[dict[str, Any]]], bundle: Path, tmp_path: Path
):
    """Another pod renamed its copy into place between this pod's check and its rename."""
    repo = tmp_path / "repository"
    (repo / "default" / "1").mkdir(parents=True)
    (repo / "default" / "1" / "manifest.json").write_text("the other pod's")
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "find").write_text("#!/bin/sh\nexit 0\n")  # "the repository is empty"
    (fake / "find").chmod(0o755)
    assert "seeded by another pod" in seed(objects, repo, bundle, path=f"{fake}:")
    assert tree(repo) == {"default/1/manifest.json": "the other pod's"}


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_model_loader_pod(version: str, objects: dict[str, list[dict[str, Any]]]):
    pod = yaml.safe_load(LOADER.read_text())
    kubernetes_validate.validate(pod, version, strict=True)
    objs = objects["cpu"]
    claim = find(objs, "PersistentVolumeClaim")["metadata"]
    spec, (c,) = pod["spec"], pod["spec"]["containers"]
    assert pod["metadata"]["namespace"] == claim["namespace"]
    volumes = {
        v["name"]: v["persistentVolumeClaim"]["claimName"]
        for v in spec["volumes"]
        if "persistentVolumeClaim" in v
    }
    assert list(volumes.values()) == [claim["name"]]
    # Writable, where the servers mount it: the repository has the same path in both.
    (mount,) = [m for m in c["volumeMounts"] if m["name"] in volumes]
    assert mount["mountPath"] == models_mount(container(objs), objs)["mountPath"]
    assert mount.get("readOnly", False) is False
    # The overlays' image (tar for kubectl cp, the default bundle, service/), the same user.
    assert {c["image"]} == {container(objects[o])["image"] for o in OVERLAYS}
    assert c["securityContext"] == RESTRICTED_CONTAINER
    for key in ("runAsNonRoot", "runAsUser", "runAsGroup", "fsGroup", "seccompProfile"):
        assert spec["securityContext"][key] == pod_spec(objs)["securityContext"][key]
    assert spec["automountServiceAccountToken"] is False
    assert spec["activeDeadlineSeconds"] <= 3600
    # Not a server: no Service sends it traffic, the PDB does not count it.
    labels = pod["metadata"]["labels"]
    for service in (o for o in objs if o["kind"] == "Service"):
        assert not selects(service["spec"]["selector"], labels)
    assert not selects(find(objs, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"], labels)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_dashboard_configmap(overlay: str, objects: dict[str, list[dict[str, Any]]]):
    configmap = find(objects[overlay], "ConfigMap", "translator-dashboard")
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(configmap["data"]["translator.json"]) == json.loads(DASHBOARD.read_text())


def metric_names(text: str) -> set[str]:
    return set(re.findall(r"\btranslator_[a-z_]+\b", text))


def dashboard_exprs() -> str:
    return "\n".join(expr for _, expr in dashboard_queries(json.loads(DASHBOARD.read_text())))


def test_every_query_uses_real_metric_names(objects: dict[str, list[dict[str, Any]]]):
    objs = objects["cpu"]
    queries = [r["expr"] for r in alert_rules(find(objs, "PrometheusRule"))]
    queries += [t["metadata"]["query"] for t in find(objs, "ScaledObject")["spec"]["triggers"]]
    used = metric_names(dashboard_exprs()) | metric_names("\n".join(queries))
    assert used <= SERIES_NAMES, f"unknown metrics: {sorted(used - SERIES_NAMES)}"


def test_dashboard_shows_every_metric():
    used = {re.sub(r"_(bucket|sum|count)$", "", m) for m in metric_names(dashboard_exprs())}
    assert used == COUNTERS | GAUGES | HISTOGRAMS


def test_metric_lists_are_the_service_metrics():
    """COUNTERS, GAUGES and HISTOGRAMS above are what service/metrics.py registers."""
    families = {(m.name, m.type) for m in Metrics().registry.collect()}
    assert {f"{n}_total" for n, t in families if t == "counter"} == COUNTERS
    assert {n for n, t in families if t == "gauge"} == GAUGES
    assert {n for n, t in families if t == "histogram"} == HISTOGRAMS


def test_dashboard_filters_every_service_query_by_model(dashboard: dict[str, Any]):
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    model = variables["model"]
    assert model["query"]["query"] == (
        'label_values(translator_build_info{namespace="$namespace"}, model)'
    )
    # All is ".*", which also matches series without a model (model="").
    assert (model["multi"], model["includeAll"], model["allValue"]) == (True, True, ".*")
    for where, expr in dashboard_queries(dashboard):
        if where.startswith("variable"):
            continue
        for name, matchers in re.findall(r"\b(translator_[a-z_]+)(\{[^}]*\})?", expr):
            assert 'model=~"$model"' in matchers, f"{where}: {name} is not filtered by $model"


def test_every_alert_has_severity_summary_and_runbook(objects: dict[str, list[dict[str, Any]]]):
    rules = alert_rules(find(objects["cpu"], "PrometheusRule"))
    assert len(rules) >= 5
    for rule in rules:
        assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
        assert {"summary", "description", "runbook"} <= set(rule["annotations"]), rule["alert"]
    assert (
        find(objects["cpu"], "PrometheusRule")["spec"]
        == find(objects["gpu"], "PrometheusRule")["spec"]
    )


def test_service_alerts_are_per_model(objects: dict[str, list[dict[str, Any]]]):
    """An alert on the service's metrics keeps the model label through every aggregation."""
    rules = alert_rules(find(objects["cpu"], "PrometheusRule"))
    per_model = [r for r in rules if metric_names(r["expr"])]
    assert {r["alert"] for r in per_model} >= {
        "TranslatorLatencyHigh",
        "TranslatorErrorRatioHigh",
        "TranslatorQueueSaturated",
        "TranslatorRejecting",
        "TranslatorModelLoadFailed",
    }
    for rule in per_model:
        groupings = re.findall(r"\b(?:by|on)\s*\(([^)]*)\)", rule["expr"])
        assert groupings, rule["alert"]
        for labels in groupings:
            assert "model" in {label.strip() for label in labels.split(",")}, rule["alert"]


def test_readme_explains_every_alert(objects: dict[str, list[dict[str, Any]]]):
    readme = (DEPLOY / "README.md").read_text()
    for rule in alert_rules(find(objects["cpu"], "PrometheusRule")):
        assert rule["alert"] in readme


def test_base_is_not_applied_alone():
    base = yaml.safe_load((DEPLOY / "base" / "kustomization.yaml").read_text())
    assert "images" not in base  # the overlays name the image
