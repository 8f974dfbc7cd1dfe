"""Evaluation on the test split: greedy decoding through the KV cache; exact match, chrF, BLEU.

    python -m model.evaluate --checkpoint DIR [--corpus builtin|PATH ...]

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
from pathlib import Path
from typing import Any

import sacrebleu
import torch

from model.checkpoint import METRICS_FILE, CheckpointTokenizer, load_model
from model.cli import (
    add_corpus_arguments,
    check_pairs_of,
    corpus_description,
    corpus_from_args,
    run_cli,
)
from model.corpus import Pair
from model.data import pad
from model.decoding import greedy_decode
from model.transformer import Transformer


def translate(
    model: Transformer,
    tokenizer: CheckpointTokenizer,
    pairs: Sequence[Pair],
    batch_size: int = 256,
) -> list[str]:
    """Greedy translations of `pairs`' sources into their target languages, in order."""
    order = sorted(range(len(pairs)), key=lambda i: len(pairs[i].source))
    outputs: list[str] = [""] * len(pairs)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        sources = [tokenizer.encode_source(pairs[i].source, pairs[i].lang) for i in chunk]
        src_ids, src_mask = pad(sources)
        limit = min(model.config.max_positions, 2 * src_ids.shape[1] + 10)
        for i, ids in zip(chunk, greedy_decode(model, src_ids, src_mask, limit), strict=True):
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
            "chrf": sacrebleu.corpus_chrf(hyps, [refs]).score,
            "bleu": sacrebleu.corpus_bleu(hyps, [refs]).score,
        }
    return table


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
) -> dict[str, Any]:
    """Score the checkpoint on `pairs` (and `check_pairs`), write metrics.json beside it.

    `corpus` describes where the pairs come from (e.g. the built-in corpus's size and seed), so
    that later checks can rebuild the same split.
    """
    model, tokenizer = load_model(checkpoint)
    started = time.perf_counter()
    hypotheses = translate(model, tokenizer, pairs)
    metrics: dict[str, Any] = {
        "split": "test",
        "corpus": corpus or {},
        "decoding": "greedy",
        "seconds": round(time.perf_counter() - started, 2),
        **_report(pairs, hypotheses),
    }
    errors = [(p, h) for p, h in zip(pairs, hypotheses, strict=True) if p.target != h]
    if check_pairs:
        check_hypotheses = translate(model, tokenizer, check_pairs)
        metrics["check_set"] = _report(check_pairs, check_hypotheses)
        errors += [
            (p, h) for p, h in zip(check_pairs, check_hypotheses, strict=True) if p.target != h
        ]
    metrics["errors"] = [
        {"lang": p.lang, "kind": p.kind, "source": p.source, "reference": p.target, "output": h}
        for p, h in errors[:40]
    ]
    (checkpoint / METRICS_FILE).write_text(json.dumps(metrics, indent=2, ensure_ascii=False) + "\n")
    return metrics


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m model.evaluate", description=__doc__)
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=2)
    add_corpus_arguments(parser)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    corpus = corpus_from_args(args)
    metrics = evaluate(
        args.checkpoint, corpus.test, check_pairs_of(args, corpus), corpus_description(args)
    )
    print(format_metrics(metrics))
    print(f"metrics written to {args.checkpoint / METRICS_FILE}")


if __name__ == "__main__":
    run_cli(main)
