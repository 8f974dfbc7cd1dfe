"""The processes of one training run: a single one, or the ranks torchrun starts.

    python -m model.train ...                                  one process
    torchrun --nproc_per_node N -m model.train ...             N ranks on this machine
    torchrun --nnodes M --node_rank K --rdzv_endpoint HOST:PORT --nproc_per_node N \
        -m model.train ...                                     M machines of N ranks

Under torchrun (its RANK / WORLD_SIZE / LOCAL_RANK variables are set) the ranks join one
`torch.distributed` process group: NCCL when they train on GPUs, gloo on CPUs. Each rank uses
the GPU of its local rank.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

DEVICES = ("auto", "cpu", "cuda")
CPU = torch.device("cpu")
# A collective that waits longer than this for a peer ends the run. Rank 0 learns the vocabulary
# of an in-memory corpus, validates and writes checkpoints while the others wait in the next
# collective, so it is generous (torch's default).
COLLECTIVE_TIMEOUT = timedelta(minutes=30)


class DeviceError(ValueError):
    """A device option this machine cannot honour."""


class RankLostError(RuntimeError):
    """Another rank of the run stopped: this one cannot go on."""


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """`auto` is the local GPU when torch sees one, else the CPU."""
    if name not in DEVICES:
        raise DeviceError(f"--device {name!r}: choose one of {', '.join(DEVICES)}")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
        raise DeviceError(
            f"--device cuda: no CUDA device is available (torch {torch.__version__}, {build});"
            " use --device cpu or auto"
        )
    if local_rank >= torch.cuda.device_count():
        raise DeviceError(
            f"local rank {local_rank} has no GPU: this machine has {torch.cuda.device_count()};"
            " start at most that many processes per node"
        )
    return torch.device("cuda", local_rank)


@dataclass(frozen=True)
class World:
    """This process's place in the run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    device: torch.device = CPU

    @property
    def distributed(self) -> bool:
        return dist.is_available() and dist.is_initialized()

    @property
    def is_main(self) -> bool:
        """Rank 0 writes checkpoints, logs and the progress bar."""
        return self.rank == 0

    def all_reduce_sum(self, values: torch.Tensor) -> torch.Tensor:
        """The element-wise sum over ranks (the tensor itself when alone)."""
        if self.distributed:
            values = values.to(self.device)
            dist.all_reduce(values, op=dist.ReduceOp.SUM)
        return values.cpu()

    def gather(self, value: Any) -> list[Any]:
        """Every rank's `value`, in rank order."""
        if not self.distributed:
            return [value]
        values: list[Any] = [None] * self.world_size
        dist.all_gather_object(values, value)
        return values

    def broadcast(self, value: Any) -> Any:
        """Rank 0's `value`, on every rank."""
        if not self.distributed:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def close(self) -> None:
        """Leave the process group once every rank is done with it. Without the barrier a rank
        that finished first tore its connections down while rank 0 was still validating and
        saving the last step, and gloo's worker threads sometimes aborted that rank at exit
        ("terminate called without an active exception": 1 in 20 two-rank runs here)."""
        if self.distributed:
            dist.barrier()
            dist.destroy_process_group()


def join(device: str) -> World:
    """This process's World: alone, or a rank of the process group torchrun set up."""
    if "WORLD_SIZE" not in os.environ:
        resolved = resolve_device(device)
        _deterministic(resolved)
        return World(device=resolved)
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_world_size = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    resolved = resolve_device(device, local_rank)
    _deterministic(resolved)
    if resolved.type == "cuda":
        torch.cuda.set_device(resolved)
    dist.init_process_group(
        backend="nccl" if resolved.type == "cuda" else "gloo",
        timeout=COLLECTIVE_TIMEOUT,
        device_id=resolved if resolved.type == "cuda" else None,
    )
    return World(rank, world_size, local_rank, local_world_size, resolved)


def _deterministic(device: torch.device) -> None:
    """The same command on the same machine gives the same weights."""
    if device.type == "cuda":
        # cuBLAS needs a fixed workspace to be deterministic; a few CUDA kernels have no
        # deterministic version, and those only warn.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
    else:
        torch.use_deterministic_algorithms(True)
