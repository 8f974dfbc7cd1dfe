"""Fixtures for the deploy/ checks: rendered overlays, the dashboard, promtool, CRD models."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.helpers import DASHBOARD, DEPLOY, OVERLAYS, fetch, find, require_tool, run


@pytest.fixture(scope="session")
def rendered() -> dict[str, str]:
    """`kubectl kustomize` output of each overlay."""
    kubectl = require_tool("kubectl", "kubectl >= 1.27 (kustomize v5) renders deploy/")
    out = {}
    for overlay in OVERLAYS:
        result = run([kubectl, "kustomize", str(DEPLOY / "overlays" / overlay)])
        assert result.returncode == 0, f"kustomize {overlay}: {result.stderr}"
        out[overlay] = result.stdout
    return out


@pytest.fixture(scope="session")
def objects(rendered: dict[str, str]) -> dict[str, list[dict[str, Any]]]:
    """The rendered objects of each overlay."""
    return {o: [d for d in yaml.safe_load_all(text) if d] for o, text in rendered.items()}


@pytest.fixture(scope="session")
def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


@pytest.fixture(scope="session")
def prometheus_bin() -> Path:
    """Directory holding Debian's `prometheus` and `promtool`, extracted into .cache/."""
    return fetch("fetch_prometheus.sh")


@pytest.fixture(scope="session")
def crd_models() -> Path:
    """Directory with node_modules/@kubernetes-models/{prometheus-operator,keda}."""
    require_tool("node", "Node.js runs the CRD schema validators")
    return fetch("fetch_crd_models.sh")


@pytest.fixture
def rules_dir(tmp_path: Path, objects: dict[str, list[dict[str, Any]]]) -> Iterator[Path]:
    """A directory with the rendered alert rules as a plain Prometheus rule file."""
    rule = find(objects["cpu"], "PrometheusRule")
    (tmp_path / "translator-rules.yaml").write_text(
        yaml.safe_dump({"groups": rule["spec"]["groups"]})
    )
    yield tmp_path
