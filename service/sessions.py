"""ONNX Runtime sessions for the bundle's two graphs: the only module importing onnxruntime.

Device choice (`TRANSLATOR_DEVICE`): `cpu`; `cuda`, which fails at startup unless the sessions
really run on the CUDA provider (ONNX Runtime itself falls back to CPU silently); `auto`, CUDA
when usable, otherwise CPU with a warning. The provider really in use is `OrtSessions.provider`.

The encoder runs with numpy in and out on CPU (its 2L K/V outputs stacked into one
(2L, B, H, S, Dh) array that `kv.StackedKV` gathers and joins with one numpy call each). The
decoder step always runs through one IOBinding kept from step to step (`_StepBinding`): the
self-attention cache is bound by address as both past input and present output, so
GroupQueryAttention writes each row's new slot in place and no step copies the cache; the cross
K/V, source mask and logits buffer are rebound only when rows join or leave. On CUDA the KV
caches are device OrtValues (`OrtValueKV` gathers, pads and concatenates them there with tiny
helper graphs); the small int inputs are copied in and the logits copied out.
"""

from __future__ import annotations

import ctypes
import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

from service.bundle import Bundle, encoder_output_names
from service.kv import KVCache, KVOps, StackedKV

log = logging.getLogger(__name__)

CPU, CUDA = "CPUExecutionProvider", "CUDAExecutionProvider"


class DeviceError(RuntimeError):
    """The requested device cannot be used."""


def _session_options(threads: int) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads  # 0: one per core
    options.inter_op_num_threads = 1  # the graphs are sequential
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only; the provider check below reports fallbacks
    # Idle intra-op workers sleep instead of spinning: a spinning pool burns the cores that the
    # gRPC front end and the engine's own Python need (measured with bench/service_load.py).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def _cuda_driver_present() -> bool:
    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False
    return True


# Graph fusions that slow the CPU provider down on these graphs: SkipLayerNormalization (residual
# Add + LayerNormalization fused) runs slower than the two ops it replaces (encoder batch 12: -15 %,
# decoder step batch 26: -8 %, batch 1 unchanged, when left out). CUDA keeps every fusion.
CPU_DISABLED_OPTIMIZERS = ("SkipLayerNormFusion",)


def _wanted_providers(device: str) -> list[str]:
    cuda_built = CUDA in ort.get_available_providers()
    if device == "cuda" and not cuda_built:
        raise DeviceError("TRANSLATOR_DEVICE=cuda but this onnxruntime has no CUDA provider")
    if device == "cuda" or (device == "auto" and cuda_built and _cuda_driver_present()):
        return [CUDA, CPU]
    return [CPU]


def open_session(path: str, device: str, threads: int) -> ort.InferenceSession:
    """A session on the requested device, checked against the provider it really got.

    Raises:
        DeviceError: `cuda` was requested and the session did not get the CUDA provider.
    """
    providers = _wanted_providers(device)
    session = ort.InferenceSession(
        path,
        _session_options(threads),
        providers=providers,
        disabled_optimizers=list(CPU_DISABLED_OPTIMIZERS) if providers == [CPU] else None,
    )
    provider = session.get_providers()[0]
    if device == "cuda" and provider != CUDA:
        raise DeviceError(f"TRANSLATOR_DEVICE=cuda but {path} runs on {provider}: CUDA is unusable")
    return session


class OrtSessions:
    """The encoder and decoder graphs of a bundle, on one device.

    Args:
        bundle: the checked bundle.
        device: auto, cpu or cuda.
        threads: intra-op threads on CPU (0: one per core).
        io_binding: on CPU too, run the IOBinding path of CUDA (tests it without a GPU).
    """

    def __init__(self, bundle: Bundle, device: str, threads: int, io_binding: bool = False) -> None:
        self.encoder = open_session(str(bundle.encoder_path), device, threads)
        self.decoder = open_session(str(bundle.decoder_path), device, threads)
        self.provider: str = self.decoder.get_providers()[0]
        if device == "auto" and self.provider != CUDA:
            log.warning(
                "TRANSLATOR_DEVICE=auto: no usable CUDA device; running on %s", self.provider
            )
        self._n_layers = bundle.manifest.n_layers
        self._encoder_outputs = encoder_output_names(self._n_layers)
        bound = "cuda" if self.provider == CUDA else ("cpu" if io_binding else None)
        self._bound_device = bound  # None: numpy in and out, the K/V stacked (StackedKV)
        self.kv: KVOps = StackedKV() if bound is None else OrtValueKV(bound)
        vocab = bundle.manifest.vocab_size
        self._step = _StepBinding(self.decoder, self._n_layers, vocab, bound)

    def encode(self, src_ids: np.ndarray, src_mask: np.ndarray) -> KVCache:
        """(B, S) ids and mask -> cross K/V 2L x (B, H, S, Dh)."""
        feed = {"input_ids": src_ids, "attention_mask": src_mask}
        names = self._encoder_outputs
        if self._bound_device is not None:
            return _run_bound(self.encoder, feed, names, set(names), self._bound_device)
        return np.stack(self.encoder.run(names, feed))  # (2L, B, H, S, Dh)

    def new_cache(self, like: KVCache, rows: int, slots: int) -> KVCache:
        """A self-attention cache of `rows` rows and `slots` slots, 2L x (R, H, M, Dh), with the
        dtype, heads and device of `like` (a cross K/V)."""
        return self.kv.zeros(like, rows, slots)

    def decode(
        self,
        tokens: np.ndarray,
        past_lengths: np.ndarray,
        *,
        src_mask: np.ndarray,
        cache: KVCache,
        cross: KVCache,
    ) -> np.ndarray:
        """One step for the B = len(tokens) rows -> logits (B, V), valid until the next call.

        Row b's token is at position past_lengths[b]; its key and value are written into
        `cache` (2L x (R, H, M, Dh), R >= B, M > past_lengths[b]) at that slot, in place."""
        return self._step.run(tokens, past_lengths, src_mask, cache, cross)


class _StepBinding:
    """The decoder's IOBinding, kept from step to step.

    Each self-attention cache tensor is bound by address, its first B rows, as both the `past`
    input and the `present` output: GroupQueryAttention sees one buffer and writes the new slot
    in place. The cross K/V, the source mask and the logits buffer are rebound only when they
    change (rows join or leave); the small inputs are arrays bound by address as well, so a step in
    a steady batch writes them and runs.
    """

    def __init__(
        self, session: ort.InferenceSession, n_layers: int, vocab: int, device: str | None
    ):
        self._session = session
        self._binding = session.io_binding()
        self._device = device or "cpu"  # where the caches live
        self._on_host = device is None  # caches are stacked numpy arrays (StackedKV)
        self._vocab = vocab
        self._past = [
            (f"past_key_values.{i}.decoder.{kv}", f"present.{i}.decoder.{kv}")
            for i in range(n_layers)
            for kv in ("key", "value")
        ]
        self._cross = [
            f"past_key_values.{i}.encoder.{kv}" for i in range(n_layers) for kv in ("key", "value")
        ]
        self._bound_cache: tuple[Any, ...] = ()  # (rows, cache) last bound
        self._bound_batch: tuple[Any, ...] = ()  # (rows, cross, src_mask) last bound
        self._logits = np.empty((0, vocab), dtype=np.float32)
        self._mask = np.zeros((0, 0), dtype=np.int64)  # (B, S) the inputs, bound by address
        self._tokens = np.zeros(0, dtype=np.int64)  # (B,)
        self._lengths = np.zeros(0, dtype=np.int32)  # (B,)
        self._total = np.zeros((), dtype=np.int32)  # ()

    def run(
        self,
        tokens: np.ndarray,
        past_lengths: np.ndarray,
        src_mask: np.ndarray,
        cache: KVCache,
        cross: KVCache,
    ) -> np.ndarray:
        rows = len(tokens)
        if not _same(self._bound_cache, (rows, cache)):
            self._bind_cache(rows, cache)
        if not _same(self._bound_batch, (rows, cross, src_mask)):
            self._bind_batch(rows, cross, src_mask)
        # the small inputs are bound by address too: a step only writes them
        self._tokens[:] = tokens
        self._lengths[:] = past_lengths
        self._total[...] = self._lengths.max() + 1
        self._session.run_with_iobinding(self._binding)
        return self._logits

    def _bind_cache(self, rows: int, cache: KVCache) -> None:
        """The first `rows` rows of every cache tensor, as past and as present."""
        for k, (past, present) in enumerate(self._past):
            address, shape, dtype = self._rows_of(cache[k], rows)
            self._binding.bind_input(past, self._device, 0, dtype, shape, address)
            self._binding.bind_output(present, self._device, 0, dtype, shape, address)
        self._bound_cache = (rows, cache)  # bound by address: kept alive while bound

    def _bind_batch(self, rows: int, cross: KVCache, src_mask: np.ndarray) -> None:
        """The cross K/V, the source mask, the small inputs and the logits of `rows` rows."""
        binding = self._binding
        for k, name in enumerate(self._cross):
            if self._on_host:
                tensor = cross[k]
                binding.bind_input(
                    name, "cpu", 0, tensor.dtype, list(tensor.shape), tensor.ctypes.data
                )
            else:
                binding.bind_ortvalue_input(name, cross[k])
        self._mask = np.ascontiguousarray(src_mask, dtype=np.int64)  # (B, S)
        self._tokens = np.zeros(rows, dtype=np.int64)
        self._lengths = np.zeros(rows, dtype=np.int32)
        self._total = np.zeros((), dtype=np.int32)
        for name, array in (
            ("encoder_attention_mask", self._mask),
            ("input_ids", self._tokens),
            ("past_lengths", self._lengths),
            ("total_length", self._total),
        ):
            binding.bind_input(name, "cpu", 0, array.dtype, list(array.shape), array.ctypes.data)
        self._logits = np.empty((rows, self._vocab), dtype=self._float_dtype(cross[0]))
        binding.bind_output(
            "logits", "cpu", 0, self._logits.dtype, [rows, self._vocab], self._logits.ctypes.data
        )
        self._bound_batch = (rows, cross, src_mask)  # bound by address: kept alive while bound

    def _float_dtype(self, tensor: Any) -> Any:
        if self._on_host:
            return tensor.dtype
        return np.float16 if tensor.data_type() == "tensor(float16)" else np.float32

    def _rows_of(self, tensor: Any, rows: int) -> tuple[int, list[int], Any]:
        """Address, shape (rows, H, M, Dh) and numpy dtype of the first `rows` rows of a cache
        tensor (R, H, M, Dh): a contiguous prefix, so its address is the tensor's."""
        if self._on_host:
            assert tensor.flags.c_contiguous
            return tensor.ctypes.data, [rows, *tensor.shape[1:]], tensor.dtype
        return tensor.data_ptr(), [rows, *tensor.shape()[1:]], self._float_dtype(tensor)


def _same(bound: tuple[Any, ...], now: tuple[Any, ...]) -> bool:
    return (
        len(bound) == len(now)
        and bound[0] == now[0]
        and all(a is b for a, b in zip(bound[1:], now[1:], strict=True))
    )


def _run_bound(
    session: ort.InferenceSession,
    feed: dict[str, Any],
    outputs: list[str],
    on_device: set[str],
    device: str = "cuda",
) -> list[Any]:
    """Run with IOBinding: numpy inputs copied in, OrtValues bound as they are; outputs in
    `on_device` stay on `device` as OrtValues, the others come back as numpy."""
    binding = session.io_binding()
    for name, value in feed.items():
        if isinstance(value, np.ndarray):
            binding.bind_cpu_input(name, np.ascontiguousarray(value))
        else:
            binding.bind_ortvalue_input(name, value)
    for name in outputs:
        binding.bind_output(name, device if name in on_device else "cpu")
    session.run_with_iobinding(binding)
    values = binding.get_outputs()
    return [v if name in on_device else v.numpy() for name, v in zip(outputs, values, strict=True)]


_ONNX_TYPES = {"tensor(float)": TensorProto.FLOAT, "tensor(float16)": TensorProto.FLOAT16}


class OrtValueKV:
    """`KVOps` on device OrtValues, each operation one tiny ONNX graph run on the device.

    Args:
        device: "cuda" (the service), or "cpu" (tests of the graphs on a machine without a GPU).
    """

    def __init__(self, device: str = "cuda") -> None:
        self._device = device
        self._provider = CUDA if device == "cuda" else CPU
        self._graphs: dict[tuple[str, int, int], ort.InferenceSession] = {}

    def zeros(self, like: KVCache, rows: int, length: int) -> KVCache:
        _, heads, _, head_dim = like[0].shape()
        dtype = np.float16 if like[0].data_type() == "tensor(float16)" else np.float32
        shape = (rows, heads, length, head_dim)
        # one buffer per tensor (the decoder writes the self-attention cache in place); on CPU
        # an OrtValue shares its numpy array's memory, so each gets an array of its own
        return [
            ort.OrtValue.ortvalue_from_numpy(np.zeros(shape, dtype=dtype), self._device, 0)
            for _ in like
        ]

    def take(self, kv: KVCache, rows: np.ndarray, start: int, stop: int) -> KVCache:
        if (start, stop) != (0, kv[0].shape()[2]):
            kv = self._slice(kv, start, stop)
        return self._apply("take", kv, {"rows": rows.astype(np.int64)})

    def join(self, first: KVCache, second: KVCache, length: int) -> KVCache:
        first, second = self._pad(first, length), self._pad(second, length)
        return self._apply("concat", [*first, *second], {})

    def gather_rows(self, kv: KVCache, rows: np.ndarray, used: int) -> KVCache:
        if (rows == np.arange(len(rows))).all():
            return kv
        capacity = kv[0].shape()[0]
        padded = np.zeros(capacity, dtype=np.int64)  # the rows after N: row 0 again, unused
        padded[: len(rows)] = rows
        return self._apply("take", kv, {"rows": padded})

    def _pad(self, kv: KVCache, length: int) -> KVCache:
        missing = length - kv[0].shape()[2]
        if missing == 0:
            return kv
        pads = np.array([0, 0, 0, 0, 0, 0, missing, 0], dtype=np.int64)
        return self._apply("pad", kv, {"pads": pads})

    def _slice(self, kv: KVCache, start: int, stop: int) -> KVCache:
        bounds = {"starts": np.array([start], np.int64), "ends": np.array([stop], np.int64)}
        return self._apply("slice", kv, bounds)

    def _apply(self, op: str, tensors: KVCache, extra: dict[str, np.ndarray]) -> KVCache:
        elem = _ONNX_TYPES[tensors[0].data_type()]
        key = (op, len(tensors), elem)
        if key not in self._graphs:
            model = _GRAPH_BUILDERS[op](len(tensors), elem)
            self._graphs[key] = ort.InferenceSession(
                model.SerializeToString(), providers=[self._provider]
            )
        session = self._graphs[key]
        feed: dict[str, Any] = {f"x{i}": t for i, t in enumerate(tensors)} | extra
        names = [o.name for o in session.get_outputs()]
        return list(_run_bound(session, feed, names, set(names), self._device))


def _model(
    nodes: list[onnx.NodeProto], inputs: list[onnx.ValueInfoProto], n_out: int, elem: int
) -> onnx.ModelProto:
    outputs = [helper.make_tensor_value_info(f"y{i}", elem, None) for i in range(n_out)]
    graph = helper.make_graph(nodes, "kv_op", inputs, outputs)
    # IR 10 (ONNX 1.16): readable by every onnxruntime this service supports
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)


def _kv_inputs(n: int, elem: int) -> list[onnx.ValueInfoProto]:
    return [helper.make_tensor_value_info(f"x{i}", elem, [None] * 4) for i in range(n)]


def _int64_input(name: str) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.INT64, [None])


def _take_graph(n: int, elem: int) -> onnx.ModelProto:
    nodes = [helper.make_node("Gather", [f"x{i}", "rows"], [f"y{i}"], axis=0) for i in range(n)]
    return _model(nodes, [*_kv_inputs(n, elem), _int64_input("rows")], n, elem)


def _concat_graph(n: int, elem: int) -> onnx.ModelProto:
    half = n // 2
    nodes = [
        helper.make_node("Concat", [f"x{i}", f"x{i + half}"], [f"y{i}"], axis=0)
        for i in range(half)
    ]
    return _model(nodes, _kv_inputs(n, elem), half, elem)


def _pad_graph(n: int, elem: int) -> onnx.ModelProto:
    nodes = [
        helper.make_node("Pad", [f"x{i}", "pads"], [f"y{i}"], mode="constant") for i in range(n)
    ]
    return _model(nodes, [*_kv_inputs(n, elem), _int64_input("pads")], n, elem)


def _slice_graph(n: int, elem: int) -> onnx.ModelProto:
    axes = helper.make_node(
        "Constant", [], ["axes"], value=helper.make_tensor("a", TensorProto.INT64, [1], [2])
    )
    nodes = [axes] + [
        helper.make_node("Slice", [f"x{i}", "starts", "ends", "axes"], [f"y{i}"]) for i in range(n)
    ]
    return _model(
        nodes, [*_kv_inputs(n, elem), _int64_input("starts"), _int64_input("ends")], n, elem
    )


_GRAPH_BUILDERS: dict[str, Callable[[int, int], onnx.ModelProto]] = {
    "take": _take_graph,
    "concat": _concat_graph,
    "pad": _pad_graph,
    "slice": _slice_graph,
}
