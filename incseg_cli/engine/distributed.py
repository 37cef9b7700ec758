"""torchrun support: the same command runs on one device or on N processes.

Rank and world size come from the environment torchrun sets (RANK, WORLD_SIZE, LOCAL_RANK);
there is no ``--local_rank`` option. NCCL on CUDA, gloo on CPU. Only rank 0 writes files.
"""

from __future__ import annotations

import atexit
import datetime
import os
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from incseg_cli.errors import EXIT_INTERNAL, EXIT_INTERRUPTED, ForwardedError, IncsegError, UsageError

T = TypeVar("T")


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def world_from_env() -> World:
    return World(
        rank=int(os.environ.get("RANK", "0")),
        size=int(os.environ.get("WORLD_SIZE", "1")),
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
    )


def init(device: torch.device) -> World:
    """Join the process group torchrun prepared (no-op for a plain command)."""
    world = world_from_env()
    if world.distributed and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=datetime.timedelta(minutes=30))
        # Left to the interpreter's teardown, the group's threads can end a finished rank
        # with "terminate called without an active exception" (SIGABRT) while another rank
        # still runs; destroyed at exit they are joined first.
        atexit.register(_destroy)
        if device.type == "cpu":
            # N processes on one machine share its cores; oversubscribed OpenMP threads spin.
            local = int(os.environ.get("LOCAL_WORLD_SIZE", world.size))
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // local))
    return world


def _destroy() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def device_for(name: str, world: World) -> torch.device:
    """The one device of this process, always with an index: ``auto``/``cuda`` is the current
    GPU (under torchrun the process's own, LOCAL_RANK). ``torch.cuda.set_device`` refuses an
    index-less device, and DDP, RNG states and memory statistics all want the index."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError("--device cuda was asked for, but CUDA is not available on this machine")
    if name.startswith("cuda:") and world.distributed:
        raise UsageError(f"--device {name} under torchrun would put every process on one GPU; use --device cuda "
                         "(or auto): each process takes the GPU of its LOCAL_RANK")
    if name == "cuda":
        name = f"cuda:{world.local_rank if world.distributed else torch.cuda.current_device()}"
    device = torch.device(name)
    if device.type == "cuda":
        count = torch.cuda.device_count()
        if device.index >= count:
            where = "LOCAL_RANK" if world.distributed else "--device"
            raise UsageError(f"{where} asks for GPU {device.index}, but this machine shows {count} "
                             f"(cuda:0..cuda:{count - 1}; CUDA_VISIBLE_DEVICES may hide others)")
        torch.cuda.set_device(device)
    return device


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _active() -> bool:
    return dist.is_available() and dist.is_initialized()


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank if it is true on one (so that all ranks stop at the same step)."""
    return any_rank_flags([flag], device)[0]


def any_rank_flags(flags: list[bool], device: torch.device) -> list[bool]:
    """``any_rank`` of several flags in one collective (one host sync per iteration)."""
    if not _active():
        return list(flags)
    t = torch.tensor([1 if f else 0 for f in flags], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return [bool(v) for v in t.tolist()]


@torch.no_grad()
def sync_from_rank0(module: nn.Module) -> None:
    """Rank 0's parameters and buffers on every rank. On CPU each process keeps its own
    BatchNorm statistics while training; evaluating with rank 0's (the weights that are
    saved) makes a run's metrics those of its checkpoint."""
    if not _active():
        return
    for tensor in [*module.parameters(), *module.buffers()]:
        dist.broadcast(tensor.data, src=0)


def on_main(fn: Callable[[], T]) -> T:
    """``fn()`` on rank 0 alone, its result on every rank. An ``IncsegError`` it raises is
    raised on every rank (as ``ForwardedError`` on the others, which do not repeat it), so
    that no rank waits for a broadcast that never comes."""
    if not _active():
        return fn()
    box: list[object] = [None]
    if dist.get_rank() == 0:
        try:
            box = [("ok", fn())]
        except BaseException as err:
            forwarded = err if isinstance(err, IncsegError) else IncsegError(f"rank 0 stopped ({type(err).__name__})")
            if not isinstance(err, IncsegError):
                forwarded.exit_code = EXIT_INTERRUPTED if isinstance(err, KeyboardInterrupt) else EXIT_INTERNAL
            dist.broadcast_object_list([("error", forwarded)], src=0)
            raise
    dist.broadcast_object_list(box, src=0)
    kind, value = box[0]  # type: ignore[misc]
    if kind == "error":
        raise ForwardedError(value)  # type: ignore[arg-type]
    return value  # type: ignore[return-value]


def broadcast(value: object) -> object:
    """Rank 0's ``value`` on every rank."""
    if not (dist.is_available() and dist.is_initialized()):
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_objects(value: T) -> list[T]:
    """Every rank's ``value`` in rank order, on every rank (``[value]`` in one process)."""
    if not _active():
        return [value]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, value)
    return out


def all_sum(value: int, device: torch.device) -> int:
    if not (dist.is_available() and dist.is_initialized()):
        return value
    t = torch.tensor([value], dtype=torch.int64, device=device)
    dist.all_reduce(t)
    return int(t.item())


def per_process_batch(global_batch: int, world: World) -> int:
    if global_batch % world.size:
        raise UsageError(
            f"--batch-size {global_batch} is the global batch and must divide evenly over "
            f"{world.size} processes"
        )
    per = global_batch // world.size
    if per < 2:
        raise UsageError(f"--batch-size {global_batch} gives {per} image per process; BatchNorm needs 2")
    return per


def wrap(module: nn.Module, device: torch.device, find_unused: bool = False) -> nn.Module:
    """DistributedDataParallel (with SyncBatchNorm on CUDA) when world size > 1, else the module.

    SyncBatchNorm has no CPU kernel: on CPU (gloo) each process keeps its own batch statistics.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return module
    if device.type == "cuda":
        module = nn.SyncBatchNorm.convert_sync_batchnorm(module)
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(module, device_ids=ids, find_unused_parameters=find_unused)


def shard(items: list, world: World) -> list:
    """Every item exactly once over the ranks (no padding, unlike DistributedSampler)."""
    return items[world.rank :: world.size]
