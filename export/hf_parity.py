"""An imported model against the `transformers` model of the directory it was imported from.

transformers is a development dependency only: without it (or without the directory) the check
is skipped and the export says so by leaving the figure out of the manifest.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

from model.transformer import Transformer

BATCH, SRC_LEN, TGT_LEN = 3, 11, 7


@torch.no_grad()
def transformers_logits_diff(model: Transformer, directory: Path) -> float | None:
    """max |ours - transformers'| over teacher-forced logits (B, T, V) of padded random sources,
    relative to max |transformers'| when that is above 1 (as the ONNX parity gate); None when
    transformers or the directory is missing."""
    if importlib.util.find_spec("transformers") is None:
        return None
    if not (directory / "config.json").is_file():
        return None
    from transformers import AutoModelForSeq2SeqLM  # optional: a dev dependency

    theirs_model = AutoModelForSeq2SeqLM.from_pretrained(str(directory)).eval()
    config = model.config
    g = torch.Generator().manual_seed(0)
    src_ids = torch.randint(0, config.vocab_size, (BATCH, SRC_LEN), generator=g)
    src_mask = torch.ones(BATCH, SRC_LEN, dtype=torch.int64)
    src_mask[1, -3:] = 0  # a padded row
    tgt_ids = torch.randint(0, config.vocab_size, (BATCH, TGT_LEN), generator=g)
    tgt_ids[:, 0] = config.decoder_start_id
    ours = model(src_ids, src_mask, tgt_ids, torch.ones_like(tgt_ids))  # (B, T, V)
    theirs = theirs_model(
        input_ids=src_ids, attention_mask=src_mask, decoder_input_ids=tgt_ids
    ).logits
    scale = max(1.0, float(theirs.abs().max()))
    return float((ours - theirs).abs().max()) / scale
