"""Checkpoints on disk: weights in safetensors, config and tokenizer beside them. No pickled code.

DIR/config.json          model config, source and target languages, tokenizer kind; for an
                         imported model also its decoding defaults and rules and its origin
DIR/model.safetensors    weights
DIR/tokenizer.model      sentencepiece (tokenizer "sentencepiece": trained by model.train)
DIR/source.spm, target.spm, vocab.json   (tokenizer "marian": imported by model.import_hf)
DIR/trainer_state.pt     optimizer, schedule, data position and random state for resuming
                         (tensors and plain values only)
DIR/steps/step-NNNNNNN.safetensors   weights of the last saves (--keep-checkpoints), averaged by
                         model.average
DIR/metrics.json         evaluation on the test split, written by model.evaluate
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from model.config import ModelConfig
from model.importers import Imported
from model.tokenizer import Tokenizer
from model.transformer import Transformer
from service.bundle import TOKENIZER_FILES
from service.tokenizer import MarianTokenizer

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
TOKENIZER_FILE = "tokenizer.model"
TRAINER_STATE_FILE = "trainer_state.pt"
METRICS_FILE = "metrics.json"
STEPS_DIR = "steps"


class CheckpointError(ValueError):
    """A checkpoint that is missing, corrupt, or does not match its config."""


@dataclass(frozen=True)
class CheckpointConfig:
    """config.json; the defaults are those of a model trained here (older files lack them)."""

    model: ModelConfig
    languages: list[str]  # target languages
    source_language: str = "en"
    tokenizer: str = "sentencepiece"  # a kind of service/bundle.py TOKENIZER_FILES
    generation: dict[str, Any] | None = None  # decoding defaults and rules of an imported model
    origin: dict[str, Any] = field(default_factory=dict)  # where an imported model came from

    def to_dict(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        values["model"] = self.model.to_dict()
        return values

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> CheckpointConfig:
        return cls(**{**values, "model": ModelConfig.from_dict(values["model"])})


CheckpointTokenizer = Tokenizer | MarianTokenizer


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
    _write_weights(directory, model.state_dict())
    if trainer_state is not None:
        _write_atomically(directory / TRAINER_STATE_FILE, lambda p: torch.save(trainer_state, p))
    _write_config(directory, config)


def save_imported(directory: Path, imported: Imported) -> None:
    """A checkpoint of an imported model: its weights, tokenizer files and config."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, source in imported.tokenizer_files.items():
        _write_atomically(directory / name, lambda p, s=source: shutil.copyfile(s, p))
    _write_weights(directory, imported.weights)
    config = CheckpointConfig(
        model=imported.config,
        languages=imported.languages,
        source_language=imported.source_language,
        tokenizer=imported.tokenizer,
        generation=imported.generation,
        origin=imported.origin,
    )
    _write_config(directory, config.to_dict())


def _write_weights(
    directory: Path, state: dict[str, torch.Tensor], name: str = WEIGHTS_FILE
) -> None:
    weights = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    _write_atomically(directory / name, lambda p: save_file(weights, str(p)))


def save_weights(directory: Path, weights: dict[str, torch.Tensor]) -> None:
    """DIR/model.safetensors alone (model.average writes its config and tokenizer beside it)."""
    _write_weights(directory, weights)


def save_step_weights(directory: Path, model: Transformer, step: int, keep: int) -> None:
    """Keep the weights of this step beside the checkpoint, and only the last `keep` of them."""
    steps = directory / STEPS_DIR
    steps.mkdir(parents=True, exist_ok=True)
    _write_weights(steps, model.state_dict(), f"step-{step:07d}.safetensors")
    for old in step_weights(directory)[:-keep]:
        old.unlink()


def step_weights(directory: Path) -> list[Path]:
    """The kept weights of a checkpoint, oldest step first."""
    return sorted((directory / STEPS_DIR).glob("step-*.safetensors"))


def _write_config(directory: Path, config: dict[str, Any]) -> None:
    """The config goes last: a directory with a config.json holds a complete checkpoint."""
    text = json.dumps(config, indent=2, ensure_ascii=False) + "\n"
    _write_atomically(directory / CONFIG_FILE, lambda p: p.write_text(text, encoding="utf-8"))


def _require(directory: Path, name: str) -> Path:
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: checkpoint directory not found")
    path = directory / name
    if not path.is_file():
        raise CheckpointError(f"{path}: missing from the checkpoint")
    return path


def load_config(directory: Path) -> CheckpointConfig:
    path = _require(directory, CONFIG_FILE)
    try:
        config = CheckpointConfig.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
        raise CheckpointError(f"{path}: not a valid checkpoint config ({error})") from error
    if config.tokenizer not in TOKENIZER_FILES:
        raise CheckpointError(
            f"{path}: unknown tokenizer {config.tokenizer!r}; known: {sorted(TOKENIZER_FILES)}"
        )
    return config


def load_tokenizer(directory: Path, kind: str = "sentencepiece") -> CheckpointTokenizer:
    paths = [_require(directory, name) for name in TOKENIZER_FILES[kind]]
    try:
        if kind == "marian":
            return MarianTokenizer(*paths)
        return Tokenizer.load(paths[0])
    except (RuntimeError, OSError, ValueError, KeyError) as error:
        raise CheckpointError(f"{paths[0]}: not a {kind} tokenizer ({error})") from error


def load_model(directory: Path) -> tuple[Transformer, CheckpointTokenizer]:
    """Load the model in eval mode and its tokenizer, checking weights against the config."""
    saved = load_config(directory)
    config, kind = saved.model, saved.tokenizer
    tokenizer = load_tokenizer(directory, kind)
    if len(tokenizer) != config.vocab_size:
        raise CheckpointError(
            f"{directory / TOKENIZER_FILES[kind][-1]}: {len(tokenizer)} tokens, but the config"
            f" says vocab_size={config.vocab_size}"
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
        # On the CPU: a GPU run's state loads on any machine, and every rank does not land
        # its copy on GPU 0; the optimizer moves it to its parameters' device.
        state: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for a bad file
        raise CheckpointError(f"{path}: corrupt trainer state ({error})") from error
    return state
