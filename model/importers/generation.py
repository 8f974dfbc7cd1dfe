"""A Hugging Face generation config -> the bundle's decoding defaults and rules.

transformers applies generation_config.json on every `generate()` call; the service applies the
same fields as the bundle's defaults (what a request gets when it leaves an option unset) and
rules (what every request gets):

    num_beams             -> default beam_size
    max_length            -> default and limit max_new_tokens = max_length - 1 (it counts the
                             decoder start token); max_new_tokens when given instead
    length_penalty        -> default length_penalty
    num_return_sequences  -> default n_best
    early_stopping        -> rule: transformers' beam stopping (True, False or "never")
    bad_words_ids         -> rule: suppress_tokens (one-token entries only)
    forced_eos_token_id   -> rule: forced_eos (the last allowed token is </s>)
    renormalize_logits    -> rule: renormalize (log-probabilities renormalised after the rules)

Beam search follows transformers (rule beam = "transformers"). A field that changes the output
and that the service does not implement is refused with its name unless it holds its neutral
value; bookkeeping fields (versions, token ids checked against the model) are accepted.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from model.importers import UnsupportedModelError

# Fields that change nothing when they hold these values (transformers' defaults).
NEUTRAL: dict[str, Any] = {
    "do_sample": False,
    "min_length": 0,
    "min_new_tokens": None,
    "no_repeat_ngram_size": 0,
    "encoder_no_repeat_ngram_size": 0,
    "repetition_penalty": 1.0,
    "encoder_repetition_penalty": 1.0,
    "num_beam_groups": 1,
    "diversity_penalty": 0.0,
    "forced_bos_token_id": None,
    "suppress_tokens": None,
    "begin_suppress_tokens": None,
    "exponential_decay_length_penalty": None,
    "sequence_bias": None,
    "constraints": None,
    "force_words_ids": None,
    "remove_invalid_values": False,
    "epsilon_cutoff": 0.0,
    "eta_cutoff": 0.0,
    "penalty_alpha": None,
    "guidance_scale": None,
    "watermarking_config": None,
    "max_time": None,
    "stop_strings": None,
}
# Sampling knobs: inert while do_sample is False (transformers ignores them then).
SAMPLING = ("temperature", "top_k", "top_p", "typical_p", "min_p", "top_h")
BOOKKEEPING = (
    "_from_model_config",
    "transformers_version",
    "bos_token_id",
    "pad_token_id",
    "output_scores",
    "return_dict_in_generate",
    "output_attentions",
    "output_hidden_states",
    "output_logits",
    "use_cache",
    "cache_implementation",
)
# The fields `decoding` turns into defaults and rules.
DECODING_FIELDS = (
    "num_beams",
    "max_length",
    "max_new_tokens",
    "length_penalty",
    "early_stopping",
    "num_return_sequences",
    "bad_words_ids",
    "forced_eos_token_id",
    "renormalize_logits",
)
# Generation fields that older checkpoints keep in config.json instead of generation_config.json.
GENERATION_FIELDS = (*DECODING_FIELDS, *NEUTRAL)


def from_model_config(config: dict[str, Any]) -> dict[str, Any]:
    """The generation fields of a config.json, for a directory without generation_config.json."""
    return {k: config[k] for k in GENERATION_FIELDS if k in config and config[k] is not None}


def _token_rule(path: Path, name: str, value: Any, eos_id: int) -> bool:
    """forced_eos_token_id: an id (or a list of ids) that must be the model's eos."""
    ids = value if isinstance(value, list) else [value]
    if ids != [eos_id]:
        raise UnsupportedModelError(
            f"{path}: {name} {value!r}: only the model's eos ({eos_id}) is supported"
        )
    return True


def _suppressed(path: Path, value: Any, vocab_size: int) -> list[int]:
    if not isinstance(value, list) or any(not isinstance(w, list) for w in value):
        raise UnsupportedModelError(
            f"{path}: bad_words_ids {value!r}: expected a list of lists of ids"
        )
    if any(len(words) != 1 for words in value):
        raise UnsupportedModelError(
            f"{path}: bad_words_ids: sequences of more than one token are not supported"
        )
    ids = sorted({int(words[0]) for words in value})
    if any(not 0 <= i < vocab_size for i in ids):
        raise UnsupportedModelError(
            f"{path}: bad_words_ids {ids}: out of the vocabulary [0, {vocab_size})"
        )
    return ids


def _check_refused(path: Path, values: dict[str, Any], known: set[str]) -> None:
    for name, value in values.items():
        if name in known or name in BOOKKEEPING:
            continue
        if name in SAMPLING:
            continue  # inert: do_sample is checked to be False below
        if name in NEUTRAL:
            if value != NEUTRAL[name]:
                raise UnsupportedModelError(
                    f"{path}: {name} {value!r} is not supported (only {NEUTRAL[name]!r})"
                )
            continue
        raise UnsupportedModelError(
            f"{path}: {name} is not a generation rule this service implements"
        )


def decoding(
    path: Path, values: dict[str, Any], *, eos_id: int, vocab_size: int, max_positions: int
) -> dict[str, Any]:
    """Decoding defaults and rules of generation config `values` (read from `path`).

    Returns:
        {"beam_size", "max_new_tokens", "length_penalty", "n_best", "rules": {...}}.
    """
    known = {*DECODING_FIELDS, "decoder_start_token_id", "eos_token_id"}
    _check_refused(path, values, known)
    if values.get("eos_token_id", eos_id) not in (eos_id, [eos_id]):
        raise UnsupportedModelError(
            f"{path}: eos_token_id {values['eos_token_id']!r} differs from the model's {eos_id}"
        )
    max_new = values.get("max_new_tokens") or int(values.get("max_length", 20)) - 1
    if not 1 <= max_new <= max_positions:
        raise UnsupportedModelError(
            f"{path}: max_length {values.get('max_length')!r} allows {max_new} new tokens;"
            f" the model has {max_positions} positions"
        )
    early = values.get("early_stopping", False)
    if early not in (True, False, "never"):
        raise UnsupportedModelError(
            f'{path}: early_stopping {early!r}: expected true, false or "never"'
        )
    beams = int(values.get("num_beams", 1))
    forced = values.get("forced_eos_token_id")
    return {
        "beam_size": beams,
        "max_new_tokens": max_new,
        "length_penalty": float(values.get("length_penalty", 1.0)),
        "n_best": int(values.get("num_return_sequences", 1)),
        "rules": {
            "suppress_tokens": _suppressed(path, values.get("bad_words_ids", []), vocab_size),
            "forced_eos": forced is not None
            and _token_rule(path, "forced_eos_token_id", forced, eos_id),
            "renormalize": bool(values.get("renormalize_logits", False)),
            "beam": "transformers",
            "early_stopping": early,
        },
    }
