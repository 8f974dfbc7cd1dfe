"""Domain types crossing layers: servicer -> scheduler -> runner and back. No grpc, no ORT.

A request is split into segments; the scheduler queues and admits segments, the runner decodes
them as rows of one batch (one row per segment under greedy search, beam_size rows under beam
search) and reports, after every decoder step, what each segment committed and which finished.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol


class TextTokenizer(Protocol):
    """Text <-> ids for a bundle (service/tokenizer.py has one per tokenizer kind)."""

    def encode_source(self, text: str, lang: str) -> list[int]:
        """Source ids of `text` to translate into `lang`, end-of-sentence included."""
        ...

    def decode(self, ids: Sequence[int]) -> str:
        """Text of generated ids."""
        ...


@dataclass(frozen=True)
class RequestedOptions:
    """Decoding options as a client asked for them (any front end): 0 or None means the model's
    default. `validation` turns them into `DecodingOptions`."""

    beam_size: int = 0
    max_output_tokens: int = 0
    length_penalty: float | None = None
    n_best: int = 0


@dataclass(frozen=True)
class DecodingOptions:
    """Validated decoding options, shared by the segments of a request."""

    beam_size: int  # 1 = greedy; the segment occupies this many rows once its beam is open
    max_new_tokens: int  # the most generated tokens, end-of-sentence included (0: not resolved)
    length_penalty: float  # beam score = sum log-prob / len ** length_penalty
    n_best: int  # hypotheses returned, 1 <= n_best <= beam_size


Segment = tuple[tuple[int, ...], DecodingOptions]  # source ids (S,) and that segment's options


@dataclass(frozen=True)
class SegmentJob:
    """One segment to decode, as the scheduler hands it to the runner."""

    seq_id: int  # unique while the service runs; assigned by the scheduler
    src_ids: tuple[int, ...]  # (S,) `<2xx> pieces </s>`
    options: DecodingOptions

    @property
    def rows(self) -> int:
        """Rows reserved in the decoder batch."""
        return self.options.beam_size

    @property
    def token_budget(self) -> int:
        """Tokens reserved: every row may hold the source and the longest output."""
        return self.rows * (len(self.src_ids) + self.options.max_new_tokens)


@dataclass(frozen=True)
class Hypothesis:
    """One finished hypothesis."""

    ids: tuple[int, ...]  # generated ids without `<s>`, ending with `</s>` unless cut by the limit
    score: float  # sum log-prob / len ** length_penalty (greedy: length_penalty 1)


@dataclass(frozen=True)
class SegmentUpdate:
    """What one segment did in one step."""

    seq_id: int
    committed: tuple[int, ...]  # the ids every live hypothesis agrees on so far (whole prefix)
    hypotheses: tuple[Hypothesis, ...] | None = None  # set once finished: n_best, best first


@dataclass(frozen=True)
class EncodedSegments:
    """Segments after their encoder run, waiting to join the decoder batch."""

    jobs: tuple[SegmentJob, ...]  # in the row order of `cross` and `src_mask`
    cross: Any  # the runner's cross K/V of these rows, 2L x (N, H, S, Dh)
    src_mask: Any  # (N, S) int64, 0 = right-pad slot
    seconds: float  # encoder wall time
    padding: float  # real / total source tokens of the encoder runs, in (0, 1]


@dataclass(frozen=True)
class StepPlan:
    """What changes before the next decoder step."""

    admit: tuple[EncodedSegments, ...] = ()  # rows that join the batch, in this order
    drop: frozenset[int] = frozenset()  # seq_ids whose rows leave now (cancelled); applied after
    # `admit`, so a segment cancelled while its encoder ran joins and leaves in the same step


@dataclass(frozen=True)
class StepResult:
    """What one engine step did."""

    updates: tuple[SegmentUpdate, ...]  # one per segment that committed tokens or finished
    rows: int  # rows in the decoder step (0: no step ran)
    step_seconds: float  # decoder step wall time
    decoder_padding: float = 1.0  # real / total cross-attention source slots of the step, (0, 1]


@dataclass(frozen=True)
class TranslatedText:
    """One hypothesis as text, for a front end to send."""

    text: str
    score: float
    token_count: int  # generated tokens, end-of-sentence included


@dataclass(frozen=True)
class Translation:
    """A finished segment: its n_best hypotheses, best first."""

    hypotheses: tuple[TranslatedText, ...]
    source_token_count: int

    @property
    def best(self) -> TranslatedText:
        return self.hypotheses[0]


@dataclass(frozen=True)
class PartialText:
    """The committed prefix of a segment being decoded (streaming)."""

    text: str
    token_count: int
