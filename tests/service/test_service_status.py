"""A real server on 127.0.0.1:0: health, reflection, metadata and one status code per case."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from service_fakes import FakeRunner
from service_harness import ServerThread, stub, translate_request

from service.pb.translator.v1 import translator_pb2 as pb
from service.pb.translator.v1 import translator_pb2_grpc as pb_grpc

INVALID = grpc.StatusCode.INVALID_ARGUMENT


def _code(call) -> grpc.StatusCode:
    try:
        call()
    except grpc.RpcError as error:
        return error.code()
    return grpc.StatusCode.OK


def test_health_liveness_readiness_and_unknown(server: ServerThread):
    with grpc.insecure_channel(server.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for name in ("", "translator.v1.Translator"):
            reply = health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as error:
            health.Check(health_pb2.HealthCheckRequest(service="nope"), timeout=5)
        assert error.value.code() == grpc.StatusCode.NOT_FOUND


def test_reflection_lists_the_services(server: ServerThread):
    with grpc.insecure_channel(server.address) as channel:
        services = set(ProtoReflectionDescriptorDatabase(channel).get_services())
    assert {"translator.v1.Translator", "grpc.health.v1.Health"} <= services


def test_list_languages_reports_model_and_limits(server: ServerThread):
    channel, translator = stub(server.address)
    with channel:
        info = translator.ListLanguages(pb.ListLanguagesRequest(), timeout=5)
    assert info.source_language == "en"
    assert list(info.target_languages) == sorted(info.target_languages)
    assert info.provider == "CPUExecutionProvider"
    assert info.limits.max_segments == server.settings.max_segments
    assert info.limits.max_source_tokens > 0


def test_translate_answers_every_segment(server: ServerThread):
    channel, translator = stub(server.address)
    with channel:
        info = translator.ListLanguages(pb.ListLanguagesRequest(), timeout=5)
        reply = translator.Translate(
            translate_request(["Good morning.", "forty-two"], info.target_languages[0]), timeout=30
        )
    assert len(reply.translations) == 2
    assert reply.model_name == info.model_name
    for translation in reply.translations:
        assert translation.hypotheses[0].text == translation.text
        assert translation.token_count >= 1
        assert translation.source_token_count >= 3


def test_stream_sends_partials_then_the_unary_result(server: ServerThread):
    channel, translator = stub(server.address)
    with channel:
        lang = translator.ListLanguages(pb.ListLanguagesRequest(), timeout=5).target_languages[0]
        text = "The weather is nice today."
        messages = list(
            translator.TranslateStream(
                pb.TranslateStreamRequest(text=text.encode(), target_language=lang), timeout=30
            )
        )
        unary = translator.Translate(translate_request([text], lang), timeout=30)
    assert messages[-1].HasField("final")
    assert all(m.HasField("partial") for m in messages[:-1])
    assert messages[-1].final == unary.translations[0]
    counts = [m.partial.token_count for m in messages[:-1]]
    assert counts == sorted(counts)


@pytest.mark.parametrize(
    ("segments", "to", "options", "message"),
    [
        ([""], "de", {}, "segments[0]: empty or blank"),
        (["ok", " \t\u00a0 "], "de", {}, "segments[1]: empty or blank"),
        ([b"caf\xc3\xa9 \xff"], "de", {}, "segments[0]: not valid UTF-8"),
        ([], "de", {}, "none given"),
        (["a"] * 33, "de", {}, "33 given, limit max_segments=32"),
        (["word " * 400], "de", {}, "limit max_source_tokens="),
        (["hello"], "xx", {}, "'xx' is not supported; supported: "),
        (["hello"], "de", {"beam_size": 9}, "options.beam_size 9 out of range [1, 8]"),
        (["hello"], "de", {"beam_size": -1}, "options.beam_size -1 out of range"),
        (["hello"], "de", {"beam_size": 2, "n_best": 3}, "options.n_best 3 out of range [1, 2]"),
        (["hello"], "de", {"max_output_tokens": 100000}, "options.max_output_tokens 100000"),
        (["hello"], "de", {"length_penalty": 2.5}, "options.length_penalty 2.5 out of range"),
    ],
)
def test_invalid_argument_names_the_limit_and_the_value(
    server: ServerThread, segments, to, options, message
):
    channel, translator = stub(server.address)
    with channel, pytest.raises(grpc.RpcError) as error:
        translator.Translate(translate_request(segments, to, **options), timeout=10)
    assert error.value.code() == INVALID
    assert message in error.value.details()


def test_unsupported_source_language(server: ServerThread):
    channel, translator = stub(server.address)
    request = translate_request(["hello"], "de")
    request.source_language = "fr"
    with channel, pytest.raises(grpc.RpcError) as error:
        translator.Translate(request, timeout=10)
    assert error.value.code() == INVALID
    assert "this model translates from 'en'" in error.value.details()


def test_malformed_bytes_and_bad_utf8_in_string_fields_are_invalid_argument(server: ServerThread):
    bad_language = b"\x12\x02\xff\xfe"  # field 2 (target_language, string): invalid UTF-8
    truncated = b"\x0a\x10abc"  # field 1 claims 16 bytes, has 3
    with grpc.insecure_channel(server.address) as channel:
        raw = channel.unary_unary("/translator.v1.Translator/Translate")
        for payload in (bad_language, truncated):
            with pytest.raises(grpc.RpcError) as error:
                raw(payload, timeout=10)
            assert error.value.code() == INVALID
            assert "not a valid message" in error.value.details()
        stream = channel.unary_stream("/translator.v1.Translator/TranslateStream")
        with pytest.raises(grpc.RpcError) as error:
            list(stream(bad_language, timeout=10))
        assert error.value.code() == INVALID


def test_message_over_the_size_limit_is_resource_exhausted(server: ServerThread):
    channel, translator = stub(server.address)
    big = "x" * (server.settings.max_message_bytes + 10)
    with channel:
        code = _code(lambda: translator.Translate(translate_request([big], "de"), timeout=10))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_runtime_failure_is_internal_and_the_next_request_succeeds(server: ServerThread):
    calls = []

    def fail_once(step, plan):
        calls.append(plan)
        if len(calls) == 1:
            raise RuntimeError("injected: /secret/path at 0xdeadbeef")
        return step(plan)

    internal = {"method": "Translate", "code": "INTERNAL"}
    before = server.sample("translator_requests_total", internal)
    channel, translator = stub(server.address)
    with channel, server.patched_step(fail_once):
        with pytest.raises(grpc.RpcError) as error:
            translator.Translate(translate_request(["hello"], "de"), timeout=10)
        failed_at = time.monotonic()
        assert error.value.code() == grpc.StatusCode.INTERNAL
        assert error.value.details() == "the model failed while decoding this request"
        assert translator.Translate(translate_request(["hello"], "de"), timeout=10)
        assert time.monotonic() - failed_at < 1.0
    assert server.sample("translator_requests_total", internal) == before + 1


@pytest.fixture(scope="module")
def narrow_server(service_bundle) -> ServerThread:
    """One row and two queue places: overload is easy to reach."""
    running = ServerThread(service_bundle, max_active_rows=1, max_queued_requests=2).start()
    yield running
    running.stop()


FAKE_LONG = "one two three four five six seven eight nine"  # > 8 tokens: 100 fake steps
LONG = "The quick brown fox jumps over the lazy dog, and then it runs far away into the woods."


def test_full_queue_is_resource_exhausted_at_once_and_nothing_is_lost(narrow_server: ServerThread):
    async def call(translator: pb_grpc.TranslatorStub) -> tuple[grpc.StatusCode, float]:
        start = time.perf_counter()
        try:
            await translator.Translate(translate_request([LONG], "de"), timeout=60)
        except grpc.aio.AioRpcError as error:
            return error.code(), time.perf_counter() - start
        return grpc.StatusCode.OK, time.perf_counter() - start

    async def burst() -> list[tuple[grpc.StatusCode, float]]:
        async with grpc.aio.insecure_channel(narrow_server.address) as channel:
            translator = pb_grpc.TranslatorStub(channel)
            await translator.ListLanguages(pb.ListLanguagesRequest(), timeout=5)  # connected
            return await asyncio.gather(*(call(translator) for _ in range(32)))

    outcomes = asyncio.run(burst())
    codes = [code for code, _ in outcomes]
    assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}
    assert 1 <= codes.count(grpc.StatusCode.OK) < len(codes)
    ok = codes.count(grpc.StatusCode.OK)
    assert (
        narrow_server.sample("translator_requests_total", {"method": "Translate", "code": "OK"})
        >= ok
    )


def test_full_queue_answers_within_50_ms(narrow_server: ServerThread):
    channel, translator = stub(narrow_server.address)
    with channel:
        translator.ListLanguages(pb.ListLanguagesRequest(), timeout=5)
        # a fake model, 10 ms a step: the row and the two queue places stay taken for 1 s
        with narrow_server.replaced_runner(FakeRunner(step_seconds=0.01, long_sources=8)):
            held = [
                translator.Translate.future(
                    translate_request([FAKE_LONG], "de", max_output_tokens=128), timeout=60
                )
            ]
            time.sleep(0.02)
            held += [
                translator.Translate.future(translate_request([w], "de"), timeout=60) for w in "ab"
            ]
            time.sleep(0.02)
            for _ in range(10):
                start = time.perf_counter()
                request = translate_request(["x"], "de")
                code = _code(lambda: translator.Translate(request, timeout=5))  # noqa: B023
                assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
                assert time.perf_counter() - start < 0.05
        assert all(call.result() for call in held)


def test_deadline_in_queue_is_deadline_exceeded_and_never_run(narrow_server: ServerThread):
    channel, translator = stub(narrow_server.address)
    with channel, narrow_server.replaced_runner(FakeRunner(step_seconds=0.01, long_sources=8)):
        long_call = translator.Translate.future(
            translate_request([FAKE_LONG], "de", max_output_tokens=128), timeout=60
        )
        time.sleep(0.03)  # the long request holds the only row
        tokens_before = narrow_server.sample("translator_input_tokens_total")
        labels = {"reason": "deadline_exceeded"}
        expired = narrow_server.sample("translator_rejections_total", labels)
        start = time.perf_counter()
        code = _code(lambda: translator.Translate(translate_request(["hi"], "de"), timeout=0.1))
        assert code == grpc.StatusCode.DEADLINE_EXCEEDED
        assert time.perf_counter() - start < 0.3
        assert narrow_server.sample("translator_input_tokens_total") == tokens_before
        long_call.result()
    time.sleep(0.05)
    assert narrow_server.sample("translator_rejections_total", labels) == expired + 1


def test_cancel_frees_the_row_within_a_step(narrow_server: ServerThread):
    channel, translator = stub(narrow_server.address)
    labels = {"reason": "cancelled"}
    with channel:
        cancelled_before = narrow_server.sample("translator_rejections_total", labels)
        with narrow_server.replaced_runner(FakeRunner(step_seconds=0.01, long_sources=8)):
            call = translator.Translate.future(
                translate_request([FAKE_LONG], "de", max_output_tokens=128), timeout=60
            )
            time.sleep(0.03)
            assert narrow_server.sample("translator_active_rows") == 1
            steps_before = narrow_server.sample("translator_batch_rows_count")
            call.cancel()
            deadline = time.monotonic() + 1.0
            while narrow_server.sample("translator_active_rows") and time.monotonic() < deadline:
                time.sleep(0.005)
            assert narrow_server.sample("translator_active_rows") == 0
            # the step running when the cancel arrives completes; the next plan drops the row
            # (+1 more for a step that ends while the cancel is on the wire)
            assert narrow_server.sample("translator_batch_rows_count") <= steps_before + 2
        assert translator.Translate(translate_request(["hi"], "de"), timeout=10)
    time.sleep(0.05)
    assert narrow_server.sample("translator_rejections_total", labels) == cancelled_before + 1
