"""Array operations on the KV cache of a batch of rows, behind one small interface.

The runner keeps two lists of 2L tensors (layer 0 key, layer 0 value, layer 1 key, ...):
the self-attention cache `past` (B, H, P, Dh), left-padded, and the cross-attention K/V
`cross` (B, H, S, Dh), right-padded. Between decoder steps it removes and reorders rows
(`take`, trimming unused slots in the same copy) and appends rows (`join`, padding the length
axis in the same copy). `NumpyKV` does this on host arrays; `sessions.OrtValueKV` does it on the
device so a CUDA cache never leaves the GPU.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

KVArray = Any  # np.ndarray on CPU; an onnxruntime OrtValue on CUDA
KVList = list[KVArray]  # 2L tensors, each (B, H, L, Dh)


class KVOps(Protocol):
    """What the runner needs to do to a list of (B, H, L, Dh) tensors."""

    def zeros(self, like: KVList, rows: int, length: int) -> KVList:
        """2L zero tensors (rows, H, length, Dh) with the dtype and device of `like`."""
        ...

    def take(self, kv: KVList, rows: np.ndarray, start: int, stop: int) -> KVList:
        """Rows `rows` (N,) int64 of every tensor, in that order (axis 0), and of those only
        the slots [start, stop) of the length axis (axis 2): one copy."""
        ...

    def join(self, first: KVList, second: KVList, length: int) -> KVList:
        """`first` rows then `second` rows (axis 0), each followed by zeros up to `length` slots
        (axis 2): one copy."""
        ...


class NumpyKV:
    """`KVOps` on numpy arrays (the CPU provider's inputs and outputs)."""

    def zeros(self, like: KVList, rows: int, length: int) -> KVList:
        _, heads, _, head_dim = like[0].shape
        return [np.zeros((rows, heads, length, head_dim), dtype=x.dtype) for x in like]

    def take(self, kv: KVList, rows: np.ndarray, start: int, stop: int) -> KVList:
        return [np.take(x[:, :, start:stop], rows, axis=0) for x in kv]

    def join(self, first: KVList, second: KVList, length: int) -> KVList:
        joined = []
        for a, b in zip(first, second, strict=True):
            rows, heads, _, head_dim = a.shape
            x = np.zeros((rows + len(b), heads, length, head_dim), dtype=a.dtype)
            x[:rows, :, : a.shape[2]] = a
            x[rows:, :, : b.shape[2]] = b
            joined.append(x)
        return joined
