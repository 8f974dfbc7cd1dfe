"""The KServe Open Inference Protocol v2: the real `tritonclient[grpc]`, used as a Triton user
would (tests/service/triton_user.py, in its own process), gets the same translations as
translator.v1, right health and metadata answers, INVALID_ARGUMENT for bad input; hand-made
tensors (typed contents, truncated raw bytes, wrong names) get a clear status too.
"""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from service.kserve import decode_bytes_tensor, encode_bytes_tensor
from service.pb.inference import grpc_predict_v2_pb2 as kserve
from service.pb.inference import grpc_predict_v2_pb2_grpc as kserve_grpc
from tests.service.service_harness import ServerThread, stub, translate_request

ROOT = Path(__file__).resolve().parents[2]
SENTENCES = [
    "Good morning.",
    "forty-two",
    "The weather is nice today.",
    "seventeen thousand three hundred and five",
    "Monday",
    "I would like a cup of coffee, please.",
]
INFER: list[dict[str, Any]] = [
    {"model": model, "texts": SENTENCES, "parameters": {"target_language": to, "beam_size": 2}}
    for model in ("default", "tiny")
    for to in ("de", "fr")
] + [
    {
        "model": "default",
        "texts": SENTENCES[:3],
        "shape": [3, 1],
        "parameters": {"target_language": "it"},
    }
]
BAD = [
    (["Hello"], {}, "'target_language' is required"),
    (["Hello"], {"target_language": "xx"}, "target_language 'xx' is not supported"),
    (["Hello"], {"target_language": "de", "beam_size": 99}, "beam_size 99 out of range"),
    (["Hello"], {"target_language": "de", "beam_size": "4"}, "expected int64_param"),
    (["Hello"], {"target_language": "de", "temperature": 0.5}, "not known"),
    ([" "], {"target_language": "de"}, "empty or blank"),
    (["word " * 400], {"target_language": "de"}, "max_source_tokens"),
]


@pytest.fixture(scope="module")
def served(
    tmp_path_factory: pytest.TempPathFactory, service_bundle: Path
) -> Iterator[ServerThread]:
    root = tmp_path_factory.mktemp("kserve")
    shutil.copytree(ROOT / "models" / "default", root / "default" / "1")
    shutil.copytree(service_bundle, root / "tiny")
    running = ServerThread(service_bundle, model_repository=root, repository_poll_s=0).start()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def seen(served: ServerThread) -> dict[str, Any]:
    """What the Triton user saw."""
    cases = {
        "infer": INFER,
        "bad": [{"model": "default", "texts": t, "parameters": p} for t, p, _ in BAD],
    }
    result = subprocess.run(
        [sys.executable, str(Path(__file__).with_name("triton_user.py")), served.address],
        input=json.dumps(cases),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return dict(json.loads(result.stdout))


def test_server_and_models_answer_health_and_metadata(seen: dict[str, Any]) -> None:
    assert seen["server_live"] and seen["server_ready"]
    assert seen["model_ready"] == {
        "default": True,
        "default@1": True,
        "default@7": False,
        "nope": False,
    }
    assert seen["server_name"] == "translator"
    assert seen["metadata"] == {
        "name": "default",
        "versions": ["1"],
        "inputs": [["text", "BYTES", [-1]]],
        "outputs": [["translation", "BYTES", [-1]], ["score", "FP32", [-1]]],
    }
    assert seen["unknown_metadata"]["status"] == "StatusCode.NOT_FOUND"
    assert "loaded models: default, tiny" in seen["unknown_metadata"]["message"]


def test_infer_gives_the_translations_of_translator_v1(
    served: ServerThread, seen: dict[str, Any]
) -> None:
    channel, translator = stub(served.address)
    with channel:
        for case, answer in zip(INFER, seen["infer"], strict=True):
            params = case["parameters"]
            request = translate_request(
                case["texts"], params["target_language"], beam_size=params.get("beam_size", 0)
            )
            request.model = case["model"]
            expected = translator.Translate(request, timeout=60)
            assert answer["translations"] == [t.text for t in expected.translations]
            assert answer["scores"] == pytest.approx([t.score for t in expected.translations])
            assert answer["score_dtype"] == "float32"
            assert answer["shape"] == (case.get("shape") or [len(case["texts"])])
            assert (answer["model_name"], answer["model_version"]) == (
                case["model"],
                expected.model_version,
            )


@pytest.mark.parametrize("index", range(len(BAD)))
def test_bad_input_is_invalid_argument(seen: dict[str, Any], index: int) -> None:
    answer = seen["bad"][index]
    assert answer["status"] == "StatusCode.INVALID_ARGUMENT"
    assert BAD[index][2] in answer["message"]


def _raw_request() -> kserve.ModelInferRequest:
    request = kserve.ModelInferRequest(
        model_name="default",
        inputs=[
            kserve.ModelInferRequest.InferInputTensor(name="text", datatype="BYTES", shape=[2])
        ],
        raw_input_contents=[encode_bytes_tensor([b"Good morning.", b"Monday"])],
    )
    request.parameters["target_language"].string_param = "de"
    return request


@pytest.mark.parametrize(
    ("mutate", "code", "message"),
    [
        (
            lambda r: r.inputs[0].shape.__setitem__(0, 3),
            "INVALID_ARGUMENT",
            "holds 3 elements, 2 given",
        ),
        (lambda r: setattr(r.inputs[0], "datatype", "FP32"), "INVALID_ARGUMENT", "expected BYTES"),
        (
            lambda r: setattr(r.inputs[0], "name", "source"),
            "INVALID_ARGUMENT",
            "exactly one, 'text'",
        ),
        (
            lambda r: r.raw_input_contents.__setitem__(0, struct.pack("<I", 50) + b"short"),
            "INVALID_ARGUMENT",
            "declares 50 bytes",
        ),
        (
            lambda r: r.raw_input_contents.__setitem__(0, b"\x01\x00"),
            "INVALID_ARGUMENT",
            "inside an element's length",
        ),
        (
            lambda r: r.outputs.add(name="logits"),
            "INVALID_ARGUMENT",
            "outputs ['logits'] are not known",
        ),
        (lambda r: setattr(r, "model_name", "nope"), "NOT_FOUND", "loaded models: default, tiny"),
        (lambda r: setattr(r, "model_version", "9"), "NOT_FOUND", "version '9' is not loaded"),
        (
            lambda r: r.raw_input_contents.__setitem__(
                0, encode_bytes_tensor([b"\xff\xfe", b"ok"])
            ),
            "INVALID_ARGUMENT",
            "not valid UTF-8",
        ),
    ],
)
def test_malformed_tensors_get_a_clear_status(
    served: ServerThread, mutate, code: str, message: str
) -> None:
    request = _raw_request()
    mutate(request)
    with grpc.insecure_channel(served.address) as channel:
        service = kserve_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as error:
            service.ModelInfer(request, timeout=30)
        assert error.value.code().name == code
        assert message in error.value.details()
        reply = service.ModelInfer(_raw_request(), timeout=30)  # and the next one is served
    assert len(decode_bytes_tensor(reply.raw_output_contents[0], "translation")) == 2


def test_kserve_calls_are_counted_per_model(served: ServerThread, seen: dict[str, Any]) -> None:
    ok = {"method": "ModelInfer", "code": "OK"}
    assert served.sample("translator_requests_total", ok | {"model": "tiny"}) == 2
    assert served.sample("translator_requests_total", ok | {"model": "default"}) >= 3
    invalid = {"method": "ModelInfer", "code": "INVALID_ARGUMENT", "model": "default"}
    assert served.sample("translator_requests_total", invalid) >= len(BAD)
    assert served.sample("translator_requests_total", {"method": "ServerLive", "model": ""}) == 1
