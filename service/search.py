"""Per-segment search bookkeeping: greedy and beam search, one decoder step at a time.

The rules are those of `export/reference_decoder.py`, so outputs compare exactly:
  * decoding starts from `<s>`; a hypothesis ends with `</s>` or after `max_new_tokens` tokens;
  * greedy takes the argmax of the logits;
  * beam search ranks every (beam, token) extension by float32 sum of log-probabilities, highest
    first, ties to the lower beam then the lower token id, and walks the ranking: `</s>` makes a
    finished hypothesis, anything else a live beam, until `beam_size` live beams are chosen; it
    stops when `beam_size` hypotheses have finished, or after `max_new_tokens` steps, when the
    live beams are finished as they are; finished hypotheses are ranked by
    score / length ** length_penalty, stable on finishing order.

A search owns `rows` contiguous rows of the batch, starting at `start`: `advance` reads their
scores from the step's `StepScores` and returns, per next row, the batch row it continues and the
token it appends; no rows once done.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from service.types import DecodingOptions, Hypothesis


@dataclass(frozen=True)
class StepScores:
    """One decoder step's scores for every row of the batch, computed once.

    The log-softmax is that of the reference, shifted - log(sum(exp(shifted))) with shifted =
    logits - max, in float32, but only its parts are computed for the whole batch: greedy rows
    need just the log-probability of their argmax (where shifted is exactly 0: it is -lse), beam
    rows get their full rows from `logprobs`. Four passes over (B, V) instead of seven.
    """

    logits: np.ndarray  # (B, V) float32
    best: np.ndarray  # (B,) int64 argmax of the logits
    top: np.ndarray  # (B, 1) float32 max of the logits
    lse: np.ndarray  # (B, 1) float32 log(sum(exp(logits - top)))

    @classmethod
    def of(cls, logits: np.ndarray) -> StepScores:
        """From the step's logits (B, V)."""
        x = logits.astype(np.float32, copy=False)
        best = x.argmax(axis=-1)
        top = x[np.arange(len(x)), best][:, None]  # the max, read at the argmax
        shifted = np.subtract(x, top)
        lse = np.log(np.exp(shifted, out=shifted).sum(axis=-1, keepdims=True))
        return cls(x, best, top, lse)

    def best_logprob(self, row: int) -> float:
        """The log-probability of the argmax token of `row`."""
        return float(-self.lse[row, 0])

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


class GreedySearch:
    """One row; the next token is the argmax of the logits."""

    def __init__(self, options: DecodingOptions, eos_id: int) -> None:
        self._max_new_tokens = options.max_new_tokens
        self._eos_id = eos_id
        self._ids: list[int] = []
        self._logprob = 0.0
        self.done = False
        self.rows = 1

    def advance(self, scores: StepScores, start: int) -> tuple[list[int], list[int]]:
        """-> parent rows, tokens: one row continuing itself, or none once done."""
        token = int(scores.best[start])
        self._logprob += scores.best_logprob(start)
        self._ids.append(token)
        self.done = token == self._eos_id or len(self._ids) >= self._max_new_tokens
        self.rows = 0 if self.done else 1
        return ([], []) if self.done else ([start], [token])

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
        first = self._beams[0][0]
        agreed = 0
        while agreed < len(first) and all(
            len(ids) > agreed and ids[agreed] == first[agreed] for ids, _ in self._beams
        ):
            agreed += 1
        return tuple(first[:agreed])

    def results(self) -> tuple[Hypothesis, ...]:
        """The best `n_best` finished hypotheses, with normalized scores, best first."""
        penalty = self._options.length_penalty
        ranked = sorted(self._finished, key=lambda h: -h[1] / len(h[0]) ** penalty)
        return tuple(
            Hypothesis(tuple(ids), score / len(ids) ** penalty)
            for ids, score in ranked[: self._options.n_best]
        )


Search = GreedySearch | BeamSearch


def make_search(options: DecodingOptions, eos_id: int) -> Search:
    """Greedy search for beam size 1, beam search otherwise."""
    if options.beam_size == 1:
        return GreedySearch(options, eos_id)
    return BeamSearch(options, eos_id)
