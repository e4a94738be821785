"""The avseg checkpoint format, shared by training, evaluation, conversion and the demo.

A checkpoint is a dict saved with ``torch.save`` and read by :func:`avseg.weights.safe_load` (weights only)::

    {"format": "avseg-checkpoint", "version": 1, "avseg_version": "0.1.0",
     "model_name": cfg.model.name, "config": {...plain dict...}, "model": state_dict,
     ... optional training state: "optimizer", "scheduler", "scaler", "epoch", "step",
         "best_metric", "rng" ...}

Because the config travels with the weights, ``load_model(path)`` needs no other file.
"""
from __future__ import annotations

import os
from typing import Any, Dict, Union

import torch
from omegaconf import DictConfig

from avseg.config import config_from_dict, config_to_dict
from avseg.errors import CheckpointError
from avseg.fileio import atomic_torch_save
from avseg.version import __version__
from avseg.weights import safe_load

FORMAT = "avseg-checkpoint"
FORMAT_VERSION = 1


def save_checkpoint(path: Union[str, os.PathLike], state_dict: Dict[str, torch.Tensor], cfg: DictConfig, **extra: Any) -> None:
    """Atomically write weights plus config (and any ``extra`` training state) to ``path``."""
    payload = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "avseg_version": __version__,
        "model_name": cfg.model.name,
        "config": config_to_dict(cfg),
        "model": state_dict,
    }
    payload.update(extra)
    atomic_torch_save(payload, path)


def read_checkpoint(path: Union[str, os.PathLike]) -> Dict[str, Any]:
    """Read an avseg checkpoint; the returned dict has ``config`` as a validated DictConfig."""
    payload = safe_load(path)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(
            f"{path}: not an avseg checkpoint (no 'format': '{FORMAT}' entry); "
            "official AVSBench/ECMVAE weights must be converted first with tools/convert_checkpoint.py"
        )
    if payload.get("version", 0) > FORMAT_VERSION:
        raise CheckpointError(f"{path}: written by a newer avseg (format version {payload['version']})")
    payload["config"] = config_from_dict(payload["config"])
    return payload
