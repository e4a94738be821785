"""Distributed data parallel (DDP) plumbing for ``torchrun`` launches: process group and small collectives.

``torchrun --nproc_per_node=N tools/train.py ...`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR`` and ``MASTER_PORT``; :func:`init_distributed` reads them and joins the process group
(NCCL on CUDA, gloo on CPU). A plain ``python tools/train.py`` is a world of one and needs no group.

The collectives (:func:`broadcast_object`, :func:`all_gather_objects`, :func:`gather_to_main`,
:func:`all_reduce_sum`, :func:`broadcast_buffers`) are no-ops returning the single-process answer
when there is no process group, so callers need no ``if distributed`` branches. The samplers that
shard data over ranks live in :mod:`avseg.data.loaders`; the loss reductions that make N processes
compute the single-process maths live in :mod:`avseg.losses.reduction`. :func:`sync_batchnorm`
applies ``train.sync_bn`` where the backend supports it.
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any, List, Optional, Tuple

import torch
import torch.distributed as dist
from torch import nn

# Re-exported for tests/test_evaluator.py until it imports the sampler from avseg.data.loaders.
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


def get_rank() -> int:
    """This process's rank (0 without a process group)."""
    return dist.get_rank() if is_distributed() else 0


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


def gather_to_main(obj: Any) -> Optional[List[Any]]:
    """``[obj of rank 0, obj of rank 1, ...]`` on rank 0 and None elsewhere (large objects: no copy per rank)."""
    if not is_distributed():
        return [obj]
    gathered: Optional[List[Any]] = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(obj, gathered, dst=0)
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


def sync_batchnorm(model: nn.Module, ctx: DistContext) -> Tuple[nn.Module, bool, str]:
    """``train.sync_bn``: the model with its BatchNorm layers as SyncBatchNorm, where that is supported.

    SyncBatchNorm needs CUDA tensors and a backend with CUDA collectives (NCCL); on gloo or the CPU
    the layers stay per-process BatchNorm. Returns ``(model, converted, message)``; the message says
    what was done or why not, for the log. A single process needs no synchronisation.
    """
    if not ctx.enabled:
        return model, False, "train.sync_bn: a single process already normalises over its whole batch; nothing to convert"
    backend = dist.get_backend()
    if ctx.device.type != "cuda" or backend != "nccl":
        return model, False, (
            f"train.sync_bn is unavailable with the {backend} backend on {ctx.device.type} (SyncBatchNorm needs CUDA "
            f"with NCCL): BatchNorm statistics stay per process, each over its own {ctx.world_size}-th of the batch"
        )
    layers = sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model, True, f"train.sync_bn: {layers} BatchNorm layer(s) normalise over the batch of all {ctx.world_size} processes"


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside a ``DistributedDataParallel`` wrapper (or the model itself)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
