"""The device KV operations (tiny ONNX graphs on a list of tensors, used on CUDA) agree with the
host ones (numpy on one stacked array); run here on CPU OrtValues, since the graphs are the same
on every device. The runner on both paths equals the reference decoder, and on toy sessions with
long, varied outputs it equals a decoder that gives every beam a cache of its own."""

from __future__ import annotations

import itertools

import numpy as np
import onnxruntime as ort
import pytest
from service_fakes import EOS, ToySessions

from service.bundle import load_bundle
from service.kv import StackedKV
from service.runner import Seq2SeqRunner
from service.search import StepScores, make_search
from service.sessions import OrtSessions, OrtValueKV
from service.tokenizer import load_tokenizer
from service.types import DecodingOptions, Hypothesis, SegmentJob, StepPlan

SPECIAL = {"pad": 0, "unk": 1, "bos": 2, "eos": EOS}


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
        lambda ops, a, b: ops.pad(a, 8),
        lambda ops, a, b: ops.pad(a, 5),
    ],
    ids=["take", "take-slots", "join", "join-padded", "join-zeros", "pad", "pad-none"],
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
    tokenizer = load_tokenizer(bundle)
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


Trace = list[tuple[bool, int]]  # per step: a wave joined, rows in the decoder step


def _decode(
    runner: Seq2SeqRunner,
    waves: dict[int, list[SegmentJob]],
    drops: dict[int, frozenset[int]] | None = None,
) -> tuple[dict[int, tuple[Hypothesis, ...]], Trace]:
    """Run `waves` (step -> segments that join) to the end -> (hypotheses by seq_id, trace)."""
    drops = drops or {}
    results: dict[int, tuple[Hypothesis, ...]] = {}
    trace: Trace = []
    for step in range(1000):
        admit = (runner.encode(waves[step]),) if step in waves else ()
        result = runner.step(StepPlan(admit=admit, drop=drops.get(step, frozenset())))
        trace.append((step in waves, result.rows))
        for update in result.updates:
            if update.hypotheses is not None:
                results[update.seq_id] = update.hypotheses
        if not runner.rows and step > max(waves):
            return results, trace
    raise AssertionError("did not finish")


def _toy_reference(job: SegmentJob) -> tuple[Hypothesis, ...]:
    """The segment decoded on its own, every live beam with a cache of its own (no batch)."""
    toy = ToySessions()
    src_ids, src_mask = np.array([job.src_ids]), np.ones((1, len(job.src_ids)), dtype=np.int64)
    cross = toy.encode(src_ids, src_mask)
    search = make_search(job.options, EOS)
    pasts = [toy.new_cache(cross, 1, 64)]  # per live row: its own cache
    tokens, position = [SPECIAL["bos"]], 0
    while not search.done:
        logits, presents = [], []
        for token, past in zip(tokens, pasts, strict=True):
            present = past.copy()
            row_logits = toy.decode(
                np.array([token]),
                np.array([position]),
                src_mask=src_mask,
                cache=present,
                cross=cross,
            )
            logits.append(row_logits.logits[0])
            presents.append(present)
        origins, tokens = search.advance(StepScores.of(np.stack(logits)), 0)
        pasts = [presents[origin] for origin in origins]
        position += 1
    return search.results()


def test_runner_with_waves_and_cancellations_equals_per_beam_caches():
    """Segments join in waves while others decode, finish or are cancelled, greedy and beam
    mixed; every segment decodes exactly as with a cache of its own per beam (toy sessions whose
    tokens depend on every unmasked slot of the row's cache, so a row reading another row's past,
    a stale slot or a wrong mask shows). The tiny bundle's outputs are 2 tokens long: it cannot
    show this."""
    rng = np.random.default_rng(3)
    greedy, beam = DecodingOptions(1, 40, 1.0, 1), DecodingOptions(3, 40, 0.8, 2)
    jobs = [
        SegmentJob(
            i, tuple(rng.integers(4, 60, size=rng.integers(2, 12))), beam if i % 5 == 4 else greedy
        )
        for i in range(40)
    ]
    waves: dict[int, list[SegmentJob]] = {}
    for job in jobs:
        waves.setdefault(int(rng.integers(0, 60)), []).append(job)
    joined_at = {job.seq_id: step for step, wave in waves.items() for job in wave}
    drops = {joined_at[seq_id] + 2: frozenset({seq_id}) for seq_id in (0, 9, 14)}
    batched, trace = _decode(Seq2SeqRunner(ToySessions(), SPECIAL), waves, drops)
    dropped = set().union(*drops.values())
    assert set(batched) == {job.seq_id for job in jobs} - dropped
    for job in jobs:
        if job.seq_id not in dropped:
            assert batched[job.seq_id] == _toy_reference(job), job
    steps = list(itertools.pairwise(trace))
    assert any(joined and before for (_, before), (joined, _) in steps), trace  # mid-batch
    assert any(not joined and 0 < rows < before for (_, before), (joined, rows) in steps), trace
    assert max(len(h[0].ids) for h in batched.values()) >= 20  # long outputs: rows overlap


def _logits_by_row(
    bundle_path, sources: list[tuple[int, ...]], joins: list[int], threads: int
) -> dict[int, list[np.ndarray]]:
    """Greedy rows through the runner on the bundle, row i joining at step joins[i] -> the
    logits of each row's own steps."""
    bundle = load_bundle(bundle_path)
    sessions = OrtSessions(bundle, "cpu", threads)
    runner = Seq2SeqRunner(sessions, bundle.manifest.special_tokens)
    options = DecodingOptions(1, 12, 1.0, 1)
    jobs = [SegmentJob(i, src, options) for i, src in enumerate(sources)]
    seen: dict[int, list[np.ndarray]] = {i: [] for i in range(len(jobs))}
    decode = sessions.decode

    def recording(tokens, past_lengths, **kwargs):
        step = decode(tokens, past_lengths, **kwargs)
        assert runner._batch is not None
        for row, seq_id in enumerate(runner._batch.seq_of_row):
            seen[int(seq_id)].append(step.logits[row].copy())
        return step

    sessions.decode = recording  # type: ignore[method-assign]
    for step in itertools.count():
        joining = [job for job, at in zip(jobs, joins, strict=True) if at == step]
        runner.step(StepPlan(admit=(runner.encode(joining),) if joining else ()))
        if not runner.rows and step >= max(joins):
            return seen
    raise AssertionError("unreachable")


@pytest.mark.parametrize("threads", [1, 2])
def test_a_row_gives_bit_identical_logits_alone_and_in_any_batch(service_bundle, threads):
    """Sources of every length mod 4, 3 mod 4 among them (ONNX Runtime's cross-attention is
    not padding-invariant there unless the source slots are rounded up: runner.SOURCE_SLOTS),
    joined at once and one by one: the logits equal those of the row alone, bit for bit."""
    tokenizer = load_tokenizer(load_bundle(service_bundle))
    texts = ["forty-two", "Good morning.", "See you at 10.", "I have 3 cats and 12 dogs."]
    sources = [tuple(tokenizer.encode_source(t, lang)) for t in texts for lang in ("de", "fr")]
    longest = max(sources, key=len)
    sources += [longest[:n] + longest[-1:] for n in range(2, len(longest) - 1)]
    assert {len(src) % 4 for src in sources} == {0, 1, 2, 3} and len(longest) >= 8
    alone = {
        i: _logits_by_row(service_bundle, [src], [0], threads)[0] for i, src in enumerate(sources)
    }
    for joins in ([0] * len(sources), list(range(len(sources)))):
        together = _logits_by_row(service_bundle, sources, joins, threads)
        for i in range(len(sources)):
            assert len(together[i]) == len(alone[i])
            for ours, theirs in zip(together[i], alone[i], strict=True):
                np.testing.assert_array_equal(ours, theirs)
