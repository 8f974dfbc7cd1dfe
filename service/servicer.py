"""The gRPC servicer: proto <-> domain, a few lines per RPC.

No tensors and no try/except here: `validation` raises InvalidArgumentError, the scheduler raises
its own errors, and `interceptors` turns every exception into a status code.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc

from service.pb.translator.v1 import translator_pb2 as pb
from service.pb.translator.v1 import translator_pb2_grpc as pb_grpc
from service.scheduler import BatchScheduler
from service.types import Hypothesis, TextTokenizer
from service.validation import RequestValidator


@dataclass(frozen=True)
class ModelInfo:
    """What ListLanguages and every response report about the served model."""

    name: str
    version: str
    precision: str
    provider: str  # the ONNX Runtime execution provider really in use


class TranslatorServicer(pb_grpc.TranslatorServicer):
    """translator.v1.Translator on top of a `BatchScheduler`."""

    def __init__(
        self,
        scheduler: BatchScheduler,
        validator: RequestValidator,
        tokenizer: TextTokenizer,
        model: ModelInfo,
    ) -> None:
        self._scheduler = scheduler
        self._validator = validator
        self._tokenizer = tokenizer
        self._model = model

    async def Translate(
        self, request: pb.TranslateRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> pb.TranslateResponse:
        options = self._validator.options(request.options)
        segments = self._validator.segments(
            request.segments, request.target_language, request.source_language, options
        )
        results = await self._scheduler.translate(segments, context.time_remaining())
        return pb.TranslateResponse(
            translations=[
                self._segment(src, hyps) for (src, _), hyps in zip(segments, results, strict=True)
            ],
            model_name=self._model.name,
            model_version=self._model.version,
        )

    async def TranslateStream(
        self, request: pb.TranslateStreamRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> AsyncIterator[pb.TranslateStreamResponse]:
        options = self._validator.options(request.options)
        ((source, options),) = self._validator.segments(
            [request.text], request.target_language, request.source_language, options
        )
        name, version = self._model.name, self._model.version
        async for update in self._scheduler.stream(source, options, context.time_remaining()):
            if update.hypotheses is None:
                partial = pb.PartialTranslation(
                    text=self._tokenizer.decode(update.committed), token_count=len(update.committed)
                )
                yield pb.TranslateStreamResponse(
                    partial=partial, model_name=name, model_version=version
                )
            else:
                final = self._segment(source, update.hypotheses)
                yield pb.TranslateStreamResponse(
                    final=final, model_name=name, model_version=version
                )

    async def ListLanguages(
        self, request: pb.ListLanguagesRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> pb.ListLanguagesResponse:
        limits = self._validator.limits
        return pb.ListLanguagesResponse(
            source_language=limits.source_language,
            target_languages=limits.languages,
            model_name=self._model.name,
            model_version=self._model.version,
            precision=self._model.precision,
            provider=self._model.provider,
            limits=limits.to_pb(),
        )

    def _segment(
        self, source: tuple[int, ...], hypotheses: tuple[Hypothesis, ...]
    ) -> pb.SegmentTranslation:
        hyps = [
            pb.Hypothesis(text=self._tokenizer.decode(h.ids), score=h.score, token_count=len(h.ids))
            for h in hypotheses
        ]
        best = hyps[0]
        return pb.SegmentTranslation(
            text=best.text,
            score=best.score,
            token_count=best.token_count,
            hypotheses=hyps,
            source_token_count=len(source),
        )
