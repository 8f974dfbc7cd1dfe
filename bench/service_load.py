"""Closed-loop load generator for the gRPC service: N clients for T seconds, per configuration.

    python -m bench.service_load --bundle models/default --clients 32 --seconds 20

For each configuration (the server as configured, then the same with TRANSLATOR_MAX_ACTIVE_ROWS=1,
i.e. no batching) it starts `python -m service` on a free port; after a warm-up of each, N clients
that each send one sentence, wait for the answer and send the next load the servers in turn,
`--rounds` times T/rounds seconds each (T in all per configuration), so that the speed drift of
a shared machine does not favour whichever configuration ran first. It prints sentences/s, output
tokens/s, p50/p95/p99 latency and the mean rows per decoder step (from the server's own metrics).
Results also go to bench/results/service_load.json. Never pass/fail.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

import grpc
import numpy as np

from service.pb.translator.v1 import translator_pb2 as pb
from service.pb.translator.v1 import translator_pb2_grpc as pb_grpc

ROOT = Path(__file__).resolve().parents[1]
LISTENING = re.compile(r"serving .* on [\d.]+:(\d+) \(metrics :(\d+)")


def bench_sentences(count: int = 512) -> list[tuple[str, str]]:
    """(source, target language) pairs of the built-in corpus' test split: the default model's
    own domain (numbers, dates, amounts), so output lengths are realistic."""
    from model.builtin_corpus import builtin_corpus  # torch-free; bench may import anything

    return [(p.source, p.lang) for p in builtin_corpus(size=20_000, seed=99).test[:count]]


@dataclass
class Figures:
    """One configuration's results."""

    name: str
    clients: int
    seconds: float
    sentences: int
    errors: int
    sentences_per_s: float
    tokens_per_s: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    mean_batch_rows: float
    server_cpu_ms_per_sentence: float  # the server process's CPU time (all threads) per answer


class ServerProcess:
    """`python -m service` on free ports; stops with SIGTERM."""

    def __init__(self, bundle: Path, env: dict[str, str]) -> None:
        variables = os.environ | {
            "TRANSLATOR_HOST": "127.0.0.1",
            "TRANSLATOR_PORT": "0",
            "TRANSLATOR_METRICS_PORT": "0",
            "TRANSLATOR_BUNDLE_PATH": str(bundle),
            "TRANSLATOR_REFLECTION": "false",
        }
        self.process = subprocess.Popen(
            [sys.executable, "-m", "service"],
            cwd=ROOT,
            env=variables | env,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.process.stderr is not None
        for line in self.process.stderr:
            if match := LISTENING.search(line):
                self.port, self.metrics_port = int(match.group(1)), int(match.group(2))
                return
        raise RuntimeError(f"the server did not start (exit {self.process.wait()})")

    def batch_rows(self) -> tuple[float, float]:
        """(sum, count) of translator_batch_rows so far."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            text = response.read().decode()
        pairs = re.findall(r"^translator_batch_rows_(sum|count)\{[^}]*\} (\S+)$", text, re.M)
        totals = {"sum": 0.0, "count": 0.0}
        for name, value in pairs:  # one series per model
            totals[name] += float(value)
        return totals["sum"], totals["count"]

    def cpu_seconds(self) -> float:
        """User + system CPU time of the server process so far, all threads."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=60)


async def _client(
    address: str,
    sentences: list[tuple[str, str]],
    stop_at: float,
    offset: int,
    options: pb.DecodingOptions,
) -> tuple[list[float], int, int]:
    """One closed-loop client: (latencies, output tokens, errors)."""
    latencies: list[float] = []
    tokens = errors = 0
    async with grpc.aio.insecure_channel(address) as channel:  # one connection per client
        translator = pb_grpc.TranslatorStub(channel)
        i = offset
        while time.perf_counter() < stop_at:
            text, lang = sentences[i % len(sentences)]
            i += 1
            request = pb.TranslateRequest(
                segments=[text.encode()], target_language=lang, options=options
            )
            start = time.perf_counter()
            try:
                reply = await translator.Translate(request, timeout=60)
            except grpc.aio.AioRpcError:
                errors += 1
                continue
            latencies.append(time.perf_counter() - start)
            tokens += reply.translations[0].token_count
    return latencies, tokens, errors


async def _load(
    address: str, sentences: list[tuple[str, str]], args: argparse.Namespace, seconds: float
) -> tuple[list[float], int, int]:
    options = pb.DecodingOptions(beam_size=args.beam, max_output_tokens=args.max_output_tokens)
    stop_at = time.perf_counter() + seconds
    runs = await asyncio.gather(
        *(_client(address, sentences, stop_at, 17 * i, options) for i in range(args.clients))
    )
    latencies = [x for run in runs for x in run[0]]
    return latencies, sum(r[1] for r in runs), sum(r[2] for r in runs)


@dataclass
class _Tally:
    """What one configuration's rounds add up to."""

    latencies: list[float] = field(default_factory=list)
    tokens: int = 0
    errors: int = 0
    seconds: float = 0.0
    rows: float = 0.0
    steps: float = 0.0
    cpu_seconds: float = 0.0


def measure(configs: list[tuple[str, dict[str, str]]], args: argparse.Namespace) -> list[Figures]:
    """Start one server per configuration, then load them in turn, `args.rounds` rounds of
    `args.seconds / args.rounds` each: a drift in the machine's speed (a shared VM's is large)
    then weighs on every configuration alike instead of on whichever ran during it."""
    servers: list[ServerProcess] = []
    try:
        for _, env in configs:
            servers.append(ServerProcess(args.bundle, env))
        tallies = [_Tally() for _ in configs]
        sentences = bench_sentences()
        if args.target_language:  # another model's pair: the same English sources
            sentences = [(text, args.target_language) for text, _ in sentences]
        for server in servers:
            asyncio.run(_load(f"127.0.0.1:{server.port}", sentences, args, args.warmup))
        for _ in range(args.rounds):
            for server, tally in zip(servers, tallies, strict=True):
                address = f"127.0.0.1:{server.port}"
                rows_before, steps_before = server.batch_rows()
                cpu_before = server.cpu_seconds()
                start = time.perf_counter()
                latencies, tokens, errors = asyncio.run(
                    _load(address, sentences, args, args.seconds / args.rounds)
                )
                tally.seconds += time.perf_counter() - start
                tally.cpu_seconds += server.cpu_seconds() - cpu_before
                rows_after, steps_after = server.batch_rows()
                tally.latencies += latencies
                tally.tokens += tokens
                tally.errors += errors
                tally.rows += rows_after - rows_before
                tally.steps += steps_after - steps_before
    finally:
        for server in servers:
            server.stop()
    return [_figures(name, tally, args) for (name, _), tally in zip(configs, tallies, strict=True)]


def _figures(name: str, tally: _Tally, args: argparse.Namespace) -> Figures:
    ms = (
        np.percentile(np.array(tally.latencies) * 1000, [50, 95, 99])
        if tally.latencies
        else [0.0] * 3
    )
    return Figures(
        name=name,
        clients=args.clients,
        seconds=round(tally.seconds, 2),
        sentences=len(tally.latencies),
        errors=tally.errors,
        sentences_per_s=round(len(tally.latencies) / tally.seconds, 2),
        tokens_per_s=round(tally.tokens / tally.seconds, 1),
        p50_ms=round(float(ms[0]), 1),
        p95_ms=round(float(ms[1]), 1),
        p99_ms=round(float(ms[2]), 1),
        mean_batch_rows=round(tally.rows / tally.steps, 2) if tally.steps else 0.0,
        server_cpu_ms_per_sentence=round(
            1000 * tally.cpu_seconds / max(len(tally.latencies), 1), 3
        ),
    )


def _print(results: list[Figures]) -> None:
    header = (
        "config",
        "clients",
        "sent/s",
        "tok/s",
        "p50 ms",
        "p95 ms",
        "p99 ms",
        "rows",
        "errors",
        "cpu ms",
    )
    print(("{:<28}" + "{:>9}" * 9).format(*header))
    for r in results:
        figures = (r.clients, r.sentences_per_s, r.tokens_per_s, r.p50_ms, r.p95_ms, r.p99_ms)
        extra = (r.mean_batch_rows, r.errors, r.server_cpu_ms_per_sentence)
        print(("{:<28}" + "{:>9}" * 9).format(r.name, *figures, *extra))
    print("cpu ms: the server process's CPU time per answered sentence, all its threads")
    if len(results) == 2 and results[1].sentences_per_s:
        ratio = results[0].sentences_per_s / results[1].sentences_per_s
        print(f"batched / unbatched sentences/s: {ratio:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bundle", type=Path, default=ROOT / "models" / "default")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--beam", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=4, help="alternations of the configurations")
    parser.add_argument("--target-language", help="translate every sentence into this language")
    parser.add_argument(
        "--max-output-tokens", type=int, default=0, help="per request; 0: the server's default"
    )
    parser.add_argument("--batched-only", action="store_true", help="skip the unbatched server")
    parser.add_argument("--results-name", default="service_load", help="bench/results/NAME.json")
    # One ONNX Runtime thread by default: on a 2-core machine the clients and the server's event
    # loop need the other core (two threads measured 3-4x slower there under load).
    parser.add_argument("--threads", default=os.environ.get("TRANSLATOR_THREADS", "1"))
    args = parser.parse_args()
    configured = os.environ.get("TRANSLATOR_MAX_ACTIVE_ROWS", "64")
    runs = [
        (f"batched (max rows {configured})", {"TRANSLATOR_MAX_ACTIVE_ROWS": configured}),
        ("unbatched (max rows 1)", {"TRANSLATOR_MAX_ACTIVE_ROWS": "1"}),
    ]
    if args.batched_only:
        runs = runs[:1]
    threads = {"TRANSLATOR_THREADS": str(args.threads)}
    results = measure([(name, env | threads) for name, env in runs], args)
    _print(results)
    write_results(args.results_name, [asdict(r) for r in results])


def write_results(name: str, rows: list[dict[str, object]]) -> None:
    """Write bench/results/NAME.json and say where."""
    out = ROOT / "bench" / "results" / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=2) + "\n")
    print(f"written: {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
