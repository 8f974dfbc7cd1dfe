"""Service settings: environment variables with the `TRANSLATOR_` prefix, each bounded.

Every field has a default, a bound and a docstring; `TRANSLATOR_MAX_ACTIVE_ROWS=1` turns
batching off, `TRANSLATOR_DEVICE=cuda` refuses to start without CUDA.

`EngineSettings` are the ones a model may override in a repository (`DIR/<name>/settings.json`,
e.g. `{"max_active_rows": 16, "threads": 1}`); `ServiceSettings` adds the server-wide ones.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict


class EngineSettings(BaseModel):
    """How one model is run: device, threads, batch and queue limits."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    device: Literal["auto", "cpu", "cuda"] = "auto"
    """`cuda` fails at startup when CUDA is unusable; `auto` falls back to CPU with a warning."""

    threads: int = Field(default=0, ge=0, le=256)
    """CPU threads (0: one per core this process may use); how they are used: `cpu_parallelism`."""

    cpu_parallelism: Literal["auto", "row_shards", "intra_op"] = "auto"
    """With more than one CPU thread: `row_shards` runs each graph single-threaded and splits a
    run of enough rows into that many row shards run at once (`service.row_shards`); `intra_op`
    gives ONNX Runtime's own threads to every run; `auto` times a one-row decoder step both ways
    at load and takes intra-op threads only where they are 15% faster (not for the default
    model, whose operators are too short for threads to meet at each)."""

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

    warmup: bool = True
    """Run one translation per language before reporting ready."""


ENGINE_FIELDS = frozenset(EngineSettings.model_fields)
OVERRIDES_FILE = "settings.json"


class SettingsFileError(ValueError):
    """A model's settings file is unreadable or sets an unknown or out-of-range value."""


class ServiceSettings(BaseSettings, EngineSettings):
    """Everything the operator can set, read once at startup."""

    model_config = SettingsConfigDict(env_prefix="TRANSLATOR_", frozen=True, extra="forbid")

    host: str = "0.0.0.0"
    """Address the gRPC server and the metrics endpoint bind to."""

    port: int = Field(default=50051, ge=0, le=65535)
    """gRPC port; 0 picks a free one (printed in the startup log line)."""

    metrics_port: int = Field(default=9464, ge=0, le=65535)
    """Prometheus /metrics port, separate from gRPC; 0 picks a free one."""

    metrics_host: str = ""
    """Address the metrics endpoint binds to; empty: the same as host."""

    health_port: int | None = Field(default=None, ge=0, le=65535)
    """A plaintext port serving only grpc.health.v1 (0: a free one), for probes that cannot speak
    TLS, such as the kubelet's gRPC probe; unset: health is on the main port only."""

    tls_cert_file: Path | None = None
    """PEM certificate (chain) of the gRPC port; with tls_key_file, the port speaks only TLS.
    Rewritten on disk, it is served to new connections without a restart."""

    tls_key_file: Path | None = None
    """PEM private key of tls_cert_file."""

    tls_client_ca_file: Path | None = None
    """PEM CA of client certificates: set, every client must present one it signed (mTLS)."""

    bundle_path: Path = Path("models/default")
    """One model: the bundle directory written by `python -m export` (unused with a repository)."""

    model_repository: Path | None = None
    """Several models: each `DIR/<name>/` is a bundle, or holds versions `DIR/<name>/<N>/`
    (integers; the highest is served). Replaces bundle_path when set."""

    @field_validator(
        "model_repository", "tls_cert_file", "tls_key_file", "tls_client_ca_file", mode="before"
    )
    @classmethod
    def _unset_when_empty(cls, value: object) -> object:
        return None if value == "" else value

    @model_validator(mode="after")
    def _tls_files_go_together(self) -> ServiceSettings:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("TRANSLATOR_TLS_CERT_FILE and TRANSLATOR_TLS_KEY_FILE go together")
        if self.tls_client_ca_file is not None and self.tls_cert_file is None:
            raise ValueError(
                "TRANSLATOR_TLS_CLIENT_CA_FILE needs TRANSLATOR_TLS_CERT_FILE/KEY_FILE"
            )
        return self

    default_model: str = ""
    """The model that answers requests naming none; empty: the repository's only model, or the
    one named `default`."""

    repository_poll_s: float = Field(default=10.0, ge=0.0, le=3600.0)
    """How often the repository is scanned for new, changed or removed models (0: only on
    SIGHUP). A new version is loaded and warmed up beside the old one, then replaces it."""

    drain_delay_s: float = Field(default=2.0, ge=0.0, le=600.0)
    """On SIGTERM: how long the server goes on serving after turning NOT_SERVING, so that
    health-checking clients and load balancers move away before it refuses anything."""

    grace_period_s: float = Field(default=10.0, ge=0.0, le=600.0)
    """On SIGTERM, after the drain delay: how long in-flight requests may take to finish before
    they are cancelled; new ones get UNAVAILABLE (retryable) meanwhile."""

    max_connection_age_s: float = Field(default=1800.0, ge=1.0, le=86_400.0)
    """Connections are closed (GOAWAY) after this long, with 30 s grace for their calls, so that
    long-lived clients reconnect and spread onto replicas added since."""

    max_message_bytes: int = Field(default=1 << 20, ge=1024, le=64 << 20)
    """Largest gRPC message received or sent; larger ones get RESOURCE_EXHAUSTED."""

    reflection: bool = True
    """Serve gRPC server reflection (handy in development; turn off in production)."""

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    """Log level of the service's own loggers."""

    def engine(self, overrides: dict[str, Any] | None = None) -> EngineSettings:
        """The engine settings of one model: these, with the model's own overrides."""
        values = self.model_dump(include=set(ENGINE_FIELDS)) | (overrides or {})
        return EngineSettings(**values)


def engine_settings(settings: ServiceSettings, model_dir: Path) -> EngineSettings:
    """`settings.engine()` with `model_dir/settings.json` applied, if there is one.

    Raises:
        SettingsFileError: naming the file and the key that is wrong.
    """
    path = model_dir / OVERRIDES_FILE
    if not path.is_file():
        return settings.engine()
    try:
        overrides = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise SettingsFileError(f"{path}: not a readable JSON object ({error})") from None
    if not isinstance(overrides, dict):
        raise SettingsFileError(f"{path}: not a JSON object")
    try:
        return settings.engine(overrides)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in error.errors()
        )
        raise SettingsFileError(
            f"{path}: {problems} (allowed keys: {', '.join(sorted(ENGINE_FIELDS))})"
        ) from None


PREFIX = "TRANSLATOR_"


class UnknownSettingError(ValueError):
    """A TRANSLATOR_ variable that is no setting (a typo would otherwise be silently ignored)."""


def check_environment(environ: Mapping[str, str]) -> None:
    """Refuse a `TRANSLATOR_` variable that names no setting, naming the closest one.

    pydantic-settings ignores unknown variables, so `TRANSLATOR_TLS_CERT_FIEL` would quietly
    change nothing; `python -m service` calls this before reading the settings.

    Raises:
        UnknownSettingError: naming the variable and the closest known name.
    """
    known = sorted(name.upper() for name in ServiceSettings.model_fields)
    for name in sorted(environ):
        suffix = name.upper().removeprefix(PREFIX)
        if name.upper().startswith(PREFIX) and suffix not in known:
            close = difflib.get_close_matches(suffix, known, n=1, cutoff=0.6)
            hint = (
                f"did you mean {PREFIX}{close[0]}?"
                if close
                else f"known: {', '.join(PREFIX + k for k in known)}"
            )
            raise UnknownSettingError(f"unknown setting {name}; {hint}")
