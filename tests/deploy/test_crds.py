"""The prometheus-operator and KEDA objects validate against their CRD schemas.

The schemas come from the @kubernetes-models npm packages (tests/deploy/crd/package.json, locked),
installed into .cache/ by scripts/fetch_crd_models.sh; validate_crds.mjs also rejects fields the
schema does not know (see its header).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.helpers import CRD_GROUPS, OVERLAYS, api_group, find, run

VALIDATOR = Path(__file__).with_name("validate_crds.mjs")


def validate(models: Path, objects: list[dict[str, Any]]) -> tuple[int, list[dict[str, Any]]]:
    result = run(["node", str(VALIDATOR), str(models)], input=json.dumps(objects))
    assert not result.stderr.strip() or result.returncode != 0, result.stderr
    reports = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    assert len(reports) == len(objects), result.stdout + result.stderr
    return result.returncode, reports


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_custom_resources_match_their_crds(
    overlay: str, objects: dict[str, list[dict[str, Any]]], crd_models: Path
):
    custom = [o for o in objects[overlay] if api_group(o) in CRD_GROUPS]
    assert sorted(o["kind"] for o in custom) == ["PrometheusRule", "ScaledObject", "ServiceMonitor"]
    returncode, reports = validate(crd_models, custom)
    problems = [r for r in reports if r["errors"] or r["unknownFields"] or r["freeForm"]]
    assert returncode == 0 and not problems, json.dumps(problems, indent=2)


def test_validator_rejects_bad_objects(objects: dict[str, list[dict[str, Any]]], crd_models: Path):
    """Negative controls: a wrong value, a misspelt field, and a kind without a schema."""
    monitor = json.loads(json.dumps(find(objects["cpu"], "ServiceMonitor")))
    monitor["spec"]["endpoints"][0]["interval"] = "15 seconds"
    scaled = json.loads(json.dumps(find(objects["cpu"], "ScaledObject")))
    scaled["spec"]["minReplicaCout"] = 1
    unknown = {"apiVersion": "keda.sh/v1alpha1", "kind": "ScaledThing", "metadata": {"name": "x"}}
    returncode, reports = validate(crd_models, [monitor, scaled, unknown])
    assert returncode == 1
    assert "interval" in reports[0]["errors"][0]
    assert reports[1]["unknownFields"] == ["/spec/minReplicaCout"]
    assert reports[2]["errors"] == ["no CRD model for keda.sh/v1alpha1 ScaledThing"]
