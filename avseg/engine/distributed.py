"""Distributed data parallel (DDP) plumbing for ``torchrun`` launches, and the samplers the trainer uses.

``torchrun --nproc_per_node=N tools/train.py ...`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR`` and ``MASTER_PORT``; :func:`init_distributed` reads them and joins the process group
(NCCL on CUDA, gloo on CPU). A plain ``python tools/train.py`` is a world of one and needs no group.

Samplers:

* :class:`EpochShuffleSampler` (training): the order is a function of ``(seed, epoch)`` only, so a
  resumed run sees exactly the batches it would have seen; with several ranks the permutation is padded
  to a multiple of the world size (as ``DistributedSampler`` does) so every rank runs the same number
  of steps.
* :class:`ContiguousShardSampler` (evaluation): rank ``r`` gets a contiguous run of *whole* evaluation
  batches, with no padding and no duplicates. Its local batches are exactly the batches a single process
  would form, and concatenating the ranks' items in rank order gives the dataset order.
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any, Iterator, List

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Sampler

from avseg.engine.run_setup import select_device
from avseg.errors import ConfigError


@dataclass(frozen=True)
class DistContext:
    """Where this process sits in the job: ``rank`` of ``world_size``, ``local_rank`` on its node."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"environment variable {name}='{value}' is not an integer (set by torchrun)") from None


def init_distributed(device_name: str = "auto", timeout_minutes: float = 30.0) -> DistContext:
    """Join the process group described by torchrun's environment and pick this rank's device.

    ``device_name`` is ``cfg.device``: ``auto`` gives ``cuda:<LOCAL_RANK>`` when CUDA is present, else CPU.
    The backend is NCCL for CUDA devices and gloo for CPU.
    """
    world_size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    if world_size > 1 and device_name.startswith("cuda:"):
        raise ConfigError(
            f"key 'device': '{device_name}' names one GPU, but torchrun started {world_size} processes; "
            "use device=auto or cuda (each process takes cuda:<LOCAL_RANK>)"
        )
    if world_size > 1 and device_name in ("auto", "cuda") and torch.cuda.is_available():
        device = torch.device("cuda", local_rank % torch.cuda.device_count())
    else:
        device = select_device(device_name)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(
            backend=backend,
            init_method="env://",
            world_size=world_size,
            rank=rank,
            timeout=datetime.timedelta(minutes=timeout_minutes),
        )
    return DistContext(rank=rank, world_size=world_size, local_rank=local_rank, device=device)


def shutdown_distributed() -> None:
    """Leave the process group (no-op for a single process)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank (picklable objects)."""
    if not is_distributed():
        return obj
    holder = [obj]
    dist.broadcast_object_list(holder, src=src)
    return holder[0]


def all_gather_objects(obj: Any) -> List[Any]:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank."""
    if not is_distributed():
        return [obj]
    gathered: List[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum of ``tensor`` over ranks (in place, also returned)."""
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def broadcast_buffers(module: nn.Module, src: int = 0) -> None:
    """Copy rank ``src``'s buffers (e.g. BatchNorm running statistics) to every rank.

    DDP broadcasts buffers at the start of each training forward, so after the last step each rank
    holds statistics updated by its own batch; validation and checkpoints use rank ``src``'s.
    """
    if not is_distributed():
        return
    for buffer in module.buffers():
        dist.broadcast(buffer.data, src=src)


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside a ``DistributedDataParallel`` wrapper (or the model itself)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def epoch_seed(seed: int, epoch: int) -> int:
    """A 63-bit seed that depends on ``(seed, epoch)`` only, distinct for distinct pairs."""
    state = np.random.SeedSequence([seed % 2**63, epoch % 2**63]).generate_state(1, dtype=np.uint64)
    return int(state[0]) >> 1


class EpochShuffleSampler(Sampler[int]):
    """Training order: a permutation drawn from ``(seed, epoch)``, sharded ``rank::world_size``.

    Call :meth:`set_epoch` before each epoch. With ``world_size > 1`` the permutation is padded with its
    first indices up to a multiple of the world size, so every rank yields ``ceil(n / world_size)`` items.
    """

    def __init__(self, length: int, seed: int, world_size: int = 1, rank: int = 0, shuffle: bool = True):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside a world of size {world_size}")
        self.length = length
        self.seed = seed
        self.world_size = world_size
        self.rank = rank
        self.shuffle = shuffle
        self.epoch = 0
        self.num_samples = -(-length // world_size) if length else 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def global_order(self) -> List[int]:
        """The permutation of the whole dataset for the current epoch (identical on every rank)."""
        if not self.shuffle:
            return list(range(self.length))
        generator = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch))
        return torch.randperm(self.length, generator=generator).tolist()

    def __iter__(self) -> Iterator[int]:
        order = self.global_order()
        total = self.num_samples * self.world_size
        while len(order) < total:
            order += order[: total - len(order)]
        return iter(order[self.rank : total : self.world_size])

    def __len__(self) -> int:
        return self.num_samples


class ContiguousShardSampler(Sampler[int]):
    """Evaluation order: rank ``r`` gets a contiguous run of whole batches of ``batch_size`` items.

    The batches ``[0, b), [b, 2b), ...`` of the dataset are split into ``world_size`` contiguous groups
    of nearly equal size (ranks may differ by one batch, and some ranks may get none when there are
    fewer batches than ranks). No item is padded or repeated, so a ``DataLoader`` with the same
    ``batch_size`` forms exactly the batches of a single-process loader, and the ranks' items in rank
    order are the dataset in order.
    """

    def __init__(self, length: int, batch_size: int, world_size: int = 1, rank: int = 0):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside a world of size {world_size}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        num_batches = -(-length // batch_size)
        first_batch = rank * num_batches // world_size
        end_batch = (rank + 1) * num_batches // world_size
        self.start = min(first_batch * batch_size, length)
        self.stop = min(end_batch * batch_size, length)

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.start, self.stop))

    def __len__(self) -> int:
        return self.stop - self.start

