"""Datasets: AVSBench (v1 and semantic layouts), the synthetic AVSBench generator, clip augmentation.

``build_dataset(cfg, split, train)`` builds what ``cfg.data.name`` names: ``avsbench`` →
:class:`AVSBenchDataset`; VAE image datasets → ``avseg.vae.data.build_vae_dataset``.
"""
from __future__ import annotations

from avseg.data.avsbench_dataset import AVSBenchDataset, ClipRecord, read_semantic_index, read_v1_index
from avseg.data.safe_pickle import load_tensor_pickle
from avseg.data.transforms import ClipAugment, build_clip_transform
from avseg.errors import ConfigError

AVS_DATASETS = ("avsbench",)


def build_dataset(cfg, split: str, train: bool = False):
    """The dataset of ``cfg.data`` for ``split``; ``train`` turns on the configured augmentation."""
    data = cfg.data
    if data.name in AVS_DATASETS:
        return AVSBenchDataset(
            root=data.root,
            task=data.task,
            split=split,
            layout=data.layout,
            image_size=data.image_size,
            audio_source=data.audio_source,
            resampler=data.resampler,
            feature_cache=data.feature_cache,
            transform=build_clip_transform(data.hflip_prob, data.scale_crop, train),
        )
    try:
        from avseg.vae.data import build_vae_dataset
    except ImportError as exc:
        raise ConfigError(f"data.name '{data.name}' is not an AVS dataset {AVS_DATASETS} and the VAE datasets are unavailable ({exc})") from None
    return build_vae_dataset(cfg, split, train)


__all__ = [
    "AVSBenchDataset",
    "ClipAugment",
    "ClipRecord",
    "build_clip_transform",
    "build_dataset",
    "load_tensor_pickle",
    "read_semantic_index",
    "read_v1_index",
]
