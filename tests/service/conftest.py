"""Service test fixtures: schedulers over a fake runner; the bundle for end-to-end tests."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from service_fakes import FakeRunner
from service_harness import ServerThread

from service.bundle import load_bundle
from service.metrics import Metrics
from service.scheduler import BatchScheduler
from service.settings import EngineSettings

TEST_MODEL = "test"


@pytest_asyncio.fixture
async def make_scheduler():
    """A started, open scheduler over a runner, with the given limits; closed after the test."""
    made: list[BatchScheduler] = []

    def make(
        runner: FakeRunner,
        max_active_rows: int = 8,
        max_tokens_in_flight: int = 10_000,
        max_queued: int = 16,
        queue_timeout_s: float = 30.0,
        admit_every_steps: int = 1,
        metrics: Metrics | None = None,
    ) -> BatchScheduler:
        limits = EngineSettings(
            max_active_rows=max_active_rows,
            max_tokens_in_flight=max_tokens_in_flight,
            max_queued_requests=max_queued,
            queue_timeout_s=queue_timeout_s,
            admit_every_steps=admit_every_steps,
        )
        scheduler = BatchScheduler(runner, limits, (metrics or Metrics()).for_model(TEST_MODEL))
        scheduler.start()
        scheduler.open()
        made.append(scheduler)
        return scheduler

    yield make
    for scheduler in made:
        await scheduler.close()


@pytest.fixture(scope="session")
def service_bundle(request: pytest.FixtureRequest) -> Path:
    """The tiny test bundle: the `tiny_bundle` fixture of tests/conftest.py, or a bundle directory
    named by TRANSLATOR_TEST_BUNDLE."""
    if os.environ.get("TRANSLATOR_TEST_BUNDLE"):
        return Path(os.environ["TRANSLATOR_TEST_BUNDLE"])
    return Path(request.getfixturevalue("tiny_bundle"))


@pytest.fixture(scope="session")
def marian_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random OPUS-MT-shaped en-de model, as `save_pretrained` writes it."""
    from tests.hf_marian import build_marian_dir

    return build_marian_dir(tmp_path_factory.mktemp("marian") / "opus-mt-en-de", max_length=24)


@pytest.fixture(scope="session")
def marian_bundle(marian_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Marian model imported and exported (parity-gated)."""
    from tests.hf_marian import import_and_export

    return import_and_export(marian_dir, tmp_path_factory.mktemp("en-de"))


@pytest.fixture(scope="module")
def server(service_bundle: Path) -> Iterator[ServerThread]:
    """A server with the default limits, for the module."""
    running = ServerThread(service_bundle).start()
    yield running
    running.stop()


@pytest.fixture(scope="session")
def reference(service_bundle: Path) -> Any:
    """The bundle's reference decoder (ORT only)."""
    from export.reference_decoder import ReferenceDecoder

    return ReferenceDecoder(load_bundle(service_bundle), threads=1)
