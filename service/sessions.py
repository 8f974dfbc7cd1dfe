"""ONNX Runtime sessions for the bundle's two graphs: the only module importing onnxruntime.

Device choice (`TRANSLATOR_DEVICE`): `cpu`; `cuda`, which fails at startup unless the sessions
really run on the CUDA provider (ONNX Runtime itself falls back to CPU silently); `auto`, CUDA
when usable, otherwise CPU with a warning. The provider really in use is `OrtSessions.provider`.

On CPU the encoder's 2L K/V outputs are one stacked (2L, B, H, S, Dh) array (row shards write
theirs into it by address), which `kv.StackedKV` gathers and joins with one numpy call each.
The decoder step always runs through IOBindings kept from step to step (`_StepBinding`): the
self-attention cache is bound by address as both past input and present output, so
GroupQueryAttention writes each row's new slot in place and no step copies the cache; the cross
K/V, source mask and logits buffer are rebound only when rows join or leave. With more than one
CPU thread (`choose_parallelism`) either both graphs run single-threaded and a run of enough rows
is split into row shards that run at once (`row_shards`), each decoder shard through its own
binding of its rows, or every run gets ONNX Runtime's intra-op threads. On CUDA the KV caches are
device OrtValues (`OrtValueKV` gathers, pads and concatenates them there with tiny helper
graphs); the small int inputs are copied in and the logits copied out.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import statistics
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

from service.bundle import Bundle, encoder_output_names
from service.kv import KVCache, KVOps, StackedKV
from service.row_shards import CoreBudget, RowShards, Shard
from service.scoring_graph import BEST, LSE, TOP, scored_decoder
from service.search import StepLogits

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
    # gRPC front end and the engine's own Python need (measured with bench/service_load.py; with
    # the scheduler's two engine threads on 2 cores, spinning intra-op threads took the engine
    # from about 20,000 to 9,100 output tokens/s, bench/engine_load.py).
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


def open_session(
    path: str, device: str, threads: int, graph: bytes | None = None
) -> ort.InferenceSession:
    """A session on the requested device, checked against the provider it really got, of the
    graph at `path`, or of `graph` (serialized) where the service runs another form of it: the
    decoder step with its logits' reductions, `scoring_graph.scored_decoder(path)`.

    Raises:
        DeviceError: `cuda` was requested and the session did not get the CUDA provider.
    """
    providers = _wanted_providers(device)
    session = ort.InferenceSession(
        path if graph is None else graph,
        _session_options(threads),
        providers=providers,
        disabled_optimizers=list(CPU_DISABLED_OPTIMIZERS) if providers == [CPU] else None,
    )
    provider = session.get_providers()[0]
    if device == "cuda" and provider != CUDA:
        raise DeviceError(f"TRANSLATOR_DEVICE=cuda but {path} runs on {provider}: CUDA is unusable")
    return session


MIN_SHARD_ROWS = 8  # decoder rows per shard (row_shards: the split pays from about 16 rows)
MIN_SHARD_TOKENS = 32  # encoder source tokens (rows x length) per shard
CALIBRATION_STEPS = 40  # one-row decoder steps per session when choosing the parallelism
INTRA_OP_MARGIN = 0.15  # intra-op threads only where a one-row step is this much faster


def cpu_threads(threads: int) -> int:
    """The CPU threads a setting of `threads` means: 0 is one per core this process may use."""
    return threads if threads > 0 else len(os.sched_getaffinity(0))


def choose_parallelism(
    decoder_path: str, decoder: bytes, bundle: Bundle, threads: int
) -> tuple[str, list[float]]:
    """`row_shards` or `intra_op` for `threads` CPU threads: `intra_op` where it runs a one-row
    decoder step (8 source tokens, 8 past positions) at least INTRA_OP_MARGIN faster than one
    thread does. A run of one row cannot be split, so row shards leave it single-threaded: the
    faster way for a small model, whose operators are too short for threads to meet at each
    (whose row shards then win at batch: a 32-row step split in two took 310 us against 470 us
    whole), possibly the slower for a wide one. Returns the choice and the median step seconds
    [single-threaded, intra-op].

    Both sessions run the same feed, alternately, CALIBRATION_STEPS times after a warm-up."""
    manifest = bundle.manifest
    n, heads, head_dim = manifest.n_layers, manifest.n_heads, manifest.head_dim
    dtype = np.dtype(manifest.float_dtype)
    feed: dict[str, np.ndarray] = {
        "input_ids": np.array([manifest.special_tokens["bos"]], dtype=np.int64),
        "past_lengths": np.array([8], dtype=np.int32),
        "total_length": np.array(9, dtype=np.int32),
        "encoder_attention_mask": np.ones((1, 8), dtype=np.int64),
    }
    for i in range(n):
        for kv in ("key", "value"):
            feed[f"past_key_values.{i}.decoder.{kv}"] = np.zeros((1, heads, 16, head_dim), dtype)
            feed[f"past_key_values.{i}.encoder.{kv}"] = np.zeros((1, heads, 8, head_dim), dtype)
    sessions = [open_session(decoder_path, "cpu", n, decoder) for n in (1, threads)]
    times: list[list[float]] = [[], []]
    for _ in range(CALIBRATION_STEPS):
        for session, taken in zip(sessions, times, strict=True):
            started = time.perf_counter()
            session.run(["logits"], feed)
            taken.append(time.perf_counter() - started)
    medians = [statistics.median(taken[CALIBRATION_STEPS // 4 :]) for taken in times]
    faster = medians[1] < (1 - INTRA_OP_MARGIN) * medians[0]
    return ("intra_op" if faster else "row_shards"), medians


class OrtSessions:
    """The encoder and decoder graphs of a bundle, on one device.

    Args:
        bundle: the checked bundle.
        device: auto, cpu or cuda.
        threads: CPU threads (0: one per core).
        io_binding: on CPU too, run the IOBinding path of CUDA (tests it without a GPU).
        parallelism: with more than one CPU thread, `row_shards`, `intra_op` or `auto` (see
            `choose_parallelism`); `parallelism` is then what was chosen.
    """

    def __init__(
        self,
        bundle: Bundle,
        device: str,
        threads: int,
        io_binding: bool = False,
        parallelism: str = "auto",
    ) -> None:
        count = cpu_threads(threads)
        if _wanted_providers(device) != [CPU] or io_binding or count == 1:
            parallelism = "intra_op"  # one thread, or CUDA: nothing to choose
        decoder_path = str(bundle.decoder_path)
        decoder = scored_decoder(decoder_path)
        if parallelism == "auto":
            parallelism, timings = choose_parallelism(decoder_path, decoder, bundle, count)
            log.info(
                "%s: %d CPU threads as %s (one-row decoder step: %.0f us single-threaded, "
                "%.0f us on %d intra-op threads)",
                bundle.path, count, parallelism, timings[0] * 1e6, timings[1] * 1e6, count,
            )  # fmt: skip
        self.parallelism = parallelism
        shards = count if parallelism == "row_shards" else 1
        intra_op = 1 if shards > 1 else threads
        self.encoder = open_session(str(bundle.encoder_path), device, intra_op)
        self.decoder = open_session(decoder_path, device, intra_op, decoder)
        self.provider: str = self.decoder.get_providers()[0]
        if device == "auto" and self.provider != CUDA:
            log.warning(
                "TRANSLATOR_DEVICE=auto: no usable CUDA device; running on %s", self.provider
            )
        manifest = bundle.manifest
        self._n_layers = manifest.n_layers
        self._encoder_outputs = encoder_output_names(self._n_layers)
        self._kv_shape = (manifest.n_heads, manifest.head_dim)
        self._float = np.dtype(manifest.float_dtype)
        bound = "cuda" if self.provider == CUDA else ("cpu" if io_binding else None)
        self._bound_device = bound  # None: host arrays bound by address, the K/V stacked
        self.kv: KVOps = StackedKV() if bound is None else OrtValueKV(bound)
        self._vocab = manifest.vocab_size
        # the scheduler's encoder and decoder threads run at the same time: a pool each, and
        # one budget of threads for both
        budget = CoreBudget(shards)
        self._encoder_shards = RowShards(budget, "encoder-shard")
        self._decoder_shards = RowShards(budget, "decoder-shard")
        self._steps: dict[tuple[int, int], _StepBinding] = {}  # (total, rank) -> its binding
        self._outputs = _step_outputs(0, self._vocab, self._float)  # reused while B holds

    def encode(self, src_ids: np.ndarray, src_mask: np.ndarray) -> KVCache:
        """(B, S) ids and mask -> cross K/V 2L x (B, H, S, Dh)."""
        names = self._encoder_outputs
        if self._bound_device is not None:
            feed = {"input_ids": src_ids, "attention_mask": src_mask}
            return _run_bound(self.encoder, feed, names, set(names), self._bound_device)
        rows, length = src_ids.shape
        heads, head_dim = self._kv_shape
        out = np.empty((len(names), rows, heads, length, head_dim), dtype=self._float)
        encode = functools.partial(self._encode_rows, src_ids, src_mask, out)
        self._encoder_shards.run(rows, -(-MIN_SHARD_TOKENS // length), encode)
        return out

    def _encode_rows(
        self, ids: np.ndarray, mask: np.ndarray, out: np.ndarray, shard: Shard
    ) -> None:
        """Encode the shard's rows of ids and mask (B, S) into out (2L, B, H, S, Dh)."""
        names = self._encoder_outputs
        if shard.total == 1:  # numpy in and out: cheaper than binding for one run
            np.stack(self.encoder.run(names, {"input_ids": ids, "attention_mask": mask}), out=out)
            return
        # a shard's outputs are bound by address: they go straight to their place, with no
        # copy under the GIL while the other shards run
        binding = self.encoder.io_binding()
        for name, whole in (("input_ids", ids), ("attention_mask", mask)):
            rows = np.ascontiguousarray(whole[shard.start : shard.stop], dtype=np.int64)
            binding.bind_cpu_input(name, rows)
        for k, name in enumerate(names):
            part = out[k, shard.start : shard.stop]  # contiguous: rows of one output tensor
            binding.bind_output(name, "cpu", 0, part.dtype, list(part.shape), part.ctypes.data)
        self.encoder.run_with_iobinding(binding)

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
    ) -> StepLogits:
        """One step for the B = len(tokens) rows -> logits (B, V) and their reductions, valid
        until the next call.

        Row b's token is at position past_lengths[b]; its key and value are written into
        `cache` (2L x (R, H, M, Dh), R >= B, M > past_lengths[b]) at that slot, in place."""
        rows = len(tokens)
        if len(self._outputs.logits) != rows:
            self._outputs = _step_outputs(rows, self._vocab, self._float)
        batch = _StepInputs(tokens, past_lengths, src_mask, cache, cross, self._outputs)
        self._decoder_shards.run(rows, MIN_SHARD_ROWS, functools.partial(self._step_rows, batch))
        return self._outputs

    def _step_rows(self, batch: _StepInputs, shard: Shard) -> None:
        """The step of the shard's rows, through the binding kept for that shard."""
        key = (shard.total, shard.rank)
        binding = self._steps.get(key)
        if binding is None:
            binding = _StepBinding(self.decoder, self._n_layers, self._bound_device)
            self._steps[key] = binding
        binding.run(batch, shard.start, shard.stop)


def _step_outputs(rows: int, vocab: int, dtype: np.dtype) -> StepLogits:
    """The buffers a step of `rows` rows writes: logits, best, top and lse."""
    return StepLogits(
        np.empty((rows, vocab), dtype=dtype),
        np.empty(rows, dtype=np.int64),
        np.empty((rows, 1), dtype=np.float32),
        np.empty((rows, 1), dtype=np.float32),
    )


class _StepInputs(NamedTuple):
    """One decoder step's inputs and output buffers, all B rows; a shard binds its own rows."""

    tokens: np.ndarray  # (B,) int64
    past_lengths: np.ndarray  # (B,) int64
    src_mask: np.ndarray  # (B, S) int64
    cache: KVCache  # 2L x (R, H, M, Dh), R >= B
    cross: KVCache  # 2L x (B, H, S, Dh)
    outputs: StepLogits  # buffers written by the step


class _StepBinding:
    """The decoder's IOBinding for rows [start, stop) of the batch, kept from step to step.

    Each self-attention cache tensor is bound by address, its rows [start, stop), as both the
    `past` input and the `present` output: GroupQueryAttention sees one buffer and writes the new
    slot in place. The cross K/V, the source mask and the rows' part of the logits buffer are
    rebound only when they change (rows join or leave); the small inputs are arrays bound by
    address as well, so a step in a steady batch writes them and runs. On CUDA (OrtValues) a
    binding always has all the rows: start is 0.
    """

    def __init__(self, session: ort.InferenceSession, n_layers: int, device: str | None):
        self._session = session
        self._binding = session.io_binding()
        self._device = device or "cpu"  # where the caches live
        self._on_host = device is None  # caches are stacked numpy arrays (StackedKV)
        self._past = [
            (f"past_key_values.{i}.decoder.{kv}", f"present.{i}.decoder.{kv}")
            for i in range(n_layers)
            for kv in ("key", "value")
        ]
        self._cross = [
            f"past_key_values.{i}.encoder.{kv}" for i in range(n_layers) for kv in ("key", "value")
        ]
        self._bound_cache: tuple[Any, ...] = ()  # (start, stop, cache) last bound
        self._bound_batch: tuple[Any, ...] = ()  # (start, stop, cross, src_mask, outputs)
        self._mask = np.zeros((0, 0), dtype=np.int64)  # (b, S) the inputs, bound by address
        self._tokens = np.zeros(0, dtype=np.int64)  # (b,)
        self._lengths = np.zeros(0, dtype=np.int32)  # (b,)
        self._total = np.zeros((), dtype=np.int32)  # ()

    def run(self, step: _StepInputs, start: int, stop: int) -> None:
        """One step of rows [start, stop): their outputs into rows [start, stop) of
        step.outputs."""
        if not _same(self._bound_cache, (start, stop, step.cache)):
            self._bind_cache(step.cache, start, stop)
        if not _same(self._bound_batch, (start, stop, step.cross, step.src_mask, step.outputs)):
            self._bind_batch(step, start, stop)
        # the small inputs are bound by address too: a step only writes them
        self._tokens[:] = step.tokens[start:stop]
        self._lengths[:] = step.past_lengths[start:stop]
        self._total[...] = self._lengths.max() + 1
        self._session.run_with_iobinding(self._binding)

    def _bind_cache(self, cache: KVCache, start: int, stop: int) -> None:
        """Rows [start, stop) of every cache tensor, as past and as present."""
        for k, (past, present) in enumerate(self._past):
            address, shape, dtype = self._rows_of(cache[k], start, stop)
            self._binding.bind_input(past, self._device, 0, dtype, shape, address)
            self._binding.bind_output(present, self._device, 0, dtype, shape, address)
        self._bound_cache = (start, stop, cache)  # bound by address: kept alive while bound

    def _bind_batch(self, step: _StepInputs, start: int, stop: int) -> None:
        """The cross K/V, the source mask, the small inputs and the outputs of the rows."""
        binding = self._binding
        rows = stop - start
        for k, name in enumerate(self._cross):
            if self._on_host:
                tensor = step.cross[k][start:stop]  # contiguous: rows of one tensor
                binding.bind_input(
                    name, "cpu", 0, tensor.dtype, list(tensor.shape), tensor.ctypes.data
                )
            else:
                assert start == 0
                binding.bind_ortvalue_input(name, step.cross[k])
        self._mask = np.ascontiguousarray(step.src_mask[start:stop], dtype=np.int64)  # (b, S)
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
        for name, whole in zip(("logits", BEST, TOP, LSE), step.outputs, strict=True):
            assert whole is not None  # `_step_outputs` fills every field
            rows_of = whole[start:stop]  # contiguous rows of a (B, ...) buffer
            binding.bind_output(
                name, "cpu", 0, rows_of.dtype, list(rows_of.shape), rows_of.ctypes.data
            )
        # bound by address: kept alive while bound
        self._bound_batch = (start, stop, step.cross, step.src_mask, step.outputs)

    def _rows_of(self, tensor: Any, start: int, stop: int) -> tuple[int, list[int], Any]:
        """Address, shape (rows, H, M, Dh) and numpy dtype of rows [start, stop) of a cache
        tensor (R, H, M, Dh): a contiguous block."""
        if self._on_host:
            assert tensor.flags.c_contiguous
            part = tensor[start:stop]
            return part.ctypes.data, list(part.shape), tensor.dtype
        assert start == 0
        return tensor.data_ptr(), [stop, *tensor.shape()[1:]], _float_dtype(tensor)


def _float_dtype(tensor: Any) -> Any:
    """The numpy dtype of a device OrtValue."""
    return np.float16 if tensor.data_type() == "tensor(float16)" else np.float32


def _same(bound: tuple[Any, ...], now: tuple[Any, ...]) -> bool:
    """Bound (start, stop, arrays...) again: the same rows of the very same arrays."""
    return (
        len(bound) == len(now)
        and bound[:2] == now[:2]
        and all(a is b for a, b in zip(bound[2:], now[2:], strict=True))
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
        first, second = self.pad(first, length), self.pad(second, length)
        return self._apply("concat", [*first, *second], {})

    def gather_rows(self, kv: KVCache, rows: np.ndarray, used: int) -> KVCache:
        if (rows == np.arange(len(rows))).all():
            return kv
        capacity = kv[0].shape()[0]
        padded = np.zeros(capacity, dtype=np.int64)  # the rows after N: row 0 again, unused
        padded[: len(rows)] = rows
        return self._apply("take", kv, {"rows": padded})

    def pad(self, kv: KVCache, length: int) -> KVCache:
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
