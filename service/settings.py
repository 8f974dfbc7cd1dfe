"""Service settings: environment variables with the `TRANSLATOR_` prefix, each bounded.

Every field has a default, a bound and a docstring; `TRANSLATOR_MAX_ACTIVE_ROWS=1` turns
batching off, `TRANSLATOR_DEVICE=cuda` refuses to start without CUDA.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class ServiceSettings(BaseSettings):
    """Everything the operator can set, read once at startup."""

    model_config = SettingsConfigDict(env_prefix="TRANSLATOR_", frozen=True, extra="forbid")

    host: str = "0.0.0.0"
    """Address the gRPC server and the metrics endpoint bind to."""

    port: int = Field(default=50051, ge=0, le=65535)
    """gRPC port; 0 picks a free one (printed in the startup log line)."""

    metrics_port: int = Field(default=9464, ge=0, le=65535)
    """Prometheus /metrics port, separate from gRPC; 0 picks a free one."""

    bundle_path: Path = Path("models/default")
    """The model bundle directory written by `python -m export`."""

    device: Literal["auto", "cpu", "cuda"] = "auto"
    """`cuda` fails at startup when CUDA is unusable; `auto` falls back to CPU with a warning."""

    threads: int = Field(default=0, ge=0, le=256)
    """ONNX Runtime intra-op threads on CPU; 0 lets ONNX Runtime choose (one per core)."""

    max_active_rows: int = Field(default=64, ge=1, le=4096)
    """Rows decoded together in one decoder step (a beam-search segment takes beam_size rows)."""

    max_tokens_in_flight: int = Field(default=65536, ge=16, le=16_777_216)
    """Budget of admitted work: per segment, rows x (source tokens + max output tokens)."""

    admit_every_steps: int = Field(default=4, ge=1, le=64)
    """Encoded segments join a running batch every N decoder steps: larger N copies the cache
    for more segments at once, for up to N-1 steps of extra wait before the first token."""

    max_queued_requests: int = Field(default=256, ge=1, le=100_000)
    """Segments waiting for admission; beyond it, requests get RESOURCE_EXHAUSTED at once."""

    max_segments: int = Field(default=32, ge=1, le=1024)
    """Segments in one Translate request."""

    max_beam_size: int = Field(default=8, ge=1, le=64)
    """Largest beam a request may ask for (never more than max_active_rows)."""

    queue_timeout_s: float = Field(default=30.0, gt=0.0, le=3600.0)
    """Longest wait for admission when the client sets no earlier gRPC deadline."""

    grace_period_s: float = Field(default=10.0, ge=0.0, le=600.0)
    """On SIGTERM: how long in-flight requests may take to finish before they are cancelled."""

    max_message_bytes: int = Field(default=1 << 20, ge=1024, le=64 << 20)
    """Largest gRPC message received or sent; larger ones get RESOURCE_EXHAUSTED."""

    reflection: bool = True
    """Serve gRPC server reflection (handy in development; turn off in production)."""

    warmup: bool = True
    """Run one translation per language before reporting ready."""

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    """Log level of the service's own loggers."""
