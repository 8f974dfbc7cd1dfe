"""Train a translation model on a parallel corpus, then evaluate it on the test split.

    python -m model.train --corpus builtin|PATH|PREPARED_DIR --preset small --out DIR [--resume]
    torchrun --nproc_per_node N -m model.train ... [--device cuda --precision bf16]

DIR receives the checkpoint (config, weights, tokenizer, trainer state) and metrics.json. The preset
fixes the architecture and the number of steps (model.training.TRAIN_PRESETS); any schedule option
(--max-steps, --max-tokens, ...) overrides it. The seed is fixed, so the same command on the same
machine gives the same weights. Under torchrun the ranks share each step's --max-tokens budget and
rank 0 writes; a run resumes (--resume) where it stopped, on any number of ranks. A corpus larger
than memory is tokenized first by `python -m model.prepare` (model/shards.py).

The paper's base recipe (section 5) on a user corpus, 8 GPUs:

    python -m model.prepare --corpus wmt14.en-de.tsv --preset base --vocab-size 37000 --out data
    torchrun --nproc_per_node 8 -m model.train --corpus data --preset base --out ckpt \\
        --precision bf16 --save-every 1000 --keep-checkpoints 5
    python -m model.average --checkpoint ckpt --last 5 --out ckpt-avg
    python -m model.evaluate --checkpoint ckpt-avg --test-file newstest2014.tsv \\
        --beam-size 4 --length-penalty 0.6
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import os
import re
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

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
from model.config import PIECE_LENGTHS, PRESETS, ModelConfig
from model.corpus import Corpus, CorpusError
from model.data import Example, tokenize
from model.distributed import DEVICES, DeviceError, RankLostError, World, join
from model.evaluate import evaluate, format_metrics
from model.shards import TOKENIZER_FILE, TokenizedPairs, is_prepared, read_meta
from model.tokenizer import Tokenizer
from model.training import (
    RESUMABLE_CHANGES,
    TRAIN_PRESETS,
    TrainConfig,
    TrainConfigError,
    Trainer,
)
from model.transformer import Transformer

# How gloo and NCCL report a rank that went away, as the others see it in their next collective.
PEER_FAILURE = re.compile(
    r"closed by peer|connection reset|broken pipe|communicator was aborted|remote process exited",
    re.IGNORECASE,
)
VALID_SAMPLE = 400  # validation sentences decoded at every validation


def model_config(args: argparse.Namespace, vocab_size: int) -> ModelConfig:
    """The preset's architecture with the vocabulary and the command's overrides."""
    overrides: dict[str, Any] = {"vocab_size": vocab_size}
    if args.dropout is not None:
        overrides["dropout"] = args.dropout
    try:
        return ModelConfig.from_name(args.preset, **overrides)
    except ValueError as error:
        raise TrainConfigError(str(error)) from None


def train_tokenizer(corpus: Corpus, size: int, max_piece_length: int, world: World) -> Tokenizer:
    """Rank 0 learns the shared vocabulary and hands it to the other ranks."""
    proto = None
    if world.is_main:
        texts = itertools.chain.from_iterable((p.source, p.target) for p in corpus.train)
        proto = Tokenizer.train(texts, corpus.languages, size, max_piece_length).model_proto
    return Tokenizer(world.broadcast(proto))


def check_resumable(out: Path, state: dict[str, Any], config: TrainConfig, corpus: Any) -> None:
    """A resume continues the same run: same batches, same steps. Say what differs if not."""
    saved = state.get("train_config", {})
    wanted = dataclasses.asdict(config)
    differ = {
        k: (saved[k], wanted[k])
        for k in sorted(saved)
        if k in wanted and k not in RESUMABLE_CHANGES and saved[k] != wanted[k]
    }
    if differ:
        shown = ", ".join(
            f"{_flag(k)} {a} in the checkpoint, {b} now" for k, (a, b) in differ.items()
        )
        allowed = ", ".join(sorted(_flag(k) for k in RESUMABLE_CHANGES))
        raise TrainConfigError(
            f"{out}: cannot resume with different settings ({shown}); only {allowed} may change"
        )
    if state.get("corpus") and state["corpus"] != corpus:
        raise TrainConfigError(
            f"{out}: the checkpoint was trained on {state['corpus']}, not {corpus}; resume it on"
            " the same corpus"
        )


def _flag(name: str) -> str:
    return f"--{name.replace('_', '-')}"


def resume(
    out: Path, wanted: ModelConfig, preset: str
) -> tuple[Transformer, Tokenizer, dict[str, Any]]:
    saved = load_config(out).model
    wanted = dataclasses.replace(wanted, vocab_size=saved.vocab_size)
    if saved != wanted:
        diff = {
            k: (v, getattr(wanted, k))
            for k, v in saved.to_dict().items()
            if getattr(wanted, k) != v
        }
        raise CheckpointError(
            f"{out}: the checkpoint does not match preset {preset!r} with this command's options"
            f" (checkpoint vs now: {diff})"
        )
    model, tokenizer = load_model(out)
    if not isinstance(tokenizer, Tokenizer):
        raise CheckpointError(f"{out}: an imported checkpoint cannot be resumed by model.train")
    return model, tokenizer, load_trainer_state(out)


def training_data(args: argparse.Namespace) -> tuple[TokenizedPairs | None, Tokenizer | None]:
    """A prepared corpus's memory-mapped pairs and tokenizer; (None, None) for one in memory."""
    path = Path(args.corpus)
    if not is_prepared(path):
        return None, None
    meta = read_meta(path)
    requested = meta.get("vocab_size_requested", meta["vocab_size"])
    if args.vocab_size is not None and args.vocab_size not in (requested, meta["vocab_size"]):
        raise TrainConfigError(
            f"{path}: prepared with a vocabulary of {requested}, not --vocab-size"
            f" {args.vocab_size}; prepare it again to change it"
        )
    if meta["max_positions"] > PRESETS[args.preset].max_positions:
        raise TrainConfigError(
            f"{path}: prepared for pairs of up to {meta['max_positions']} tokens, longer than"
            f" preset {args.preset!r} allows ({PRESETS[args.preset].max_positions})"
        )
    return TokenizedPairs.open(path), Tokenizer.load(path / TOKENIZER_FILE)


def validation_examples(
    corpus: Corpus, prepared: TokenizedPairs | None, tokenizer: Tokenizer, max_len: int
) -> list[Example]:
    """The valid split's first sentences, or the train split's when it is empty."""
    if corpus.valid:
        return tokenize(corpus.valid[:VALID_SAMPLE], tokenizer, max_len)
    if prepared is not None:
        return [Example(*prepared.pair(i)) for i in range(min(VALID_SAMPLE, len(prepared)))]
    return tokenize(corpus.train[:VALID_SAMPLE], tokenizer, max_len)


def parse_args(argv: Sequence[str] | None) -> tuple[argparse.Namespace, TrainConfig]:
    parser = argparse.ArgumentParser(
        prog="python -m model.train",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--preset", default="small", choices=sorted(PRESETS))
    parser.add_argument("--out", type=Path, required=True, help="checkpoint directory")
    parser.add_argument(
        "--resume", action="store_true", help="continue from the checkpoint in --out"
    )
    parser.add_argument("--device", default="auto", choices=DEVICES)
    parser.add_argument(
        "--threads", type=int, help="CPU threads per process (default: 2, or the cores / ranks)"
    )
    parser.add_argument("--vocab-size", type=int, help="shared vocabulary size (default: preset)")
    parser.add_argument(
        "--max-piece-length",
        type=int,
        help="longest vocabulary piece in characters (default: preset; small 8, others 16)",
    )
    parser.add_argument("--dropout", type=float, help="dropout (default: preset; base 0.1)")
    parser.add_argument(
        "--evaluate",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="score the test split at the end",
    )
    schedule = parser.add_argument_group("schedule (defaults: the preset's)")
    for field in dataclasses.fields(TrainConfig):
        schedule.add_argument(
            f"--{field.name.replace('_', '-')}",
            type=type(getattr(TrainConfig(), field.name)),
            help=f"default {getattr(TRAIN_PRESETS['small'], field.name)} for the small preset",
        )
    add_corpus_arguments(parser)
    args = parser.parse_args(argv)
    if args.threads is not None and args.threads < 1:
        raise TrainConfigError(f"--threads must be >= 1, got {args.threads}")
    pieces = args.max_piece_length
    args.max_piece_length = PIECE_LENGTHS[args.preset] if pieces is None else pieces
    if args.max_piece_length < 1:
        raise TrainConfigError(f"--max-piece-length must be >= 1, got {args.max_piece_length}")
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)}
    config = dataclasses.replace(
        TRAIN_PRESETS[args.preset], **{k: v for k, v in given.items() if v is not None}
    )
    return args, config


def start_or_resume(
    args: argparse.Namespace,
    train_config: TrainConfig,
    world: World,
    corpus: Corpus,
    prepared_tokenizer: Tokenizer | None,
    description: dict[str, Any],
) -> tuple[Transformer, Tokenizer, dict[str, Any] | None]:
    """A fresh model (and vocabulary), or the checkpoint in --out with its trainer state."""
    torch.manual_seed(train_config.seed)  # the same initial weights on every rank
    wanted = model_config(args, args.vocab_size or PRESETS[args.preset].vocab_size)
    state = None
    # Rank 0 decides, so that all ranks resume or none does; --out is on storage all ranks see.
    if world.broadcast(args.resume and (args.out / TRAINER_STATE_FILE).is_file()):
        if not (args.out / TRAINER_STATE_FILE).is_file():
            raise CheckpointError(
                f"rank {world.rank}: {args.out / TRAINER_STATE_FILE} is missing here but rank 0"
                " has it; --out must be on storage that every rank sees"
            )
        model, tokenizer, state = resume(args.out, wanted, args.preset)
        check_resumable(args.out, state, train_config, description)
    else:
        tokenizer = prepared_tokenizer or train_tokenizer(
            corpus, wanted.vocab_size, args.max_piece_length, world
        )
        model = Transformer(dataclasses.replace(wanted, vocab_size=len(tokenizer)))
    return model, tokenizer, state


def run(args: argparse.Namespace, train_config: TrainConfig, world: World) -> None:
    say = print if world.is_main else (lambda *_: None)
    shared_cores = (os.cpu_count() or 2) // world.local_world_size
    torch.set_num_threads(args.threads or (2 if world.world_size == 1 else max(1, shared_cores)))
    corpus = corpus_from_args(args)
    description = corpus_description(args)
    prepared, prepared_tokenizer = training_data(args)
    n_train = len(prepared) if prepared is not None else len(corpus.train)
    if n_train == 0:
        raise CorpusError(f"{args.corpus}: no training pair (the train split is empty)")
    languages = prepared_tokenizer.languages if prepared_tokenizer else corpus.languages
    say(
        f"corpus: {n_train} train, {len(corpus.valid)} valid, {len(corpus.test)} test pairs;"
        f" languages {', '.join(languages)}"
    )
    model, tokenizer, state = start_or_resume(
        args, train_config, world, corpus, prepared_tokenizer, description
    )
    if world.rank > 0:
        torch.manual_seed(train_config.seed + world.rank)  # dropout differs between ranks
    n_params = sum(p.numel() for p in model.parameters())
    say(
        f"model: preset {args.preset}, {n_params / 1e6:.2f} M parameters,"
        f" vocabulary {len(tokenizer)}; {train_config.max_steps} steps"
        f" of {train_config.max_tokens} tokens, seed {train_config.seed};"
        f" {world.world_size} process(es) on {world.device}, {train_config.precision}"
    )
    if world.world_size > 1:
        rank = f"rank {world.rank}/{world.world_size}"
        print(f"{rank}: pid {os.getpid()}, {world.device}", flush=True)

    max_len = model.config.max_positions
    train = prepared if prepared is not None else tokenize(corpus.train, tokenizer, max_len)
    valid = validation_examples(corpus, prepared, tokenizer, max_len)
    trainer = Trainer(model, tokenizer, train_config, args.out, world, description)
    if state is not None:
        trainer.load_state(state)
        saved_by = state.get("world_size", 1)
        say(f"resuming at step {trainer.state.step} (saved by {saved_by} process(es))")
    stop_on_sigterm(trainer, args.out)
    try:
        trainer.fit(train, valid)
    except (dist.DistError, RuntimeError) as error:
        if not (world.distributed and PEER_FAILURE.search(str(error))):
            raise
        raise RankLostError(
            f"rank {world.rank}: another rank stopped, so this one cannot go on"
            f" ({str(error).splitlines()[0][:200]}); {_resume_hint(trainer, args.out)}"
        ) from None
    world.close()
    if not world.is_main:
        return
    if args.evaluate and corpus.test:
        metrics = evaluate(
            args.out, corpus.test, check_pairs_of(args, corpus), description, device=world.device
        )
        print(format_metrics(metrics))
    elif not corpus.test:
        print("the test split is empty: no evaluation")


def _resume_hint(trainer: Trainer, out: Path) -> str:
    if trainer.saved_step is None:
        return f"no checkpoint was written to {out} yet"
    return f"the checkpoint in {out} is at step {trainer.saved_step}: continue it with --resume"


def stop_on_sigterm(trainer: Trainer, out: Path) -> None:
    """On SIGTERM (torchrun stops every rank when one fails; Kubernetes stops a pod), say where
    the run stands and exit: at once, or after the checkpoint being written, so that its files
    (weights, optimizer, data position) are all of one step."""

    def stop(signum: int, _frame: object) -> None:
        if trainer.saving:  # rank 0 is writing a checkpoint: stop right after it
            trainer.after_save = lambda: stop(signum, None)
            return
        print(
            f"\nrank {trainer.world.rank}: stopped by signal {signal.Signals(signum).name} at step"
            f" {trainer.state.step}; {_resume_hint(trainer, out)}",
            file=sys.stderr,
            flush=True,
        )
        os._exit(128 + signum)

    signal.signal(signal.SIGTERM, stop)


def main(argv: Sequence[str] | None = None) -> None:
    args, train_config = parse_args(argv)
    run(args, train_config, join(args.device))


if __name__ == "__main__":
    run_cli(main, (TrainConfigError, DeviceError, RankLostError, CorpusError))
