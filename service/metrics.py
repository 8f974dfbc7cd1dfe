"""Every Prometheus object of the service, in one registry, served on its own port.

Names are fixed (dashboards and alerts use them): prefix `translator_`, base units, counters end
in `_total`, labels only from closed sets (method, code, reason, stage, version, model,
model_version, provider, result). `model` is a loaded model's name, or "" for a request that
named none that is loaded: never a value taken from a request. Latency buckets span 0.5 ms to
30 s, because one sentence takes tens of ms.
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

TRANSLATOR_METHODS = ("Translate", "TranslateStream", "ListLanguages", "ListModels")
KSERVE_METHODS = (
    "ServerLive",
    "ServerReady",
    "ModelReady",
    "ServerMetadata",
    "ModelMetadata",
    "ModelInfer",
)
METHODS = TRANSLATOR_METHODS + KSERVE_METHODS
REJECTION_REASONS = (
    "queue_full",
    "deadline_exceeded",
    "invalid_argument",
    "model_not_found",
    "draining",
    "cancelled",
)
LOAD_RESULTS = ("loaded", "failed")
NO_MODEL = ""  # the `model` label of a request that named no loaded model


class Metrics:
    """The service's metrics; one instance per server, each with its own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._build_labels: dict[str, tuple[str, str, str, str]] = {}  # model -> build_info labels
        r = self.registry
        self.requests = Counter(
            "translator_requests",
            "RPCs finished, by method, gRPC status code name and model.",
            ["method", "code", "model"],
            registry=r,
        )
        self.request_duration = Histogram(
            "translator_request_duration_seconds",
            "End-to-end RPC latency.",
            ["method", "model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.rejections = Counter(
            "translator_rejections",
            "Requests not served, by reason and model.",
            ["reason", "model"],
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
            "translator_batch_rows",
            "Rows in one decoder step.",
            ["model"],
            buckets=ROWS_BUCKETS,
            registry=r,
        )
        self.padding_efficiency = Histogram(
            "translator_padding_efficiency",
            "Real / padded tokens of a batch: stage=encoder (source tokens of an encoder batch),"
            " stage=decoder (source slots the cross-attention of a decoder step reads).",
            ["stage", "model"],
            buckets=RATIO_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge(
            "translator_queue_depth", "Segments waiting for admission.", ["model"], registry=r
        )
        self.active_rows = Gauge(
            "translator_active_rows", "Rows reserved in the decoder batch.", ["model"], registry=r
        )
        self.input_tokens = Counter(
            "translator_input_tokens", "Source tokens of admitted segments.", ["model"], registry=r
        )
        self.output_tokens = Counter(
            "translator_output_tokens",
            "Tokens of the best hypothesis of finished segments.",
            ["model"],
            registry=r,
        )
        self.build_info = Gauge(
            "translator_build_info",
            "Always 1, per loaded model: the service version, model, model version and execution"
            " provider.",
            ["version", "model", "model_version", "provider"],
            registry=r,
        )
        self.model_loads = Counter(
            "translator_model_loads",
            "Model versions loaded (result=loaded) or refused (result=failed: unreadable,"
            " wrong format, bad checksum, failed warm-up).",
            ["model", "result"],
            registry=r,
        )

    def _latency(self, name: str, documentation: str) -> Histogram:
        return Histogram(
            name, documentation, ["model"], buckets=LATENCY_BUCKETS, registry=self.registry
        )

    def for_model(self, model: str) -> ModelMetrics:
        """The series of one model (created at zero, so that rates exist from the start)."""
        for method in METHODS:
            self.request_duration.labels(method, model)
        for reason in REJECTION_REASONS:
            self.rejections.labels(reason, model)
        for result in LOAD_RESULTS:
            self.model_loads.labels(model, result)
        return ModelMetrics(self, model)

    def model_loaded(self, model: str, model_version: str, provider: str, version: str) -> None:
        """`model` now serves `model_version`: one build_info series for it, none for the old."""
        self.model_unloaded(model)
        labels = (version, model, model_version, provider)
        self.build_info.labels(*labels).set(1)
        self._build_labels[model] = labels
        self.model_loads.labels(model, "loaded").inc()

    def model_unloaded(self, model: str) -> None:
        """Forget the build_info of a model that no longer serves (its counters stay)."""
        labels = self._build_labels.pop(model, None)
        if labels is not None:
            self.build_info.remove(*labels)

    def serve(self, host: str, port: int) -> tuple[WSGIServer, int]:
        """Serve /metrics on `port` (0: a free one) in a daemon thread; the server and its port."""
        server, _ = start_http_server(port, addr=host, registry=self.registry)
        return server, int(server.server_port)


class ModelMetrics:
    """The per-model series the scheduler writes, bound to one model's label."""

    def __init__(self, metrics: Metrics, model: str) -> None:
        self.model = model
        self.queue_wait = metrics.queue_wait.labels(model)
        self.time_to_first_token = metrics.time_to_first_token.labels(model)
        self.time_per_output_token = metrics.time_per_output_token.labels(model)
        self.encoder_seconds = metrics.encoder_seconds.labels(model)
        self.decoder_step_seconds = metrics.decoder_step_seconds.labels(model)
        self.batch_rows = metrics.batch_rows.labels(model)
        self.encoder_padding = metrics.padding_efficiency.labels("encoder", model)
        self.decoder_padding = metrics.padding_efficiency.labels("decoder", model)
        self.queue_depth = metrics.queue_depth.labels(model)
        self.active_rows = metrics.active_rows.labels(model)
        self.input_tokens = metrics.input_tokens.labels(model)
        self.output_tokens = metrics.output_tokens.labels(model)

    def observe_encode(self, encoded: EncodedSegments) -> None:
        """Figures of one encoder run for admitted segments."""
        self.encoder_seconds.observe(encoded.seconds)
        self.encoder_padding.observe(encoded.padding)

    def observe_step(self, result: StepResult) -> None:
        """Figures of one decoder step."""
        if result.rows:
            self.decoder_step_seconds.observe(result.step_seconds)
            self.batch_rows.observe(result.rows)
            self.decoder_padding.observe(result.decoder_padding)


def stop_serving(server: WSGIServer) -> None:
    """Stop a server from `Metrics.serve`."""
    threading.Thread(target=server.shutdown, daemon=True).start()
    server.server_close()
