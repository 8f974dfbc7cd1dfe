"""Print the runtime image's pip requirements, pinned exactly as in pyproject.toml.

The image installs only what `python -m service` imports: no torch, no training packages. Versions
come from pyproject.toml so they are written down once; a runtime package that is not pinned with
`==` there is an error.

    python scripts/runtime_requirements.py [--ort-extras cuda,cudnn] [--pyproject pyproject.toml]
    python scripts/runtime_requirements.py --build     # grpcio-tools, for the builder stage
"""

from __future__ import annotations

import argparse
import sys
import tomllib
from pathlib import Path

RUNTIME_PACKAGES = (
    "onnxruntime-gpu",
    "onnx",
    "grpcio",
    "grpcio-health-checking",
    "grpcio-reflection",
    "prometheus-client",
    "pydantic",
    "pydantic-settings",
    "sentencepiece",
    "numpy",
)
BUILD_PACKAGES = ("grpcio-tools",)  # the builder stage only: generates the gRPC stubs


def pinned_versions(pyproject: Path) -> dict[str, str]:
    """The `name==version` dependencies of pyproject.toml, as {name: version}."""
    dependencies = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    return dict(d.split("==", 1) for d in dependencies if "==" in d)


def requirements(pyproject: Path, packages: tuple[str, ...], ort_extras: str = "") -> list[str]:
    """One requirement line per package; onnxruntime-gpu with its extras if any."""
    pins = pinned_versions(pyproject)
    missing = [name for name in packages if name not in pins]
    if missing:
        raise SystemExit(f"{pyproject}: packages not pinned with '==': {missing}")
    lines = []
    for name in packages:
        extras = f"[{ort_extras}]" if name == "onnxruntime-gpu" and ort_extras else ""
        lines.append(f"{name}{extras}=={pins[name]}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pyproject", type=Path, default=Path("pyproject.toml"))
    parser.add_argument("--ort-extras", default="cuda,cudnn", help="empty for a CPU-only image")
    parser.add_argument("--build", action="store_true", help="the builder stage's tools instead")
    args = parser.parse_args()
    if args.build:
        lines = requirements(args.pyproject, BUILD_PACKAGES)
    else:
        lines = requirements(args.pyproject, RUNTIME_PACKAGES, args.ort_extras)
    sys.stdout.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
