"""deploy/ renders, passes Kubernetes schema validation and yamllint, and holds together.

Schema validation is `kubernetes-validate --strict` (bundled OpenAPI schemas) against the oldest
Kubernetes this deployment supports (1.30: `preStop.sleep` is beta and on by default from 1.30)
and the newest the validator knows. The consistency checks catch what no schema can: a probe on
the wrong port, a selector that matches no pod, a grace period shorter than the drain, a setting
the service does not know, a metric name that does not exist.
"""

from __future__ import annotations

import json
import re
from typing import Any

import kubernetes_validate
import pytest
import yaml

from service.health import LIVENESS, READINESS
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
    "ScaledObject": 1,
    "ServiceMonitor": 1,
    "PrometheusRule": 1,
}


def container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    pod = find(objects, "Deployment")["spec"]["template"]["spec"]
    assert len(pod["containers"]) == 1
    c: dict[str, Any] = pod["containers"][0]
    return c


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
    drain = float(settings(objects[overlay])["TRANSLATOR_GRACE_PERIOD_S"])
    assert pre_stop >= 5
    assert pod["terminationGracePeriodSeconds"] >= pre_stop + drain + 5


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_restricted_security_context(overlay: str, objects: dict[str, list[dict[str, Any]]]):
    pod = find(objects[overlay], "Deployment")["spec"]["template"]["spec"]
    c = container(objects[overlay])
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    assert c["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "privileged": False,
        "capabilities": {"drop": ["ALL"]},
    }
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


def test_readme_explains_every_alert(objects: dict[str, list[dict[str, Any]]]):
    readme = (DEPLOY / "README.md").read_text()
    for rule in alert_rules(find(objects["cpu"], "PrometheusRule")):
        assert rule["alert"] in readme


def test_base_is_not_applied_alone():
    base = yaml.safe_load((DEPLOY / "base" / "kustomization.yaml").read_text())
    assert "images" not in base  # the overlays name the image
