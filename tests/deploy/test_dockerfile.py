"""The Dockerfile passes hadolint, and the runtime image holds what the service imports.

No image is built here (no container engine on CI); what a build would catch early is checked
statically: the lint, the pinned runtime requirements, the build context.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

from scripts.runtime_requirements import RUNTIME_PACKAGES, requirements
from tests.deploy.helpers import REPO, run

HADOLINT = REPO / ".venv" / "bin" / "hadolint"

# Top-level modules the service may import, by the distribution in the image that provides them.
RUNTIME_MODULES = {
    "onnxruntime": "onnxruntime-gpu",
    "onnx": "onnx",
    "grpc": "grpcio",
    "grpc_health": "grpcio-health-checking",
    "grpc_reflection": "grpcio-reflection",
    "google": "grpcio-health-checking",  # protobuf, a dependency of the grpcio-* packages
    "prometheus_client": "prometheus-client",
    "pydantic": "pydantic",
    "pydantic_settings": "pydantic-settings",
    "sentencepiece": "sentencepiece",
    "numpy": "numpy",
}


def hadolint(path: Path) -> tuple[int, str]:
    result = run([str(HADOLINT), "--no-color", str(path)])
    return result.returncode, result.stdout + result.stderr


def test_hadolint_passes():
    returncode, output = hadolint(REPO / "Dockerfile")
    assert returncode == 0, output


def test_hadolint_catches_a_bad_dockerfile(tmp_path: Path):
    """Negative control: hadolint really runs and reports."""
    bad = tmp_path / "Dockerfile"
    bad.write_text(
        "FROM python:latest\nRUN apt-get update && apt-get install -y curl\nCMD python\n"
    )
    returncode, output = hadolint(bad)
    assert returncode != 0
    for rule in ("DL3007", "DL3008", "DL3025"):
        assert rule in output, output


def test_runtime_requirements_are_pinned_and_torch_free():
    lines = requirements(REPO / "pyproject.toml", RUNTIME_PACKAGES, "cuda,cudnn")
    assert lines[0].startswith("onnxruntime-gpu[cuda,cudnn]==")
    assert all("==" in line for line in lines)
    assert not any(line.startswith(("torch", "onnxruntime==")) for line in lines)


def service_imports() -> set[str]:
    modules: set[str] = set()
    for path in (REPO / "service").rglob("*.py"):
        if "pb" in path.relative_to(REPO / "service").parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                modules |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules.add(node.module.split(".")[0])
    return modules


def test_image_holds_every_module_the_service_imports():
    third_party = service_imports() - set(sys.stdlib_module_names) - {"service", "__future__"}
    missing = sorted(m for m in third_party if m not in RUNTIME_MODULES)
    assert not missing, f"service/ imports modules the runtime image does not install: {missing}"
    assert {RUNTIME_MODULES[m] for m in third_party} <= set(RUNTIME_PACKAGES)


def test_build_context_has_what_the_dockerfile_copies():
    ignore = (REPO / ".dockerignore").read_text().splitlines()
    assert "*" in ignore  # an allow-list: everything not named below stays out
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    dockerfile = (REPO / "Dockerfile").read_text()
    copied = {
        line.split()[1].rstrip("/")
        for line in dockerfile.splitlines()
        if line.startswith("COPY ") and "--from" not in line
    }
    assert copied <= allowed | {"pyproject.toml"}, copied - allowed
    assert "models/default" in allowed
