"""Decoding rules: the searches reproduce transformers' `generate` on a tiny random Marian model.

No ONNX: the model's own decoder logits (float64 weights, cast to float32 as `generate` casts
them) drive our searches one step at a time, every segment's rows contiguous in one batch and
gathered per `parents`, as the runner lays them out. The native searches are pinned to the
results they gave before the rules existed.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from transformers import GenerationConfig, MarianConfig, MarianMTModel
from transformers.modeling_outputs import BaseModelOutput

from service.search import (
    DecodingRules,
    Search,
    StepScores,
    make_search,
)
from service.types import DecodingOptions

VOCAB, EOS, PAD = 120, 0, 119  # Marian: </s> 0, pad = decoder start = the last id
MAX_LENGTH = 20  # transformers' max_length: the decoder start and 19 generated tokens
SOURCES = 200
OPUS_RULES = {"bad_words_ids": [[PAD]], "forced_eos_token_id": EOS, "renormalize_logits": True}
Sources = tuple[torch.Tensor, torch.Tensor]  # ids (N, S) right-padded, mask (N, S)
Ids = tuple[int, ...]


def _marian() -> MarianMTModel:
    """Random weights, seeded; an untied head scaled so the next token depends on the prefix, and
    `</s>` aligned with the direction the decoder's state drifts along with position, so outputs
    end at varied lengths."""
    torch.manual_seed(0)
    config = MarianConfig(
        vocab_size=VOCAB,
        d_model=32,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        activation_function="swish",
        pad_token_id=PAD,
        eos_token_id=EOS,
        decoder_start_token_id=PAD,
        max_position_embeddings=64,
        init_std=0.2,
        tie_word_embeddings=False,
    )
    model = MarianMTModel(config).eval().double()
    model.generation_config = GenerationConfig(
        decoder_start_token_id=PAD, eos_token_id=EOS, pad_token_id=PAD
    )  # no rules but those a test passes
    with torch.no_grad():
        model.model.shared.weight.normal_(0.0, 1.0)
        model.lm_head.weight.normal_(0.0, 0.5)
        model.final_logits_bias.normal_(0.0, 1.0)
        ids, mask = _sources(torch.Generator().manual_seed(2), 64)
        encoded = BaseModelOutput(last_hidden_state=model.get_encoder()(ids, mask)[0])
        prefixes = torch.randint(1, PAD, (64, MAX_LENGTH - 1))
        hidden = model.model(
            encoder_outputs=encoded, attention_mask=mask, decoder_input_ids=prefixes
        ).last_hidden_state  # (64, T, D)
        drift = hidden[:, 12:].mean((0, 1)) - hidden[:, :4].mean((0, 1))
        model.lm_head.weight[EOS] = 4.0 * drift / drift.norm()
        model.final_logits_bias[0, EOS] = 6.0
    return model


def _sources(generator: torch.Generator, count: int) -> Sources:
    """`count` random sources of 2 to 11 pieces and `</s>`, right-padded with pad."""
    lengths = torch.randint(3, 13, (count,), generator=generator)
    ids = torch.full((count, int(lengths.max())), PAD)
    mask = torch.zeros_like(ids)
    for row, length in enumerate(lengths.tolist()):
        ids[row, : length - 1] = torch.randint(1, PAD, (length - 1,), generator=generator)
        ids[row, length - 1] = EOS
        mask[row, :length] = 1
    return ids, mask


@pytest.fixture(scope="module")
def marian() -> MarianMTModel:
    return _marian()


@pytest.fixture(scope="module")
def sources() -> Sources:
    return _sources(torch.Generator().manual_seed(1), SOURCES)


def _decode(model: MarianMTModel, batch: Sources, searches: list[Search], rules: DecodingRules):
    """Run one search per source to the end, all rows in one decoder batch per step."""
    ids, mask = batch
    with torch.no_grad():
        memory = model.get_encoder()(ids, mask)[0]  # (N, S, D)
        rows: list[tuple[int, list[int]]] = [(source, []) for source in range(len(searches))]
        while rows:
            source = torch.tensor([s for s, _ in rows])
            prefixes = torch.tensor([[PAD, *generated] for _, generated in rows])  # (R, t+1)
            logits = model(
                encoder_outputs=BaseModelOutput(last_hidden_state=memory[source]),
                attention_mask=mask[source],
                decoder_input_ids=prefixes,
            ).logits[:, -1]  # (R, V) float64
            scores = StepScores.of(logits.to(torch.float32).numpy(), rules)
            rows = _advance(searches, scores, rows)


def _advance(searches: list[Search], scores: StepScores, rows: list[tuple[int, list[int]]]):
    """Each live search advances on its contiguous rows -> the next rows."""
    following, start = [], 0
    for search in (s for s in searches if not s.done):
        width = search.rows
        parents, tokens = search.advance(scores, start)
        following += [(rows[p][0], [*rows[p][1], t]) for p, t in zip(parents, tokens, strict=True)]
        start += width
    assert start == len(rows)
    return following


def _generated(sequence: list[int]) -> Ids:
    """A `generate` output row without the decoder start, up to its first `</s>`."""
    ids = sequence[1:]
    return tuple(ids[: ids.index(EOS) + 1] if EOS in ids else ids)


def _generate(model: MarianMTModel, batch: Sources, **kwargs: Any) -> Any:
    with torch.no_grad():
        return model.generate(
            batch[0], attention_mask=batch[1], max_length=MAX_LENGTH, do_sample=False, **kwargs
        )


def _rules(opus: bool, **beam: Any) -> DecodingRules:
    if not opus:
        return DecodingRules(**beam)
    return DecodingRules(suppress_tokens=(PAD,), forced_eos=True, renormalize=True, **beam)


@pytest.mark.parametrize("opus", [True, False])
def test_greedy_equals_generate(marian, sources, opus):
    rules = _rules(opus)
    options = DecodingOptions(1, MAX_LENGTH - 1, 1.0, 1)
    searches: list[Search] = [make_search(options, EOS, rules) for _ in range(SOURCES)]
    _decode(marian, sources, searches, rules)
    out = _generate(
        marian,
        sources,
        num_beams=1,
        return_dict_in_generate=True,
        output_scores=True,
        **(OPUS_RULES if opus else {}),
    )
    ours = [search.results()[0] for search in searches]
    expected = [_generated(row) for row in out.sequences.tolist()]
    assert [h.ids for h in ours] == expected  # all 200
    ended = sum(ids[-1] == EOS and len(ids) < MAX_LENGTH - 1 for ids in expected)
    assert ended >= SOURCES // 4  # many end with their own </s>
    if opus:  # renormalised: the scores are log-probabilities, the forced </s> 0
        logprobs = torch.stack(out.scores, 1).gather(2, out.sequences[:, 1:, None])[..., 0]
        for hypothesis, row in zip(ours, logprobs.tolist(), strict=True):
            mean = sum(row[: len(hypothesis.ids)]) / len(hypothesis.ids)
            assert hypothesis.score == pytest.approx(mean, abs=1e-5)


BEAM_CASES = [  # OPUS rules?, length_penalty, early_stopping, num_return_sequences
    (True, 1.0, False, 4),
    (True, 0.6, False, 4),
    (True, 1.4, False, 2),
    (True, 1.0, True, 4),
    (True, 0.6, True, 1),
    (True, 1.4, True, 4),
    (True, 1.0, "never", 4),
    (True, 0.6, "never", 3),
    (True, 1.4, "never", 4),
    (False, 1.0, False, 4),
]


@pytest.mark.parametrize(("opus", "length_penalty", "early_stopping", "n_best"), BEAM_CASES)
def test_beam_search_equals_generate(marian, sources, opus, length_penalty, early_stopping, n_best):
    rules = _rules(opus, beam="transformers", early_stopping=early_stopping)
    options = DecodingOptions(4, MAX_LENGTH - 1, length_penalty, n_best)
    searches: list[Search] = [make_search(options, EOS, rules) for _ in range(SOURCES)]
    _decode(marian, sources, searches, rules)
    out = _generate(
        marian,
        sources,
        num_beams=4,
        num_return_sequences=n_best,
        length_penalty=length_penalty,
        early_stopping=early_stopping,
        return_dict_in_generate=True,
        output_scores=True,
        **(OPUS_RULES if opus else {}),
    )
    sequences = [_generated(row) for row in out.sequences.tolist()]
    scores = out.sequences_scores.tolist()
    for i, search in enumerate(searches):
        ours = search.results()
        assert [h.ids for h in ours] == sequences[i * n_best : (i + 1) * n_best], i
        assert [h.score for h in ours] == pytest.approx(
            scores[i * n_best : (i + 1) * n_best], abs=1e-5
        ), i
