"""DataLoaders for training and evaluation, their (seed, epoch)-determined and rank-sharded samplers.

* :func:`build_train_loader`: the training set (with its negative-audio items when
  ``train.negative_audio_fraction`` > 0), shuffled per ``(seed, epoch)`` by an :class:`EpochShuffleSampler`, so a
  resumed run sees exactly the batches it would have seen; with several ranks the permutation is padded
  to a multiple of the world size (as ``DistributedSampler`` does) so every rank runs the same number
  of steps.
* :func:`build_eval_loader`: dataset order, and under DDP a :class:`ContiguousShardSampler` gives rank
  ``r`` a contiguous run of *whole* evaluation batches, with no padding and no duplicates. Its local
  batches are exactly the batches a single process would form, and concatenating the ranks' items in
  rank order gives the dataset order.

``ctx`` is an :class:`avseg.engine.distributed.DistContext` (``rank``, ``world_size``, ``device``).
"""
from __future__ import annotations

from typing import Any, Dict, Iterator, List, Mapping

import numpy as np
import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader, Dataset, Sampler

from avseg.data.negative_audio import build_negative_audio


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
    fewer batches than ranks). No item is padded or repeated.
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


def build_train_loader(dataset: Dataset, cfg: DictConfig, ctx: Any) -> DataLoader:
    """Shuffled per (seed, epoch), sharded over ranks, worker seeds drawn from a per-epoch generator.

    With ``train.negative_audio_fraction`` > 0 the dataset first gains its negative-audio items
    (:func:`avseg.data.negative_audio.build_negative_audio`). The trainer re-seeds ``loader.generator``
    from ``(seed + rank, epoch)`` and calls ``loader.sampler.set_epoch(epoch)`` before each epoch.
    """
    dataset = build_negative_audio(dataset, cfg)
    sampler = EpochShuffleSampler(len(dataset), seed=cfg.seed, world_size=ctx.world_size, rank=ctx.rank)
    return DataLoader(
        dataset,
        batch_size=cfg.train.batch_size,
        sampler=sampler,
        num_workers=cfg.data.num_workers,
        pin_memory=ctx.device.type == "cuda",
        generator=torch.Generator(),
    )


def build_eval_loader(dataset: Dataset, batch_size: int, cfg: DictConfig, ctx: Any) -> DataLoader:
    """In dataset order; under DDP each rank gets a contiguous run of whole batches (no padding)."""
    sampler = ContiguousShardSampler(len(dataset), batch_size, world_size=ctx.world_size, rank=ctx.rank)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=cfg.data.num_workers,
        pin_memory=ctx.device.type == "cuda",
    )


def to_device(batch: Mapping[str, Any], device: torch.device) -> Dict[str, Any]:
    """``batch`` with its tensors moved to ``device`` (non-blocking); other values (ids, lists) as they are."""
    return {key: value.to(device, non_blocking=True) if torch.is_tensor(value) else value for key, value in batch.items()}
