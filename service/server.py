"""The service assembled: bundle -> sessions -> runner -> scheduler -> servicer -> grpc.aio server.

`TranslationServer.start()` reads the bundle, opens the sessions on the requested device, starts
the gRPC server (liveness SERVING, readiness NOT_SERVING) and the metrics endpoint, warms the
model up and turns readiness SERVING. `stop(grace)` drains: health NOT_SERVING, no new requests,
in-flight ones finish within `grace` seconds, then everything closes.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from importlib import metadata
from wsgiref.simple_server import WSGIServer

import grpc
from grpc_health.v1 import health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from service.bundle import Bundle, Manifest, load_bundle
from service.health import READINESS, Health
from service.interceptors import ErrorInterceptor
from service.metrics import Metrics, stop_serving
from service.pb.translator.v1 import translator_pb2_grpc as pb_grpc
from service.runner import Seq2SeqRunner
from service.scheduler import BatchScheduler, SchedulerLimits
from service.search import DecodingRules
from service.servicer import ModelInfo, TranslatorServicer
from service.sessions import OrtSessions
from service.settings import ServiceSettings
from service.tokenizer import load_tokenizer
from service.types import DecodingOptions, SegmentJob, StepPlan, TextTokenizer
from service.validation import RequestValidator, ServiceLimits

log = logging.getLogger(__name__)

WARMUP_TEXT = "Hello, world."
HEALTH_SERVICE = "grpc.health.v1.Health"


def _server_options(settings: ServiceSettings) -> list[tuple[str, int]]:
    return [
        ("grpc.so_reuseport", 0),  # a taken port fails loudly instead of being shared
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.max_send_message_length", settings.max_message_bytes),
        ("grpc.keepalive_time_ms", 30_000),  # find dead peers behind NATs and load balancers
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.http2.min_recv_ping_interval_without_data_ms", 10_000),
        ("grpc.max_connection_idle_ms", 300_000),
        ("grpc.max_connection_age_ms", 1_800_000),  # rebalance long-lived clients after scale-up
        ("grpc.max_connection_age_grace_ms", 30_000),
    ]


def _service_version() -> str:
    try:
        return metadata.version("translator")
    except metadata.PackageNotFoundError:
        return "unknown"


@dataclass
class _Engine:
    """The model side, built from the bundle."""

    bundle: Bundle
    sessions: OrtSessions
    tokenizer: TextTokenizer
    runner: Seq2SeqRunner


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


def _build_engine(settings: ServiceSettings) -> _Engine:
    bundle = load_bundle(settings.bundle_path)
    manifest = bundle.manifest
    sessions = OrtSessions(bundle, settings.device, settings.threads)
    tokenizer = load_tokenizer(bundle)
    runner = Seq2SeqRunner(sessions, manifest.special_tokens, decoding_rules(manifest))
    return _Engine(bundle, sessions, tokenizer, runner)


def warm_up(engine: _Engine) -> None:
    """Decode one short sentence per language, greedy and beam, before reporting ready."""
    greedy, beam = DecodingOptions(1, 8, 1.0, 1), DecodingOptions(2, 8, 1.0, 1)
    jobs = [
        SegmentJob(-1 - i, tuple(engine.tokenizer.encode_source(WARMUP_TEXT, lang)), options)
        for i, (lang, options) in enumerate(
            (lang, options)
            for lang in engine.bundle.manifest.languages
            for options in (greedy, beam)
        )
    ]
    engine.runner.step(StepPlan(admit=(engine.runner.encode(jobs),)))
    while engine.runner.rows:
        engine.runner.step(StepPlan())


class TranslationServer:
    """The whole service in one object; `__main__` runs it, tests start it in-process.

    Args:
        settings: the service settings.
    """

    def __init__(self, settings: ServiceSettings) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.health = Health()
        self.port = 0
        self.metrics_port = 0
        self.provider = ""
        self._server: grpc.aio.Server | None = None
        self._scheduler: BatchScheduler | None = None
        self._metrics_server: WSGIServer | None = None
        self._watchdog: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Load, serve, warm up, report ready. Raises BundleError or DeviceError on bad setup."""
        s = self.settings
        loop = asyncio.get_running_loop()
        engine = await loop.run_in_executor(None, _build_engine, s)
        manifest = engine.bundle.manifest
        self.provider = engine.sessions.provider
        self.metrics.set_build_info(
            _service_version(), f"{manifest.name}:{manifest.version}", self.provider
        )
        limits = SchedulerLimits(
            s.max_active_rows,
            s.max_tokens_in_flight,
            s.max_queued_requests,
            s.queue_timeout_s,
            s.admit_every_steps,
        )
        self._scheduler = BatchScheduler(engine.runner, limits, self.metrics)
        validator = RequestValidator(engine.tokenizer, self._service_limits(engine))
        info = ModelInfo(manifest.name, manifest.version, manifest.precision, self.provider)
        servicer = TranslatorServicer(self._scheduler, validator, engine.tokenizer, info)
        await self._serve(servicer)
        if s.warmup:
            await loop.run_in_executor(None, warm_up, engine)
        self._scheduler.start()
        self._watchdog = loop.create_task(self._watch_engine())
        self._scheduler.open()
        await self.health.ready()
        log.info(
            "serving %s %s on %s:%d (metrics :%d, provider %s)",
            manifest.name,
            manifest.version,
            s.host,
            self.port,
            self.metrics_port,
            self.provider,
        )

    def _service_limits(self, engine: _Engine) -> ServiceLimits:
        s, manifest = self.settings, engine.bundle.manifest
        return ServiceLimits(
            source_language=manifest.source_language,
            languages=tuple(sorted(manifest.languages)),
            max_source_tokens=manifest.max_source_tokens,
            max_output_tokens=manifest.max_target_tokens,
            max_segments=min(s.max_segments, s.max_queued_requests),
            max_beam_size=min(s.max_beam_size, s.max_active_rows),
            max_tokens_in_flight=s.max_tokens_in_flight,
            defaults=decoding_defaults(manifest),
        )

    async def _serve(self, servicer: TranslatorServicer) -> None:
        s = self.settings
        server = grpc.aio.server(
            interceptors=[ErrorInterceptor(self.metrics)], options=_server_options(s)
        )
        pb_grpc.add_TranslatorServicer_to_server(servicer, server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health.servicer, server)
        if s.reflection:
            names = (READINESS, HEALTH_SERVICE, reflection.SERVICE_NAME)
            reflection.enable_server_reflection(names, server)
        self.port = server.add_insecure_port(f"{s.host}:{s.port}")
        await self.health.starting()
        await server.start()
        self._server = server
        self._metrics_server, self.metrics_port = self.metrics.serve(s.host, s.metrics_port)

    async def _watch_engine(self) -> None:
        assert self._scheduler is not None
        await self._scheduler.stopped()
        if not self._scheduler.closing:
            log.error("the engine stopped; reporting NOT_SERVING")
            await self.health.engine_stopped()

    async def stop(self, grace: float | None = None) -> None:
        """Drain: NOT_SERVING, refuse new requests, let in-flight ones finish within `grace`."""
        grace = self.settings.grace_period_s if grace is None else grace
        await self.health.draining()
        if self._scheduler is not None:
            self._scheduler.drain()
        if self._server is not None:
            await self._server.stop(grace)
        if self._scheduler is not None:
            await self._scheduler.close()
        if self._watchdog is not None:
            await self._watchdog
        if self._metrics_server is not None:
            stop_serving(self._metrics_server)
