"""Checkpoints on disk: weights in safetensors, config and tokenizer beside them. No pickled code.

DIR/config.json          model config + target languages
DIR/model.safetensors    weights
DIR/tokenizer.model      sentencepiece
DIR/trainer_state.pt     optimizer and schedule state for resuming (tensors only)
DIR/metrics.json         evaluation on the test split, written by model.evaluate
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from model.config import ModelConfig
from model.tokenizer import Tokenizer
from model.transformer import Transformer

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
TOKENIZER_FILE = "tokenizer.model"
TRAINER_STATE_FILE = "trainer_state.pt"
METRICS_FILE = "metrics.json"


class CheckpointError(ValueError):
    """A checkpoint that is missing, corrupt, or does not match its config."""


def _write_atomically(path: Path, write: Any) -> None:
    """Write through a temporary file in the same directory, then rename over `path`."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def save_checkpoint(
    directory: Path,
    model: Transformer,
    tokenizer: Tokenizer,
    trainer_state: dict[str, Any] | None = None,
) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    config = {"model": model.config.to_dict(), "languages": list(tokenizer.languages)}
    _write_atomically(directory / TOKENIZER_FILE, tokenizer.save)
    weights = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    _write_atomically(directory / WEIGHTS_FILE, lambda p: save_file(weights, str(p)))
    if trainer_state is not None:
        _write_atomically(directory / TRAINER_STATE_FILE, lambda p: torch.save(trainer_state, p))
    # The config goes last: a directory with a config.json holds a complete checkpoint.
    _write_atomically(
        directory / CONFIG_FILE, lambda p: p.write_text(json.dumps(config, indent=2) + "\n")
    )


def _require(directory: Path, name: str) -> Path:
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: checkpoint directory not found")
    path = directory / name
    if not path.is_file():
        raise CheckpointError(f"{path}: missing from the checkpoint")
    return path


def load_config(directory: Path) -> tuple[ModelConfig, list[str]]:
    path = _require(directory, CONFIG_FILE)
    try:
        values = json.loads(path.read_text())
        return ModelConfig.from_dict(values["model"]), list(values["languages"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
        raise CheckpointError(f"{path}: not a valid checkpoint config ({error})") from error


def load_tokenizer(directory: Path) -> Tokenizer:
    path = _require(directory, TOKENIZER_FILE)
    try:
        return Tokenizer.load(path)
    except (RuntimeError, OSError) as error:
        raise CheckpointError(f"{path}: not a sentencepiece model ({error})") from error


def load_model(directory: Path) -> tuple[Transformer, Tokenizer]:
    """Load the model in eval mode and its tokenizer, checking weights against the config."""
    config, _ = load_config(directory)
    tokenizer = load_tokenizer(directory)
    if len(tokenizer) != config.vocab_size:
        raise CheckpointError(
            f"{directory / TOKENIZER_FILE}: {len(tokenizer)} pieces, but the config says"
            f" vocab_size={config.vocab_size}"
        )
    path = _require(directory, WEIGHTS_FILE)
    try:
        weights = load_file(str(path))
    except (SafetensorError, OSError) as error:
        raise CheckpointError(f"{path}: corrupt weights file ({error})") from error
    model = Transformer(config)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in weights.items()}
    if expected != found:
        missing = sorted(set(expected) - set(found))[:3]
        unexpected = sorted(set(found) - set(expected))[:3]
        wrong = [
            f"{k}: {found[k]} != {expected[k]}"
            for k in expected
            if k in found and found[k] != expected[k]
        ][:3]
        raise CheckpointError(
            f"{path}: weights do not match {directory / CONFIG_FILE}"
            f" (missing {missing}, unexpected {unexpected}, wrong shapes {wrong})"
        )
    model.load_state_dict(weights)
    return model.eval(), tokenizer


def load_trainer_state(directory: Path) -> dict[str, Any]:
    path = _require(directory, TRAINER_STATE_FILE)
    try:
        state: dict[str, Any] = torch.load(path, weights_only=True)
    except Exception as error:  # torch raises many types for a bad file
        raise CheckpointError(f"{path}: corrupt trainer state ({error})") from error
    return state
