"""The KServe Open Inference Protocol v2 (`inference.GRPCInferenceService`) over the same engines.

A model takes a BYTES tensor "text" of shape [N] (or [N, 1]) and returns "translation" (BYTES)
and "score" (FP32) of the same shape. Request parameters carry what translator.v1 has as fields:
target_language (string, required), source_language (string), beam_size, max_output_tokens,
n_best (int64), length_penalty (double). Tensor data may come in `contents.bytes_contents` or in
`raw_input_contents` (4-byte little-endian length, then the bytes, per element, as
tritonclient sends them); outputs go in `raw_output_contents`, as Triton answers.

Validation and status codes are translator.v1's (the engine validates); what is specific to the
tensor form (names, datatypes, shapes, parameter types) is checked here.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from typing import TypeAlias

import grpc

from service.engine import TranslationEngine
from service.errors import DrainingError, InvalidArgumentError, ModelNotFoundError
from service.interceptors import record_model
from service.pb.inference import grpc_predict_v2_pb2 as pb
from service.pb.inference import grpc_predict_v2_pb2_grpc as pb_grpc
from service.repository import ModelRepository
from service.types import RequestedOptions

Context: TypeAlias = "grpc.aio.ServicerContext[object, object]"

SERVICE_NAME = "inference.GRPCInferenceService"
SERVER_NAME = "translator"
PLATFORM = "translator_onnxruntime"
INPUT, TRANSLATION, SCORE = "text", "translation", "score"
OUTPUTS = {TRANSLATION: "BYTES", SCORE: "FP32"}
# Parameters tritonclient may set on its own (priority, timeout): accepted and not used.
IGNORED_PARAMETERS = frozenset({"priority", "timeout"})
INT_PARAMETERS = ("beam_size", "max_output_tokens", "n_best")
KNOWN_PARAMETERS = ("target_language", "source_language", *INT_PARAMETERS, "length_penalty")
LENGTH = struct.Struct("<I")


def _tensor(name: str, datatype: str) -> pb.ModelMetadataResponse.TensorMetadata:
    return pb.ModelMetadataResponse.TensorMetadata(name=name, datatype=datatype, shape=[-1])


def decode_bytes_tensor(raw: bytes, name: str) -> list[bytes]:
    """The elements of a raw BYTES tensor. Raises InvalidArgumentError on a truncated one."""
    elements: list[bytes] = []
    offset = 0
    while offset < len(raw):
        if offset + LENGTH.size > len(raw):
            raise InvalidArgumentError(
                f"input {name!r}: raw contents end inside an element's length at byte {offset}"
            )
        (size,) = LENGTH.unpack_from(raw, offset)
        offset += LENGTH.size
        if offset + size > len(raw):
            raise InvalidArgumentError(
                f"input {name!r}: element {len(elements)} declares {size} bytes, only"
                f" {len(raw) - offset} remain"
            )
        elements.append(raw[offset : offset + size])
        offset += size
    return elements


def encode_bytes_tensor(elements: Sequence[bytes]) -> bytes:
    return b"".join(LENGTH.pack(len(e)) + e for e in elements)


def _input_texts(request: pb.ModelInferRequest) -> tuple[list[bytes], list[int]]:
    """The texts of the one "text" input, and its shape."""
    names = [tensor.name for tensor in request.inputs]
    if names != [INPUT]:
        raise InvalidArgumentError(f"inputs {names}: this model takes exactly one, {INPUT!r}")
    tensor = request.inputs[0]
    if tensor.datatype != "BYTES":
        raise InvalidArgumentError(f"input {INPUT!r}: datatype {tensor.datatype!r}, expected BYTES")
    shape = list(tensor.shape)
    if not (len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)) or shape[0] < 1:
        raise InvalidArgumentError(f"input {INPUT!r}: shape {shape}, expected [N] or [N, 1]")
    if request.raw_input_contents:
        if len(request.raw_input_contents) != 1:
            raise InvalidArgumentError(
                f"raw_input_contents: {len(request.raw_input_contents)} entries for 1 input"
            )
        texts = decode_bytes_tensor(request.raw_input_contents[0], INPUT)
    else:
        texts = list(tensor.contents.bytes_contents)
    if len(texts) != math.prod(shape):
        raise InvalidArgumentError(
            f"input {INPUT!r}: shape {shape} holds {math.prod(shape)} elements, {len(texts)} given"
        )
    return texts, shape


def _parameter(request: pb.ModelInferRequest, name: str, kind: str) -> pb.InferParameter | None:
    if name not in request.parameters:
        return None
    value = request.parameters[name]
    given = value.WhichOneof("parameter_choice")
    if given != kind:
        raise InvalidArgumentError(f"parameter {name!r}: expected {kind}, got {given}")
    return value


def _options(request: pb.ModelInferRequest) -> tuple[str, str, RequestedOptions]:
    """Target language, source language and decoding options from the request parameters."""
    unknown = sorted(set(request.parameters) - set(KNOWN_PARAMETERS) - IGNORED_PARAMETERS)
    if unknown:
        raise InvalidArgumentError(
            f"parameters {unknown} are not known; known: {', '.join(KNOWN_PARAMETERS)}"
        )
    target = _parameter(request, "target_language", "string_param")
    if target is None:
        raise InvalidArgumentError("parameter 'target_language' is required (a string, e.g. 'de')")
    source = _parameter(request, "source_language", "string_param")
    ints = {}
    for name in INT_PARAMETERS:
        value = _parameter(request, name, "int64_param")
        ints[name] = 0 if value is None else value.int64_param
        if ints[name] < 0:
            raise InvalidArgumentError(f"parameter {name!r}: {ints[name]} is negative")
    penalty = _parameter(request, "length_penalty", "double_param")
    options = RequestedOptions(
        beam_size=ints["beam_size"],
        max_output_tokens=ints["max_output_tokens"],
        length_penalty=None if penalty is None else penalty.double_param,
        n_best=ints["n_best"],
    )
    return target.string_param, "" if source is None else source.string_param, options


def _requested_outputs(request: pb.ModelInferRequest) -> list[str]:
    names = [output.name for output in request.outputs] or list(OUTPUTS)
    unknown = [name for name in names if name not in OUTPUTS]
    if unknown:
        raise InvalidArgumentError(f"outputs {unknown} are not known; known: {', '.join(OUTPUTS)}")
    return names


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    """inference.GRPCInferenceService on top of a `ModelRepository`."""

    def __init__(self, repository: ModelRepository, version: str) -> None:
        self._repository = repository
        self._version = version

    def _engine(self, name: str, version: str) -> TranslationEngine:
        engine = self._repository.get(name)
        record_model(engine.info.name)
        if version and version != engine.info.version:
            raise ModelNotFoundError(
                f"model {engine.info.name!r} version {version!r} is not loaded;"
                f" serving version {engine.info.version!r}"
            )
        return engine

    async def ServerLive(
        self, request: pb.ServerLiveRequest, context: Context
    ) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=not any(e.failed for e in self._repository.engines()))

    async def ServerReady(
        self, request: pb.ServerReadyRequest, context: Context
    ) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self._repository.ready)

    async def ModelReady(
        self, request: pb.ModelReadyRequest, context: Context
    ) -> pb.ModelReadyResponse:
        try:
            engine = self._engine(request.name, request.version)
        except (ModelNotFoundError, DrainingError):  # unknown, or still loading at startup
            return pb.ModelReadyResponse(ready=False)
        ready = engine.state == "ready" and not self._repository.stopping
        return pb.ModelReadyResponse(ready=ready)

    async def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: Context
    ) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name=SERVER_NAME, version=self._version, extensions=[])

    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: Context
    ) -> pb.ModelMetadataResponse:
        info = self._engine(request.name, request.version).info
        return pb.ModelMetadataResponse(
            name=info.name,
            versions=[info.version],
            platform=PLATFORM,
            inputs=[_tensor(INPUT, "BYTES")],
            outputs=[_tensor(name, datatype) for name, datatype in OUTPUTS.items()],
        )

    async def ModelInfer(
        self, request: pb.ModelInferRequest, context: Context
    ) -> pb.ModelInferResponse:
        engine = self._engine(request.model_name, request.model_version)
        texts, shape = _input_texts(request)
        target, source, options = _options(request)
        outputs = _requested_outputs(request)
        translations = await engine.translate(
            texts, target, source, options, context.time_remaining()
        )
        data = {
            TRANSLATION: encode_bytes_tensor([t.best.text.encode() for t in translations]),
            SCORE: struct.pack(f"<{len(translations)}f", *(t.best.score for t in translations)),
        }
        return pb.ModelInferResponse(
            model_name=engine.info.name,
            model_version=engine.info.version,
            id=request.id,
            outputs=[
                pb.ModelInferResponse.InferOutputTensor(
                    name=name, datatype=OUTPUTS[name], shape=shape
                )
                for name in outputs
            ],
            raw_output_contents=[data[name] for name in outputs],
        )
