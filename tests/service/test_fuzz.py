"""Property-based fuzzing of every field of every request of every RPC, on a real server.

hypothesis draws each field from its whole type (any bytes, any text, any int32, NaN and
infinite floats, unknown model names and languages), mixed with valid values so that deep paths
are reached too; raw byte strings that may not parse as the message at all go to every method.
Whatever comes in, the answer is a documented status (OK, INVALID_ARGUMENT, NOT_FOUND,
RESOURCE_EXHAUSTED, DEADLINE_EXCEEDED), never UNKNOWN or INTERNAL, and OK answers carry valid
UTF-8 text. 2,400 examples in all.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from service.kserve import encode_bytes_tensor
from service.pb.inference import grpc_predict_v2_pb2 as kserve
from service.pb.inference import grpc_predict_v2_pb2_grpc as kserve_grpc
from service.pb.translator.v1 import translator_pb2 as pb
from service.pb.translator.v1 import translator_pb2_grpc as pb_grpc
from tests.service.service_harness import ServerThread

DOCUMENTED = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.DEADLINE_EXCEEDED,
}
FUZZ = settings(
    max_examples=400,
    deadline=None,
    derandomize=True,  # the same examples every run: a failure reproduces
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
INT32 = st.integers(min_value=-(2**31), max_value=2**31 - 1)


def mostly(valid: st.SearchStrategy[Any], anything: st.SearchStrategy[Any]) -> Any:
    """`valid` three times in four, so that requests get past the first check often enough."""
    return st.sampled_from([valid, valid, valid, anything]).flatmap(lambda chosen: chosen)


FLOAT = st.floats(width=32, allow_nan=True, allow_infinity=True)
SHORT_TEXT = st.text(max_size=40)
SEGMENT = mostly(
    st.one_of(
        SHORT_TEXT.filter(str.strip).map(str.encode),
        st.sampled_from([b"forty-two", b"Good morning.", "caf\u00e9 \u2603".encode()]),
    ),
    st.one_of(st.binary(max_size=60), st.sampled_from([b" ", b""])),
)
LANGUAGE = mostly(st.sampled_from(["de", "fr", "es", "it"]), st.one_of(st.just("DE"), SHORT_TEXT))
MODEL = mostly(st.sampled_from(["", "tiny"]), SHORT_TEXT)
SMALL = mostly(st.integers(min_value=0, max_value=4), INT32)


@pytest.fixture(scope="module")
def served(
    tmp_path_factory: pytest.TempPathFactory, service_bundle: Path
) -> Iterator[ServerThread]:
    root = tmp_path_factory.mktemp("fuzz")
    (root / "tiny").symlink_to(service_bundle.resolve())
    running = ServerThread(service_bundle, model_repository=root, repository_poll_s=0).start()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def channel(served: ServerThread) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(served.address) as connected:
        yield connected


def _call(call: Any, request: Any) -> tuple[grpc.StatusCode, Any]:
    try:
        return grpc.StatusCode.OK, call(request, timeout=30)
    except grpc.RpcError as error:
        return error.code(), error.details()


def _assert_documented(code: grpc.StatusCode, answer: Any) -> None:
    event(code.name)  # --hypothesis-show-statistics shows how often each status came back
    assert code in DOCUMENTED, (code, answer)


@st.composite
def decoding_options(draw: st.DrawFn) -> pb.DecodingOptions:
    options = pb.DecodingOptions(
        beam_size=draw(SMALL), max_output_tokens=draw(SMALL), n_best=draw(SMALL)
    )
    if draw(st.booleans()):
        options.length_penalty = draw(mostly(st.floats(0.0, 2.0), FLOAT))
    return options


@FUZZ
@given(
    segments=st.lists(SEGMENT, max_size=5) | st.lists(SEGMENT, min_size=30, max_size=40),
    target=LANGUAGE,
    source=mostly(st.sampled_from(["", "en"]), SHORT_TEXT),
    options=decoding_options(),
    model=MODEL,
)
def test_translate(
    channel: grpc.Channel,
    segments: list[bytes],
    target: str,
    source: str,
    options: pb.DecodingOptions,
    model: str,
) -> None:
    request = pb.TranslateRequest(
        segments=segments,
        target_language=target,
        source_language=source,
        options=options,
        model=model,
    )
    code, reply = _call(pb_grpc.TranslatorStub(channel).Translate, request)
    _assert_documented(code, reply)
    if code == grpc.StatusCode.OK:
        assert len(reply.translations) == len(segments)
        for translation in reply.translations:
            for hypothesis in translation.hypotheses:
                hypothesis.text.encode("utf-8")  # a str from protobuf: valid by construction
                assert math.isfinite(hypothesis.score)


@FUZZ
@given(text=SEGMENT, target=LANGUAGE, options=decoding_options(), model=MODEL)
def test_translate_stream(
    channel: grpc.Channel, text: bytes, target: str, options: pb.DecodingOptions, model: str
) -> None:
    request = pb.TranslateStreamRequest(
        text=text, target_language=target, options=options, model=model
    )
    try:
        messages = list(pb_grpc.TranslatorStub(channel).TranslateStream(request, timeout=30))
        code = grpc.StatusCode.OK
    except grpc.RpcError as error:
        code, messages = error.code(), [error.details()]
    _assert_documented(code, messages)
    if code == grpc.StatusCode.OK:
        assert messages[-1].HasField("final")
        assert all(m.HasField("partial") for m in messages[:-1])


@FUZZ
@given(model=MODEL)
def test_list_languages_and_models(channel: grpc.Channel, model: str) -> None:
    stub = pb_grpc.TranslatorStub(channel)
    code, reply = _call(stub.ListLanguages, pb.ListLanguagesRequest(model=model))
    _assert_documented(code, reply)
    assert code in {grpc.StatusCode.OK, grpc.StatusCode.NOT_FOUND}
    code, reply = _call(stub.ListModels, pb.ListModelsRequest())
    assert code == grpc.StatusCode.OK and [m.name for m in reply.models] == ["tiny"]


PARAMETER = st.one_of(
    st.builds(lambda v: kserve.InferParameter(string_param=v), LANGUAGE),
    st.builds(lambda v: kserve.InferParameter(int64_param=v), SMALL),
    st.builds(lambda v: kserve.InferParameter(double_param=v), st.floats()),
    st.builds(lambda v: kserve.InferParameter(bool_param=v), st.booleans()),
)
PARAMETER_NAME = st.one_of(
    st.sampled_from(
        [
            "target_language",
            "source_language",
            "beam_size",
            "max_output_tokens",
            "n_best",
            "length_penalty",
            "priority",
        ]
    ),
    SHORT_TEXT,
)


@st.composite
def infer_requests(draw: st.DrawFn) -> kserve.ModelInferRequest:
    texts = draw(st.lists(SEGMENT, min_size=1, max_size=4))
    shape = draw(mostly(st.just([len(texts)]), st.lists(st.integers(-3, 5), max_size=3)))
    tensor = kserve.ModelInferRequest.InferInputTensor(
        name=draw(mostly(st.just("text"), st.sampled_from(["TEXT", ""]))),
        datatype=draw(mostly(st.just("BYTES"), st.sampled_from(["FP32", "x"]))),
        shape=shape,
    )
    request = kserve.ModelInferRequest(
        model_name=draw(mostly(st.just("tiny"), SHORT_TEXT)),
        model_version=draw(mostly(st.just(""), st.sampled_from(["x", "1"]))),
        inputs=[tensor],
    )
    if draw(st.booleans()):
        raw = encode_bytes_tensor(texts)
        if draw(st.integers(0, 3)) == 0:  # a length prefix that lies
            raw = struct.pack("<I", draw(st.integers(0, 2**32 - 1))) + raw
        request.raw_input_contents.append(raw)
    else:
        tensor.contents.bytes_contents.extend(texts)
    parameters = draw(st.dictionaries(PARAMETER_NAME, PARAMETER, max_size=3))
    if draw(mostly(st.just(True), st.just(False))):
        parameters["target_language"] = kserve.InferParameter(string_param="de")
    for name, value in parameters.items():
        request.parameters[name].CopyFrom(value)
    names = mostly(st.sampled_from(["translation", "score"]), st.just("logits"))
    for name in draw(st.lists(names, max_size=2)):
        request.outputs.add(name=name)
    return request


@FUZZ
@given(request=infer_requests())
def test_kserve_model_infer(channel: grpc.Channel, request: kserve.ModelInferRequest) -> None:
    code, reply = _call(kserve_grpc.GRPCInferenceServiceStub(channel).ModelInfer, request)
    _assert_documented(code, reply)
    if code == grpc.StatusCode.OK:
        assert len(reply.raw_output_contents) == len(reply.outputs)


@FUZZ
@given(name=MODEL, version=st.one_of(st.just(""), SHORT_TEXT))
def test_kserve_model_ready_and_metadata(channel: grpc.Channel, name: str, version: str) -> None:
    stub = kserve_grpc.GRPCInferenceServiceStub(channel)
    code, reply = _call(stub.ModelReady, kserve.ModelReadyRequest(name=name, version=version))
    assert code == grpc.StatusCode.OK
    code, reply = _call(stub.ModelMetadata, kserve.ModelMetadataRequest(name=name, version=version))
    assert code in {grpc.StatusCode.OK, grpc.StatusCode.NOT_FOUND}, (code, reply)


METHODS = [
    "/translator.v1.Translator/Translate",
    "/translator.v1.Translator/TranslateStream",
    "/translator.v1.Translator/ListLanguages",
    "/translator.v1.Translator/ListModels",
    "/inference.GRPCInferenceService/ModelInfer",
    "/inference.GRPCInferenceService/ModelMetadata",
    "/inference.GRPCInferenceService/ServerLive",
]


@FUZZ
@given(method=st.sampled_from(METHODS), body=st.binary(max_size=200))
def test_raw_bytes_to_every_method(channel: grpc.Channel, method: str, body: bytes) -> None:
    if method.endswith("Stream"):
        call: Any = channel.unary_stream(method)
        try:
            list(call(body, timeout=30))
            code = grpc.StatusCode.OK
        except grpc.RpcError as error:
            code = error.code()
    else:
        code, _ = _call(channel.unary_unary(method), body)
    assert code in DOCUMENTED, (method, body, code)
