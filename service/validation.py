"""Requested values (any front end) -> validated domain values; every refusal names the limit
and the value.

Raises `InvalidArgumentError` (-> INVALID_ARGUMENT) for empty or blank text, invalid UTF-8, too
many segments or source tokens, an unsupported language, options out of range.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from service.errors import InvalidArgumentError
from service.types import DecodingOptions, RequestedOptions, Segment, TextTokenizer

MAX_LENGTH_PENALTY = 2.0
# Default output cap: a translation is rarely 3x longer than its source; a model that loops then
# stops early instead of holding its row (and the batch's cache length) to the model limit.
OUTPUT_PER_SOURCE_TOKEN, OUTPUT_MARGIN = 3, 10


@dataclass(frozen=True)
class ServiceLimits:
    """What a request may ask for: the bundle's limits and the operator's settings."""

    source_language: str
    languages: tuple[str, ...]  # target language codes, sorted
    max_source_tokens: int  # per segment, `<2xx>` and `</s>` included
    max_output_tokens: int  # per segment
    max_segments: int  # per Translate request
    max_beam_size: int
    max_tokens_in_flight: int  # a segment's rows x (source + output tokens) must fit
    # The bundle's defaults for unset options (max_new_tokens 0: 3 x source tokens + 10).
    defaults: DecodingOptions = field(default_factory=lambda: DecodingOptions(1, 0, 1.0, 1))


def _in_range(name: str, value: int, low: int, high: int, limit: str) -> int:
    if not low <= value <= high:
        raise InvalidArgumentError(f"{name} {value} out of range [{low}, {high}] ({limit})")
    return value


class RequestValidator:
    """Checks requests against `ServiceLimits` and tokenizes their text.

    Args:
        tokenizer: the bundle's tokenizer.
        limits: what a request may ask for.
    """

    def __init__(self, tokenizer: TextTokenizer, limits: ServiceLimits) -> None:
        self._tokenizer = tokenizer
        self.limits = limits

    def options(self, options: RequestedOptions) -> DecodingOptions:
        """The bundle's defaults for unset (0) fields, then range checks; max_new_tokens 0 means
        the per-segment default, resolved by `segments`."""
        lim, default = self.limits, self.limits.defaults
        beam = _in_range(
            "options.beam_size",
            options.beam_size or min(default.beam_size, lim.max_beam_size),
            1,
            lim.max_beam_size,
            "max_beam_size",
        )
        max_new = options.max_output_tokens and _in_range(
            "options.max_output_tokens",
            options.max_output_tokens,
            1,
            lim.max_output_tokens,
            "max_output_tokens",
        )
        n_best = options.n_best or min(default.n_best, beam)
        n_best = _in_range("options.n_best", n_best, 1, beam, "at most beam_size")
        penalty = (
            default.length_penalty if options.length_penalty is None else options.length_penalty
        )
        if not (math.isfinite(penalty) and 0.0 <= penalty <= MAX_LENGTH_PENALTY):
            raise InvalidArgumentError(
                f"options.length_penalty {penalty} out of range [0, {MAX_LENGTH_PENALTY}]"
            )
        return DecodingOptions(beam, max_new, float(penalty), n_best)

    def segments(
        self,
        segments: Sequence[bytes],
        target_language: str,
        source_language: str,
        options: DecodingOptions,
    ) -> list[Segment]:
        """Source ids of each segment, with its options: an unset max output tokens becomes the
        bundle's default (an imported model's max_length - 1), or min(limit, 3 x source tokens
        + 10) when the bundle has none."""
        lim = self.limits
        if not segments:
            raise InvalidArgumentError("segments: none given; send at least 1")
        if len(segments) > lim.max_segments:
            raise InvalidArgumentError(
                f"segments: {len(segments)} given, limit max_segments={lim.max_segments}"
            )
        self._check_languages(target_language, source_language)
        return [
            self._source(f"segments[{i}]", raw, target_language, options)
            for i, raw in enumerate(segments)
        ]

    def _check_languages(self, target: str, source: str) -> None:
        lim = self.limits
        if target not in lim.languages:
            raise InvalidArgumentError(
                f"target_language {target!r} is not supported;"
                f" supported: {', '.join(lim.languages)}"
            )
        if source and source != lim.source_language:
            raise InvalidArgumentError(
                f"source_language {source!r} is not supported; this model translates from"
                f" {lim.source_language!r}"
            )

    def _source(self, name: str, raw: bytes, target: str, options: DecodingOptions) -> Segment:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as error:
            raise InvalidArgumentError(
                f"{name}: not valid UTF-8 (byte {raw[error.start]:#04x} at offset {error.start})"
            ) from None
        if not text.strip():
            raise InvalidArgumentError(f"{name}: empty or blank text")
        ids = tuple(self._tokenizer.encode_source(text, target))
        lim = self.limits
        if len(ids) > lim.max_source_tokens:
            raise InvalidArgumentError(
                f"{name}: {len(ids)} source tokens, limit max_source_tokens={lim.max_source_tokens}"
            )
        if not options.max_new_tokens:
            default = lim.defaults.max_new_tokens or (
                OUTPUT_PER_SOURCE_TOKEN * len(ids) + OUTPUT_MARGIN
            )
            options = replace(options, max_new_tokens=min(lim.max_output_tokens, default))
        budget = options.beam_size * (len(ids) + options.max_new_tokens)
        if budget > lim.max_tokens_in_flight:
            raise InvalidArgumentError(
                f"{name}: needs {budget} tokens in flight (beam_size x (source + max output"
                f" tokens)), limit max_tokens_in_flight={lim.max_tokens_in_flight}"
            )
        return ids, options
