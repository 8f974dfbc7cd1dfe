"""Import a Hugging Face model directory as a checkpoint that `python -m export` bundles.

    python -m model.import_hf DIR --out checkpoints/NAME [--source-language en --target-language de]

DIR is what `save_pretrained` writes (for Marian / OPUS-MT: config.json, model.safetensors or
pytorch_model.bin, vocab.json, source.spm, target.spm, tokenizer_config.json,
generation_config.json). Never touches the network. The weights are loaded into our Transformer
and checked name by name and shape by shape; anything this service cannot reproduce exactly is
refused, exit status 2, with one line naming the file and the field.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from model.checkpoint import load_model, save_imported
from model.cli import run_cli
from model.importers import UnsupportedModelError, load_directory
from model.transformer import Transformer


def _check_weights(imported_weights: dict[str, object], model: Transformer, source: Path) -> None:
    expected = set(model.state_dict())
    missing = sorted(expected - set(imported_weights))
    if missing:
        raise UnsupportedModelError(f"{source}: weights missing for {missing[:3]}")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m model.import_hf", description=__doc__)
    parser.add_argument("directory", type=Path, help="a save_pretrained directory")
    parser.add_argument("--out", type=Path, required=True, help="checkpoint directory to write")
    parser.add_argument("--source-language", help="when neither the files nor the name say")
    parser.add_argument("--target-language", help="when neither the files nor the name say")
    args = parser.parse_args(argv)
    given = {
        key: value
        for key, value in (("source", args.source_language), ("target", args.target_language))
        if value
    }
    imported = load_directory(args.directory, given)
    model = Transformer(imported.config)
    _check_weights(dict(imported.weights), model, args.directory)
    try:
        model.load_state_dict(imported.weights, strict=True)
    except RuntimeError as error:  # shapes that do not match the config
        raise UnsupportedModelError(f"{args.directory}: {error}") from error
    save_imported(args.out, imported)
    load_model(args.out)  # what export will read, checked now
    config = imported.config
    print(
        f"imported {args.directory} ({imported.origin['model_type']}: d_model {config.d_model},"
        f" {config.n_encoder_layers}+{config.n_decoder_layers} layers, vocab {config.vocab_size},"
        f" {imported.source_language} -> {', '.join(imported.languages)}) into {args.out}"
    )


if __name__ == "__main__":
    run_cli(main, extra_errors=(UnsupportedModelError,))
