"""Evaluation on the test split: greedy decoding through the KV cache; exact match, chrF, BLEU.

    python -m model.evaluate --checkpoint DIR [--corpus builtin|PATH ...]

Writes DIR/metrics.json and prints a table per target language.
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

from model.checkpoint import METRICS_FILE, load_model
from model.cli import add_corpus_arguments, corpus_from_args, run_cli
from model.corpus import Pair
from model.data import pad
from model.decoding import greedy_decode
from model.tokenizer import Tokenizer
from model.transformer import Transformer


def translate(
    model: Transformer, tokenizer: Tokenizer, pairs: Sequence[Pair], batch_size: int = 256
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


def score(pairs: Sequence[Pair], hypotheses: Sequence[str]) -> dict[str, dict[str, float]]:
    """Exact match, chrF and BLEU per target language and over all of them."""
    groups: dict[str, list[int]] = defaultdict(list)
    for i, pair in enumerate(pairs):
        groups[pair.lang].append(i)
        groups["all"].append(i)
    table = {}
    for lang in sorted(groups, key=lambda g: (g == "all", g)):
        refs = [pairs[i].target for i in groups[lang]]
        hyps = [hypotheses[i] for i in groups[lang]]
        table[lang] = {
            "sentences": len(refs),
            "exact_match": sum(h == r for h, r in zip(hyps, refs, strict=True)) / len(refs),
            "chrf": sacrebleu.corpus_chrf(hyps, [refs]).score,
            "bleu": sacrebleu.corpus_bleu(hyps, [refs]).score,
        }
    return table


def format_table(table: dict[str, dict[str, float]]) -> str:
    lines = [f"{'lang':<6}{'sentences':>10}{'exact':>9}{'chrF':>8}{'BLEU':>8}"]
    for lang, row in table.items():
        lines.append(
            f"{lang:<6}{row['sentences']:>10.0f}{row['exact_match']:>9.2%}{row['chrf']:>8.2f}{row['bleu']:>8.2f}"
        )
    return "\n".join(lines)


def evaluate(checkpoint: Path, pairs: Sequence[Pair]) -> dict[str, Any]:
    """Score the checkpoint on `pairs`, write metrics.json beside it, and return the metrics."""
    model, tokenizer = load_model(checkpoint)
    started = time.perf_counter()
    hypotheses = translate(model, tokenizer, pairs)
    metrics = {
        "split": "test",
        "decoding": "greedy",
        "seconds": round(time.perf_counter() - started, 2),
        "languages": score(pairs, hypotheses),
        "errors": [
            {"lang": p.lang, "source": p.source, "reference": p.target, "output": h}
            for p, h in zip(pairs, hypotheses, strict=True)
            if p.target != h
        ][:20],
    }
    (checkpoint / METRICS_FILE).write_text(json.dumps(metrics, indent=2, ensure_ascii=False) + "\n")
    return metrics


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m model.evaluate", description=__doc__)
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=2)
    add_corpus_arguments(parser)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    metrics = evaluate(args.checkpoint, corpus_from_args(args).test)
    print(format_table(metrics["languages"]))
    print(f"metrics written to {args.checkpoint / METRICS_FILE}")


if __name__ == "__main__":
    run_cli(main)
