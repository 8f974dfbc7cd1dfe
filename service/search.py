"""Per-segment search bookkeeping: greedy and beam search, one decoder step at a time.

Without decoding rules (`DecodingRules()`, every model this project trains), the rules are those
of `export/reference_decoder.py`, so outputs compare exactly:
  * decoding starts from `<s>`; a hypothesis ends with `</s>` or after `max_new_tokens` tokens;
  * greedy takes the argmax of the logits;
  * beam search ranks every (beam, token) extension by float32 sum of log-probabilities, highest
    first, ties to the lower beam then the lower token id, and walks the ranking: `</s>` makes a
    finished hypothesis, anything else a live beam, until `beam_size` live beams are chosen; it
    stops when `beam_size` hypotheses have finished, or after `max_new_tokens` steps, when the
    live beams are finished as they are; finished hypotheses are ranked by
    score / length ** length_penalty, stable on finishing order.

A bundle converted from Hugging Face Marian (OPUS-MT) carries the rules of its
generation_config.json, under which the output is that of transformers 5.23.0 `generate`:
  * `suppress_tokens` are never generated: their log-probabilities (and logits, for greedy) are
    -inf (NoBadWordsLogitsProcessor with bad words of one token: Marian's pad);
  * with `renormalize` the log-probabilities are the log-softmax of the masked logits
    (LogitNormalization after the rules: log_softmax(mask(log_softmax(x))) is log_softmax(mask(x))),
    computed as below; without it, log_softmax(x) with the suppressed entries at -inf;
  * with `forced_eos` the `max_new_tokens`-th token is `</s>`, of log-probability 0
    (ForcedEOSTokenLogitsProcessor at transformers' max_length - 1 = max_new_tokens: every other
    token -inf, `</s>` 0, which renormalising keeps);
  * greedy takes the argmax of the masked logits (first index on an exact tie, as torch.argmax);
  * beam "transformers" is `TransformersBeamSearch`, whose docstring gives its rules.
Log-softmax is computed in float32 as (x - max) - log(sum(exp(x - max))); torch computes it with
its own exp and summation order (twice under `renormalize`), so a log-probability may differ from
transformers' in the last bit or two (about 1e-7): only where two candidates are that close can an
order differ. Transformers' greedy search under `renormalize` takes the argmax of the float32
log-probabilities, where such rounding can make two logits a few ulp apart equal (it then takes
the lower id); ours takes the argmax of the logits.

A search owns `rows` contiguous rows of the batch, starting at `start`: `advance` reads their
scores from the step's `StepScores` and returns, per next row, the batch row it continues and the
token it appends; no rows once done.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from service.types import DecodingOptions, Hypothesis


@dataclass(frozen=True)
class DecodingRules:
    """The bundle's decoding rules (from a model's generation_config.json; defaults: none)."""

    suppress_tokens: tuple[int, ...] = ()  # never generated (bad_words_ids of one token)
    forced_eos: bool = False  # the last allowed token (max_new_tokens-th) is </s>
    renormalize: bool = False  # log-probabilities renormalised after the rules
    beam: str = "native"  # "native" (BeamSearch) or "transformers" (TransformersBeamSearch)
    early_stopping: bool | str = False  # transformers' early_stopping: True, False or "never"
    # (beam "transformers" only)

    def __post_init__(self) -> None:
        if self.beam not in ("native", "transformers"):
            raise ValueError(f"beam is 'native' or 'transformers', not {self.beam!r}")
        if not isinstance(self.early_stopping, bool) and self.early_stopping != "never":
            raise ValueError(f"early_stopping is True, False or 'never': {self.early_stopping!r}")


NO_RULES = DecodingRules()


class StepLogits(NamedTuple):
    """A decoder step's output for B rows: the logits and, where the graph computed them
    (`service.scoring_graph`), their argmax and log-softmax parts; None where it did not."""

    logits: np.ndarray  # (B, V)
    best: np.ndarray | None = None  # (B,) int64 argmax
    top: np.ndarray | None = None  # (B, 1) float32 max
    lse: np.ndarray | None = None  # (B, 1) float32 log(sum(exp(logits - top)))


@dataclass(frozen=True)
class StepScores:
    """One decoder step's scores for every row of the batch, computed once.

    The log-softmax is that of the reference, shifted - log(sum(exp(shifted))) with shifted =
    logits - max, in float32, but only its parts are computed for the whole batch: greedy rows
    need just the log-probability of their argmax (where shifted is exactly 0: it is -lse), beam
    rows get their full rows from `logprobs`. Four passes over (B, V) instead of seven.

    With suppressed tokens `logits` are a copy with -inf there; `top` and `lse` are those of the
    masked logits under `renormalize`, else of the logits as they came (so `best`, the argmax of
    the masked logits, may be below `top`). Where the step's graph computed the parts of the
    logits as they came (`StepLogits`), they are taken as they are.
    """

    logits: np.ndarray  # (B, V) float32, suppressed tokens at -inf
    best: np.ndarray  # (B,) int64 argmax of the logits
    top: np.ndarray  # (B, 1) float32 max of the logits normalised over
    lse: np.ndarray  # (B, 1) float32 log(sum(exp(those logits - top)))
    # the greedy rows' choices, as Python values (a search reads them without a numpy scalar):
    best_ids: list[int]  # `best`
    best_logprobs: list[float]  # the log-probability of each row's `best`

    @classmethod
    def of(cls, step: StepLogits | np.ndarray, rules: DecodingRules = NO_RULES) -> StepScores:
        """From the step's logits (B, V), or its `StepLogits`, under `rules`."""
        if isinstance(step, np.ndarray):
            step = StepLogits(step)
        x = step.logits.astype(np.float32, copy=False)
        if not rules.suppress_tokens:
            return cls._normalised(x) if step.lse is None else cls._from_parts(x, step)
        masked = x.copy()
        masked[:, list(rules.suppress_tokens)] = -np.inf
        if rules.renormalize:
            return cls._normalised(masked)
        raw = cls._normalised(x) if step.lse is None else cls._from_parts(x, step)
        best = masked.argmax(axis=-1)
        shift = masked[np.arange(len(x)), best] - raw.top[:, 0]  # (B,) float32, <= 0
        return cls(masked, best, raw.top, raw.lse, best.tolist(), (shift - raw.lse[:, 0]).tolist())

    @classmethod
    def _normalised(cls, x: np.ndarray) -> StepScores:
        """Log-softmax parts of `x` (B, V) float32."""
        best = x.argmax(axis=-1)
        top = x[np.arange(len(x)), best][:, None]  # the max, read at the argmax
        shifted = np.subtract(x, top)
        lse = np.log(np.exp(shifted, out=shifted).sum(axis=-1, keepdims=True))
        # at the argmax shifted is exactly 0, so its log-probability is 0 - lse = -lse
        return cls(x, best, top, lse, best.tolist(), np.negative(lse[:, 0]).tolist())

    @classmethod
    def _from_parts(cls, x: np.ndarray, step: StepLogits) -> StepScores:
        """`x` (B, V) float32 with the parts its graph computed."""
        assert step.best is not None and step.top is not None and step.lse is not None
        return cls(x, step.best, step.top, step.lse, step.best.tolist(), (-step.lse[:, 0]).tolist())

    def logprobs(self, start: int, stop: int) -> np.ndarray:
        """Log-softmax of rows [start, stop) -> (R, V) float32."""
        rows: np.ndarray = (self.logits[start:stop] - self.top[start:stop]) - self.lse[start:stop]
        return rows


def _ranked(scores: np.ndarray, count: int) -> np.ndarray:
    """Flat indices of the `count` best entries of `scores` (R, V) and all ties of the last one,
    best first, ties in flat (beam-major) order: the head of a stable argsort of -scores."""
    flat = scores.ravel()
    if count >= flat.size:
        return np.argsort(-flat, kind="stable")
    threshold = np.partition(flat, flat.size - count)[flat.size - count]
    candidates = np.flatnonzero(flat >= threshold)
    return candidates[np.lexsort((candidates, -flat[candidates]))]


def _common_prefix(sequences: Sequence[Sequence[int]]) -> tuple[int, ...]:
    """The longest prefix of the first sequence that every sequence starts with."""
    first = sequences[0]
    agreed = 0
    while agreed < len(first) and all(
        len(ids) > agreed and ids[agreed] == first[agreed] for ids in sequences
    ):
        agreed += 1
    return tuple(first[:agreed])


class GreedySearch:
    """One row; the next token is the argmax of the logits (`</s>` when forced)."""

    def __init__(self, options: DecodingOptions, eos_id: int, rules: DecodingRules = NO_RULES):
        self._max_new_tokens = options.max_new_tokens
        self._eos_id = eos_id
        self._forced_eos = rules.forced_eos
        self._ids: list[int] = []
        self._logprob = 0.0
        self.done = False
        self.rows = 1

    def advance(self, scores: StepScores, start: int) -> tuple[list[int], list[int]]:
        """-> parent rows, tokens: one row continuing itself, or none once done."""
        token, logprob = self._next(scores, start)
        self._logprob += logprob
        self._ids.append(token)
        self.done = token == self._eos_id or len(self._ids) >= self._max_new_tokens
        self.rows = 0 if self.done else 1
        return ([], []) if self.done else ([start], [token])

    def _next(self, scores: StepScores, start: int) -> tuple[int, float]:
        """The next token and its log-probability."""
        if self._forced_eos and len(self._ids) + 1 == self._max_new_tokens:
            return self._eos_id, 0.0
        return scores.best_ids[start], scores.best_logprobs[start]

    def committed(self) -> tuple[int, ...]:
        return tuple(self._ids)

    def results(self) -> tuple[Hypothesis, ...]:
        """The one hypothesis; its score is the mean log-probability per token."""
        return (Hypothesis(tuple(self._ids), self._logprob / max(1, len(self._ids))),)


class BeamSearch:
    """Up to `beam_size` rows; starts from one row holding `<s>`."""

    def __init__(self, options: DecodingOptions, eos_id: int) -> None:
        self._options = options
        self._eos_id = eos_id
        self._beams: list[tuple[list[int], float]] = [([], 0.0)]  # generated ids, log-prob sum
        self._finished: list[tuple[list[int], float]] = []
        self._steps = 0
        self.done = False
        self.rows = 1

    def advance(self, step: StepScores, start: int) -> tuple[list[int], list[int]]:
        """-> parent rows, tokens of the next live beams (none once done)."""
        beam_size = self._options.beam_size
        sums = np.array([s for _, s in self._beams], dtype=np.float32)[:, None]  # (R, 1)
        scores = sums + step.logprobs(start, start + self.rows)  # (R, V) float32
        chosen: list[tuple[list[int], float]] = []
        origins: list[int] = []
        vocab = scores.shape[1]
        for flat in _ranked(scores, 2 * beam_size):
            beam, token = divmod(int(flat), vocab)
            hypothesis = ([*self._beams[beam][0], token], float(scores[beam, token]))
            if token == self._eos_id:
                self._finished.append(hypothesis)
            else:
                chosen.append(hypothesis)
                origins.append(beam)
            if len(chosen) == beam_size or len(self._finished) >= beam_size:
                break
        self._steps += 1
        self._beams = chosen
        if len(self._finished) >= beam_size or not chosen:
            self._beams, origins = [], []
        elif self._steps >= self._options.max_new_tokens:
            self._finished.extend(chosen)
            self._beams, origins = [], []
        self.done = not self._beams
        self.rows = len(self._beams)
        return [start + origin for origin in origins], [ids[-1] for ids, _ in self._beams]

    def committed(self) -> tuple[int, ...]:
        """The prefix every live beam agrees on; once done, the best hypothesis."""
        if self.done:
            return self.results()[0].ids
        return _common_prefix([ids for ids, _ in self._beams])

    def results(self) -> tuple[Hypothesis, ...]:
        """The best `n_best` finished hypotheses, with normalized scores, best first."""
        penalty = self._options.length_penalty
        ranked = sorted(self._finished, key=lambda h: -h[1] / len(h[0]) ** penalty)
        return tuple(
            Hypothesis(tuple(ids), score / len(ids) ** penalty)
            for ids, score in ranked[: self._options.n_best]
        )


@dataclass(frozen=True)
class _Candidate:
    """One (beam, token) extension of a step."""

    beam: int  # the live beam it extends
    ids: list[int]  # generated ids, the token last
    score: np.float32  # float32 sum of log-probabilities
    stops: bool  # it ends with `</s>` or holds `max_new_tokens` ids


class TransformersBeamSearch:
    """transformers 5.23.0 beam search (`_beam_search`, batch of one source, no sampling).

    Up to `beam_size` (B) live beams, each with its float32 sum of log-probabilities; a pool of
    at most B finished hypotheses, best first, each scored by float32 sum / float32(len **
    length_penalty) (len: its generated ids, `</s>` included), transformers' sequences_scores.
    Each step, with t the ids a hypothesis holds after it:
      * the K = 2B best (beam, token) extensions by float32 sum, ties to the lower flat
        (beam-major) index (transformers leaves torch.topk's tie order open);
      * a candidate stops with `</s>` or at t = max_new_tokens; the live beams are the B best that
        do not stop (transformers sinks the others by -1e9);
      * candidates ranked < B that stop enter the pool, which keeps its B best, ties to the one
        already there, then to the better ranked; -inf ones never enter (transformers' empty
        slots at -1e9 outrank them);
      * the search stops at t = max_new_tokens, or with `early_stopping` True once the pool is
        full, or once it is full and the best live sum / float32(n ** length_penalty) is not above
        its worst score, n = max_new_tokens with early_stopping "never" and length_penalty > 0,
        else t (`_check_early_stop_heuristic`, `_beam_search_has_unfinished_sequences`).
    Step 0 has one live row: transformers starts B copies of `<s>`, all but the first at -1e9,
    whose extensions (-1e9 in float32) never reach the K best while a row has K finite
    log-probabilities (vocabulary minus suppressed tokens >= 2B). Only with `forced_eos` at
    max_new_tokens 1 does it pad its n-best with those copies' `</s>` at -1e9; we return one.
    """

    def __init__(self, options: DecodingOptions, eos_id: int, rules: DecodingRules) -> None:
        self._options = options
        self._eos_id = eos_id
        self._rules = rules
        self._beams: list[tuple[list[int], np.float32]] = [([], np.float32(0.0))]
        self._pool: list[tuple[list[int], np.float32]] = []  # best first
        self._steps = 0
        self.done = False
        self.rows = 1

    def advance(self, step: StepScores, start: int) -> tuple[list[int], list[int]]:
        """-> parent rows, tokens of the next live beams (none once done)."""
        beam_size = self._options.beam_size
        candidates = self._candidates(self._sums(step, start))
        chosen = [c for c in candidates if not c.stops][:beam_size]
        self._enter_pool(candidates[:beam_size])
        self._beams = [(c.ids, c.score) for c in chosen]
        self.done = self._stops()
        if self.done:
            self._beams, chosen = [], []
        self.rows = len(self._beams)
        return [start + c.beam for c in chosen], [c.ids[-1] for c in chosen]

    def _sums(self, step: StepScores, start: int) -> np.ndarray:
        """Every extension's float32 sum of log-probabilities -> (R, V)."""
        sums = np.array([s for _, s in self._beams], dtype=np.float32)[:, None]  # (R, 1)
        logprobs = step.logprobs(start, start + self.rows)  # (R, V) float32
        if self._rules.forced_eos and self._steps + 1 == self._options.max_new_tokens:
            logprobs = np.full_like(logprobs, -np.inf)
            logprobs[:, self._eos_id] = 0.0
        scores: np.ndarray = sums + logprobs
        return scores

    def _candidates(self, scores: np.ndarray) -> list[_Candidate]:
        """The K = 2 * beam_size best extensions of `scores` (R, V), best first."""
        self._steps += 1
        count = 2 * self._options.beam_size
        vocab = scores.shape[1]
        candidates = []
        for flat in _ranked(scores, count)[:count]:
            beam, token = divmod(int(flat), vocab)
            stops = token == self._eos_id or self._steps >= self._options.max_new_tokens
            ids = [*self._beams[beam][0], token]
            candidates.append(_Candidate(beam, ids, scores[beam, token], stops))
        return candidates

    def _enter_pool(self, top: list[_Candidate]) -> None:
        """The stopping candidates among the B best join the pool, which keeps its B best."""
        length = np.float32(self._steps**self._options.length_penalty)
        entering = [(c.ids, c.score / length) for c in top if c.stops and np.isfinite(c.score)]
        merged = self._pool + entering
        self._pool = sorted(merged, key=lambda h: -float(h[1]))[: self._options.beam_size]

    def _stops(self) -> bool:
        """transformers' `_beam_search_has_unfinished_sequences`, negated, for one source."""
        full = len(self._pool) == self._options.beam_size
        if self._steps >= self._options.max_new_tokens or not self._beams:
            return True
        if full and self._rules.early_stopping is True:
            return True
        return full and not self._can_improve()

    def _can_improve(self) -> bool:
        """The early-stopping heuristic: the best live beam may still beat the worst finished."""
        penalty = self._options.length_penalty
        never = self._rules.early_stopping == "never" and penalty > 0.0
        length = self._options.max_new_tokens if never else self._steps
        best_possible = self._beams[0][1] / np.float32(length**penalty)
        return bool(best_possible > self._pool[-1][1])

    def committed(self) -> tuple[int, ...]:
        """The prefix every live beam and pooled hypothesis agrees on (the result will start
        with it); once done, the best hypothesis."""
        if self.done:
            return self.results()[0].ids
        return _common_prefix([ids for ids, _ in self._beams + self._pool])

    def results(self) -> tuple[Hypothesis, ...]:
        """The best `n_best` pooled hypotheses, best first, scored as sequences_scores."""
        best = self._pool[: self._options.n_best]
        return tuple(Hypothesis(tuple(ids), float(score)) for ids, score in best)


Search = GreedySearch | BeamSearch | TransformersBeamSearch


def make_search(options: DecodingOptions, eos_id: int, rules: DecodingRules = NO_RULES) -> Search:
    """Greedy search for beam size 1, else the beam search `rules` name."""
    if options.beam_size == 1:
        return GreedySearch(options, eos_id, rules)
    if rules.beam == "transformers":
        return TransformersBeamSearch(options, eos_id, rules)
    if rules.forced_eos:
        raise ValueError("forced_eos needs greedy search or beam 'transformers'")
    return BeamSearch(options, eos_id)
