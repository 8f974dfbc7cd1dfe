"""The Dockerfile passes hadolint, and the runtime image holds what the service imports.

No image is built here (no container engine on CI); what a build would catch early is checked
statically: the lint, the pinned runtime requirements (pyproject.toml's `project.dependencies`,
also what `make serve` installs), the build context.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

from scripts.runtime_requirements import build_requirements, runtime_requirements
from tests.deploy.helpers import REPO, run

HADOLINT = REPO / ".venv" / "bin" / "hadolint"
PYPROJECT = REPO / "pyproject.toml"

# Training and export only: none of these may reach the runtime image or `make serve`'s venv.
TRAINING_PACKAGES = frozenset(
    {"torch", "onnxscript", "safetensors", "sacrebleu", "babel", "num2words", "tqdm"}
)

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


def requirement_name(line: str) -> str:
    return line.split("==", 1)[0].split("[", 1)[0]


def test_runtime_requirements_are_pinned_and_torch_free():
    lines = runtime_requirements(PYPROJECT, "cuda,cudnn")
    assert lines[0].startswith("onnxruntime-gpu[cuda,cudnn]==")
    assert all(len(line.split("==")) == 2 and line.split("==")[1] for line in lines), lines
    names = {requirement_name(line) for line in lines}
    assert not names & TRAINING_PACKAGES, names & TRAINING_PACKAGES
    assert not names & {"onnxruntime", "grpcio-tools", "mypy-protobuf"}, names
    assert runtime_requirements(PYPROJECT)[0].startswith("onnxruntime-gpu==")  # a CPU-only image


def test_build_requirements_are_grpcio_tools_alone():
    assert [requirement_name(line) for line in build_requirements(PYPROJECT)] == ["grpcio-tools"]


def test_an_unpinned_runtime_requirement_is_an_error(tmp_path: Path):
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text('[project]\ndependencies = ["numpy==2.4.6", "grpcio>=1.85"]\n')
    with pytest.raises(SystemExit, match="grpcio"):
        runtime_requirements(pyproject)


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
    # project.dependencies is exactly what the service imports: nothing missing, nothing extra.
    runtime = {requirement_name(line) for line in runtime_requirements(PYPROJECT)}
    assert {RUNTIME_MODULES[m] for m in third_party} == runtime


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
