"""The avseg checkpoint format, shared by training, evaluation, conversion and the demo.

A checkpoint is a dict saved with ``torch.save`` and read with ``torch.load(weights_only=True)``::

    {"format": "avseg-checkpoint", "version": 1, "avseg_version": "0.1.0",
     "model_name": cfg.model.name, "config": {...plain dict...}, "model": state_dict,
     ... optional training state: "optimizer", "scheduler", "scaler", "epoch", "step",
         "best_metric", "rng" ...}

Because the config travels with the weights, ``load_model(path)`` needs no other file.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, Union

import torch
from omegaconf import DictConfig

from avseg.config import config_from_dict, config_to_dict
from avseg.errors import CheckpointError
from avseg.fileio import atomic_torch_save
from avseg.version import __version__

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


def torch_load_safely(path: Union[str, os.PathLike]) -> Any:
    """``torch.load(weights_only=True)`` on CPU with errors that name the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt or unsafe files
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: cannot be read as a weights-only torch checkpoint ({first_line})") from None


def read_checkpoint(path: Union[str, os.PathLike]) -> Dict[str, Any]:
    """Read an avseg checkpoint; the returned dict has ``config`` as a validated DictConfig."""
    payload = torch_load_safely(path)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(
            f"{path}: not an avseg checkpoint (no 'format': '{FORMAT}' entry); "
            "official AVSBench/ECMVAE weights must be converted first with tools/convert_checkpoint.py"
        )
    if payload.get("version", 0) > FORMAT_VERSION:
        raise CheckpointError(f"{path}: written by a newer avseg (format version {payload['version']})")
    payload["config"] = config_from_dict(payload["config"])
    return payload
