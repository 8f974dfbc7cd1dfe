"""The engine's own ceiling: scheduler + runner + ONNX Runtime under closed-loop load, no gRPC.

    python -m bench.engine_load --bundle models/default --clients 32 --seconds 10

The same load as bench/service_load.py (N clients, each sending one sentence of the built-in test
split and waiting for it), but the clients are coroutines that call `BatchScheduler.translate`
in-process: validation, queue, continuous batching, encoder and decoder runs stay; gRPC, the
network and the load generator's own RPC work are gone. Run for max active rows 64 and 1, it
shows how much of the service's batched / unbatched ratio the engine alone allows, and how much
the front end costs. Writes bench/results/engine_load.json. Timings, not pass/fail.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from bench.service_load import bench_sentences, write_results
from service.engine import TranslationEngine
from service.metrics import Metrics
from service.runner import Seq2SeqRunner
from service.scheduler import BatchScheduler
from service.settings import EngineSettings, ServiceSettings
from service.types import RequestedOptions, Segment

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class EngineFigures:
    """One configuration's results."""

    max_active_rows: int
    clients: int
    seconds: float
    sentences: int
    sentences_per_s: float
    cpu_ms_per_sentence: float  # this process's CPU time (all threads) per answer
    tokens_per_s: float


def build_load(bundle_path: Path, threads: int) -> tuple[Seq2SeqRunner, list[Segment]]:
    """A runner on the bundle, and the bench sentences validated as the server validates them."""
    settings = ServiceSettings(device="cpu", threads=threads, max_beam_size=1, warmup=False)
    engine = TranslationEngine.load(bundle_path, settings.engine(), Metrics().for_model("bench"))
    options = engine.validator.options(RequestedOptions())
    segments = [
        engine.validator.segments([text.encode()], lang, "", options)[0]
        for text, lang in bench_sentences()
    ]
    return engine.runner, segments


async def _load(
    scheduler: BatchScheduler, segments: list[Segment], clients: int, seconds: float
) -> tuple[int, int]:
    """(sentences, output tokens) of `clients` closed-loop clients over `seconds`."""
    stop_at = time.perf_counter() + seconds

    async def client(i: int) -> tuple[int, int]:
        done = tokens = 0
        while time.perf_counter() < stop_at:
            ((best, *_),) = await scheduler.translate([segments[i % len(segments)]], None)
            i += 1
            done, tokens = done + 1, tokens + len(best.ids)
        return done, tokens

    runs = await asyncio.gather(*(client(17 * i) for i in range(clients)))
    return sum(r[0] for r in runs), sum(r[1] for r in runs)


async def measure(
    runner: Seq2SeqRunner, segments: list[Segment], rows: int, args: argparse.Namespace
) -> EngineFigures:
    limits = EngineSettings(max_active_rows=rows)
    scheduler = BatchScheduler(runner, limits, Metrics().for_model("bench"))
    scheduler.start()
    scheduler.open()
    try:
        await _load(scheduler, segments, args.clients, args.warmup)
        start, cpu_start = time.perf_counter(), time.process_time()
        sentences, tokens = await _load(scheduler, segments, args.clients, args.seconds)
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    finally:
        await scheduler.close()
    return EngineFigures(
        max_active_rows=rows,
        clients=args.clients,
        seconds=round(elapsed, 2),
        sentences=sentences,
        sentences_per_s=round(sentences / elapsed, 2),
        cpu_ms_per_sentence=round(1000 * cpu / max(sentences, 1), 3),
        tokens_per_s=round(tokens / elapsed, 1),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bundle", type=Path, default=ROOT / "models" / "default")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads per run")
    args = parser.parse_args()
    runner, segments = build_load(args.bundle, args.threads)
    results = [asyncio.run(measure(runner, segments, rows, args)) for rows in (64, 1)]
    print(f"{'max active rows':<18}{'clients':>9}{'sent/s':>10}{'tok/s':>10}{'cpu ms':>9}")
    for r in results:
        print(
            f"{r.max_active_rows:<18}{r.clients:>9}{r.sentences_per_s:>10}{r.tokens_per_s:>10}"
            f"{r.cpu_ms_per_sentence:>9}"
        )
    ratio = results[0].sentences_per_s / max(results[1].sentences_per_s, 1e-9)
    print(f"engine alone, batched / unbatched sentences/s: {ratio:.2f}x")
    write_results("engine_load", [asdict(r) for r in results])


if __name__ == "__main__":
    main()
