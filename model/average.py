"""Checkpoint averaging (section 6.1: the base model averages its last 5 checkpoints).

    python -m model.train ... --save-every 1000 --keep-checkpoints 5 --out ckpt
    python -m model.average --checkpoint ckpt --last 5 --out ckpt-avg

The weights kept in ckpt/steps/ by --keep-checkpoints are averaged element-wise (in float64, then
cast back) into a new checkpoint directory with the config and tokenizer of ckpt; it loads,
evaluates and exports like any other.
"""

from __future__ import annotations

import argparse
import shutil
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from model.checkpoint import (
    CONFIG_FILE,
    STEPS_DIR,
    CheckpointError,
    load_config,
    load_model,
    save_weights,
    step_weights,
)
from model.cli import run_cli
from service.bundle import TOKENIZER_FILES


def average_weights(paths: Sequence[Path]) -> dict[str, torch.Tensor]:
    """The element-wise mean of the weight files at `paths`, which must hold the same tensors."""
    total: dict[str, torch.Tensor] = {}
    dtypes: dict[str, torch.dtype] = {}
    for path in paths:
        try:
            weights = load_file(str(path))
        except (SafetensorError, OSError) as error:
            raise CheckpointError(f"{path}: corrupt weights file ({error})") from error
        if total and (
            set(weights) != set(total) or any(weights[k].shape != total[k].shape for k in weights)
        ):
            raise CheckpointError(f"{path}: its tensors differ from those of {paths[0]}")
        for name, tensor in weights.items():
            dtypes[name] = tensor.dtype
            total[name] = total.get(name, 0) + tensor.to(torch.float64)
    return {name: (tensor / len(paths)).to(dtypes[name]) for name, tensor in total.items()}


def average(checkpoint: Path, last: int, out: Path) -> list[Path]:
    """Average the last `last` kept weights of `checkpoint` into the checkpoint `out`."""
    config = load_config(checkpoint)
    kept = step_weights(checkpoint)
    if last < 1:
        raise CheckpointError(f"--last must be >= 1, got {last}")
    if len(kept) < last:
        raise CheckpointError(
            f"{checkpoint / STEPS_DIR}: {len(kept)} kept checkpoint(s), fewer than --last {last};"
            " train with --keep-checkpoints N --save-every STEPS"
        )
    chosen = kept[-last:]
    weights = average_weights(chosen)
    out.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES[config.tokenizer]:
        shutil.copyfile(checkpoint / name, out / name)
    save_weights(out, weights)
    shutil.copyfile(checkpoint / CONFIG_FILE, out / CONFIG_FILE)  # last: the checkpoint is whole
    load_model(out)  # the averaged checkpoint loads against its config
    return chosen


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m model.average", description=__doc__)
    parser.add_argument(
        "--checkpoint", type=Path, required=True, help="trained with --keep-checkpoints"
    )
    parser.add_argument("--last", type=int, default=5, help="how many of the last saves")
    parser.add_argument("--out", type=Path, required=True, help="the averaged checkpoint")
    args = parser.parse_args(argv)
    if args.out.resolve() == args.checkpoint.resolve():
        raise CheckpointError(f"--out {args.out} is --checkpoint: write the average elsewhere")
    chosen = average(args.checkpoint, args.last, args.out)
    print(f"averaged {', '.join(p.stem for p in chosen)} into {args.out}")


if __name__ == "__main__":
    run_cli(main)
