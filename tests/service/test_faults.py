"""Faults the process cannot recover from end it, so that Kubernetes restarts it.

An engine thread that dies (here: the decoder step raises SystemExit, which the per-batch error
handling does not catch) turns liveness and readiness NOT_SERVING, fails the request in flight,
and `python -m service`'s run loop returns exit status 1 within a few seconds.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2

from service.__main__ import serve
from service.health import LIVENESS, READINESS
from service.pb.translator.v1 import translator_pb2_grpc as pb_grpc
from service.server import TranslationServer
from service.settings import ServiceSettings
from tests.service.service_harness import translate_request


def _server(bundle: Path) -> TranslationServer:
    """A server on free loopback ports, started by the test's own event loop."""
    settings = ServiceSettings(
        host="127.0.0.1", port=0, metrics_port=0, bundle_path=bundle, device="cpu", threads=1
    )
    return TranslationServer(settings)


def test_a_dead_engine_thread_ends_the_process_with_status_1(
    service_bundle: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server = _server(service_bundle)
    seen: dict[str, Any] = {}

    def die(plan: Any) -> Any:
        raise SystemExit("injected: the decoder thread ends")

    async def scenario() -> int:
        running = asyncio.create_task(serve(server))
        while not server.repository.ready:  # noqa: ASYNC110 (ready is a plain property)
            await asyncio.sleep(0.05)
        server.repository.get("").runner.step = die  # type: ignore[method-assign]
        started = time.monotonic()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            try:
                await pb_grpc.TranslatorStub(channel).Translate(
                    translate_request(["hello"], "de"), timeout=10
                )
            except grpc.aio.AioRpcError as error:
                seen["code"] = error.code()
        await server.failed.wait()
        seen["statuses"] = {
            name: (
                await server.health.servicer.Check(
                    health_pb2.HealthCheckRequest(service=name), None
                )
            ).status
            for name in (LIVENESS, READINESS)
        }
        code = await asyncio.wait_for(running, timeout=10)
        seen["seconds"] = time.monotonic() - started
        return code

    with caplog.at_level(logging.ERROR):
        assert asyncio.run(scenario()) == 1
    assert seen["code"] == grpc.StatusCode.INTERNAL
    assert set(seen["statuses"].values()) == {health_pb2.HealthCheckResponse.NOT_SERVING}
    assert seen["seconds"] < 5
    assert "an engine thread stopped: exiting with status 1" in caplog.text


def test_before_warm_up_readiness_waits_and_requests_are_unavailable(
    service_bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from service.engine import TranslationEngine

    real_warm_up = TranslationEngine.warm_up

    def slow_warm_up(engine: TranslationEngine) -> None:
        time.sleep(1.5)
        real_warm_up(engine)

    monkeypatch.setattr(TranslationEngine, "warm_up", slow_warm_up)
    server = _server(service_bundle)

    async def status(name: str) -> int:
        request = health_pb2.HealthCheckRequest(service=name)
        return int((await server.health.servicer.Check(request, None)).status)

    async def scenario() -> tuple[dict[str, int], str, list[str]]:
        starting = asyncio.create_task(server.start())
        while not server.port:  # noqa: ASYNC110 (the port is a plain attribute)
            await asyncio.sleep(0.01)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            translator = pb_grpc.TranslatorStub(channel)
            early = {name: await status(name) for name in (LIVENESS, READINESS)}
            try:
                await translator.Translate(translate_request(["hello"], "de"), timeout=10)
                before = "OK"
            except grpc.aio.AioRpcError as error:
                before = error.code().name
            await starting
            after = []
            for _ in range(20):
                reply = await translator.Translate(translate_request(["hello"], "de"), timeout=10)
                after.append(reply.model_name)
        await server.stop(grace=1, delay=0)
        return early, before, after

    early, before, after = asyncio.run(scenario())
    serving, not_serving = (
        health_pb2.HealthCheckResponse.SERVING,
        health_pb2.HealthCheckResponse.NOT_SERVING,
    )
    assert early == {LIVENESS: serving, READINESS: not_serving}
    assert before == "UNAVAILABLE"
    assert len(after) == 20 and all(after)
