"""promtool checks the alert rules, runs their unit tests, and parses every dashboard query.

promtool comes from Debian's prometheus package, extracted into .cache/ by
scripts/fetch_prometheus.sh. The dashboard's and the autoscaler's queries are checked here by
wrapping them as recording rules; test_e2e.py also runs them against a live Prometheus.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import yaml

from tests.deploy.helpers import (
    DASHBOARD,
    alert_rules,
    dashboard_queries,
    find,
    grafana_to_promql,
    run,
)

UNIT_TESTS = Path(__file__).with_name("rules_test.yaml")


def promtool(prometheus_bin: Path, *args: str, cwd: Path) -> str:
    result = run([str(prometheus_bin / "promtool"), *args], cwd=cwd)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    return output


def test_check_rules(prometheus_bin: Path, rules_dir: Path):
    output = promtool(prometheus_bin, "check", "rules", "translator-rules.yaml", cwd=rules_dir)
    assert "SUCCESS: 9 rules found" in output


def test_alert_unit_tests(prometheus_bin: Path, rules_dir: Path):
    shutil.copy(UNIT_TESTS, rules_dir / UNIT_TESTS.name)
    output = promtool(prometheus_bin, "test", "rules", UNIT_TESTS.name, cwd=rules_dir)
    assert "SUCCESS" in output


def test_every_alert_is_tested_firing_and_quiet(objects: dict[str, list[dict[str, Any]]]):
    fires: set[str] = set()
    quiet: set[str] = set()
    for case in yaml.safe_load(UNIT_TESTS.read_text())["tests"]:
        for check in case["alert_rule_test"]:
            (fires if check["exp_alerts"] else quiet).add(check["alertname"])
    alerts = {r["alert"] for r in alert_rules(find(objects["cpu"], "PrometheusRule"))}
    assert fires == alerts
    assert quiet == alerts


def test_dashboard_and_autoscaler_queries_parse(
    prometheus_bin: Path, tmp_path: Path, objects: dict[str, list[dict[str, Any]]]
):
    queries = dashboard_queries(json.loads(DASHBOARD.read_text()))
    triggers = find(objects["cpu"], "ScaledObject")["spec"]["triggers"]
    queries += [(f"trigger {t['name']}", t["metadata"]["query"]) for t in triggers]
    rules = [
        {"record": f"check:query_{i}", "expr": grafana_to_promql(expr, "1m")}
        for i, (_, expr) in enumerate(queries)
    ]
    (tmp_path / "queries.yaml").write_text(
        yaml.safe_dump({"groups": [{"name": "q", "rules": rules}]})
    )
    output = promtool(prometheus_bin, "check", "rules", "queries.yaml", cwd=tmp_path)
    assert f"SUCCESS: {len(rules)} rules found" in output
