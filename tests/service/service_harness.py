"""A real TranslationServer on 127.0.0.1:0, run in a background thread with its own event loop,
plus helpers to call it and to read its metrics."""

from __future__ import annotations

import asyncio
import gc
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Coroutine, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest

from service.engine import TranslationEngine
from service.pb.translator.v1 import translator_pb2 as pb
from service.pb.translator.v1 import translator_pb2_grpc as pb_grpc
from service.server import TranslationServer
from service.settings import ServiceSettings

T = TypeVar("T")


class ServerThread:
    """Start with `start()`, stop with `stop()`; `address`, `metrics_url`, `server` once started."""

    def __init__(self, bundle: Path, **overrides: Any) -> None:
        values: dict[str, Any] = {
            "host": "127.0.0.1",
            "port": 0,
            "metrics_port": 0,
            "bundle_path": bundle,
            "threads": 1,
            "device": "cpu",
            "grace_period_s": 5.0,
            "drain_delay_s": 0.0,
        }
        self.settings = ServiceSettings(**(values | overrides))
        self.server = TranslationServer(self.settings)
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def start(self) -> ServerThread:
        """Start and wait until ready; a startup error is raised here (the loop is stopped)."""
        self._thread.start()
        try:
            self.call(self.server.start(), timeout=120)
        except BaseException:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout=10)
            raise
        return self

    def call(self, work: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        """Run a coroutine on the server's event loop and return its result."""
        return asyncio.run_coroutine_threadsafe(work, self.loop).result(timeout=timeout)

    @staticmethod
    def wait_until(done: Callable[[], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            assert time.monotonic() < deadline, "timed out"
            gc.collect()
            time.sleep(0.05)

    def stop(self, grace: float = 1.0) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(grace), self.loop).result(timeout=60)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server.port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.server.metrics_port}/metrics"

    def scrape(self) -> str:
        with urllib.request.urlopen(self.metrics_url, timeout=5) as response:
            return str(response.read().decode())

    @contextmanager
    def patched_step(self, wrap: Callable[[Callable[[Any], Any], Any], Any]) -> Iterator[None]:
        """Replace the runner's step by `wrap(real_step, plan)` inside the block."""
        runner = self.engine().runner
        real_step = runner.step
        runner.step = lambda plan: wrap(real_step, plan)  # type: ignore[method-assign]
        try:
            yield
        finally:
            runner.step = real_step  # type: ignore[method-assign]

    @contextmanager
    def replaced_runner(self, runner: Any) -> Iterator[None]:
        """Decode with `runner` (e.g. a FakeRunner whose output lengths are known) inside the
        block; the gRPC server, validation and scheduler stay real. Use it while idle."""
        scheduler = self.engine().scheduler
        assert scheduler.idle
        real = scheduler._runner
        scheduler._runner = runner
        try:
            yield
        finally:
            for _ in range(3000):  # the fake's rows must leave before the real runner is back
                if scheduler.idle:
                    break
                time.sleep(0.01)
            scheduler._runner = real

    def slowed(self, seconds: float) -> Any:
        """A slow model inside the block: every step takes `seconds` more."""

        def slow(step: Callable[[Any], Any], plan: Any) -> Any:
            time.sleep(seconds)
            return step(plan)

        return self.patched_step(slow)

    def engine(self, model: str = "") -> TranslationEngine:
        """The engine serving `model` ("" = the default model)."""
        return self.server.repository.get(model)

    def sample(self, name: str, labels: dict[str, str] | None = None) -> float:
        """The sum of the samples `name` whose labels include `labels` (0 when none)."""
        wanted = (labels or {}).items()
        return float(
            sum(
                sample.value
                for metric in self.server.metrics.registry.collect()
                for sample in metric.samples
                if sample.name == name and wanted <= sample.labels.items()
            )
        )


def translate_request(
    segments: Sequence[str | bytes], to: str, **options: Any
) -> pb.TranslateRequest:
    return pb.TranslateRequest(
        segments=[s.encode() if isinstance(s, str) else s for s in segments],
        target_language=to,
        options=pb.DecodingOptions(**options),
    )


def stub(address: str) -> tuple[grpc.Channel, pb_grpc.TranslatorStub]:
    channel = grpc.insecure_channel(address)
    return channel, pb_grpc.TranslatorStub(channel)


def promtool() -> Path:
    """Debian's promtool, fetched into .cache/ by scripts/fetch_prometheus.sh (skip without it)."""
    script = Path(__file__).resolve().parents[2] / "scripts" / "fetch_prometheus.sh"
    result = subprocess.run([str(script)], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        pytest.skip(f"promtool unavailable: {result.stderr.strip()[-200:]}")
    return Path(result.stdout.strip()) / "promtool"
