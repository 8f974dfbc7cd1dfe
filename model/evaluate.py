"""Evaluation: greedy or beam search through the KV cache; exact match, chrF, BLEU (sacrebleu).

    python -m model.evaluate --checkpoint DIR [--corpus builtin|PATH ...]
    python -m model.evaluate --checkpoint DIR --test-file newstest2014.tsv --beam-size 4 \
        --length-penalty 0.6     (the paper's setting; sacrebleu's signature is printed)

Writes DIR/metrics.json and prints a table per target language and, for the built-in corpus, per
kind of phrase (numbers, dates, names, units, ...) and on its check set (numbers and dates drawn
with their own seed, none of them in the training split).
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from sacrebleu.metrics.bleu import BLEU as BLEU_METRIC
from sacrebleu.metrics.chrf import CHRF as CHRF_METRIC

from model.checkpoint import METRICS_FILE, CheckpointTokenizer, load_model
from model.cli import (
    add_corpus_arguments,
    check_pairs_of,
    corpus_description,
    corpus_from_args,
    run_cli,
)
from model.corpus import CorpusError, Pair, read_pairs
from model.data import pad
from model.decoding import beam_decode, greedy_decode
from model.distributed import DEVICES, DeviceError, resolve_device
from model.transformer import Transformer

# sacrebleu's defaults: BLEU with the 13a tokenizer, exponential smoothing, mixed case; chrF2.
BLEU = BLEU_METRIC()
CHRF = CHRF_METRIC()


@dataclass(frozen=True)
class Search:
    """How `translate` decodes: greedy (beam_size 1), or beam search with a length penalty."""

    beam_size: int = 1
    length_penalty: float = 0.6  # the paper's alpha (section 6.1), with beam_size 4

    def __str__(self) -> str:
        if self.beam_size == 1:
            return "greedy"
        return f"beam {self.beam_size}, length penalty {self.length_penalty}"


GREEDY = Search()


def translate(
    model: Transformer,
    tokenizer: CheckpointTokenizer,
    pairs: Sequence[Pair],
    batch_size: int = 256,
    search: Search = GREEDY,
    device: torch.device | None = None,
) -> list[str]:
    """Translations of `pairs`' sources into their target languages, in order."""
    device = device or torch.device("cpu")
    model = model.to(device)
    order = sorted(range(len(pairs)), key=lambda i: len(pairs[i].source))
    outputs: list[str] = [""] * len(pairs)
    batch_size = max(1, batch_size // search.beam_size)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        sources = [tokenizer.encode_source(pairs[i].source, pairs[i].lang) for i in chunk]
        src_ids, src_mask = (t.to(device) for t in pad(sources))
        limit = min(model.config.max_positions, 2 * src_ids.shape[1] + 10)
        if search.beam_size == 1:
            decoded = greedy_decode(model, src_ids, src_mask, limit)
        else:
            decoded = beam_decode(
                model, src_ids, src_mask, limit, search.beam_size, search.length_penalty
            )
        for i, ids in zip(chunk, decoded, strict=True):
            outputs[i] = tokenizer.decode(ids)
    return outputs


def score(
    pairs: Sequence[Pair], hypotheses: Sequence[str], by: str = "lang"
) -> dict[str, dict[str, float]]:
    """Exact match, chrF and BLEU per value of `by` ("lang" or "kind") and over all pairs."""
    groups: dict[str, list[int]] = defaultdict(list)
    for i, pair in enumerate(pairs):
        groups[getattr(pair, by)].append(i)
        groups["all"].append(i)
    table = {}
    for group in sorted(groups, key=lambda g: (g == "all", g)):
        refs = [pairs[i].target for i in groups[group]]
        hyps = [hypotheses[i] for i in groups[group]]
        table[group] = {
            "sentences": len(refs),
            "exact_match": sum(h == r for h, r in zip(hyps, refs, strict=True)) / len(refs),
            "chrf": CHRF.corpus_score(hyps, [refs]).score,
            "bleu": BLEU.corpus_score(hyps, [refs]).score,
        }
    return table


def signatures() -> dict[str, str]:
    """sacrebleu's signatures of the scores, to quote beside them."""
    return {"bleu": str(BLEU.get_signature()), "chrf": str(CHRF.get_signature())}


def format_table(table: dict[str, dict[str, float]], title: str = "lang") -> str:
    width = max(len(title), *(len(group) for group in table)) + 2
    lines = [f"{title:<{width}}{'sentences':>10}{'exact':>9}{'chrF':>8}{'BLEU':>8}"]
    for group, row in table.items():
        lines.append(
            f"{group:<{width}}{row['sentences']:>10.0f}{row['exact_match']:>9.2%}"
            f"{row['chrf']:>8.2f}{row['bleu']:>8.2f}"
        )
    return "\n".join(lines)


def format_metrics(metrics: dict[str, Any]) -> str:
    """The tables of `evaluate`'s metrics: per language, per kind, and of the check set."""
    parts = [format_table(metrics["languages"])]
    if metrics.get("kinds"):
        parts.append(format_table(metrics["kinds"], "kind"))
    if metrics.get("check_set"):
        parts.append("check set (own seed, no source in the training split):")
        parts.append(format_table(metrics["check_set"]["languages"]))
        parts.append(format_table(metrics["check_set"]["kinds"], "kind"))
    return "\n\n".join(parts)


def _report(pairs: Sequence[Pair], hypotheses: Sequence[str]) -> dict[str, Any]:
    report: dict[str, Any] = {"languages": score(pairs, hypotheses)}
    if any(p.kind for p in pairs):
        report["kinds"] = score(pairs, hypotheses, by="kind")
    return report


def evaluate(
    checkpoint: Path,
    pairs: Sequence[Pair],
    check_pairs: Sequence[Pair] = (),
    corpus: dict[str, Any] | None = None,
    search: Search = GREEDY,
    device: torch.device | None = None,
    metrics_file: str = METRICS_FILE,
) -> dict[str, Any]:
    """Score the checkpoint on `pairs` (and `check_pairs`), write DIR/`metrics_file`.

    `corpus` describes where the pairs come from (e.g. the built-in corpus's size and seed), so
    that later checks can rebuild the same split.
    """
    model, tokenizer = load_model(checkpoint)
    started = time.perf_counter()
    hypotheses = translate(model, tokenizer, pairs, search=search, device=device)
    seconds = round(time.perf_counter() - started, 2)
    report = _report(pairs, hypotheses)
    metrics: dict[str, Any] = {
        "split": "test",
        "corpus": corpus or {},
        "decoding": str(search),
        "signatures": signatures(),  # of the scores just taken
        "seconds": seconds,
        **report,
    }
    errors = [(p, h) for p, h in zip(pairs, hypotheses, strict=True) if p.target != h]
    if check_pairs:
        check_hypotheses = translate(model, tokenizer, check_pairs, search=search, device=device)
        metrics["check_set"] = _report(check_pairs, check_hypotheses)
        errors += [
            (p, h) for p, h in zip(check_pairs, check_hypotheses, strict=True) if p.target != h
        ]
    metrics["errors"] = [
        {"lang": p.lang, "kind": p.kind, "source": p.source, "reference": p.target, "output": h}
        for p, h in errors[:40]
    ]
    text = json.dumps(metrics, indent=2, ensure_ascii=False) + "\n"
    (checkpoint / metrics_file).write_text(text)
    return metrics


def test_pairs(args: argparse.Namespace) -> tuple[list[Pair], list[Pair], dict[str, Any], str]:
    """What to score: the given --test-file whole (with no split), or the corpus's test split."""
    if args.test_file is None:
        corpus = corpus_from_args(args)
        return corpus.test, check_pairs_of(args, corpus), corpus_description(args), METRICS_FILE
    path = Path(args.test_file)
    pairs = read_pairs(path, args.test_target_file, args.target_lang)
    return pairs, [], {"name": str(path)}, f"metrics-{path.stem}.json"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m model.evaluate", description=__doc__)
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", choices=DEVICES)
    parser.add_argument("--beam-size", type=int, default=1, help="1: greedy; the paper used 4")
    parser.add_argument("--length-penalty", type=float, default=0.6, help="the paper's alpha")
    parser.add_argument(
        "--test-file",
        help="score this file (TSV, or the source side of two line-aligned files) instead of"
        " the corpus's test split; the metrics go to DIR/metrics-<name>.json",
    )
    parser.add_argument("--test-target-file", type=Path, help="target side of --test-file")
    add_corpus_arguments(parser)
    args = parser.parse_args(argv)
    if args.beam_size < 1:
        raise CorpusError(f"--beam-size must be >= 1, got {args.beam_size}")
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    pairs, check_pairs, description, metrics_file = test_pairs(args)
    if not pairs:
        raise CorpusError(f"{args.test_file or args.corpus}: no test pair to score")
    search = Search(args.beam_size, args.length_penalty)
    metrics = evaluate(
        args.checkpoint, pairs, check_pairs, description, search, device, metrics_file
    )
    print(format_metrics(metrics))
    print(f"decoding: {search}; BLEU signature: {metrics['signatures']['bleu']}")
    print(f"metrics written to {args.checkpoint / metrics_file}")


if __name__ == "__main__":
    run_cli(main, (DeviceError,))
