"""Row shards: one graph run split into contiguous row ranges that run at once, a thread each.

ONNX Runtime's intra-op threads meet at every operator, and a decoder step of a small model is
about 60 operators of a few microseconds each: on 2 cores a second intra-op thread made the
default model's step slower, not faster (batch 32: 530 us against 470 us on one thread; batch 8:
197 against 152). Splitting the rows instead costs one hand-over per run: two single-threaded
runs of 16 rows each took 310 us for the 32 rows, 565 against 874 us at 64 rows (measured with
the shipped model, 2 cores). The rows of a batch are independent in both graphs, so a shard's
output is the one it would have in the whole batch.

Below a few rows per shard the hand-over costs more than the split saves (batch 12: 183 us
split, 182 whole), so small runs stay on the calling thread. ONNX Runtime releases the GIL
inside a run, so the shards really run in parallel.

The scheduler's encoder and decoder threads run at the same time, so a model's runs share one
`CoreBudget`: a run takes as many shards as there are threads no other run is using (at least
one, its own), and a step while the encoder is idle gets both cores. Under closed-loop load
(bench/engine_load.py, 32 clients, 2 cores) splitting every run in two took the engine to
16,000 output tokens/s where one thread per run did 26,700; with the budget, 2 threads did
21,300 against 24,000 for one thread in the same round (an encoder run that starts during a
split step still finds both cores taken).
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple


class CoreBudget:
    """The CPU threads that the concurrent runs of one model share."""

    def __init__(self, threads: int) -> None:
        self.threads = max(1, threads)
        self._busy = 0  # threads taken by runs in flight
        self._lock = threading.Lock()

    def take(self, wanted: int) -> int:
        """Up to `wanted` of the threads no run is using, and never fewer than one."""
        with self._lock:
            granted = max(1, min(wanted, self.threads - self._busy))
            self._busy += granted
            return granted

    def give_back(self, threads: int) -> None:
        with self._lock:
            self._busy -= threads


class RowShards:
    """Splits runs of enough rows into shards, as many as `budget` spares, run concurrently.

    Args:
        budget: the threads shared with the model's other runs.
        name: the worker threads' name prefix.
    """

    def __init__(self, budget: CoreBudget, name: str) -> None:
        self._budget = budget
        workers = budget.threads - 1
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix=name) if workers else None

    def run(self, rows: int, min_rows: int, call: Callable[[Shard], None]) -> None:
        """`call(shard)` for each shard of rows [0, rows): at most one shard per `min_rows`
        rows, at most as many as the budget spares; the first on this thread and the others on
        the workers. Returns once all have returned, raising the first error any of them
        raised."""
        wanted = rows // max(1, min_rows) if self._pool is not None else 1
        count = self._budget.take(max(1, wanted))
        try:
            shards = split_rows(rows, count)
            if len(shards) == 1:
                call(shards[0])
                return
            assert self._pool is not None
            futures = [self._pool.submit(call, shard) for shard in shards[1:]]
            try:
                call(shards[0])
            finally:
                errors = [future.exception() for future in futures]  # waits for every shard
            for error in errors:
                if error is not None:
                    raise error
        finally:
            self._budget.give_back(count)


class Shard(NamedTuple):
    """Rows [start, stop) of a run: shard number `rank` of `total`."""

    total: int
    rank: int
    start: int
    stop: int


def split_rows(rows: int, count: int) -> list[Shard]:
    """`count` shards covering rows [0, rows), their lengths within one of each other (fewer
    shards when there are fewer rows)."""
    count = max(1, min(count, rows))
    bounds = [rows * i // count for i in range(count + 1)]
    return [Shard(count, i, *span) for i, span in enumerate(itertools.pairwise(bounds))]
