"""Settings from TRANSLATOR_* variables, each bounded; search and batching helpers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from service.runner import _length_groups
from service.search import BeamSearch, StepScores, _ranked
from service.settings import ServiceSettings
from service.types import DecodingOptions


def test_reads_prefixed_environment(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("TRANSLATOR_PORT", "6000")
    monkeypatch.setenv("TRANSLATOR_DEVICE", "cpu")
    monkeypatch.setenv("TRANSLATOR_MAX_ACTIVE_ROWS", "1")
    monkeypatch.setenv("TRANSLATOR_REFLECTION", "false")
    settings = ServiceSettings()
    assert (settings.port, settings.device, settings.max_active_rows) == (6000, "cpu", 1)
    assert settings.reflection is False


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("PORT", "70000"),
        ("MAX_ACTIVE_ROWS", "0"),
        ("DEVICE", "tpu"),
        ("GRACE_PERIOD_S", "-1"),
        ("CPU_PARALLELISM", "threads"),
    ],
)
def test_out_of_bounds_values_are_refused(monkeypatch: pytest.MonkeyPatch, name, value):
    monkeypatch.setenv(f"TRANSLATOR_{name}", value)
    with pytest.raises(ValidationError, match=name.lower()):
        ServiceSettings()


def test_every_field_is_documented():
    source = Path(ServiceSettings.__module__.replace(".", "/") + ".py").read_text()
    for name in ServiceSettings.model_fields:
        block = source.split(f"\n    {name}:", 1)[1]
        assert block.split("\n", 2)[1].strip().startswith('"""'), name


def test_ranked_is_a_stable_argsort_head_with_ties():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 5, size=(3, 40)).astype(np.float32)  # many ties
    full = np.argsort(-scores, axis=None, kind="stable")
    for count in (1, 4, 8, 200):
        head = _ranked(scores, count)
        assert list(head[:count]) == list(full[:count])


def test_step_scores_equal_the_reference_log_softmax_bit_for_bit():
    from export.reference_decoder import log_softmax

    rng = np.random.default_rng(1)
    for scale in (0.1, 1.0, 30.0):
        logits = (rng.standard_normal((6, 257)) * scale).astype(np.float32)
        scores, expected = StepScores.of(logits), log_softmax(logits)
        assert np.array_equal(scores.logprobs(0, 6), expected)
        assert np.array_equal(scores.logprobs(2, 5), expected[2:5])
        assert scores.best_ids == list(logits.argmax(axis=-1))
        for row, token in enumerate(scores.best_ids):
            assert scores.best_logprobs[row] == float(expected[row, token])


def test_beam_search_stops_when_beam_size_hypotheses_finished():
    options = DecodingOptions(beam_size=2, max_new_tokens=10, length_penalty=1.0, n_best=2)
    search = BeamSearch(options, eos_id=3)
    logits = np.full((1, 6), -10.0, dtype=np.float32)
    logits[0, 3], logits[0, 4], logits[0, 5] = 0.0, -0.1, -0.2  # </s> best, then 4, then 5
    parents, tokens = search.advance(StepScores.of(logits), 0)
    assert (parents, tokens) == ([0, 0], [4, 5])  # </s> finished; two live beams
    logits = np.full((2, 6), -10.0, dtype=np.float32)
    logits[:, 3] = 0.0
    parents, tokens = search.advance(StepScores.of(logits), 0)
    assert search.done and parents == []
    # the walk stops at the second </s>: (3,) and (4, 3) finished; ranked by score / length
    assert [h.ids for h in search.results()] == [(4, 3), (3,)]


def test_length_groups_keep_encoder_padding_small():
    assert _length_groups([3]) == [(0, 1)]
    assert _length_groups([3, 4, 4, 5, 9, 10, 30]) == [(0, 3), (3, 4), (4, 6), (6, 7)]
