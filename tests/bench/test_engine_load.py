"""The engine benchmark runs end to end on the tiny bundle and reports what it served."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from bench.engine_load import build_load, measure


def test_engine_load_serves_closed_loop_clients(tiny_bundle: Path) -> None:
    runner, segments = build_load(tiny_bundle, threads=1)
    assert segments and all(options.max_new_tokens > 0 for _, options in segments)
    args = argparse.Namespace(clients=4, seconds=0.3, warmup=0.1)
    figures = asyncio.run(measure(runner, segments, 8, args))
    assert figures.sentences > 0
    assert figures.sentences_per_s > 0 and figures.tokens_per_s > 0
    assert runner.rows == 0  # every row left the batch once the clients stopped
