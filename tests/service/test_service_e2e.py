"""End to end on the tiny bundle: the service says exactly what the reference decoder says,
batching never changes a result, a short request overtakes long ones, metrics add up."""

from __future__ import annotations

import asyncio
import subprocess
import time

import grpc
import pytest
from service_fakes import FakeRunner
from service_harness import ServerThread, promtool, stub, translate_request

from model.corpus import Corpus
from service.pb.translator.v1 import translator_pb2 as pb
from service.pb.translator.v1 import translator_pb2_grpc as pb_grpc
from service.tokenizer import load_tokenizer
from service.types import TextTokenizer

LANGUAGES = ("de", "fr", "es", "it")


@pytest.fixture(scope="module")
def sentences(tiny_corpus: Corpus) -> list[tuple[str, str]]:
    """(text, target language) pairs from the test split."""
    pairs = tiny_corpus.test[:64]
    return [(p.source, LANGUAGES[i % len(LANGUAGES)]) for i, p in enumerate(pairs)]


@pytest.fixture(scope="module")
def tokenizer(server: ServerThread) -> TextTokenizer:
    from service.bundle import load_bundle

    return load_tokenizer(load_bundle(server.settings.bundle_path))


async def _translate_all(
    address: str, sentences: list[tuple[str, str]], **options: int | float
) -> list[pb.SegmentTranslation]:
    """Every sentence as its own request, all at once, from one client each."""

    async def one(text: str, lang: str) -> pb.SegmentTranslation:
        async with grpc.aio.insecure_channel(address) as channel:
            translator = pb_grpc.TranslatorStub(channel)
            reply = await translator.Translate(
                translate_request([text], lang, **options), timeout=120
            )
            translation: pb.SegmentTranslation = reply.translations[0]
            return translation

    return list(await asyncio.gather(*(one(text, lang) for text, lang in sentences)))


def _one_at_a_time(
    address: str, sentences: list[tuple[str, str]], **options: int | float
) -> list[pb.SegmentTranslation]:
    channel, translator = stub(address)
    with channel:
        return [
            translator.Translate(translate_request([t], lang, **options), timeout=60).translations[
                0
            ]
            for t, lang in sentences
        ]


def _same(ours: pb.SegmentTranslation, theirs: pb.SegmentTranslation) -> None:
    """Texts and token counts exactly; scores to float32 rounding (batch shapes change the
    order of float additions, never the chosen tokens)."""
    assert [(h.text, h.token_count) for h in ours.hypotheses] == [
        (h.text, h.token_count) for h in theirs.hypotheses
    ]
    for a, b in zip(ours.hypotheses, theirs.hypotheses, strict=True):
        assert a.score == pytest.approx(b.score, rel=1e-5, abs=1e-5)


def test_greedy_equals_the_reference_decoder(server, reference, tokenizer, sentences):
    channel, translator = stub(server.address)
    with channel:
        for lang in LANGUAGES:
            texts = [t for t, target in sentences if target == lang]
            request = translate_request(texts, lang, max_output_tokens=128)
            reply = translator.Translate(request, timeout=60)
            sources = [tokenizer.encode_source(t, lang) for t in texts]
            expected = reference.greedy(sources, 128)
            assert [t.text for t in reply.translations] == [tokenizer.decode(e) for e in expected]
            assert [t.token_count for t in reply.translations] == [len(e) for e in expected]


@pytest.mark.parametrize("case", [(4, 1.0, 2), (3, 0.6, 3)], ids=["b4-lp1-n2", "b3-lp.6-n3"])
def test_beam_search_equals_the_reference_decoder(server, reference, tokenizer, sentences, case):
    beam, penalty, n_best = case
    channel, translator = stub(server.address)
    options = {"beam_size": beam, "length_penalty": penalty, "n_best": n_best}
    options["max_output_tokens"] = 128
    with channel:
        for text, lang in sentences[:12]:
            reply = translator.Translate(translate_request([text], lang, **options), timeout=60)
            expected = reference.beam_search(
                tokenizer.encode_source(text, lang), beam, 128, penalty, n_best
            )
            got = reply.translations[0].hypotheses
            assert [h.text for h in got] == [tokenizer.decode(ids) for ids, _ in expected]
            assert [h.score for h in got] == pytest.approx([s for _, s in expected], rel=1e-5)


@pytest.mark.parametrize("options", [{}, {"beam_size": 3, "n_best": 2}], ids=["greedy", "beam"])
def test_64_concurrent_clients_get_what_they_get_alone(server, sentences, options):
    alone = _one_at_a_time(server.address, sentences, **options)
    rows_before = server.sample("translator_batch_rows_sum")
    steps_before = server.sample("translator_batch_rows_count")
    together = asyncio.run(_translate_all(server.address, sentences, **options))
    for ours, theirs in zip(together, alone, strict=True):
        _same(ours, theirs)
    rows = server.sample("translator_batch_rows_sum") - rows_before
    steps = server.sample("translator_batch_rows_count") - steps_before
    assert rows / steps > 2  # they really were batched


def test_short_request_finishes_while_long_ones_decode(server):
    """Through the real gRPC stack, with a fake model whose output lengths are known: sources of
    more than 8 tokens translate to 100 tokens, shorter ones to 1, one step per token."""
    long_text = "one two three four five six seven eight nine"
    channel, translator = stub(server.address)
    with channel, server.replaced_runner(FakeRunner(step_seconds=0.005, long_sources=8)):
        calls = [
            translator.Translate.future(
                translate_request([long_text], lang, max_output_tokens=128), timeout=60
            )
            for lang in LANGUAGES
        ]
        time.sleep(0.05)  # the long ones are decoding
        short = translator.Translate(translate_request(["Hi."], "de"), timeout=60)
        assert not any(call.done() for call in calls)
        assert short.translations[0].token_count == 2
        assert all(call.result().translations[0].token_count == 101 for call in calls)


def test_metrics_pass_promtool_and_match_client_tallies(service_bundle, sentences):
    running = ServerThread(service_bundle).start()
    try:
        channel, translator = stub(running.address)
        tally = {"OK": 0, "INVALID_ARGUMENT": 0}
        inputs = outputs = 0
        with channel:
            for i, (text, lang) in enumerate(sentences[:20]):
                reply = translator.Translate(translate_request([text], lang), timeout=60)
                tally["OK"] += 1
                inputs += reply.translations[0].source_token_count
                outputs += reply.translations[0].token_count
                if i % 4 == 0:
                    with pytest.raises(grpc.RpcError):
                        translator.Translate(translate_request([" "], lang), timeout=60)
                    tally["INVALID_ARGUMENT"] += 1
            messages = list(
                translator.TranslateStream(
                    pb.TranslateStreamRequest(text=b"Good night.", target_language="fr"), timeout=60
                )
            )
            inputs += messages[-1].final.source_token_count
            outputs += messages[-1].final.token_count
        time.sleep(0.05)
        text = running.scrape()
    finally:
        running.stop()
    checked = subprocess.run(
        [str(promtool()), "check", "metrics"], input=text, capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    for code, count in tally.items():
        labels = {"method": "Translate", "code": code}
        assert running.sample("translator_requests_total", labels) == count
    stream_ok = {"method": "TranslateStream", "code": "OK"}
    assert running.sample("translator_requests_total", stream_ok) == 1
    duration = {"method": "Translate"}
    assert running.sample("translator_request_duration_seconds_count", duration) == sum(
        tally.values()
    )
    assert running.sample("translator_input_tokens_total") == inputs
    assert running.sample("translator_output_tokens_total") == outputs
    invalid = {"reason": "invalid_argument"}
    assert running.sample("translator_rejections_total", invalid) == tally["INVALID_ARGUMENT"]
    assert running.sample("translator_queue_wait_seconds_count") == tally["OK"] + 1
    assert 'translator_build_info{model="' in text and 'provider="CPUExecutionProvider"' in text
