"""translator.v1.Translator: proto <-> engine calls, a few lines per RPC.

No tensors and no try/except here: the repository raises ModelNotFoundError, the engine raises
InvalidArgumentError and the scheduler's errors, and `interceptors` turns every exception into a
status code.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TypeAlias

import grpc

from service.engine import ModelInfo, TranslationEngine
from service.interceptors import record_model
from service.pb.translator.v1 import translator_pb2 as pb
from service.pb.translator.v1 import translator_pb2_grpc as pb_grpc
from service.repository import ModelRepository
from service.types import PartialText, RequestedOptions, Translation
from service.validation import ServiceLimits

Context: TypeAlias = "grpc.aio.ServicerContext[object, object]"

STATES = {
    "loading": pb.ModelStatus.LOADING,
    "ready": pb.ModelStatus.READY,
    "draining": pb.ModelStatus.DRAINING,
    "stopped": pb.ModelStatus.DRAINING,
}


def requested_options(options: pb.DecodingOptions) -> RequestedOptions:
    return RequestedOptions(
        beam_size=options.beam_size,
        max_output_tokens=options.max_output_tokens,
        length_penalty=options.length_penalty if options.HasField("length_penalty") else None,
        n_best=options.n_best,
    )


def limits_pb(limits: ServiceLimits) -> pb.Limits:
    return pb.Limits(
        max_source_tokens=limits.max_source_tokens,
        max_output_tokens=limits.max_output_tokens,
        max_segments=limits.max_segments,
        max_beam_size=limits.max_beam_size,
    )


def segment_pb(translation: Translation) -> pb.SegmentTranslation:
    hyps = [
        pb.Hypothesis(text=h.text, score=h.score, token_count=h.token_count)
        for h in translation.hypotheses
    ]
    best = translation.best
    return pb.SegmentTranslation(
        text=best.text,
        score=best.score,
        token_count=best.token_count,
        hypotheses=hyps,
        source_token_count=translation.source_token_count,
    )


class TranslatorServicer(pb_grpc.TranslatorServicer):
    """translator.v1.Translator on top of a `ModelRepository`."""

    def __init__(self, repository: ModelRepository) -> None:
        self._repository = repository

    def _engine(self, model: str) -> TranslationEngine:
        engine = self._repository.get(model)
        record_model(engine.info.name)
        return engine

    async def Translate(
        self, request: pb.TranslateRequest, context: Context
    ) -> pb.TranslateResponse:
        engine = self._engine(request.model)
        translations = await engine.translate(
            request.segments,
            request.target_language,
            request.source_language,
            requested_options(request.options),
            context.time_remaining(),
        )
        return pb.TranslateResponse(
            translations=[segment_pb(t) for t in translations],
            model_name=engine.info.name,
            model_version=engine.info.version,
        )

    async def TranslateStream(
        self, request: pb.TranslateStreamRequest, context: Context
    ) -> AsyncIterator[pb.TranslateStreamResponse]:
        engine = self._engine(request.model)
        name, version = engine.info.name, engine.info.version
        updates = engine.stream(
            request.text,
            request.target_language,
            request.source_language,
            requested_options(request.options),
            context.time_remaining(),
        )
        async for update in updates:
            if isinstance(update, PartialText):
                partial = pb.PartialTranslation(text=update.text, token_count=update.token_count)
                yield pb.TranslateStreamResponse(
                    partial=partial, model_name=name, model_version=version
                )
            else:
                yield pb.TranslateStreamResponse(
                    final=segment_pb(update), model_name=name, model_version=version
                )

    async def ListLanguages(
        self, request: pb.ListLanguagesRequest, context: Context
    ) -> pb.ListLanguagesResponse:
        info = self._engine(request.model).info
        return pb.ListLanguagesResponse(
            source_language=info.limits.source_language,
            target_languages=info.limits.languages,
            model_name=info.name,
            model_version=info.version,
            precision=info.precision,
            provider=info.provider,
            limits=limits_pb(info.limits),
        )

    async def ListModels(
        self, request: pb.ListModelsRequest, context: Context
    ) -> pb.ListModelsResponse:
        return pb.ListModelsResponse(
            models=[_status(e.info, e.state) for e in self._repository.engines()],
            default_model=self._repository.default,
        )


def _status(info: ModelInfo, state: str) -> pb.ModelStatus:
    return pb.ModelStatus(
        name=info.name,
        version=info.version,
        source_language=info.limits.source_language,
        target_languages=info.limits.languages,
        limits=limits_pb(info.limits),
        precision=info.precision,
        provider=info.provider,
        state=STATES[state],
    )
