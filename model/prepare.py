"""Tokenize a corpus once, streaming, into memory-mapped shards that `model.train` reads.

    python -m model.prepare --corpus PATH [--target-file F --target-lang L] --out DIR
                            [--preset base] [--vocab-size 37000] [--tokenizer-sample 200000]
    python -m model.train --corpus DIR --preset base ...   (or under torchrun)

For corpora larger than memory (the paper's WMT14 English-German is 4.5 M pairs). The file is read
twice, one line at a time: the first pass checks every line, finds duplicates by a 64-bit hash of
(language, source), and draws a seeded sample on which the shared sentencepiece vocabulary is
trained; the second pass tokenizes each pair into its split. The split rule is the one of
model.corpus (a hash of the source sentence), so a source is never in two splits. Resident memory
is the vocabulary sample and sentencepiece's training on it (about 1 GB for 200,000 pairs), plus
a few tens of bytes per pair for the duplicate search. DIR is built beside --out and renamed into
place when complete; its layout is in model/shards.py.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import random
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from model.cli import add_corpus_arguments, corpus_description, run_cli
from model.config import PIECE_LENGTHS, PRESETS, ModelConfig
from model.corpus import CorpusError, Pair, iter_pairs, split_of
from model.shards import TOKENIZER_FILE, ShardWriter, TsvWriter, is_prepared, write_meta
from model.tokenizer import MAX_PIECE_LENGTH, Tokenizer

PairStream = Callable[[], Iterator[Pair]]


def pair_stream(args: argparse.Namespace) -> PairStream:
    """A function that reads the corpus file(s) from the start, one pair at a time."""
    path = Path(args.corpus)
    if args.corpus == "builtin" or is_prepared(path):
        raise CorpusError(
            f"{args.corpus}: model.prepare reads a corpus file; the built-in corpus and prepared"
            " directories go to model.train directly"
        )
    iter_pairs(path, args.target_file, args.target_lang)  # the options are checked now
    return lambda: iter_pairs(path, args.target_file, args.target_lang)


def pair_hash(pair: Pair) -> int:
    digest = hashlib.blake2b(f"{pair.lang}\0{pair.source}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def first_pass(
    stream: PairStream, sample_size: int, seed: int
) -> tuple[np.ndarray, list[Pair], set[str]]:
    """Check every line; return which pairs are first of their (lang, source), a reservoir
    sample of training pairs, and the target languages of the training split."""
    hashes = np.zeros(1 << 16, dtype=np.uint64)
    rng = random.Random(seed)
    sample: list[Pair] = []
    languages: set[str] = set()
    seen_train = 0
    count = 0
    for count, pair in enumerate(stream(), start=1):
        if count > len(hashes):
            hashes = np.resize(hashes, 2 * len(hashes))
        hashes[count - 1] = pair_hash(pair)
        if split_of(pair.source) != "train":
            continue
        languages.add(pair.lang)
        seen_train += 1
        if len(sample) < sample_size:
            sample.append(pair)
        elif (slot := rng.randrange(seen_train)) < sample_size:
            sample[slot] = pair
    hashes = hashes[:count]
    _, first = np.unique(hashes, return_index=True)
    keep = np.zeros(count, dtype=bool)
    keep[first] = True
    return keep, sample, languages


def _same_lines(pairs: Iterator[Pair], keep: np.ndarray, name: str) -> Iterator[tuple[Pair, bool]]:
    """The second pass with the first pass's flags; the file must not change in between."""
    count = 0
    for count, pair in enumerate(pairs, start=1):
        if count > len(keep):
            break
        yield pair, bool(keep[count - 1])
    if count != len(keep):
        raise CorpusError(f"{name}: the file changed while it was being prepared; prepare again")


def prepare(
    stream: PairStream,
    out: Path,
    config: ModelConfig,
    tokenizer_sample: int,
    seed: int,
    source: dict[str, Any],
    max_piece_length: int = MAX_PIECE_LENGTH,
) -> dict[str, Any]:
    """Write the prepared directory `out`; return its metadata."""
    started = time.perf_counter()
    keep, sample, languages = first_pass(stream, tokenizer_sample, seed)
    if not len(keep):
        raise CorpusError(f"{source['name']}: the corpus is empty")
    if not languages:
        raise CorpusError(f"{source['name']}: no sentence pair landed in the train split")
    texts = itertools.chain.from_iterable((p.source, p.target) for p in sample)
    tokenizer = Tokenizer.train(texts, sorted(languages), config.vocab_size, max_piece_length)
    del sample
    out.mkdir(parents=True, exist_ok=True)
    tokenizer.save(out / TOKENIZER_FILE)
    writer = ShardWriter(out, len(tokenizer))
    held_out = {split: TsvWriter(out / f"{split}.tsv") for split in ("valid", "test")}
    dropped = 0
    try:
        for pair, first in _same_lines(stream(), keep, source["name"]):
            if not first:
                continue
            split = split_of(pair.source)
            if split != "train":
                held_out[split].add(pair)
                continue
            src = tokenizer.encode_source(pair.source, pair.lang)
            tgt = tokenizer.encode_target(pair.target)
            if len(src) > config.max_positions or len(tgt) + 1 > config.max_positions:
                dropped += 1
                continue
            writer.add(src, tgt)
    finally:
        writer.close()
        for tsv in held_out.values():
            tsv.close()
    if writer.count == 0:
        raise CorpusError(
            f"{source['name']}: no training pair fits in {config.max_positions} tokens"
        )
    meta = {
        "source": source,
        "dtype": writer.dtype.name,
        "vocab_size": len(tokenizer),
        "vocab_size_requested": config.vocab_size,
        "tokenizer_sha256": hashlib.sha256(tokenizer.model_proto).hexdigest(),
        "max_positions": config.max_positions,
        "languages": sorted(languages),
        "pairs": len(keep),
        "duplicates": int(len(keep) - keep.sum()),
        "dropped_too_long": dropped,
        "splits": {
            "train": writer.count,
            "valid": held_out["valid"].count,
            "test": held_out["test"].count,
        },
        "tokenizer_sample": tokenizer_sample,
        "max_piece_length": max_piece_length,
        "seed": seed,
        "seconds": round(time.perf_counter() - started, 1),
    }
    write_meta(out, meta)
    return meta


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m model.prepare", description=__doc__)
    parser.add_argument("--out", type=Path, required=True, help="the prepared directory")
    parser.add_argument(
        "--preset",
        default="base",
        choices=sorted(PRESETS),
        help="gives the vocabulary size and the longest pair kept (max_positions)",
    )
    parser.add_argument("--vocab-size", type=int, help="shared vocabulary size (default: preset)")
    parser.add_argument(
        "--max-piece-length",
        type=int,
        help="longest vocabulary piece in characters (default: preset; small 8, others 16)",
    )
    parser.add_argument(
        "--tokenizer-sample",
        type=int,
        default=200_000,
        help="training pairs the vocabulary is learnt from (a seeded reservoir sample)",
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--force", action="store_true", help="replace an existing --out")
    add_corpus_arguments(parser)
    args = parser.parse_args(argv)
    overrides = {} if args.vocab_size is None else {"vocab_size": args.vocab_size}
    try:
        config = ModelConfig.from_name(args.preset, **overrides)
    except ValueError as error:
        raise CorpusError(f"--vocab-size: {error}") from None
    if args.tokenizer_sample < 1:
        raise CorpusError(f"--tokenizer-sample must be >= 1, got {args.tokenizer_sample}")
    pieces = args.max_piece_length
    args.max_piece_length = PIECE_LENGTHS[args.preset] if pieces is None else pieces
    if args.max_piece_length < 1:
        raise CorpusError(f"--max-piece-length must be >= 1, got {args.max_piece_length}")
    stream = pair_stream(args)
    out = args.out.resolve()
    inputs = [Path(args.corpus).resolve()]
    if args.target_file is not None:
        inputs.append(args.target_file.resolve())
    if any(out == path or out in path.parents for path in inputs):
        raise CorpusError(f"--out {args.out} holds the corpus itself; prepare it elsewhere")
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not args.force:
        raise CorpusError(f"{args.out}: exists and is not empty; pass --force to replace it")
    staging = out.with_name(f".{out.name}.preparing")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        meta = prepare(
            stream,
            staging,
            config,
            args.tokenizer_sample,
            args.seed,
            corpus_description(args),
            args.max_piece_length,
        )
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if out.is_dir():
        shutil.rmtree(out)
    elif out.exists():
        out.unlink()
    staging.rename(out)
    splits = meta["splits"]
    print(
        f"prepared {args.out}: {splits['train']:,} train, {splits['valid']:,} valid,"
        f" {splits['test']:,} test pairs; {meta['duplicates']:,} duplicates and"
        f" {meta['dropped_too_long']:,} over {config.max_positions} tokens left out;"
        f" vocabulary {meta['vocab_size']:,}; {meta['seconds']} s"
    )


if __name__ == "__main__":
    run_cli(main)
