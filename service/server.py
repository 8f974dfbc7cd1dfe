"""The service assembled: repository of engines -> front ends -> one grpc.aio server.

`TranslationServer.start()` starts the gRPC server (liveness SERVING, readiness NOT_SERVING) and
the metrics endpoint, loads and warms up every model (`ModelRepository`), turns readiness SERVING
and, with a repository, rescans it every `repository_poll_s` (and on `rescan()`, which SIGHUP
calls). `stop(grace)` drains: health NOT_SERVING, no new requests, in-flight ones finish within
`grace` seconds, then everything closes.

Both front ends, translator.v1 (`servicer`) and the KServe v2 inference protocol (`kserve`), are
adapters over the same engines, on the same port, behind the same interceptor.
"""

from __future__ import annotations

import asyncio
import logging
from importlib import metadata
from wsgiref.simple_server import WSGIServer

import grpc
from grpc_health.v1 import health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from service.health import READINESS, Health
from service.interceptors import ErrorInterceptor
from service.kserve import SERVICE_NAME as KSERVE_SERVICE
from service.kserve import InferenceServicer
from service.metrics import Metrics, stop_serving
from service.pb.inference import grpc_predict_v2_pb2_grpc as kserve_grpc
from service.pb.translator.v1 import translator_pb2_grpc as pb_grpc
from service.repository import ModelRepository
from service.servicer import TranslatorServicer
from service.settings import ServiceSettings
from service.tls import CertificateFiles

log = logging.getLogger(__name__)

HEALTH_SERVICE = "grpc.health.v1.Health"


def _server_options(settings: ServiceSettings) -> list[tuple[str, int]]:
    return [
        ("grpc.so_reuseport", 0),  # a taken port fails loudly instead of being shared
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.max_send_message_length", settings.max_message_bytes),
        ("grpc.keepalive_time_ms", 30_000),  # find dead peers behind NATs and load balancers
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.http2.ping_timeout_ms", 10_000),  # newer cores wait this long (default 60 s) instead
        ("grpc.keepalive_permit_without_calls", 1),  # ping idle connections too: a dead or stopped
        # peer without a call in flight is closed after 40 s, not kept until max_connection_idle
        ("grpc.http2.min_recv_ping_interval_without_data_ms", 10_000),
        ("grpc.max_connection_idle_ms", 300_000),
        ("grpc.max_connection_age_ms", int(settings.max_connection_age_s * 1000)),
        ("grpc.max_connection_age_grace_ms", 30_000),
    ]


def service_version() -> str:
    try:
        return metadata.version("translator")
    except metadata.PackageNotFoundError:
        return "unknown"


class TranslationServer:
    """The whole service in one object; `__main__` runs it, tests start it in-process.

    Args:
        settings: the service settings.
    """

    def __init__(self, settings: ServiceSettings) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.health = Health()
        self.version = service_version()
        self.repository = ModelRepository(settings, self.metrics, self.health, self.version)
        self.tls: CertificateFiles | None = None
        self.failed = self.repository.engine_failed  # set: the process should exit non-zero
        self.port = 0
        self.metrics_port = 0
        self.health_port = 0
        self._server: grpc.aio.Server | None = None
        self._health_server: grpc.aio.Server | None = None
        self._metrics_server: WSGIServer | None = None
        self._watcher: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Serve, load and warm up every model, report ready.

        Raises:
            BundleError, DeviceError, SettingsFileError, ValueError: a model cannot be served.
            TlsError: a certificate, key or CA file cannot be served.
        """
        s = self.settings
        if s.tls_cert_file is not None and s.tls_key_file is not None:
            self.tls = CertificateFiles(s.tls_cert_file, s.tls_key_file, s.tls_client_ca_file)
        await self._serve()
        try:
            await self.repository.start()
        except BaseException:
            await self.stop(grace=0, delay=0)
            raise
        await self.health.ready()
        if s.model_repository is not None:
            self._watcher = asyncio.get_running_loop().create_task(self.repository.watch())
        log.info(
            "serving %s on %s:%d (metrics :%d, default model %s)",
            ", ".join(
                f"{e.info.name} {e.info.version} [{e.info.provider}]"
                for e in self.repository.engines()
            ),
            s.host,
            self.port,
            self.metrics_port,
            self.repository.default,
        )

    def rescan(self) -> None:
        """Look at the repository now (SIGHUP)."""
        self.repository.wake()

    async def _serve(self) -> None:
        s = self.settings
        server = grpc.aio.server(
            interceptors=[ErrorInterceptor(self.metrics)], options=_server_options(s)
        )
        pb_grpc.add_TranslatorServicer_to_server(TranslatorServicer(self.repository), server)
        kserve_grpc.add_GRPCInferenceServiceServicer_to_server(
            InferenceServicer(self.repository, self.version), server
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health.servicer, server)
        if s.reflection:
            names = (READINESS, KSERVE_SERVICE, HEALTH_SERVICE, reflection.SERVICE_NAME)
            reflection.enable_server_reflection(names, server)
        address = f"{s.host}:{s.port}"
        if self.tls is not None:
            self.port = server.add_secure_port(address, self.tls.credentials())
        else:
            self.port = server.add_insecure_port(address)
        await self.health.starting()
        await server.start()
        self._server = server
        if s.health_port is not None:
            self._health_server = grpc.aio.server(options=_server_options(s))
            health_pb2_grpc.add_HealthServicer_to_server(self.health.servicer, self._health_server)
            self.health_port = self._health_server.add_insecure_port(f"{s.host}:{s.health_port}")
            await self._health_server.start()
        metrics_host = s.metrics_host or s.host
        self._metrics_server, self.metrics_port = self.metrics.serve(metrics_host, s.metrics_port)

    async def stop(self, grace: float | None = None, delay: float | None = None) -> None:
        """Drain: NOT_SERVING, go on serving for `delay` seconds (clients watching health move
        away), then refuse new requests with UNAVAILABLE and let in-flight ones finish within
        `grace`."""
        grace = self.settings.grace_period_s if grace is None else grace
        delay = self.settings.drain_delay_s if delay is None else delay
        self.repository.stopping = True
        await self.health.draining()
        if self._watcher is not None:
            self._watcher.cancel()
        if delay and self._server is not None:
            log.info("NOT_SERVING; still serving for the drain delay of %.1f s", delay)
            await asyncio.sleep(delay)
        self.repository.drain()
        if self._server is not None:
            await self._server.stop(grace)
        if self._health_server is not None:
            await self._health_server.stop(0)
        await self.repository.close()
        if self._metrics_server is not None:
            stop_serving(self._metrics_server)
