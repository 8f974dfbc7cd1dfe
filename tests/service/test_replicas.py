"""Three replicas behind a client-side `round_robin` balancer, as a gRPC client reaches a headless
Kubernetes Service: the load spreads, and replicas stopped with SIGTERM under load lose nothing.

The client uses the service config that deploy/README.md ships (`CLIENT_SERVICE_CONFIG` in
service/client.py): round_robin, health checking of the readiness service, and retries of
UNAVAILABLE and RESOURCE_EXHAUSTED within the deadline. A draining replica answers NOT_SERVING
first and goes on serving for the drain delay, so clients move away before it refuses anything;
what reaches it after that gets UNAVAILABLE, which the client retries elsewhere.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path

import grpc

from service.client import CLIENT_SERVICE_CONFIG
from service.pb.translator.v1 import translator_pb2_grpc as pb_grpc
from tests.service.service_harness import translate_request

ROOT = Path(__file__).resolve().parents[2]
REPLICAS = 3
SENTENCES = ["Good morning.", "forty-two", "Monday", "The weather is nice today."]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Replica:
    """`python -m service` on a fixed port, restartable on the same one."""

    def __init__(self, bundle: Path) -> None:
        self.bundle = bundle
        self.port, self.metrics_port = _free_port(), _free_port()
        self.process: subprocess.Popen[str] | None = None

    def start(self) -> Replica:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TRANSLATOR_")} | {
            "TRANSLATOR_HOST": "127.0.0.1",
            "TRANSLATOR_PORT": str(self.port),
            "TRANSLATOR_METRICS_PORT": str(self.metrics_port),
            "TRANSLATOR_BUNDLE_PATH": str(self.bundle),
            "TRANSLATOR_DEVICE": "cpu",
            "TRANSLATOR_THREADS": "1",
            "TRANSLATOR_DRAIN_DELAY_S": "1",
            "TRANSLATOR_GRACE_PERIOD_S": "10",
        }
        self.process = subprocess.Popen(
            [sys.executable, "-m", "service"],
            cwd=ROOT,
            env=env,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.process.stderr is not None
        for line in self.process.stderr:
            if re.search(r"serving .* on ", line):
                threading.Thread(target=self.process.stderr.read, daemon=True).start()
                return self
        raise AssertionError(f"replica on :{self.port} never served")

    def ok_count(self) -> float:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as reply:
            text = reply.read().decode()
        pattern = r'translator_requests_total\{code="OK",method="Translate",model="[^"]*"\} (\S+)'
        return sum(float(v) for v in re.findall(pattern, text))

    def stop(self) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=60)


def _channel(replicas: list[Replica]) -> grpc.Channel:
    target = "ipv4:" + ",".join(f"127.0.0.1:{r.port}" for r in replicas)
    options = [("grpc.service_config", json.dumps(CLIENT_SERVICE_CONFIG))]
    return grpc.insecure_channel(target, options=options)


def _load(replicas: list[Replica], threads: int, stop: threading.Event, codes: Counter[str]):
    lock = threading.Lock()

    def run(i: int) -> None:
        with _channel(replicas) as channel:
            translator = pb_grpc.TranslatorStub(channel)
            k = i
            while not stop.is_set():
                request = translate_request([SENTENCES[k % len(SENTENCES)]], "de")
                try:
                    translator.Translate(request, timeout=30, wait_for_ready=True)
                    code = "OK"
                except grpc.RpcError as error:
                    code = error.code().name
                with lock:
                    codes[code] += 1
                k += 1

    workers = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(threads)]
    for worker in workers:
        worker.start()
    return workers


def test_round_robin_spreads_and_sigterms_under_load_lose_nothing(service_bundle: Path) -> None:
    replicas = [Replica(service_bundle) for _ in range(REPLICAS)]
    threads = [threading.Thread(target=r.start) for r in replicas]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=180)
    try:
        with _channel(replicas) as channel:
            translator = pb_grpc.TranslatorStub(channel)
            for i in range(3000):
                request = translate_request([SENTENCES[i % len(SENTENCES)]], "de")
                translator.Translate(request, timeout=30, wait_for_ready=True)
        shares = [r.ok_count() / 3000 for r in replicas]
        print(f"\nround_robin shares of 3,000 requests: {[f'{s:.1%}' for s in shares]}")
        assert all(0.20 <= s <= 0.45 for s in shares), shares

        stop, codes = threading.Event(), Counter[str]()
        workers = _load(replicas, 32, stop, codes)
        exits = []
        for cycle in range(4):
            time.sleep(2.0)
            victim = replicas[cycle % REPLICAS]
            exits.append(victim.stop())
            victim.start()
        time.sleep(2.0)
        stop.set()
        for worker in workers:
            worker.join(timeout=60)
        print(f"4 SIGTERMs under 32 client threads: {dict(codes)}")
        assert exits == [0, 0, 0, 0]
        assert set(codes) == {"OK"}, codes
        assert codes["OK"] > 100
    finally:
        for replica in replicas:
            if replica.process is not None and replica.process.poll() is None:
                replica.process.kill()
