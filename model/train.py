"""Train a translation model on a parallel corpus, then evaluate it on the test split.

    python -m model.train --corpus builtin|PATH --preset small --out DIR [--resume]

DIR receives the checkpoint (config, weights, tokenizer, trainer state) and metrics.json. The preset
fixes the architecture and the number of steps (model.training.TRAIN_PRESETS); any schedule option
(--max-steps, --max-tokens, ...) overrides it. The seed is fixed, so the same command on the same
machine gives the same weights.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
from collections.abc import Sequence
from pathlib import Path

import torch

from model.checkpoint import (
    TRAINER_STATE_FILE,
    CheckpointError,
    load_config,
    load_model,
    load_trainer_state,
)
from model.cli import (
    add_corpus_arguments,
    check_pairs_of,
    corpus_description,
    corpus_from_args,
    run_cli,
)
from model.config import PRESETS, ModelConfig
from model.corpus import Corpus
from model.data import tokenize
from model.evaluate import evaluate, format_metrics
from model.tokenizer import Tokenizer
from model.training import TRAIN_PRESETS, TrainConfig, Trainer
from model.transformer import Transformer

VALID_SAMPLE = 400  # validation sentences decoded at every validation


def build_fresh(corpus: Corpus, preset: str) -> tuple[Transformer, Tokenizer]:
    config = ModelConfig.from_name(preset)
    texts = itertools.chain.from_iterable((p.source, p.target) for p in corpus.train)
    tokenizer = Tokenizer.train(texts, corpus.languages, config.vocab_size)
    config = dataclasses.replace(config, vocab_size=len(tokenizer))
    return Transformer(config), tokenizer


def resume(out: Path, preset: str) -> tuple[Transformer, Tokenizer, dict[str, object]]:
    saved = load_config(out).model
    wanted = ModelConfig.from_name(preset, vocab_size=saved.vocab_size)
    if saved != wanted:
        diff = {
            k: (v, getattr(wanted, k))
            for k, v in saved.to_dict().items()
            if getattr(wanted, k) != v
        }
        raise CheckpointError(
            f"{out}: the checkpoint does not match preset {preset!r} (checkpoint vs preset: {diff})"
        )
    model, tokenizer = load_model(out)
    if not isinstance(tokenizer, Tokenizer):
        raise CheckpointError(f"{out}: an imported checkpoint cannot be resumed by model.train")
    return model, tokenizer, load_trainer_state(out)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m model.train", description=__doc__)
    parser.add_argument("--preset", default="small", choices=sorted(PRESETS))
    parser.add_argument("--out", type=Path, required=True, help="checkpoint directory")
    parser.add_argument(
        "--resume", action="store_true", help="continue from the checkpoint in --out"
    )
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for torch")
    schedule = parser.add_argument_group("schedule (defaults: the preset's)")
    for field in dataclasses.fields(TrainConfig):
        schedule.add_argument(
            f"--{field.name.replace('_', '-')}",
            type=type(getattr(TrainConfig(), field.name)),
            help=f"default {getattr(TRAIN_PRESETS['small'], field.name)} for the small preset",
        )
    add_corpus_arguments(parser)
    args = parser.parse_args(argv)
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)}
    train_config = dataclasses.replace(
        TRAIN_PRESETS[args.preset], **{k: v for k, v in given.items() if v is not None}
    )
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(train_config.seed)

    corpus = corpus_from_args(args)
    print(
        f"corpus: {len(corpus.train)} train, {len(corpus.valid)} valid,"
        f" {len(corpus.test)} test pairs;"
        f" languages {', '.join(corpus.languages)}"
    )
    if args.resume and (args.out / TRAINER_STATE_FILE).is_file():
        model, tokenizer, state = resume(args.out, args.preset)
    else:
        model, tokenizer = build_fresh(corpus, args.preset)
        state = None
    n_params = sum(p.numel() for p in model.parameters())
    print(
        f"model: preset {args.preset}, {n_params / 1e6:.2f} M parameters,"
        f" vocabulary {len(tokenizer)}; {train_config.max_steps} steps"
        f" of {train_config.max_tokens} tokens, seed {train_config.seed}"
    )

    max_len = model.config.max_positions
    train = tokenize(corpus.train, tokenizer, max_len)
    valid = tokenize(corpus.valid[:VALID_SAMPLE] or corpus.train[:VALID_SAMPLE], tokenizer, max_len)
    trainer = Trainer(model, tokenizer, train_config, args.out)
    if state is not None:
        trainer.load_state(state)
        print(f"resuming at step {trainer.state.step}")
    trainer.fit(train, valid)

    if corpus.test:
        metrics = evaluate(
            args.out, corpus.test, check_pairs_of(args, corpus), corpus_description(args)
        )
        print(format_metrics(metrics))
    else:
        print("the test split is empty: no evaluation")


if __name__ == "__main__":
    run_cli(main)
