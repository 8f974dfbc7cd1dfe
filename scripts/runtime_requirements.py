"""Print the runtime image's pip requirements, pinned exactly as in pyproject.toml.

pyproject.toml is the single source of truth: the runtime set is its `project.dependencies`
(what `python -m service` imports: no torch, no training packages), the builder stage's tools are
grpcio-tools from its `stubs` extra. A requirement that is not pinned with `==` is an error.

    python scripts/runtime_requirements.py [--ort-extras cuda,cudnn] [--pyproject pyproject.toml]
    python scripts/runtime_requirements.py --build     # grpcio-tools, for the builder stage
"""

from __future__ import annotations

import argparse
import sys
import tomllib
from pathlib import Path
from typing import Any

ORT = "onnxruntime-gpu"
BUILD_PACKAGES = ("grpcio-tools",)  # from the stubs extra; the builder writes no .pyi files


def _project(pyproject: Path) -> dict[str, Any]:
    project: dict[str, Any] = tomllib.loads(pyproject.read_text())["project"]
    return project


def pinned(pyproject: Path, requirements: list[str]) -> dict[str, str]:
    """{name: version} of `name==version` requirements; any other form is an error."""
    pins: dict[str, str] = {}
    for requirement in requirements:
        name, sep, version = requirement.partition("==")
        if not sep or not name.strip() or not version.strip():
            raise SystemExit(f"{pyproject}: {requirement.strip()!r} is not pinned with '=='")
        pins[name.strip()] = version.strip()
    return pins


def runtime_requirements(pyproject: Path, ort_extras: str = "") -> list[str]:
    """`project.dependencies`, one line each; onnxruntime-gpu with its extras if any."""
    pins = pinned(pyproject, list(_project(pyproject)["dependencies"]))
    return [
        f"{name}[{ort_extras}]=={version}" if name == ORT and ort_extras else f"{name}=={version}"
        for name, version in pins.items()
    ]


def build_requirements(pyproject: Path) -> list[str]:
    """The builder stage's tools (grpcio-tools), at their pins in the `stubs` extra."""
    stubs = _project(pyproject).get("optional-dependencies", {}).get("stubs", [])
    pins = pinned(pyproject, list(stubs))
    missing = [name for name in BUILD_PACKAGES if name not in pins]
    if missing:
        raise SystemExit(f"{pyproject}: not in the stubs extra: {missing}")
    return [f"{name}=={pins[name]}" for name in BUILD_PACKAGES]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pyproject", type=Path, default=Path("pyproject.toml"))
    parser.add_argument("--ort-extras", default="cuda,cudnn", help="empty for a CPU-only image")
    parser.add_argument("--build", action="store_true", help="the builder stage's tools instead")
    args = parser.parse_args()
    if args.build:
        lines = build_requirements(args.pyproject)
    else:
        lines = runtime_requirements(args.pyproject, args.ort_extras)
    sys.stdout.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
