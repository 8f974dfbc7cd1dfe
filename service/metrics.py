"""Every Prometheus object of the service, in one registry, served on its own port.

Names are fixed (dashboards and alerts use them): prefix `translator_`, base units, counters end
in `_total`, labels only from closed sets (method, code, reason, stage, version, model,
provider). Latency buckets span 0.5 ms to 30 s, because one sentence takes tens of ms.
"""

from __future__ import annotations

import threading
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from service.types import EncodedSegments, StepResult

LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)
ROWS_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
RATIO_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0)

METHODS = ("Translate", "TranslateStream", "ListLanguages")
REJECTION_REASONS = ("queue_full", "deadline_exceeded", "invalid_argument", "draining", "cancelled")


class Metrics:
    """The service's metrics; one instance per server, each with its own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "translator_requests",
            "RPCs finished, by method and gRPC status code name.",
            ["method", "code"],
            registry=r,
        )
        self.request_duration = Histogram(
            "translator_request_duration_seconds",
            "End-to-end RPC latency.",
            ["method"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_wait = self._latency(
            "translator_queue_wait_seconds", "Segment wait for admission."
        )
        self.time_to_first_token = self._latency(
            "translator_time_to_first_token_seconds", "Submission to first committed token."
        )
        self.time_per_output_token = self._latency(
            "translator_time_per_output_token_seconds",
            "Decode time per output token after the first.",
        )
        self.encoder_seconds = self._latency(
            "translator_encoder_seconds", "Encoder run for a batch of admitted segments."
        )
        self.decoder_step_seconds = self._latency(
            "translator_decoder_step_seconds", "One decoder step for every active row."
        )
        self.batch_rows = Histogram(
            "translator_batch_rows", "Rows in one decoder step.", buckets=ROWS_BUCKETS, registry=r
        )
        self.padding_efficiency = Histogram(
            "translator_padding_efficiency",
            "Real / padded tokens of a batch: stage=encoder (source tokens of an encoder batch),"
            " stage=decoder (self-attention slots of a decoder step).",
            ["stage"],
            buckets=RATIO_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge(
            "translator_queue_depth", "Segments waiting for admission.", registry=r
        )
        self.active_rows = Gauge(
            "translator_active_rows", "Rows reserved in the decoder batch.", registry=r
        )
        self.input_tokens = Counter(
            "translator_input_tokens", "Source tokens of admitted segments.", registry=r
        )
        self.output_tokens = Counter(
            "translator_output_tokens",
            "Tokens of the best hypothesis of finished segments.",
            registry=r,
        )
        self.rejections = Counter(
            "translator_rejections", "Requests not served, by reason.", ["reason"], registry=r
        )
        self.build_info = Gauge(
            "translator_build_info",
            "Always 1: the service version, model and execution provider.",
            ["version", "model", "provider"],
            registry=r,
        )
        for method in METHODS:
            self.request_duration.labels(method)
        for reason in REJECTION_REASONS:
            self.rejections.labels(reason)

    def _latency(self, name: str, documentation: str) -> Histogram:
        return Histogram(name, documentation, buckets=LATENCY_BUCKETS, registry=self.registry)

    def set_build_info(self, version: str, model: str, provider: str) -> None:
        self.build_info.labels(version, model, provider).set(1)

    def observe_encode(self, encoded: EncodedSegments) -> None:
        """Figures of one encoder run for admitted segments."""
        self.encoder_seconds.observe(encoded.seconds)
        self.padding_efficiency.labels("encoder").observe(encoded.padding)

    def observe_step(self, result: StepResult) -> None:
        """Figures of one decoder step."""
        if result.rows:
            self.decoder_step_seconds.observe(result.step_seconds)
            self.batch_rows.observe(result.rows)
            self.padding_efficiency.labels("decoder").observe(result.decoder_padding)

    def serve(self, host: str, port: int) -> tuple[WSGIServer, int]:
        """Serve /metrics on `port` (0: a free one) in a daemon thread; the server and its port."""
        server, _ = start_http_server(port, addr=host, registry=self.registry)
        return server, int(server.server_port)


def stop_serving(server: WSGIServer) -> None:
    """Stop a server from `Metrics.serve`."""
    threading.Thread(target=server.shutdown, daemon=True).start()
    server.server_close()
