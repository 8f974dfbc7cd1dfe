"""Command-line plumbing shared by `model.train` and `model.evaluate`: corpus options and errors."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from model.builtin_corpus import DEFAULT_SEED, DEFAULT_SIZE, builtin_corpus, check_set
from model.checkpoint import CheckpointError
from model.corpus import Corpus, CorpusError, Pair, read_pairs, read_tsv, split_corpus
from model.shards import is_prepared, read_meta
from model.tokenizer import UnknownLanguageError

# Errors whose message is the whole story: printed on one line, exit status 2, no traceback.
USER_ERRORS: tuple[type[Exception], ...] = (CorpusError, CheckpointError, UnknownLanguageError)


def add_corpus_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("corpus")
    group.add_argument(
        "--corpus",
        default="builtin",
        help="'builtin', a TSV file (source<TAB>target or lang<TAB>source<TAB>target),"
        " the source file of two line-aligned files (see --target-file), or a directory"
        " written by model.prepare",
    )
    group.add_argument("--target-file", type=Path, help="target side of a line-aligned corpus")
    group.add_argument("--target-lang", help="target language of a 2-column or line-aligned corpus")
    group.add_argument(
        "--corpus-size", type=int, default=DEFAULT_SIZE, help="pairs in the built-in corpus"
    )
    group.add_argument(
        "--corpus-seed", type=int, default=DEFAULT_SEED, help="seed of the built-in corpus"
    )


def corpus_from_args(args: argparse.Namespace) -> Corpus:
    if args.corpus == "builtin":
        return builtin_corpus(args.corpus_size, args.corpus_seed)
    path = Path(args.corpus)
    if is_prepared(path):
        # The training split stays on disk (model.shards); the held-out splits are small text.
        read_meta(path)
        valid, test = (_read_split(path / f"{split}.tsv") for split in ("valid", "test"))
        return Corpus(train=[], valid=valid, test=test)
    corpus = split_corpus(read_pairs(path, args.target_file, args.target_lang))
    if not corpus.train:
        raise CorpusError(f"{path}: no sentence pair landed in the train split")
    return corpus


def _read_split(path: Path) -> list[Pair]:
    if not path.is_file():
        raise CorpusError(f"{path}: missing from the prepared corpus; prepare it again")
    return read_tsv(path) if path.stat().st_size else []


def corpus_description(args: argparse.Namespace) -> dict[str, Any]:
    """What rebuilds the corpus: recorded in metrics.json and the bundle's manifest."""
    if args.corpus == "builtin":
        return {"name": "builtin", "size": args.corpus_size, "seed": args.corpus_seed}
    if is_prepared(Path(args.corpus)):
        meta = read_meta(Path(args.corpus))
        # The tokenizer's digest: a directory prepared again in place is another corpus.
        return {
            "name": str(args.corpus),
            "prepared_from": meta["source"],
            "tokenizer_sha256": meta.get("tokenizer_sha256", ""),
        }
    return {"name": str(args.corpus), "target_file": str(args.target_file or "")}


def check_pairs_of(args: argparse.Namespace, corpus: Corpus) -> list[Pair]:
    """The built-in corpus's check set (numbers and dates of its own seed); none for a file."""
    return check_set(corpus.train) if args.corpus == "builtin" else []


def run_cli(main: Callable[[], None], extra_errors: tuple[type[Exception], ...] = ()) -> None:
    """Run `main`, turning the errors a user can fix into one line on stderr and exit status 2."""
    errors: tuple[type[Exception], ...] = (*USER_ERRORS, *extra_errors)
    try:
        main()
    except errors as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)
