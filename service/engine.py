"""One model, served: bundle -> sessions -> runner -> scheduler, with its tokenizer and limits.

A `TranslationEngine` takes texts and requested options (from any front end) and gives back
translated text; front ends only map their messages to these calls. Its life:

    load (blocking: read and check the bundle, open the sessions)
    -> warm_up (blocking) -> start (on the event loop: threads, then accepting)
    -> drain (refuse new requests) -> close (once its in-flight work is done)
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from service.bundle import Bundle, Manifest, load_bundle
from service.metrics import ModelMetrics
from service.runner import Seq2SeqRunner
from service.scheduler import BatchScheduler
from service.search import DecodingRules
from service.sessions import OrtSessions
from service.settings import EngineSettings
from service.tokenizer import load_tokenizer
from service.types import (
    DecodingOptions,
    Hypothesis,
    PartialText,
    RequestedOptions,
    SegmentJob,
    StepPlan,
    TextTokenizer,
    TranslatedText,
    Translation,
)
from service.validation import RequestValidator, ServiceLimits

WARMUP_TEXT = "Hello, world."
IDLE_POLL_S = 0.05

EngineState = Literal["loading", "ready", "draining", "stopped"]


def decoding_rules(manifest: Manifest) -> DecodingRules:
    """The manifest's decoding rules (an imported model's generation config)."""
    rules = manifest.decoding["rules"]
    return DecodingRules(
        suppress_tokens=tuple(int(i) for i in rules["suppress_tokens"]),
        forced_eos=bool(rules["forced_eos"]),
        renormalize=bool(rules["renormalize"]),
        beam=str(rules["beam"]),
        early_stopping=rules["early_stopping"],
    )


def decoding_defaults(manifest: Manifest) -> DecodingOptions:
    """What a request gets for the options it leaves unset (max_new_tokens 0: per source)."""
    values = manifest.decoding
    return DecodingOptions(
        beam_size=int(values["beam_size"]),
        max_new_tokens=int(values["max_new_tokens"]),
        length_penalty=float(values["length_penalty"]),
        n_best=int(values["n_best"]),
    )


def service_limits(manifest: Manifest, settings: EngineSettings) -> ServiceLimits:
    """What a request may ask of this model: the bundle's limits within the operator's."""
    return ServiceLimits(
        source_language=manifest.source_language,
        languages=tuple(sorted(manifest.languages)),
        max_source_tokens=manifest.max_source_tokens,
        max_output_tokens=manifest.max_target_tokens,
        max_segments=min(settings.max_segments, settings.max_queued_requests),
        max_beam_size=min(settings.max_beam_size, settings.max_active_rows),
        max_tokens_in_flight=settings.max_tokens_in_flight,
        defaults=decoding_defaults(manifest),
    )


@dataclass(frozen=True)
class ModelInfo:
    """What ListModels, ListLanguages and every response report about one served model."""

    name: str
    version: str  # the repository's version directory, or the manifest's version
    precision: str
    provider: str  # the ONNX Runtime execution provider really in use
    limits: ServiceLimits  # languages included


class TranslationEngine:
    """One loaded model version and everything that runs it; dropping the last reference to a
    closed engine frees its sessions.

    Args:
        bundle: the checked bundle.
        info: its name, version, precision, provider and limits.
        sessions: its ONNX Runtime sessions.
        settings: its engine settings (the server's, with the model's overrides).
        metrics: its series, labelled with its name.
    """

    def __init__(
        self,
        bundle: Bundle,
        info: ModelInfo,
        sessions: OrtSessions,
        settings: EngineSettings,
        metrics: ModelMetrics,
    ) -> None:
        manifest = bundle.manifest
        self.bundle = bundle
        self.info = info
        self.settings = settings
        self.tokenizer: TextTokenizer = load_tokenizer(bundle)
        self.runner = Seq2SeqRunner(sessions, manifest.special_tokens, decoding_rules(manifest))
        self.scheduler = BatchScheduler(self.runner, settings, metrics)
        self.validator = RequestValidator(self.tokenizer, info.limits)
        self.state: EngineState = "loading"

    @classmethod
    def load(
        cls,
        path: Path,
        settings: EngineSettings,
        metrics: ModelMetrics,
        name: str | None = None,
        version: str | None = None,
    ) -> TranslationEngine:
        """Read, check and open the bundle at `path` (blocking: run it off the event loop).

        Raises:
            BundleError: the bundle is missing, malformed or fails its checksums.
            DeviceError: `cuda` was asked for and is not usable.
        """
        bundle = load_bundle(path)
        manifest = bundle.manifest
        sessions = OrtSessions(
            bundle, settings.device, settings.threads, parallelism=settings.cpu_parallelism
        )
        info = ModelInfo(
            name=name or manifest.name,
            version=version or manifest.version,
            precision=manifest.precision,
            provider=sessions.provider,
            limits=service_limits(manifest, settings),
        )
        return cls(bundle, info, sessions, settings, metrics)

    # -- life cycle --

    def warm_up(self) -> None:
        """Decode one short sentence per language, greedy and beam (blocking; before start)."""
        if not self.settings.warmup:
            return
        greedy, beam = DecodingOptions(1, 8, 1.0, 1), DecodingOptions(2, 8, 1.0, 1)
        pairs = [(lang, o) for lang in self.info.limits.languages for o in (greedy, beam)]
        jobs = [
            SegmentJob(-1 - i, tuple(self.tokenizer.encode_source(WARMUP_TEXT, lang)), options)
            for i, (lang, options) in enumerate(pairs)
        ]
        self.runner.step(StepPlan(admit=(self.runner.encode(jobs),)))
        while self.runner.rows:
            self.runner.step(StepPlan())

    def start(self) -> None:
        """Start the engine threads and accept requests (on the event loop)."""
        self.scheduler.start()
        self.scheduler.open()
        self.state = "ready"

    def drain(self) -> None:
        """Refuse new requests (UNAVAILABLE); queued and running ones still finish."""
        self.scheduler.drain()
        if self.state != "stopped":
            self.state = "draining"

    async def close(self, finish: bool = True) -> None:
        """Drain, let the in-flight work finish (unless `finish` is False: the server has
        cancelled it already), then stop the threads."""
        self.drain()
        while finish and not self.scheduler.idle:  # noqa: ASYNC110 (idleness changes in threads)
            await asyncio.sleep(IDLE_POLL_S)
        await self.scheduler.close()
        self.state = "stopped"

    async def stopped(self) -> None:
        """Returns when the engine threads have ended, normally or not."""
        await self.scheduler.stopped()

    @property
    def failed(self) -> bool:
        """The engine threads ended without being asked to."""
        return self.state != "loading" and not self.scheduler.alive and not self.scheduler.closing

    # -- requests --

    async def translate(
        self,
        texts: Sequence[bytes],
        target_language: str,
        source_language: str,
        requested: RequestedOptions,
        time_left: float | None,
    ) -> list[Translation]:
        """Translate every text (validated and queued before the first suspension, so a caller
        that resolved this engine has its work accepted by it).

        Raises:
            InvalidArgumentError, QueueFullError, DrainingError, QueueTimeoutError, EngineError.
        """
        options = self.validator.options(requested)
        segments = self.validator.segments(texts, target_language, source_language, options)
        results = await self.scheduler.translate(segments, time_left)
        return [
            self._translation(source, hyps)
            for (source, _), hyps in zip(segments, results, strict=True)
        ]

    async def stream(
        self,
        text: bytes,
        target_language: str,
        source_language: str,
        requested: RequestedOptions,
        time_left: float | None,
    ) -> AsyncIterator[PartialText | Translation]:
        """Partial texts as the committed prefix grows, then the translation. Raises as
        `translate`."""
        options = self.validator.options(requested)
        ((source, options),) = self.validator.segments(
            [text], target_language, source_language, options
        )
        async for update in self.scheduler.stream(source, options, time_left):
            if update.hypotheses is None:
                yield PartialText(self.tokenizer.decode(update.committed), len(update.committed))
            else:
                yield self._translation(source, update.hypotheses)

    def _translation(
        self, source: tuple[int, ...], hypotheses: tuple[Hypothesis, ...]
    ) -> Translation:
        texts = tuple(
            TranslatedText(self.tokenizer.decode(h.ids), h.score, len(h.ids)) for h in hypotheses
        )
        return Translation(texts, len(source))
