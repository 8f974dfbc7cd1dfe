"""Requests that cannot finish: clients that vanish mid-request, and requests longer than the
grace period at shutdown. Nothing hangs and nothing leaks."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import grpc
from service_fakes import FakeRunner

from tests.service.service_harness import ServerThread, stub, translate_request

FAKE_LONG = "one two three four five six seven eight nine"  # > 8 tokens: 100 fake steps
CLIENT = textwrap.dedent(
    """
    import asyncio, sys
    import grpc
    from service.pb.translator.v1 import translator_pb2 as pb, translator_pb2_grpc as pb_grpc

    async def main(address):
        async with grpc.aio.insecure_channel(address) as channel:
            stub = pb_grpc.TranslatorStub(channel)
            request = pb.TranslateRequest(segments=[sys.argv[2].encode()], target_language="de",
                                          options=pb.DecodingOptions(max_output_tokens=128))
            calls = [stub.Translate(request, timeout=60) for _ in range(200)]
            print("sent", flush=True)
            await asyncio.gather(*calls, return_exceptions=True)

    asyncio.run(main(sys.argv[1]))
    """
)


def test_200_clients_killed_mid_request_leave_nothing_behind(service_bundle: Path) -> None:
    running = ServerThread(service_bundle, max_active_rows=8).start()
    try:
        baseline = threading.active_count()
        with running.replaced_runner(FakeRunner(step_seconds=0.01, long_sources=8)):
            client = subprocess.Popen(
                [sys.executable, "-c", CLIENT, running.address, FAKE_LONG],
                stdout=subprocess.PIPE,
                text=True,
                cwd=Path(__file__).resolve().parents[2],
            )
            assert client.stdout is not None and client.stdout.readline().strip() == "sent"
            running.wait_until(lambda: running.sample("translator_active_rows") > 0, timeout=10)
            client.kill()
            client.wait(timeout=10)
            killed = time.monotonic()
            running.wait_until(
                lambda: (
                    running.sample("translator_active_rows") == 0
                    and running.sample("translator_queue_depth") == 0
                ),
                timeout=2.0,
            )
            freed = time.monotonic() - killed
        print(f"\n200 calls of a killed client: rows and queue freed in {freed * 1000:.0f} ms")
        assert threading.active_count() <= baseline + 5
        channel, translator = stub(running.address)
        with channel:
            assert translator.Translate(translate_request(["hello"], "de"), timeout=30)
    finally:
        running.stop()


def test_requests_longer_than_the_grace_period_end_without_a_hang(service_bundle: Path) -> None:
    running = ServerThread(service_bundle, max_active_rows=4).start()
    channel, translator = stub(running.address)
    with channel, running.replaced_runner(FakeRunner(step_seconds=0.3, long_sources=8)):
        request = translate_request([FAKE_LONG], "de", max_output_tokens=128)  # about 30 s each
        calls = [translator.Translate.future(request, timeout=60) for _ in range(4)]
        time.sleep(0.5)
        start = time.monotonic()
        running.stop(grace=2.0)
        stopped = time.monotonic() - start
        codes = [call.exception().code() for call in calls]
    print(f"\nstop with grace 2 s under 30 s requests took {stopped:.2f} s; {codes}")
    assert stopped < 3.5
    assert set(codes) <= {grpc.StatusCode.CANCELLED, grpc.StatusCode.UNAVAILABLE}
