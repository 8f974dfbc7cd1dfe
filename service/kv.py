"""Array operations on the KV caches of a batch of rows, behind one small interface.

The runner keeps two caches of 2L tensors (layer 0 key, layer 0 value, layer 1 key, ...):

  * the self-attention cache (R, H, M, Dh): a fixed capacity of R rows and M slots, of which the
    batch's B rows use rows [0, B) and row b the slots [0, position_b). The decoder step writes
    each row's new key and value in place at slot position_b, so a step copies nothing. Rows
    that leave or move (beam search) are gathered to the front (`gather_rows`, only the slots in
    use); rows that join need no copy (their past is empty); a full cache grows (`join` with
    zeros, doubling);
  * the cross-attention K/V `cross` (B, H, S, Dh), right-padded: rows removed and reordered by
    `take` (trimming unused slots in the same copy) and appended by `join` (padding the length
    axis in the same copy).

`StackedKV` does this on host arrays, the 2L tensors stacked in one (2L, B, H, L, Dh) array so
that each operation is one numpy call for the whole cache; `sessions.OrtValueKV` does it on a
list of 2L device OrtValues, so a CUDA cache never leaves the GPU. Either way `cache[k]` is the
k-th tensor, which is all the sessions need to feed it to a graph.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

KVCache = Any  # np.ndarray (2L, B, H, L, Dh) on CPU; a list of 2L (B, H, L, Dh) OrtValues on CUDA


class KVOps(Protocol):
    """What the runner needs to do to a cache of 2L tensors (B, H, L, Dh)."""

    def zeros(self, like: KVCache, rows: int, length: int) -> KVCache:
        """A zero cache of `rows` rows and `length` slots with the dtype and device of `like`."""
        ...

    def take(self, kv: KVCache, rows: np.ndarray, start: int, stop: int) -> KVCache:
        """Rows `rows` (N,) int64 of every tensor, in that order, and of those only the slots
        [start, stop) of the length axis: one copy."""
        ...

    def join(self, first: KVCache, second: KVCache, length: int) -> KVCache:
        """`first` rows then `second` rows, each followed by zeros up to `length` slots: one
        copy."""
        ...

    def pad(self, kv: KVCache, length: int) -> KVCache:
        """Every tensor followed by zeros up to `length` slots: one copy, none if it has them."""
        ...

    def gather_rows(self, kv: KVCache, rows: np.ndarray, used: int) -> KVCache:
        """The cache with rows `rows` (N,) int64 moved to rows [0, N), in that order, for the
        slots [0, used); the cache keeps its shape, and what the other rows and slots hold is
        undefined. May work in place."""
        ...


class StackedKV:
    """`KVOps` on one host array (2L, B, H, L, Dh): the CPU provider's inputs and outputs.

    One numpy call per operation rather than one per tensor matters beyond its own cost: every
    call releases and retakes the GIL, and under load the gRPC thread holds it in between.
    """

    def zeros(self, like: KVCache, rows: int, length: int) -> KVCache:
        n, _, heads, _, head_dim = like.shape
        return np.zeros((n, rows, heads, length, head_dim), dtype=like.dtype)

    def take(self, kv: KVCache, rows: np.ndarray, start: int, stop: int) -> KVCache:
        return np.take(kv[:, :, :, start:stop], rows, axis=1)

    def join(self, first: KVCache, second: KVCache, length: int) -> KVCache:
        n, rows, heads, _, head_dim = first.shape
        joined = np.zeros((n, rows + second.shape[1], heads, length, head_dim), dtype=first.dtype)
        joined[:, :rows, :, : first.shape[3]] = first
        joined[:, rows:, :, : second.shape[3]] = second
        return joined

    def pad(self, kv: KVCache, length: int) -> KVCache:
        if kv.shape[3] == length:
            return kv
        padded = np.zeros((*kv.shape[:3], length, kv.shape[4]), dtype=kv.dtype)
        padded[:, :, :, : kv.shape[3]] = kv
        return padded

    def gather_rows(self, kv: KVCache, rows: np.ndarray, used: int) -> KVCache:
        moved = np.flatnonzero(rows != np.arange(len(rows)))  # rows already in place stay
        if len(moved):
            kv[:, moved, :, :used] = kv[:, rows[moved], :, :used]  # the right side is a copy
        return kv
