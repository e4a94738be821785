"""Datasets: AVSBench (v1 and semantic layouts), the synthetic AVSBench generator, clip augmentation.

``build_dataset(cfg, split, train)`` builds what ``cfg.data.name`` names, through :data:`DATASETS`
(name → builder ``(cfg, split, train) -> Dataset``): ``avsbench`` → :class:`AVSBenchDataset` (binary
S4/MS3 in either layout, or ``data.task=avss``: the 71-class semantic task); the image datasets of
:mod:`avseg.vae.data` (``fashion_mnist``, ``celeba``, ...) → ``build_vae_dataset``.
A new dataset is one :func:`register_dataset` call. DataLoaders and samplers: :mod:`avseg.data.loaders`.
"""
from __future__ import annotations

from typing import Callable, Dict, Sequence

from torch.utils.data import Dataset

from avseg.config import AVS_DATASETS
from avseg.data.avsbench_dataset import (
    AVSS_CLIP_FRAMES,
    AVSS_TASK,
    AVSBenchDataset,
    ClipRecord,
    clip_frames,
    read_semantic_index,
    read_v1_index,
)
from avseg.data.safe_pickle import load_tensor_pickle
from avseg.data.transforms import ClipAugment, build_clip_transform
from avseg.errors import ConfigError
from avseg.vae.data import VAE_DATASETS, build_vae_dataset

DatasetBuilder = Callable[..., Dataset]
"""``builder(cfg, split: str, train: bool) -> Dataset``; ``train`` turns on the configured augmentation."""

DATASETS: Dict[str, DatasetBuilder] = {}


def register_dataset(names: Sequence[str], builder: DatasetBuilder) -> None:
    """Make ``build_dataset`` call ``builder`` for each ``data.name`` in ``names``."""
    for name in names:
        if name in DATASETS:
            raise ValueError(f"dataset '{name}' is registered twice")
        DATASETS[name] = builder


def build_avsbench_dataset(cfg, split: str, train: bool = False) -> AVSBenchDataset:
    """AVSBench (v1 or semantic layout, real or synthetic) as ``cfg.data`` describes it.

    avss: the released train geometry (short-edge resize + centre crop) on ``data.train_split``, the
    val/test resize on every other split.
    """
    data = cfg.data
    if data.task == AVSS_TASK and data.layout != "semantic":
        raise ConfigError(f"key 'data.task': 'avss' is the AVSBench-semantic task and needs data.layout=semantic, got '{data.layout}'")
    return AVSBenchDataset(
        root=data.root,
        task=data.task,
        split=split,
        layout=data.layout,
        image_size=data.image_size,
        audio_source=data.audio_source,
        resampler=data.resampler,
        feature_cache=data.feature_cache,
        resize_masks=data.resize_masks,
        transform=build_clip_transform(data.hflip_prob, data.scale_crop, train, data.flip),
        subsets=[subset.strip() for subset in data.subsets.split(",")],
        train_crop=split == data.train_split,
    )


def build_dataset(cfg, split: str, train: bool = False) -> Dataset:
    """The dataset of ``cfg.data`` for ``split``; ``train`` turns on the configured augmentation."""
    name = cfg.data.name
    if name not in DATASETS:
        raise ConfigError(f"key 'data.name': unknown dataset '{name}' (expected one of {', '.join(sorted(DATASETS))})")
    return DATASETS[name](cfg, split, train)


register_dataset(AVS_DATASETS, build_avsbench_dataset)
register_dataset(VAE_DATASETS, build_vae_dataset)

__all__ = [
    "AVSBenchDataset",
    "AVSS_CLIP_FRAMES",
    "AVSS_TASK",
    "AVS_DATASETS",
    "ClipAugment",
    "ClipRecord",
    "DATASETS",
    "build_clip_transform",
    "build_dataset",
    "clip_frames",
    "load_tensor_pickle",
    "read_semantic_index",
    "read_v1_index",
    "register_dataset",
]
