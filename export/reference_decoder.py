"""A reference decoder on ONNX Runtime alone: greedy and beam search over a bundle.

Small and clear rather than fast: the parity gate and the service's tests compare against it.
It never imports torch.

Search semantics (the service's runner follows the same rules, so outputs can be compared exactly):
  * Decoding starts from `<s>` at position 0; a hypothesis ends with `</s>` or at `max_new_tokens`.
  * Scores are sums of log-probabilities: log-softmax in float32 over the logits, (logits - top)
    - lse with top and lse as the decoder-step graph computes them (`service.scoring_graph`),
    the very values the service takes.
  * Beam search keeps `beam_size` live hypotheses. At each step it ranks all (beam, token)
    extensions by score, highest first, ties to the lower beam index then the lower token id,
    and walks the ranking: an extension ending in `</s>` becomes a finished hypothesis, any
    other one a live beam, until `beam_size` live beams are chosen. Search stops when
    `beam_size` hypotheses have finished or after `max_new_tokens` steps, when the live beams
    are finished as they are. Finished hypotheses are ranked by score / length ** length_penalty
    (length = generated tokens, `</s>` included), stable on finishing order, and the best
    `n_best` are returned.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from service.bundle import Bundle, decoder_output_names, encoder_output_names
from service.runner import pad_right, source_width
from service.scoring_graph import OUTPUTS as SCORE_OUTPUTS
from service.scoring_graph import scored_decoder
from service.search import StepLogits
from service.sessions import open_session

KVList = list[np.ndarray]  # flat: layer 0 key, layer 0 value, layer 1 key, ...


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax in float32; logits (B, V)."""
    x = logits.astype(np.float32)
    shifted = x - x.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


@dataclass
class Encoded:
    """Encoder output for a batch of sources."""

    src_mask: np.ndarray  # (B, S) int64
    cross: KVList  # 2L x (B, H, S, Dh)

    def take(self, rows: np.ndarray) -> Encoded:
        return Encoded(self.src_mask[rows], [kv[rows] for kv in self.cross])


class ReferenceDecoder:
    """Greedy and beam search on the bundle's two graphs with ONNX Runtime's CPU provider."""

    def __init__(self, bundle: Bundle, threads: int = 1) -> None:
        # the service's own session settings, so both run the very same optimized graphs
        self.encoder = open_session(str(bundle.encoder_path), "cpu", threads)
        path = str(bundle.decoder_path)
        self.decoder = open_session(path, "cpu", threads, scored_decoder(path))
        manifest = bundle.manifest
        self.n_layers = manifest.n_layers
        self.kv_shape = (manifest.n_heads, manifest.head_dim)
        self.float_dtype = np.dtype(manifest.float_dtype)
        tokens = manifest.special_tokens
        self.pad_id, self.bos_id, self.eos_id = tokens["pad"], tokens["bos"], tokens["eos"]

    def encode(self, src_ids: list[list[int]]) -> Encoded:
        # as the service pads: a row's results are then the same alone and in any batch
        ids, mask = pad_right(src_ids, self.pad_id, source_width(max(map(len, src_ids))))
        cross = self.encoder.run(
            encoder_output_names(self.n_layers), {"input_ids": ids, "attention_mask": mask}
        )
        return Encoded(mask, list(cross))

    def empty_past(self, batch: int, capacity: int) -> KVList:
        """A self-attention cache 2L x (B, H, M, Dh) of `capacity` slots, none in use."""
        shape = (batch, self.kv_shape[0], capacity, self.kv_shape[1])
        return [np.zeros(shape, dtype=self.float_dtype) for _ in range(2 * self.n_layers)]

    def step(
        self,
        tokens: np.ndarray,
        past_lengths: np.ndarray,
        encoded: Encoded,
        past: KVList,
    ) -> tuple[np.ndarray, KVList]:
        """One decoder step: tokens (B,), row b's at position past_lengths[b] over its past in
        the slots [0, past_lengths[b]) of `past` -> logits (B, V) and the cache with slot
        past_lengths[b] written (a copy here: no buffer is shared)."""
        step, present = self.scored_step(tokens, past_lengths, encoded, past)
        return step.logits, present

    def scored_step(
        self,
        tokens: np.ndarray,
        past_lengths: np.ndarray,
        encoded: Encoded,
        past: KVList,
    ) -> tuple[StepLogits, KVList]:
        """`step`, with the reductions of the logits that the graph computes."""
        lengths = past_lengths.astype(np.int32)
        feed = {
            "input_ids": tokens.astype(np.int64),
            "past_lengths": lengths,
            "total_length": np.array(lengths.max() + 1, dtype=np.int32),
            "encoder_attention_mask": encoded.src_mask,
        }
        for i in range(self.n_layers):
            feed[f"past_key_values.{i}.decoder.key"] = past[2 * i]
            feed[f"past_key_values.{i}.decoder.value"] = past[2 * i + 1]
            feed[f"past_key_values.{i}.encoder.key"] = encoded.cross[2 * i]
            feed[f"past_key_values.{i}.encoder.value"] = encoded.cross[2 * i + 1]
        names = [*decoder_output_names(self.n_layers), *SCORE_OUTPUTS]
        logits, *present, best, top, lse = self.decoder.run(names, feed)
        return StepLogits(logits, best, top, lse), list(present)

    def uniform_step(
        self, tokens: np.ndarray, step: int, encoded: Encoded, past: KVList
    ) -> tuple[StepLogits, KVList]:
        """A step for rows that all have `step` past slots."""
        return self.scored_step(tokens, np.full(tokens.shape[0], step), encoded, past)

    def greedy(self, src_ids: list[list[int]], max_new_tokens: int) -> list[list[int]]:
        """Greedy search; per row the ids after `<s>`, ending with `</s>` unless cut."""
        encoded = self.encode(src_ids)
        batch = len(src_ids)
        past = self.empty_past(batch, max(1, max_new_tokens))
        tokens = np.full(batch, self.bos_id, dtype=np.int64)
        outputs: list[list[int]] = [[] for _ in range(batch)]
        done = np.zeros(batch, dtype=bool)
        for step in range(max_new_tokens):
            scored, past = self.uniform_step(tokens, step, encoded, past)
            assert scored.best is not None
            tokens = scored.best
            for row in np.flatnonzero(~done):
                outputs[row].append(int(tokens[row]))
            done |= tokens == self.eos_id
            if done.all():
                break
        return outputs

    def beam_search(
        self,
        src_ids: list[int],
        beam_size: int,
        max_new_tokens: int,
        length_penalty: float = 1.0,
        n_best: int = 1,
    ) -> list[tuple[list[int], float]]:
        """Beam search for one source; the best `n_best` (ids, normalized score), best first."""
        encoded = self.encode([src_ids])
        beams: list[tuple[list[int], float]] = [([], 0.0)]  # generated ids, log-prob sum
        past = self.empty_past(1, max(1, max_new_tokens))
        finished: list[tuple[list[int], float]] = []
        for step in range(max_new_tokens):
            rows = np.zeros(len(beams), dtype=np.int64)
            last = np.array([ids[-1] if ids else self.bos_id for ids, _ in beams], dtype=np.int64)
            scored, past = self.uniform_step(last, step, encoded.take(rows), past)
            assert scored.top is not None and scored.lse is not None
            logprobs = (scored.logits.astype(np.float32) - scored.top) - scored.lse
            scores = np.array([s for _, s in beams], dtype=np.float32)[:, None] + logprobs
            order = np.argsort(-scores, axis=None, kind="stable")  # beam-major, then token id
            chosen: list[tuple[list[int], float]] = []
            origins: list[int] = []
            vocab = scores.shape[1]
            for flat in order:
                beam, token = divmod(int(flat), vocab)
                hypothesis = (beams[beam][0] + [token], float(scores[beam, token]))
                if token == self.eos_id:
                    finished.append(hypothesis)
                else:
                    chosen.append(hypothesis)
                    origins.append(beam)
                if len(chosen) == beam_size or len(finished) >= beam_size:
                    break
            if len(finished) >= beam_size or not chosen:
                break
            beams = chosen
            past = [kv[np.array(origins)] for kv in past]
        else:
            finished.extend(beams)
        ranked = sorted(finished, key=lambda h: -h[1] / len(h[0]) ** length_penalty)
        return [(ids, score / len(ids) ** length_penalty) for ids, score in ranked[:n_best]]
