"""Importers of checkpoints trained elsewhere: one loader per Hugging Face `model_type`.

A loader reads a directory as `save_pretrained` writes it and returns an `Imported`: our
`ModelConfig`, the weights under our names, the tokenizer files to ship, the target languages and
the decoding defaults and rules of the model's generation config. Adding a family is one more
module and one more entry in `LOADERS`. Nothing here touches the network.

Every refusal is an `UnsupportedModelError` whose message names the file and the field.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import Tensor

from model.config import ModelConfig


class UnsupportedModelError(ValueError):
    """A directory this importer cannot import exactly: names the file and the field."""


@dataclass(frozen=True)
class Imported:
    """What a loader read, in our terms."""

    config: ModelConfig
    weights: dict[str, Tensor]  # our state_dict names -> tensors
    tokenizer: str  # the bundle's tokenizer kind (service/bundle.py TOKENIZER_FILES)
    tokenizer_files: dict[str, Path]  # file name in the checkpoint and bundle -> where it is now
    source_language: str
    languages: list[str]  # target languages
    generation: dict[str, Any]  # decoding defaults and rules (see model/importers/generation.py)
    origin: dict[str, Any] = field(default_factory=dict)  # where it came from, for the manifest


Loader = Callable[[Path, dict[str, Any], dict[str, str]], Imported]


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from `path`, or UnsupportedModelError naming the file."""
    if not path.is_file():
        raise UnsupportedModelError(f"{path}: missing")
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UnsupportedModelError(f"{path}: not valid JSON ({error})") from error
    if not isinstance(value, dict):
        raise UnsupportedModelError(f"{path}: expected a JSON object")
    return value


def _loaders() -> dict[str, Loader]:
    from model.importers import marian  # the registry is built on first use

    return {"marian": marian.load}


def load_directory(directory: Path, languages: dict[str, str] | None = None) -> Imported:
    """Import a Hugging Face model directory.

    Args:
        directory: what `save_pretrained` wrote (config.json first).
        languages: optional {"source": ..., "target": ...} when the files do not say.
    """
    if not directory.is_dir():
        raise UnsupportedModelError(f"{directory}: not a directory")
    config = read_json(directory / "config.json")
    model_type = config.get("model_type")
    loaders = _loaders()
    if model_type not in loaders:
        raise UnsupportedModelError(
            f"{directory / 'config.json'}: model_type {model_type!r} is not supported;"
            f" supported: {', '.join(sorted(loaders))}"
        )
    return loaders[model_type](directory, config, languages or {})
