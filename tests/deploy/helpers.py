"""Helpers for the deploy/ checks: paths, commands, tools, and reading manifests and PromQL.

The tools come from the project's own scripts into .cache/ (gitignored), so a fresh machine runs
these tests with `make test` alone: scripts/fetch_prometheus.sh (Debian's prometheus + promtool)
and scripts/fetch_crd_models.sh (the CRD schema models from npm). kubectl (for `kubectl
kustomize`) and node ship on the machine image. A missing tool fails the tests; none is skipped.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
OVERLAYS = ("cpu", "gpu")
DASHBOARD = DEPLOY / "base" / "dashboards" / "translator.json"
CRD_GROUPS = frozenset({"monitoring.coreos.com", "keda.sh"})

# Values for the dashboard's Grafana variables when its queries are evaluated outside Grafana.
GRAFANA_VARIABLES = {"namespace": "translator", "pod": ".*", "model": ".*"}


def run(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """Run a command, capture its output as text; never raises on a non-zero exit."""
    return subprocess.run(cmd, capture_output=True, text=True, check=False, **kwargs)


def require_tool(name: str, hint: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"`{name}` is not on PATH: {hint}")
    return path


def fetch(script: str) -> Path:
    """Run one of scripts/fetch_*.sh (idempotent) and return the directory it prints."""
    result = run(["bash", str(REPO / "scripts" / script)])
    if result.returncode != 0:
        pytest.fail(f"scripts/{script} failed ({result.returncode}):\n{result.stderr}")
    return Path(result.stdout.strip().splitlines()[-1])


def api_group(obj: dict[str, Any]) -> str:
    api_version: str = obj["apiVersion"]
    return api_version.split("/")[0] if "/" in api_version else ""


def find(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    """The one object of this kind (and name); fails the test if there is not exactly one."""
    found = [
        o
        for o in objects
        if o["kind"] == kind and (name is None or o["metadata"]["name"].startswith(name))
    ]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def grafana_to_promql(expr: str, rate_interval: str) -> str:
    """Substitute the dashboard's Grafana variables; fails on a variable left over."""
    variables = {"__rate_interval": rate_interval, **GRAFANA_VARIABLES}
    for name, value in variables.items():
        expr = expr.replace(f"${{{name}}}", value).replace(f"${name}", value)
    assert "$" not in expr, f"unsubstituted Grafana variable in: {expr}"
    return expr


def dashboard_queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, expr) for every panel target, nested rows included, and every query variable.

    A `label_values(selector, label)` variable becomes the PromQL `selector`: it returns data
    exactly when the variable has values.
    """
    queries: list[tuple[str, str]] = []

    def walk(panels: list[dict[str, Any]]) -> None:
        for panel in panels:
            walk(panel.get("panels", []))
            for target in panel.get("targets", []):
                queries.append((f"panel {panel['title']!r} {target['refId']}", target["expr"]))

    walk(dashboard["panels"])
    for variable in dashboard["templating"]["list"]:
        if variable["type"] != "query":
            continue
        query = variable["query"]
        query = query["query"] if isinstance(query, dict) else query
        match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", query)
        assert match, f"variable {variable['name']}: unsupported query {query!r}"
        queries.append((f"variable ${variable['name']}", match.group(1)))
    return queries


def alert_rules(prometheus_rule: dict[str, Any]) -> list[dict[str, Any]]:
    return [rule for group in prometheus_rule["spec"]["groups"] for rule in group["rules"]]
