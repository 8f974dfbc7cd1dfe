"""The device KV operations (tiny ONNX graphs on a list of tensors, used on CUDA) agree with the
host ones (numpy on one stacked array); run here on CPU OrtValues, since the graphs are the same
on every device. The runner on both paths equals the reference decoder."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from service.bundle import load_bundle
from service.kv import StackedKV
from service.runner import Seq2SeqRunner
from service.sessions import OrtSessions, OrtValueKV
from service.tokenizer import SourceTokenizer
from service.types import DecodingOptions, SegmentJob, StepPlan


def _kv(rng: np.random.Generator, rows: int, length: int) -> list[np.ndarray]:
    return [rng.standard_normal((rows, 2, length, 3)).astype(np.float32) for _ in range(4)]


def _device(kv: list[np.ndarray]) -> list[ort.OrtValue]:
    return [ort.OrtValue.ortvalue_from_numpy(x) for x in kv]


def _host(kv: list[ort.OrtValue]) -> list[np.ndarray]:
    return [x.numpy() for x in kv]


@pytest.mark.parametrize(
    "op",
    [
        lambda ops, a, b: ops.take(a, np.array([2, 0, 0]), 0, 5),
        lambda ops, a, b: ops.take(a, np.array([1, 2]), 1, 4),
        lambda ops, a, b: ops.join(a, b, 5),
        lambda ops, a, b: ops.join(a, b, 7),
        lambda ops, a, b: ops.join(a, ops.zeros(a, 2, 0), 5),
    ],
    ids=["take", "take-slots", "join", "join-padded", "join-zeros"],
)
def test_device_ops_match_numpy(op):
    rng = np.random.default_rng(0)
    a, b = _kv(rng, 3, 5), _kv(rng, 2, 5)
    expected = op(StackedKV(), np.stack(a), np.stack(b))  # (2L, B, H, L, Dh)
    got = _host(op(OrtValueKV(device="cpu"), _device(a), _device(b)))
    assert len(got) == len(expected)
    for x, y in zip(got, expected, strict=True):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("io_binding", [False, True], ids=["host", "device-kv"])
def test_runner_with_staggered_joins_equals_reference(service_bundle, reference, io_binding):
    """Rows join at different steps, greedy and beam rows mixed; on the host path (one stacked
    numpy cache) and on the device-KV path that CUDA uses (here on CPU OrtValues)."""
    bundle = load_bundle(service_bundle)
    manifest = bundle.manifest
    sessions = OrtSessions(bundle, "cpu", 1, io_binding=io_binding)
    runner = Seq2SeqRunner(sessions, manifest.special_tokens)
    tokenizer = SourceTokenizer(bundle.tokenizer_path, manifest.languages, manifest.special_tokens)
    texts = ["Good morning.", "forty-two", "I have 3 cats and 12 dogs.", "See you at 10."]
    sources = [tuple(tokenizer.encode_source(t, lang)) for t in texts for lang in ("de", "fr")]
    greedy = DecodingOptions(1, 40, 1.0, 1)
    beam = DecodingOptions(3, 40, 0.6, 2)
    jobs = [SegmentJob(i, src, beam if i % 3 == 0 else greedy) for i, src in enumerate(sources)]
    results = {}
    for step in range(200):
        joining = jobs[step : step + 1]  # one new segment joins at every step
        admit = (runner.encode(joining),) if joining else ()
        for update in runner.step(StepPlan(admit=admit)).updates:
            if update.hypotheses is not None:
                results[update.seq_id] = update.hypotheses
        if not runner.rows and step >= len(jobs):
            break
    assert len(results) == len(jobs)
    for job in jobs:
        if job.options.beam_size == 1:
            expected = [tuple(reference.greedy([list(job.src_ids)], 40)[0])]
        else:
            found = reference.beam_search(list(job.src_ids), 3, 40, 0.6, 2)
            expected = [tuple(ids) for ids, _ in found]
        assert [h.ids for h in results[job.seq_id]] == expected
