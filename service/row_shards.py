"""Row shards: one graph run split into contiguous row ranges that run at once, a thread each.

ONNX Runtime's intra-op threads meet at every operator, and a decoder step of a small model is
about 60 operators of a few microseconds each: on 2 cores a second intra-op thread made the
default model's step slower, not faster (batch 32: 530 us against 470 us on one thread; batch 8:
197 against 152). Splitting the rows instead costs one hand-over per run: two single-threaded
runs of 16 rows each took 310 us for the 32 rows, 565 against 874 us at 64 rows (measured with
the shipped model, 2 cores). The rows of a batch are independent in both graphs, so a shard's
output is exactly the one it would have in the whole batch.

Below a few rows per shard the hand-over costs more than the split saves (batch 12: 183 us
split, 182 whole), so small runs stay on the calling thread. ONNX Runtime releases the GIL
inside a run, so the shards really run in parallel.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor


class RowShards:
    """Splits runs of enough rows into up to `threads` shards and runs them concurrently.

    Args:
        threads: the most shards of one run (1: every run on the calling thread).
        name: the worker threads' name prefix.
    """

    def __init__(self, threads: int, name: str) -> None:
        self.threads = max(1, threads)
        self._pool = (
            ThreadPoolExecutor(self.threads - 1, thread_name_prefix=name)
            if self.threads > 1
            else None
        )

    def spans(self, rows: int, min_rows: int) -> list[tuple[int, int]]:
        """[start, stop) ranges covering rows [0, rows), each at least `min_rows` long (one
        range when `rows` is below 2 * min_rows), their lengths within one of each other."""
        count = max(1, min(self.threads, rows // max(1, min_rows)))
        bounds = [rows * i // count for i in range(count + 1)]
        return list(itertools.pairwise(bounds))

    def run(self, calls: Sequence[Callable[[], None]]) -> None:
        """Run every call, the first on this thread and the others on the workers; returns once
        all have returned, raising the first error any of them raised."""
        if self._pool is None or len(calls) == 1:
            for call in calls:
                call()
            return
        futures = [self._pool.submit(call) for call in calls[1:]]
        try:
            calls[0]()
        finally:
            errors = [future.exception() for future in futures]  # waits for every shard
        for error in errors:
            if error is not None:
                raise error
