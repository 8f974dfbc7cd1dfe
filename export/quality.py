"""What an exported bundle says on the test split: exact match, and agreement with PyTorch."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from export.reference_decoder import ReferenceDecoder
from model.checkpoint import CheckpointTokenizer
from model.corpus import Pair
from model.data import pad
from model.decoding import greedy_decode
from model.transformer import Transformer

BATCH = 64


def score_bundle(
    model: Transformer,
    tokenizer: CheckpointTokenizer,
    reference: ReferenceDecoder,
    pairs: Sequence[Pair],
) -> dict[str, Any]:
    """Greedy outputs of the bundle (ONNX Runtime) and of the model (PyTorch fp32) on `pairs`.

    Returns the share of sentences where the bundle's output equals PyTorch's (`agreement`) and
    where it equals the reference translation (`exact_match`), overall and per language.
    """
    order = sorted(range(len(pairs)), key=lambda i: len(pairs[i].source))
    ort_out: dict[int, list[int]] = {}
    torch_out: dict[int, list[int]] = {}
    for start in range(0, len(order), BATCH):
        chunk = order[start : start + BATCH]
        sources = [tokenizer.encode_source(pairs[i].source, pairs[i].lang) for i in chunk]
        limit = min(model.config.max_positions, 2 * max(len(s) for s in sources) + 10)
        src_ids, src_mask = pad(sources)
        for i, ours, theirs in zip(
            chunk,
            reference.greedy(sources, limit),
            greedy_decode(model, src_ids, src_mask, limit),
            strict=True,
        ):
            ort_out[i], torch_out[i] = ours, theirs
    by_lang: dict[str, list[int]] = {}
    for i, pair in enumerate(pairs):
        by_lang.setdefault(pair.lang, []).append(i)
    by_lang["all"] = list(range(len(pairs)))
    report: dict[str, Any] = {}
    for lang, rows in sorted(by_lang.items(), key=lambda item: (item[0] == "all", item[0])):
        report[lang] = {
            "sentences": len(rows),
            "exact_match": sum(tokenizer.decode(ort_out[i]) == pairs[i].target for i in rows)
            / len(rows),
            "agreement_with_pytorch": sum(ort_out[i] == torch_out[i] for i in rows) / len(rows),
        }
    return report
