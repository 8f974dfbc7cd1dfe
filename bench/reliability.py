"""Long reliability runs on a real `python -m service`: soak and overload. Prints figures; never
pass/fail (the pass criteria are printed beside them).

    python -m bench.reliability --bundle models/default soak --requests 50000
    python -m bench.reliability --bundle models/default overload --seconds 60
    python -m bench.reliability --bundle models/default connections

soak: N requests of random length (1 to 6 sentences of the built-in corpus' test split, each to
its own language) from 8 closed-loop clients. After a warm-up of 2,000 requests, the server's
RSS, open files and threads are read from /proc; again at the end. Criterion: RSS growth < 50 MB,
open files and threads within +-10.

overload: the capacity C (requests/s answered OK to 64 closed-loop clients in 10 s) is measured,
then requests are sent open-loop at 2C for T seconds with TRANSLATOR_QUEUE_TIMEOUT_S=2.
Criteria: admitted (OK) requests' p99 <= queue timeout + one batch; errors only
RESOURCE_EXHAUSTED or DEADLINE_EXCEEDED; the server's translator_requests_total by code equals
the client's tally; every request sent ends with a status.

connections: the p99 of 8 closed-loop clients alone, then beside 500 idle connections, 20 TCP
sockets that send nothing and a client process stopped with SIGSTOP; and how long until the
server closes the stopped client's connection (`ss`). Criteria: p99 within +10 %; closed within
keepalive 30 s + timeout 10 s + 5 s.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path

import grpc
import numpy as np

from bench.service_load import ServerProcess, bench_sentences
from service.pb.translator.v1 import translator_pb2 as pb
from service.pb.translator.v1 import translator_pb2_grpc as pb_grpc

QUEUE_TIMEOUT_S = 2.0
# Capacity: 64 closed-loop clients keep more rows waiting than a batch holds. (An open-loop flood
# measures less on 2 cores: the client's own work competes with the server's. Under overload the
# requests answered OK are the shorter ones: the queue refuses the long ones first.)
CAPACITY_CLIENTS = 64


def _proc(pid: int) -> dict[str, float]:
    """RSS (MB), open files and threads of a process."""
    status = Path(f"/proc/{pid}/status").read_text()
    rss = int(re.search(r"VmRSS:\s+(\d+)", status).group(1)) / 1024  # type: ignore[union-attr]
    threads = int(re.search(r"Threads:\s+(\d+)", status).group(1))  # type: ignore[union-attr]
    return {"rss_mb": rss, "files": len(os.listdir(f"/proc/{pid}/fd")), "threads": threads}


def _requests(count: int, seed: int) -> list[pb.TranslateRequest]:
    """Requests of random length: 1 to 6 segments of one target language."""
    sentences, rng = bench_sentences(2048), random.Random(seed)
    by_lang: dict[str, list[str]] = {}
    for text, lang in sentences:
        by_lang.setdefault(lang, []).append(text)
    langs = sorted(by_lang)
    out = []
    for _ in range(count):
        lang = rng.choice(langs)
        segments = rng.sample(by_lang[lang], rng.randint(1, 6))
        out.append(
            pb.TranslateRequest(segments=[s.encode() for s in segments], target_language=lang)
        )
    return out


def _server_codes(server: ServerProcess) -> Counter[str]:
    url = f"http://127.0.0.1:{server.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    codes: Counter[str] = Counter()
    pattern = r'^translator_requests_total\{code="(\w+)",method="Translate",model="[^"]*"\} (\S+)$'
    for code, value in re.findall(pattern, text, re.M):
        codes[code] += int(float(value))
    return codes


async def _closed_loop(
    address: str, requests: list[pb.TranslateRequest], clients: int, deadline: float | None
) -> Counter[str]:
    """`clients` clients taking requests in turn until none are left (or `deadline`)."""
    codes: Counter[str] = Counter()
    queue = list(reversed(requests))

    async def client(stub: pb_grpc.TranslatorStub) -> None:
        while queue and (deadline is None or time.perf_counter() < deadline):
            try:
                await stub.Translate(queue.pop(), timeout=60)
                codes["OK"] += 1
            except grpc.aio.AioRpcError as error:
                codes[error.code().name] += 1

    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.TranslatorStub(channel)
        await asyncio.gather(*(client(stub) for _ in range(clients)))
    return codes


def soak(args: argparse.Namespace) -> None:
    server = ServerProcess(args.bundle, {"TRANSLATOR_THREADS": str(args.threads)})
    address = f"127.0.0.1:{server.port}"
    try:
        warm = _requests(2000, seed=1)
        asyncio.run(_closed_loop(address, warm, 8, None))
        before = _proc(server.process.pid)
        start = time.perf_counter()
        codes = asyncio.run(_closed_loop(address, _requests(args.requests, seed=2), 8, None))
        seconds = time.perf_counter() - start
        after = _proc(server.process.pid)
    finally:
        server.stop()
    print(
        f"soak: {args.requests} requests in {seconds:.0f} s after 2,000 of warm-up: {dict(codes)}"
    )
    for key, limit in (("rss_mb", "< 50 MB"), ("files", "+-10"), ("threads", "+-10")):
        growth = after[key] - before[key]
        print(f"  {key}: {before[key]:.0f} -> {after[key]:.0f} ({growth:+.0f}; criterion {limit})")


async def _open_loop(
    address: str, requests: list[pb.TranslateRequest], rate: float
) -> tuple[Counter[str], list[float], int]:
    """Send at `rate` per second whatever the answers; (codes, OK latencies, sent)."""
    codes: Counter[str] = Counter()
    latencies: list[float] = []

    async def one(stub: pb_grpc.TranslatorStub, request: pb.TranslateRequest) -> None:
        start = time.perf_counter()
        try:
            await stub.Translate(request, timeout=30)
            codes["OK"] += 1
            latencies.append(time.perf_counter() - start)
        except grpc.aio.AioRpcError as error:
            codes[error.code().name] += 1

    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.TranslatorStub(channel)
        tasks, start = [], time.perf_counter()
        for i, request in enumerate(requests):
            await asyncio.sleep(max(0.0, start + i / rate - time.perf_counter()))
            tasks.append(asyncio.create_task(one(stub, request)))
        await asyncio.gather(*tasks)
    return codes, latencies, len(tasks)


def overload(args: argparse.Namespace) -> None:
    env = {
        "TRANSLATOR_THREADS": str(args.threads),
        "TRANSLATOR_QUEUE_TIMEOUT_S": str(QUEUE_TIMEOUT_S),
    }
    server = ServerProcess(args.bundle, env)
    address = f"127.0.0.1:{server.port}"
    try:
        asyncio.run(_closed_loop(address, _requests(500, seed=3), 32, None))  # warm-up
        start = time.perf_counter()
        measured = asyncio.run(_closed_loop(address, _requests(100_000, seed=4), 32, start + 10.0))
        capacity = sum(measured.values()) / (time.perf_counter() - start)
        before = _server_codes(server)
        rate = 2 * capacity
        sent_requests = _requests(int(rate * args.seconds), seed=5)
        codes, latencies, sent = asyncio.run(_open_loop(address, sent_requests, rate))
        time.sleep(1.0)
        served = _server_codes(server) - before
    finally:
        server.stop()
    p99 = float(np.percentile(latencies, 99)) if latencies else float("nan")
    clients = CAPACITY_CLIENTS
    print(f"overload: capacity {capacity:.1f} requests/s ({clients} closed-loop clients, 10 s);")
    ended = sum(codes.values())
    print(f"  sent {sent} at {rate:.1f}/s for {args.seconds:.0f} s; ended with a status: {ended}")
    print(f"  client tally {dict(codes)}; server counters {dict(served)}; equal: {codes == served}")
    limit = f"queue timeout {QUEUE_TIMEOUT_S * 1000:.0f} ms + one batch"
    print(f"  OK p99 {p99 * 1000:.0f} ms (criterion <= {limit})")
    others = set(codes) - {"OK", "RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED"}
    print(f"  other status codes: {sorted(others) or 'none'}")


STOPPED_CLIENT = """
import sys, time, grpc
from service.pb.translator.v1 import translator_pb2 as pb, translator_pb2_grpc as pb_grpc
channel = grpc.insecure_channel(sys.argv[1])
pb_grpc.TranslatorStub(channel).ListLanguages(pb.ListLanguagesRequest(), timeout=10)
print("connected", flush=True)
time.sleep(3600)
"""


async def _latencies(
    address: str, requests: list[pb.TranslateRequest], seconds: float
) -> list[float]:
    """Latencies of 8 closed-loop clients over `seconds`."""
    latencies: list[float] = []
    stop_at = time.perf_counter() + seconds

    async def client(stub: pb_grpc.TranslatorStub, offset: int) -> None:
        i = offset
        while time.perf_counter() < stop_at:
            start = time.perf_counter()
            await stub.Translate(requests[i % len(requests)], timeout=30)
            latencies.append(time.perf_counter() - start)
            i += 1

    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.TranslatorStub(channel)
        await asyncio.gather(*(client(stub, 97 * k) for k in range(8)))
    return latencies


async def _idle_channels(address: str, count: int) -> list[grpc.aio.Channel]:
    """`count` connections, each used once, then left idle."""
    channels = []
    for _ in range(count):
        channel = grpc.aio.insecure_channel(
            address, options=[("grpc.use_local_subchannel_pool", 1)]
        )
        await pb_grpc.TranslatorStub(channel).ListLanguages(pb.ListLanguagesRequest(), timeout=10)
        channels.append(channel)
    return channels


def _established(pid: int, port: int) -> bool:
    """Whether process `pid` still holds an ESTABLISHED connection to `port`."""
    out = subprocess.run(
        ["ss", "-tnpH", "state", "established", f"( dport = :{port} )"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    return f"pid={pid}," in out


def connections(args: argparse.Namespace) -> None:
    """Scenario 27: idle connections, silent sockets and a stopped peer beside normal clients."""
    server = ServerProcess(args.bundle, {"TRANSLATOR_THREADS": str(args.threads)})
    address = f"127.0.0.1:{server.port}"
    requests = _requests(1000, seed=6)
    stopped = None
    try:
        asyncio.run(_latencies(address, requests, 3.0))  # warm-up
        alone = asyncio.run(_latencies(address, requests, args.seconds))

        async def crowded() -> list[float]:
            channels = await _idle_channels(address, args.idle)
            silent = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(20)]
            try:
                return await _latencies(address, requests, args.seconds)
            finally:
                for sock in silent:
                    sock.close()
                await asyncio.gather(*(c.close() for c in channels))

        stopped = subprocess.Popen(
            [sys.executable, "-c", STOPPED_CLIENT, address],
            stdout=subprocess.PIPE,
            text=True,
            cwd=Path(__file__).resolve().parents[1],
        )
        assert stopped.stdout is not None and stopped.stdout.readline().strip() == "connected"
        stopped.send_signal(signal.SIGSTOP)
        stopped_at = time.perf_counter()
        beside = asyncio.run(crowded())
        while _established(stopped.pid, server.port) and time.perf_counter() - stopped_at < 120:
            time.sleep(0.5)
        closed_after = time.perf_counter() - stopped_at
    finally:
        if stopped is not None:
            stopped.kill()
        server.stop()
    p99 = [float(np.percentile(x, 99)) * 1000 for x in (alone, beside)]
    print(f"connections: 8 clients' p99 {p99[0]:.0f} ms alone, {p99[1]:.0f} ms beside")
    print(f"  {args.idle} idle connections, 20 silent sockets and a SIGSTOPped client")
    print(f"  ({p99[1] / p99[0] - 1:+.0%}; criterion <= +10 %)")
    print(f"  the stopped client's connection closed by the server after {closed_after:.0f} s")
    print("  (criterion: keepalive 30 s + timeout 10 s + 5 s = 45 s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bundle", type=Path, default=Path("models/default"))
    parser.add_argument("--threads", type=int, default=1)
    runs = parser.add_subparsers(dest="run", required=True)
    soak_parser = runs.add_parser("soak")
    soak_parser.add_argument("--requests", type=int, default=50_000)
    overload_parser = runs.add_parser("overload")
    overload_parser.add_argument("--seconds", type=float, default=60.0)
    connections_parser = runs.add_parser("connections")
    connections_parser.add_argument("--idle", type=int, default=500)
    connections_parser.add_argument("--seconds", type=float, default=15.0)
    args = parser.parse_args()
    {"soak": soak, "overload": overload, "connections": connections}[args.run](args)


if __name__ == "__main__":
    main()
