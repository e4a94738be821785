"""Loss normalisation by the global count, so 1 process × N clips and N processes × 1 clip agree.

DDP averages gradients over ranks. A loss that is a local mean ``Σ_local / n_local`` therefore gets
the gradient of ``(1/W) Σ_ranks Σ_r / n_r``, which equals the single-process mean only when every rank
holds the same count; a local *sum* loses a factor ``W``. The helpers here return, on each rank, a
term whose gradient, averaged over the ranks, is the gradient of the term computed by one process on
the whole global batch (and whose value, averaged over the ranks, is that term's value):

* :func:`global_mean`: ``Σ_local · W / n_global`` (a mean over frames, pixels, codes);
* :func:`global_sum`: ``Σ_local · W`` (a loss that is a sum over the batch, e.g. the AV-map KL);
* :func:`gather_for_loss`: the global batch of a tensor on every rank, for losses that are not a sum
  over items (the DSN difference loss centres and correlates the codes of the whole batch); only
  this rank's rows carry a gradient, scaled by ``W``.

Every helper is the identity (a plain mean, a plain sum, the tensor itself) without a process group.
All ranks must call them in the same order: they are collectives.
"""
from __future__ import annotations

from typing import Union

import torch
import torch.distributed as dist


def world_size() -> int:
    """The number of processes in the default group (1 without one)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def global_count(count: Union[int, float, torch.Tensor], device: torch.device) -> torch.Tensor:
    """``count`` summed over ranks (no gradient), as a float tensor on ``device``."""
    total = torch.as_tensor(count, dtype=torch.float32, device=device).detach().clone()
    if world_size() > 1:
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total


def global_mean(total: torch.Tensor, count: Union[int, float, torch.Tensor]) -> torch.Tensor:
    """``total`` (a local sum, scalar) divided by the global ``count``, scaled by the world size.

    Every rank must call it (it all-reduces ``count``). ``count`` may be 0 on a rank (its ``total``
    is then 0); the global count must be positive. A Python ``count`` is checked here; a tensor count
    is not (reading it would stall the training step on a GPU): a global count of 0 gives a NaN loss,
    which the trainer reports with the step and every loss term.
    """
    world = world_size()
    if world == 1 and not torch.is_tensor(count) and count <= 0:
        raise ValueError(f"global_mean needs a positive count, got {count}")
    if world == 1:
        return total / (count.to(total.dtype) if torch.is_tensor(count) else count)
    return total * world / global_count(count, total.device).to(total.dtype)


def batch_mean(values: torch.Tensor) -> torch.Tensor:
    """The mean of per-item ``values`` ``[N]`` over the global batch (:func:`global_mean` of their sum)."""
    return global_mean(values.sum(), values.shape[0])


def global_sum(total: torch.Tensor) -> torch.Tensor:
    """``total`` (a local sum, scalar) as this rank's share of the sum over the global batch: ``total · W``."""
    world = world_size()
    return total if world == 1 else total * world


class _ScaleGradient(torch.autograd.Function):
    """Identity forward; the backward multiplies the gradient by ``factor``."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor, factor: float) -> torch.Tensor:
        ctx.factor = factor
        return tensor.view_as(tensor)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad * ctx.factor, None


def gather_for_loss(tensor: torch.Tensor) -> torch.Tensor:
    """The rows of ``tensor`` ``[n_r, ...]`` of every rank, concatenated in rank order: ``[Σ n_r, ...]``.

    Ranks may hold different numbers of rows (not other dimensions; 0 rows is allowed). Every rank
    then computes the same loss on the same global batch. The other ranks' rows are constants here;
    this rank's rows keep their graph with the gradient scaled by ``W``, so that DDP's average over
    ranks of ``W · ∂L/∂(rows of rank r)`` is exactly the gradient of the global loss ``L``. No
    collective runs in the backward pass (it cannot interleave with DDP's gradient all-reduce).
    """
    world = world_size()
    if world == 1:
        return tensor
    sizes = torch.tensor([tensor.shape[0]], dtype=torch.int64, device=tensor.device)
    all_sizes = [torch.zeros_like(sizes) for _ in range(world)]
    dist.all_gather(all_sizes, sizes)
    lengths = [int(size) for size in all_sizes]
    padded_shape = (max(lengths),) + tuple(tensor.shape[1:])
    padded = tensor.detach().new_zeros(padded_shape)
    padded[: tensor.shape[0]] = tensor.detach()
    pieces = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(pieces, padded)
    rank = dist.get_rank()
    rows = [piece[:length] for piece, length in zip(pieces, lengths)]
    rows[rank] = _ScaleGradient.apply(tensor, float(world))
    return torch.cat(rows)
